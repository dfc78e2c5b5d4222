//! exec-bench: what `kubectl exec` and `kubectl port-forward` cost against a lab.
//! Prints: the round trip of `kubectl exec POD -- true` (p50, p90 over up to 30 runs, at most
//! 60 s) beside `kubectl get pod POD` (what kubectl costs by itself), and 64 MiB pushed to a TCP sink in a pod through `kubectl port-forward` against the
//! same sink reached directly from another pod on the same node, as a ratio.
//!
//! Usage: exec-bench (needs root and kubectl; makes and removes its own lab)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use weft_bench::{Lab, LabOptions, percentile_ms};
use weft_testkit::objects::{pod, sleeper};

const EXEC_RUNS: usize = 30;
const EXEC_LIMIT: Duration = Duration::from_secs(60);
const PUSH_BYTES: u64 = 64 << 20;
const PUSH_LIMIT: Duration = Duration::from_secs(120);

/// A TCP sink on `port` in the pod's network namespace: counts what one connection sends.
fn sink(netns: &str, port: u16) -> Result<weft_netlink::ns::NsThread<std::io::Result<u64>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = weft_netlink::ns::spawn_in(Some(&weft_netlink::ns::path(netns)), move || -> std::io::Result<u64> {
        let l = TcpListener::bind(("0.0.0.0", port))?;
        tx.send(()).unwrap();
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(PUSH_LIMIT))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    })?;
    rx.recv_timeout(Duration::from_secs(10)).context("the sink did not listen")?;
    Ok(t)
}

/// Pushes PUSH_BYTES to `addr` and waits for the sink to have them all; MiB/s.
fn push(
    connect: impl FnOnce() -> std::io::Result<TcpStream>,
    sink: weft_netlink::ns::NsThread<std::io::Result<u64>>,
) -> Result<f64> {
    let start = Instant::now();
    let mut s = connect()?;
    s.set_write_timeout(Some(PUSH_LIMIT))?;
    let buf = vec![7u8; 256 << 10];
    let mut sent = 0u64;
    while sent < PUSH_BYTES {
        if start.elapsed() > PUSH_LIMIT {
            bail!("pushing {PUSH_BYTES} bytes took longer than {PUSH_LIMIT:?}");
        }
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let got = sink.join().map_err(|_| anyhow::anyhow!("the sink panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    if got != sent {
        bail!("the sink got {got} of {sent} bytes");
    }
    Ok(sent as f64 / (1 << 20) as f64 / secs)
}

fn pod_netns(lab: &Lab, name: &str) -> Result<(String, String)> {
    let v = lab.sandbox(name)?;
    let (Some(netns), Some(ip)) = (v["netns"].as_str(), v["ips"][0].as_str()) else {
        bail!("the sandbox of {name} has no namespace or address: {v}")
    };
    Ok((netns.into(), ip.into()))
}

fn main() -> Result<()> {
    println!("== exec-bench");
    let lab = Lab::start(LabOptions::new().name(&format!("weft-bench-exec-{}", std::process::id())).nodes(1))?;
    let on = json!({"nodeName": "node-1", "containers": [sleeper("c")]});
    lab.apply(&[pod("target", on.clone()), pod("client", on)]);
    lab.wait_running("default", 2);
    let kubeconfig = lab.kubeconfig();
    let kubectl = || {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&kubeconfig).stdin(Stdio::null());
        c
    };

    // Exec round trips, bounded in count and time.
    let mut samples = vec![];
    let started = Instant::now();
    while samples.len() < EXEC_RUNS && started.elapsed() < EXEC_LIMIT {
        let t = Instant::now();
        let st = kubectl().args(["exec", "target", "--", "true"]).stdout(Stdio::null()).status()?;
        if !st.success() {
            bail!("kubectl exec target -- true failed: {st}");
        }
        samples.push(t.elapsed());
    }
    let n = samples.len();
    println!(
        "kubectl exec POD -- true, {n} runs: p50 {:.1} ms, p90 {:.1} ms",
        percentile_ms(&mut samples, 50.0),
        percentile_ms(&mut samples, 90.0)
    );

    // What kubectl costs by itself (start, config, one GET of the pod), same count and bound.
    let mut base = vec![];
    let started = Instant::now();
    while base.len() < EXEC_RUNS && started.elapsed() < EXEC_LIMIT {
        let t = Instant::now();
        let st = kubectl().args(["get", "pod", "target", "-o", "name"]).stdout(Stdio::null()).status()?;
        if !st.success() {
            bail!("kubectl get pod target failed: {st}");
        }
        base.push(t.elapsed());
    }
    println!(
        "  (kubectl get pod POD alone, {} runs: p50 {:.1} ms, p90 {:.1} ms)",
        base.len(),
        percentile_ms(&mut base, 50.0),
        percentile_ms(&mut base, 90.0)
    );

    // Direct: from the client pod to the target pod's address.
    let (target_ns, target_ip) = pod_netns(&lab, "target")?;
    let (client_ns, _) = pod_netns(&lab, "client")?;
    let addr: SocketAddr = format!("{target_ip}:5201").parse()?;
    let s = sink(&target_ns, 5201)?;
    let client_path = weft_netlink::ns::path(&client_ns);
    let direct = push(
        move || {
            weft_netlink::ns::run_in(Some(&client_path), move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            })
            .map_err(std::io::Error::other)?
        },
        s,
    )?;
    println!("64 MiB to a pod directly (pod to pod, one node): {direct:.0} MiB/s");

    // Through kubectl port-forward (kubectl -> API server -> the pod's loopback).
    let local = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let s = sink(&target_ns, 5202)?;
    let pf_log = lab.home.path().join("port-forward.log");
    let mut pf = kubectl()
        .args(["port-forward", "pod/target", &format!("{local}:5202")])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&pf_log)?)
        .spawn()?;
    // kubectl says "Forwarding from ..." once it listens (no probe connection: that would be
    // forwarded to the sink).
    let out = pf.stdout.take().context("kubectl's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::io::BufReader::new(out);
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut out, &mut line);
        let _ = tx.send(line);
        // Read on to kubectl's end: a closed pipe would kill it at its next line.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    let forwarded = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(l) if l.contains("Forwarding from") => push(|| TcpStream::connect(("127.0.0.1", local)), s),
        other => Err(anyhow::anyhow!("kubectl port-forward did not start: {other:?}")),
    };
    let _ = pf.kill();
    let _ = pf.wait();
    let forwarded = forwarded.with_context(|| {
        format!("kubectl port-forward said: {}", std::fs::read_to_string(&pf_log).unwrap_or_default())
    })?;
    println!("64 MiB through kubectl port-forward: {forwarded:.0} MiB/s = {:.2}x direct", forwarded / direct);
    Ok(())
}
