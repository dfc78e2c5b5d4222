//! The health check node port kube-proxy serves for `externalTrafficPolicy: Local` LoadBalancer
//! Services: HTTP on `spec.healthCheckNodePort` of every node, 200 with the count of local
//! endpoints when the node has one, 503 when it has none, so an external load balancer sends
//! traffic only to nodes that keep it local.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// (namespace, name, local endpoints) per health check port.
pub type Checks = BTreeMap<u16, (String, String, usize)>;

/// What each health port of `node` should say (pure).
pub fn plan(services: &[Service], slices: &[EndpointSlice], node: &str) -> Checks {
    let mut out = Checks::new();
    for s in services {
        let Some(spec) = &s.spec else { continue };
        let Some(port) = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()) else { continue };
        if spec.type_.as_deref() != Some("LoadBalancer") || spec.external_traffic_policy.as_deref() != Some("Local") {
            continue;
        }
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let local = slices
            .iter()
            .filter(|sl| weft_k8s::slices::belongs_to(sl, &ns, &name))
            .flat_map(|sl| sl.endpoints.iter().flatten())
            .filter(|e| e.node_name.as_deref() == Some(node) && weft_k8s::endpoints::is_ready(e))
            .count();
        out.insert(port, (ns, name, local));
    }
    out
}

pub fn answer(ns: &str, name: &str, local: usize) -> (u16, String) {
    let body = format!(
        "{{\"service\":{{\"namespace\":\"{ns}\",\"name\":\"{name}\"}},\"localEndpoints\":{local},\"serviceProxyHealthy\":true}}"
    );
    (if local > 0 { 200 } else { 503 }, body)
}

/// The health servers of one node: started and stopped as `sync` is told.
pub struct HealthServers {
    netns: Option<std::path::PathBuf>,
    state: Arc<Mutex<Checks>>,
    running: BTreeMap<u16, Arc<std::sync::atomic::AtomicBool>>,
}

impl HealthServers {
    pub fn new(netns: Option<std::path::PathBuf>) -> Self {
        HealthServers { netns, state: Arc::default(), running: BTreeMap::new() }
    }

    pub fn sync(&mut self, want: Checks) {
        for (port, stop) in &self.running {
            if !want.contains_key(port) {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.running.retain(|p, _| want.contains_key(p));
        for port in want.keys() {
            if !self.running.contains_key(port) {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                if let Err(e) = self.serve(*port, stop.clone()) {
                    tracing::warn!(port, error = %e, "health check node port");
                    continue;
                }
                self.running.insert(*port, stop);
            }
        }
        *self.state.lock().unwrap() = want;
    }

    fn serve(&self, port: u16, stop: Arc<std::sync::atomic::AtomicBool>) -> std::io::Result<()> {
        let state = self.state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        weft_netlink::ns::spawn_in(self.netns.as_deref(), move || {
            let l = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = l.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf);
                        let (code, body) = match state.lock().unwrap().get(&port) {
                            Some((ns, name, local)) => answer(ns, name, *local),
                            None => (503, String::new()),
                        };
                        let reason = if code == 200 { "OK" } else { "Service Unavailable" };
                        let _ = write!(
                            s,
                            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        rx.recv().map_err(|_| std::io::Error::other("health thread ended"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_local_endpoints() {
        let s: Service = serde_json::from_value(json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000, "ports": [{"port": 80}]}})).unwrap();
        let e: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "lb-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "lb"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": true}}]})).unwrap();
        let p = plan(std::slice::from_ref(&s), std::slice::from_ref(&e), "n1");
        assert_eq!(p[&31000].2, 1);
        assert_eq!(answer("default", "lb", 1).0, 200);
        assert_eq!(plan(&[s], &[e], "n2")[&31000].2, 0);
        assert_eq!(answer("default", "lb", 0).0, 503);
    }
}
