//! lab-bench: how fast a lab comes up and runs pods, and what pod traffic costs.
//! Prints: `weft up` to ready for 3 and 10 nodes; applying 100 pods to all Running with IPs,
//! then `weft down` of that lab;
//! TCP throughput pod to pod on one node, across nodes routed, across nodes over VXLAN, each as a
//! ratio to a bare veth pair between two namespaces measured in the same run.
//!
//! Usage: lab-bench (needs root; makes and removes its own labs and namespaces)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use weft_bench::{Lab, LabOptions};
use weft_testkit::Netns;
use weft_testkit::objects::{pod, sleeper};

const STREAM_SECS: f64 = 3.0;

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> weft_netlink::ns::NsThread<T> {
    weft_netlink::ns::spawn_in(Some(&weft_netlink::ns::path(ns)), f).expect("netns")
}

/// Bulk TCP from namespace `from` to a receiver in namespace `to` on `addr`; Gbit/s.
fn throughput(from: &str, to: &str, addr: SocketAddr) -> Result<f64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let recv = in_ns(to, move || -> std::io::Result<u64> {
        let l = TcpListener::bind(addr)?;
        tx.send(()).unwrap();
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    rx.recv()?;
    let send = in_ns(from, move || -> std::io::Result<(u64, f64)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        let buf = vec![7u8; 256 << 10];
        let start = Instant::now();
        let mut sent = 0u64;
        // Bounded by time.
        while start.elapsed().as_secs_f64() < STREAM_SECS {
            s.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok((sent, start.elapsed().as_secs_f64()))
    });
    let (sent, secs) = send.join().unwrap()?;
    let got = recv.join().unwrap()?;
    if got != sent {
        bail!("received {got} of {sent} bytes");
    }
    Ok(sent as f64 * 8.0 / secs / 1e9)
}

fn bare_veth() -> Result<f64> {
    let (a, b) = (Netns::try_new("bench-veth-a")?, Netns::try_new("bench-veth-b")?);
    a.veth("eth0", "10.99.0.1/24", &b, "eth0", "10.99.0.2/24")?;
    throughput(&a.name, &b.name, "10.99.0.2:5201".parse()?)
}

async fn wait_pods(client: &kube::Client, n: usize, limit: Duration) -> Result<Duration> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    while start.elapsed() < limit {
        let pods = api.list(&ListParams::default()).await?;
        let ok = pods
            .items
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some()))
            .count();
        if ok >= n {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("pods were not running within {limit:?}")
}

/// A pod's network namespace and IP, from its sandbox record.
fn pod_netns(lab: &Lab, name: &str) -> Result<(String, String)> {
    let v = lab.sandbox(name)?;
    let (Some(netns), Some(ip)) = (v["netns"].as_str(), v["ips"][0].as_str()) else {
        bail!("the sandbox of {name} has no namespace or address: {v}")
    };
    Ok((netns.into(), ip.into()))
}

async fn pod_pair_rates(overlay: &str) -> Result<(f64, f64)> {
    let name = format!("weft-bench-{overlay}-{}", std::process::id());
    let lab = Lab::start(LabOptions::new().name(&name).nodes(2).args(&["--overlay", overlay]))?;
    let on = |node: &str| json!({"nodeName": node, "containers": [sleeper("c")]});
    lab.apply(&[pod("srv-a", on("node-1")), pod("srv-b", on("node-2")), pod("cli", on("node-1"))]);
    wait_pods(&lab.client().await, 3, Duration::from_secs(60)).await?;
    let (cli, _) = pod_netns(&lab, "cli")?;
    let (a, a_ip) = pod_netns(&lab, "srv-a")?;
    let (b, b_ip) = pod_netns(&lab, "srv-b")?;
    let same = throughput(&cli, &a, format!("{a_ip}:5201").parse()?)?;
    let cross = throughput(&cli, &b, format!("{b_ip}:5202").parse()?)?;
    Ok((same, cross))
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("== lab-bench");
    for nodes in [3, 10] {
        let start = Instant::now();
        let lab =
            Lab::start(LabOptions::new().name(&format!("weft-bench-up{nodes}-{}", std::process::id())).nodes(nodes))?;
        let t = start.elapsed();
        println!("weft up, {nodes:>2} nodes, to ready: {:.2} s", t.as_secs_f64());
        let start = Instant::now();
        drop(lab);
        println!("weft down, {nodes:>2} nodes: {:.2} s", start.elapsed().as_secs_f64());
    }
    {
        let lab = Lab::start(LabOptions::new().name(&format!("weft-bench-pods-{}", std::process::id())).nodes(3))?;
        let client = lab.client().await;
        let f = lab.home.path().join("d.yaml");
        std::fs::write(
            &f,
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: many}\nspec:\n  replicas: 100\n  selector: {matchLabels: {app: many}}\n  template:\n    metadata: {labels: {app: many}}\n    spec: {containers: [{name: c, image: busybox, command: [sleep, \"600\"]}]}\n",
        )?;
        let start = Instant::now();
        if !lab.weft_cmd().args(["apply", "-f"]).arg(&f).stdout(std::process::Stdio::null()).status()?.success() {
            bail!("apply failed");
        }
        wait_pods(&client, 100, Duration::from_secs(300)).await.context("100 pods")?;
        println!("100 pods applied -> all Running with IPs: {:.2} s", start.elapsed().as_secs_f64());
        // Every pod's shim, namespace and file goes (goal: under 5 s).
        let start = Instant::now();
        lab.down(Duration::from_secs(120)).context("weft down with 100 pods")?;
        println!("weft down, 100 pods: {:.2} s", start.elapsed().as_secs_f64());
        if !lab.netns_left().is_empty() {
            bail!("weft down left namespaces: {:?}", lab.netns_left());
        }
    }
    let veth = bare_veth()?;
    println!("TCP throughput, bare veth pair between two namespaces: {veth:.2} Gbit/s");
    let (same, routed) = pod_pair_rates("routed").await?;
    let (_, vxlan) = pod_pair_rates("vxlan").await?;
    println!("TCP throughput, pod to pod on one node:        {same:.2} Gbit/s = {:.2}x bare veth", same / veth);
    println!("TCP throughput, pod to pod across nodes routed: {routed:.2} Gbit/s = {:.2}x bare veth", routed / veth);
    println!("TCP throughput, pod to pod across nodes VXLAN:  {vxlan:.2} Gbit/s = {:.2}x bare veth", vxlan / veth);
    Ok(())
}
