//! Kubernetes semantics that every weft component shares, written once: the well-known labels,
//! the `kube-system/weft-config` ConfigMap, endpoint and node readiness as the API defines them,
//! EndpointSlices grouped by their Service, label selectors (objects and the string syntax),
//! NetworkPolicy's pieces (types, peers, ipBlocks, ports, named ports) and the name hash.
//!
//! Architecture invariant: pure functions, k8s-openapi types in, answers out; no I/O, no clock,
//! no async runtime. Without the default `objects` feature only the parts that need no API
//! types are built (the CNI plugin uses [`names`]).

pub mod config;
pub mod labels;
pub mod names;
pub mod selectors;

#[cfg(feature = "objects")]
pub mod endpoints;
#[cfg(feature = "objects")]
pub mod netpol;
#[cfg(feature = "objects")]
pub mod nodes;
#[cfg(feature = "objects")]
pub mod pods;
#[cfg(feature = "objects")]
pub mod slices;
