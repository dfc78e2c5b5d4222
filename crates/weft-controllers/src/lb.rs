//! LoadBalancer IP allocation (what MetalLB's controller does): Services of type LoadBalancer
//! without a `loadBalancerClass` (or with weft's) get an address from the pools in the ConfigMap
//! `kube-system/weft-config` (key `loadBalancerPools`: CIDRs or `first-last` ranges, comma
//! separated), `spec.loadBalancerIP` honoured when it is in a pool and free, written to
//! `status.loadBalancer.ingress`. An address is free again when no Service holds it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::events::Events;

pub const CLASS: &str = "weft.dev/lb";
pub use weft_k8s::config::{LOAD_BALANCER_POOLS as POOLS_KEY, NAME as CONFIG};

/// The addresses of a pool spec (`172.18.255.0/24, 10.0.0.5-10.0.0.9`), network and broadcast
/// addresses of CIDRs excluded.
pub fn parse_pools(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = vec![];
    for part in spec.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (Ipv4Addr, Ipv4Addr) = (
                a.trim().parse().map_err(|_| format!("bad range start in {part:?}"))?,
                b.trim().parse().map_err(|_| format!("bad range end in {part:?}"))?,
            );
            if u32::from(a) > u32::from(b) || u32::from(b) - u32::from(a) > 65536 {
                return Err(format!("range {part:?} is reversed or larger than 65536 addresses"));
            }
            out.extend((u32::from(a)..=u32::from(b)).map(Ipv4Addr::from));
        } else {
            let net: ipnet::Ipv4Net =
                part.parse().map_err(|_| format!("{part:?} is neither a CIDR nor a first-last range"))?;
            if net.prefix_len() < 16 {
                return Err(format!("pool {part:?} is larger than a /16"));
            }
            out.extend(net.hosts());
        }
    }
    Ok(out)
}

fn wants_ip(s: &Service) -> bool {
    let Some(spec) = s.spec.as_ref() else { return false };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.as_deref().is_none_or(|c| c == CLASS)
}

fn held(s: &Service) -> Vec<Ipv4Addr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// Which address each Service without one gets (pure): (namespace, name, the address or why
/// there is none, in MetalLB's words).
pub fn plan(services: &[Arc<Service>], pool: &[Ipv4Addr]) -> Vec<(String, String, Result<Ipv4Addr, String>)> {
    let mut used: BTreeSet<Ipv4Addr> = services.iter().filter(|s| wants_ip(s)).flat_map(|s| held(s)).collect();
    let mut out = vec![];
    let mut pending: Vec<&Arc<Service>> = services.iter().filter(|s| wants_ip(s) && held(s).is_empty()).collect();
    pending
        .sort_by_key(|s| (s.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0), s.name_any()));
    for s in pending {
        let asked = s.spec.as_ref().and_then(|sp| sp.load_balancer_ip.as_deref()).filter(|i| !i.is_empty());
        let ip = match asked.map(|a| (a, a.parse::<Ipv4Addr>())) {
            Some((_, Ok(ip))) if pool.contains(&ip) && !used.contains(&ip) => Ok(ip),
            Some((a, Ok(ip))) if pool.contains(&ip) => Err(format!("{a:?} is already in use")),
            Some((a, _)) => Err(format!("{a:?} is not allowed in config")),
            None => pool.iter().find(|ip| !used.contains(ip)).copied().ok_or_else(|| "no available IPs".to_string()),
        };
        if let Ok(ip) = ip {
            used.insert(ip);
        }
        out.push((s.namespace().unwrap_or_default(), s.name_any(), ip));
    }
    out
}

fn reference(s: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: s.namespace(),
        name: Some(s.name_any()),
        uid: s.metadata.uid.clone(),
        resource_version: s.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The allocator on its own, for a cluster whose control plane is not weft's (a real
/// kube-controller-manager allocates nothing): its own watch of Services, a pass on each change
/// and every 2 s. Run it in one process per cluster (`weft_leader`). Never returns.
pub async fn run(client: kube::Client) {
    let wake = weft_watch::Wake::new();
    let services = weft_watch::cached::<Service>(&client, wake.clone());
    let events = Events::new(&client, "weft-lb-allocator");
    let _ = services.wait_until_ready().await;
    weft_watch::Controller::new("loadbalancer")
        .wake_on(&wake)
        .resync(std::time::Duration::from_secs(2))
        .debounce(std::time::Duration::from_millis(20))
        .run(async move || reconcile(&client, &services.state(), &events).await)
        .await
}

/// The Lease (in `kube-system`) whose holder is a cluster's one allocator.
pub const LEASE: &str = "weft-loadbalancer-allocator";

/// [`run`] in whichever of the processes calling this holds the Lease [`LEASE`]; another takes
/// over when it goes. Returns only if `identity` is refused.
pub async fn run_elected(client: kube::Client, identity: String) -> anyhow::Result<()> {
    let cfg = weft_leader::Config::new(weft_k8s::config::NAMESPACE, LEASE, &identity);
    let elector = weft_leader::Elector::new(client.clone(), cfg)?;
    elector.run(move || run(client.clone())).await;
    Ok(())
}

pub async fn reconcile(client: &kube::Client, services: &[Arc<Service>], events: &Events) -> anyhow::Result<()> {
    if !services.iter().any(|s| wants_ip(s) && held(s).is_empty()) {
        return Ok(());
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), weft_k8s::config::NAMESPACE);
    let spec =
        cms.get_opt(CONFIG).await?.and_then(|c| c.data).and_then(|d| d.get(POOLS_KEY).cloned()).unwrap_or_default();
    let pool = match parse_pools(&spec) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(configmap = weft_k8s::config::PATH, key = POOLS_KEY, error = %e, "LoadBalancer pools");
            return Ok(());
        }
    };
    for (ns, name, ip) in plan(services, &pool) {
        let svc = services.iter().find(|s| s.namespace().as_deref() == Some(&ns) && s.name_any() == name);
        match ip {
            Ok(ip) => {
                let api: Api<Service> = Api::namespaced(client.clone(), &ns);
                let st = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st)).await?;
                if let Some(s) = svc {
                    events.normal(reference(s), "IPAllocated", "Allocate", format!("Assigned IP [\"{ip}\"]"));
                }
            }
            Err(why) => {
                tracing::warn!(service = %format!("{ns}/{name}"), "no LoadBalancer address: {why} (add addresses to kube-system/weft-config loadBalancerPools)");
                // Repeats of the same failure count on one Event.
                if let Some(s) = svc {
                    let note = format!("Failed to allocate IP for \"{ns}/{name}\": {why}");
                    events.warning(reference(s), "AllocationFailed", "Allocate", note);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, spec: serde_json::Value, ip: Option<&str>) -> Arc<Service> {
        let mut v = json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec});
        if let Some(ip) = ip {
            v["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn pools_and_allocation() {
        let pool = parse_pools("172.18.255.0/30, 10.0.0.5-10.0.0.6").unwrap();
        assert_eq!(pool.len(), 4);
        assert!(parse_pools("nonsense").is_err());
        let svcs = vec![
            svc("held", json!({"type": "LoadBalancer"}), Some("172.18.255.1")),
            svc("a", json!({"type": "LoadBalancer"}), None),
            svc("asks", json!({"type": "LoadBalancer", "loadBalancerIP": "10.0.0.6"}), None),
            svc("other-class", json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}), None),
            svc("cluster", json!({"type": "ClusterIP"}), None),
        ];
        let planned = plan(&svcs, &pool);
        let got: Vec<(String, Option<String>)> =
            planned.iter().map(|(_, n, ip)| (n.clone(), ip.as_ref().ok().map(|i| i.to_string()))).collect();
        assert!(got.contains(&("a".into(), Some("172.18.255.2".into()))));
        assert!(got.contains(&("asks".into(), Some("10.0.0.6".into()))));
        assert_eq!(got.len(), 2, "other classes and other types are not ours: {got:?}");
        // Why a Service gets nothing, in MetalLB's words.
        let svcs = vec![
            svc("held", json!({"type": "LoadBalancer"}), Some("10.0.0.5")),
            svc("taken", json!({"type": "LoadBalancer", "loadBalancerIP": "10.0.0.5"}), None),
            svc("outside", json!({"type": "LoadBalancer", "loadBalancerIP": "192.0.2.1"}), None),
            svc("full", json!({"type": "LoadBalancer"}), None),
        ];
        let why: Vec<String> = plan(&svcs, &pool[2..3]).into_iter().filter_map(|(_, _, r)| r.err()).collect();
        // (In name order: all were made at the same time.)
        assert_eq!(
            why,
            ["no available IPs", "\"192.0.2.1\" is not allowed in config", "\"10.0.0.5\" is already in use"]
        );
    }
}
