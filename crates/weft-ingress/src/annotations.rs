//! The ingress-nginx annotations (`nginx.ingress.kubernetes.io/*`), parsed into typed,
//! validated [`crate::Settings`]; unsupported ones (every `*-snippet` among them) refused.
