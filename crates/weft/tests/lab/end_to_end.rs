//! The lab end to end: seed 000's pod networking model, in routed and VXLAN modes, the seeds'
//! workloads, and a daemon killed with `kill -9`.

use serde_json::Value;
use weft_testkit::Lab;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: srv-a, labels: {app: srv}}
spec:
  nodeName: node-1
  containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: srv-b, labels: {app: srv}}
spec:
  nodeName: node-2
  containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
"#;

fn ip(p: &Value) -> String {
    p["status"]["podIP"].as_str().unwrap().to_string()
}

fn by_name<'a>(pods: &'a [Value], name: &str) -> &'a Value {
    pods.iter().find(|p| p["metadata"]["name"] == name).unwrap()
}

/// The echo server's JSON answer on port 8080 of `to`, asked from `from`.
fn ask(lab: &Lab, from: &[&str], to: &str) -> Value {
    lab.http_json(from, &format!("http://{to}:8080/"))
}

fn pod_networking_model(overlay: &str) {
    let lab = Lab::up(&["--nodes", "3", "--overlay", overlay]);
    lab.apply_str(PODS);
    let pods = lab.wait_running("default", 3);
    let nodes: Value = serde_json::from_str(&lab.weft_ok(&["get", "nodes", "-o", "json"])).unwrap();
    // Every pod has an IP from its node's podCIDR.
    for p in &pods {
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let n = nodes["items"].as_array().unwrap().iter().find(|n| n["metadata"]["name"] == node).unwrap();
        let cidr: ipnet::Ipv4Net = n["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
        assert!(cidr.contains(&ip(p).parse::<std::net::Ipv4Addr>().unwrap()), "{} not in {cidr}", ip(p));
    }
    let (a, b, c) = (ip(by_name(&pods, "srv-a")), ip(by_name(&pods, "srv-b")), ip(by_name(&pods, "client")));
    // Same node, and across nodes: the server sees the client pod's own IP (no NAT).
    let r = ask(&lab, &["client"], &a);
    assert_eq!((r["pod"].as_str(), r["clientIP"].as_str()), (Some("srv-a"), Some(c.as_str())));
    let r = ask(&lab, &["client"], &b);
    assert_eq!(
        (r["pod"].as_str(), r["clientIP"].as_str()),
        (Some("srv-b"), Some(c.as_str())),
        "{overlay}: cross-node without NAT"
    );
    // Nodes reach pods (also a node without pods), pods reach nodes.
    assert_eq!(ask(&lab, &["--node", "node-3"], &a)["pod"], "srv-a");
    assert_eq!(ask(&lab, &["--node", "node-1"], &b)["pod"], "srv-b");
    for node_ip in ["172.18.0.10", "172.18.0.11", "172.18.0.12"] {
        assert!(
            lab.exec(&["client"], &["ping", "-c", "1", "-W", "2", node_ip]).status.success(),
            "client -> {node_ip}"
        );
    }
    // The path as seeds 002 and 003 show it: eth0 with the pod IP, default via the bridge.
    let addr = lab.exec_ok(&["client"], &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {c}/24")), "{addr}");
    let gw = {
        let o = c.rsplit_once('.').unwrap().0;
        format!("{o}.1")
    };
    let routes = lab.exec_ok(&["client"], &["ip", "route"]);
    assert!(routes.contains(&format!("default via {gw} dev eth0")), "{routes}");
    let br = lab.exec_ok(&["--node", "node-1"], &["ip", "-o", "addr", "show", "cni0"]);
    assert!(br.contains(&format!("inet {gw}/24")), "{br}");
    let ports = lab.exec_ok(&["--node", "node-1"], &["ip", "-o", "link", "show", "master", "cni0"]);
    // One veth per pod on the node: ours, and the cluster DNS pod if it landed there.
    let on_node_1 = lab
        .pods("default")
        .iter()
        .chain(&lab.pods("kube-system"))
        .filter(|p| p["spec"]["nodeName"] == "node-1")
        .count();
    assert_eq!(ports.lines().filter(|l| l.contains("veth")).count(), on_node_1, "{ports}");
    if overlay == "vxlan" {
        let vx = lab.exec_ok(&["--node", "node-1"], &["ip", "-d", "link", "show", "flannel.1"]);
        assert!(vx.contains("mtu 1450") && vx.contains("vxlan id 1") && vx.contains("dstport 8472"), "{vx}");
        let fdb = lab.exec_ok(&["--node", "node-1"], &["bridge", "fdb", "show", "dev", "flannel.1"]);
        assert!(fdb.contains("dst 172.18.0.11") && fdb.contains("dst 172.18.0.12"), "{fdb}");
        assert!(lab.exec_ok(&["--node", "node-1"], &["ip", "link", "show", "cni0"]).contains("mtu 1450"));
    } else {
        let r = lab.exec_ok(&["--node", "node-1"], &["ip", "route"]);
        assert!(r.contains("10.244.1.0/24 via 172.18.0.11 dev eth0"), "{r}");
    }
    // Pods got the cluster's resolv.conf and their own hostname.
    let resolv = lab.exec_ok(&["client"], &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"), "{resolv}");
    assert_eq!(lab.exec_ok(&["client"], &["hostname"]).trim(), "client");
    // The external host reaches nodes but not pods (no route to the pod network).
    assert!(lab.exec(&["--external"], &["ping", "-c", "1", "-W", "2", "172.18.0.11"]).status.success());
    assert!(!lab.exec(&["--external"], &["curl", "-s", "-m", "1", &format!("http://{a}:8080/")]).status.success());
}

#[test]
fn pod_networking_model_routed() {
    pod_networking_model("routed");
}

#[test]
fn pod_networking_model_vxlan() {
    pod_networking_model("vxlan");
}

#[test]
fn seed_workloads_run_spread_over_nodes() {
    let lab = Lab::up(&["--nodes", "3"]);
    let seeds = format!("{}/../../examples/seeds", env!("CARGO_MANIFEST_DIR"));
    lab.weft_ok(&["apply", "-f", &format!("{seeds}/busybox-rc.yaml")]);
    lab.weft_ok(&["apply", "-f", &format!("{seeds}/nginx-deployment.yaml")]);
    let pods = lab.wait_running("default", 3);
    let busy: Vec<&Value> = pods.iter().filter(|p| p["metadata"]["labels"]["app"] == "busybox0").collect();
    assert_eq!(busy.len(), 2);
    assert_ne!(busy[0]["spec"]["nodeName"], busy[1]["spec"]["nodeName"], "the two replicas on different nodes");
    // Scale the deployment up and down through kubectl's scale subresource path.
    lab.weft_ok(&["apply", "-f", &format!("{seeds}/nginx-deployment.yaml")]);
    let k = lab.kubectl_ok(&["scale", "deployment/nginx-loadbalancer", "--replicas=3"]);
    assert!(k.contains("scaled"));
    let pods = lab.wait_running("default", 5);
    let nodes: std::collections::HashSet<&str> = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["run"] == "nginx-loadbalancer")
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "three replicas on three nodes");
    lab.kubectl_ok(&["scale", "deployment/nginx-loadbalancer", "--replicas=1"]);
    lab.wait_running("default", 3);
    let d = lab.kubectl_ok(&["get", "deploy", "nginx-loadbalancer"]);
    assert!(d.contains("1/1"), "{d}");
    // Deleting the RC takes its pods with it (owner references).
    lab.weft_ok(&["delete", "rc", "busybox0"]);
    lab.wait_running("default", 1);
    // Logs are served through the API.
    let log_pod = lab.pods("default")[0]["metadata"]["name"].as_str().unwrap().to_string();
    lab.kubectl_ok(&["logs", &log_pod]);
}

#[test]
fn kill_9_keeps_pods_and_down_leaves_nothing() {
    let lab = Lab::up(&["--nodes", "2", "--overlay", "routed"]);
    lab.apply_str(PODS);
    let before = lab.wait_running("default", 3);
    let a = ip(by_name(&before, "srv-a"));
    let pid = lab.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    lab.wait_for("the daemon to be gone", 10, || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Pods keep answering without the daemon.
    assert_eq!(ask(&lab, &["--node", "node-2"], &a)["pod"], "srv-a");
    assert_eq!(ask(&lab, &["client"], &a)["pod"], "srv-a");
    // Restart: same pods, same addresses, no duplicates.
    lab.weft_ok(&["up"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let after = lab.wait_running("default", 3);
    for p in &before {
        let q = by_name(&after, p["metadata"]["name"].as_str().unwrap());
        assert_eq!(ip(p), ip(q), "address kept");
        assert_eq!(p["metadata"]["uid"], q["metadata"]["uid"]);
    }
    let state = lab.state_dir();
    // Our three pods and the cluster DNS pod.
    let all = 3 + lab.pods("kube-system").len();
    let sandboxes = std::fs::read_dir(state.join("pods")).unwrap().count();
    assert_eq!(sandboxes, all, "one sandbox per pod");
    let shims =
        std::process::Command::new("pgrep").args(["-f", &format!("{}/pods/", state.display())]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&shims.stdout).lines().count(), all, "one shim per pod");
    assert_eq!(ask(&lab, &["client"], &a)["pod"], "srv-a");
    // And `weft down` leaves nothing behind.
    lab.weft_ok(&["down"]);
    assert!(lab.netns_left().is_empty(), "{:?}", lab.netns_left());
    let shims =
        std::process::Command::new("pgrep").args(["-f", &format!("{}/pods/", state.display())]).output().unwrap();
    assert!(String::from_utf8_lossy(&shims.stdout).trim().is_empty(), "no shim left");
    assert!(!state.exists());
}

#[test]
fn probes_restarts_and_logs() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ready}
spec:
  containers:
  - name: web
    image: weft/echo
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: never-ready}
spec:
  containers:
  - name: web
    image: weft/echo
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: crashy}
spec:
  containers:
  - {name: c, image: busybox, command: ["sh", "-c", "echo hello from crashy; exit 3"]}
"#,
    );
    let cond =
        |p: &Value| p["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
    lab.wait_for("probe results", 30, || {
        let pods = lab.pods("default");
        let r = pods.iter().find(|p| p["metadata"]["name"] == "ready").and_then(cond);
        let n = pods.iter().find(|p| p["metadata"]["name"] == "never-ready");
        r.is_some_and(|c| c["status"] == "True")
            && n.is_some_and(|p| p["status"]["phase"] == "Running" && cond(p).is_some_and(|c| c["status"] == "False"))
    });
    lab.wait_for("crashy to be restarted", 30, || {
        lab.pods("default").iter().any(|p| {
            p["metadata"]["name"] == "crashy"
                && p["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0) >= 1
        })
    });
    let logs = lab.weft_ok(&["logs", "crashy"]);
    assert!(logs.contains("hello from crashy"), "{logs}");
    let k = lab.kubectl_ok(&["logs", "crashy", "--tail=1"]);
    assert_eq!(k.trim(), "hello from crashy");
    let wide = lab.kubectl_ok(&["get", "pods"]);
    assert!(wide.lines().any(|l| l.starts_with("never-ready") && l.contains("0/1")), "{wide}");
}
