//! Admission of an object: decode it as its kind, default it as kube-apiserver does, validate it.
//! Pure: JSON in, JSON (or field errors) out.

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::errors::ObjectError;
use crate::kinds::Kind;
use crate::validate::{self, Errors, NameRule};

/// The object as its typed struct; a body that does not fit gets kube-apiserver's 400, naming
/// the field that did not (`Deployment in version "v1" cannot be handled as a Deployment:
/// spec.replicas: invalid type: string "two", expected i32`).
pub(crate) fn decode<T: DeserializeOwned>(kind: &Kind, v: &Value) -> Result<T, ObjectError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let at = if path.is_empty() || path == "." { String::new() } else { format!("{path}: ") };
        ObjectError::BadRequest(format!(
            "{} in version {:?} cannot be handled as a {}: {at}{}",
            kind.kind,
            kind.version,
            kind.kind,
            e.inner()
        ))
    })
}

fn encode<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("k8s-openapi types always serialize")
}

fn finish<T: Serialize>(kind: &Kind, obj: &T, meta: &ObjectMeta, errs: Errors) -> Result<Value, ObjectError> {
    if errs.is_empty() {
        Ok(encode(obj))
    } else {
        let name = meta.name.clone().or_else(|| meta.generate_name.clone()).unwrap_or_default();
        Err(ObjectError::Invalid { kind: kind.kind.to_string(), name, causes: errs })
    }
}

/// Defaults and validates an object of `kind` (already in its storage version). Metadata that the
/// server owns (uid, resourceVersion, timestamps) is the caller's business.
pub fn admit(kind: &Kind, v: &Value) -> Result<Value, ObjectError> {
    let mut errs = Errors::new();
    match kind.kind {
        "Service" => {
            let mut o: Service = decode(kind, v)?;
            default_service(&mut o);
            validate::service(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Pod" => {
            let mut o: Pod = decode(kind, v)?;
            if let Some(s) = o.spec.as_mut() {
                default_pod_spec(s);
                default_host_network_ports(s);
            }
            if o.status.is_none() {
                o.status =
                    Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Pending".into()), ..Default::default() });
            }
            validate::pod(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Deployment" => {
            let mut o: Deployment = decode(kind, v)?;
            {
                let s = &mut o.spec;
                s.replicas.get_or_insert(1);
                s.revision_history_limit.get_or_insert(10);
                s.progress_deadline_seconds.get_or_insert(600);
                let st = s.strategy.get_or_insert_with(Default::default);
                let ty = st.type_.get_or_insert_with(|| "RollingUpdate".into());
                if ty == "RollingUpdate" {
                    let ru = st.rolling_update.get_or_insert_with(Default::default);
                    ru.max_surge.get_or_insert(IntOrString::String("25%".into()));
                    ru.max_unavailable.get_or_insert(IntOrString::String("25%".into()));
                }
                if let Some(ps) = s.template.spec.as_mut() {
                    default_pod_spec(ps);
                }
            }
            validate::deployment(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "ReplicaSet" => {
            let mut o: ReplicaSet = decode(kind, v)?;
            {
                let s = &mut o.spec;
                s.replicas.get_or_insert(1);
                if let Some(ps) = s.template.as_mut().and_then(|t| t.spec.as_mut()) {
                    default_pod_spec(ps);
                }
            }
            validate::replica_set(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "DaemonSet" => {
            let mut o: DaemonSet = decode(kind, v)?;
            default_daemon_set(&mut o);
            validate::daemon_set(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "StatefulSet" => {
            let mut o: StatefulSet = decode(kind, v)?;
            default_stateful_set(&mut o);
            validate::stateful_set(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Secret" => {
            // kube-apiserver's default; `kubectl create secret generic` leaves it to the server.
            let mut o: k8s_openapi::api::core::v1::Secret = decode(kind, v)?;
            validate::check_meta(&o.metadata, NameRule::Dns1123Subdomain, kind.namespaced, &mut errs);
            o.type_.get_or_insert_with(|| "Opaque".into());
            // As kube-apiserver stores it: `stringData` is written into `data` (winning over a
            // key of the same name) and not kept.
            if let Some(strings) = o.string_data.take() {
                let data = o.data.get_or_insert_with(Default::default);
                for (k, val) in strings {
                    data.insert(k, k8s_openapi::ByteString(val.into_bytes()));
                }
            }
            finish(kind, &o, &o.metadata, errs)
        }
        "ControllerRevision" => {
            let o: ControllerRevision = decode(kind, v)?;
            validate::controller_revision(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Job" => {
            let mut o: Job = decode(kind, v)?;
            default_job(&mut o);
            validate::job(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "ReplicationController" => {
            let mut o: ReplicationController = decode(kind, v)?;
            if let Some(s) = o.spec.as_mut() {
                s.replicas.get_or_insert(1);
                let tl = s.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
                if s.selector.as_ref().is_none_or(|m| m.is_empty()) {
                    s.selector = tl.clone();
                }
                if o.metadata.labels.as_ref().is_none_or(|m| m.is_empty()) {
                    o.metadata.labels = tl;
                }
                if let Some(ps) = s.template.as_mut().and_then(|t| t.spec.as_mut()) {
                    default_pod_spec(ps);
                }
            }
            validate::replication_controller(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Namespace" => {
            let mut o: Namespace = decode(kind, v)?;
            let st = o.status.get_or_insert_with(Default::default);
            st.phase.get_or_insert_with(|| "Active".into());
            let labels = o.metadata.labels.get_or_insert_with(Default::default);
            if let Some(n) = o.metadata.name.clone() {
                labels.insert("kubernetes.io/metadata.name".into(), n);
            }
            validate::namespace(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Endpoints" => {
            let mut o: k8s_openapi::api::core::v1::Endpoints = decode(kind, v)?;
            for s in o.subsets.iter_mut().flatten() {
                for p in s.ports.iter_mut().flatten() {
                    p.protocol.get_or_insert_with(|| "TCP".into());
                }
            }
            validate::endpoints(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "EndpointSlice" => {
            let mut o: EndpointSlice = decode(kind, v)?;
            for p in o.ports.iter_mut().flatten() {
                p.protocol.get_or_insert_with(|| "TCP".into());
            }
            validate::endpoint_slice(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Ingress" => {
            let o: Ingress = decode(kind, v)?;
            validate::ingress(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "NetworkPolicy" => {
            let mut o: NetworkPolicy = decode(kind, v)?;
            if let Some(s) = o.spec.as_mut() {
                // As kube-apiserver defaults it: an empty list too; Egress only when there is an
                // egress rule (`egress: []` isolates nothing).
                if s.policy_types.as_ref().is_none_or(|t| t.is_empty()) {
                    let mut t = vec!["Ingress".to_string()];
                    if s.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                        t.push("Egress".into());
                    }
                    s.policy_types = Some(t);
                }
                for r in s.ingress.iter_mut().flatten() {
                    for p in r.ports.iter_mut().flatten() {
                        p.protocol.get_or_insert_with(|| "TCP".into());
                    }
                }
                for r in s.egress.iter_mut().flatten() {
                    for p in r.ports.iter_mut().flatten() {
                        p.protocol.get_or_insert_with(|| "TCP".into());
                    }
                }
            }
            validate::network_policy(&o, &mut errs);
            finish(kind, &o, &o.metadata, errs)
        }
        "Lease" => {
            let o: k8s_openapi::api::coordination::v1::Lease = decode(kind, v)?;
            validate::lease(&o, &mut errs);
            // Kept as sent: the API's MicroTimes (microseconds) as they came.
            finish(kind, &o, &o.metadata, errs).map(|_| v.clone())
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => crate::rbac::admit(kind, v),
        _ => generic(kind, v),
    }
}

/// `v` decoded as its kind's type and encoded again: what the kind's schema knows of it (None
/// when it does not decode). Fields missing from this are unknown fields (`fieldValidation`).
pub fn known_fields(kind: &Kind, v: &Value) -> Option<Value> {
    use k8s_openapi::api::core::v1 as core;
    fn rt<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
        serde_json::from_value::<T>(v.clone()).ok().map(|t| encode(&t))
    }
    match kind.kind {
        "Namespace" => rt::<Namespace>(v),
        "Node" => rt::<core::Node>(v),
        "Pod" => rt::<Pod>(v),
        "Service" => rt::<Service>(v),
        "Endpoints" => rt::<core::Endpoints>(v),
        "Secret" => rt::<core::Secret>(v),
        "ConfigMap" => rt::<core::ConfigMap>(v),
        "ReplicationController" => rt::<ReplicationController>(v),
        "Event" => rt::<core::Event>(v),
        "ServiceAccount" => rt::<core::ServiceAccount>(v),
        "Deployment" => rt::<Deployment>(v),
        "ReplicaSet" => rt::<ReplicaSet>(v),
        "DaemonSet" => rt::<DaemonSet>(v),
        "StatefulSet" => rt::<StatefulSet>(v),
        "ControllerRevision" => rt::<ControllerRevision>(v),
        "Job" => rt::<Job>(v),
        "EndpointSlice" => rt::<EndpointSlice>(v),
        "Ingress" => rt::<Ingress>(v),
        "IngressClass" => rt::<k8s_openapi::api::networking::v1::IngressClass>(v),
        "NetworkPolicy" => rt::<NetworkPolicy>(v),
        "Lease" => rt::<k8s_openapi::api::coordination::v1::Lease>(v),
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => crate::rbac::known_fields(kind, v),
        _ => None,
    }
}

/// Kinds weft stores but does not interpret: metadata rules only, the body kept as sent.
fn generic(kind: &Kind, v: &Value) -> Result<Value, ObjectError> {
    let meta: ObjectMeta = match v.get("metadata") {
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| ObjectError::BadRequest(format!("{}: metadata is malformed: {e}", kind.kind)))?,
        None => ObjectMeta::default(),
    };
    let mut errs = Errors::new();
    validate::check_meta(&meta, NameRule::Dns1123Subdomain, kind.namespaced, &mut errs);
    if !errs.is_empty() {
        return finish(kind, &meta, &meta, errs);
    }
    // Still decode the body so malformed fields are refused, but keep what was sent.
    match kind.kind {
        "ConfigMap" => decode::<k8s_openapi::api::core::v1::ConfigMap>(kind, v).map(|_| ())?,
        "Node" => decode::<k8s_openapi::api::core::v1::Node>(kind, v).map(|_| ())?,
        "Event" => decode::<k8s_openapi::api::core::v1::Event>(kind, v).map(|_| ())?,
        "IngressClass" => decode::<k8s_openapi::api::networking::v1::IngressClass>(kind, v).map(|_| ())?,
        "ServiceAccount" => decode::<k8s_openapi::api::core::v1::ServiceAccount>(kind, v).map(|_| ())?,
        _ => {}
    }
    Ok(v.clone())
}

fn default_service(o: &mut Service) {
    let Some(s) = o.spec.as_mut() else { return };
    let ty = s.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    s.session_affinity.get_or_insert_with(|| "None".into());
    if s.session_affinity.as_deref() == Some("ClientIP") {
        let c = s.session_affinity_config.get_or_insert_with(Default::default);
        c.client_ip.get_or_insert_with(Default::default).timeout_seconds.get_or_insert(10800);
    }
    if ty != "ExternalName" {
        s.internal_traffic_policy.get_or_insert_with(|| "Cluster".into());
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        s.external_traffic_policy.get_or_insert_with(|| "Cluster".into());
    }
    if ty == "LoadBalancer" {
        s.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    for p in s.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        if p.target_port.is_none() || p.target_port == Some(IntOrString::Int(0)) {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    if o.status.is_none() {
        o.status = Some(Default::default());
        if ty == "LoadBalancer" {
            o.status.as_mut().unwrap().load_balancer = Some(Default::default());
        }
    }
}

/// As kube-apiserver's apps/v1 defaults: RollingUpdate with maxUnavailable 1 and maxSurge 0,
/// ten revisions kept.
fn default_daemon_set(o: &mut DaemonSet) {
    let s = &mut o.spec;
    let st = s.update_strategy.get_or_insert_with(Default::default);
    if st.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
        let ru = st.rolling_update.get_or_insert_with(Default::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
    s.revision_history_limit.get_or_insert(10);
    if let Some(ps) = s.template.spec.as_mut() {
        default_pod_spec(ps);
    }
}

/// As kube-apiserver's apps/v1 defaults: one replica, OrderedReady, RollingUpdate with
/// partition 0, ten revisions, PVCs retained (volumeClaimTemplates are accepted and ignored:
/// the lab has no volumes).
fn default_stateful_set(o: &mut StatefulSet) {
    let s = &mut o.spec;
    s.replicas.get_or_insert(1);
    s.pod_management_policy.get_or_insert_with(|| "OrderedReady".into());
    let st = s.update_strategy.get_or_insert_with(Default::default);
    if st.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
        st.rolling_update.get_or_insert_with(Default::default).partition.get_or_insert(0);
    }
    s.revision_history_limit.get_or_insert(10);
    let r = s.persistent_volume_claim_retention_policy.get_or_insert_with(Default::default);
    r.when_deleted.get_or_insert_with(|| "Retain".into());
    r.when_scaled.get_or_insert_with(|| "Retain".into());
    if let Some(ps) = s.template.spec.as_mut() {
        default_pod_spec(ps);
    }
}

/// As kube-apiserver's batch/v1 defaults and the Job strategy's PrepareForCreate: completions
/// and parallelism 1 when both are unset, backoffLimit 6, NonIndexed, not suspended, and unless
/// `manualSelector` a selector on the job's uid with the uid and name labels on the template.
fn default_job(o: &mut Job) {
    let uid = o.metadata.uid.clone();
    let name = o.metadata.name.clone().unwrap_or_default();
    let Some(s) = o.spec.as_mut() else { return };
    if s.completions.is_none() && s.parallelism.is_none() {
        s.completions = Some(1);
    }
    s.parallelism.get_or_insert(1);
    s.backoff_limit.get_or_insert(6);
    s.completion_mode.get_or_insert_with(|| "NonIndexed".into());
    s.suspend.get_or_insert(false);
    s.pod_replacement_policy.get_or_insert_with(|| "TerminatingOrFailed".into());
    if s.manual_selector != Some(true)
        && s.selector.is_none()
        && let Some(uid) = uid
    {
        let labels =
            s.template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            labels.insert(k.into(), v.clone());
        }
        s.selector = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some([("batch.kubernetes.io/controller-uid".to_string(), uid)].into()),
            match_expressions: None,
        });
    }
    if o.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) {
        o.metadata.labels = s.template.metadata.as_ref().and_then(|m| m.labels.clone());
    }
    if let Some(ps) = s.template.spec.as_mut() {
        default_pod_spec(ps);
    }
}

/// A hostNetwork Pod's unset hostPorts are its containerPorts (kube-apiserver does this for
/// Pods only, not for templates, since 1.28).
fn default_host_network_ports(s: &mut k8s_openapi::api::core::v1::PodSpec) {
    if s.host_network != Some(true) {
        return;
    }
    for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
        for p in c.ports.iter_mut().flatten() {
            if p.host_port.unwrap_or(0) == 0 {
                p.host_port = Some(p.container_port);
            }
        }
    }
}

fn default_pod_spec(s: &mut k8s_openapi::api::core::v1::PodSpec) {
    s.restart_policy.get_or_insert_with(|| "Always".into());
    s.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    s.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    s.termination_grace_period_seconds.get_or_insert(30);
    s.security_context.get_or_insert_with(Default::default);
    for c in s.containers.iter_mut().chain(s.init_containers.iter_mut().flatten()) {
        let image = c.image.clone().unwrap_or_default();
        let latest = !image.contains(':') || image.ends_with(":latest");
        c.image_pull_policy.get_or_insert_with(|| if latest { "Always".into() } else { "IfNotPresent".into() });
        c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy.get_or_insert_with(|| "File".into());
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_gvk;
    use serde_json::json;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "my-service"}, "spec": spec})
    }

    fn causes(r: Result<Value, ObjectError>) -> Vec<String> {
        match r {
            Err(ObjectError::Invalid { causes, .. }) => causes.iter().map(|c| c.field.clone()).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_mistyped_field_is_named_in_the_400() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": "two", "selector": {}, "template": {}}});
        let k = crate::kinds::by_path("apps", "v1", "deployments").unwrap();
        match admit(k, &d) {
            Err(ObjectError::BadRequest(m)) => assert_eq!(
                m,
                "Deployment in version \"v1\" cannot be handled as a Deployment: spec.replicas: invalid type: string \"two\", expected i32"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_secret_is_stored_as_kube_apiserver_stores_it() {
        let k = by_gvk("v1", "Secret").unwrap();
        let v = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
            "data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "two"}});
        let got = admit(k, &v).unwrap();
        assert_eq!(got["type"], "Opaque");
        assert_eq!(
            got["data"],
            json!({"a": "bmV3", "b": "dHdv", "keep": "eA=="}),
            "stringData wins and is written into data"
        );
        assert!(got.get("stringData").is_none());
        let bad =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "Not_A_Name", "namespace": "default"}});
        assert_eq!(causes(admit(k, &bad)), ["metadata.name"]);
        let tls = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t", "namespace": "default"},
            "type": "kubernetes.io/tls"});
        assert_eq!(admit(k, &tls).unwrap()["type"], "kubernetes.io/tls");
    }

    #[test]
    fn policy_types_default_as_kube_apiserver_defaults_them() {
        let k = by_gvk("networking.k8s.io/v1", "NetworkPolicy").unwrap();
        let types = |spec: Value| {
            let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "p", "namespace": "default"}, "spec": spec});
            admit(k, &v).unwrap()["spec"]["policyTypes"].clone()
        };
        let any = json!([{}]);
        assert_eq!(types(json!({"podSelector": {}})), json!(["Ingress"]));
        assert_eq!(types(json!({"podSelector": {}, "egress": []})), json!(["Ingress"]), "an empty egress list");
        assert_eq!(types(json!({"podSelector": {}, "egress": any})), json!(["Ingress", "Egress"]));
        assert_eq!(types(json!({"podSelector": {}, "policyTypes": [], "egress": any})), json!(["Ingress", "Egress"]));
        assert_eq!(types(json!({"podSelector": {}, "policyTypes": ["Egress"]})), json!(["Egress"]));
    }

    #[test]
    fn a_policy_peer_names_one_thing_and_an_ip_block_stands_alone() {
        let k = by_gvk("networking.k8s.io/v1", "NetworkPolicy").unwrap();
        let np = |from: Value| {
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "p", "namespace": "default"}, "spec": {"podSelector": {}, "ingress": [{"from": from}]}})
        };
        let ok = json!([{"podSelector": {}, "namespaceSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]);
        assert!(admit(k, &np(ok)).is_ok());
        let bad = json!([{}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]);
        assert_eq!(causes(admit(k, &np(bad))), ["spec.ingress[0].from[0]", "spec.ingress[0].from[1]"]);
    }

    #[test]
    fn special_addresses_are_no_endpoints_and_no_external_ips() {
        let k = by_gvk("v1", "Service").unwrap();
        let ips = ["127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "::1", "fe80::1"];
        let out = causes(admit(k, &svc(json!({"externalIPs": ips, "ports": [{"port": 80}]}))));
        assert_eq!(out.len(), ips.len(), "{out:?}");
        let k = by_gvk("discovery.k8s.io/v1", "EndpointSlice").unwrap();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"]}, {"addresses": ["169.254.169.254"]}, {"addresses": ["10.244.1.2"]}]});
        assert_eq!(causes(admit(k, &slice)), ["endpoints[0].addresses[0]", "endpoints[1].addresses[0]"]);
        let k = by_gvk("v1", "Endpoints").unwrap();
        let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "127.0.0.2"}], "notReadyAddresses": [{"ip": "0.0.0.0"}], "ports": [{"port": 80}]}]});
        assert_eq!(causes(admit(k, &ep)), ["subsets[0].addresses[0].ip", "subsets[0].notReadyAddresses[0].ip"]);
    }

    #[test]
    fn service_defaults() {
        let k = by_gvk("v1", "Service").unwrap();
        let out = admit(k, &svc(json!({"selector": {"app": "MyApp"}, "ports": [{"port": 80}]}))).unwrap();
        assert_eq!(out["spec"]["type"], "ClusterIP");
        assert_eq!(out["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(out["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(out["spec"]["sessionAffinity"], "None");
    }

    #[test]
    fn service_errors_name_fields() {
        let k = by_gvk("v1", "Service").unwrap();
        assert_eq!(causes(admit(k, &svc(json!({"ports": [{"port": 0}]})))), vec!["spec.ports[0].port"]);
        assert_eq!(
            causes(admit(k, &svc(json!({"ports": [{"port": 80, "protocol": "ICMP"}]})))),
            vec!["spec.ports[0].protocol"]
        );
        assert_eq!(
            causes(admit(k, &svc(json!({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]})))),
            vec!["spec.ports[1]"]
        );
        assert_eq!(causes(admit(k, &svc(json!({"ports": [{"port": 80}, {"port": 81}]})))).len(), 2);
        assert_eq!(
            causes(admit(k, &svc(json!({"type": "ClusterIP", "ports": [{"port": 80, "nodePort": 30001}]})))),
            vec!["spec.ports[0].nodePort"]
        );
        assert_eq!(
            causes(admit(k, &svc(json!({"clusterIP": "10.96.0.300", "ports": [{"port": 1}]})))),
            vec!["spec.clusterIP"]
        );
        assert_eq!(causes(admit(k, &svc(json!({"ports": []})))), vec!["spec.ports"]);
        assert!(admit(k, &svc(json!({"clusterIP": "None"}))).is_ok());
        let bad_name = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1abc"}, "spec": {"ports": [{"port": 1}]}});
        assert_eq!(causes(admit(k, &bad_name)), vec!["metadata.name"]);
        let msg = admit(k, &svc(json!({"ports": [{"port": 70000, "targetPort": 80}]}))).unwrap_err().to_string();
        assert_eq!(
            msg,
            "Service \"my-service\" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn bad_types_are_bad_requests() {
        let k = by_gvk("v1", "Service").unwrap();
        assert!(matches!(admit(k, &svc(json!({"ports": "eighty"}))), Err(ObjectError::BadRequest(_))));
    }

    #[test]
    fn deployment_selector_must_match() {
        let k = by_gvk("apps/v1", "Deployment").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "n", "image": "nginx"}]}}}});
        assert_eq!(causes(admit(k, &d)), vec!["spec.template.metadata.labels"]);
    }

    #[test]
    fn workload_kinds_default_as_kube_apiserver_does() {
        let tmpl = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": tmpl}});
        let out = admit(by_gvk("apps/v1", "DaemonSet").unwrap(), &ds).unwrap();
        assert_eq!(
            out["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(out["spec"]["revisionHistoryLimit"], 10);
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "a"}}, "template": tmpl,
                     "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        let out = admit(by_gvk("apps/v1", "StatefulSet").unwrap(), &sts).unwrap();
        assert_eq!(out["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(out["spec"]["updateStrategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
        assert_eq!(out["spec"]["replicas"], 1);
        let mut job_tmpl = tmpl.clone();
        job_tmpl["spec"]["restartPolicy"] = json!("Never");
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "namespace": "default", "uid": "u-1"},
            "spec": {"template": job_tmpl}});
        let out = admit(by_gvk("batch/v1", "Job").unwrap(), &job).unwrap();
        assert_eq!((out["spec"]["completions"].as_i64(), out["spec"]["parallelism"].as_i64()), (Some(1), Some(1)));
        assert_eq!(out["spec"]["backoffLimit"], 6);
        assert_eq!(out["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], "u-1");
        assert_eq!(out["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(out["metadata"]["labels"]["job-name"], "pi");
        // Only parallelism given: completions stay unset (a work queue).
        let mut wq = job.clone();
        wq["spec"]["parallelism"] = json!(3);
        let out = admit(by_gvk("batch/v1", "Job").unwrap(), &wq).unwrap();
        assert!(out["spec"]["completions"].is_null());
    }

    #[test]
    fn workload_kinds_are_validated_by_field() {
        let tmpl = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "namespace": "default", "uid": "u"},
            "spec": {"template": tmpl, "backoffLimit": -1}});
        assert_eq!(
            causes(admit(by_gvk("batch/v1", "Job").unwrap(), &job)),
            ["spec.template.spec.restartPolicy", "spec.backoffLimit"]
        );
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "b"}}, "template": tmpl,
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}}});
        assert_eq!(
            causes(admit(by_gvk("apps/v1", "DaemonSet").unwrap(), &ds)),
            ["spec.template.metadata.labels", "spec.updateStrategy.rollingUpdate.maxUnavailable"]
        );
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": tmpl, "podManagementPolicy": "Random"}});
        assert_eq!(causes(admit(by_gvk("apps/v1", "StatefulSet").unwrap(), &sts)), ["spec.podManagementPolicy"]);
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": tmpl,
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "150%", "maxUnavailable": 0}}}});
        assert_eq!(
            causes(admit(by_gvk("apps/v1", "Deployment").unwrap(), &d)),
            ["spec.strategy.rollingUpdate.maxSurge"]
        );
    }

    #[test]
    fn rc_selector_defaults_to_template_labels() {
        let k = by_gvk("v1", "ReplicationController").unwrap();
        let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "busybox0"},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "busybox0"}},
                "spec": {"containers": [{"name": "busybox", "image": "busybox", "command": ["sleep", "3600"]}]}}}});
        let out = admit(k, &rc).unwrap();
        assert_eq!(out["spec"]["selector"]["app"], "busybox0");
        assert_eq!(out["metadata"]["labels"]["app"], "busybox0");
    }

    #[test]
    fn a_host_network_pods_ports_are_its_nodes() {
        let pod = |ports: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "nginx", "ports": ports}]}})
        };
        let k = by_gvk("v1", "Pod").unwrap();
        // Unset hostPorts become the containerPorts.
        let got = admit(k, &pod(json!([{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]))).unwrap();
        assert_eq!(got["spec"]["containers"][0]["ports"][0]["hostPort"], 8080);
        assert_eq!(got["spec"]["containers"][0]["ports"][1]["hostPort"], 53);
        // A different one is refused, naming the field.
        let bad = admit(k, &pod(json!([{"containerPort": 8080, "hostPort": 9090}])));
        assert_eq!(causes(bad), ["spec.containers[0].ports[0].hostPort"]);
        // In a template an unset hostPort stays unset and is accepted; a different one is not.
        let ds = |ports: Value| {
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
                "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "nginx", "ports": ports}]}}}})
        };
        let k = by_gvk("apps/v1", "DaemonSet").unwrap();
        let got = admit(k, &ds(json!([{"containerPort": 8080}]))).unwrap();
        assert!(got["spec"]["template"]["spec"]["containers"][0]["ports"][0].get("hostPort").is_none());
        let bad = admit(k, &ds(json!([{"containerPort": 8080, "hostPort": 9090}])));
        assert_eq!(causes(bad), ["spec.template.spec.containers[0].ports[0].hostPort"]);
    }
}
