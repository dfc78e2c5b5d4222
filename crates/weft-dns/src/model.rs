//! What the DNS needs of the cluster, and no more: a Service's name, kind, addresses and ports,
//! the ready state and hostnames of endpoints, pod IPs and namespace names. Watch events are
//! turned into these at once so the full API objects are not kept (memory stays bounded by what
//! DNS answers, not by the size of Pod objects).

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

#[derive(Clone, Debug, PartialEq)]
pub enum SvcKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub name: String,
    /// Lowercase: `tcp`, `udp`, `sctp` (as it appears in SRV names).
    pub protocol: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub kind: SvcKind,
    pub ports: Vec<Port>,
    pub publish_not_ready: bool,
}

impl Service {
    pub fn cluster_ips(&self) -> Vec<IpAddr> {
        match &self.kind {
            SvcKind::ClusterIp(ips) => ips.clone(),
            _ => vec![],
        }
    }
}

/// One endpoint: its first address only, as the EndpointSlice API allows ("clients may choose
/// to only use the first element"), which keeps 100 000 endpoints in a few megabytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub hostname: Option<Box<str>>,
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub namespace: String,
    pub service: String,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}

/// The cluster as DNS sees it. Keys are (namespace, name).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<(String, String), Service>,
    pub slices: HashMap<(String, String), Slice>,
    pub pods: HashMap<(String, String), Pod>,
    /// Namespace names, keyed ("", name) like the other maps.
    pub namespaces: HashMap<(String, String), ()>,
}

impl Snapshot {
    pub fn put_service(&mut self, s: Service) {
        self.services.insert((s.namespace.clone(), s.name.clone()), s);
    }

    pub fn add_namespace(&mut self, name: &str) {
        self.namespaces.insert((String::new(), name.to_string()), ());
    }

    pub fn namespace_names(&self) -> impl Iterator<Item = &String> {
        self.namespaces.keys().map(|k| &k.1)
    }
}

fn key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<(String, String)> {
    Some((m.namespace.clone().unwrap_or_default(), m.name.clone()?))
}

/// A port as SRV names use it (lowercase name and protocol); None when out of range.
fn port(name: &Option<String>, protocol: &Option<String>, port: i32) -> Option<Port> {
    Some(Port {
        name: name.clone().unwrap_or_default().to_ascii_lowercase(),
        protocol: protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(port).ok()?,
    })
}

/// A Service as DNS sees it; None when it has no DNS records yet (no ClusterIP allocated).
pub fn service(s: &core::Service) -> Option<((String, String), Service)> {
    let k = key(&s.metadata)?;
    let spec = s.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        SvcKind::ExternalName(spec.external_name.clone()?)
    } else {
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.clone());
        }
        if ips.first().map(String::as_str) == Some("None") {
            SvcKind::Headless
        } else {
            let ips: Vec<IpAddr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
            if ips.is_empty() {
                return None;
            }
            SvcKind::ClusterIp(ips)
        }
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port(&p.name, &p.protocol, p.port))
        .collect();
    Some((
        k.clone(),
        Service {
            namespace: k.0,
            name: k.1,
            kind,
            ports,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        },
    ))
}

/// An EndpointSlice as DNS sees it; None for slices that belong to no Service.
pub fn slice(s: &discovery::EndpointSlice) -> Option<((String, String), Slice)> {
    let k = key(&s.metadata)?;
    let service = s.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?.clone();
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port(&p.name, &p.protocol, p.port?))
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            Some(Endpoint {
                ip: e.addresses.first()?.parse().ok()?,
                hostname: e.hostname.as_ref().map(|h| h.to_ascii_lowercase().into_boxed_str()),
                // An unset `ready` means ready (discovery.k8s.io/v1).
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            })
        })
        .collect();
    Some((k.clone(), Slice { namespace: k.0, service, ports, endpoints }))
}

pub fn pod(p: &core::Pod) -> Option<((String, String), Pod)> {
    let k = key(&p.metadata)?;
    let st = p.status.as_ref()?;
    let mut ips: Vec<IpAddr> = st.pod_ips.iter().flatten().filter_map(|i| i.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(st.pod_ip.as_ref().and_then(|i| i.parse::<IpAddr>().ok()));
    }
    if ips.is_empty() {
        return None;
    }
    Some((k.clone(), Pod { namespace: k.0, ips }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_api_objects() {
        let s: core::Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": [{"name": "HTTP", "port": 80}]}}))
        .unwrap();
        let (_, s) = service(&s).unwrap();
        assert_eq!(s.kind, SvcKind::ClusterIp(vec!["10.96.0.5".parse().unwrap()]));
        assert_eq!(s.ports[0], Port { name: "http".into(), protocol: "tcp".into(), port: 80 });
        let h: core::Service = serde_json::from_value(json!({"metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None"}}))
        .unwrap();
        assert_eq!(service(&h).unwrap().1.kind, SvcKind::Headless);
        let e: core::Service = serde_json::from_value(json!({"metadata": {"name": "e", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "db.example.org"}}))
        .unwrap();
        assert_eq!(service(&e).unwrap().1.kind, SvcKind::ExternalName("db.example.org".into()));
        let pending: core::Service =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {}})).unwrap();
        assert!(service(&pending).is_none());
        let sl: discovery::EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.1.2"], "hostname": "Web-0"},
                          {"addresses": ["10.244.1.3"], "conditions": {"ready": false}}]}))
        .unwrap();
        let (_, sl) = slice(&sl).unwrap();
        assert_eq!(sl.service, "web");
        assert!(sl.endpoints[0].ready && !sl.endpoints[1].ready);
        assert_eq!(sl.endpoints[0].hostname.as_deref(), Some("web-0"));
        assert_eq!(sl.endpoints[1].ip, "10.244.1.3".parse::<IpAddr>().unwrap());
    }
}
