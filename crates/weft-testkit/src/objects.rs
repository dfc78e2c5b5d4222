//! Objects as tests and benchmarks write them: typed, from the JSON a manifest would hold, in
//! the `default` namespace unless moved with [`in_namespace`].

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("a fixture that does not parse: {e}"))
}

/// A Service `name` in `default` with this `spec`.
pub fn service(name: &str, spec: Value) -> Service {
    typed(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}))
}

/// A ready endpoint at `ip`.
pub fn endpoint(ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true}})
}

/// A port of a slice: `name` (may be empty), `protocol` (TCP, UDP), `port`.
pub fn port(name: &str, protocol: &str, port: u16) -> Value {
    json!({"name": name, "protocol": protocol, "port": port})
}

/// An IPv4 EndpointSlice of the Service `service` in `default` (named `<service>-x`, labelled
/// with the Service's name) with these endpoints ([`endpoint`]) and ports ([`port`]).
pub fn slice(
    service: &str,
    endpoints: impl IntoIterator<Item = Value>,
    ports: impl IntoIterator<Item = Value>,
) -> EndpointSlice {
    let endpoints: Vec<Value> = endpoints.into_iter().collect();
    let ports: Vec<Value> = ports.into_iter().collect();
    typed(json!({
        "metadata": {"name": format!("{service}-x"), "namespace": "default", "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    }))
}

/// A Pod `name` in `default` with this `spec`.
pub fn pod(name: &str, spec: Value) -> Pod {
    typed(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}))
}

/// A container that sleeps (busybox), for pods that only need to be there.
pub fn sleeper(name: &str) -> Value {
    json!({"name": name, "image": "busybox", "command": ["sleep", "600"]})
}

/// A Namespace.
pub fn namespace(name: &str) -> Namespace {
    typed(json!({"metadata": {"name": name}}))
}

/// `obj` moved to the namespace `ns`.
pub fn in_namespace<K: kube::Resource>(mut obj: K, ns: &str) -> K {
    obj.meta_mut().namespace = Some(ns.to_string());
    obj
}

/// `obj` at the resource version `rv` (as if read from the API).
pub fn at_version<K: kube::Resource>(mut obj: K, rv: &str) -> K {
    obj.meta_mut().resource_version = Some(rv.to_string());
    obj
}

/// A manifest of these objects for `weft apply -f` (JSON documents, which YAML reads too),
/// each with its apiVersion and kind.
pub fn manifest<K: serde::Serialize>(objects: &[K]) -> String {
    objects
        .iter()
        .map(|o| serde_json::to_string(o).expect("a typed object serialises"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_read_as_the_api_would_hold_them() {
        let s = service("web", json!({"clusterIP": "10.96.0.7", "ports": [{"port": 80, "protocol": "TCP"}]}));
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.7"));
        let e = slice("web", ["10.244.1.2", "10.244.2.2"].map(endpoint), [port("", "TCP", 8080)]);
        assert_eq!(e.metadata.name.as_deref(), Some("web-x"));
        assert_eq!(e.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL], "web");
        let eps = e.endpoints.as_ref().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(e.ports.as_ref().unwrap()[0].port, Some(8080));
        let e = at_version(in_namespace(e, "other"), "7");
        assert_eq!(
            (e.metadata.namespace.as_deref(), e.metadata.resource_version.as_deref()),
            (Some("other"), Some("7"))
        );
        let p = pod("p", json!({"nodeName": "node-1", "containers": [sleeper("c")]}));
        assert_eq!(p.spec.unwrap().containers[0].command.as_ref().unwrap()[0], "sleep");
    }

    #[test]
    fn a_manifest_carries_kinds() {
        let m = manifest(&[namespace("a"), namespace("b")]);
        let docs: Vec<Value> = m.split("\n---\n").map(|d| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[1]["kind"].as_str(), docs[1]["apiVersion"].as_str()), (Some("Namespace"), Some("v1")));
        assert_eq!(docs[1]["metadata"]["name"], "b");
    }
}
