//! cni-bench: weft-cni against the reference `bridge` + `host-local` plugins (Debian's
//! containernetworking-plugins), in the same run. For each plugin and for ipMasq off and on:
//! 100 pods ADDed one after another, then DELeted, each call timed; prints p50/p95 and the ratio.
//! Both run exactly the same way: exec'd with the CNI environment, inside a node namespace the
//! benchmark makes (entered between fork and exec through weft-netlink, no `ip netns exec`
//! wrapper).
//!
//! Usage: cni-bench [PODS] [ROUNDS]   (defaults 100 and 3; needs root)

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use weft_bench::percentile_ms;
use weft_cni::runtime::Invocation;
use weft_testkit::Netns;

fn weft_cni_bin() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    me.parent().unwrap().join("weft-cni")
}

struct Round {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn round(plugin: &Path, ty: &str, masq: bool, pods: usize, tag: &str) -> Result<Round> {
    let node = Netns::try_new(&format!("bench-cni-{tag}-node"))?;
    let pod_ns: Vec<Netns> =
        (0..pods).map(|i| Netns::try_new(&format!("bench-cni-{tag}-p{i}"))).collect::<Result<_>>()?;
    let dir = tempfile::tempdir()?;
    let conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": ty, "bridge": "cnio0", "isGateway": true, "ipMasq": masq,
        "ipam": {"type": "host-local", "dataDir": dir.path().to_str().unwrap(), "ranges": [[{"subnet": "10.88.0.0/16"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let nodef = File::open(node.path())?;
    let mut r = Round { add: vec![], del: vec![] };
    let inv = |cmd: &'static str, i: usize, netns: &str| -> Result<Duration> {
        let id = format!("bench-{i}");
        let t = Instant::now();
        Invocation {
            plugin,
            command: cmd,
            container_id: &id,
            netns,
            ifname: "eth0",
            args: "",
            cni_path: "/usr/lib/cni",
            node_netns: Some(&nodef),
        }
        .run(&conf)
        .map_err(|e| anyhow::anyhow!("{ty} {cmd} pod {i}: {e}"))?;
        Ok(t.elapsed())
    };
    for (i, p) in pod_ns.iter().enumerate() {
        r.add.push(inv("ADD", i, &p.path())?);
    }
    for (i, p) in pod_ns.iter().enumerate() {
        r.del.push(inv("DEL", i, &p.path())?);
    }
    Ok(r)
}

fn main() -> Result<()> {
    let pods: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let reference = Path::new("/usr/lib/cni/bridge");
    if !reference.exists() {
        bail!("the reference plugins are missing: apt-get install containernetworking-plugins");
    }
    let weft = weft_cni_bin();
    println!("== cni-bench: {pods} pods x {rounds} rounds, ADD then DEL, reference bridge+host-local vs weft-cni");
    let mut summary = vec![];
    for masq in [false, true] {
        let mut stats = vec![];
        for (name, bin, ty) in
            [("reference", reference.to_path_buf(), "bridge"), ("weft-cni", weft.clone(), "weft-cni")]
        {
            let (mut add, mut del) = (vec![], vec![]);
            // Alternate-free: each plugin runs its rounds back to back on fresh namespaces.
            for k in 0..rounds {
                let r = round(&bin, ty, masq, pods, &format!("{}{}{k}", &name[..1], masq as u8))?;
                add.extend(r.add);
                del.extend(r.del);
            }
            let s = (
                percentile_ms(&mut add, 50.0),
                percentile_ms(&mut add, 95.0),
                percentile_ms(&mut del, 50.0),
                percentile_ms(&mut del, 95.0),
            );
            println!(
                "ipMasq={masq:<5} {name:<9}  ADD p50 {:6.2} ms  p95 {:6.2} ms   DEL p50 {:6.2} ms  p95 {:6.2} ms",
                s.0, s.1, s.2, s.3
            );
            stats.push(s);
        }
        let (r, w) = (stats[0], stats[1]);
        println!(
            "ipMasq={masq:<5} ratio weft/reference: ADD p50 {:.2}x p95 {:.2}x   DEL p50 {:.2}x p95 {:.2}x   (goal: ADD p50 <= 0.33x)",
            w.0 / r.0,
            w.1 / r.1,
            w.2 / r.2,
            w.3 / r.3
        );
        summary.push(format!("ipMasq={masq} ADD p50 {:.2}x DEL p50 {:.2}x", w.0 / r.0, w.2 / r.2));
    }
    println!("SUMMARY: weft-cni/reference {}", summary.join("; "));
    Ok(())
}
