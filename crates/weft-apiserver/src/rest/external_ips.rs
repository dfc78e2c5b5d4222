//! The externalIPs policy of Services (CVE-2020-8554).

use serde_json::Value;
use weft_api::FieldError;
use weft_store::Key;

use super::{Api, obj_name};
use crate::status::ApiError;

impl Api {
    /// The externalIPs policy (CVE-2020-8554: an external IP captures traffic to that address
    /// from every pod and node). An address a Service newly lists may not be inside the
    /// Service range, a node's pod range or a node's own address, and must be inside a CIDR of
    /// `externalIPCIDRs` in `kube-system/weft-config` (none by default: external IPs are
    /// denied, as the DenyServiceExternalIPs admission plugin advises). Addresses the Service
    /// already had are kept, so a policy change never blocks other updates of it.
    pub(super) fn check_external_ips(&self, v: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let ips = |o: &Value| -> Vec<String> {
            o.pointer("/spec/externalIPs")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let had = old.map(ips).unwrap_or_default();
        let new: Vec<(usize, String)> = ips(v).into_iter().enumerate().filter(|(_, ip)| !had.contains(ip)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let name = obj_name(v);
        use weft_k8s::config::{EXTERNAL_IP_CIDRS, NAME, NAMESPACE};
        let config = self.store.get(&Key::new("configmaps", NAMESPACE, NAME));
        let spec = config.as_ref().and_then(|c| c.get("data")?.get(EXTERNAL_IP_CIDRS)?.as_str()).unwrap_or("");
        let allowed: Vec<ipnet::IpNet> = spec.split(',').filter_map(|c| c.trim().parse().ok()).collect();
        let service_range = self.alloc.lock().unwrap().ips.net();
        let (nodes, _) = self.store.list("nodes", None);
        for (i, ip) in new {
            let field = format!("spec.externalIPs[{i}]");
            let Ok(addr) = ip.parse::<std::net::IpAddr>() else { continue };
            let inside = |what: String| {
                ApiError::invalid(
                    "Service",
                    &name,
                    &[FieldError::invalid_str(
                        &field,
                        &ip,
                        format!(
                            "is {what}: an external IP there would capture the cluster's own traffic; choose another address"
                        ),
                    )],
                )
            };
            if service_range.contains(&addr) {
                return Err(inside(format!("inside the Service range {service_range}")));
            }
            for n in nodes.iter() {
                let node = n.pointer("/metadata/name").and_then(|x| x.as_str()).unwrap_or("");
                let cidrs = n.pointer("/spec/podCIDRs").and_then(|c| c.as_array()).cloned().unwrap_or_default();
                for c in cidrs.iter().filter_map(|c| c.as_str()?.parse::<ipnet::IpNet>().ok()) {
                    if c.contains(&addr) {
                        return Err(inside(format!("inside node {node}'s pod range {c}")));
                    }
                }
                let addrs = n.pointer("/status/addresses").and_then(|c| c.as_array()).cloned().unwrap_or_default();
                if addrs.iter().any(|a| a.get("address").and_then(|x| x.as_str()) == Some(ip.as_str())) {
                    return Err(inside(format!("node {node}'s address")));
                }
            }
            if !allowed.iter().any(|c| c.contains(&addr)) {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "services {name:?} is forbidden: {field} {ip} is not allowed: external IPs must be inside a CIDR of externalIPCIDRs in the ConfigMap kube-system/weft-config ({}); add one there to allow it",
                        if allowed.is_empty() { "none is listed".to_string() } else { spec.trim().to_string() }
                    ),
                ));
            }
        }
        Ok(())
    }
}
