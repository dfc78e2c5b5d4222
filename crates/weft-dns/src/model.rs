//! What the DNS needs of the cluster, and no more: a Service's kind, addresses and ports, the
//! ready state and hostnames of endpoints, pod IPs and namespace names. Watch events are turned
//! into these at once so the full API objects are not kept, and they are stored compactly
//! (one key string per object, endpoints packed into one allocation per slice): at 10 000
//! Services and 100 000 endpoints the whole model is a few megabytes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

/// An object's key: `namespace/name` in one string (names cannot contain '/').
pub type Key = Box<str>;

pub fn key(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into_boxed_str()
}

/// The (namespace, name) of a key.
pub fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

#[derive(Clone, Debug, PartialEq)]
pub enum SvcKind {
    ClusterIp(Box<[IpAddr]>),
    Headless,
    ExternalName(Box<str>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From the API's `TCP`, `UDP`, `SCTP` (any case); None for anything else.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// As the label appears in SRV names (`_tcp`, without the underscore).
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    /// Lowercase (as it appears in SRV names); empty for an unnamed port.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

impl Port {
    pub fn new(name: &str, protocol: Protocol, port: u16) -> Port {
        Port { name: name.to_ascii_lowercase().into_boxed_str(), protocol, port }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub kind: SvcKind,
    pub ports: Box<[Port]>,
    pub publish_not_ready: bool,
}

impl Service {
    pub fn cluster_ips(&self) -> &[IpAddr] {
        match &self.kind {
            SvcKind::ClusterIp(ips) => ips,
            _ => &[],
        }
    }
}

/// One endpoint: its first address only, as the EndpointSlice API allows ("clients may choose
/// to only use the first element").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Endpoint<'a> {
    pub ip: IpAddr,
    /// Lowercase.
    pub hostname: Option<&'a str>,
    pub ready: bool,
}

const READY: u8 = 1;
const V6: u8 = 2;
const HOSTNAME: u8 = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub service: Box<str>,
    pub ports: Box<[Port]>,
    /// The endpoints packed: per endpoint a flags byte (ready, IPv6, has a hostname), the
    /// address (4 or 16 bytes), then the hostname's length and bytes if it has one. Five bytes
    /// for a plain IPv4 endpoint instead of a 40-byte struct.
    endpoints: Box<[u8]>,
}

impl Slice {
    pub fn new<'a>(service: &str, ports: Vec<Port>, endpoints: impl IntoIterator<Item = Endpoint<'a>>) -> Slice {
        let mut packed = vec![];
        for e in endpoints {
            // A hostname is a DNS label (at most 63 bytes); a longer one could not be a name.
            let host = e.hostname.filter(|h| !h.is_empty() && h.len() <= 63);
            let mut flags = if e.ready { READY } else { 0 };
            if e.ip.is_ipv6() {
                flags |= V6;
            }
            if host.is_some() {
                flags |= HOSTNAME;
            }
            packed.push(flags);
            match e.ip {
                IpAddr::V4(a) => packed.extend(a.octets()),
                IpAddr::V6(a) => packed.extend(a.octets()),
            }
            if let Some(h) = host {
                packed.push(h.len() as u8);
                packed.extend(h.bytes().map(|b| b.to_ascii_lowercase()));
            }
        }
        Slice { service: service.into(), ports: ports.into_boxed_slice(), endpoints: packed.into_boxed_slice() }
    }

    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint<'_>> {
        let mut rest: &[u8] = &self.endpoints;
        std::iter::from_fn(move || {
            let (&flags, tail) = rest.split_first()?;
            let (ip, tail) = if flags & V6 != 0 {
                let (a, t) = tail.split_first_chunk::<16>()?;
                (IpAddr::V6(Ipv6Addr::from(*a)), t)
            } else {
                let (a, t) = tail.split_first_chunk::<4>()?;
                (IpAddr::V4(Ipv4Addr::from(*a)), t)
            };
            let (hostname, tail) = if flags & HOSTNAME != 0 {
                let (&n, t) = tail.split_first()?;
                let (h, t) = t.split_at_checked(n as usize)?;
                (std::str::from_utf8(h).ok(), t)
            } else {
                (None, tail)
            };
            rest = tail;
            Some(Endpoint { ip, hostname, ready: flags & READY != 0 })
        })
    }
}

/// A pod's identity (its UID as 16 bytes) and what verified pod records need of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub uid: [u8; 16],
    pub namespace: Box<str>,
    pub ips: Box<[IpAddr]>,
}

/// The pods of the cluster, kept small because there can be hundreds of thousands: by UID
/// (16 bytes; Kubernetes' own identity of a pod, so a name reused by a new pod is a new
/// entry), the namespace as a number, and the IPv4 address inline; IPv6 addresses aside.
/// About 40 bytes a pod where a map keyed by `namespace/name` of boxed addresses took 150.
#[derive(Clone, Debug, Default)]
pub struct Pods {
    v4: HashMap<[u8; 16], (u32, Option<Ipv4Addr>)>,
    v6: HashMap<[u8; 16], Ipv6Addr>,
    /// Namespace names by number (only grows; a relist starts afresh).
    namespaces: Vec<Box<str>>,
    numbers: HashMap<Box<str>, u32>,
}

impl Pods {
    /// Puts `p`; whether that changed what DNS answers (a status or label change does not).
    pub fn put(&mut self, p: &Pod) -> bool {
        let ns = match self.numbers.get(&p.namespace) {
            Some(n) => *n,
            None => {
                let n = self.namespaces.len() as u32;
                self.namespaces.push(p.namespace.clone());
                self.numbers.insert(p.namespace.clone(), n);
                n
            }
        };
        let v4 = p.ips.iter().find_map(|i| match i {
            IpAddr::V4(a) => Some(*a),
            _ => None,
        });
        let old4 = self.v4.insert(p.uid, (ns, v4));
        let v6 = p.ips.iter().find_map(|i| match i {
            IpAddr::V6(a) => Some(*a),
            _ => None,
        });
        let old6 = match v6 {
            Some(a) => self.v6.insert(p.uid, a),
            None => self.v6.remove(&p.uid),
        };
        old4 != Some((ns, v4)) || old6 != v6
    }

    /// Removes the pod; whether it was there.
    pub fn remove(&mut self, uid: &[u8; 16]) -> bool {
        let had = self.v4.remove(uid).is_some();
        self.v6.remove(uid).is_some() || had
    }

    pub fn len(&self) -> usize {
        self.v4.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty()
    }

    /// Every (namespace, address) pair.
    pub fn addresses(&self) -> impl Iterator<Item = (&str, IpAddr)> {
        self.v4.iter().flat_map(move |(uid, (ns, v4))| {
            let ns: &str = self.namespaces.get(*ns as usize).map(|n| &**n).unwrap_or_default();
            let v6 = self.v6.get(uid).map(|a| (ns, IpAddr::V6(*a)));
            v4.map(|a| (ns, IpAddr::V4(a))).into_iter().chain(v6)
        })
    }
}

/// The cluster as DNS sees it, each map keyed by `namespace/name` (namespaces by `/name`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<Key, Service>,
    pub slices: HashMap<Key, Slice>,
    pub pods: Pods,
    pub namespaces: HashMap<Key, ()>,
}

impl Snapshot {
    pub fn put_service(&mut self, namespace: &str, name: &str, s: Service) {
        self.services.insert(key(namespace, name), s);
    }

    pub fn put_slice(&mut self, namespace: &str, name: &str, s: Slice) {
        self.slices.insert(key(namespace, name), s);
    }

    pub fn put_pod(&mut self, p: &Pod) {
        self.pods.put(p);
    }

    pub fn add_namespace(&mut self, name: &str) {
        self.namespaces.insert(key("", name), ());
    }

    pub fn namespace_names(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(|k| split(k).1)
    }
}

/// The key of an API object.
pub fn key_of<K: kube::Resource>(o: &K) -> Option<Key> {
    let m = o.meta();
    Some(key(m.namespace.as_deref().unwrap_or_default(), m.name.as_deref()?))
}

/// A port as SRV names use it; None when out of range or of an unknown protocol.
fn port(name: &Option<String>, protocol: &Option<String>, port: i32) -> Option<Port> {
    let protocol = Protocol::parse(protocol.as_deref().unwrap_or("TCP"))?;
    Some(Port::new(name.as_deref().unwrap_or_default(), protocol, u16::try_from(port).ok()?))
}

/// A Service as DNS sees it; None when it has no DNS records yet (no ClusterIP allocated).
pub fn service(s: &core::Service) -> Option<(Key, Service)> {
    let k = key_of(s)?;
    let spec = s.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        SvcKind::ExternalName(spec.external_name.as_deref()?.into())
    } else {
        let mut ips: Vec<&str> = spec.cluster_ips.iter().flatten().map(String::as_str).collect();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_deref());
        }
        if ips.first() == Some(&"None") {
            SvcKind::Headless
        } else {
            let ips: Vec<IpAddr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
            if ips.is_empty() {
                return None;
            }
            SvcKind::ClusterIp(ips.into_boxed_slice())
        }
    };
    let ports = spec.ports.iter().flatten().filter_map(|p| port(&p.name, &p.protocol, p.port)).collect();
    Some((k, Service { kind, ports, publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false) }))
}

/// An EndpointSlice as DNS sees it; None for slices that belong to no Service.
pub fn slice(s: &discovery::EndpointSlice) -> Option<(Key, Slice)> {
    let k = key_of(s)?;
    let (_, service) = weft_k8s::slices::service_of(s)?;
    let ports = s.ports.iter().flatten().filter_map(|p| port(&p.name, &p.protocol, p.port?)).collect();
    let endpoints = s.endpoints.iter().flatten().filter_map(|e| {
        Some(Endpoint {
            ip: e.addresses.first()?.parse().ok()?,
            hostname: e.hostname.as_deref(),
            ready: weft_k8s::endpoints::is_ready(e),
        })
    });
    Some((k, Slice::new(service, ports, endpoints)))
}

/// A pod's UID as 16 bytes: the UUID it is, else (an API server that makes UIDs some other
/// way) the UID's own bytes, padded, or a hash of them when longer.
pub fn pod_uid(p: &core::Pod) -> Option<[u8; 16]> {
    let uid = p.metadata.uid.as_deref()?;
    let hex: Vec<u8> = uid.bytes().filter(|b| *b != b'-').collect();
    let mut out = [0u8; 16];
    if hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit) {
        for (i, pair) in hex.chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
    } else if uid.len() <= 16 {
        out[..uid.len()].copy_from_slice(uid.as_bytes());
    } else {
        use std::hash::{Hash, Hasher};
        for (half, seed) in [(0usize, 0u8), (8, 1)] {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, uid).hash(&mut h);
            out[half..half + 8].copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    Some(out)
}

/// A pod as verified pod records need it; None until it has an address.
pub fn pod(p: &core::Pod) -> Option<Pod> {
    let st = p.status.as_ref()?;
    let mut ips: Vec<IpAddr> = st.pod_ips.iter().flatten().filter_map(|i| i.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(st.pod_ip.as_ref().and_then(|i| i.parse::<IpAddr>().ok()));
    }
    if ips.is_empty() {
        return None;
    }
    let namespace = p.metadata.namespace.as_deref()?.into();
    Some(Pod { uid: pod_uid(p)?, namespace, ips: ips.into_boxed_slice() })
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
        let (k, s) = service(&s).unwrap();
        assert_eq!(split(&k), ("default", "web"));
        assert_eq!(s.kind, SvcKind::ClusterIp(["10.96.0.5".parse().unwrap()].into()));
        assert_eq!(s.ports[0], Port { name: "http".into(), protocol: Protocol::Tcp, port: 80 });
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
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "UDP"}, {"port": 1, "protocol": "XTP"}],
            "endpoints": [{"addresses": ["10.244.1.2"], "hostname": "Web-0"},
                          {"addresses": ["10.244.1.3"], "conditions": {"ready": false}},
                          {"addresses": ["fd00::3"], "hostname": "v6"}]}))
        .unwrap();
        let (_, sl) = slice(&sl).unwrap();
        assert_eq!(&*sl.service, "web");
        assert_eq!(&*sl.ports, &[Port { name: "http".into(), protocol: Protocol::Udp, port: 8080 }]);
        let eps: Vec<Endpoint> = sl.endpoints().collect();
        assert_eq!(
            eps,
            [
                Endpoint { ip: "10.244.1.2".parse().unwrap(), hostname: Some("web-0"), ready: true },
                Endpoint { ip: "10.244.1.3".parse().unwrap(), hostname: None, ready: false },
                Endpoint { ip: "fd00::3".parse().unwrap(), hostname: Some("v6"), ready: true },
            ]
        );
    }
}
