//! What a hostile or careless object must not do to a lab: take other Services down, brick the
//! store, or write when asked for a dry run.

use serde_json::Value;
use weft_testkit::Lab;

const COLLIDING: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: b}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: first}
spec:
  selector: {app: a}
  externalIPs: [172.18.100.5]
  ports: [{port: 80, targetPort: 8080}]
"#;

const SECOND: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: second}
spec:
  selector: {app: b}
  externalIPs: [172.18.100.5]
  ports: [{port: 80, targetPort: 8080}]
"#;

const THIRD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: third}
spec:
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.weft_ok(&a)).unwrap()
}

#[test]
fn two_colliding_services_take_no_other_service_down() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "weft-config",
        "-n",
        "kube-system",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"externalIPCIDRs":"172.18.100.0/24"}}"#,
    ]);
    lab.apply_str(COLLIDING);
    lab.wait_running("default", 2);
    // Creation times have a resolution of a second: `second` is younger than `first`.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    lab.apply_str(SECOND);
    lab.apply_str(THIRD);
    let third = json(&lab, &["get", "svc", "third"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    for node in ["node-1", "node-2"] {
        lab.wait_for(&format!("the unrelated Service answering on {node}"), 20, || {
            lab.exec(&["--node", node], &["curl", "-s", "-m", "2", &format!("http://{third}/")])
                .stdout
                .starts_with(b"{")
        });
        assert_eq!(lab.http_json(&["--node", node], &format!("http://{third}/"))["pod"], "b");
        // The older Service keeps the contested address.
        assert_eq!(lab.http_json(&["--node", node], "http://172.18.100.5/")["pod"], "a");
    }
    // The younger one is told why, and every node's proxy says it is fine.
    lab.wait_for("an AddressConflict event", 20, || {
        json(&lab, &["get", "events"])["items"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "AddressConflict"
                && e["involvedObject"]["name"] == "second"
                && e["message"].as_str().unwrap().contains("default/first")
        })
    });
    for n in json(&lab, &["get", "nodes"])["items"].as_array().unwrap() {
        let conds = n["status"]["conditions"].as_array().unwrap();
        let c = conds.iter().find(|c| c["type"] == "ServiceProxyReady").expect("a ServiceProxyReady condition");
        assert_eq!(c["status"], "True", "{c}");
        assert!(conds.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"), "Ready kept: {conds:?}");
    }
    // When the older Service goes, the younger one takes the address over.
    lab.weft_ok(&["delete", "svc", "first"]);
    lab.wait_for("the address handed over", 20, || {
        let out = lab.exec(&["--node", "node-1"], &["curl", "-s", "-m", "2", "http://172.18.100.5/"]).stdout;
        serde_json::from_slice::<Value>(&out).is_ok_and(|v| v["pod"] == "b")
    });
    assert!(lab.weft_ok(&["status"]).contains("proxy:      node-1 ok"));
}

fn deep_configmap(name: &str, depth: usize) -> String {
    let mut v = serde_json::json!("bottom");
    for _ in 0..depth {
        v = serde_json::json!({"x": v});
    }
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "extra": v}).to_string()
}

#[test]
fn a_deep_object_and_a_restart_leave_the_lab_working() {
    let lab = Lab::up(&["--nodes", "0"]);
    let file = |name: &str, text: String| {
        let p = lab.home.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // 126 levels: what bricked the store. Refused with a reason.
    let deep = file("deep.json", deep_configmap("deep", 126));
    let out = lab.kubectl(&["create", "--validate=false", "-f", &deep]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("levels deep"), "{}", String::from_utf8_lossy(&out.stderr));
    // As deep as allowed: kept, and the store opens again after a kill -9.
    let ok = file("ok.json", deep_configmap("ok", 97));
    lab.kubectl_ok(&["create", "--validate=false", "-f", &ok]);
    let pid = lab.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    lab.wait_for("the daemon gone", 10, || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    lab.weft_ok(&["up"]);
    assert!(lab.kubectl_ok(&["get", "cm", "ok", "-o", "name"]).contains("configmap/ok"));
    assert!(lab.weft_ok(&["get", "cm"]).contains("ok"));
}

#[test]
fn kubectl_dry_runs_and_diff_write_nothing() {
    let lab = Lab::up(&["--nodes", "0"]);
    let cm = |v: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {v}}}\n");
    let path = lab.home.path().join("c.yaml");
    std::fs::write(&path, cm("one")).unwrap();
    let f = path.to_str().unwrap();
    lab.kubectl_ok(&["apply", "-f", f]);
    let rv = || lab.kubectl_ok(&["get", "cm", "c", "-o", "jsonpath={.metadata.resourceVersion}:{.data.k}"]);
    let before = rv();
    std::fs::write(&path, cm("two")).unwrap();
    let out = lab.kubectl(&["diff", "-f", f]);
    assert_eq!(out.status.code(), Some(1), "diff shows a difference: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("+  k: two"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = lab.kubectl_ok(&["apply", "--dry-run=server", "-f", f]);
    assert!(out.contains("(server dry run)"), "{out}");
    lab.kubectl_ok(&["delete", "--dry-run=server", "cm", "c"]);
    assert_eq!(rv(), before, "nothing written");
    // A typo is refused as kube-apiserver refuses it (kubectl asks for strict validation).
    std::fs::write(&path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndta: {k: v}\n").unwrap();
    let out = lab.kubectl(&["apply", "-f", f]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"dta\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn state_is_private_and_down_removes_only_what_weft_made() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::up(&["--nodes", "0"]);
    let dir = lab.state_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in ["store.redb", "weft.log", "config.json", "kubeconfig"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // A directory that is not weft's is refused, and never removed.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("precious"), b"data").unwrap();
    let other = Lab::unstarted(&format!("{}-x", lab.name));
    let out = other.weft(&["up", "--nodes", "0", "--state-dir", foreign.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not made by weft"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(foreign.path().join("precious").exists());
    // A lab whose marker is gone: down leaves its directory.
    std::fs::remove_file(dir.join(".weft-lab")).unwrap();
    lab.weft_ok(&["down"]);
    assert!(dir.exists(), "left in place");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PATH like this machine's with every program but `nft`: a machine without the nftables
/// package, for the daemon and everything it starts.
fn path_without_nft() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in std::env::var("PATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name != "nft" && !dir.path().join(&name).exists() {
                let _ = std::os::unix::fs::symlink(e.path(), dir.path().join(&name));
            }
        }
    }
    dir
}

#[test]
fn a_lab_comes_up_and_serves_services_without_the_nft_command() {
    let lab = Lab::unstarted(&format!("weft-t{}-nonft", std::process::id()));
    let path = path_without_nft();
    assert!(!path.path().join("nft").exists());
    let out = lab.weft_cmd().args(["up", "--nodes", "2"]).env("PATH", path.path()).output().unwrap();
    assert!(out.status.success(), "weft up without nft: {}", String::from_utf8_lossy(&out.stderr));
    lab.apply_str(NO_NFT_APP);
    lab.wait_running("default", 1);
    let v: Value = serde_json::from_str(&lab.weft_ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    let vip = v["spec"]["clusterIP"].as_str().unwrap().to_string();
    // The ClusterIP from the other node, and the NodePort from the external host.
    lab.wait_for("the Service from node-2", 20, || {
        lab.exec(&["--node", "node-2"], &["curl", "-s", "-m", "2", &format!("http://{vip}/")]).status.success()
    });
    assert_eq!(lab.http_json(&["--node", "node-2"], &format!("http://{vip}/"))["pod"], "web");
    assert_eq!(lab.http_json(&["--external"], "http://172.18.0.11:30780/")["pod"], "web");
}

const NO_NFT_APP: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30780}]
"#;

const GUARDED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: guarded}
spec:
  type: LoadBalancer
  selector: {app: web}
  loadBalancerSourceRanges: [172.18.0.2/32]
  ports: [{port: 80, targetPort: 8080, nodePort: 30777}]
"#;

#[test]
fn source_ranges_guard_load_balancers_and_node_ports_skip_loopback() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(GUARDED);
    lab.wait_running("default", 1);
    let mut lb = String::new();
    lab.wait_for("a LoadBalancer address", 20, || {
        lb = json(&lab, &["get", "svc", "guarded"])["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !lb.is_empty()
    });
    let url = format!("http://{lb}/");
    let reaches = |lab: &Lab| lab.exec(&["--external"], &["curl", "-s", "-m", "2", &url]).status.success();
    // The external host (172.18.0.2) is in the range.
    lab.wait_for("the allowed source to get through", 20, || reaches(&lab));
    // Out of range now: dropped.
    lab.kubectl_ok(&[
        "patch",
        "svc",
        "guarded",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"loadBalancerSourceRanges":["10.0.0.0/8"]}}"#,
    ]);
    lab.wait_for("the source to be dropped", 20, || !reaches(&lab));
    // The node port is not guarded (as kube-proxy), but answers only on the node's addresses.
    lab.wait_for("the node port", 20, || {
        lab.exec(&["--node", "node-1"], &["curl", "-s", "-m", "2", "http://172.18.0.10:30777/"]).status.success()
    });
    let lo = lab.exec(&["--node", "node-1"], &["curl", "-s", "-m", "2", "http://127.0.0.1:30777/"]);
    assert!(!lo.status.success(), "a node port on 127.0.0.1: {}", String::from_utf8_lossy(&lo.stdout));
}
