//! The cluster zone as an index: built from a [`Snapshot`] of the cluster on every change, then
//! read by every query. Each name maps to its record sets already in wire format (owner name as
//! a pointer to the question), so answering is a hash lookup and a copy.
//!
//! What exists follows the Kubernetes DNS-Based Service Discovery specification and, where it is
//! silent, CoreDNS's `kubernetes` plugin: a name that exists with no record of the asked type
//! is NODATA (NOERROR, SOA in authority), a name that does not exist is NXDOMAIN; the empty
//! non-terminals (`svc.<zone>`, `<ns>.svc.<zone>` of an existing namespace, `_tcp.<svc>...`)
//! exist. Names are compared case-insensitively (keys are lowercase).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

use hashbrown::HashTable;

use crate::model::{self, Snapshot, SvcKind};
use crate::wire::{self, T_A, T_AAAA, T_ANY, T_CNAME, T_NS, T_PTR, T_SOA, T_SRV, T_TXT};

/// The DNS schema version this server implements (`dns-version.<zone>` TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How `<a-b-c-d>.<ns>.pod.<zone>` is answered (CoreDNS's `pods` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodMode {
    /// Only for an IP of a pod that exists in that namespace.
    #[default]
    Verified,
    /// For any well-formed dashed IP.
    Insecure,
    /// Never (NXDOMAIN).
    Disabled,
}

impl std::str::FromStr for PodMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "verified" => Ok(PodMode::Verified),
            "insecure" => Ok(PodMode::Insecure),
            "disabled" => Ok(PodMode::Disabled),
            _ => Err(format!("pods mode {s:?}: use verified, insecure or disabled")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    pub ttl: u32,
    pub pods: PodMode,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig { domain: "cluster.local".into(), ttl: 5, pods: PodMode::Verified }
    }
}

/// Resource records of one type at one name, in wire format with the owner written as a pointer
/// to the question name, and the additional records that go with them (A/AAAA of SRV targets).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordSet {
    pub rtype: u16,
    pub count: u16,
    pub wire: Vec<u8>,
    pub extra_count: u16,
    pub extra: Vec<u8>,
}

/// A borrowed record set (from the index or from a [`RecordSet`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SetRef<'a> {
    pub rtype: u16,
    pub count: u16,
    pub wire: &'a [u8],
    pub extra_count: u16,
    pub extra: &'a [u8],
}

impl RecordSet {
    pub fn as_ref(&self) -> SetRef<'_> {
        SetRef {
            rtype: self.rtype,
            count: self.count,
            wire: &self.wire,
            extra_count: self.extra_count,
            extra: &self.extra,
        }
    }
}

const SET_HEADER: usize = 14;

/// A name's record sets packed in one allocation (the index holds tens of thousands of names,
/// and a Vec of sets per name cost several times the bytes of the records): per set a header
/// (type, count, extra count as u16; record and extra lengths as u32), then its bytes.
fn pack(sets: &[RecordSet]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(sets.iter().map(|s| SET_HEADER + s.wire.len() + s.extra.len()).sum());
    for s in sets {
        for v in [s.rtype, s.count, s.extra_count] {
            out.extend(v.to_be_bytes());
        }
        out.extend((s.wire.len() as u32).to_be_bytes());
        out.extend((s.extra.len() as u32).to_be_bytes());
        out.extend(&s.wire);
        out.extend(&s.extra);
    }
    out.into_boxed_slice()
}

/// The sets of a packed name (the index wrote it, so the lengths hold).
fn unpack(mut blob: &[u8]) -> impl Iterator<Item = SetRef<'_>> {
    std::iter::from_fn(move || {
        let h = blob.get(..SET_HEADER)?;
        let u16_at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as usize;
        let (wl, el) = (u32_at(6), u32_at(10));
        let body = blob.get(SET_HEADER..SET_HEADER + wl + el)?;
        let set = SetRef {
            rtype: u16_at(0),
            count: u16_at(2),
            extra_count: u16_at(4),
            wire: &body[..wl],
            extra: &body[wl..],
        };
        blob = &blob[SET_HEADER + wl + el..];
        Some(set)
    })
}

/// The (name, packed sets) of the node at `at` in an arena (the index wrote it, so it holds).
fn node(arena: &[u8], at: u32) -> (&[u8], &[u8]) {
    let at = at as usize;
    let n = arena[at] as usize;
    let name = &arena[at + 1..at + 1 + n];
    let len_at = at + 1 + n;
    let len = u32::from_le_bytes([arena[len_at], arena[len_at + 1], arena[len_at + 2], arena[len_at + 3]]) as usize;
    (name, &arena[len_at + 4..len_at + 4 + len])
}

/// What the zone says about a question.
#[derive(Debug, PartialEq)]
pub enum Lookup<'a> {
    /// NOERROR with these records (a CNAME set answers every type).
    Answer(SetRef<'a>),
    /// NOERROR with records made for this question (pod A/AAAA records).
    Made(RecordSet),
    /// The name exists without records of this type.
    NoData,
    NxDomain,
    /// Not ours to answer: forward it (names outside the zone, unknown reverse names).
    Elsewhere,
}

pub struct Zone {
    /// The cluster domain in lowercase wire format.
    origin: Vec<u8>,
    /// Every name with its packed record sets, in one allocation: per node the name's length
    /// (one byte), the lowercase wire name, the packed sets' length (u32, little-endian) and
    /// the packed sets (none for an empty non-terminal). One block instead of two allocations
    /// per name halves the index and leaves no fragments behind when it is replaced.
    arena: Box<[u8]>,
    /// Offsets of the nodes in `arena`, by the hash of their name.
    table: HashTable<u32>,
    hasher: RandomState,
    /// Pods' addresses for verified pod records, sorted for binary search: IPv4 as
    /// `namespace number << 32 | address`, IPv6 as (namespace number, address); about 10 bytes a
    /// pod where a set per namespace took 70.
    pod_v4: Vec<u64>,
    pod_v6: Vec<(u32, u128)>,
    pod_namespaces: HashMap<Box<str>, u32>,
    namespaces: HashSet<String>,
    pods: PodMode,
    ttl: u32,
    /// The SOA record's rdata, for the authority section of negative answers.
    soa_rdata: Vec<u8>,
}

/// A dotted name in lowercase wire format, or None if it is not a valid DNS name.
pub fn wire_name(dotted: &str) -> Option<Vec<u8>> {
    let s = dotted.strip_suffix('.').unwrap_or(dotted);
    let mut out = Vec::with_capacity(s.len() + 2);
    if !s.is_empty() {
        for label in s.split('.') {
            let l = label.as_bytes();
            if l.is_empty() || l.len() > 63 {
                return None;
            }
            out.push(l.len() as u8);
            out.extend(l.iter().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// The reverse-lookup name of an address (`d.c.b.a.in-addr.arpa`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The dashed form of an address used in pod and endpoint names (`10-244-1-2`, `fd00--1`).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn undashed(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label.replace('-', ".").parse().ok().filter(IpAddr::is_ipv4)
    } else {
        label.replace('-', ":").parse().ok().filter(IpAddr::is_ipv6)
    }
}

fn ip_record(ip: IpAddr) -> (u16, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (T_A, a.octets().to_vec()),
        IpAddr::V6(a) => (T_AAAA, a.octets().to_vec()),
    }
}

fn srv_rdata(priority: u16, weight: u16, port: u16, target: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(6 + target.len());
    r.extend(priority.to_be_bytes());
    r.extend(weight.to_be_bytes());
    r.extend(port.to_be_bytes());
    r.extend(target);
    r
}

/// Records gathered while building: (name, type) -> rdatas in insertion order, without repeats.
#[derive(Default)]
struct Builder {
    sets: BTreeMap<(Vec<u8>, u16), Vec<Vec<u8>>>,
    names: BTreeSet<Vec<u8>>,
}

impl Builder {
    fn add(&mut self, name: &[u8], rtype: u16, rdata: Vec<u8>) {
        let v = self.sets.entry((name.to_vec(), rtype)).or_default();
        if !v.contains(&rdata) {
            v.push(rdata);
        }
        self.names.insert(name.to_vec());
    }
}

/// The parent of a wire name (without its first label), or None at the root.
fn parent(name: &[u8]) -> Option<&[u8]> {
    let n = *name.first()? as usize;
    (n > 0).then(|| &name[1 + n..])
}

impl Zone {
    /// Builds the index (pure: the snapshot and configuration in, the zone out).
    pub fn build(snap: &Snapshot, cfg: &ZoneConfig, serial: u32) -> Zone {
        let origin = wire_name(&cfg.domain).unwrap_or_else(|| wire_name("cluster.local").unwrap_or_default());
        let d = cfg.domain.trim_end_matches('.').to_ascii_lowercase();
        let name = |s: &str| wire_name(s);
        let mut b = Builder::default();
        let ns_host = name(&format!("ns.dns.{d}")).unwrap_or_default();
        let soa_rdata = {
            let mut r = ns_host.clone();
            r.extend(name(&format!("hostmaster.{d}")).unwrap_or_default());
            for v in [serial, 7200, 1800, 86400, cfg.ttl] {
                r.extend(v.to_be_bytes());
            }
            r
        };
        b.add(&origin, T_SOA, soa_rdata.clone());
        b.add(&origin, T_NS, ns_host.clone());
        if let Some(v) = name(&format!("dns-version.{d}")) {
            let mut txt = vec![SCHEMA_VERSION.len() as u8];
            txt.extend(SCHEMA_VERSION.as_bytes());
            b.add(&v, T_TXT, txt);
        }
        for n in ["svc", "pod"] {
            if let Some(w) = name(&format!("{n}.{d}")) {
                b.names.insert(w);
            }
        }
        let mut namespaces: HashSet<String> = snap.namespace_names().map(str::to_string).collect();
        for ns in snap.namespace_names() {
            for kind in ["svc", "pod"] {
                if let Some(w) = name(&format!("{ns}.{kind}.{d}")) {
                    b.names.insert(w);
                }
            }
        }
        // Ready endpoints per Service, from its slices.
        let mut endpoints: HashMap<(&str, &str), Vec<&model::Slice>> = HashMap::new();
        for (k, s) in &snap.slices {
            endpoints.entry((model::split(k).0, &s.service)).or_default().push(s);
        }
        let mut reverse: Vec<(IpAddr, Vec<u8>)> = vec![];
        for (k, svc) in &snap.services {
            let (svc_ns, svc_n) = model::split(k);
            if !namespaces.contains(svc_ns) {
                namespaces.insert(svc_ns.to_string());
            }
            let Some(svc_name) = name(&format!("{svc_n}.{svc_ns}.svc.{d}")) else { continue };
            if svc_n == "kube-dns" && svc_ns == "kube-system" {
                for &ip in svc.cluster_ips() {
                    let (t, r) = ip_record(ip);
                    b.add(&ns_host, t, r);
                }
            }
            match &svc.kind {
                SvcKind::ExternalName(target) => {
                    if let Some(t) = name(target) {
                        b.add(&svc_name, T_CNAME, t);
                    }
                }
                SvcKind::ClusterIp(ips) => {
                    for ip in ips {
                        let (t, r) = ip_record(*ip);
                        b.add(&svc_name, t, r);
                        reverse.push((*ip, svc_name.clone()));
                    }
                    let named: Vec<_> = svc.ports.iter().filter(|p| !p.name.is_empty()).collect();
                    let weight = (100 / named.len().max(1)) as u16;
                    for p in named {
                        let rdata = srv_rdata(0, 100, p.port, &svc_name);
                        if let Some(srv) =
                            name(&format!("_{}._{}.{svc_n}.{svc_ns}.svc.{d}", p.name, p.protocol.label()))
                        {
                            b.add(&srv, T_SRV, rdata);
                        }
                        b.add(&svc_name, T_SRV, srv_rdata(0, weight, p.port, &svc_name));
                    }
                }
                SvcKind::Headless => {
                    let slices = endpoints.get(&(svc_ns, svc_n));
                    let mut ready: Vec<(IpAddr, String)> = vec![];
                    let mut ports: Vec<&model::Port> = vec![];
                    for s in slices.into_iter().flatten() {
                        for p in s.ports.iter() {
                            if !p.name.is_empty() && !ports.contains(&p) {
                                ports.push(p);
                            }
                        }
                        for e in s.endpoints() {
                            if e.ready || svc.publish_not_ready {
                                let host = e.hostname.map(str::to_string).unwrap_or_else(|| dashed(e.ip));
                                ready.push((e.ip, host));
                            }
                        }
                    }
                    // No ready endpoint: the name does not exist (NXDOMAIN), as the spec says.
                    let hosts: BTreeSet<&String> = ready.iter().map(|(_, h)| h).collect();
                    let weight = (100 / (hosts.len() * ports.len().max(1)).max(1)) as u16;
                    for (ip, host) in &ready {
                        let (t, r) = ip_record(*ip);
                        b.add(&svc_name, t, r.clone());
                        let Some(host_name) = name(&format!("{host}.{svc_n}.{svc_ns}.svc.{d}")) else {
                            continue;
                        };
                        b.add(&host_name, t, r);
                        reverse.push((*ip, host_name.clone()));
                        for p in &ports {
                            if let Some(srv) =
                                name(&format!("_{}._{}.{svc_n}.{svc_ns}.svc.{d}", p.name, p.protocol.label()))
                            {
                                b.add(&srv, T_SRV, srv_rdata(0, weight, p.port, &host_name));
                            }
                            b.add(&svc_name, T_SRV, srv_rdata(0, weight, p.port, &host_name));
                        }
                    }
                }
            }
        }
        // Empty non-terminals: every in-zone name's ancestors exist.
        let in_zone: Vec<Vec<u8>> = b.names.iter().filter(|n| n.ends_with(&origin)).cloned().collect();
        for n in in_zone {
            let mut cur: &[u8] = &n;
            while let Some(p) = parent(cur) {
                if p.len() < origin.len() {
                    break;
                }
                b.names.insert(p.to_vec());
                cur = p;
            }
        }
        for (ip, target) in reverse {
            if let Some(r) = name(&reverse_name(ip)) {
                b.add(&r, T_PTR, target);
            }
        }
        Zone::assemble(b, origin, cfg, soa_rdata, snap, namespaces)
    }

    fn assemble(
        b: Builder,
        origin: Vec<u8>,
        cfg: &ZoneConfig,
        soa_rdata: Vec<u8>,
        snap: &Snapshot,
        namespaces: HashSet<String>,
    ) -> Zone {
        let ttl = cfg.ttl;
        let mut sets: HashMap<&[u8], Vec<RecordSet>> = HashMap::new();
        for ((n, rtype), rdatas) in &b.sets {
            let mut set = RecordSet { rtype: *rtype, ..Default::default() };
            for r in rdatas {
                wire::push_rr(&mut set.wire, &wire::QNAME_PTR, *rtype, ttl, r);
                set.count += 1;
            }
            // SRV answers carry their targets' addresses in the additional section.
            if *rtype == T_SRV {
                let targets: BTreeSet<&[u8]> = rdatas.iter().map(|r| &r[6..]).collect();
                for t in targets {
                    for at in [T_A, T_AAAA] {
                        for r in b.sets.get(&(t.to_vec(), at)).into_iter().flatten() {
                            wire::push_rr(&mut set.extra, t, at, ttl, r);
                            set.extra_count += 1;
                        }
                    }
                }
            }
            sets.entry(n.as_slice()).or_default().push(set);
        }
        let mut arena = vec![];
        let mut offsets = Vec::with_capacity(b.names.len());
        for n in &b.names {
            offsets.push(arena.len() as u32);
            arena.push(n.len() as u8);
            arena.extend(n);
            let packed = sets.get(n.as_slice()).map(|v| pack(v)).unwrap_or_default();
            arena.extend((packed.len() as u32).to_le_bytes());
            arena.extend(packed);
        }
        drop(sets);
        let arena = arena.into_boxed_slice();
        let hasher = RandomState::new();
        let mut table = HashTable::with_capacity(offsets.len());
        for at in offsets {
            let h = hasher.hash_one(node(&arena, at).0);
            table.insert_unique(h, at, |&o| hasher.hash_one(node(&arena, o).0));
        }
        let (mut pod_v4, mut pod_v6, mut pod_namespaces) = (vec![], vec![], HashMap::<Box<str>, u32>::new());
        if cfg.pods == PodMode::Verified {
            pod_v4.reserve_exact(snap.pods.len());
            for (ns, ip) in snap.pods.addresses() {
                let n = match pod_namespaces.get(ns) {
                    Some(n) => *n,
                    None => {
                        let n = pod_namespaces.len() as u32;
                        pod_namespaces.insert(ns.into(), n);
                        n
                    }
                };
                match ip {
                    IpAddr::V4(a) => pod_v4.push(u64::from(n) << 32 | u64::from(u32::from(a))),
                    IpAddr::V6(a) => pod_v6.push((n, u128::from(a))),
                }
            }
            pod_v4.sort_unstable();
            pod_v6.sort_unstable();
        }
        Zone {
            origin,
            arena,
            table,
            hasher,
            pod_v4,
            pod_v6,
            pod_namespaces,
            namespaces,
            pods: cfg.pods,
            ttl,
            soa_rdata,
        }
    }

    /// The packed sets of a name, if it exists.
    fn node(&self, qname: &[u8]) -> Option<&[u8]> {
        let h = self.hasher.hash_one(qname);
        let at = self.table.find(h, |&o| node(&self.arena, o).0 == qname)?;
        Some(node(&self.arena, *at).1)
    }

    /// The cluster domain in wire format.
    pub fn origin(&self) -> &[u8] {
        &self.origin
    }

    pub fn soa_rdata(&self) -> &[u8] {
        &self.soa_rdata
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Number of names in the index (for metrics).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Where the zone's name starts inside `qname` (a lowercase wire name), if it is in the zone.
    pub fn zone_offset(&self, qname: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < qname.len() {
            if qname.len() - i == self.origin.len() {
                return (qname[i..] == self.origin[..]).then_some(i);
            }
            if qname.len() - i < self.origin.len() {
                return None;
            }
            i += 1 + qname[i] as usize;
        }
        None
    }

    /// Answers a question: `qname` is the lowercase wire name.
    pub fn lookup(&self, qname: &[u8], qtype: u16) -> Lookup<'_> {
        if let Some(node) = self.node(qname) {
            // ANY: one set (the first, lowest type), as RFC 8482 section 4.1 allows; every
            // set of a name would make a small question a big answer.
            if qtype == T_ANY {
                return unpack(node).next().map(Lookup::Answer).unwrap_or(Lookup::NoData);
            }
            let mut cname = None;
            for s in unpack(node) {
                if s.rtype == qtype {
                    return Lookup::Answer(s);
                }
                if s.rtype == T_CNAME {
                    cname = Some(s);
                }
            }
            return cname.map(Lookup::Answer).unwrap_or(Lookup::NoData);
        }
        let Some(at) = self.zone_offset(qname) else { return Lookup::Elsewhere };
        self.pod_record(&qname[..at], qtype).unwrap_or(Lookup::NxDomain)
    }

    /// Whether a pod in namespace `ns` has address `ip`.
    fn has_pod(&self, ns: &str, ip: IpAddr) -> bool {
        let Some(&n) = self.pod_namespaces.get(ns) else { return false };
        match ip {
            IpAddr::V4(a) => self.pod_v4.binary_search(&(u64::from(n) << 32 | u64::from(u32::from(a)))).is_ok(),
            IpAddr::V6(a) => self.pod_v6.binary_search(&(n, u128::from(a))).is_ok(),
        }
    }

    /// `<a-b-c-d>.<ns>.pod` (the part before the zone, in wire format).
    fn pod_record(&self, rel: &[u8], qtype: u16) -> Option<Lookup<'_>> {
        let mut labels = vec![];
        let mut i = 0;
        while i < rel.len() {
            let n = rel[i] as usize;
            labels.push(std::str::from_utf8(rel.get(i + 1..i + 1 + n)?).ok()?);
            i += 1 + n;
        }
        let [ip, ns, "pod"] = labels[..] else { return None };
        if self.pods == PodMode::Disabled || !self.namespaces.contains(ns) {
            return None;
        }
        let ip = undashed(ip)?;
        if self.pods == PodMode::Verified && !self.has_pod(ns, ip) {
            return None;
        }
        let (t, r) = ip_record(ip);
        if qtype != t && qtype != T_ANY {
            return Some(Lookup::NoData);
        }
        let mut set = RecordSet { rtype: t, count: 1, ..Default::default() };
        wire::push_rr(&mut set.wire, &wire::QNAME_PTR, t, self.ttl, &r);
        Some(Lookup::Made(set))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Pod, Port, Protocol, Service, Slice};

    fn put(s: &mut Snapshot, ns: &str, name: &str, kind: SvcKind, ports: &[(&str, &str, u16)]) {
        let ports = ports.iter().map(|(n, p, port)| Port::new(n, Protocol::parse(p).unwrap(), *port)).collect();
        s.put_service(ns, name, Service { kind, ports, publish_not_ready: false });
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        for ns in ["default", "kube-system", "other", "empty"] {
            s.add_namespace(ns);
        }
        let ip = |x: &str| -> IpAddr { x.parse().unwrap() };
        put(&mut s, "default", "kubernetes", SvcKind::ClusterIp(Box::new([ip("10.96.0.1")])), &[("https", "tcp", 443)]);
        put(
            &mut s,
            "kube-system",
            "kube-dns",
            SvcKind::ClusterIp(Box::new([ip("10.96.0.10")])),
            &[("dns", "udp", 53), ("dns-tcp", "tcp", 53)],
        );
        put(
            &mut s,
            "default",
            "dual",
            SvcKind::ClusterIp(Box::new([ip("10.96.0.20"), ip("fd00::20")])),
            &[("", "tcp", 80)],
        );
        put(&mut s, "other", "ext", SvcKind::ExternalName("www.example.com".into()), &[]);
        put(&mut s, "default", "db", SvcKind::Headless, &[("pg", "tcp", 5432)]);
        put(&mut s, "default", "nobody", SvcKind::Headless, &[]);
        s.put_slice(
            "default",
            "db-abc",
            Slice::new(
                "db",
                vec![Port::new("pg", Protocol::Tcp, 5432)],
                [
                    Endpoint { ip: ip("10.244.1.5"), hostname: Some("db-0"), ready: true },
                    Endpoint { ip: ip("10.244.2.6"), hostname: None, ready: true },
                    Endpoint { ip: ip("10.244.2.7"), hostname: Some("db-2"), ready: false },
                ],
            ),
        );
        s.put_slice(
            "default",
            "nobody-x",
            Slice::new("nobody", vec![], [Endpoint { ip: ip("10.244.3.3"), hostname: None, ready: false }]),
        );
        s.put_pod(&Pod {
            uid: [1; 16],
            namespace: "default".into(),
            ips: Box::new([ip("10.244.1.2"), ip("fd00::1:2")]),
        });
        s
    }

    fn zone(pods: PodMode) -> Zone {
        Zone::build(&snapshot(), &ZoneConfig { pods, ..Default::default() }, 1)
    }

    fn q<'a>(z: &'a Zone, name: &str, t: u16) -> Lookup<'a> {
        z.lookup(&wire_name(name).unwrap(), t)
    }

    /// The rdatas of an answer, as (type, rdata) pairs (owner pointers skipped).
    fn rdatas(l: &Lookup) -> Vec<(u16, Vec<u8>)> {
        let set = match l {
            Lookup::Answer(s) => RecordSet {
                rtype: s.rtype,
                count: s.count,
                wire: s.wire.to_vec(),
                extra_count: s.extra_count,
                extra: s.extra.to_vec(),
            },
            Lookup::Made(s) => s.clone(),
            other => panic!("not an answer: {other:?}"),
        };
        let mut out = vec![];
        let mut i = 0;
        let w = &set.wire;
        while i < w.len() {
            assert_eq!(&w[i..i + 2], &[0xc0, 0x0c]);
            let t = u16::from_be_bytes([w[i + 2], w[i + 3]]);
            let len = u16::from_be_bytes([w[i + 10], w[i + 11]]) as usize;
            out.push((t, w[i + 12..i + 12 + len].to_vec()));
            i += 12 + len;
        }
        out
    }

    #[test]
    fn cluster_ip_service_a_srv_ptr() {
        let z = zone(PodMode::Verified);
        assert_eq!(rdatas(&q(&z, "kubernetes.default.svc.cluster.local", T_A)), vec![(T_A, vec![10, 96, 0, 1])]);
        // Case-insensitive.
        assert!(matches!(q(&z, "KUBERNETES.Default.SVC.cluster.LOCAL", T_A), Lookup::Answer(_)));
        // AAAA of an IPv4-only Service: the name exists, NODATA.
        assert_eq!(q(&z, "kubernetes.default.svc.cluster.local", T_AAAA), Lookup::NoData);
        let srv = rdatas(&q(&z, "_https._tcp.kubernetes.default.svc.cluster.local", T_SRV));
        let mut want = vec![0, 0, 0, 100, 1, 187];
        want.extend(wire_name("kubernetes.default.svc.cluster.local").unwrap());
        assert_eq!(srv, vec![(T_SRV, want)]);
        if let Lookup::Answer(s) = q(&z, "_https._tcp.kubernetes.default.svc.cluster.local", T_SRV) {
            assert_eq!(s.extra_count, 1, "the target's A record goes in the additional section");
        }
        let ptr = rdatas(&q(&z, "1.0.96.10.in-addr.arpa", T_PTR));
        assert_eq!(ptr, vec![(T_PTR, wire_name("kubernetes.default.svc.cluster.local").unwrap())]);
        // Unnamed ports have no SRV record; the _tcp label of a named one is an empty non-terminal.
        assert_eq!(q(&z, "_tcp.kubernetes.default.svc.cluster.local", T_SRV), Lookup::NoData);
        assert_eq!(q(&z, "_http._tcp.kubernetes.default.svc.cluster.local", T_SRV), Lookup::NxDomain);
    }

    #[test]
    fn dual_stack_service() {
        let z = zone(PodMode::Verified);
        assert_eq!(rdatas(&q(&z, "dual.default.svc.cluster.local", T_A)), vec![(T_A, vec![10, 96, 0, 20])]);
        let v6: std::net::Ipv6Addr = "fd00::20".parse().unwrap();
        assert_eq!(rdatas(&q(&z, "dual.default.svc.cluster.local", T_AAAA)), vec![(T_AAAA, v6.octets().to_vec())]);
        let rev = reverse_name(IpAddr::V6(v6));
        assert!(rev.starts_with("0.2.0.0.0.0.0.0.") && rev.ends_with(".0.0.d.f.ip6.arpa"), "{rev}");
        assert!(matches!(q(&z, &rev, T_PTR), Lookup::Answer(_)));
    }

    #[test]
    fn headless_service_records() {
        let z = zone(PodMode::Verified);
        let a = rdatas(&q(&z, "db.default.svc.cluster.local", T_A));
        assert_eq!(a, vec![(T_A, vec![10, 244, 1, 5]), (T_A, vec![10, 244, 2, 6])], "ready endpoints only");
        assert_eq!(rdatas(&q(&z, "db-0.db.default.svc.cluster.local", T_A)), vec![(T_A, vec![10, 244, 1, 5])]);
        // No hostname: a unique identifier (the dashed IP) names the endpoint.
        assert_eq!(rdatas(&q(&z, "10-244-2-6.db.default.svc.cluster.local", T_A)), vec![(T_A, vec![10, 244, 2, 6])]);
        assert_eq!(q(&z, "db-2.db.default.svc.cluster.local", T_A), Lookup::NxDomain, "not ready");
        let srv = rdatas(&q(&z, "_pg._tcp.db.default.svc.cluster.local", T_SRV));
        assert_eq!(srv.len(), 2);
        let mut want = vec![0, 0, 0, 50, 0x15, 0x38];
        want.extend(wire_name("db-0.db.default.svc.cluster.local").unwrap());
        assert_eq!(srv[0], (T_SRV, want));
        let ptr = rdatas(&q(&z, "5.1.244.10.in-addr.arpa", T_PTR));
        assert_eq!(ptr, vec![(T_PTR, wire_name("db-0.db.default.svc.cluster.local").unwrap())]);
        // A headless Service with no ready endpoint: NXDOMAIN.
        assert_eq!(q(&z, "nobody.default.svc.cluster.local", T_A), Lookup::NxDomain);
    }

    #[test]
    fn headless_publish_not_ready() {
        let mut s = snapshot();
        s.services.get_mut("default/nobody").unwrap().publish_not_ready = true;
        let z = Zone::build(&s, &ZoneConfig::default(), 1);
        assert_eq!(rdatas(&q(&z, "nobody.default.svc.cluster.local", T_A)), vec![(T_A, vec![10, 244, 3, 3])]);
    }

    #[test]
    fn external_name_is_a_cname_for_every_type() {
        let z = zone(PodMode::Verified);
        for t in [T_A, T_AAAA, T_CNAME, T_SRV] {
            assert_eq!(
                rdatas(&q(&z, "ext.other.svc.cluster.local", t)),
                vec![(T_CNAME, wire_name("www.example.com").unwrap())]
            );
        }
    }

    #[test]
    fn apex_version_and_nodata_nxdomain() {
        let z = zone(PodMode::Verified);
        let soa = rdatas(&q(&z, "cluster.local", T_SOA));
        assert_eq!(soa.len(), 1);
        assert!(soa[0].1.starts_with(&wire_name("ns.dns.cluster.local").unwrap()));
        assert_eq!(rdatas(&q(&z, "cluster.local", T_NS)), vec![(T_NS, wire_name("ns.dns.cluster.local").unwrap())]);
        assert_eq!(rdatas(&q(&z, "ns.dns.cluster.local", T_A)), vec![(T_A, vec![10, 96, 0, 10])]);
        assert_eq!(rdatas(&q(&z, "dns-version.cluster.local", T_TXT)), vec![(T_TXT, b"\x051.1.0".to_vec())]);
        assert_eq!(q(&z, "cluster.local", T_A), Lookup::NoData);
        assert_eq!(q(&z, "svc.cluster.local", T_A), Lookup::NoData);
        assert_eq!(q(&z, "default.svc.cluster.local", T_A), Lookup::NoData);
        assert_eq!(q(&z, "empty.svc.cluster.local", T_A), Lookup::NoData, "a namespace without Services exists");
        assert_eq!(q(&z, "nosuchns.svc.cluster.local", T_A), Lookup::NxDomain);
        assert_eq!(q(&z, "missing.default.svc.cluster.local", T_A), Lookup::NxDomain);
        // What the search list makes of a short name that is not ours.
        assert_eq!(q(&z, "example.com.default.svc.cluster.local", T_A), Lookup::NxDomain);
        assert_eq!(q(&z, "example.com", T_A), Lookup::Elsewhere);
        assert_eq!(q(&z, "local", T_A), Lookup::Elsewhere);
        assert_eq!(q(&z, "9.9.9.9.in-addr.arpa", T_PTR), Lookup::Elsewhere, "unknown reverse names fall through");
        // ANY gives one set (RFC 8482), not every set at the apex.
        assert!(matches!(q(&z, "cluster.local", T_ANY), Lookup::Answer(s) if s.rtype == T_NS && s.count == 1));
        assert_eq!(q(&z, "empty.svc.cluster.local", T_ANY), Lookup::NoData);
    }

    #[test]
    fn pod_records_verified_insecure_disabled() {
        let v = zone(PodMode::Verified);
        assert_eq!(rdatas(&q(&v, "10-244-1-2.default.pod.cluster.local", T_A)), vec![(T_A, vec![10, 244, 1, 2])]);
        assert_eq!(q(&v, "10-244-1-2.default.pod.cluster.local", T_AAAA), Lookup::NoData);
        assert_eq!(q(&v, "10-244-9-9.default.pod.cluster.local", T_A), Lookup::NxDomain, "no such pod");
        assert_eq!(q(&v, "10-244-1-2.other.pod.cluster.local", T_A), Lookup::NxDomain, "pod is in another namespace");
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[13] = 1;
        v6[15] = 2;
        assert_eq!(rdatas(&q(&v, "fd00--1-2.default.pod.cluster.local", T_AAAA)), vec![(T_AAAA, v6.to_vec())]);
        assert_eq!(q(&v, "fd00--1-3.default.pod.cluster.local", T_AAAA), Lookup::NxDomain);
        assert_eq!(q(&v, "default.pod.cluster.local", T_A), Lookup::NoData);
        let i = zone(PodMode::Insecure);
        assert_eq!(rdatas(&q(&i, "1-2-3-4.other.pod.cluster.local", T_A)), vec![(T_A, vec![1, 2, 3, 4])]);
        assert_eq!(q(&i, "1-2-3.other.pod.cluster.local", T_A), Lookup::NxDomain);
        assert_eq!(q(&i, "1-2-3-4.nosuchns.pod.cluster.local", T_A), Lookup::NxDomain);
        let v6 = rdatas(&q(&i, "fd00--1.other.pod.cluster.local", T_AAAA));
        assert_eq!(v6[0].1, "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec());
        let d = zone(PodMode::Disabled);
        assert_eq!(q(&d, "10-244-1-2.default.pod.cluster.local", T_A), Lookup::NxDomain);
    }

    #[test]
    fn other_cluster_domain() {
        let z = Zone::build(&snapshot(), &ZoneConfig { domain: "corp.example".into(), ..Default::default() }, 1);
        assert!(matches!(q(&z, "kubernetes.default.svc.corp.example", T_A), Lookup::Answer(_)));
        assert_eq!(q(&z, "kubernetes.default.svc.cluster.local", T_A), Lookup::Elsewhere);
    }

    #[test]
    fn names() {
        assert_eq!(wire_name("a.B."), Some(b"\x01a\x01b\x00".to_vec()));
        assert_eq!(wire_name(""), Some(vec![0]));
        assert_eq!(wire_name("a..b"), None);
        assert_eq!(wire_name(&"x".repeat(64)), None);
        assert_eq!(dashed("10.244.1.2".parse().unwrap()), "10-244-1-2");
        assert_eq!(undashed("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(undashed("256-1-1-1"), None);
    }
}

#[cfg(test)]
mod scale {
    use super::*;
    use crate::model::{Endpoint, Pod, Port, Protocol, Service, Slice};

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Memory of the snapshot and the index at 10 000 Services x 10 endpoints (a measurement,
    /// not an assertion: `cargo test -p weft-dns --release -- --ignored --nocapture scale`).
    #[test]
    #[ignore]
    fn memory_at_10k_services() {
        crate::tune_allocator();
        let r0 = rss_kib();
        let mut s = Snapshot::default();
        for i in 0..10_000u32 {
            let ns = format!("ns-{}", i % 100);
            s.add_namespace(&ns);
            let ip: IpAddr = std::net::Ipv4Addr::from(0x0a60_0000 + i).into();
            let http = || vec![Port::new("http", Protocol::Tcp, 80)];
            s.put_service(
                &ns,
                &format!("svc-{i}"),
                Service { kind: SvcKind::ClusterIp(Box::new([ip])), ports: http().into(), publish_not_ready: false },
            );
            let endpoints = (0..10u32).map(|k| Endpoint {
                ip: std::net::Ipv4Addr::from(0x0a80_0000 + i * 10 + k).into(),
                hostname: None,
                ready: true,
            });
            s.put_slice(&ns, &format!("svc-{i}-1"), Slice::new(&format!("svc-{i}"), http(), endpoints));
        }
        let r1 = rss_kib();
        let t = std::time::Instant::now();
        let z = Zone::build(&s, &ZoneConfig::default(), 1);
        let took = t.elapsed();
        // What the builder freed goes back first (as the watch does after every build).
        unsafe { libc::malloc_trim(0) };
        let r2 = rss_kib();
        println!(
            "snapshot {:.1} MiB, zone {:.1} MiB ({} names in {:.1} MiB of records and a {:.1} MiB table, built in {:?})",
            (r1 - r0) as f64 / 1024.0,
            (r2 - r1) as f64 / 1024.0,
            z.len(),
            z.arena.len() as f64 / 1048576.0,
            (z.table.capacity() * 5) as f64 / 1048576.0,
            took
        );
        // A pod behind each endpoint (pod records are verified against them).
        for i in 0..100_000u32 {
            let ip: IpAddr = std::net::Ipv4Addr::from(0x0a80_0000 + i).into();
            let mut uid = [7u8; 16];
            uid[..4].copy_from_slice(&i.to_be_bytes());
            s.put_pod(&Pod { uid, namespace: format!("ns-{}", i / 10 % 100).into(), ips: Box::new([ip]) });
        }
        unsafe { libc::malloc_trim(0) };
        let r3 = rss_kib();
        drop(z);
        let z = Zone::build(&s, &ZoneConfig::default(), 1);
        unsafe { libc::malloc_trim(0) };
        let r4 = rss_kib();
        println!(
            "with 100 000 pods: snapshot +{:.1} MiB, zone +{:.1} MiB ({} names)",
            (r3 - r2) as f64 / 1024.0,
            (r4 as f64 - r3 as f64) / 1024.0,
            z.len()
        );
    }
}
