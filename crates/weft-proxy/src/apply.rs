//! The applier: the difference between what a node has and what the compiler wants, as one
//! nf_tables netlink batch (one atomic transaction), containing only what changed. It never
//! reads the table back (it remembers what it applied); the first sync, or a sync after an
//! error, declares the whole table fresh: table, sets, chains and every element in one batch.

use std::fmt::Write as _;

use anyhow::Result;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use weft_netlink::conntrack::StaleFlow;
use weft_netlink::nft::Batch;

use crate::compile::{Backend, Chains, Desired, Fragment, MASQ_MARK, Patch, PortKey, SharedChain, SvcKey};
use crate::netlink::{Data, ElemOp, Field, proto_num};

pub use crate::netlink::TABLE;

/// The fixed part of the table in nft syntax: what [`crate::netlink`] builds, for reading
/// (diagnostics, tests).
fn base() -> String {
    format!(
        r#"table ip {TABLE} {{
  map services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map nodeports {{ type inet_proto . inet_service : verdict; }}
  map backends-tcp {{ typeof ip daddr . meta l4proto . tcp dport . numgen random mod 2 : ip daddr . tcp dport; }}
  map backends-udp {{ typeof ip daddr . meta l4proto . udp dport . numgen random mod 2 : ip daddr . udp dport; }}
  map backends-sctp {{ typeof ip daddr . meta l4proto . sctp dport . numgen random mod 2 : ip daddr . sctp dport; }}
  map np-backends-tcp {{ typeof meta l4proto . tcp dport . numgen random mod 2 : ip daddr . tcp dport; }}
  map np-backends-udp {{ typeof meta l4proto . udp dport . numgen random mod 2 : ip daddr . udp dport; }}
  map np-backends-sctp {{ typeof meta l4proto . sctp dport . numgen random mod 2 : ip daddr . sctp dport; }}
  set hairpin {{ type ipv4_addr . ipv4_addr; }}
  set no-endpoints {{ type ipv4_addr . inet_proto . inet_service; }}
  set no-endpoint-nodeports {{ type inet_proto . inet_service; }}
  set firewall {{ type ipv4_addr . inet_proto . inet_service; }}
  set firewall-allow {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }}
  chain mark-masq {{ meta mark set meta mark | {MASQ_MARK:#x}; }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @services
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @nodeports
  }}
  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} masquerade
    ip saddr . ip daddr @hairpin masquerade
  }}
  chain reject-chain {{
    ip daddr . meta l4proto . th dport @firewall ip daddr . meta l4proto . th dport . ip saddr != @firewall-allow drop
    ip daddr . meta l4proto . th dport @no-endpoints meta l4proto tcp reject with tcp reset
    ip daddr . meta l4proto . th dport @no-endpoints reject
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @no-endpoint-nodeports meta l4proto tcp reject with tcp reset
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @no-endpoint-nodeports reject
  }}
  chain filter-prerouting {{ type filter hook prerouting priority -110; policy accept; jump reject-chain; }}
  chain filter-output {{ type filter hook output priority -110; policy accept; jump reject-chain; }}
}}
"#,
        !MASQ_MARK
    )
}

/// A change: structure (the table anew, shared chains; none for most changes) and element
/// operations, deletions before additions, all sent as one transaction.
#[derive(Debug, Default)]
pub struct Delta {
    /// The table is declared anew (first sync, or after a failure), replacing one that is there.
    pub fresh: bool,
    /// Shared chains to make (or refill).
    pub chains: Vec<(String, SharedChain)>,
    pub ops: Vec<ElemOp>,
    /// UDP flows to endpoints that went away: their conntrack entries are removed after the change.
    pub stale_udp: Vec<StaleFlow>,
}

fn render_fields(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| match f {
            Field::Ip(ip) => ip.to_string(),
            Field::Proto(p) => match p {
                6 => "tcp".into(),
                17 => "udp".into(),
                132 => "sctp".into(),
                n => n.to_string(),
            },
            Field::Port(p) => p.to_string(),
            Field::Slot(n) => n.to_string(),
            Field::Net(n) => n.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

impl Delta {
    /// Whether the change makes structure (the table, chains), not only elements.
    pub fn has_structure(&self) -> bool {
        self.fresh || !self.chains.is_empty()
    }
    pub fn is_empty(&self) -> bool {
        !self.has_structure() && self.ops.is_empty()
    }
    /// Its structure alone: what is left to try when the whole change was refused.
    fn structure_only(&self) -> Delta {
        Delta { fresh: self.fresh, chains: self.chains.clone(), ..Default::default() }
    }
    /// How big the change is (for logs): objects plus element operations.
    pub fn size(&self) -> usize {
        usize::from(self.fresh) + self.chains.len() + self.ops.len()
    }
    /// The table's structure in nft syntax (diagnostics, tests).
    pub fn structure_text(&self) -> String {
        let mut s = String::new();
        if self.fresh {
            let _ = write!(s, "add table ip {TABLE}\ndelete table ip {TABLE}\n{}", base());
        }
        for (name, chain) in &self.chains {
            // Flushed first so that sending a chain again (after a batch that failed) never
            // doubles its rules.
            let _ = writeln!(s, "add chain ip {TABLE} {name}\nflush chain ip {TABLE} {name}");
            for r in chain.rules() {
                let _ = writeln!(s, "add rule ip {TABLE} {name} {r}");
            }
        }
        s
    }
    /// The whole change in nft syntax (what the netlink batch does, for reading).
    pub fn text(&self) -> String {
        let mut s = self.structure_text();
        let mut i = 0;
        while i < self.ops.len() {
            let (add, set) = (self.ops[i].add, self.ops[i].set);
            let mut els = vec![];
            while i < self.ops.len() && self.ops[i].add == add && self.ops[i].set == set && els.len() < 2000 {
                let op = &self.ops[i];
                let data = match &op.data {
                    Data::None => String::new(),
                    Data::Value(v) => format!(" : {}", render_fields(v)),
                    Data::Goto(c) => format!(" : goto {c}"),
                };
                els.push(format!("{}{data}", render_fields(&op.key)));
                i += 1;
            }
            let _ =
                writeln!(s, "{} element ip {TABLE} {set} {{ {} }}", if add { "add" } else { "delete" }, els.join(", "));
        }
        s
    }
}

fn ip_key(k: &SvcKey) -> Vec<Field> {
    vec![Field::Ip(k.0), Field::Proto(proto_num(&k.1)), Field::Port(k.2)]
}
fn port_key(k: &PortKey) -> Vec<Field> {
    vec![Field::Proto(proto_num(&k.0)), Field::Port(k.1)]
}
/// The endpoint maps are per protocol: nft types a map's port by its protocol.
fn backends_set(proto: &str) -> &'static str {
    match proto {
        "udp" => "backends-udp",
        "sctp" => "backends-sctp",
        _ => "backends-tcp",
    }
}
fn np_backends_set(proto: &str) -> &'static str {
    match proto {
        "udp" => "np-backends-udp",
        "sctp" => "np-backends-sctp",
        _ => "np-backends-tcp",
    }
}

fn backend_data(b: &Backend) -> Data {
    Data::Value(vec![Field::Ip(b.ip), Field::Port(b.port)])
}

/// What takes a node from `old` (None: unknown, start fresh) to `new`. Only Services whose
/// fragment changed are looked at, so the cost follows the change, not the cluster.
pub fn delta(old: Option<&Desired>, new: &Desired) -> Delta {
    let empty = Desired::default();
    let (d, old) = match old {
        Some(o) => (Delta::default(), o),
        None => (Delta { fresh: true, ..Default::default() }, &empty),
    };
    let blank = Fragment::default();
    let mut changed: Vec<(&Fragment, &Fragment)> = vec![];
    for (k, o) in &old.fragments {
        match new.fragments.get(k) {
            Some(n) if Arc::ptr_eq(o, n) || o == n => {}
            Some(n) => changed.push((o, n)),
            None => changed.push((o, &blank)),
        }
    }
    for (k, n) in &new.fragments {
        if !old.fragments.contains_key(k) {
            changed.push((&blank, n));
        }
    }
    let had = |ip: &Ipv4Addr| old.hairpin_counts.get(ip).is_some_and(|c| *c > 0);
    let has = |ip: &Ipv4Addr| new.hairpin_counts.get(ip).is_some_and(|c| *c > 0);
    let chains = new.chains.iter().filter(|(n, _)| !old.chains.contains_key(*n));
    delta_of(d, &changed, had, has, chains)
}

/// What takes a node from `old` to `old` with `patch` in: the same as [`delta`], looking at the
/// patched Services only.
pub fn delta_patch(old: &Desired, patch: &Patch) -> Delta {
    let blank = Fragment::default();
    let changed: Vec<(&Fragment, &Fragment)> = patch
        .fragments
        .iter()
        .map(|(k, n, _)| (old.fragments.get(k).map(|f| &**f).unwrap_or(&blank), n.as_deref().unwrap_or(&blank)))
        .filter(|(o, n)| o != n)
        .collect();
    let had = |ip: &Ipv4Addr| old.hairpin_counts.get(ip).is_some_and(|c| *c > 0);
    let has = |ip: &Ipv4Addr| patch.hairpin_counts.get(ip).map(|c| *c > 0).unwrap_or_else(|| had(ip));
    delta_of(Delta::default(), &changed, had, has, patch.new_chains.iter())
}

/// The operations for pairs of (old, new) fragments.
fn delta_of<'a>(
    mut d: Delta,
    changed: &[(&Fragment, &Fragment)],
    had: impl Fn(&Ipv4Addr) -> bool,
    has: impl Fn(&Ipv4Addr) -> bool,
    new_chains: impl Iterator<Item = (&'a String, &'a SharedChain)>,
) -> Delta {
    let op = |add: bool, set: &'static str, key: Vec<Field>, data: Data| ElemOp { add, set, key, data };
    let be_key = |k: &(SvcKey, u32)| [ip_key(&k.0), vec![Field::Slot(k.1)]].concat();
    let npbe_key = |k: &(PortKey, u32)| [port_key(&k.0), vec![Field::Slot(k.1)]].concat();
    // Entries a changed Service drops or changes, then those it gains: (old, new) pairs per set.
    fn gone<'a, K: PartialEq, V: PartialEq>(o: &'a [(K, V)], n: &'a [(K, V)]) -> impl Iterator<Item = &'a (K, V)> {
        o.iter().filter(move |e| !n.contains(e))
    }
    fn came<'a, K: PartialEq, V: PartialEq>(o: &'a [(K, V)], n: &'a [(K, V)]) -> impl Iterator<Item = &'a (K, V)> {
        n.iter().filter(move |e| !o.contains(e))
    }
    let mut hairpin_touched: BTreeSet<Ipv4Addr> = BTreeSet::new();
    // 1. What goes away: dispatch entries first, then what they led to.
    for (o, n) in changed {
        for (k, _) in gone(&o.services, &n.services) {
            d.ops.push(op(false, "services", ip_key(k), Data::None));
        }
        for (k, _) in gone(&o.nodeports, &n.nodeports) {
            d.ops.push(op(false, "nodeports", port_key(k), Data::None));
        }
    }
    for (o, n) in changed {
        for (k, b) in gone(&o.backends, &n.backends) {
            d.ops.push(op(false, backends_set(&k.0.1), be_key(k), Data::None));
            let (vip, proto, port) = &k.0;
            if proto == "udp" && !n.backends.iter().any(|(_, nb)| nb.ip == b.ip) {
                d.stale_udp.push(StaleFlow { vip: *vip, port: *port, endpoint: Some(b.ip) });
            }
        }
        for (k, _) in gone(&o.np_backends, &n.np_backends) {
            d.ops.push(op(false, np_backends_set(&k.0.0), npbe_key(k), Data::None));
        }
        for k in o.reject.iter().filter(|k| !n.reject.contains(k)) {
            d.ops.push(op(false, "no-endpoints", ip_key(k), Data::None));
            // Endpoints arrived: UDP flows made while there were none are not translated.
            let (vip, proto, port) = k;
            if proto == "udp" {
                d.stale_udp.push(StaleFlow { vip: *vip, port: *port, endpoint: None });
            }
        }
        for k in o.reject_nodeports.iter().filter(|k| !n.reject_nodeports.contains(k)) {
            d.ops.push(op(false, "no-endpoint-nodeports", port_key(k), Data::None));
        }
        hairpin_touched.extend(o.hairpin.symmetric_difference(&n.hairpin));
    }
    for ip in hairpin_touched.iter().filter(|ip| had(ip) && !has(ip)) {
        d.ops.push(op(false, "hairpin", vec![Field::Ip(*ip), Field::Ip(*ip)], Data::None));
    }
    // Source-range guards: a guard goes with its last range, and comes before its first
    // (the ranges are an interval concatenation: each element a range of client addresses).
    let allow_key = |k: &SvcKey, r: &ipnet::Ipv4Net| [ip_key(k), vec![Field::Net(*r)]].concat();
    for (o, n) in changed {
        for (k, r) in o.firewall_allow.iter().filter(|e| !n.firewall_allow.contains(e)) {
            d.ops.push(op(false, "firewall-allow", allow_key(k, r), Data::None));
        }
        for k in o.firewall.iter().filter(|k| !n.firewall.contains(k)) {
            d.ops.push(op(false, "firewall", ip_key(k), Data::None));
        }
    }
    // 2. Shared chains appear as first needed and stay (a handful per endpoint count).
    d.chains.extend(new_chains.map(|(name, c)| (name.clone(), c.clone())));
    // 3. What is new: endpoints before the entries that lead to them.
    for (o, n) in changed {
        for (k, b) in came(&o.backends, &n.backends) {
            d.ops.push(op(true, backends_set(&k.0.1), be_key(k), backend_data(b)));
        }
        for (k, b) in came(&o.np_backends, &n.np_backends) {
            d.ops.push(op(true, np_backends_set(&k.0.0), npbe_key(k), backend_data(b)));
        }
    }
    for (o, n) in changed {
        for (k, v) in came(&o.services, &n.services) {
            d.ops.push(op(true, "services", ip_key(k), Data::Goto(v.clone())));
        }
        for (k, v) in came(&o.nodeports, &n.nodeports) {
            d.ops.push(op(true, "nodeports", port_key(k), Data::Goto(v.clone())));
        }
        for k in n.reject.iter().filter(|k| !o.reject.contains(k)) {
            d.ops.push(op(true, "no-endpoints", ip_key(k), Data::None));
        }
        for k in n.reject_nodeports.iter().filter(|k| !o.reject_nodeports.contains(k)) {
            d.ops.push(op(true, "no-endpoint-nodeports", port_key(k), Data::None));
        }
    }
    for ip in hairpin_touched.iter().filter(|ip| !had(ip) && has(ip)) {
        d.ops.push(op(true, "hairpin", vec![Field::Ip(*ip), Field::Ip(*ip)], Data::None));
    }
    for (o, n) in changed {
        for k in n.firewall.iter().filter(|k| !o.firewall.contains(k)) {
            d.ops.push(op(true, "firewall", ip_key(k), Data::None));
        }
        for (k, r) in n.firewall_allow.iter().filter(|e| !o.firewall_allow.contains(e)) {
            d.ops.push(op(true, "firewall-allow", allow_key(k, r), Data::None));
        }
    }
    d
}

/// The change in nft syntax.
pub fn script(old: Option<&Desired>, new: &Desired) -> String {
    delta(old, new).text()
}

/// Where a change goes.
pub trait Sink {
    fn apply(&self, delta: &Delta) -> Result<()>;
}

/// Checks, changing nothing, that this machine can hold the proxy's table: builds it, with a
/// shared chain of each kind, in a private network namespace that disappears afterwards.
pub fn preflight() -> Result<()> {
    let mut b = Batch::new();
    crate::netlink::add_table(&mut b);
    let cidr = "10.244.0.0/16".parse().expect("a valid network");
    let samples: Chains = [(true, false), (false, true)]
        .into_iter()
        .map(|(affinity, nodeport)| {
            let c = SharedChain {
                masq: crate::compile::Masq::Cluster,
                cluster_cidr: cidr,
                affinity,
                nodeport,
                proto: "tcp".into(),
                endpoints: 2,
            };
            (c.name(), c)
        })
        .collect();
    crate::netlink::add_shared_chains(&mut b, &samples);
    weft_netlink::ns::run_in_fresh(move || b.commit())?.map_err(|e| {
        anyhow::anyhow!(
            "the kernel refuses the service proxy's nftables table (nf_tables, nat, numgen, hash, fib or reject missing?): {e}"
        )
    })
}

/// A sink's error when nothing at all changed in the kernel (the transaction was refused).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct NothingChanged(pub anyhow::Error);

/// Everything through nf_tables netlink, one batch (one transaction) per change: a Service
/// change starts no process and costs the kernel only its elements; a fresh table (the first
/// sync, or a restarted proxy replacing the table it finds) is one transaction too, so no moment
/// shows an empty table and a refusal leaves the old one in force.
pub struct NetlinkSink {
    /// The network namespace to work in (a lab node); `None`: this process's.
    pub netns: Option<std::path::PathBuf>,
}

impl Sink for NetlinkSink {
    fn apply(&self, delta: &Delta) -> Result<()> {
        let mut b = Batch::new();
        if delta.fresh {
            crate::netlink::add_table(&mut b);
        }
        crate::netlink::add_shared_chains(&mut b, delta.chains.iter().map(|(n, c)| (n, c)));
        crate::netlink::add_elements(&mut b, &delta.ops);
        b.commit_in(self.netns.as_deref())
            .map_err(|e| NothingChanged(anyhow::Error::new(e).context("nf_tables netlink batch")))?;
        if !delta.stale_udp.is_empty()
            && let Err(e) = weft_netlink::conntrack::remove(self.netns.as_deref(), &delta.stale_udp)
        {
            tracing::warn!(error = %e, "removing stale UDP conntrack entries");
        }
        Ok(())
    }
}

/// Keeps what was applied and sends only differences. A batch the kernel refuses changes
/// nothing (one transaction), so what was applied stays in force; the change is then retried
/// in halves down to single Services, so one Service the kernel refuses never takes the others
/// with it. Refused Services are kept at their last good state and listed in [`Applier::refused`].
pub struct Applier<S: Sink> {
    sink: S,
    applied: Option<Desired>,
    refused: BTreeMap<(String, String), String>,
}

/// Fragments as a patch carries them: (Service, fragment now, what it was compiled from).
type Items = Vec<crate::compile::PatchedService>;

impl<S: Sink> Applier<S> {
    pub fn new(sink: S) -> Self {
        Applier { sink, applied: None, refused: BTreeMap::new() }
    }
    /// What is in the kernel now, as far as this applier knows.
    pub fn applied(&self) -> Option<&Desired> {
        self.applied.as_ref()
    }
    /// Services whose last change the kernel refused, with its error (they keep their last good
    /// state, and are retried with the next change or sync).
    pub fn refused(&self) -> &BTreeMap<(String, String), String> {
        &self.refused
    }

    /// Applies a patch on top of what was applied; returns the change's size. Needs a programme
    /// applied before (after a failure, [`sync`](Self::sync) a whole one first).
    pub fn sync_patch(&mut self, patch: &Patch) -> Result<usize> {
        let Some(applied) = self.applied.as_ref() else {
            anyhow::bail!("nothing applied yet: a full sync comes first")
        };
        let d = delta_patch(applied, patch);
        let size = d.size();
        let result = if size > 0 { self.sink.apply(&d) } else { Ok(()) };
        match result {
            Ok(()) => {
                if let Some(a) = self.applied.as_mut() {
                    a.apply_patch(patch);
                }
                for (k, _, _) in &patch.fragments {
                    self.refused.remove(k);
                }
                Ok(size)
            }
            Err(e) => {
                self.after_failure(&e, &d, &patch.new_chains)?;
                self.in_parts(patch.fragments.clone(), &patch.new_chains)?;
                Ok(size)
            }
        }
    }

    /// Applies `want`; returns the change's size (objects plus element operations; 0 when
    /// nothing changed).
    pub fn sync(&mut self, want: Desired) -> Result<usize> {
        let d = delta(self.applied.as_ref(), &want);
        if d.is_empty() {
            self.applied = Some(want);
            self.refused.clear();
            return Ok(0);
        }
        let size = d.size();
        match self.sink.apply(&d) {
            Ok(()) => {
                self.applied = Some(want);
                self.refused.clear();
                Ok(size)
            }
            Err(e) => {
                let fresh = self.applied.is_none();
                self.after_failure(&e, &d, &want.chains)?;
                let Some(applied) = self.applied.as_ref() else { return Err(e) };
                if fresh {
                    // The table was made anew and is empty: every Service goes in again.
                    tracing::warn!(error = %format!("{e:#}"), "the kernel refused a whole sync; applying Service by Service");
                }
                let items = changed_items(applied, &want);
                self.in_parts(items, &want.chains)?;
                Ok(size)
            }
        }
    }

    /// After a refused change `d`, finds out what is to blame and what the kernel has. A sink
    /// that changed nothing ([`NothingChanged`], one transaction) gets the change's structure
    /// alone (the table anew, new chains): refused too, the structure is to blame (an error: no
    /// Service is, and splitting would send it again and again), else the Services are looked
    /// at in parts on top of it. A sink that did change something put the structure in.
    fn after_failure(&mut self, e: &anyhow::Error, d: &Delta, chains: &Chains) -> Result<()> {
        if !d.has_structure() {
            return Ok(());
        }
        if e.is::<NothingChanged>() {
            self.sink.apply(&d.structure_only())?;
        }
        let a = self.applied.get_or_insert_with(Desired::default);
        a.chains.extend(chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(())
    }

    /// Applies `items` in halves until each part goes in or is one refused Service. Errors only
    /// when some Service was refused (naming them all).
    fn in_parts(&mut self, items: Items, chains: &crate::compile::Chains) -> Result<()> {
        let mut queue = vec![items];
        while let Some(part) = queue.pop() {
            let Some(applied) = self.applied.as_ref() else { break };
            let patch = part_patch(applied, part, chains);
            let d = delta_patch(applied, &patch);
            let result = if d.is_empty() { Ok(()) } else { self.sink.apply(&d) };
            match result {
                Ok(()) => {
                    for (k, _, _) in &patch.fragments {
                        self.refused.remove(k);
                    }
                    if let Some(a) = self.applied.as_mut() {
                        a.apply_patch(&patch);
                    }
                }
                Err(e) if patch.fragments.len() > 1 => {
                    self.after_failure(&e, &d, chains)?;
                    let mut part = patch.fragments;
                    let rest = part.split_off(part.len() / 2);
                    queue.push(rest);
                    queue.push(part);
                }
                Err(e) => {
                    self.after_failure(&e, &d, chains)?;
                    if let Some((k, _, _)) = patch.fragments.first() {
                        tracing::warn!(service = %format!("{}/{}", k.0, k.1), error = %format!("{e:#}"), "the kernel refused this Service's rules; it keeps its last good state");
                        self.refused.insert(k.clone(), format!("{e:#}"));
                    }
                }
            }
        }
        if self.refused.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = self.refused.keys().map(|(n, s)| format!("{n}/{s}")).collect();
        Err(ServicesRefused(names).into())
    }
}

/// A pass's error when everything else went in: these Services (namespace/name) were refused
/// and keep their last good rules. The proxy is then as synced as it can be (for its health).
#[derive(Debug, thiserror::Error)]
#[error("the kernel refused the rules of {}", .0.join(", "))]
pub struct ServicesRefused(pub Vec<String>);

/// The fragments that differ between `applied` and `want` (or were compiled from other inputs).
fn changed_items(applied: &Desired, want: &Desired) -> Items {
    let mut keys: BTreeSet<&(String, String)> = BTreeSet::new();
    for (k, f) in &applied.fragments {
        if want.fragments.get(k).is_none_or(|n| !Arc::ptr_eq(f, n) && f != n) {
            keys.insert(k);
        }
    }
    for (k, i) in &want.inputs {
        if applied.inputs.get(k) != Some(i) || !applied.fragments.contains_key(k) {
            keys.insert(k);
        }
    }
    keys.extend(want.fragments.keys().filter(|k| !applied.fragments.contains_key(*k)));
    keys.into_iter().map(|k| (k.clone(), want.fragments.get(k).cloned(), want.inputs.get(k).copied())).collect()
}

/// A patch of some Services alone on top of `applied`: the hairpin counts they leave, and every
/// chain they may need (sending a chain again is harmless).
fn part_patch(applied: &Desired, items: Items, chains: &crate::compile::Chains) -> Patch {
    let mut counts: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    let current = |counts: &BTreeMap<Ipv4Addr, u32>, ip: &Ipv4Addr| {
        counts.get(ip).copied().unwrap_or_else(|| applied.hairpin_counts.get(ip).copied().unwrap_or(0))
    };
    for (k, new, _) in &items {
        if let Some(old) = applied.fragments.get(k) {
            for ip in &old.hairpin {
                let c = current(&counts, ip).saturating_sub(1);
                counts.insert(*ip, c);
            }
        }
        for ip in new.iter().flat_map(|f| f.hairpin.iter()) {
            let c = current(&counts, ip) + 1;
            counts.insert(*ip, c);
        }
    }
    let new_chains =
        chains.iter().filter(|(n, _)| !applied.chains.contains_key(*n)).map(|(k, v)| (k.clone(), v.clone()));
    Patch { fragments: items, new_chains: new_chains.collect(), hairpin_counts: counts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{NodeInfo, compile};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn world(n: usize, changed: Option<usize>) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut svcs = vec![];
        let mut slices = vec![];
        for i in 0..n {
            let vip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
            svcs.push(
                serde_json::from_value(json!({"metadata": {"name": format!("s{i}"), "namespace": "default"},
                "spec": {"clusterIP": vip, "ports": [{"port": 80, "protocol": "TCP"}]}}))
                .unwrap(),
            );
            let extra = if changed == Some(i) { 1 } else { 0 };
            let eps: Vec<_> = (0..10 + extra)
                .map(|k| json!({"addresses": [format!("10.244.{}.{}", k, i % 250 + 1)], "conditions": {"ready": true}}))
                .collect();
            slices.push(
                serde_json::from_value(json!({"metadata": {"name": format!("s{i}-x"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": format!("s{i}")}}, "addressType": "IPv4", "endpoints": eps,
                "ports": [{"name": "", "protocol": "TCP", "port": 8080}]}))
                .unwrap(),
            );
        }
        (svcs, slices)
    }

    #[test]
    fn a_one_service_change_sends_only_that_service() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let (s, e) = world(10_000, None);
        let before = compile(&s, &e, &node);
        let full = script(None, &before);
        assert!(full.len() > 1_000_000, "the full sync declares everything");
        let (s, e) = world(10_000, Some(4242));
        let after = compile(&s, &e, &node);
        let delta = script(Some(&before), &after);
        for line in delta.lines() {
            // Its entries and endpoints (VIP 10.96.16.146) and the hairpin entry of its one
            // new endpoint.
            let own = line.contains("10.96.16.146 ") || line.contains("hairpin { 10.244.10.243");
            assert!(own, "a line about another service: {line}");
        }
        // The 11-endpoint chain was made beside the 10-endpoint one: elements only, no structure.
        assert!(delta.contains("goto vip-cluster-random-tcp-11") && !delta.contains("chain"), "{delta}");
        assert!(delta.len() < 2_000, "{} bytes", delta.len());
        assert_eq!(script(Some(&after), &after), "", "nothing changed, nothing sent");
    }

    #[test]
    fn a_patch_of_the_changed_services_equals_a_whole_recompile() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let (s, e) = world(300, None);
        let before = compile(&s, &e, &node);
        // Service 42 gains an endpoint, service 7 goes, service 300 is new; 8 shares 42's slices.
        let (mut s2, mut e2) = world(301, Some(42));
        e2[8].endpoints = e2[42].endpoints.clone();
        s2.remove(7);
        e2.remove(7);
        let after = compile(&s2, &e2, &node);
        let key = |i: usize| ("default".to_string(), format!("s{i}"));
        let find = |i: usize| s2.iter().find(|x| x.metadata.name.as_deref() == Some(&format!("s{i}")));
        let slices_of = |i: usize| -> Vec<&EndpointSlice> {
            e2.iter()
                .filter(|x| {
                    x.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&format!("s{i}"))
                })
                .collect()
        };
        let changed: Vec<crate::compile::Changed> =
            [42, 7, 300, 8].iter().map(|i| (key(*i), find(*i), slices_of(*i))).collect();
        let patch = crate::compile::compile_patch(&before, &changed, &node, &crate::compile::Claims::new(&s2));
        // Every element operation, whatever the order.
        let ops = |d: Delta| -> Vec<String> {
            let mut v: Vec<String> = d
                .text()
                .lines()
                .flat_map(|l| {
                    let (head, rest) = l.split_once('{').unwrap_or((l, ""));
                    let head = head.to_string();
                    rest.trim_end_matches('}')
                        .split(", ")
                        .map(move |e| format!("{head}{}", e.trim()))
                        .collect::<Vec<_>>()
                })
                .collect();
            v.sort();
            v
        };
        let (whole, part) = (ops(delta(Some(&before), &after)), ops(delta_patch(&before, &patch)));
        assert!(whole.len() > 40);
        assert_eq!(part, whole, "the same operations");
        let mut patched = before.clone();
        patched.apply_patch(&patch);
        assert_eq!(patched, after, "the same programme");
        // An unchanged Service in a patch sends nothing.
        let same = crate::compile::compile_patch(
            &after,
            &[(key(1), find(1), slices_of(1))],
            &node,
            &crate::compile::Claims::new(&s2),
        );
        let d = delta_patch(&after, &same);
        assert!(d.is_empty());
    }

    #[test]
    fn a_udp_service_that_gains_endpoints_clears_its_untranslated_flows() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}}))
        .unwrap();
        let slice: EndpointSlice =
            serde_json::from_value(json!({"metadata": {"name": "dns-x", "namespace": "kube-system",
            "labels": {"kubernetes.io/service-name": "dns"}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {"ready": true}}],
            "ports": [{"name": "", "protocol": "UDP", "port": 53}]}))
            .unwrap();
        let empty = compile(std::slice::from_ref(&svc), &[], &node);
        let ready = compile(std::slice::from_ref(&svc), &[slice], &node);
        let d = delta(Some(&empty), &ready);
        let vip = "10.96.0.10".parse().unwrap();
        assert_eq!(d.stale_udp, vec![StaleFlow { vip, port: 53, endpoint: None }]);
        // And the way back: the endpoint's own flows go.
        let d = delta(Some(&ready), &empty);
        assert_eq!(d.stale_udp, vec![StaleFlow { vip, port: 53, endpoint: Some("10.244.0.2".parse().unwrap()) }]);
    }

    #[test]
    fn removing_and_adding_services() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let (s, e) = world(3, None);
        let three = compile(&s, &e, &node);
        let (s2, e2) = world(2, None);
        let two = compile(&s2, &e2, &node);
        let del = script(Some(&three), &two);
        assert!(
            del.contains("delete element ip weft-proxy services")
                && del.contains("delete element ip weft-proxy backends-tcp"),
            "{del}"
        );
        assert!(!del.contains("delete chain"), "no per-Service chains to remove: {del}");
        let add = script(Some(&two), &three);
        assert!(
            add.contains("add element ip weft-proxy backends-tcp")
                && add.contains("add element ip weft-proxy services"),
            "{add}"
        );
        assert!(!add.contains("add chain"), "the shared chain exists already: {add}");
    }

    #[test]
    fn a_hairpin_address_shared_by_two_services_stays_until_both_go() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let (s, e) = world(2, None);
        // Both Services select the same endpoints in `world`'s last octet scheme only if equal: make them so.
        let mut e2 = e.clone();
        e2[1].endpoints = e2[0].endpoints.clone();
        let both = compile(&s, &e2, &node);
        let one = compile(&s[..1], &e2[..1], &node);
        let d = script(Some(&both), &one);
        assert!(!d.contains("hairpin"), "still used by the other Service: {d}");
        let none = compile(&[], &[], &node);
        assert!(script(Some(&one), &none).contains("delete element ip weft-proxy hairpin"));
    }

    /// A kernel that refuses any batch touching one address, as it refuses a duplicate element.
    struct Refusing {
        bad: Ipv4Addr,
        log: std::cell::RefCell<Vec<usize>>,
        fresh_ok: bool,
    }
    impl Sink for Refusing {
        fn apply(&self, d: &Delta) -> Result<()> {
            if !self.fresh_ok && d.fresh {
                return Err(NothingChanged(anyhow::anyhow!("no nf_tables")).into());
            }
            self.log.borrow_mut().push(d.ops.len());
            if d.ops.iter().any(|o| o.key.contains(&Field::Ip(self.bad))) {
                // One transaction: nothing of it went in.
                return Err(NothingChanged(anyhow::anyhow!("File exists (os error 17)")).into());
            }
            Ok(())
        }
    }

    #[test]
    fn a_refused_service_never_takes_the_others_down() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let (s, e) = world(40, None);
        let bad: Ipv4Addr = "10.96.0.17".parse().unwrap();
        let mut a = Applier::new(Refusing { bad, log: Default::default(), fresh_ok: true });
        // A whole sync: every Service but the refused one goes in.
        let err = a.sync(compile(&s, &e, &node)).expect_err("the refusal is reported");
        let refused = err.downcast_ref::<ServicesRefused>().expect("only Services were refused (the proxy is settled)");
        assert_eq!(refused.0, ["default/s17"]);
        let applied = a.applied().expect("the good Services are applied");
        assert_eq!(applied.fragments.len(), 39);
        assert!(!applied.fragments.contains_key(&("default".to_string(), "s17".to_string())));
        assert_eq!(a.refused().keys().map(|k| k.1.as_str()).collect::<Vec<_>>(), ["s17"]);
        // A later change to another Service goes in; the refused one stays out and listed.
        let (s2, e2) = world(40, Some(3));
        let claims = crate::compile::Claims::new(&s2);
        let slices = |i: usize| -> Vec<&EndpointSlice> { vec![&e2[i]] };
        let key = |i: usize| ("default".to_string(), format!("s{i}"));
        let changed: Vec<crate::compile::Changed> =
            [3, 17].iter().map(|i| (key(*i), Some(&s2[*i]), slices(*i))).collect();
        let patch = crate::compile::compile_patch(a.applied().unwrap(), &changed, &node, &claims);
        assert!(a.sync_patch(&patch).is_err());
        let applied = a.applied().unwrap();
        assert_eq!(applied.fragments[&key(3)].backends.len(), 11, "the other change went in");
        assert!(a.refused().contains_key(&key(17)));
        // The refusal goes away (the kernel accepts it now): nothing is listed any more.
        a.sink.bad = "10.255.255.255".parse().unwrap();
        let patch = crate::compile::compile_patch(a.applied().unwrap(), &changed[1..], &node, &claims);
        a.sync_patch(&patch).unwrap();
        assert!(a.refused().is_empty());
        assert_eq!(a.applied().unwrap().fragments.len(), 40);
    }

    #[test]
    fn a_refused_structure_keeps_what_was_applied() {
        let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse().unwrap() };
        let (s, e) = world(3, None);
        let mut a =
            Applier::new(Refusing { bad: "10.255.255.255".parse().unwrap(), log: Default::default(), fresh_ok: false });
        let err = a.sync(compile(&s, &e, &node)).unwrap_err();
        assert!(err.is::<NothingChanged>(), "{err:#}");
        assert!(a.applied().is_none(), "nothing was applied");
        assert!(a.sink.log.borrow().is_empty(), "not retried Service by Service: the structure is to blame");
    }
}
