//! The Kubernetes kinds whose schemas k8s-openapi has, by group/version/kind: every stable kind,
//! so that a kind added to `weft_api::kinds::ALL` finds its schema here without a change.

use k8s_openapi::Resource;
use k8s_openapi::api::{
    admissionregistration, apps, authentication, authorization, autoscaling, batch, certificates, coordination, core,
    discovery, events, flowcontrol, networking, node, policy, rbac, resource, scheduling, storage, storagemigration,
};
use k8s_openapi::apimachinery::pkg::apis::meta;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};

/// One kind: its group/version/kind and how to put its schema into a generator.
pub struct Type {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The definition name (`io.k8s.api.core.v1.Service`).
    pub name: fn() -> String,
    /// Adds the kind's definition, and every definition it refers to, to the generator.
    pub add: fn(&mut SchemaGenerator),
}

macro_rules! types {
    ($($t:ty),* $(,)?) => {
        &[$(Type {
            group: <$t as Resource>::GROUP,
            version: <$t as Resource>::VERSION,
            kind: <$t as Resource>::KIND,
            name: || <$t as JsonSchema>::schema_name().into_owned(),
            add: |g| drop(g.subschema_for::<$t>()),
        }),*]
    };
}

pub static KINDS: &[Type] = types![
    admissionregistration::v1::MutatingAdmissionPolicy,
    admissionregistration::v1::MutatingAdmissionPolicyBinding,
    admissionregistration::v1::MutatingWebhookConfiguration,
    admissionregistration::v1::ValidatingAdmissionPolicy,
    admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    admissionregistration::v1::ValidatingWebhookConfiguration,
    apps::v1::ControllerRevision,
    apps::v1::DaemonSet,
    apps::v1::Deployment,
    apps::v1::ReplicaSet,
    apps::v1::StatefulSet,
    authentication::v1::SelfSubjectReview,
    authentication::v1::TokenRequest,
    authentication::v1::TokenReview,
    authorization::v1::LocalSubjectAccessReview,
    authorization::v1::SelfSubjectAccessReview,
    authorization::v1::SelfSubjectRulesReview,
    authorization::v1::SubjectAccessReview,
    autoscaling::v1::HorizontalPodAutoscaler,
    autoscaling::v1::Scale,
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::CronJob,
    batch::v1::Job,
    certificates::v1::CertificateSigningRequest,
    coordination::v1::Lease,
    core::v1::Binding,
    core::v1::ComponentStatus,
    core::v1::ConfigMap,
    core::v1::Endpoints,
    core::v1::Event,
    core::v1::LimitRange,
    core::v1::Namespace,
    core::v1::Node,
    core::v1::PersistentVolume,
    core::v1::PersistentVolumeClaim,
    core::v1::Pod,
    core::v1::PodTemplate,
    core::v1::ReplicationController,
    core::v1::ResourceQuota,
    core::v1::Secret,
    core::v1::Service,
    core::v1::ServiceAccount,
    discovery::v1::EndpointSlice,
    events::v1::Event,
    flowcontrol::v1::FlowSchema,
    flowcontrol::v1::PriorityLevelConfiguration,
    networking::v1::IPAddress,
    networking::v1::Ingress,
    networking::v1::IngressClass,
    networking::v1::NetworkPolicy,
    networking::v1::ServiceCIDR,
    node::v1::RuntimeClass,
    policy::v1::Eviction,
    policy::v1::PodDisruptionBudget,
    rbac::v1::ClusterRole,
    rbac::v1::ClusterRoleBinding,
    rbac::v1::Role,
    rbac::v1::RoleBinding,
    resource::v1::DeviceClass,
    resource::v1::ResourceClaim,
    resource::v1::ResourceClaimTemplate,
    resource::v1::ResourceSlice,
    scheduling::v1::PriorityClass,
    storage::v1::CSIDriver,
    storage::v1::CSINode,
    storage::v1::CSIStorageCapacity,
    storage::v1::StorageClass,
    storage::v1::VolumeAttachment,
    storage::v1::VolumeAttributesClass,
    storagemigration::v1::StorageVersionMigration,
];

/// meta/v1's kinds that every group answers with (Status) or takes (DeleteOptions), and the
/// bodies of watch and patch requests.
pub static META: &[Type] = types![
    meta::v1::Status,
    meta::v1::APIResourceList,
    meta::v1::APIGroup,
    meta::v1::APIGroupList,
    meta::v1::APIVersions
];

/// meta/v1 definitions without a `Resource` impl: (name, add).
pub fn meta_definitions(g: &mut SchemaGenerator) {
    g.subschema_for::<meta::v1::DeleteOptions>();
    g.subschema_for::<meta::v1::WatchEvent<serde_json::Value>>();
    g.subschema_for::<meta::v1::Patch>();
    g.subschema_for::<meta::v1::ListMeta>();
}

/// The kind with this group/version/kind, if k8s-openapi has it.
pub fn find(group: &str, version: &str, kind: &str) -> Option<&'static Type> {
    KINDS.iter().chain(META).find(|t| t.group == group && t.version == version && t.kind == kind)
}
