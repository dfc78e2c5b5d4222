//! The applier: what takes a node from what it has to what the compiler wants, as ONE
//! nf_tables netlink batch (one atomic transaction) holding only the differences. It never
//! reads the table back: it remembers what it applied. The first sync, and the first after a
//! refused one, replaces the whole table in one transaction (a restarted engine finds its old
//! table serving traffic and swaps it, so no moment shows an empty or half table); a refused
//! transaction changed nothing, so the last good state stays in force meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use weft_netlink::nft::Batch;

use crate::compile::{Contents, Desired, Frag, Line, SetKind};
use crate::model::{Dir, Key};
use crate::rules::{self, Elements, FAMILY, LOCAL_PODS, POD_CIDR, TABLE};

/// One step of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The table anew, replacing one that is there: its global sets, maps and forward chain.
    Table,
    AddSet(String, SetKind),
    DeleteSet(String),
    Add(String, Elements),
    Delete(String, Elements),
    /// A policy-set chain, made if missing and filled anew.
    Chain {
        name: String,
        dir: Dir,
        lines: Vec<Line>,
    },
    /// A policy-set chain no pod uses any more.
    DeleteChain(String),
}

/// A change, in the order it is sent: map entries and elements that go, sets that come with
/// their elements, elements that come, chains (re)filled, map entries that come, chains and
/// sets that go (nothing is deleted while something refers to it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub ops: Vec<Op>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Whether it replaces the whole table.
    pub fn is_fresh(&self) -> bool {
        self.ops.first() == Some(&Op::Table)
    }
    /// How big it is (for logs): objects plus elements.
    pub fn size(&self) -> usize {
        self.ops
            .iter()
            .map(|o| match o {
                Op::Add(_, e) | Op::Delete(_, e) => e.len(),
                Op::Chain { lines, .. } => 1 + lines.len(),
                _ => 1,
            })
            .sum()
    }

    /// The batch that makes it.
    pub fn batch(&self) -> Batch {
        let mut b = Batch::new();
        for op in &self.ops {
            match op {
                Op::Table => rules::add_table(&mut b),
                Op::AddSet(name, kind) => b.add_set(FAMILY, TABLE, &rules::set_decl(name, *kind)),
                Op::DeleteSet(name) => b.delete_set(FAMILY, TABLE, name),
                Op::Add(set, e) => e.encode(&mut b, set, true),
                Op::Delete(set, e) => e.encode(&mut b, set, false),
                Op::Chain { name, dir, lines } => rules::fill_chain(&mut b, name, *dir, lines),
                Op::DeleteChain(name) => {
                    b.flush_chain(FAMILY, TABLE, name);
                    b.delete_chain(FAMILY, TABLE, name);
                }
            }
        }
        b
    }

    /// The same change in nft syntax (for reading; `nft -f` of it makes the same table).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let t = format!("ip {TABLE}");
        for op in &self.ops {
            let _ = match op {
                Op::Table => write!(s, "add table {t}\ndelete table {t}\n{}", rules::base_text()),
                Op::AddSet(name, kind) => {
                    writeln!(s, "add {}", rules::add_set_text(name, *kind).replacen("set ", &format!("set {t} "), 1))
                }
                Op::DeleteSet(name) => writeln!(s, "delete set {t} {name}"),
                Op::Add(set, e) => writeln!(s, "add element {t} {set} {{ {} }}", e.text()),
                Op::Delete(set, e) => writeln!(s, "delete element {t} {set} {{ {} }}", e.text()),
                Op::Chain { name, dir, lines } => {
                    let _ = writeln!(s, "add chain {t} {name}\nflush chain {t} {name}");
                    for l in lines {
                        let _ = writeln!(s, "add rule {t} {name} {}", rules::line_text(*dir, l));
                    }
                    rules::log_drop_text(name).iter().try_for_each(|r| writeln!(s, "add rule {t} {name} {r}"))
                }
                Op::DeleteChain(name) => writeln!(s, "flush chain {t} {name}\ndelete chain {t} {name}"),
            };
        }
        s
    }
}

/// A set's contents as owned elements (what a diff works on).
fn owned(c: &Contents<'_>) -> Elements {
    match c {
        Contents::Addrs(s) => Elements::Addrs(s.iter().copied().collect()),
        Contents::Ranges(r) => Elements::Ranges(r.to_vec()),
        Contents::Ports(r) => Elements::Ports(r.to_vec()),
        Contents::Named(s) => Elements::Named(s.iter().copied().collect()),
    }
}

/// The elements of `a` that `b` lacks.
fn minus(a: &Contents<'_>, b: &Contents<'_>) -> Elements {
    match (a, b) {
        (Contents::Addrs(a), Contents::Addrs(b)) => Elements::Addrs(a.difference(b).copied().collect()),
        (Contents::Named(a), Contents::Named(b)) => Elements::Named(a.difference(b).copied().collect()),
        (Contents::Ranges(a), Contents::Ranges(b)) => {
            let b: BTreeSet<_> = b.iter().collect();
            Elements::Ranges(a.iter().filter(|r| !b.contains(r)).copied().collect())
        }
        (Contents::Ports(a), Contents::Ports(b)) => {
            let b: BTreeSet<_> = b.iter().collect();
            Elements::Ports(a.iter().filter(|r| !b.contains(r)).copied().collect())
        }
        // A set keeps its kind (the kind is part of its name).
        (a, _) => owned(a),
    }
}

fn cidr_ranges(d: &Desired) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut v: Vec<(Ipv4Addr, Ipv4Addr)> = d.pod_cidrs.iter().map(|c| (c.network(), c.broadcast())).collect();
    v.sort();
    // Overlapping ranges would be refused; a node's ranges do not overlap, but be safe.
    let mut out: Vec<(Ipv4Addr, Ipv4Addr)> = vec![];
    for (a, z) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(z),
            _ => out.push((a, z)),
        }
    }
    out
}

/// What takes a node from `old` (None: unknown, start fresh) to `new`. Fragments that are the
/// same `Arc` are skipped without a look, so the cost follows the change.
pub fn delta(old: Option<&Desired>, new: &Desired) -> Delta {
    let empty = Desired::default();
    let mut ops = vec![];
    let old = match old {
        Some(o) => o,
        None => {
            ops.push(Op::Table);
            &empty
        }
    };
    let (old_chains, new_chains) = (old.chains(), new.chains());
    let chain_of =
        |d: &Desired, ip: &Ipv4Addr, dir: Dir| d.local.get(ip).and_then(|l| l.get(dir)).map(|s| s.name.clone());
    let push = |ops: &mut Vec<Op>, add: bool, set: &str, e: Elements| {
        if !e.is_empty() {
            ops.push(if add { Op::Add(set.into(), e) } else { Op::Delete(set.into(), e) });
        }
    };
    // 1. Map entries that go or change: a chain loses its users before it goes.
    for dir in [Dir::Ingress, Dir::Egress] {
        let gone: Vec<(Ipv4Addr, String)> = old
            .local
            .iter()
            .filter_map(|(ip, l)| {
                let was = l.get(dir)?.name.clone();
                (chain_of(new, ip, dir).as_ref() != Some(&was)).then_some((*ip, was))
            })
            .collect();
        push(&mut ops, false, rules::map_of(dir), Elements::Jumps(gone));
    }
    let left: Vec<Ipv4Addr> = old.local.keys().filter(|ip| !new.local.contains_key(ip)).copied().collect();
    push(&mut ops, false, LOCAL_PODS, Elements::Addrs(left));
    let (old_cidrs, new_cidrs) = (cidr_ranges(old), cidr_ranges(new));
    push(&mut ops, false, POD_CIDR, minus(&Contents::Ranges(&old_cidrs), &Contents::Ranges(&new_cidrs)));

    // 2. Fragments: elements that go, sets that come, elements that come.
    let mut changed: Vec<(&Key, Option<&Frag>, Option<&Frag>)> = vec![];
    for (k, o) in &old.policies {
        match new.policies.get(k) {
            Some(n) if Arc::ptr_eq(o, n) => {}
            n => changed.push((k, Some(o), n.map(|n| &**n))),
        }
    }
    for (k, n) in &new.policies {
        if !old.policies.contains_key(k) {
            changed.push((k, None, Some(n)));
        }
    }
    let mut sets_gone: Vec<String> = vec![];
    let mut adds: Vec<Op> = vec![];
    let mut lines_changed: BTreeSet<(&Key, Dir)> = BTreeSet::new();
    for (k, o, n) in &changed {
        let old_sets: BTreeMap<String, Contents<'_>> = o.map(|f| f.sets().into_iter().collect()).unwrap_or_default();
        let new_sets: BTreeMap<String, Contents<'_>> = n.map(|f| f.sets().into_iter().collect()).unwrap_or_default();
        for (name, oc) in &old_sets {
            match new_sets.get(name) {
                Some(nc) => {
                    push(&mut ops, false, name, minus(oc, nc));
                    push(&mut adds, true, name, minus(nc, oc));
                }
                None => sets_gone.push(name.clone()),
            }
        }
        for (name, nc) in &new_sets {
            if !old_sets.contains_key(name) {
                ops.push(Op::AddSet(name.clone(), nc.kind()));
                push(&mut adds, true, name, owned(nc));
            }
        }
        for dir in [Dir::Ingress, Dir::Egress] {
            if o.map(|f| f.lines(dir)) != n.map(|f| f.lines(dir)) {
                lines_changed.insert((k, dir));
            }
        }
    }
    ops.extend(adds);
    let came: Vec<Ipv4Addr> = new.local.keys().filter(|ip| !old.local.contains_key(ip)).copied().collect();
    push(&mut ops, true, LOCAL_PODS, Elements::Addrs(came));
    push(&mut ops, true, POD_CIDR, minus(&Contents::Ranges(&new_cidrs), &Contents::Ranges(&old_cidrs)));

    // 3. Chains that are new, or whose policies' rules changed.
    for (name, set) in &new_chains {
        let rewrite =
            !old_chains.contains_key(name) || set.policies.iter().any(|k| lines_changed.contains(&(k, set.dir)));
        if rewrite {
            ops.push(Op::Chain { name: name.clone(), dir: set.dir, lines: new.chain_lines(set) });
        }
    }
    // 4. Map entries that come.
    for dir in [Dir::Ingress, Dir::Egress] {
        let came: Vec<(Ipv4Addr, String)> = new
            .local
            .iter()
            .filter_map(|(ip, l)| {
                let now = l.get(dir)?.name.clone();
                (chain_of(old, ip, dir).as_ref() != Some(&now)).then_some((*ip, now))
            })
            .collect();
        push(&mut ops, true, rules::map_of(dir), Elements::Jumps(came));
    }
    // 5. What nothing refers to any more.
    for name in old_chains.keys().filter(|n| !new_chains.contains_key(*n)) {
        ops.push(Op::DeleteChain(name.clone()));
    }
    ops.extend(sets_gone.into_iter().map(Op::DeleteSet));
    Delta { ops }
}

/// Where a change goes.
pub trait Sink {
    fn apply(&self, delta: &Delta) -> Result<()>;
}

/// Through nf_tables netlink: one batch, one transaction per change, in a network namespace
/// (a lab node) or this process's.
pub struct NetlinkSink {
    pub netns: Option<PathBuf>,
}

impl Sink for NetlinkSink {
    fn apply(&self, delta: &Delta) -> Result<()> {
        delta
            .batch()
            .commit_in(self.netns.as_deref())
            .map_err(|e| anyhow::Error::new(e).context("nf_tables netlink batch"))
    }
}

/// Checks, changing nothing here, that this kernel takes the engine's table: builds it with a
/// policy-set chain of every kind of rule in a private network namespace that disappears.
pub fn preflight() -> Result<()> {
    let mut world = crate::model::World::default();
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "preflight", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                "ports": [{"port": 80, "endPort": 90}, {"port": "http"}]}],
            "egress": [{"ports": [{"port": "http"}]}]}}))?;
    world.put_policy(crate::model::Policy::from_object(&np));
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"nodeName": "n", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": "10.244.0.2"}}))?;
    world.put_pod(("default".into(), "p".into()), crate::model::PodInfo::from_object(&pod));
    let node = crate::compile::NodeInfo { name: "n".into(), pod_cidrs: vec!["10.244.0.0/24".parse()?] };
    let b = delta(None, &crate::compile::compile(&world, &node)).batch();
    weft_netlink::ns::run_in_fresh(move || b.commit())?.map_err(|e| {
        anyhow::anyhow!(
            "the kernel refuses the NetworkPolicy table (nf_tables, ct, limit, log or interval sets missing?): {e}"
        )
    })
}

/// Keeps what was applied and sends only differences. A refused batch changed nothing (one
/// transaction): the last good state stays in force, and the next sync replaces the whole
/// table (in case the kernel's state is not what this applier believes).
pub struct Applier<S: Sink> {
    sink: S,
    applied: Option<Desired>,
    /// The last sync was refused: the next one starts fresh.
    stale: bool,
}

impl<S: Sink> Applier<S> {
    pub fn new(sink: S) -> Self {
        Applier { sink, applied: None, stale: false }
    }
    /// What is in the kernel now, as far as this applier knows.
    pub fn applied(&self) -> Option<&Desired> {
        self.applied.as_ref()
    }
    pub fn sink(&self) -> &S {
        &self.sink
    }
    /// Whether the next sync must send something even if nothing changed (nothing applied yet,
    /// or the last sync was refused).
    pub fn needs_sync(&self) -> bool {
        self.stale || self.applied.is_none()
    }
    /// Forgets what was applied: the next sync replaces the whole table (after the table was
    /// found missing, or changed by someone else).
    pub fn forget(&mut self) {
        self.stale = true;
    }

    /// Applies `want`; returns the change's size (0: nothing to do).
    pub fn sync(&mut self, want: Desired) -> Result<usize> {
        let base = if self.stale { None } else { self.applied.as_ref() };
        let d = delta(base, &want);
        if d.is_empty() {
            self.applied = Some(want);
            return Ok(0);
        }
        match self.sink.apply(&d) {
            Ok(()) => {
                self.applied = Some(want);
                self.stale = false;
                Ok(d.size())
            }
            Err(e) => {
                self.stale = true;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde_json::json;

    use super::*;
    use crate::compile::{NodeInfo, compile, recompile};
    use crate::model::{PodInfo, Policy, World};

    fn node() -> NodeInfo {
        NodeInfo { name: "n1".into(), pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()] }
    }

    /// `policies` policies in namespaces ns0..ns9, each selecting `app=a<i>` and allowing
    /// ingress from `app=c<i>` on TCP 80; `pods` pods over those namespaces (every other one on
    /// n1), labelled so that each policy selects and admits a few.
    fn world(policies: usize, pods: usize) -> World {
        let mut w = World::default();
        for n in 0..10 {
            w.put_namespace(format!("ns{n}"), [("kubernetes.io/metadata.name".to_string(), format!("ns{n}"))].into());
        }
        for i in 0..policies {
            w.put_policy(policy(i, 80));
        }
        for i in 0..pods {
            let (ns, app) = (
                format!("ns{}", i % 10),
                if i % 3 == 0 { format!("a{}", i % policies) } else { format!("c{}", i % policies) },
            );
            let ip = Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8);
            w.put_pod(
                (ns.clone(), format!("pod{i}")),
                Some(pod_info(&ns, &format!("pod{i}"), &app, if i % 2 == 0 { "n1" } else { "n2" }, ip)),
            );
        }
        w.take_changes();
        w
    }

    fn policy(i: usize, port: u16) -> Policy {
        Policy::from_object(&serde_json::from_value(json!({"metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 10)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{i}")}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("c{i}")}}}], "ports": [{"port": port}]}]}})).unwrap())
    }

    fn pod_info(ns: &str, name: &str, app: &str, node: &str, ip: Ipv4Addr) -> PodInfo {
        PodInfo {
            key: (ns.into(), name.into()),
            ip,
            node: node.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: vec![],
        }
    }

    fn sets_touched(d: &Delta) -> BTreeSet<String> {
        d.ops
            .iter()
            .filter_map(|o| match o {
                Op::Add(s, _) | Op::Delete(s, _) | Op::DeleteSet(s) | Op::AddSet(s, _) => Some(s.clone()),
                Op::Chain { name, .. } | Op::DeleteChain(name) => Some(name.clone()),
                Op::Table => None,
            })
            .collect()
    }

    #[test]
    fn a_one_policy_change_sends_only_that_policy_and_its_chains() {
        let mut w = world(1000, 10_000);
        let before = compile(&w, &node());
        assert!(delta(None, &before).size() > 5_000, "a fresh table declares everything");
        w.put_policy(policy(42, 8080));
        let ch = w.take_changes();
        let after = recompile(Some(&before), &w, &node(), &ch);
        let d = delta(Some(&before), &after);
        let id = crate::compile::policy_id(&("ns2".into(), "p42".into()));
        for name in sets_touched(&d) {
            let own = name.starts_with(&id)
                || before.chain_policies(&name).is_some_and(|p| p.contains(&("ns2".into(), "p42".into())));
            assert!(own, "{name} is not p42's: {}", d.text());
        }
        // Its port set changes by one element each way, its chains are refilled; no map entry moves.
        assert!(d.text().contains("delete element ip weft-policy ") && d.text().contains("tcp . 8080"), "{}", d.text());
        assert!(!d.text().contains("@ingress") && !d.ops.iter().any(|o| matches!(o, Op::Add(s, _) if s == "ingress")));
        assert!(d.size() < 20, "{} operations: {}", d.size(), d.text());
        assert!(delta(Some(&after), &after).is_empty(), "nothing changed, nothing sent");
    }

    #[test]
    fn pod_churn_is_elements_only() {
        let mut w = world(100, 1000);
        let before = compile(&w, &node());
        // A pod selected by p6 comes to n1 (where p6 already selects pod6), one it admits to n2,
        // and a pod of n1 goes.
        w.put_pod(
            ("ns6".into(), "new-a".into()),
            Some(pod_info("ns6", "new-a", "a6", "n1", "10.244.200.1".parse().unwrap())),
        );
        w.put_pod(
            ("ns6".into(), "new-c".into()),
            Some(pod_info("ns6", "new-c", "c6", "n2", "10.244.200.2".parse().unwrap())),
        );
        w.remove_pod(&("ns4".into(), "pod4".into()));
        let ch = w.take_changes();
        let after = recompile(Some(&before), &w, &node(), &ch);
        let d = delta(Some(&before), &after);
        assert!(
            d.ops.iter().all(|o| matches!(o, Op::Add(..) | Op::Delete(..))),
            "no structure for pods that share existing policy sets: {}",
            d.text()
        );
        let text = d.text();
        assert!(text.contains("add element ip weft-policy local-pods { 10.244.200.1 }"), "{text}");
        assert!(text.contains("add element ip weft-policy ingress { 10.244.200.1 : jump in-"), "{text}");
        assert!(text.contains("-i0-pods { 10.244.200.2 }"), "{text}");
        assert!(text.contains("delete element ip weft-policy local-pods { 10.244.0.5 }"), "{text}");
    }

    #[test]
    fn nothing_is_deleted_while_something_refers_to_it() {
        let mut w = world(3, 30);
        w.put_pod(
            ("ns1".into(), "sel".into()),
            Some(pod_info("ns1", "sel", "a1", "n1", "10.244.100.1".parse().unwrap())),
        );
        w.take_changes();
        let before = compile(&w, &node());
        // p1 goes: its pods' map entries, then its chain, then its sets.
        w.remove_policy(&("ns1".into(), "p1".into()));
        let ch = w.take_changes();
        let after = recompile(Some(&before), &w, &node(), &ch);
        let d = delta(Some(&before), &after);
        let pos = |f: &dyn Fn(&Op) -> bool| d.ops.iter().position(f).unwrap_or_else(|| panic!("{}", d.text()));
        let entries = pos(&|o| matches!(o, Op::Delete(s, _) if s == "ingress"));
        let chain = pos(&|o| matches!(o, Op::DeleteChain(_)));
        let set = pos(&|o| matches!(o, Op::DeleteSet(_)));
        assert!(entries < chain && chain < set, "{}", d.text());
        // And a new policy: its sets and elements before the chain that reads them, the chain
        // before the entries that jump to it.
        w.put_policy(policy(1, 443));
        let ch = w.take_changes();
        let again = recompile(Some(&after), &w, &node(), &ch);
        let d = delta(Some(&after), &again);
        let pos = |f: &dyn Fn(&Op) -> bool| d.ops.iter().position(f).unwrap_or_else(|| panic!("{}", d.text()));
        let set = pos(&|o| matches!(o, Op::AddSet(..)));
        let chain = pos(&|o| matches!(o, Op::Chain { .. }));
        let entries = pos(&|o| matches!(o, Op::Add(s, _) if s == "ingress"));
        assert!(set < chain && chain < entries, "{}", d.text());
    }

    /// Compile and diff times at 1 000 policies over 10 000 pods (`cargo test -p weft-policy
    /// --release -- --ignored --nocapture scale`).
    #[test]
    #[ignore]
    fn scale() {
        use std::time::Instant;
        let t = Instant::now();
        let mut w = world(1000, 10_000);
        let built = t.elapsed();
        let t = Instant::now();
        let before = compile(&w, &node());
        let full = t.elapsed();
        let t = Instant::now();
        let fresh = delta(None, &before);
        let fresh_time = t.elapsed();
        w.put_policy(policy(42, 8080));
        let t = Instant::now();
        let ch = w.take_changes();
        let after = recompile(Some(&before), &w, &node(), &ch);
        let d = delta(Some(&before), &after);
        let one_policy = t.elapsed();
        w.put_pod(
            ("ns6".into(), "new".into()),
            Some(pod_info("ns6", "new", "a6", "n1", "10.244.200.1".parse().unwrap())),
        );
        let t = Instant::now();
        let ch = w.take_changes();
        let again = recompile(Some(&after), &w, &node(), &ch);
        let d2 = delta(Some(&after), &again);
        let one_pod = t.elapsed();
        println!(
            "world {built:?}; full compile {full:?}, fresh delta {fresh_time:?} ({} operations); one policy {one_policy:?} ({} operations); one pod {one_pod:?} ({} operations)",
            fresh.size(),
            d.size(),
            d2.size()
        );
    }

    /// A kernel that refuses what it is told to.
    struct Refusing {
        refuse: std::cell::Cell<bool>,
        seen: RefCell<Vec<bool>>,
    }
    impl Sink for Refusing {
        fn apply(&self, d: &Delta) -> Result<()> {
            self.seen.borrow_mut().push(d.is_fresh());
            if self.refuse.get() { Err(anyhow::anyhow!("refused")) } else { Ok(()) }
        }
    }

    #[test]
    fn a_refused_change_keeps_the_last_good_state_and_the_next_sync_is_whole() {
        let mut w = world(5, 50);
        let first = compile(&w, &node());
        let mut a = Applier::new(Refusing { refuse: false.into(), seen: RefCell::default() });
        a.sync(first.clone()).unwrap();
        w.put_policy(policy(2, 8443));
        let ch = w.take_changes();
        let second = recompile(Some(&first), &w, &node(), &ch);
        a.sink.refuse.set(true);
        assert!(a.sync(second.clone()).is_err());
        assert_eq!(a.applied(), Some(&first), "what the kernel still has");
        a.sink.refuse.set(false);
        a.sync(second.clone()).unwrap();
        assert_eq!(a.applied(), Some(&second));
        assert_eq!(*a.sink.seen.borrow(), vec![true, false, true], "fresh, a delta (refused), then fresh");
        // Then deltas again.
        assert_eq!(a.sync(second).unwrap(), 0);
    }
}
