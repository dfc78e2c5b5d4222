//! proxy-bench: weft's service rules against the iptables rule shape kube-proxy writes (seed
//! 002: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT, loaded with iptables-restore), in the
//! same run, for N Services x 10 endpoints (default N = 1000 and 10000). For each: full sync
//! time, one-Service update time, and TCP connect latency to the last Service added.
//! Everything happens in namespaces this program makes (weft-ns*-bench-px-*).
//!
//! Usage: proxy-bench [N ...]   (root)

use std::fmt::Write as _;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use weft_proxy::apply::{Applier, NetlinkSink};
use weft_proxy::compile::{Claims, NodeInfo, compile, compile_patch};
use weft_testkit::Netns;
use weft_testkit::objects::{at_version, endpoint, port, service, slice};

const EPS: usize = 10;

fn vip(i: usize) -> String {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1).to_string()
}

/// The k-th endpoint address: all on the one backend namespace.
fn backend(k: usize) -> String {
    format!("10.250.0.{}", 2 + k)
}

fn world(n: usize, bump: Option<usize>) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = vec![];
    let mut slices = vec![];
    for i in 0..n {
        let name = format!("s{i}");
        let spec = json!({"clusterIP": vip(i), "ports": [{"port": 80, "protocol": "TCP"}]});
        svcs.push(at_version(service(&name, spec), "1"));
        // Every endpoint address lives on the one backend namespace (so any pick connects).
        let bumped = bump == Some(i);
        let eps = (0..EPS).map(|k| endpoint(&backend(k)));
        let ports = [port("", "TCP", if bumped { 8081 } else { 8080 })];
        slices.push(at_version(slice(&name, eps, ports), if bumped { "2" } else { "1" }));
    }
    (svcs, slices)
}

/// A client namespace (where the rules live) wired to a backend namespace with a server.
fn topology() -> Result<(Netns, Netns)> {
    let c = Netns::try_new("bench-px-c")?;
    let b = Netns::try_new("bench-px-b")?;
    c.veth("eth0", "10.250.0.1/24", &b, "eth0", &format!("{}/24", backend(0)))?;
    for k in 1..EPS {
        b.try_ip(&["addr", "add", &format!("{}/24", backend(k)), "dev", "eth0"])?;
    }
    c.try_ip(&["route", "add", "10.96.0.0/12", "via", "10.250.0.2"])?;
    Ok((c, b))
}

fn serve(b: &Netns) {
    for port in [8080u16, 8081] {
        weft_netlink::ns::spawn_in(Some(std::path::Path::new(&b.path())), move || {
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            for s in l.incoming() {
                drop(s);
            }
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Mean TCP connect latency (µs) from `c` to `addr` over `n` connections.
fn connect_latency(c: &Netns, addr: SocketAddr, n: usize) -> Result<f64> {
    weft_netlink::ns::run_in(Some(std::path::Path::new(&c.path())), move || -> Result<f64> {
        let start = Instant::now();
        for _ in 0..n {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            drop(s);
        }
        Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
    })?
}

fn iptables_restore(ns: &Netns, input: &str, noflush: bool) -> Result<Duration> {
    let mut cmd = Command::new("iptables-nft-restore");
    if noflush {
        cmd.arg("--noflush");
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    weft_netlink::ns::command_in(&mut cmd, std::path::Path::new(&ns.path()))?;
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    let wrote = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output()?;
    if let Err(e) = wrote {
        bail!("iptables-restore stopped reading ({e}): {}", String::from_utf8_lossy(&out.stderr));
    }
    if !out.status.success() {
        bail!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

fn h(s: &str) -> String {
    format!("{:016X}", weft_k8s::names::fnv1a(s.as_bytes()))
}

/// kube-proxy's iptables shape for N services (seed 002).
fn iptables_rules(n: usize, port_of: impl Fn(usize) -> u16) -> String {
    let mut s = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    for i in 0..n {
        let _ = writeln!(s, ":KUBE-SVC-{} - [0:0]", h(&format!("svc{i}")));
        for k in 0..EPS {
            let _ = writeln!(s, ":KUBE-SEP-{} - [0:0]", h(&format!("sep{i}-{k}")));
        }
    }
    s += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    s += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    s += "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n";
    s += "-A POSTROUTING -j KUBE-POSTROUTING\n-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n";
    for i in 0..n {
        let svc = h(&format!("svc{i}"));
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/s{i} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{svc}",
            vip(i)
        );
        s += &svc_chain(i, &port_of);
    }
    s += "COMMIT\n";
    s
}

fn svc_chain(i: usize, port_of: &impl Fn(usize) -> u16) -> String {
    let mut s = String::new();
    let svc = h(&format!("svc{i}"));
    for k in 0..EPS {
        let sep = h(&format!("sep{i}-{k}"));
        let left = EPS - k;
        if left > 1 {
            let _ = writeln!(
                s,
                "-A KUBE-SVC-{svc} -m statistic --mode random --probability {:.11} -j KUBE-SEP-{sep}",
                1.0 / left as f64
            );
        } else {
            let _ = writeln!(s, "-A KUBE-SVC-{svc} -j KUBE-SEP-{sep}");
        }
        let be = backend(k);
        let _ = writeln!(s, "-A KUBE-SEP-{sep} -s {be}/32 -j KUBE-MARK-MASQ");
        let _ = writeln!(s, "-A KUBE-SEP-{sep} -p tcp -m tcp -j DNAT --to-destination {be}:{}", port_of(i));
    }
    s
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10000] } else { sizes };
    let node = NodeInfo { name: "n1".into(), cluster_cidr: "10.244.0.0/16".parse()? };
    println!(
        "== proxy-bench: N Services x {EPS} endpoints; weft (nft named maps, delta transactions) vs kube-proxy iptables shape"
    );
    for n in sizes {
        // weft.
        let (c, b) = topology()?;
        serve(&b);
        let (s, e) = world(n, None);
        let mut applier = Applier::new(NetlinkSink { netns: Some(c.path().into()) });
        let t = Instant::now();
        let want = compile(&s, &e, &node);
        let bytes = applier.sync(want)?;
        let full = t.elapsed();
        let (s2, e2) = world(n, Some(n - 1));
        // What the proxy does on a change: recompile the Service the watch says changed, diff
        // it against what is applied, send the difference.
        let name = format!("s{}", n - 1);
        let svc = s2.iter().find(|x| x.metadata.name.as_deref() == Some(&name));
        let slices: Vec<&EndpointSlice> =
            e2.iter().filter(|x| weft_k8s::slices::belongs_to(x, "default", &name)).collect();
        let key = ("default".to_string(), name.clone());
        // The proxy keeps the claims up to date as events arrive; updating them is timed.
        let mut claims = Claims::new(&s);
        let changed = vec![(key.clone(), svc, slices)];
        let t = Instant::now();
        claims.set(&key, svc);
        let patch = compile_patch(applier.applied().context("applied")?, &changed, &node, &claims);
        let compile_t = t.elapsed();
        let delta = applier.sync_patch(&patch)?;
        let one = t.elapsed();
        let last: SocketAddr = format!("{}:80", vip(n - 1)).parse()?;
        let _ = connect_latency(&c, last, 200)?;
        let lat = connect_latency(&c, last, 2000)?;
        println!(
            "N={n:>5} weft      full sync {:7.3} s ({} ops)  one-Service update {:6.1} ms ({} ops, of which compiling {:.1} ms)  connect to last Service {:6.1} us",
            full.as_secs_f64(),
            bytes,
            one.as_secs_f64() * 1e3,
            delta,
            compile_t.as_secs_f64() * 1e3,
            lat
        );
        drop((c, b));
        // iptables shape.
        let (c, b) = topology()?;
        serve(&b);
        let full_i = iptables_restore(&c, &iptables_rules(n, |_| 8080), false)?;
        let i = n - 1;
        let mut upd = String::from("*nat\n");
        let _ = writeln!(upd, ":KUBE-SVC-{} - [0:0]", h(&format!("svc{i}")));
        for k in 0..EPS {
            let _ = writeln!(upd, ":KUBE-SEP-{} - [0:0]", h(&format!("sep{i}-{k}")));
        }
        upd += &svc_chain(i, &|_| 8081);
        upd += "COMMIT\n";
        let one_i = iptables_restore(&c, &upd, true)?;
        let _ = connect_latency(&c, last, 200)?;
        let lat_i = connect_latency(&c, last, 2000)?;
        println!(
            "N={n:>5} iptables  full sync {:7.3} s             one-Service update {:6.1} ms                      connect to last Service {:6.1} us",
            full_i.as_secs_f64(),
            one_i.as_secs_f64() * 1e3,
            lat_i
        );
        println!(
            "N={n:>5} ratio weft/iptables: full sync {:.2}x, one-Service update {:.2}x, connect latency {:.2}x",
            full.as_secs_f64() / full_i.as_secs_f64(),
            one.as_secs_f64() / one_i.as_secs_f64(),
            lat / lat_i
        );
        drop((c, b));
    }
    Ok(())
}
