//! What a pod's processes may do, checked with real processes in a lab: containers get
//! containerd's default capabilities (no SYS_ADMIN, no NET_ADMIN unless added) and no_new_privs,
//! a PID namespace of the pod's own (so `ps` shows the pod, and the daemon cannot be signalled),
//! and no way into the host's network namespace; the API token is out of reach; CoreDNS's image
//! in a user's pod is just a pod. Exec probes run inside the pod with their timeout, and a hung
//! one does not hold up another pod's readiness.

use std::time::{Duration, Instant};

use weft_testkit::Lab;

/// Reports what the container can see and do, then idles.
fn report_script(daemon_pid: i32, state_dir: &str) -> String {
    format!(
        r#"grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status
echo "procs: $(ls /proc | grep -E '^[0-9]+$' | tr '\n' ' ')"
echo "ps: $(ps -e -o pid= | tr -s ' \n' ' ')"
if kill -0 {daemon_pid} 2>/tmp/kill.err; then echo "kill=ok"; else echo "kill=failed $(cat /tmp/kill.err)"; fi
if nsenter --net=/proc/1/ns/net ip link >/dev/null 2>&1; then echo "nsenter=ok"; else echo "nsenter=failed"; fi
if ip link add v0 type veth peer name v1 2>/dev/null; then echo "linkadd=ok"; else echo "linkadd=failed"; fi
if cat {state_dir}/kubeconfig >/dev/null 2>&1; then echo "token=readable"; else echo "token=hidden"; fi
echo "report-done"
exec sleep 3600"#
    )
}

fn pod(name: &str, node: &str, script: &str, security: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", {script}]
    {security}
"#
    )
}

fn report(lab: &Lab, pod: &str) -> String {
    let mut log = String::new();
    lab.wait_for(&format!("{pod}'s report"), 60, || {
        log = String::from_utf8_lossy(&lab.weft(&["logs", pod]).stdout).to_string();
        log.contains("report-done")
    });
    log
}

fn field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {log}")).trim()
}

fn caps(log: &str, key: &str) -> u64 {
    u64::from_str_radix(field(log, key), 16).unwrap()
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;
/// containerd's (and Docker's) default set.
const DEFAULT_CAPS: u64 = 0xa80425fb;

#[test]
fn pods_are_confined() {
    let lab = Lab::up(&[]);
    let daemon = lab.daemon_pid();
    let state = lab.state_dir().display().to_string();
    let script = report_script(daemon, &state);
    lab.apply_str(&pod("plain", "node-1", &script, ""));
    lab.apply_str(&pod(
        "netadmin",
        "node-2",
        &script,
        "securityContext: {capabilities: {add: [NET_ADMIN], drop: [CHOWN]}, allowPrivilegeEscalation: true}",
    ));

    let log = report(&lab, "plain");
    eprintln!("plain:\n{log}");
    let eff = caps(&log, "CapEff:");
    assert_eq!(eff, DEFAULT_CAPS, "CapEff {eff:x}");
    assert_eq!(eff & (CAP_SYS_ADMIN | CAP_NET_ADMIN), 0);
    assert_eq!(caps(&log, "CapBnd:"), DEFAULT_CAPS);
    assert_eq!(field(&log, "NoNewPrivs:"), "1");
    // Its own PID namespace: pid 1 is the pod's shim, then the container's shell and the
    // commands of the script (a pipeline, a command substitution); nothing of the host's.
    let own = |v: &[u32]| v.contains(&1) && v.len() <= 8 && v.iter().all(|p| *p < 64);
    let procs: Vec<u32> = field(&log, "procs:").split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(own(&procs), "procs {procs:?}");
    let ps: Vec<u32> = field(&log, "ps:").split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(own(&ps), "ps {ps:?}");
    let kill = field(&log, "kill=");
    assert!(kill.starts_with("failed") && kill.contains("No such process"), "kill -0 {daemon}: {kill}");
    assert_eq!(field(&log, "nsenter="), "failed");
    assert_eq!(field(&log, "linkadd="), "failed");
    assert_eq!(field(&log, "token="), "hidden");

    let log = report(&lab, "netadmin");
    eprintln!("netadmin:\n{log}");
    let eff = caps(&log, "CapEff:");
    assert_eq!(eff, (DEFAULT_CAPS | CAP_NET_ADMIN) & !1, "CapEff {eff:x}");
    assert_eq!(field(&log, "NoNewPrivs:"), "0");
    assert_eq!(field(&log, "linkadd="), "ok");
    assert_eq!(field(&log, "nsenter="), "failed");
    // The link was made in the pod's namespace, not the node's or the host's.
    let pod_links = lab.exec_ok(&["netadmin"], &["ip", "-br", "link"]);
    assert!(pod_links.contains("v0@v1"), "{pod_links}");
    let node_links = lab.exec_ok(&["--node", "node-2"], &["ip", "-br", "link"]);
    assert!(!node_links.contains("v0@v1"), "{node_links}");
}

/// A user's pod whose image is CoreDNS's is just a pod: it runs the echo server on its ports, as
/// any image without a command does (the lab's DNS is weft's image, deploy/dns.yaml).
#[test]
fn a_coredns_image_is_just_a_pod() {
    let lab = Lab::up(&[]);
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: fake-dns, labels: {k8s-app: kube-dns}}
spec:
  nodeName: node-1
  containers:
  - {name: coredns, image: "registry.k8s.io/coredns/coredns:v1.11.3", ports: [{containerPort: 8080}]}
"#,
    );
    let pods = lab.wait_running("default", 1);
    let ip = pods[0]["status"]["podIP"].as_str().unwrap().to_string();
    let v = lab.http_json(&["--node", "node-1"], &format!("http://{ip}:8080/"));
    assert_eq!(v["pod"], "fake-dns");
    // The lab's own still runs, and only those pods are behind kube-dns.
    let kube_dns = lab.pods("kube-system");
    assert!(kube_dns.iter().any(|p| p["status"]["phase"] == "Running"));
    assert!(kube_dns.iter().all(|p| p["spec"]["containers"][0]["image"] == "weft:latest"), "{kube_dns:?}");
}

/// Processes whose parent chain reaches `root` and whose command line is `argv`.
fn descendants_running(root: u32, argv: &[&str]) -> usize {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let parent = |pid: u32| -> Option<u32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s[s.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| {
            let mut p = *pid;
            for _ in 0..16 {
                match parent(p) {
                    Some(q) if q == root => return true,
                    Some(q) if q > 1 => p = q,
                    _ => return false,
                }
            }
            false
        })
        .count()
}

fn ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[test]
fn a_hung_exec_probe_times_out_and_holds_up_no_other_pod() {
    let lab = Lab::up(&[]);
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hung}
spec:
  nodeName: node-2
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    readinessProbe: {exec: {command: ["sleep", "100"]}, timeoutSeconds: 1, periodSeconds: 1}
"#,
    );
    // Let the hung probe start.
    lab.wait_for("the hung pod's probe", 30, || {
        lab.pods("default").iter().any(|p| p["metadata"]["name"] == "hung" && p["status"]["phase"] == "Running")
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    lab.apply_str(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: quick}
spec:
  nodeName: node-2
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    readinessProbe: {exec: {command: ["sh", "-c", "test -d /proc/1 && ps -e -o pid= | grep -qx ' *1'"]}, periodSeconds: 1}
"#,
    );
    lab.wait_for("the quick pod to be Ready", 30, || {
        lab.pods("default").iter().any(|p| p["metadata"]["name"] == "quick" && ready(p))
    });
    let took = t.elapsed();
    eprintln!("quick Ready {took:?} after it was applied, next to a hung probe");
    assert!(took < Duration::from_secs(6), "quick took {took:?}");
    // The hung probe is killed at its timeout: at most the current one (and one being killed)
    // runs, and the pod is not Ready.
    std::thread::sleep(Duration::from_secs(3));
    let sb: serde_json::Value = lab.pods("default").into_iter().find(|p| p["metadata"]["name"] == "hung").unwrap();
    assert!(!ready(&sb));
    let uid = sb["metadata"]["uid"].as_str().unwrap();
    let sandbox: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_dir().join("pods").join(uid).join("sandbox.json")).unwrap())
            .unwrap();
    let shim = sandbox["shim_pid"].as_u64().unwrap() as u32;
    let mut most = 0;
    for _ in 0..20 {
        let n = descendants_running(shim, &["sleep", "100"]);
        assert!(n <= 2, "{n} hung probes running under the shim {shim}");
        most = most.max(n);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most >= 1, "the exec probe does not run in the pod (under its shim {shim})");
}

/// A node holds its `allocatable.pods` (110, the lab's two DNS pods and its ingress controller
/// among them): the rest stay Pending, Unschedulable, in kube-scheduler's words.
#[test]
fn a_full_node_leaves_the_rest_pending_unschedulable() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.apply_str(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: many}
spec:
  replicas: 112
  selector: {matchLabels: {app: many}}
  template:
    metadata: {labels: {app: many}}
    spec: {containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]}
"#,
    );
    let mut last = vec![];
    lab.wait_for("110 pods bound (107, the DNS's 2, the ingress controller) and 5 unschedulable", 120, || {
        last = lab.pods("default");
        last.extend(lab.pods("kube-system"));
        let bound = last.iter().filter(|p| p["spec"]["nodeName"].is_string()).count();
        let unschedulable = last
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Pending"
                    && p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter().any(|c| {
                            c["type"] == "PodScheduled"
                                && c["status"] == "False"
                                && c["reason"] == "Unschedulable"
                                && c["message"] == "0/1 nodes are available: 1 Too many pods."
                        })
                    })
            })
            .count();
        last.len() == 115 && bound == 110 && unschedulable == 5
    });
}
