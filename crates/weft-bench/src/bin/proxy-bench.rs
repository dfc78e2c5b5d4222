//! proxy-bench: weft's service rules against the iptables rule shape kube-proxy writes (seed
//! 002: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* DNAT, loaded with iptables-restore), in the
//! same run, for N Services x 10 endpoints (default N = 1000 and 10000). For each: full sync
//! time, one-Service update time, and TCP connect latency to the last Service added.
//! Everything happens in namespaces this program makes (weft-ns*-bench-px-*).
//!
//! Then the real thing: a real kube-apiserver (built by `scripts/peers etcd kubernetes`) holds
//! the same N Services x 10 endpoints, and `weft agent`, kube-proxy in nftables mode and
//! kube-proxy in iptables mode (same build) each run in turn in a fresh client namespace,
//! reaching the API through a loopback forward: time from the proxy's start to the last
//! Service connecting (a full sync, listing included), from an EndpointSlice change in the API
//! to new connections reaching the new port, and connect latency to the last Service.
//! `--no-real` leaves this part out.
//!
//! Usage: proxy-bench [N ...] [--no-real]   (root)

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

/// TCP connect latency from `c` to `addr` over `n` connections: median and p99 (µs), and how
/// many failed (no answer within 2 s: counted, not fatal). A median, because a mean is one
/// retransmitted SYN (1 s) away from meaning nothing.
fn connect_latency(c: &Netns, addr: SocketAddr, n: usize) -> Result<(f64, f64, usize)> {
    weft_netlink::ns::run_in(Some(std::path::Path::new(&c.path())), move || {
        let mut took = Vec::with_capacity(n);
        let mut failed = 0;
        for _ in 0..n {
            let t = Instant::now();
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => took.push(t.elapsed()),
                Err(_) => failed += 1,
            }
        }
        let median = weft_bench::percentile_ms(&mut took, 50.0) * 1e3;
        (median, weft_bench::percentile_ms(&mut took, 99.0) * 1e3, failed)
    })
    .map_err(Into::into)
}

/// A latency figure as printed: median, p99 and failures.
fn lat_text((median, p99, failed): (f64, f64, usize)) -> String {
    let failed = if failed > 0 { format!(", {failed} failed") } else { String::new() };
    format!("{median:6.1} us (p99 {p99:.0}{failed})")
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
    shapes(&sizes)?;
    if !std::env::args().any(|a| a == "--no-real") {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(real::run(&sizes))?;
    }
    Ok(())
}

/// weft's rules against kube-proxy's iptables shape, loaded directly.
fn shapes(sizes: &[usize]) -> Result<()> {
    let sizes = sizes.to_vec();
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
            "N={n:>5} weft      full sync {:7.3} s ({} ops)  one-Service update {:6.1} ms ({} ops, of which compiling {:.1} ms)  connect to last Service {}",
            full.as_secs_f64(),
            bytes,
            one.as_secs_f64() * 1e3,
            delta,
            compile_t.as_secs_f64() * 1e3,
            lat_text(lat)
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
            "N={n:>5} iptables  full sync {:7.3} s             one-Service update {:6.1} ms                      connect to last Service {}",
            full_i.as_secs_f64(),
            one_i.as_secs_f64() * 1e3,
            lat_text(lat_i)
        );
        println!(
            "N={n:>5} ratio weft/iptables: full sync {:.2}x, one-Service update {:.2}x, connect latency {:.2}x",
            full.as_secs_f64() / full_i.as_secs_f64(),
            one.as_secs_f64() / one_i.as_secs_f64(),
            lat.0 / lat_i.0
        );
        drop((c, b));
    }
    Ok(())
}

/// The real kube-proxy and weft's agent against a real API server.
mod real {
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, Patch, PatchParams};
    use weft_bench::world::{self, World};
    use weft_testkit::Netns;

    use super::{EPS, backend, connect_latency, lat_text};

    /// The proxies measured, as (label, command line after the kubeconfig is known).
    const PROXIES: [&str; 3] = ["weft agent", "kube-proxy nftables", "kube-proxy iptables"];
    const NODE: &str = "bench-node";
    /// How long a full sync may take before the run is given up.
    const SYNC_LIMIT: Duration = Duration::from_secs(600);

    struct Stop(Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..100 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A client namespace wired to a backend namespace whose servers answer "A" on 8080 and "B"
    /// on 8081 (so a change of port shows in what a new connection reads).
    fn topology() -> Result<(Netns, Netns)> {
        let (c, b) = super::topology()?;
        for (port, mark) in [(8080u16, b'A'), (8081, b'B')] {
            weft_netlink::ns::spawn_in(Some(Path::new(&b.path())), move || {
                let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
                for s in l.incoming().flatten() {
                    let _ = std::io::Write::write_all(&mut &s, &[mark]);
                }
            })?;
        }
        std::thread::sleep(Duration::from_millis(100));
        Ok((c, b))
    }

    /// Polls (every 5 ms) from `c` until a new connection to `addr` reads `want`; the time taken.
    fn until_reads(c: &Netns, addr: SocketAddr, want: u8, limit: Duration) -> Result<Duration> {
        weft_netlink::ns::run_in(Some(Path::new(&c.path())), move || -> Result<Duration> {
            let start = Instant::now();
            while start.elapsed() < limit {
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() && b[0] == want {
                        return Ok(start.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            bail!("{addr} did not answer {:?} within {limit:?}", want as char)
        })?
    }

    /// The API at 127.0.0.1:6443 inside `c`, forwarded to `api`.
    fn forward_api(c: &Netns, api: SocketAddr) -> Result<()> {
        let l = weft_netlink::ns::run_in(Some(Path::new(&c.path())), || TcpListener::bind(("127.0.0.1", 6443)))??;
        l.set_nonblocking(true)?;
        tokio::spawn(weft_apiserver::kubernetes_service::forward(tokio::net::TcpListener::from_std(l)?, api));
        Ok(())
    }

    fn start(label: &str, c: &Netns, kubeconfig: &Path, bin_dir: &Path) -> Result<Stop> {
        let mut cmd = match label {
            "weft agent" => {
                let mut c = Command::new(weft_bench::weft_bin());
                c.args(["agent", "--node", NODE, "--cluster-cidr", "10.244.0.0/16", "--metrics-bind-address", ""])
                    .args(["--healthz-bind-address", "", "--allocate-load-balancer-ips=false", "--kubeconfig"])
                    .arg(kubeconfig)
                    .env("WEFT_LOG", "warn");
                c
            }
            kp => {
                let mode = kp.rsplit(' ').next().unwrap_or("nftables");
                let mut c = Command::new(bin_dir.join("kube-proxy"));
                c.arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .args([&format!("--proxy-mode={mode}"), &format!("--hostname-override={NODE}")])
                    .args(["--cluster-cidr=10.244.0.0/16", "--v=0"])
                    // The conntrack table's size is the host's: left as it is.
                    .args(["--conntrack-max-per-core=0", "--conntrack-min=0"]);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        weft_netlink::ns::command_in(&mut cmd, Path::new(&c.path()))?;
        Ok(Stop(cmd.spawn().with_context(|| format!("starting {label}"))?))
    }

    async fn set_port(client: &kube::Client, n: usize, port: u16) -> Result<()> {
        let (svc, ns) = world::name(n - 1, 100);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        let p = serde_json::json!({"ports": [{"name": "http", "port": port, "protocol": "TCP"}]});
        slices.patch(&format!("{svc}-1"), &PatchParams::default(), &Patch::Merge(p)).await?;
        Ok(())
    }

    pub async fn run(sizes: &[usize]) -> Result<()> {
        let dir = tempfile::Builder::new().prefix("weft-bench-px-cp-").tempdir()?;
        let bin_dir = weft_controlplane::find_bin_dir(&std::env::current_exe()?)?;
        anyhow::ensure!(bin_dir.join("kube-proxy").is_file(), "no kube-proxy: build it with scripts/peers kubernetes");
        let cp = world::real_control_plane(dir.path()).await?;
        let client = cp.client().await?;
        world::node(&client, NODE, "10.250.0.1").await?;
        // The proxies' kubeconfig: the API at 127.0.0.1:6443 of their namespace.
        let kubeconfig = dir.path().join("proxy.kubeconfig");
        let text =
            std::fs::read_to_string(&cp.kubeconfig)?.replace(&format!("https://{}", cp.api), "https://127.0.0.1:6443");
        std::fs::write(&kubeconfig, text)?;
        println!(
            "== proxy-bench, real: weft agent, kube-proxy nftables and kube-proxy iptables (built by scripts/peers) against the same Services x {EPS} endpoints in a real kube-apiserver"
        );
        let addr = |_: usize, k: usize| backend(k);
        let mut made = 0;
        let mut ips: Vec<String> = vec![];
        for &n in sizes {
            if n < made {
                println!("N={n}: smaller than the Services already made ({made}): skipped");
                continue;
            }
            let t = Instant::now();
            let w =
                World { services: n, per_service: EPS, namespaces: 100, addr: &addr, target_port: 8080, pods_on: None };
            ips.extend(world::create(&client, &w, made).await?);
            made = n;
            println!(
                "N={n:>5} API: {n} Services and EndpointSlices in place ({:.1} s to add)",
                t.elapsed().as_secs_f64()
            );
            let last: SocketAddr = format!("{}:80", ips[n - 1]).parse()?;
            let mut rows = vec![];
            for label in PROXIES {
                set_port(&client, n, 8080).await?;
                let (c, b) = topology()?;
                forward_api(&c, cp.api)?;
                let proc_ = start(label, &c, &kubeconfig, &bin_dir)?;
                // A proxy that has not synced by the limit is a figure too ("over 600 s"), not
                // the end of the run.
                let Ok(full) = until_reads(&c, last, b'A', SYNC_LIMIT) else {
                    println!("N={n:>5} {label:<20} full sync: the last Service did not connect within {SYNC_LIMIT:?}");
                    rows.push((label, None));
                    continue;
                };
                // Settled: the proxy has nothing left to do before the change.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let t = Instant::now();
                set_port(&client, n, 8081).await?;
                until_reads(&c, last, b'B', Duration::from_secs(120))
                    .with_context(|| format!("{label}: one-Service change"))?;
                let one = t.elapsed();
                let _ = connect_latency(&c, last, 200)?;
                let lat = connect_latency(&c, last, 2000)?;
                println!(
                    "N={n:>5} {label:<20} full sync {:7.3} s   one-Service change {:7.1} ms   connect to last Service {}",
                    full.as_secs_f64(),
                    one.as_secs_f64() * 1e3,
                    lat_text(lat)
                );
                rows.push((label, Some((full, one, lat))));
                drop(proc_);
                drop((c, b));
            }
            let Some((wf, wo, wl)) = rows[0].1 else { bail!("weft agent did not sync within {SYNC_LIMIT:?}") };
            for (label, row) in &rows[1..] {
                match row {
                    Some((f, o, l)) => println!(
                        "N={n:>5} ratio weft/{label}: full sync {:.2}x, one-Service change {:.2}x, connect latency (median) {:.2}x",
                        wf.as_secs_f64() / f.as_secs_f64(),
                        wo.as_secs_f64() / o.as_secs_f64(),
                        wl.0 / l.0
                    ),
                    None => println!(
                        "N={n:>5} ratio weft/{label}: full sync under {:.3}x (it took over {SYNC_LIMIT:?})",
                        wf.as_secs_f64() / SYNC_LIMIT.as_secs_f64()
                    ),
                }
            }
        }
        Ok(())
    }
}
