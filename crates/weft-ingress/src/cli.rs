//! The command line of the ingress controller, shared by `weft ingress` and `weft-ingress`.
