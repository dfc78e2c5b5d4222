//! Service addresses and ports: a ClusterIP and node ports for each Service, taken through a
//! [`Reservation`] that gives them back unless the write that needed them commits, released
//! on delete, and rebuilt from the stored Services at start.

use serde_json::{Value, json};
use weft_api::FieldError;

use super::{Api, obj_name};
use crate::alloc::{self, AllocError, Reservation};
use crate::status::ApiError;

impl Api {
    /// Re-reserves the IPs and ports of stored Services (after a restart).
    pub fn rebuild_allocations(&self) {
        let (svcs, _) = self.store.list("services", None);
        let mut a = self.alloc.lock().unwrap();
        for s in svcs {
            let (ips, ports) = service_allocations(&s);
            for ip in ips {
                let _ = a.ips.allocate(ip);
            }
            for p in ports {
                let _ = a.ports.allocate(p);
            }
        }
    }

    /// Frees the IPs and ports a deleted Service held.
    pub(super) fn release_service(&self, deleted: &Value) {
        let (ips, ports) = service_allocations(deleted);
        alloc::release(&self.alloc, &ips, &ports);
    }

    /// Gives a Service its ClusterIP and node ports (keeping those it already had on update),
    /// held by the returned reservation until the write commits.
    pub(super) fn allocate_service(&self, v: &mut Value, old: Option<&Value>) -> Result<Reservation<'_>, ApiError> {
        let name = obj_name(v);
        let mut r = Reservation::new(&self.alloc);
        let ty = v.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(|i| i.as_str())
            .filter(|i| !i.is_empty())
            .map(String::from);
        let want_ip = v.pointer("/spec/clusterIP").and_then(|i| i.as_str()).unwrap_or("").to_string();
        let spec =
            v.get_mut("spec").and_then(|s| s.as_object_mut()).ok_or_else(|| ApiError::bad_request("spec missing"))?;
        if ty == "ExternalName" {
            spec.remove("clusterIPs");
            if let Some(ip) = old_ip.as_deref().and_then(|i| i.parse().ok()) {
                r.give_up_ip(ip);
            }
        } else if let Some(old_ip) = old_ip.filter(|_| old.is_some()) {
            if !want_ip.is_empty() && want_ip != old_ip {
                return Err(ApiError::invalid(
                    "Service",
                    &name,
                    &[FieldError::invalid_str(
                        "spec.clusterIP",
                        &want_ip,
                        "field is immutable: delete and re-create the Service to change its IP",
                    )],
                ));
            }
            spec.insert("clusterIP".into(), json!(old_ip));
            spec.insert("clusterIPs".into(), json!([old_ip]));
        } else if want_ip == "None" {
            spec.insert("clusterIPs".into(), json!(["None"]));
        } else {
            let ip = if want_ip.is_empty() {
                r.next_ip().map_err(|_| {
                    ApiError::internal(format!(
                        "failed to allocate a serviceIP: range {} is full: delete unused Services or widen --service-cidr",
                        r.ip_range()
                    ))
                })?
            } else {
                let ip: std::net::IpAddr = want_ip.parse().map_err(|_| ApiError::bad_request("bad clusterIP"))?;
                r.ip(ip).map_err(|e| {
                    let detail = match e {
                        AllocError::OutOfRange(m) => format!("failed to allocate IP {ip}: {m}"),
                        _ => format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    };
                    ApiError::invalid(
                        "Service",
                        &name,
                        &[FieldError::invalid("spec.clusterIPs", format!("[]string{{\"{ip}\"}}"), detail)],
                    )
                })?;
                ip
            };
            spec.insert("clusterIP".into(), json!(ip.to_string()));
            spec.insert("clusterIPs".into(), json!([ip.to_string()]));
        }
        if ty != "ExternalName" {
            let v6 = spec.get("clusterIP").and_then(|i| i.as_str()).is_some_and(|i| i.contains(':'));
            spec.entry("ipFamilies").or_insert_with(|| json!([if v6 { "IPv6" } else { "IPv4" }]));
            spec.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
        }
        // Node ports.
        let old_ports: Vec<(i64, String, i64)> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let np = p.get("nodePort")?.as_i64()?;
                Some((
                    p.get("port")?.as_i64()?,
                    p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP").to_string(),
                    np,
                ))
            })
            .collect();
        let needs_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && spec.get("allocateLoadBalancerNodePorts").and_then(|b| b.as_bool()) != Some(false));
        let mut kept = vec![];
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for (i, p) in ports.iter_mut().enumerate() {
                let port = p.get("port").and_then(|x| x.as_i64()).unwrap_or(0);
                let proto = p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP").to_string();
                let asked = p.get("nodePort").and_then(|x| x.as_i64()).filter(|n| *n != 0);
                if !needs_node_ports && asked.is_none() {
                    continue;
                }
                let np = match asked {
                    Some(n) if old_ports.iter().any(|(_, _, o)| *o == n) => n,
                    Some(n) => {
                        r.port(n as i32).map_err(|e| {
                            let detail = match e {
                                AllocError::OutOfRange(m) => m,
                                _ => "provided port is already allocated: pick another nodePort or leave it out to get one".into(),
                            };
                            ApiError::invalid("Service", &name, &[FieldError::invalid(format!("spec.ports[{i}].nodePort"), n, detail)])
                        })?;
                        n
                    }
                    None => match old_ports.iter().find(|(op, pr, _)| *op == port && *pr == proto) {
                        Some((_, _, n)) => *n,
                        None => r.next_port().map_err(|_| {
                            ApiError::internal(format!(
                                "failed to allocate a nodePort: range {} is full",
                                r.port_range()
                            ))
                        })? as i64,
                    },
                };
                p["nodePort"] = json!(np);
                kept.push(np);
            }
        }
        let local = spec.get("externalTrafficPolicy").and_then(|p| p.as_str()) == Some("Local");
        let old_hc = old.and_then(|o| o.pointer("/spec/healthCheckNodePort")).and_then(|h| h.as_i64());
        if ty == "LoadBalancer" && local {
            let asked = spec.get("healthCheckNodePort").and_then(|h| h.as_i64()).filter(|h| *h != 0);
            let hc = match (asked, old_hc) {
                (Some(h), Some(o)) if h == o => h,
                (None, Some(o)) => o,
                (Some(h), _) => {
                    r.port(h as i32).map_err(|_| {
                        ApiError::invalid(
                            "Service",
                            &name,
                            &[FieldError::invalid(
                                "spec.healthCheckNodePort",
                                h,
                                "provided port is already allocated or out of range",
                            )],
                        )
                    })?;
                    h
                }
                (None, None) => r.next_port().map_err(|_| ApiError::internal("node port range is full"))? as i64,
            };
            spec.insert("healthCheckNodePort".into(), json!(hc));
            kept.push(hc);
        } else {
            spec.remove("healthCheckNodePort");
        }
        for (_, _, n) in &old_ports {
            if !kept.contains(n) {
                r.give_up_port(*n as i32);
            }
        }
        if let Some(h) = old_hc
            && !kept.contains(&h)
        {
            r.give_up_port(h as i32);
        }
        Ok(r)
    }
}

/// When a Service changes to a type without node ports, the ports it had are dropped (as
/// kube-apiserver's `dropTypeDependentFields` does) instead of being refused.
pub(super) fn drop_type_dependent_fields(old: &Value, v: &mut Value) {
    let ty = v.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
    if ty == "NodePort" || ty == "LoadBalancer" {
        return;
    }
    let old_nps: Vec<i64> = old
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()))
        .collect();
    if let Some(Value::Array(ports)) = v.pointer_mut("/spec/ports") {
        for p in ports {
            if p.get("nodePort").and_then(|n| n.as_i64()).is_some_and(|n| old_nps.contains(&n))
                && let Some(o) = p.as_object_mut()
            {
                o.remove("nodePort");
            }
        }
    }
    if let Some(s) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        s.remove("healthCheckNodePort");
        if ty == "ClusterIP" || ty == "ExternalName" {
            s.remove("externalTrafficPolicy");
        }
    }
}

/// The IPs and ports a stored Service holds.
fn service_allocations(s: &Value) -> (Vec<std::net::IpAddr>, Vec<i32>) {
    let ips = s.pointer("/spec/clusterIP").and_then(|i| i.as_str()).and_then(|i| i.parse().ok()).into_iter().collect();
    let mut ports: Vec<i32> = s
        .pointer("/spec/ports")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(|n| n.as_i64()).map(|n| n as i32))
        .collect();
    if let Some(h) = s.pointer("/spec/healthCheckNodePort").and_then(|h| h.as_i64()) {
        ports.push(h as i32);
    }
    (ips, ports)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use weft_api::kinds;
    use weft_store::Store;

    use super::*;
    use crate::alloc::{Allocators, IpAllocator, PortAllocator};
    use crate::pod_logs::NoPodLogs;
    use crate::rest::{Target, WriteOpts};

    fn api(dir: &std::path::Path) -> Api {
        let store = Store::open(&dir.join("store.redb"), weft_store::DEFAULT_HISTORY).unwrap();
        let alloc = Allocators {
            ips: IpAllocator::new("10.96.0.0/24".parse().unwrap()),
            ports: PortAllocator::new(30000..=30010),
        };
        Api::new(store, alloc, Arc::new(NoPodLogs))
    }

    fn target(plural: &str, namespace: Option<&str>) -> Target {
        Target {
            kind: kinds::by_path("", "v1", plural).unwrap(),
            namespace: namespace.map(String::from),
            name: None,
            sub: None,
        }
    }

    fn service(name: &str, ip: &str, node_port: i64) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 80, "nodePort": node_port}]}}))
        .unwrap()
    }

    async fn create_service(api: &Api, name: &str, ip: &str, node_port: i64) -> Result<Value, ApiError> {
        api.create(&target("services", Some("default")), &service(name, ip, node_port), WriteOpts::default()).await
    }

    #[tokio::test]
    async fn a_failed_create_leaves_the_address_free_and_a_committed_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let ns = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
        api.create(&target("namespaces", None), &ns.unwrap(), WriteOpts::default()).await.unwrap();

        create_service(&api, "web", "10.96.0.50", 30001).await.unwrap();
        // The store refuses the second "web" after its address and port were taken.
        let e = create_service(&api, "web", "10.96.0.51", 30002).await.unwrap_err();
        assert_eq!(e.code, 409, "{}", e.message);
        // What the failed create took is free again...
        create_service(&api, "other", "10.96.0.51", 30002).await.unwrap();
        // ...and what the committed one took is still held.
        let e = create_service(&api, "third", "10.96.0.50", 30003).await.unwrap_err();
        assert!(e.message.contains("already allocated"), "{}", e.message);
        let e = create_service(&api, "fourth", "10.96.0.52", 30001).await.unwrap_err();
        assert!(e.message.contains("already allocated"), "{}", e.message);
        // A dry run takes nothing either.
        let dry = WriteOpts { dry_run: true, strict: false };
        api.create(&target("services", Some("default")), &service("dry", "10.96.0.53", 30004), dry).await.unwrap();
        create_service(&api, "after-dry", "10.96.0.53", 30004).await.unwrap();
        api.store.close();
    }
}
