//! LoadBalancer IP allocation (what MetalLB's controller does): Services of type LoadBalancer
//! without a `loadBalancerClass` (or with weft's) get an address from the pools in the ConfigMap
//! `kube-system/weft-config` (key `loadBalancerPools`: CIDRs or `first-last` ranges, comma
//! separated), `spec.loadBalancerIP` honoured when it is in a pool and free, written to
//! `status.loadBalancer.ingress`. An address is free again when no Service holds it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

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

/// Which address each Service without one gets (pure): (namespace, name, ip).
pub fn plan(services: &[Arc<Service>], pool: &[Ipv4Addr]) -> Vec<(String, String, Option<Ipv4Addr>)> {
    let mut used: BTreeSet<Ipv4Addr> = services.iter().filter(|s| wants_ip(s)).flat_map(|s| held(s)).collect();
    let mut out = vec![];
    let mut pending: Vec<&Arc<Service>> = services.iter().filter(|s| wants_ip(s) && held(s).is_empty()).collect();
    pending
        .sort_by_key(|s| (s.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0), s.name_any()));
    for s in pending {
        let asked: Option<Ipv4Addr> =
            s.spec.as_ref().and_then(|sp| sp.load_balancer_ip.as_deref()).and_then(|i| i.parse().ok());
        let ip = match asked {
            Some(ip) if pool.contains(&ip) && !used.contains(&ip) => Some(ip),
            Some(_) => None,
            None => pool.iter().find(|ip| !used.contains(ip)).copied(),
        };
        if let Some(ip) = ip {
            used.insert(ip);
        }
        out.push((s.namespace().unwrap_or_default(), s.name_any(), ip));
    }
    out
}

pub async fn reconcile(client: &kube::Client, services: &[Arc<Service>]) -> anyhow::Result<()> {
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
        match ip {
            Some(ip) => {
                let api: Api<Service> = Api::namespaced(client.clone(), &ns);
                let st = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st)).await?;
            }
            None => {
                tracing::warn!(service = %format!("{ns}/{name}"), "no LoadBalancer address free (or spec.loadBalancerIP is outside the pools or taken): add addresses to kube-system/weft-config loadBalancerPools")
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
        let plan = plan(&svcs, &pool);
        let got: Vec<(String, Option<String>)> =
            plan.iter().map(|(_, n, ip)| (n.clone(), ip.map(|i| i.to_string()))).collect();
        assert!(got.contains(&("a".into(), Some("172.18.255.2".into()))));
        assert!(got.contains(&("asks".into(), Some("10.0.0.6".into()))));
        assert_eq!(got.len(), 2, "other classes and other types are not ours: {got:?}");
    }
}
