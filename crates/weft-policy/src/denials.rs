//! Denials made visible. Every policy-set chain ends in a rate-limited NFLOG rule (group
//! [`rules::LOG_GROUP`], the chain's name as the prefix) before its drop; here a thread per node,
//! in the node's network namespace, reads that group ([`weft_netlink::nflog`]) and each packet
//! becomes a [`Denial`]: the node, the direction (from the chain's name), source, destination,
//! protocol and port, the policies behind the chain ([`Published::chain_policies`]) and the pods
//! behind the addresses when they are pods the engine knows. Then:
//!
//! - counters ([`Denials`]): per node and direction, and per policy, rendered in Prometheus'
//!   text format (`weft agent`'s and the lab daemon's `/metrics`);
//! - Events, as Kubernetes' event recorder aggregates them ([`Aggregator`]): denials are grouped
//!   by (node, direction, source, destination, protocol, port) — not the source port, which
//!   changes with every connection — and each group is one core/v1 Event `PolicyDenied`
//!   (Warning, source component `weft-policy`) on the pod whose policies denied it (the
//!   destination for ingress, the source for egress), whose `count` and `lastTimestamp` are
//!   patched as packets come, at most once per group every [`WRITE_EVERY`]. The Event carries the
//!   denial's fields as JSON in the annotation [`ANNOTATION`], which `weft policy denials` reads.
//!
//! What is counted is what the log saw: the log rule is rate-limited per policy set
//! ([`rules::LOG_RATE`]/s, burst [`rules::LOG_BURST`]), so under a flood the counts are lower
//! than the packets dropped (the drop itself is never limited).
//!
//! Memory is bounded: at most [`KEEP`] groups are kept (the least recently seen goes first), a
//! group unseen for [`WINDOW`] is forgotten (a later denial starts a new Event, as the
//! recorder's cache would), the queue between the readers and the writer holds at most
//! [`QUEUE`] packets (more are counted as lost), and the per-policy counters at most
//! [`KEEP`] series. So are the Events: a pod gets at most [`CREATE_BURST`] new ones at once,
//! then one per [`CREATE_EVERY`] (client-go's spam filter bounds events per object the same
//! way), so a port scan does not fill the store.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use weft_netlink::nflog::{self, Logged};

use crate::Published;
use crate::compile::chain_dir;
use crate::model::{Dir, Key};
use crate::rules;

pub const REASON: &str = "PolicyDenied";
pub const COMPONENT: &str = "weft-policy";
/// The Event annotation holding the denial's fields as JSON.
pub const ANNOTATION: &str = "weft.dev/denial";
/// Bytes of each denied packet copied to the log: its IP header and the start of the next.
pub const COPY_RANGE: u32 = 96;
/// The least time between two writes of one group's Event.
pub const WRITE_EVERY: Duration = Duration::from_secs(10);
/// Groups kept in memory.
pub const KEEP: usize = 1024;
/// A group unseen this long is forgotten (client-go aggregates similar events over 10 minutes).
pub const WINDOW: Duration = Duration::from_secs(600);
/// New Events one pod may get at once, then one per [`CREATE_EVERY`] (as client-go's spam
/// filter bounds the events per object): a port scan makes a few dozen Events, not thousands.
/// Denials past it are still counted, and their Event is made when the pod has a token again.
pub const CREATE_BURST: u32 = 25;
pub const CREATE_EVERY: Duration = Duration::from_secs(60);
/// Packets waiting between the readers and the writer.
pub const QUEUE: usize = 4096;

/// What a group of denials shares.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DenialKey {
    pub node: String,
    pub dir: Dir,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The IP protocol number.
    pub protocol: u8,
    /// The destination port (TCP, UDP, SCTP); None for other protocols.
    pub port: Option<u16>,
}

/// One logged packet, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub key: DenialKey,
    pub at: SystemTime,
    pub src_port: Option<u16>,
    /// The policies that selected the pod, None when the chain is not (any more) in force.
    pub policies: Option<Vec<Key>>,
    pub src_pod: Option<Key>,
    pub dst_pod: Option<Key>,
}

/// TCP, UDP, SCTP, ICMP, or the protocol's number.
pub fn proto_name(p: u8) -> String {
    match p {
        nflog::TCP => "TCP".into(),
        nflog::UDP => "UDP".into(),
        nflog::SCTP => "SCTP".into(),
        nflog::ICMP => "ICMP".into(),
        n => format!("proto-{n}"),
    }
}

fn key_text(k: &Key) -> String {
    format!("{}/{}", k.0, k.1)
}

impl Denial {
    /// Reads a logged packet of `node`: None when its prefix is no policy-set chain or its
    /// packet is not IPv4.
    pub fn read(node: &str, logged: &Logged, at: SystemTime, published: &Published) -> Option<Denial> {
        Denial::read_with(
            node,
            &logged.prefix,
            &logged.packet,
            at,
            |chain| published.chain_policies(node, chain),
            |ip| published.pod_at(ip),
        )
    }

    /// [`Denial::read`] with the lookups given.
    pub fn read_with(
        node: &str,
        prefix: &str,
        packet: &[u8],
        at: SystemTime,
        policies_of: impl Fn(&str) -> Option<Vec<Key>>,
        pod_at: impl Fn(Ipv4Addr) -> Option<Key>,
    ) -> Option<Denial> {
        let dir = chain_dir(prefix)?;
        let h = nflog::ipv4(packet)?;
        let ported = matches!(h.protocol, nflog::TCP | nflog::UDP | nflog::SCTP);
        Some(Denial {
            key: DenialKey {
                node: node.to_string(),
                dir,
                src: h.src,
                dst: h.dst,
                protocol: h.protocol,
                port: if ported { h.dst_port } else { None },
            },
            at,
            src_port: if ported { h.src_port } else { None },
            policies: policies_of(prefix),
            src_pod: pod_at(h.src),
            dst_pod: pod_at(h.dst),
        })
    }
}

/// A group of denials and what was written of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub key: DenialKey,
    pub first: SystemTime,
    pub last: SystemTime,
    pub count: u64,
    /// The last packet's.
    pub src_port: Option<u16>,
    pub policies: Option<Vec<Key>>,
    pub src_pod: Option<Key>,
    pub dst_pod: Option<Key>,
    /// The Event's name, once it was created.
    event: Option<String>,
    /// The count the Event last said.
    written: u64,
    /// When a write was last tried.
    tried: Option<SystemTime>,
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// "12s", "3m5s", "2h0m".
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

impl Aggregate {
    /// The pod whose policies denied it: the destination of ingress, the source of egress.
    pub fn involved(&self) -> Option<&Key> {
        match self.key.dir {
            Dir::Ingress => self.dst_pod.as_ref(),
            Dir::Egress => self.src_pod.as_ref(),
        }
    }

    /// The other pod, when the other address is a pod.
    pub fn related(&self) -> Option<&Key> {
        match self.key.dir {
            Dir::Ingress => self.src_pod.as_ref(),
            Dir::Egress => self.dst_pod.as_ref(),
        }
    }

    /// "denied TCP x/a 10.244.1.5 -> x/b 10.244.2.7:80 (ingress of x/b, selected by policies
    /// x/allow-a, x/deny-all); 12 times in 60s".
    pub fn message(&self) -> String {
        let k = &self.key;
        let end = |pod: &Option<Key>, ip: Ipv4Addr| match pod {
            Some(p) => format!("{} {ip}", key_text(p)),
            None => ip.to_string(),
        };
        let port = k.port.map(|p| format!(":{p}")).unwrap_or_default();
        let whose = self.involved().map(key_text).unwrap_or_else(|| {
            match k.dir {
                Dir::Ingress => k.dst,
                Dir::Egress => k.src,
            }
            .to_string()
        });
        let policies = match &self.policies {
            Some(p) if !p.is_empty() => {
                format!("selected by policies {}", p.iter().map(key_text).collect::<Vec<_>>().join(", "))
            }
            _ => "by policies that changed since".into(),
        };
        let times = match self.count {
            1 => "once".to_string(),
            n => format!("{n} times in {}", span(since(self.last, self.first))),
        };
        format!(
            "denied {} {} -> {}{port} ({} of {whose}, {policies}); {times}",
            proto_name(k.protocol),
            end(&self.src_pod, k.src),
            end(&self.dst_pod, k.dst),
            k.dir.as_str(),
        )
    }

    /// The denial's fields, as the Event's [`ANNOTATION`] holds them.
    pub fn record(&self) -> serde_json::Value {
        let k = &self.key;
        json!({
            "node": k.node,
            "direction": k.dir.as_str(),
            "source": k.src.to_string(),
            "sourcePod": self.src_pod.as_ref().map(key_text),
            "destination": k.dst.to_string(),
            "destinationPod": self.dst_pod.as_ref().map(key_text),
            "protocol": proto_name(k.protocol),
            "port": k.port,
            "policies": self.policies.iter().flatten().map(key_text).collect::<Vec<_>>(),
        })
    }

    /// The Event saying it, named `name`.
    pub fn event(&self, name: &str) -> Option<Event> {
        let (ns, pod) = self.involved()?;
        let pod_ref = |(ns, name): &Key| ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            ..Default::default()
        };
        let time = |t: SystemTime| Timestamp::try_from(t).ok().map(Time);
        Some(Event {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.clone()),
                annotations: Some([(ANNOTATION.to_string(), self.record().to_string())].into()),
                ..Default::default()
            },
            involved_object: pod_ref(&(ns.clone(), pod.clone())),
            related: self.related().map(pod_ref),
            reason: Some(REASON.into()),
            type_: Some("Warning".into()),
            message: Some(self.message()),
            source: Some(EventSource { component: Some(COMPONENT.into()), host: Some(self.key.node.clone()) }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.key.node.clone()),
            first_timestamp: time(self.first),
            last_timestamp: time(self.last),
            count: Some(self.count.min(i32::MAX as u64) as i32),
            ..Default::default()
        })
    }
}

/// An Event to write: create it (a new group, or one whose Event went away) or patch it.
#[derive(Clone, Debug)]
pub struct Write {
    pub key: DenialKey,
    pub create: bool,
    pub count: u64,
    pub event: Event,
}

impl Write {
    pub fn namespace(&self) -> &str {
        self.event.metadata.namespace.as_deref().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.event.metadata.name.as_deref().unwrap_or_default()
    }
}

/// The Event name of a new group: the pod's name and a hex stamp, as client-go names events
/// (`<name>.<unix nanoseconds in hex>`), with the group's hash mixed in so two groups of one
/// pod seen in the same instant still differ.
fn event_name(pod: &str, key: &DenialKey, at: SystemTime) -> String {
    let nanos = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let text = format!("{}|{}|{}|{}|{}|{:?}", key.node, key.dir.as_str(), key.src, key.dst, key.protocol, key.port);
    let h = weft_k8s::names::fnv1a(text.as_bytes());
    let pod: String = pod.chars().take(200).collect();
    format!("{pod}.{:x}", nanos ^ (h & 0xffff))
}

/// A pod's tokens `tokens` as of `at`, refilled up to `now`.
fn refill(tokens: f64, at: SystemTime, now: SystemTime) -> f64 {
    (tokens + since(now, at).as_secs_f64() / CREATE_EVERY.as_secs_f64()).min(CREATE_BURST as f64)
}

/// Takes one of `pod`'s Event tokens, if it has one.
fn take_token(tokens: &mut HashMap<Key, (f64, SystemTime)>, pod: &Key, now: SystemTime) -> bool {
    let (t, at) = tokens.get(pod).copied().unwrap_or((CREATE_BURST as f64, now));
    let t = refill(t, at, now);
    if t < 1.0 {
        tokens.insert(pod.clone(), (t, now));
        return false;
    }
    tokens.insert(pod.clone(), (t - 1.0, now));
    true
}

/// Denials grouped for Events, bounded ([`KEEP`] groups, [`WINDOW`]), with the write schedule.
pub struct Aggregator {
    groups: HashMap<DenialKey, Aggregate>,
    keep: usize,
    window: Duration,
    every: Duration,
    /// Per involved pod: the Events it may still get now, as of when.
    tokens: HashMap<Key, (f64, SystemTime)>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new(KEEP, WINDOW, WRITE_EVERY)
    }
}

impl Aggregator {
    pub fn new(keep: usize, window: Duration, every: Duration) -> Aggregator {
        Aggregator { groups: HashMap::new(), keep: keep.max(1), window, every, tokens: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
    pub fn get(&self, key: &DenialKey) -> Option<&Aggregate> {
        self.groups.get(key)
    }

    /// The groups, the most recently seen first.
    pub fn recent(&self) -> Vec<&Aggregate> {
        let mut all: Vec<&Aggregate> = self.groups.values().collect();
        all.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| a.key.cmp(&b.key)));
        all
    }

    /// Adds a denial to its group (a new group when there is none, or it was forgotten).
    pub fn observe(&mut self, d: Denial) {
        if let Some(a) = self.groups.get_mut(&d.key) {
            if since(d.at, a.last) <= self.window {
                a.count += 1;
                a.last = a.last.max(d.at);
                a.src_port = d.src_port;
                a.policies = d.policies.or(a.policies.take());
                a.src_pod = d.src_pod.or(a.src_pod.take());
                a.dst_pod = d.dst_pod.or(a.dst_pod.take());
                return;
            }
            self.groups.remove(&d.key);
        }
        if self.groups.len() >= self.keep {
            self.expire(d.at);
        }
        while self.groups.len() >= self.keep {
            let Some(oldest) = self.groups.values().min_by(|a, b| a.last.cmp(&b.last)).map(|a| a.key.clone()) else {
                break;
            };
            self.groups.remove(&oldest);
        }
        self.groups.insert(
            d.key.clone(),
            Aggregate {
                key: d.key,
                first: d.at,
                last: d.at,
                count: 1,
                src_port: d.src_port,
                policies: d.policies,
                src_pod: d.src_pod,
                dst_pod: d.dst_pod,
                event: None,
                written: 0,
                tried: None,
            },
        );
    }

    /// Forgets the groups unseen for the window, unless their Event is still to say what they
    /// counted.
    pub fn expire(&mut self, now: SystemTime) {
        let window = self.window;
        self.groups.retain(|_, a| since(now, a.last) <= window || (a.written < a.count && a.involved().is_some()));
    }

    /// The Events to write now: every group with something new whose last write was tried at
    /// least [`WRITE_EVERY`] ago (a new group at once). A group whose pod is not known has no
    /// Event (it is still counted).
    pub fn due(&mut self, now: SystemTime) -> Vec<Write> {
        self.expire(now);
        let every = self.every;
        // The oldest groups first, so they get a pod's tokens first.
        let mut keys: Vec<(SystemTime, DenialKey)> = self
            .groups
            .values()
            .filter(|a| a.written < a.count && a.tried.is_none_or(|t| since(now, t) >= every))
            .filter(|a| a.involved().is_some())
            .map(|a| (a.first, a.key.clone()))
            .collect();
        keys.sort();
        let mut out = vec![];
        for (_, key) in keys {
            let Some(a) = self.groups.get_mut(&key) else { continue };
            let Some(pod) = a.involved().cloned() else { continue };
            a.tried = Some(now);
            let (name, create) = match &a.event {
                Some(n) => (n.clone(), false),
                None => (event_name(&pod.1, &a.key, a.first), true),
            };
            if create && !take_token(&mut self.tokens, &pod, now) {
                continue;
            }
            let Some(event) = a.event(&name) else { continue };
            out.push(Write { key, create, count: a.count, event });
        }
        // Full buckets need not be kept.
        self.tokens.retain(|_, (t, at)| refill(*t, *at, now) < CREATE_BURST as f64);
        out
    }

    /// A write went through: the Event (named `name`) now says `count`.
    pub fn written(&mut self, key: &DenialKey, name: &str, count: u64) {
        if let Some(a) = self.groups.get_mut(key) {
            a.event = Some(name.to_string());
            a.written = a.written.max(count);
        }
    }

    /// The group's Event is gone (deleted, expired): the next write creates it again.
    pub fn event_gone(&mut self, key: &DenialKey) {
        if let Some(a) = self.groups.get_mut(key) {
            a.event = None;
            a.written = 0;
            a.tried = None;
        }
    }
}

/// The denial counters, shared between the receivers and whoever serves them.
#[derive(Clone, Default)]
pub struct Denials(Arc<Mutex<Counters>>);

#[derive(Default)]
struct Counters {
    /// (node, direction) -> packets.
    by_node: BTreeMap<(String, &'static str), u64>,
    /// (policy, direction) -> packets.
    by_policy: BTreeMap<(Key, &'static str), u64>,
    /// Per node: packets the receiver could not take (the kernel's buffer or the queue full).
    lost: BTreeMap<String, u64>,
    /// Logged packets that were no denial (not a policy-set chain's prefix, not IPv4).
    unreadable: u64,
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Denials {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a denial for its node and direction and for each of its policies.
    pub fn count(&self, d: &Denial) {
        let mut c = self.lock();
        let dir = d.key.dir.as_str();
        *c.by_node.entry((d.key.node.clone(), dir)).or_default() += 1;
        for p in d.policies.iter().flatten() {
            let k = (p.clone(), dir);
            if c.by_policy.len() < KEEP || c.by_policy.contains_key(&k) {
                *c.by_policy.entry(k).or_default() += 1;
            }
        }
    }

    pub fn lost(&self, node: &str, n: u64) {
        if n > 0 {
            *self.lock().lost.entry(node.to_string()).or_default() += n;
        }
    }

    pub fn unreadable(&self) {
        self.lock().unreadable += 1;
    }

    /// Denied packets seen on `node` in `dir`.
    pub fn denied(&self, node: &str, dir: Dir) -> u64 {
        self.lock().by_node.get(&(node.to_string(), dir.as_str())).copied().unwrap_or(0)
    }

    /// The counters in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let c = self.lock();
        let mut s = String::new();
        s += "# HELP weft_policy_denied_packets_total Packets NetworkPolicy denied and logged (the log is rate-limited per policy set), by node and direction.\n";
        s += "# TYPE weft_policy_denied_packets_total counter\n";
        for ((node, dir), n) in &c.by_node {
            let _ = writeln!(s, "weft_policy_denied_packets_total{{node=\"{}\",direction=\"{dir}\"}} {n}", label(node));
        }
        s += "# HELP weft_policy_denied_packets_by_policy_total Denied packets by a policy selecting the denied pod (a packet counts for each such policy).\n";
        s += "# TYPE weft_policy_denied_packets_by_policy_total counter\n";
        for (((ns, name), dir), n) in &c.by_policy {
            let _ = writeln!(
                s,
                "weft_policy_denied_packets_by_policy_total{{namespace=\"{}\",policy=\"{}\",direction=\"{dir}\"}} {n}",
                label(ns),
                label(name)
            );
        }
        s += "# HELP weft_policy_denial_log_lost_total Logged denials the receiver could not take (buffers full), by node.\n";
        s += "# TYPE weft_policy_denial_log_lost_total counter\n";
        for (node, n) in &c.lost {
            let _ = writeln!(s, "weft_policy_denial_log_lost_total{{node=\"{}\"}} {n}", label(node));
        }
        s += "# HELP weft_policy_denial_log_unreadable_total Logged packets that were not a readable denial.\n";
        s += "# TYPE weft_policy_denial_log_unreadable_total counter\n";
        let _ = writeln!(s, "weft_policy_denial_log_unreadable_total {}", c.unreadable);
        s
    }
}

/// The per-node totals in a `/metrics` text: (node, direction) -> denied packets.
pub fn parse_totals(text: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("weft_policy_denied_packets_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let Ok(n) = value.trim().parse::<u64>() else { continue };
        let get = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_string())
        };
        if let (Some(node), Some(dir)) = (get("node"), get("direction")) {
            out.insert((node, dir), n);
        }
    }
    out
}

/// Starts a thread in `netns` (here when None) reading the log group for `node`: it reads and
/// counts each denial itself (so the counters stay exact however slow the API is) and hands it
/// to the Event writer. Fails when the group cannot be bound (another listener has it).
fn start_reader(
    node: String,
    netns: Option<PathBuf>,
    tx: tokio::sync::mpsc::Sender<Denial>,
    published: Published,
    denials: Denials,
) -> anyhow::Result<()> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    weft_netlink::ns::spawn_in(netns.as_deref(), move || {
        let mut sub = match nflog::Subscriber::bind(rules::LOG_GROUP, COPY_RANGE) {
            Ok(s) => {
                let _ = bound_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = bound_tx.send(Err(e));
                return;
            }
        };
        let (mut overruns, mut errors) = (0u64, 0u64);
        // Until the writer is gone (the process ends).
        while !tx.is_closed() {
            match sub.recv(Duration::from_secs(1)) {
                Ok(packets) => {
                    errors = 0;
                    for p in packets {
                        let Some(d) = Denial::read(&node, &p, SystemTime::now(), &published) else {
                            denials.unreadable();
                            continue;
                        };
                        denials.count(&d);
                        if tx.try_send(d).is_err() {
                            denials.lost(&node, 1);
                        }
                    }
                }
                Err(e) => {
                    if errors % 60 == 0 {
                        tracing::warn!(node, error = %e, "reading the NetworkPolicy denial log");
                    }
                    errors += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            denials.lost(&node, sub.overruns() - overruns);
            overruns = sub.overruns();
        }
    })?;
    bound_rx.recv().map_err(|_| anyhow::anyhow!("the denial reader ended early"))??;
    Ok(())
}

/// How long one Event write may take before it is given up (and tried again later).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes one Event: creates it (or, when the name is taken, patches it) or patches it.
async fn write(client: &kube::Client, w: &Write) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let api: Api<Event> = Api::namespaced(client.clone(), w.namespace());
    let within = |what: &str| kube::Error::Service(format!("{what} took longer than {WRITE_TIMEOUT:?}").into());
    if w.create {
        match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &w.event)).await {
            Err(_) => return Err(within("creating the event")),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {}
            Ok(other) => return other.map(|_| ()),
        }
    }
    match tokio::time::timeout(WRITE_TIMEOUT, api.patch(w.name(), &PatchParams::default(), &Patch::Merge(&w.event)))
        .await
    {
        Err(_) => Err(within("patching the event")),
        Ok(r) => r.map(|_| ()),
    }
}

/// Reads the denial log of every given node (name, network namespace: None for this process's)
/// and publishes what it reads: counts in `denials`, Events through `client`. Runs until the
/// process ends; a node whose log group cannot be bound is reported and left out.
pub async fn run(client: kube::Client, nodes: Vec<(String, Option<PathBuf>)>, published: Published, denials: Denials) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Denial>(QUEUE);
    let mut readers = 0;
    for (node, netns) in nodes {
        match start_reader(node.clone(), netns, tx.clone(), published.clone(), denials.clone()) {
            Ok(()) => readers += 1,
            Err(e) => tracing::warn!(
                node,
                error = %format!("{e:#}"),
                group = rules::LOG_GROUP,
                "NetworkPolicy denials on this node are not recorded"
            ),
        }
    }
    drop(tx);
    if readers == 0 {
        return;
    }
    let mut agg = Aggregator::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some(d) = got else { break };
                agg.observe(d);
            }
            _ = tick.tick() => {
                for w in agg.due(SystemTime::now()) {
                    match write(&client, &w).await {
                        Ok(()) => {
                            if w.create {
                                tracing::info!(node = %w.key.node, "{}", w.event.message.as_deref().unwrap_or_default());
                            }
                            agg.written(&w.key, w.name(), w.count);
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 && !w.create => agg.event_gone(&w.key),
                        Err(e) => tracing::warn!(error = %e, event = %w.name(), "recording a PolicyDenied event"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn pods(ip: Ipv4Addr) -> Option<Key> {
        match ip.octets() {
            [10, 244, 1, 5] => Some(k("x", "a")),
            [10, 244, 2, 7] => Some(k("x", "b")),
            _ => None,
        }
    }

    fn denial(chain: &str, sport: u16, at: SystemTime) -> Denial {
        let policies = |c: &str| (c == chain).then(|| vec![k("x", "allow-a"), k("x", "deny-all")]);
        Denial::read_with("node-2", chain, &tcp([10, 244, 1, 5], sport, [10, 244, 2, 7], 80), at, policies, pods)
            .unwrap()
    }

    fn ingress_chain() -> String {
        crate::compile::chain_name(Dir::Ingress, &[k("x", "deny-all"), k("x", "allow-a")])
    }

    #[test]
    fn a_logged_packet_reads_as_a_denial_with_its_chains_policies_and_pods() {
        let chain = ingress_chain();
        let d = denial(&chain, 43210, t(0));
        assert_eq!(
            d.key,
            DenialKey {
                node: "node-2".into(),
                dir: Dir::Ingress,
                src: Ipv4Addr::new(10, 244, 1, 5),
                dst: Ipv4Addr::new(10, 244, 2, 7),
                protocol: 6,
                port: Some(80),
            }
        );
        assert_eq!(d.src_port, Some(43210));
        assert_eq!(d.policies, Some(vec![k("x", "allow-a"), k("x", "deny-all")]));
        assert_eq!((d.src_pod, d.dst_pod), (Some(k("x", "a")), Some(k("x", "b"))));
        // The direction is the chain's.
        let eg = crate::compile::chain_name(Dir::Egress, &[k("x", "deny-all")]);
        let d = Denial::read_with("n", &eg, &tcp([10, 244, 1, 5], 1, [1, 1, 1, 1], 443), t(0), |_| None, pods).unwrap();
        assert_eq!((d.key.dir, d.policies, d.dst_pod), (Dir::Egress, None, None));
        // Not a policy-set chain, or not IPv4: no denial.
        assert!(Denial::read_with("n", "forward", &tcp([1; 4], 1, [2; 4], 2), t(0), |_| None, pods).is_none());
        assert!(Denial::read_with("n", &chain, &[0x60; 40], t(0), |_| None, pods).is_none());
        // ICMP has no port.
        let mut icmp = tcp([10, 244, 1, 5], 0x0800, [10, 244, 2, 7], 0);
        icmp[9] = 1;
        let d = Denial::read_with("n", &chain, &icmp, t(0), |_| None, pods).unwrap();
        assert_eq!((d.key.protocol, d.key.port, d.src_port), (1, None, None));
    }

    #[test]
    fn the_chain_name_maps_back_to_its_policies_through_published() {
        use crate::compile::{Desired, Local, PolicySet};
        let set = Arc::new(PolicySet::new(Dir::Ingress, vec![k("x", "deny-all"), k("x", "allow-a")]));
        let mut d = Desired { node: "node-2".into(), ..Default::default() };
        d.local.insert(Ipv4Addr::new(10, 244, 2, 7), Local { ingress: Some(set.clone()), egress: None });
        let published = Published::default();
        published.set("node-2", Arc::new(d));
        assert_eq!(published.chain_policies("node-2", &set.name), Some(vec![k("x", "allow-a"), k("x", "deny-all")]));
        assert_eq!(published.chain_policies("node-1", &set.name), None);
        let logged = Logged {
            prefix: set.name.clone(),
            packet: tcp([10, 244, 1, 5], 9, [10, 244, 2, 7], 80),
            ..Default::default()
        };
        let got = Denial::read("node-2", &logged, t(0), &published).unwrap();
        assert_eq!(got.policies, Some(vec![k("x", "allow-a"), k("x", "deny-all")]));
    }

    #[test]
    fn published_pods_follow_the_world() {
        use crate::model::{PodInfo, World};
        let pod = |name: &str, ip: [u8; 4]| PodInfo {
            key: k("x", name),
            ip: ip.into(),
            node: "node-1".into(),
            labels: Default::default(),
            ports: vec![],
        };
        let mut w = World::default();
        w.replace_pods(vec![(k("x", "a"), pod("a", [10, 244, 1, 5]))]);
        let published = Published::default();
        let changes = w.take_changes();
        published.pods_changed(&w, &changes);
        assert_eq!(published.pod_at(Ipv4Addr::new(10, 244, 1, 5)), Some(k("x", "a")));
        w.put_pod(k("x", "b"), Some(pod("b", [10, 244, 2, 7])));
        w.remove_pod(&k("x", "a"));
        let changes = w.take_changes();
        published.pods_changed(&w, &changes);
        assert_eq!(published.pod_at(Ipv4Addr::new(10, 244, 1, 5)), None);
        assert_eq!(published.pod_at(Ipv4Addr::new(10, 244, 2, 7)), Some(k("x", "b")));
    }

    #[test]
    fn the_message_names_the_pods_the_port_the_policies_and_the_count() {
        let chain = ingress_chain();
        let mut agg = Aggregator::default();
        agg.observe(denial(&chain, 43210, t(0)));
        let a = agg.recent()[0].clone();
        assert_eq!(
            a.message(),
            "denied TCP x/a 10.244.1.5 -> x/b 10.244.2.7:80 (ingress of x/b, selected by policies x/allow-a, x/deny-all); once"
        );
        for i in 1..12 {
            agg.observe(denial(&chain, 43210 + i as u16, t(5 * i)));
        }
        let a = agg.recent()[0].clone();
        assert_eq!(a.count, 12);
        assert!(a.message().ends_with("; 12 times in 55s"), "{}", a.message());
        assert_eq!(a.src_port, Some(43221), "the last packet's");
        // An egress denial to an address that is no pod.
        let eg = crate::compile::chain_name(Dir::Egress, &[k("x", "deny-all")]);
        let mut icmp = tcp([10, 244, 1, 5], 0x0800, [8, 8, 8, 8], 0);
        icmp[9] = 1;
        let d = Denial::read_with("n", &eg, &icmp, t(0), |_| Some(vec![k("x", "deny-all")]), pods).unwrap();
        agg.observe(d.clone());
        let a = agg.get(&d.key).unwrap();
        assert_eq!(
            a.message(),
            "denied ICMP x/a 10.244.1.5 -> 8.8.8.8 (egress of x/a, selected by policies x/deny-all); once"
        );
        assert_eq!(a.involved(), Some(&k("x", "a")));
        assert_eq!(a.related(), None);
    }

    #[test]
    fn denials_aggregate_into_one_event_written_at_most_every_ten_seconds() {
        let chain = ingress_chain();
        let mut agg = Aggregator::default();
        agg.observe(denial(&chain, 1, t(0)));
        // A new group is written at once, as a create, on the destination pod.
        let w = agg.due(t(0));
        assert_eq!(w.len(), 1);
        assert!(w[0].create);
        let e = &w[0].event;
        assert_eq!(e.metadata.namespace.as_deref(), Some("x"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("b."));
        assert_eq!(e.involved_object.name.as_deref(), Some("b"));
        assert_eq!(e.related.as_ref().and_then(|r| r.name.as_deref()), Some("a"));
        assert_eq!((e.reason.as_deref(), e.type_.as_deref(), e.count), (Some(REASON), Some("Warning"), Some(1)));
        assert_eq!(e.source.as_ref().and_then(|s| s.component.as_deref()), Some(COMPONENT));
        let rec: serde_json::Value =
            serde_json::from_str(&e.metadata.annotations.as_ref().unwrap()[ANNOTATION]).unwrap();
        assert_eq!(rec["sourcePod"], "x/a");
        assert_eq!(rec["port"], 80);
        assert_eq!(rec["policies"], json!(["x/allow-a", "x/deny-all"]));
        let name = w[0].name().to_string();
        agg.written(&w[0].key, &name, w[0].count);
        // More packets: nothing before ten seconds after the last write, then one patch.
        for s in 1..=9 {
            agg.observe(denial(&chain, 1 + s as u16, t(s)));
            assert!(agg.due(t(s)).is_empty(), "at {s}s");
        }
        let w = agg.due(t(10));
        assert_eq!(w.len(), 1);
        assert!(!w[0].create);
        assert_eq!(w[0].name(), name, "the same Event");
        assert_eq!(w[0].event.count, Some(10));
        assert_eq!(w[0].event.last_timestamp, Some(Time(Timestamp::try_from(t(9)).unwrap())));
        assert_eq!(w[0].event.first_timestamp, Some(Time(Timestamp::try_from(t(0)).unwrap())));
        agg.written(&w[0].key, &name, 10);
        // Nothing new: nothing to write.
        assert!(agg.due(t(30)).is_empty());
        // A failed write is tried again ten seconds later, not at every tick.
        agg.observe(denial(&chain, 99, t(31)));
        assert_eq!(agg.due(t(31)).len(), 1);
        assert!(agg.due(t(32)).is_empty());
        assert_eq!(agg.due(t(41)).len(), 1);
        // The Event went away: the next write creates one again, with the whole count.
        agg.event_gone(&w[0].key);
        let again = agg.due(t(42));
        assert!(again[0].create);
        assert_eq!(again[0].event.count, Some(11));
        // A denial whose pod is not known is counted but has no Event.
        let mut unknown = denial(&chain, 1, t(43));
        unknown.dst_pod = None;
        unknown.key.dst = Ipv4Addr::new(10, 244, 9, 9);
        agg.observe(unknown);
        assert!(agg.due(t(60)).iter().all(|w| w.key.dst != Ipv4Addr::new(10, 244, 9, 9)));
    }

    #[test]
    fn a_pod_gets_a_burst_of_new_events_then_one_a_minute() {
        let chain = ingress_chain();
        let mut agg = Aggregator::default();
        // A port scan of x/b: 100 groups.
        for port in 0..100u16 {
            let mut d = denial(&chain, 1, t(0));
            d.key.port = Some(port);
            agg.observe(d);
        }
        let w = agg.due(t(0));
        assert_eq!(w.len(), CREATE_BURST as usize);
        assert!(w.iter().all(|w| w.create));
        for w in &w {
            agg.written(&w.key, w.name(), w.count);
        }
        // Ten seconds on: nothing new for the pod (a token a minute), the scan still counted.
        assert!(agg.due(t(10)).is_empty());
        assert_eq!(agg.len(), 100);
        // A minute after the burst: one more.
        assert_eq!(agg.due(t(61)).len(), 1);
        // Updates of Events made are not limited by it.
        let first = w[0].key.clone();
        let mut again = denial(&chain, 2, t(62));
        again.key = first.clone();
        agg.observe(again);
        let w = agg.due(t(75));
        assert_eq!(w.iter().filter(|w| !w.create).count(), 1);
        assert_eq!(w.iter().find(|w| !w.create).unwrap().key, first);
    }

    #[test]
    fn memory_is_bounded_by_groups_and_by_the_window() {
        let chain = ingress_chain();
        let mut agg = Aggregator::new(8, Duration::from_secs(60), WRITE_EVERY);
        for i in 0..100u16 {
            let mut d = denial(&chain, 1, t(i as u64));
            d.key.port = Some(i);
            agg.observe(d);
            assert!(agg.len() <= 8);
        }
        // The most recent are kept.
        let ports: Vec<u16> = agg.recent().iter().filter_map(|a| a.key.port).collect();
        assert_eq!(ports, (92..100).rev().collect::<Vec<_>>());
        // Written groups unseen for the window are forgotten; unwritten ones wait for their write.
        for w in agg.due(t(100)) {
            let name = w.name().to_string();
            if w.key.port != Some(99) {
                agg.written(&w.key, &name, w.count);
            }
        }
        agg.expire(t(100 + 61));
        assert_eq!(agg.len(), 1);
        // A group seen again after the window starts over (a new Event).
        let mut d = denial(&chain, 1, t(400));
        d.key.port = Some(99);
        agg.observe(d.clone());
        let a = agg.get(&d.key).unwrap();
        assert_eq!((a.count, a.first), (1, t(400)));
    }

    #[test]
    fn counters_render_as_prometheus_text_and_read_back() {
        let chain = ingress_chain();
        let c = Denials::default();
        for _ in 0..3 {
            c.count(&denial(&chain, 1, t(0)));
        }
        let mut other = denial(&chain, 1, t(0));
        other.key.node = "we\"ird".into();
        other.key.dir = Dir::Egress;
        c.count(&other);
        c.lost("node-2", 2);
        c.unreadable();
        assert_eq!(c.denied("node-2", Dir::Ingress), 3);
        let text = c.render();
        assert!(text.contains("weft_policy_denied_packets_total{node=\"node-2\",direction=\"ingress\"} 3\n"), "{text}");
        assert!(
            text.contains(
                "weft_policy_denied_packets_by_policy_total{namespace=\"x\",policy=\"deny-all\",direction=\"ingress\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("weft_policy_denied_packets_total{node=\"we\\\"ird\",direction=\"egress\"} 1\n"));
        assert!(text.contains("weft_policy_denial_log_lost_total{node=\"node-2\"} 2\n"));
        assert!(text.contains("weft_policy_denial_log_unreadable_total 1\n"));
        let totals = parse_totals(&text);
        assert_eq!(totals.get(&("node-2".to_string(), "ingress".to_string())), Some(&3));
        // Every line is a comment or `name{labels} value` / `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.rsplit_once(' ').is_some_and(|(_, v)| v.parse::<u64>().is_ok()), "{l}");
        }
    }
}
