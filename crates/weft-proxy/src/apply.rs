//! The applier: the difference between what a node has and what the compiler wants, as one
//! `nft -f -` transaction (atomic), containing only what changed. It never reads the table back
//! (it remembers what it applied); the first sync, or a sync after an error, declares the whole
//! table fresh.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::compile::{Desired, MASQ_MARK, SvcPort};

pub const TABLE: &str = "weft-proxy";

fn base() -> String {
    format!(
        r#"table ip {TABLE} {{
  map services {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
  map nodeports {{ type inet_proto . inet_service : verdict; }}
  set hairpin {{ type ipv4_addr . ipv4_addr; }}
  set no-endpoints {{ type ipv4_addr . inet_proto . inet_service; }}
  set no-endpoint-nodeports {{ type inet_proto . inet_service; }}
  chain mark-masq {{ meta mark set meta mark | {MASQ_MARK:#x}; }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @services
    fib daddr type local meta l4proto . th dport vmap @nodeports
  }}
  chain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}
  chain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}
  chain nat-postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} masquerade
    ip saddr . ip daddr @hairpin masquerade
  }}
  chain reject-chain {{
    ip daddr . meta l4proto . th dport @no-endpoints meta l4proto tcp reject with tcp reset
    ip daddr . meta l4proto . th dport @no-endpoints reject
    fib daddr type local meta l4proto . th dport @no-endpoint-nodeports meta l4proto tcp reject with tcp reset
    fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject
  }}
  chain filter-prerouting {{ type filter hook prerouting priority -110; policy accept; jump reject-chain; }}
  chain filter-output {{ type filter hook output priority -110; policy accept; jump reject-chain; }}
}}
"#,
        !MASQ_MARK
    )
}

fn map_decl(p: &SvcPort) -> String {
    format!("add map ip {TABLE} {} {{ typeof numgen random mod 2 : ip daddr . tcp dport; }}\n", p.map)
}

fn map_elements(p: &SvcPort) -> String {
    if p.backends.is_empty() {
        return String::new();
    }
    let els: Vec<String> = p.backends.iter().enumerate().map(|(i, b)| format!("{i} : {} . {}", b.ip, b.port)).collect();
    format!("add element ip {TABLE} {} {{ {} }}\n", p.map, els.join(", "))
}

fn chain_rules(p: &SvcPort) -> String {
    let mut s = String::new();
    for r in &p.rules {
        let _ = writeln!(s, "add rule ip {TABLE} {} {r}", p.chain);
    }
    s
}

fn el_service(k: &(std::net::Ipv4Addr, String, u16)) -> String {
    format!("{} . {} . {}", k.0, k.1, k.2)
}

fn el_nodeport(k: &(String, u16)) -> String {
    format!("{} . {}", k.0, k.1)
}

fn elements(set: &str, els: Vec<String>, add: bool) -> String {
    if els.is_empty() {
        return String::new();
    }
    format!("{} element ip {TABLE} {set} {{ {} }}\n", if add { "add" } else { "delete" }, els.join(", "))
}

/// The transaction that takes a node from `old` (None: unknown, start fresh) to `new`.
pub fn script(old: Option<&Desired>, new: &Desired) -> String {
    let empty = Desired::default();
    let (mut s, old) = match old {
        Some(o) => (String::new(), o),
        None => (format!("add table ip {TABLE}\ndelete table ip {TABLE}\n{}", base()), &empty),
    };
    // 1. Entries that go away or change their verdict.
    s += &elements(
        "services",
        old.services
            .iter()
            .filter(|(k, v)| new.services.get(*k) != Some(*v))
            .map(|(k, v)| format!("{} : goto {v}", el_service(k)))
            .collect(),
        false,
    );
    s += &elements(
        "nodeports",
        old.nodeports
            .iter()
            .filter(|(k, v)| new.nodeports.get(*k) != Some(*v))
            .map(|(k, v)| format!("{} : goto {v}", el_nodeport(k)))
            .collect(),
        false,
    );
    s += &elements("hairpin", old.hairpin.difference(&new.hairpin).map(|ip| format!("{ip} . {ip}")).collect(), false);
    s += &elements("no-endpoints", old.reject.difference(&new.reject).map(el_service).collect(), false);
    s += &elements(
        "no-endpoint-nodeports",
        old.reject_nodeports.difference(&new.reject_nodeports).map(el_nodeport).collect(),
        false,
    );
    // 2. Chains (then their maps) that go away.
    for name in old.ports.keys().filter(|n| !new.ports.contains_key(*n)) {
        let _ = writeln!(s, "flush chain ip {TABLE} {name}\ndelete chain ip {TABLE} {name}");
    }
    for p in old.ports.values().filter(|p| !p.map.is_empty() && !new.ports.values().any(|n| n.map == p.map)) {
        let _ = writeln!(s, "delete map ip {TABLE} {}", p.map);
    }
    // 3. Maps and chains that are new or changed.
    for (name, p) in &new.ports {
        match old.ports.get(name) {
            None => {
                if !p.map.is_empty() && !old.ports.values().any(|o| o.map == p.map) {
                    s += &map_decl(p);
                    s += &map_elements(p);
                }
                let _ = writeln!(s, "add chain ip {TABLE} {name}");
                s += &chain_rules(p);
            }
            Some(o) => {
                if !p.map.is_empty() && o.backends != p.backends {
                    let _ = writeln!(s, "flush map ip {TABLE} {}", p.map);
                    s += &map_elements(p);
                }
                if o.rules != p.rules {
                    let _ = writeln!(s, "flush chain ip {TABLE} {name}");
                    s += &chain_rules(p);
                }
            }
        }
    }
    // Maps declared by chains that existed before but now own a map they did not.
    for p in new.ports.values() {
        if !p.map.is_empty()
            && old.ports.get(&p.chain).is_some_and(|o| o.map != p.map)
            && !old.ports.values().any(|o| o.map == p.map)
        {
            s += &map_decl(p);
            s += &map_elements(p);
        }
    }
    // 4. Entries that are new or changed.
    s += &elements(
        "services",
        new.services
            .iter()
            .filter(|(k, v)| old.services.get(*k) != Some(*v))
            .map(|(k, v)| format!("{} : goto {v}", el_service(k)))
            .collect(),
        true,
    );
    s += &elements(
        "nodeports",
        new.nodeports
            .iter()
            .filter(|(k, v)| old.nodeports.get(*k) != Some(*v))
            .map(|(k, v)| format!("{} : goto {v}", el_nodeport(k)))
            .collect(),
        true,
    );
    s += &elements("hairpin", new.hairpin.difference(&old.hairpin).map(|ip| format!("{ip} . {ip}")).collect(), true);
    s += &elements("no-endpoints", new.reject.difference(&old.reject).map(el_service).collect(), true);
    s += &elements(
        "no-endpoint-nodeports",
        new.reject_nodeports.difference(&old.reject_nodeports).map(el_nodeport).collect(),
        true,
    );
    s
}

/// Where a transaction goes: `nft -f -` in a network namespace (a lab node) or here.
pub trait Sink {
    fn apply(&self, script: &str) -> Result<()>;
}

pub struct NftCommand {
    /// Enter this network namespace first (a lab node); `None`: this process's namespace.
    pub netns: Option<std::path::PathBuf>,
}

impl Sink for NftCommand {
    fn apply(&self, script: &str) -> Result<()> {
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(ns) = &self.netns {
            let f = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().context("running nft (install the nftables package)")?;
        child.stdin.take().unwrap().write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft rejected the transaction: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

/// Keeps what was applied, sends only differences; after a failure the next sync starts fresh.
pub struct Applier<S: Sink> {
    sink: S,
    applied: Option<Desired>,
}

impl<S: Sink> Applier<S> {
    pub fn new(sink: S) -> Self {
        Applier { sink, applied: None }
    }
    /// Applies `want`; returns the transaction's size in bytes (0 when nothing changed).
    pub fn sync(&mut self, want: Desired) -> Result<usize> {
        if self.applied.as_ref() == Some(&want) {
            return Ok(0);
        }
        let s = script(self.applied.as_ref(), &want);
        match self.sink.apply(&s) {
            Ok(()) => {
                self.applied = Some(want);
                Ok(s.len())
            }
            Err(e) => {
                self.applied = None;
                Err(e)
            }
        }
    }
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
        let touched = &before.ports.values().find(|p| p.display.starts_with("default/s4242:")).unwrap().chain;
        for line in delta.lines() {
            // Its chain and map, and the hairpin entry of its one new endpoint.
            let own = line.contains(&touched[4..])
                || line == "add element ip weft-proxy hairpin { 10.244.10.243 . 10.244.10.243 }";
            assert!(own, "a line about another service: {line}");
        }
        assert!(delta.contains("mod 11"), "{delta}");
        assert!(delta.len() < 2_000, "{} bytes", delta.len());
        assert_eq!(script(Some(&after), &after), "", "nothing changed, nothing sent");
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
                && del.contains("delete chain")
                && del.contains("delete map"),
            "{del}"
        );
        let add = script(Some(&two), &three);
        assert!(
            add.contains("add map") && add.contains("add chain") && add.contains("add element ip weft-proxy services"),
            "{add}"
        );
    }
}
