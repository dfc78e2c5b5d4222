//! Well-known label keys and the values weft's controllers write into them.

/// The Service an EndpointSlice belongs to (discovery.k8s.io/v1).
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Which controller manages an EndpointSlice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// `MANAGED_BY` of slices derived from a Service's selector.
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// `MANAGED_BY` of slices mirrored from Endpoints a user wrote.
pub const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// The hash of a Deployment's pod template, on its ReplicaSets and their pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
