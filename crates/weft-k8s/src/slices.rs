//! EndpointSlices by the Service they belong to (the `kubernetes.io/service-name` label in the
//! slice's namespace).

use std::borrow::Borrow;
use std::collections::HashMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::labels::SERVICE_NAME;

/// (namespace, Service name).
pub type ServiceKey<'a> = (&'a str, &'a str);

/// The Service a slice belongs to; None for a slice without the label.
pub fn service_of(s: &EndpointSlice) -> Option<ServiceKey<'_>> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME)?;
    Some((s.metadata.namespace.as_deref().unwrap_or(""), name.as_str()))
}

/// Does the slice belong to the Service `namespace/name`?
pub fn belongs_to(s: &EndpointSlice, namespace: &str, name: &str) -> bool {
    service_of(s) == Some((namespace, name))
}

/// Slices grouped by their Service, in the order given; slices of no Service are left out.
pub fn by_service<'a, S: Borrow<EndpointSlice> + 'a>(
    slices: impl IntoIterator<Item = &'a S>,
) -> HashMap<ServiceKey<'a>, Vec<&'a S>> {
    let mut out: HashMap<ServiceKey<'a>, Vec<&'a S>> = HashMap::new();
    for s in slices {
        if let Some(k) = service_of(s.borrow()) {
            out.entry(k).or_default().push(s);
        }
    }
    out
}

/// The label selector (string syntax) of a Service's slices, for a list or watch.
pub fn selector_for(service: &str) -> String {
    format!("{SERVICE_NAME}={service}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn slice(ns: &str, name: &str, labels: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
            "addressType": "IPv4", "endpoints": []}))
        .unwrap()
    }

    #[test]
    fn slices_group_by_namespace_and_service() {
        let s = vec![
            Arc::new(slice("default", "web-1", json!({SERVICE_NAME: "web"}))),
            Arc::new(slice("default", "web-2", json!({SERVICE_NAME: "web"}))),
            Arc::new(slice("other", "web-1", json!({SERVICE_NAME: "web"}))),
            Arc::new(slice("default", "loose", json!({"app": "web"}))),
            Arc::new(slice("default", "unlabelled", serde_json::Value::Null)),
        ];
        let g = by_service(&s);
        assert_eq!(g.len(), 2);
        let names = |k| g[&k].iter().map(|s| s.metadata.name.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(names(("default", "web")), ["web-1", "web-2"]);
        assert_eq!(names(("other", "web")), ["web-1"]);
        assert!(belongs_to(&s[0], "default", "web"));
        assert!(!belongs_to(&s[2], "default", "web"));
        assert_eq!(service_of(&s[3]), None);
        // Plain slices and references group the same way.
        let plain: Vec<EndpointSlice> = s.iter().map(|x| (**x).clone()).collect();
        assert_eq!(by_service(&plain).len(), 2);
        let refs: Vec<&EndpointSlice> = plain.iter().collect();
        assert_eq!(by_service(refs.iter().copied()).len(), 2);
        assert_eq!(selector_for("kube-dns"), "kubernetes.io/service-name=kube-dns");
    }
}
