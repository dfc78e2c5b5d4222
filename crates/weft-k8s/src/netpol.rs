//! NetworkPolicy (networking.k8s.io/v1) as the API defines it, one piece at a time, for every
//! component that has to answer "does this policy say something about that pod": the policy
//! engine's compiler, `weft describe netpol`, the denial records.
//!
//! - `policyTypes` defaults as kube-apiserver defaults it ([`directions`]): empty means Ingress,
//!   plus Egress when `egress` has at least one rule (`egress: []` does not imply Egress).
//! - A policy selects pods of its own namespace by `spec.podSelector` (`{}` all of them).
//! - A peer selects pods ([`PodPeer`]: `podSelector` alone in the policy's namespace,
//!   `namespaceSelector` alone all pods of matching namespaces, both in one peer: AND) or
//!   addresses ([`IpBlock`]: the CIDR minus its `except`s, addresses taken literally).
//! - A port ([`PortMatch`]) is a protocol (TCP when unset; TCP, UDP, SCTP) and either a number
//!   with an optional `endPort`, every port (no `port`), or a name resolved per pod from its
//!   containers' ports, by name and protocol ([`named_port`]).
//!
//! IPv4 only: weft's pods are IPv4, so an IPv6 `ipBlock` matches no address here.
//! Anything the API would have refused is an `Err` with a sentence saying what is wrong; the
//! caller decides (the engine lets a broken part match nothing, never everything).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::selectors::Selector;

/// The label every namespace carries with its own name (set by the API server, immutable):
/// what `namespaceSelector` selects a namespace by name with.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

type Labels = BTreeMap<String, String>;

/// Which directions a policy isolates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Directions {
    pub ingress: bool,
    pub egress: bool,
}

/// The policy's types, defaulted as kube-apiserver does when `policyTypes` is empty: Ingress,
/// and Egress too when `egress` has rules. Unknown types are ignored.
pub fn directions(spec: &NetworkPolicySpec) -> Directions {
    match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => {
            Directions { ingress: t.iter().any(|t| t == "Ingress"), egress: t.iter().any(|t| t == "Egress") }
        }
        _ => Directions { ingress: true, egress: spec.egress.as_ref().is_some_and(|e| !e.is_empty()) },
    }
}

/// The policy's `spec.podSelector` (a missing one is `{}`: every pod of the namespace, as the
/// API defaults it).
pub fn pod_selector(np: &NetworkPolicy) -> Result<Selector, String> {
    match np.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) {
        None => Ok(Selector::everything()),
        Some(s) => Selector::from_label_selector(Some(s)).map_err(|e| format!("spec.podSelector: {e}")),
    }
}

/// Does the policy select this pod (its namespace, its labels)? An invalid selector selects
/// nothing.
pub fn selects(np: &NetworkPolicy, pod_namespace: &str, pod_labels: &Labels) -> bool {
    np.metadata.namespace.as_deref().unwrap_or("default") == pod_namespace
        && pod_selector(np).is_ok_and(|s| s.matches(pod_labels))
}

/// The namespaces a pod peer looks in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// The policy's own namespace (`podSelector` alone).
    Own(String),
    /// Namespaces whose labels match.
    Matching(Selector),
}

/// A peer that selects pods: by namespace and by pod labels, both of which must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPeer {
    pub namespaces: Namespaces,
    pub pods: Selector,
}

impl PodPeer {
    /// Does it select a pod in `pod_namespace` with `pod_labels`, that namespace carrying
    /// `namespace_labels` (None: a namespace the caller does not know, which no selector
    /// matches)?
    pub fn matches(&self, pod_namespace: &str, pod_labels: &Labels, namespace_labels: Option<&Labels>) -> bool {
        let ns_ok = match &self.namespaces {
            Namespaces::Own(ns) => ns == pod_namespace,
            Namespaces::Matching(sel) => namespace_labels.is_some_and(|l| sel.matches(l)),
        };
        ns_ok && self.pods.matches(pod_labels)
    }
    /// Whether the answer depends on namespaces' labels (so a namespace's relabelling matters).
    pub fn reads_namespace_labels(&self) -> bool {
        matches!(self.namespaces, Namespaces::Matching(_))
    }
}

/// Addresses taken literally: a CIDR minus its exceptions, as disjoint inclusive ranges in
/// ascending order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpBlock {
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl IpBlock {
    /// `cidr` minus `except`. An IPv6 block is valid and holds no IPv4 address; a malformed
    /// CIDR or exception is an error (the whole block then matches nothing: never more than the
    /// user wrote).
    pub fn parse(cidr: &str, except: &[String]) -> Result<IpBlock, String> {
        let Some(net) = parse_cidr(cidr)? else { return Ok(IpBlock::default()) };
        let mut ranges = vec![net];
        for e in except {
            let Some(x) = parse_cidr(e).map_err(|err| format!("except {e:?}: {err}"))? else { continue };
            ranges = ranges.into_iter().flat_map(|r| subtract(r, x)).collect();
        }
        Ok(IpBlock { ranges: ranges.into_iter().map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b))).collect() })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|(a, b)| *a <= ip && ip <= *b)
    }
}

/// A CIDR as an inclusive range of IPv4 addresses (host bits ignored, as the API's older
/// validation let them through); None for an IPv6 CIDR.
fn parse_cidr(s: &str) -> Result<Option<(u32, u32)>, String> {
    let (addr, len) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix)"))?;
    if addr.contains(':') {
        return match (addr.parse::<std::net::Ipv6Addr>(), len.parse::<u8>()) {
            (Ok(_), Ok(l)) if l <= 128 => Ok(None),
            _ => Err(format!("{s:?} is not a valid CIDR")),
        };
    }
    let ip: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?} is not a valid CIDR"))?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("{s:?} has no valid prefix length"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let first = u32::from(ip) & mask;
    Ok(Some((first, first | !mask)))
}

/// `r` minus `x`: zero, one or two ranges.
fn subtract(r: (u32, u32), x: (u32, u32)) -> Vec<(u32, u32)> {
    if x.1 < r.0 || x.0 > r.1 {
        return vec![r];
    }
    let mut out = vec![];
    if x.0 > r.0 {
        out.push((r.0, x.0 - 1));
    }
    if x.1 < r.1 {
        out.push((x.1 + 1, r.1));
    }
    out
}

/// One `from`/`to` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pods(PodPeer),
    Block(IpBlock),
}

/// A peer of a policy in `policy_namespace`. A peer with both selectors and an ipBlock, or with
/// nothing, is what the API refuses: an error.
pub fn peer(policy_namespace: &str, p: &NetworkPolicyPeer) -> Result<Peer, String> {
    let has_selector = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_selector) {
        (Some(_), true) => Err("a peer may not combine ipBlock with podSelector or namespaceSelector".into()),
        (Some(b), false) => IpBlock::parse(&b.cidr, b.except.as_deref().unwrap_or_default())
            .map(Peer::Block)
            .map_err(|e| format!("ipBlock: {e}")),
        (None, false) => Err("a peer must name a podSelector, a namespaceSelector or an ipBlock".into()),
        (None, true) => {
            let pods = match &p.pod_selector {
                None => Selector::everything(),
                Some(s) => Selector::from_label_selector(Some(s)).map_err(|e| format!("podSelector: {e}"))?,
            };
            let namespaces = match &p.namespace_selector {
                None => Namespaces::Own(policy_namespace.to_string()),
                Some(s) => Namespaces::Matching(
                    Selector::from_label_selector(Some(s)).map_err(|e| format!("namespaceSelector: {e}"))?,
                ),
            };
            Ok(Peer::Pods(PodPeer { namespaces, pods }))
        }
    }
}

/// A transport protocol a policy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// TCP when unset, as the API defaults it; the names are case-sensitive, as the API's.
    pub fn parse(p: Option<&str>) -> Result<Protocol, String> {
        match p.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("protocol {other:?} is not one of TCP, UDP, SCTP")),
        }
    }
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Ports `first..=last` (`1..=65535` when the entry names no port).
    Range { protocol: Protocol, first: u16, last: u16 },
    /// A container port name, resolved per pod.
    Named { protocol: Protocol, name: String },
}

/// A `ports` entry; out-of-range numbers, an `endPort` below `port` or beside a name, an
/// unknown protocol: errors.
pub fn port(p: &NetworkPolicyPort) -> Result<PortMatch, String> {
    let protocol = Protocol::parse(p.protocol.as_deref())?;
    let number = |n: i32, what: &str| -> Result<u16, String> {
        u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| format!("{what} {n} is not a port (1-65535)"))
    };
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortMatch::Range { protocol, first: 1, last: 65535 }),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let first = number(*n, "port")?;
            let last = match end {
                None => first,
                Some(e) => number(e, "endPort")?,
            };
            if last < first {
                return Err(format!("endPort {last} is below port {first}"));
            }
            Ok(PortMatch::Range { protocol, first, last })
        }
        // A name is a name, even "80": it resolves against containers' port names only.
        (Some(IntOrString::String(name)), None) if !name.is_empty() => {
            Ok(PortMatch::Named { protocol, name: name.clone() })
        }
        (Some(IntOrString::String(_)), None) => Err("an empty port name".into()),
        (Some(IntOrString::String(_)), Some(_)) => Err("endPort beside a named port".into()),
    }
}

/// The named ports of a pod's containers: (name, protocol, number), sorted, once each.
pub fn named_ports(pod: &Pod) -> Vec<(String, Protocol, u16)> {
    let mut out: Vec<(String, Protocol, u16)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.as_ref().filter(|n| !n.is_empty())?;
            let proto = Protocol::parse(p.protocol.as_deref()).ok()?;
            let number = u16::try_from(p.container_port).ok().filter(|n| *n > 0)?;
            Some((name.clone(), proto, number))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ports a pod's containers name `name` with `protocol` (TCP when unset), as a named port
/// resolves against that pod.
pub fn named_port(pod: &Pod, name: &str, protocol: Protocol) -> Vec<u16> {
    named_ports(pod).into_iter().filter(|(n, p, _)| n == name && *p == protocol).map(|(_, _, n)| n).collect()
}

/// The pod's IPv4 address, if it has one and policies apply to it: not hostNetwork (its address
/// is the node's), not finished (its address may be another pod's already). A terminating pod
/// still counts.
pub fn policy_address(pod: &Pod) -> Option<Ipv4Addr> {
    if pod.spec.as_ref().is_some_and(|s| s.host_network == Some(true)) || crate::pods::is_finished(pod) {
        return None;
    }
    let st = pod.status.as_ref()?;
    st.pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(st.pod_ip.as_deref())
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
    fn spec(v: serde_json::Value) -> NetworkPolicySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let d = |ingress, egress| Directions { ingress, egress };
        assert_eq!(directions(&spec(json!({}))), d(true, false));
        assert_eq!(directions(&spec(json!({"egress": []}))), d(true, false), "egress: [] implies nothing");
        assert_eq!(directions(&spec(json!({"egress": [{}]}))), d(true, true));
        assert_eq!(directions(&spec(json!({"policyTypes": []}))), d(true, false));
        assert_eq!(directions(&spec(json!({"policyTypes": ["Egress"]}))), d(false, true));
        assert_eq!(directions(&spec(json!({"policyTypes": ["Egress"], "ingress": [{}]}))), d(false, true));
        assert_eq!(directions(&spec(json!({"policyTypes": ["Ingress", "Egress"]}))), d(true, true));
    }

    #[test]
    fn a_policy_selects_pods_of_its_own_namespace() {
        let np: NetworkPolicy = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}}}))
        .unwrap();
        assert!(selects(&np, "x", &labels(&[("app", "a")])));
        assert!(!selects(&np, "y", &labels(&[("app", "a")])));
        assert!(!selects(&np, "x", &labels(&[("app", "b")])));
        let all: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}))
                .unwrap();
        assert!(selects(&all, "x", &labels(&[])));
        let bad: NetworkPolicy = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}}))
        .unwrap();
        assert!(!selects(&bad, "x", &labels(&[("a", "b")])), "an invalid selector selects nothing");
    }

    #[test]
    fn pod_peers_by_pod_namespace_or_both() {
        let p = |v: serde_json::Value| -> PodPeer {
            match peer("x", &serde_json::from_value(v).unwrap()).unwrap() {
                Peer::Pods(p) => p,
                other => panic!("{other:?}"),
            }
        };
        let (a, b) = (labels(&[("pod", "a")]), labels(&[("pod", "b")]));
        let (nsx, nsy) = (labels(&[("ns", "x")]), labels(&[("ns", "y")]));
        let by_pod = p(json!({"podSelector": {"matchLabels": {"pod": "a"}}}));
        assert!(by_pod.matches("x", &a, Some(&nsx)));
        assert!(!by_pod.matches("y", &a, Some(&nsy)), "podSelector alone: the policy's namespace");
        assert!(!by_pod.matches("x", &b, Some(&nsx)));
        let by_ns = p(json!({"namespaceSelector": {"matchLabels": {"ns": "y"}}}));
        assert!(by_ns.matches("y", &a, Some(&nsy)) && by_ns.matches("y", &b, Some(&nsy)));
        assert!(!by_ns.matches("x", &a, Some(&nsx)));
        assert!(!by_ns.matches("y", &a, None), "an unknown namespace matches no selector");
        let both =
            p(json!({"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}));
        assert!(both.matches("y", &a, Some(&nsy)));
        assert!(!both.matches("y", &b, Some(&nsy)) && !both.matches("x", &a, Some(&nsx)));
        let every_ns = p(json!({"namespaceSelector": {}}));
        assert!(every_ns.matches("z", &b, Some(&labels(&[]))));
        assert!(peer("x", &serde_json::from_value(json!({})).unwrap()).is_err());
        assert!(
            peer("x", &serde_json::from_value(json!({"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}})).unwrap())
                .is_err()
        );
    }

    #[test]
    fn an_ip_block_is_its_cidr_minus_its_exceptions() {
        let b = IpBlock::parse("10.0.0.0/16", &["10.0.1.0/24".into(), "10.0.3.7/32".into()]).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(b.contains(ip("10.0.0.9")) && b.contains(ip("10.0.2.1")) && b.contains(ip("10.0.3.8")));
        assert!(!b.contains(ip("10.0.1.5")) && !b.contains(ip("10.0.3.7")) && !b.contains(ip("10.1.0.0")));
        assert_eq!(
            b.ranges,
            vec![
                (ip("10.0.0.0"), ip("10.0.0.255")),
                (ip("10.0.2.0"), ip("10.0.3.6")),
                (ip("10.0.3.8"), ip("10.0.255.255"))
            ]
        );
        let all = IpBlock::parse("0.0.0.0/0", &[]).unwrap();
        assert_eq!(all.ranges, vec![(ip("0.0.0.0"), ip("255.255.255.255"))]);
        assert!(IpBlock::parse("10.0.0.5/24", &[]).unwrap().contains(ip("10.0.0.200")), "host bits ignored");
        assert!(IpBlock::parse("fd00::/8", &[]).unwrap().ranges.is_empty(), "IPv6: no IPv4 address");
        for bad in ["10.0.0.0", "10.0.0.0/33", "300.0.0.0/8", "x/8", ""] {
            assert!(IpBlock::parse(bad, &[]).is_err(), "{bad}");
        }
        assert!(IpBlock::parse("10.0.0.0/8", &["nonsense".into()]).is_err());
    }

    #[test]
    fn ports_numbers_ranges_names_and_protocols() {
        let p = |v: serde_json::Value| port(&serde_json::from_value(v).unwrap());
        let tcp = Protocol::Tcp;
        assert_eq!(p(json!({"port": 80})), Ok(PortMatch::Range { protocol: tcp, first: 80, last: 80 }));
        assert_eq!(
            p(json!({"port": 80, "endPort": 90, "protocol": "UDP"})),
            Ok(PortMatch::Range { protocol: Protocol::Udp, first: 80, last: 90 })
        );
        assert_eq!(
            p(json!({"protocol": "SCTP"})),
            Ok(PortMatch::Range { protocol: Protocol::Sctp, first: 1, last: 65535 })
        );
        assert_eq!(p(json!({"port": "http"})), Ok(PortMatch::Named { protocol: tcp, name: "http".into() }));
        for bad in [
            json!({"port": 0}),
            json!({"port": 70000}),
            json!({"port": -1}),
            json!({"port": 90, "endPort": 80}),
            json!({"port": 80, "endPort": 70000}),
            json!({"endPort": 80}),
            json!({"port": "http", "endPort": 90}),
            json!({"port": 80, "protocol": "ICMP"}),
            json!({"port": 80, "protocol": "tcp"}),
        ] {
            assert!(p(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn named_ports_resolve_by_name_and_protocol() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "a", "ports": [{"name": "serve-80-tcp", "containerPort": 80}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
            {"name": "b", "ports": [{"name": "dns", "containerPort": 5353, "protocol": "TCP"}]}]}}))
        .unwrap();
        assert_eq!(named_port(&pod, "serve-80-tcp", Protocol::Tcp), vec![80]);
        assert_eq!(named_port(&pod, "serve-80-tcp", Protocol::Udp), Vec::<u16>::new());
        assert_eq!(named_port(&pod, "dns", Protocol::Udp), vec![53]);
        assert_eq!(named_port(&pod, "dns", Protocol::Tcp), vec![5353]);
        assert_eq!(named_port(&pod, "nope", Protocol::Tcp), Vec::<u16>::new());
    }

    #[test]
    fn which_pods_policies_apply_to() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let ip = Some("10.244.0.5".parse().unwrap());
        assert_eq!(policy_address(&pod(json!({"status": {"podIP": "10.244.0.5"}}))), ip);
        assert_eq!(policy_address(&pod(json!({"status": {"podIPs": [{"ip": "fd00::5"}, {"ip": "10.244.0.5"}]}}))), ip);
        assert_eq!(
            policy_address(&pod(
                json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}, "status": {"podIP": "10.244.0.5"}})
            )),
            ip,
            "terminating: still enforced"
        );
        assert_eq!(policy_address(&pod(json!({"status": {}}))), None);
        assert_eq!(
            policy_address(&pod(
                json!({"spec": {"hostNetwork": true, "containers": []}, "status": {"podIP": "172.18.0.10"}})
            )),
            None
        );
        assert_eq!(policy_address(&pod(json!({"status": {"phase": "Succeeded", "podIP": "10.244.0.5"}}))), None);
    }
}
