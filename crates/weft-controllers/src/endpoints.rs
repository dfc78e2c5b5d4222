//! EndpointSlices (discovery.k8s.io/v1) and the legacy Endpoints, as kube-controller-manager
//! derives them: for a Service with a selector, one endpoint per matching pod with an IP
//! (`ready`, `serving`, `terminating`; `publishNotReadyAddresses` makes every one ready), ports
//! resolved per pod (a named `targetPort` looks up the pod's container port), at most 100
//! endpoints a slice, labelled `kubernetes.io/service-name`. For a Service without a selector,
//! the Endpoints a user writes are mirrored into a slice (the mirroring controller's job).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use weft_k8s::endpoints::Conditions;
use weft_k8s::labels::{
    ENDPOINTSLICE_CONTROLLER as CONTROLLER, MANAGED_BY, MIRRORING_CONTROLLER as MIRROR, SERVICE_NAME,
};
use weft_k8s::selectors::service_selects;

pub const MAX_PER_SLICE: usize = 100;

/// A Service port's target on one pod, or None when the pod has no such named port.
fn resolve(target: &Option<IntOrString>, port: i32, proto: &str, p: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            p.spec.iter().flat_map(|s| s.containers.iter()).flat_map(|c| c.ports.iter().flatten()).find_map(|cp| {
                (cp.name.as_deref() == Some(name) && cp.protocol.as_deref().unwrap_or("TCP") == proto)
                    .then_some(cp.container_port)
            })
        }
    }
}

/// The slices and the Endpoints a Service with a selector should have (pure).
pub fn plan(svc: &Service, pods: &[Arc<Pod>]) -> (Vec<Value>, Value) {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.clone().unwrap_or_default();
    // Group pods by their resolved port set (name, protocol, port): a slice has one port list.
    type PortSet = Vec<(String, String, i32)>;
    let mut groups: BTreeMap<PortSet, Vec<Value>> = BTreeMap::new();
    let mut subsets: BTreeMap<PortSet, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut matching: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(&ns) && service_selects(spec.selector.as_ref(), p.metadata.labels.as_ref())
        })
        .filter(|p| !weft_k8s::pods::is_finished(p))
        .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        .collect();
    matching.sort_by_key(|p| p.name_any());
    for p in matching {
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        let key: Vec<(String, String, i32)> = ports
            .iter()
            .filter_map(|sp| {
                let proto = sp.protocol.clone().unwrap_or("TCP".into());
                resolve(&sp.target_port, sp.port, &proto, p).map(|t| (sp.name.clone().unwrap_or_default(), proto, t))
            })
            .collect();
        if key.is_empty() && !ports.is_empty() {
            continue;
        }
        let Conditions { ready, serving, terminating } = Conditions::for_pod(
            weft_k8s::pods::is_ready(p),
            p.metadata.deletion_timestamp.is_some(),
            publish_not_ready,
        );
        let target = json!({"kind": "Pod", "name": p.name_any(), "namespace": ns, "uid": p.metadata.uid});
        let mut ep = json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                            "targetRef": target});
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            ep["nodeName"] = json!(n);
        }
        // The pod's hostname names the endpoint when its subdomain is this Service (the DNS
        // spec's `<hostname>.<subdomain>.<ns>.svc` records come from it).
        let hostname =
            p.spec.as_ref().filter(|s| s.subdomain.as_deref() == Some(&name)).and_then(|s| s.hostname.clone());
        if let Some(h) = &hostname {
            ep["hostname"] = json!(h);
        }
        groups.entry(key.clone()).or_default().push(ep);
        let mut addr =
            json!({"ip": ip, "nodeName": p.spec.as_ref().and_then(|s| s.node_name.clone()), "targetRef": target});
        if let Some(h) = hostname {
            addr["hostname"] = json!(h);
        }
        let e = subsets.entry(key).or_default();
        if ready { e.0.push(addr) } else { e.1.push(addr) }
    }
    let mut slices = vec![];
    for (key, eps) in &groups {
        let port_list: Vec<Value> = key.iter().map(|(n, p, t)| json!({"name": n, "protocol": p, "port": t})).collect();
        for (i, chunk) in eps.chunks(MAX_PER_SLICE).enumerate() {
            let suffix = weft_k8s::names::safe_suffix(&format!("{key:?}/{i}"), 5, 8);
            slices.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-{suffix}"), "namespace": ns,
                    "labels": {SERVICE_NAME: name, MANAGED_BY: CONTROLLER},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
                "addressType": "IPv4",
                "endpoints": chunk,
                "ports": port_list,
            }));
        }
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .map(|(key, (ready, not_ready))| {
            let mut s = json!({"ports": key.iter().map(|(n, p, t)| json!({"name": n, "protocol": p, "port": t})).collect::<Vec<_>>()});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns, "labels": svc.metadata.labels},
        "subsets": subsets});
    (slices, endpoints)
}

/// A slice mirroring the Endpoints a user wrote for a Service without a selector.
pub fn plan_mirror(svc: &Service, ep: &Endpoints) -> Vec<Value> {
    // Endpoints that keep their own slice (the API server's `default/kubernetes`) say so, as
    // upstream's mirroring controller reads it.
    if ep.metadata.labels.as_ref().and_then(|l| l.get("endpointslice.kubernetes.io/skip-mirror")).map(String::as_str)
        == Some("true")
    {
        return vec![];
    }
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_default();
    let mut out = vec![];
    for (i, sub) in ep.subsets.iter().flatten().enumerate() {
        let ports: Vec<Value> = sub.ports.iter().flatten().map(|p| json!({"name": p.name.clone().unwrap_or_default(), "protocol": p.protocol.clone().unwrap_or("TCP".into()), "port": p.port})).collect();
        let mut eps = vec![];
        for (addrs, ready) in [(&sub.addresses, true), (&sub.not_ready_addresses, false)] {
            for a in addrs.iter().flatten() {
                let mut e = json!({"addresses": [a.ip], "conditions": {"ready": ready, "serving": ready, "terminating": false}});
                if let Some(n) = &a.node_name {
                    e["nodeName"] = json!(n);
                }
                if let Some(h) = &a.hostname {
                    e["hostname"] = json!(h);
                }
                eps.push(e);
            }
        }
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-mirror-{i}"), "namespace": ns,
                "labels": {SERVICE_NAME: name, MANAGED_BY: MIRROR},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
            "addressType": "IPv4", "endpoints": eps, "ports": ports,
        }));
    }
    out
}

fn same(existing: &Value, want: &Value, fields: &[&str]) -> bool {
    fields.iter().all(|f| existing.get(*f).unwrap_or(&Value::Null) == want.get(*f).unwrap_or(&Value::Null))
        && existing.pointer("/metadata/labels") == want.pointer("/metadata/labels")
}

pub async fn reconcile(
    client: &kube::Client,
    services: &[Arc<Service>],
    pods: &[Arc<Pod>],
    slices: &[Arc<EndpointSlice>],
    endpoints: &[Arc<Endpoints>],
) -> anyhow::Result<()> {
    // Indexed once per pass: looking each Service's objects up in the whole lists made a pass
    // quadratic (seconds of CPU every pass at 10 000 Services).
    let mut pods_in: HashMap<&str, Vec<Arc<Pod>>> = HashMap::new();
    for p in pods {
        pods_in.entry(p.metadata.namespace.as_deref().unwrap_or_default()).or_default().push(p.clone());
    }
    let endpoints_of: HashMap<(&str, &str), &Arc<Endpoints>> = endpoints
        .iter()
        .filter_map(|e| Some(((e.metadata.namespace.as_deref()?, e.metadata.name.as_deref()?), e)))
        .collect();
    let slices_of = weft_k8s::slices::by_service(slices);
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let cur_endpoints = endpoints_of.get(&(ns.as_str(), name.as_str())).copied();
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let has_selector = spec.and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty());
        let (want, managed_by) = if has_selector {
            let (slices_want, ep_want) = plan(svc, pods_in.get(ns.as_str()).map(Vec::as_slice).unwrap_or_default());
            let api: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
            let cur_v = cur_endpoints.map(|c| serde_json::to_value(&**c).unwrap_or_default());
            let norm = |v: &Value| {
                v.get("subsets").cloned().filter(|s| s.as_array().is_some_and(|a| !a.is_empty())).unwrap_or(Value::Null)
            };
            match cur_v {
                None => {
                    let e: Endpoints = serde_json::from_value(ep_want)?;
                    let _ = api.create(&PostParams::default(), &e).await;
                }
                Some(c) if norm(&c) != norm(&ep_want) => {
                    let mut e: Endpoints = serde_json::from_value(ep_want)?;
                    e.metadata.resource_version =
                        c.pointer("/metadata/resourceVersion").and_then(|r| r.as_str()).map(String::from);
                    let _ = api.replace(&name, &PostParams::default(), &e).await;
                }
                _ => {}
            }
            (slices_want, CONTROLLER)
        } else {
            (cur_endpoints.map(|e| plan_mirror(svc, e)).unwrap_or_default(), MIRROR)
        };
        let mine: Vec<&Arc<EndpointSlice>> = slices_of
            .get(&(ns.as_str(), name.as_str()))
            .into_iter()
            .flatten()
            .filter(|s| {
                s.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(managed_by)
            })
            .copied()
            .collect();
        if want.is_empty() && mine.is_empty() {
            // Most Services of a large cluster on a pass with nothing to do.
            continue;
        }
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        for w in &want {
            let wname = w.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
            match mine.iter().find(|s| s.name_any() == wname) {
                None => {
                    let s: EndpointSlice = serde_json::from_value(w.clone())?;
                    let _ = api.create(&PostParams::default(), &s).await;
                }
                Some(cur) => {
                    let cur_v = serde_json::to_value(&***cur).unwrap_or_default();
                    if !same(&cur_v, w, &["endpoints", "ports", "addressType"]) {
                        let mut s: EndpointSlice = serde_json::from_value(w.clone())?;
                        s.metadata.resource_version = cur.metadata.resource_version.clone();
                        let _ = api.replace(wname, &PostParams::default(), &s).await;
                    }
                }
            }
        }
        for cur in mine {
            if !want.iter().any(|w| w.pointer("/metadata/name").and_then(|n| n.as_str()) == Some(&cur.name_any())) {
                let _ = api.delete(&cur.name_any(), &DeleteParams::default()).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, labels: Value, ports: Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": labels, "uid": name},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        })).unwrap())
    }

    fn svc(spec: Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "uid": "u"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn slices_follow_selector_readiness_and_named_ports() {
        let s = svc(
            json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}),
        );
        let pods = vec![
            pod("a", "10.0.0.1", true, json!({"app": "web"}), json!([{"name": "web", "containerPort": 8080}])),
            pod("b", "10.0.0.2", false, json!({"app": "web"}), json!([{"name": "web", "containerPort": 9090}])),
            pod("c", "10.0.0.3", true, json!({"app": "other"}), json!([{"name": "web", "containerPort": 8080}])),
        ];
        let (slices, ep) = plan(&s, &pods);
        assert_eq!(slices.len(), 2, "two port sets: 8080 and 9090");
        let all: Vec<&Value> = slices.iter().flat_map(|s| s["endpoints"].as_array().unwrap()).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(slices[0]["metadata"]["labels"][SERVICE_NAME], "web");
        let ready_b = all.iter().find(|e| e["addresses"][0] == "10.0.0.2").unwrap();
        assert_eq!(ready_b["conditions"]["ready"], false);
        assert!(ep["subsets"].as_array().unwrap().iter().any(|s| s.get("notReadyAddresses").is_some()));
        // publishNotReadyAddresses makes every endpoint ready.
        let s2 = svc(json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80}]}));
        let (slices, _) = plan(&s2, &pods);
        assert!(slices[0]["endpoints"].as_array().unwrap().iter().all(|e| e["conditions"]["ready"] == true));
    }

    #[test]
    fn at_most_100_endpoints_a_slice() {
        let s = svc(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let pods: Vec<Arc<Pod>> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    true,
                    json!({"app": "web"}),
                    json!([]),
                )
            })
            .collect();
        let (slices, _) = plan(&s, &pods);
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|s| s["endpoints"].as_array().unwrap().len() <= 100));
    }
}
