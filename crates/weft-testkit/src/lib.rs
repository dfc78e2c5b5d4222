//! Test support shared by weft's tests and benchmarks (a dev-dependency of the crates whose tests
//! use it, a dependency of `weft-bench`; never shipped).
//!
//! - [`Lab`]: a whole lab (`weft up`) in a temporary `$WEFT_HOME`, with helpers to drive it
//!   (weft, kubectl, exec in a pod or node, apply, wait) and a kube client; brought down on drop,
//!   also when the test panics, and whatever `weft down` left (daemon, shims, namespaces) removed.
//! - [`Netns`]: a uniquely named `weft-...` network namespace removed on drop, with code and
//!   commands run inside it (through `weft_netlink::ns`) and veth helpers.
//! - [`objects`]: Services, EndpointSlices, Pods and Namespaces as the tests write them.
//! - [`kubeconfig`]: a kube client from a kubeconfig file.
//! - [`run`]: commands bounded in time, and bounded waits.

pub mod kubeconfig;
pub mod lab;
pub mod netns;
pub mod objects;
pub mod probe;
pub mod reach;
pub mod run;

pub use lab::{Lab, LabOptions, seed, weft_bin};
pub use netns::Netns;
pub use objects::{endpoint, namespace, pod, service, slice};
pub use run::{run_bounded, wait_until};
