//! dns-bench: weft's cluster DNS against Knot DNS (Debian `knot`) serving the same names, both
//! under dnsperf (Debian `dnsperf`), each server pinned to one core (dnsperf on the other), in
//! one run. Prints queries per second, average and p99 latency for both and the ratio, and
//! weft's resident memory with the whole cluster loaded, against CoreDNS's published memory
//! formula (49 MB + 0.86 KB per pod and Service).
//!
//! The cluster: SERVICES ClusterIP Services `svc-N` in namespaces `ns-(N % 100)` (the names of
//! `../shared/anchors/dns-anchor.sh`), each with an EndpointSlice of ENDPOINTS endpoints and, as
//! in a real cluster, a pod behind each endpoint (with its address in its status: weft keeps
//! pods for verified pod records; `--no-pods` leaves them out), in a lab with the API alone
//! (`--nodes 0`). Loopback only: weft on 127.0.0.85, Knot on 127.0.0.86.
//!
//! CoreDNS (built by `scripts/peers coredns`; skipped with a note when it is not there) runs
//! kubeadm's Corefile (the `kubernetes` plugin over the same API, `cache 30`, forwarding to a
//! dead loopback port instead of /etc/resolv.conf) on 127.0.0.87 with GOMAXPROCS=1, pinned to
//! the same core: queries per second and resident memory against weft's, measured, in place of
//! CoreDNS's published memory formula (still printed beside it).
//!
//! `--control-plane kubernetes` puts the cluster in a real kube-apiserver (built by
//! `scripts/peers etcd kubernetes`) instead of the lab's embedded API: weft's DNS and CoreDNS
//! then both list and watch the real API.
//!
//! Usage: dns-bench [SERVICES] [ENDPOINTS] [SECONDS] [--no-pods] [--coredns-bin PATH]
//! [--control-plane weft|kubernetes] (defaults 10000 10 10, target/peers/bin/coredns, weft;
//! root not needed)

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_bench::world::{self, World};
use weft_bench::{Lab, LabOptions, rss_mib, sibling_bin, status_mib};

const WEFT_ADDR: &str = "127.0.0.85";
const KNOT_ADDR: &str = "127.0.0.86";
const COREDNS_ADDR: &str = "127.0.0.87";
const PORT: u16 = 5300;

/// Stops a child by its pid when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Perf {
    qps: f64,
    avg_ms: f64,
    p99_ms: f64,
    lost: String,
}

fn dnsperf(addr: &str, queries: &std::path::Path, secs: u64, verbose: bool) -> Result<String> {
    let mut c = Command::new("taskset");
    c.args(["-c", "0", "dnsperf", "-s", addr, "-p", &PORT.to_string(), "-d"]).arg(queries).args([
        "-l",
        &secs.to_string(),
        "-T",
        "1",
        "-c",
        "1",
        "-q",
        "100",
    ]);
    if verbose {
        c.arg("-v");
    }
    let out = c.output().context("running dnsperf (Debian package dnsperf)")?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn measure(addr: &str, queries: &std::path::Path, secs: u64) -> Result<Perf> {
    let out = dnsperf(addr, queries, secs, false)?;
    let field = |key: &str| -> Option<String> {
        out.lines().find(|l| l.contains(key)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    };
    let qps: f64 = field("Queries per second").and_then(|v| v.parse().ok()).context(out.clone())?;
    let avg: f64 = field("Average Latency").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(f64::NAN);
    let lost = field("Queries lost").unwrap_or_default();
    // Percentiles: dnsperf prints every query's latency with -v (which costs it some speed).
    let v = dnsperf(addr, queries, secs.min(5), true)?;
    let mut lat: Vec<f64> =
        v.lines().filter(|l| l.starts_with("> ")).filter_map(|l| l.split_whitespace().last()?.parse().ok()).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(f64::NAN) * 1000.0;
    Ok(Perf { qps, avg_ms: avg * 1000.0, p99_ms: p99, lost })
}

fn answers(addr: &str, name: &str) -> String {
    Command::new("dig")
        .args([&format!("@{addr}"), "-p", &PORT.to_string(), "+short", "+time=1", "+tries=1", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Waits until the server `who` at `addr` answers `name` with `want` (at most `limit`).
fn wait_answer(who: &str, addr: &str, name: &str, want: &str, limit: Duration) -> Result<()> {
    let until = Instant::now() + limit;
    while answers(addr, name) != want {
        if Instant::now() > until {
            bail!("{who} did not answer {name} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let pods = !args.iter().any(|a| a == "--no-pods");
    args.retain(|a| a != "--no-pods");
    // target/release/dns-bench -> target/peers/bin/coredns
    let mut coredns_bin =
        std::env::current_exe()?.parent().and_then(|d| d.parent()).map(|t| t.join("peers/bin/coredns"));
    if let Some(i) = args.iter().position(|a| a == "--coredns-bin") {
        coredns_bin = Some(args.get(i + 1).context("--coredns-bin needs a path")?.into());
        args.drain(i..i + 2);
    }
    let mut real = false;
    if let Some(i) = args.iter().position(|a| a == "--control-plane") {
        real = match args.get(i + 1).map(String::as_str) {
            Some("kubernetes") => true,
            Some("weft") => false,
            other => bail!("--control-plane {other:?}: give weft or kubernetes"),
        };
        args.drain(i..i + 2);
    }
    let coredns_bin = coredns_bin.filter(|p| p.is_file());
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let per: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let secs: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(10).clamp(1, 120);
    for tool in ["dnsperf", "knotd", "dig", "taskset"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?.stdout.is_empty() {
            bail!("{tool} is missing: apt-get install dnsperf knot dnsutils util-linux");
        }
    }
    let work = tempfile::tempdir()?;
    // The API: the lab's embedded one (with the API alone), or a real control plane.
    let (lab, cp) = if real {
        let cp = world::real_control_plane(&work.path().join("control-plane")).await?;
        (None, Some(cp))
    } else {
        let name = format!("weft-bench-dns-{}", std::process::id());
        (Some(Lab::start(LabOptions::new().name(&name).nodes(0).args(&["--control-plane", "weft"]))?), None)
    };
    let (client, kubeconfig) = match (&lab, &cp) {
        (Some(lab), _) => (lab.client().await, lab.state_dir().join("kubeconfig")),
        (_, Some(cp)) => (cp.client().await?, cp.kubeconfig.clone()),
        _ => unreachable!("one of them"),
    };
    println!(
        "== dns-bench: {n} Services x {per} endpoints in {}, dnsperf -q 100 for {secs} s per server, servers on core 1",
        if real { "a real kube-apiserver" } else { "the embedded API" }
    );

    // The cluster.
    let t = Instant::now();
    // The pods are bound to a Node of their own (no kubelet: nothing runs them), so the lab's
    // scheduler leaves them alone; unbound, it wrote each one's Unschedulable condition and an
    // Event while the rounds ran (a daemon at 64-76% of a core).
    world::node(&client, "dns-bench-node", "127.0.0.1").await?;
    let addr = |i: usize, k: usize| {
        let x = i * per + k;
        format!("10.{}.{}.{}", 128 + (x >> 16) % 64, (x >> 8) & 255, x & 255)
    };
    let w = World {
        services: n,
        per_service: per,
        namespaces: 100,
        addr: &addr,
        target_port: 8080,
        pods_on: pods.then_some("dns-bench-node"),
    };
    let ips = world::create(&client, &w, 0).await?;
    println!(
        "cluster: {n} Services, {n} EndpointSlices, {} endpoints, {} pods created in {:.1} s",
        n * per,
        if pods { n * per } else { 0 },
        t.elapsed().as_secs_f64()
    );

    // weft's DNS (the `weft-dns` binary the lab's DNS pod runs), one UDP worker, pinned to core 1.
    let listen = format!("{WEFT_ADDR}:{PORT}");
    let health = format!("{WEFT_ADDR}:8181");
    let t = Instant::now();
    let weft = Proc(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(sibling_bin("weft-dns"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", &listen, "--threads", "1", "--http", &health, "--upstream", "127.0.0.1:9"])
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting weft-dns (cargo build --release -p weft-dns builds it)")?,
    );
    let wpid = weft.0.id() as i32;
    let probe = format!("svc-{}.ns-{}.svc.cluster.local", n - 1, (n - 1) % 100);
    wait_answer("weft dns", WEFT_ADDR, &probe, &ips[n - 1], Duration::from_secs(120))?;
    println!("weft dns: whole zone served {:.2} s after start", t.elapsed().as_secs_f64());
    // Let the lab's own controllers finish with the new objects before measuring (bounded).
    let cpu = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let f: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    };
    // The API's process: the lab's daemon, or kube-apiserver.
    let daemon = match (&lab, &cp) {
        (Some(lab), _) => lab.daemon_pid(),
        (_, Some(cp)) => cp.pid("kube-apiserver").unwrap_or(0),
        _ => 0,
    };
    let mut quiet = false;
    for _ in 0..30 {
        let (a, b) = (cpu(daemon) + cpu(wpid), Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        // Clock ticks are 1/100 s: under 5 ticks in half a second is under 10% of a core.
        if cpu(daemon) + cpu(wpid) - a < 5 && b.elapsed() < Duration::from_secs(1) {
            quiet = true;
            break;
        }
    }
    if !quiet {
        println!("note: the lab daemon was still busy after 15 s; the figures below share the machine with it");
    }
    println!(
        "weft dns: RSS {:.1} MiB with the zone loaded, before any query ({:.1} MiB anonymous, {:.1} MiB of the binary and libraries; peak {:.1} MiB while listing)",
        rss_mib(wpid)?,
        status_mib(wpid, "RssAnon")?,
        status_mib(wpid, "RssFile")?,
        status_mib(wpid, "VmHWM")?
    );
    // Where it is: the mappings over 2 MiB (the binary's own pages, the allocator's arenas).
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("awk '/^[0-9a-f]+-/{{m=$6}} /^Rss:/{{if ($2>2048) printf \"  %6.1f MiB %s\\n\", $2/1024, (m==\"\" ? \"(anonymous)\" : m)}}' /proc/{wpid}/smaps"))
        .status();

    // Knot with the same names and addresses, one UDP worker, pinned to core 1.
    let zone = work.path().join("cluster.local.zone");
    let mut z = std::fs::File::create(&zone)?;
    writeln!(
        z,
        "$ORIGIN cluster.local.\n$TTL 5\n@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ NS ns.dns\nns.dns A 10.96.0.10"
    )?;
    for (i, ip) in ips.iter().enumerate() {
        writeln!(z, "svc-{i}.ns-{}.svc A {ip}", i % 100)?;
    }
    drop(z);
    let conf = work.path().join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n    rundir: \"{d}\"\n    listen: {KNOT_ADDR}@{PORT}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
             log:\n  - target: stderr\n    any: error\ndatabase:\n    storage: \"{d}/db\"\n\
             template:\n  - id: default\n    storage: \"{d}\"\n    file: \"%s.zone\"\n    journal-content: none\n    semantic-checks: off\n\
             zone:\n  - domain: cluster.local\n",
            d = work.path().display()
        ),
    )?;
    let _knot =
        Proc(Command::new("taskset").args(["-c", "1", "knotd", "-c"]).arg(&conf).stderr(Stdio::null()).spawn()?);
    wait_answer("knotd", KNOT_ADDR, &probe, &ips[n - 1], Duration::from_secs(60))?;

    // CoreDNS with kubeadm's Corefile over the same API, one core (GOMAXPROCS=1, pinned).
    let coredns = match &coredns_bin {
        None => {
            println!("coredns: not measured: build it with scripts/peers coredns (or --coredns-bin PATH)");
            None
        }
        Some(bin) => {
            let corefile = work.path().join("Corefile");
            std::fs::write(
                &corefile,
                format!(
                    ".:{PORT} {{\n    bind {COREDNS_ADDR}\n    errors\n    health {COREDNS_ADDR}:8080 {{\n        lameduck 5s\n    }}\n    ready {COREDNS_ADDR}:8181\n                     kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }}\n                     prometheus {COREDNS_ADDR}:9153\n    forward . 127.0.0.1:9 {{\n        max_concurrent 1000\n    }}\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n",
                    kubeconfig.display()
                ),
            )?;
            let t = Instant::now();
            let c = Proc(
                Command::new("taskset")
                    .args(["-c", "1"])
                    .arg(bin)
                    .arg("-conf")
                    .arg(&corefile)
                    .env("GOMAXPROCS", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {}", bin.display()))?,
            );
            wait_answer("coredns", COREDNS_ADDR, &probe, &ips[n - 1], Duration::from_secs(180))?;
            println!("coredns: whole zone served {:.2} s after start", t.elapsed().as_secs_f64());
            let pid = c.0.id() as i32;
            println!(
                "coredns: RSS {:.1} MiB with the zone loaded, before any query ({:.1} MiB anonymous)",
                rss_mib(pid)?,
                status_mib(pid, "RssAnon")?
            );
            Some(c)
        }
    };

    // The queries of the anchor: every Service name once, shuffled (deterministically).
    let queries = work.path().join("queries.txt");
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 1;
    for i in (1..n).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    let text: String = order.iter().map(|i| format!("svc-{i}.ns-{}.svc.cluster.local A\n", i % 100)).collect();
    std::fs::write(&queries, text)?;

    // Alternate the servers over two rounds so drift on a shared machine hits both.
    let mut w = vec![];
    let mut k = vec![];
    let (daemon_ticks, rounds_start) = (cpu(daemon), Instant::now());
    let mut c = vec![];
    for _ in 0..2 {
        w.push(measure(WEFT_ADDR, &queries, secs)?);
        k.push(measure(KNOT_ADDR, &queries, secs)?);
        if coredns.is_some() {
            c.push(measure(COREDNS_ADDR, &queries, secs)?);
        }
    }
    let best = |v: &[Perf]| -> usize { if v[0].qps >= v[1].qps { 0 } else { 1 } };
    let (wb, kb) = (&w[best(&w)], &k[best(&k)]);
    for (name, v) in [("weft", &w), ("knot", &k), ("coredns", &c)] {
        for (r, p) in v.iter().enumerate() {
            println!(
                "{name:7} round {}: {:>9.0} qps  avg {:.3} ms  p99 {:.3} ms  lost {}",
                r + 1,
                p.qps,
                p.avg_ms,
                p.p99_ms,
                p.lost
            );
        }
    }
    // The lab's API and controllers share the machine; how busy they were says how much to trust
    // the tail latencies.
    println!(
        "{}: {:.0}% of a core during the rounds",
        if real { "kube-apiserver" } else { "lab daemon" },
        (cpu(daemon) - daemon_ticks) as f64 / rounds_start.elapsed().as_secs_f64()
    );
    let rss = rss_mib(wpid)?;
    let metrics = Command::new("curl").args(["-s", &format!("http://{health}/metrics")]).output()?;
    let builds = String::from_utf8_lossy(&metrics.stdout)
        .lines()
        .find(|l| l.starts_with("weft_dns_zone_builds_total"))
        .map(|l| l.to_string())
        .unwrap_or_default();
    println!("weft: {builds} (index rebuilds over the run)");
    let services = n as f64;
    let endpoints = (n * per) as f64;
    // CoreDNS's published formula counts pods and Services; a pod stands behind each endpoint.
    let coredns_mb = 49.0 + 0.86 * (services + endpoints) / 1024.0;
    println!(
        "SUMMARY: dns-bench {n} Services / {} endpoints / {} pods: weft {:.0} qps (avg {:.3} ms, p99 {:.3} ms) vs knot {:.0} qps (avg {:.3} ms, p99 {:.3} ms): ratio {:.2}x; \
         weft RSS {:.1} MiB vs CoreDNS formula {:.0} MB (ratio {:.2})",
        n * per,
        if pods { n * per } else { 0 },
        wb.qps,
        wb.avg_ms,
        wb.p99_ms,
        kb.qps,
        kb.avg_ms,
        kb.p99_ms,
        wb.qps / kb.qps,
        rss,
        coredns_mb,
        rss * 1.048576 / coredns_mb
    );
    if let (Some(proc_), false) = (&coredns, c.is_empty()) {
        let cb = &c[best(&c)];
        let crss = rss_mib(proc_.0.id() as i32)?;
        let qps_ratio = wb.qps / cb.qps;
        let mem_ratio = rss / crss;
        println!(
            "SUMMARY: weft vs CoreDNS (kubeadm's Corefile, one core each): {:.0} vs {:.0} qps: ratio {qps_ratio:.2}x (goal >= 2x: {}); \
             avg {:.3} vs {:.3} ms, p99 {:.3} vs {:.3} ms; RSS after the rounds {rss:.1} vs {crss:.1} MiB: ratio {mem_ratio:.2} (goal <= 0.25: {})",
            wb.qps,
            cb.qps,
            if qps_ratio >= 2.0 { "met" } else { "NOT met" },
            wb.avg_ms,
            cb.avg_ms,
            wb.p99_ms,
            cb.p99_ms,
            if mem_ratio <= 0.25 { "met" } else { "NOT met" },
        );
    }
    drop(weft);
    Ok(())
}
