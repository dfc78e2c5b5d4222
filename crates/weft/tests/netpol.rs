//! NetworkPolicy end to end in a lab (issue 13), proven with real packets.
//!
//! The core is the upstream e2e NetworkPolicy suite (kubernetes/kubernetes,
//! test/e2e/network/netpol: network_policy.go, model.go, reachability.go) reproduced: namespaces
//! x, y and z with pods a, b and c in each, every pod serving TCP and UDP on ports 80 and 81 (one
//! container per port and protocol, ports named `serve-80-tcp` and so on, and a Service
//! `s-<ns>-<pod>` per pod, as upstream's model has), every policy of every upstream case, and
//! after each the full 9x9 reachability matrix probed and compared with the case's truth table,
//! built as upstream builds it (a default, then `expect_peer`, `expect_all_ingress`,
//! `expect_all_egress`, `expect`). As upstream, a pod's traffic to itself is not compared.
//! Probes are sent from inside the client pod's network namespace by this test process: a TCP
//! connection and an HTTP exchange with the built-in echo server (which names the pod that
//! answered), or a UDP datagram and its echo, each bounded by a second; a matrix's 81 probes
//! run in parallel, and a matrix is probed again until it matches or 10 s have passed (policies
//! take a moment to apply, as upstream's retries allow). A matrix that matches at the first
//! probe is probed once more half a second later, so a policy that lands late cannot pass
//! unseen.
//!
//! The pods are spread over three nodes so that both same-node (bridged) and cross-node
//! (routed or VXLAN) pairs exist. The whole suite runs against the default overlay (VXLAN)
//! probing pod addresses; the main cases run again on the routed overlay probing each pod's
//! Service ClusterIP, which is how upstream probes (the policy must see the endpoint pod after
//! the DNAT).
//!
//! Separate tests: seed 001's policy (examples/seeds/network-policy.yaml), egress to a Service
//! (the policy judges the endpoint pod and its port after the DNAT), ingress from outside the
//! cluster through a NodePort (ipBlock with except), and a new pod selected by a deny-all policy
//! never being reachable, even in its first moments.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_testkit::Lab;
use weft_testkit::probe::{self, Answerer, Job, Outcome, Proto};
use weft_testkit::reach::{Peer, Reachability};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// The label the API server puts on every namespace, with its name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most this many probes at once.
const PARALLEL: usize = 48;
/// How long a matrix may take to become what the case expects.
const DEADLINE: Duration = Duration::from_secs(10);
/// A matrix that matched at once is probed again after this long.
const CONFIRM_AFTER: Duration = Duration::from_millis(500);

/// One lab test at a time: they probe with short time-outs on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Objects.

/// A NetworkPolicy as upstream's `GenNetworkPolicyWithNameAndPodSelector` with
/// `SetSpecIngressRules`/`SetSpecEgressRules` makes it: a rule list given (even empty) sets it
/// and adds its type to `policyTypes`.
fn policy(name: &str, selector: Value, ingress: Option<Value>, egress: Option<Value>) -> Value {
    let mut spec = json!({"podSelector": selector});
    let mut types = vec![];
    if let Some(i) = ingress {
        spec["ingress"] = i;
        types.push("Ingress");
    }
    if let Some(e) = egress {
        spec["egress"] = e;
        types.push("Egress");
    }
    spec["policyTypes"] = json!(types);
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec})
}

/// `matchLabels`.
fn labels(pairs: &[(&str, &str)]) -> Value {
    let m: serde_json::Map<String, Value> = pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    json!({"matchLabels": m})
}

/// The empty selector (everything).
fn everything() -> Value {
    json!({})
}

/// One `matchExpressions` requirement.
fn expr(key: &str, op: &str, values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
}

fn pod_sel(pod: &str) -> Value {
    labels(&[("pod", pod)])
}

fn ns_sel(ns: &str) -> Value {
    labels(&[(NAME_LABEL, ns)])
}

/// A pod's containers: one per (port, protocol), as upstream's model makes them.
fn model_containers(ports: &[u16], protos: &[Proto]) -> Value {
    let mut cs = vec![];
    for p in ports {
        for proto in protos {
            let lc = proto.api().to_lowercase();
            cs.push(json!({
                "name": format!("cont-{p}-{lc}"), "image": "weft/echo",
                "ports": [{"containerPort": p, "name": format!("serve-{p}-{lc}"), "protocol": proto.api()}],
            }));
        }
    }
    json!(cs)
}

/// Where each model pod runs: x/a and x/b share node-1 (with z/b and z/c), x/c and y/a are on
/// node-2, y/b, y/c and z/a on node-3; so pairs inside a namespace and across namespaces are both
/// same-node and cross-node.
fn node_of(ns: &str, pod: &str) -> &'static str {
    match (ns, pod) {
        ("x", "a") | ("x", "b") | ("z", "b") | ("z", "c") => "node-1",
        ("x", "c") | ("y", "a") => "node-2",
        _ => "node-3",
    }
}

fn model_manifest() -> String {
    let mut docs = vec![];
    for ns in NAMESPACES {
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    for ns in NAMESPACES {
        for p in PODS {
            docs.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p, "namespace": ns, "labels": {"pod": p}},
                "spec": {"nodeName": node_of(ns, p), "terminationGracePeriodSeconds": 0,
                         "containers": model_containers(&[80, 81], &[Proto::Tcp, Proto::Udp])},
            }));
            let ports: Vec<Value> = [80, 81]
                .iter()
                .flat_map(|port| {
                    [Proto::Tcp, Proto::Udp].map(|pr| {
                        json!({"name": format!("service-port-{}-{port}", pr.api().to_lowercase()),
                               "protocol": pr.api(), "port": port})
                    })
                })
                .collect();
            docs.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s-{ns}-{p}"), "namespace": ns},
                "spec": {"selector": {"pod": p}, "ports": ports},
            }));
        }
    }
    yaml_docs(&docs)
}

/// JSON documents as one YAML stream (a leading comment, or `weft apply` reads the file as one
/// JSON document).
fn yaml_docs(docs: &[Value]) -> String {
    format!("# netpol test objects\n{}", docs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n---\n"))
}

fn get_json(lab: &Lab, args: &[&str]) -> Value {
    let out = lab.kubectl_ok(&[args, &["-o", "json"]].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Writes `v` in the lab's home for a `-f`.
fn manifest_file(lab: &Lab, v: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let f = lab.home.path().join(format!("netpol-{}.json", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&f, v).unwrap();
    f
}

/// Applies a policy in `ns` (create, or update when it exists).
fn apply_in(lab: &Lab, ns: &str, mut p: Value) {
    p["metadata"]["namespace"] = json!(ns);
    lab.apply_str(&p.to_string());
}

/// Replaces a policy in `ns` (an update, as upstream's `UpdatePolicy`).
fn replace_in(lab: &Lab, ns: &str, mut p: Value) {
    p["metadata"]["namespace"] = json!(ns);
    let f = manifest_file(lab, &p.to_string());
    lab.kubectl_ok(&["replace", "-f", f.to_str().unwrap()]);
}

// ---------------------------------------------------------------------------------------------
// The model in a lab.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Probe each pod's own address.
    PodIp,
    /// Probe each pod's Service ClusterIP (upstream's way: the policy sees the pod after DNAT).
    ServiceIp,
}

struct Member {
    ns: &'static str,
    pod: &'static str,
    ip: IpAddr,
    svc: IpAddr,
    netns: PathBuf,
}

impl Member {
    fn name(&self) -> String {
        format!("{}/{}", self.ns, self.pod)
    }
}

struct Model {
    members: Vec<Member>,
}

impl Model {
    fn up(lab: &Lab) -> Model {
        lab.apply_str(&model_manifest());
        let mut members = vec![];
        for ns in NAMESPACES {
            let pods = lab.wait_running(ns, 3);
            let svcs = get_json(lab, &["get", "services", "-n", ns]);
            for p in PODS {
                let pod = pods.iter().find(|v| v["metadata"]["name"] == p).expect("the pod");
                let svc = svcs["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["metadata"]["name"] == format!("s-{ns}-{p}"))
                    .expect("the pod's Service");
                assert_eq!(pod["spec"]["nodeName"], node_of(ns, p));
                let uid = pod["metadata"]["uid"].as_str();
                members.push(Member {
                    ns,
                    pod: p,
                    ip: pod["status"]["podIP"].as_str().unwrap().parse().unwrap(),
                    svc: svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap(),
                    netns: probe::pod_netns(lab, ns, p, uid).unwrap(),
                });
            }
        }
        let m = Model { members };
        for x in &m.members {
            println!("  {:<4} {:<7} pod {:<12} service {}", x.name(), node_of(x.ns, x.pod), x.ip, x.svc);
        }
        m
    }

    fn get(&self, ns: &str, pod: &str) -> &Member {
        self.members.iter().find(|m| m.ns == ns && m.pod == pod).unwrap()
    }

    fn names(&self) -> Vec<String> {
        self.members.iter().map(Member::name).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The suite: cases run in order in one lab, all failures collected.

struct Suite<'l> {
    lab: &'l Lab,
    model: Model,
    via: Via,
    case: String,
    failures: Vec<String>,
    /// kubectl commands that undo the current case's label changes.
    undo: Vec<Vec<String>>,
}

impl<'l> Suite<'l> {
    fn reach(&self, default: bool) -> Reachability {
        Reachability::new(&self.model.names(), default)
    }

    fn observe(&self, port: u16, proto: Proto) -> Vec<Outcome> {
        let mut jobs = vec![];
        for from in &self.model.members {
            for to in &self.model.members {
                let ip = match self.via {
                    Via::PodIp => to.ip,
                    Via::ServiceIp => to.svc,
                };
                jobs.push(Job {
                    netns: from.netns.clone(),
                    addr: SocketAddr::new(ip, port),
                    proto,
                    expect: Some(Answerer::new(to.ns, to.pod)),
                    timeout: PROBE_TIMEOUT,
                });
            }
        }
        probe::probe_all(&jobs, PARALLEL)
    }

    /// Probes the matrix until it is `r` (then once more if that was at once) or the deadline
    /// passes; a failure is recorded with the tables.
    fn validate(&mut self, step: &str, port: u16, proto: Proto, r: &Reachability) -> bool {
        self.validate_with(step, port, proto, r, true)
    }

    /// [`Suite::validate`]; `confirm`: a match at the first probe is probed again a moment later.
    fn validate_with(&mut self, step: &str, port: u16, proto: Proto, r: &Reachability, confirm: bool) -> bool {
        let start = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let c = r.compare(&self.observe(port, proto), true);
            if c.ok() && (tries > 1 || !confirm) {
                println!("    ok   {step}: {proto} {port} ({tries} probes, {:.1} s)", start.elapsed().as_secs_f64());
                return true;
            }
            if c.ok() {
                // At once: maybe before the change took effect; it must still hold a moment later.
                std::thread::sleep(CONFIRM_AFTER);
                continue;
            }
            if start.elapsed() > DEADLINE {
                let msg = format!(
                    "{} [{step}; {proto} port {port}; probing {:?}]: {} wrong after {tries} probes in {:.1} s\n{}",
                    self.case,
                    self.via,
                    c.wrong(),
                    start.elapsed().as_secs_f64(),
                    c.render()
                );
                println!("    FAIL {msg}");
                self.failures.push(msg);
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn create(&self, ns: &str, p: Value) {
        apply_in(self.lab, ns, p);
    }

    fn update(&self, ns: &str, p: Value) {
        replace_in(self.lab, ns, p);
    }

    fn ip(&self, ns: &str, pod: &str) -> IpAddr {
        self.model.get(ns, pod).ip
    }

    fn label_pod(&mut self, ns: &str, pod: &str, key: &str, value: &str) {
        self.lab.kubectl_ok(&["label", "pod", "-n", ns, pod, &format!("{key}={value}"), "--overwrite"]);
        self.undo.push(["label", "pod", "-n", ns, pod, &format!("{key}-")].iter().map(|s| s.to_string()).collect());
    }

    fn label_ns(&mut self, ns: &str, key: &str, value: &str) {
        self.lab.kubectl_ok(&["label", "namespace", ns, &format!("{key}={value}"), "--overwrite"]);
        self.undo.push(["label", "namespace", ns, &format!("{key}-")].iter().map(|s| s.to_string()).collect());
    }

    fn delete_policies(&self) {
        for ns in NAMESPACES {
            self.lab.kubectl_ok(&["delete", "networkpolicies", "--all", "-n", ns]);
        }
    }

    /// No policies, labels as the model made them, and everything reaching everything on both
    /// ports and protocols: the state every case starts from.
    fn reset(&mut self) {
        self.delete_policies();
        for cmd in std::mem::take(&mut self.undo) {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            self.lab.kubectl_ok(&args);
        }
        let all = self.reach(true);
        for (port, proto) in [(80, Proto::Tcp), (81, Proto::Tcp), (80, Proto::Udp), (81, Proto::Udp)] {
            // Only a change (a policy deleted) can make this hold, so at once is good enough.
            self.validate_with("baseline (no policy)", port, proto, &all, false);
        }
    }

    fn run(&mut self, cases: &[Case]) {
        let start = Instant::now();
        for (name, f) in cases {
            self.case = format!("before {name:?}");
            let t = Instant::now();
            self.reset();
            self.case = name.to_string();
            println!("  case {name}");
            let before = self.failures.len();
            f(self);
            let verdict = if self.failures.len() == before { "passed" } else { "FAILED" };
            println!("  {verdict} {name} ({:.1} s)", t.elapsed().as_secs_f64());
        }
        self.case = "after the last case".into();
        self.reset();
        println!("  {} cases in {:.0} s, {} failures", cases.len(), start.elapsed().as_secs_f64(), self.failures.len());
    }
}

type Case = (&'static str, fn(&mut Suite));

// ---------------------------------------------------------------------------------------------
// The cases. Names are upstream's (`f.It(...)` in network_policy.go); "UDP:" marks upstream's UDP
// context, "weft:" cases of weft's own in upstream's manner (endPort, which upstream's file no
// longer has a case for).

fn default_deny_ingress(s: &mut Suite) {
    s.create("x", policy("deny-ingress", everything(), Some(json!([])), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("deny ingress into x", 80, Proto::Tcp, &r);
}

fn default_deny_all(s: &mut Suite) {
    s.create("x", policy("deny-all", everything(), Some(json!([])), Some(json!([]))));
    let mut r = s.reach(true);
    r.expect_peer(Peer::any(), Peer::ns("x"), false).expect_peer(Peer::ns("x"), Peer::any(), false);
    s.validate("deny all in and out of x", 80, Proto::Tcp, &r);
}

fn allow_from_pods_within_namespace(s: &mut Suite) {
    s.create(
        "x",
        policy("x-a-allows-x-b", pod_sel("a"), Some(json!([{"from": [{"podSelector": pod_sel("b")}]}])), None),
    );
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    s.validate("x/a from x/b only", 80, Proto::Tcp, &r);
}

fn allow_ingress_for_a_target(s: &mut Suite) {
    s.create("x", policy("deny-all", everything(), Some(json!([])), None));
    let from_all = json!([{"from": [{"podSelector": {}, "namespaceSelector": {}}]}]);
    s.create("x", policy("allow-all-to-a", pod_sel("a"), Some(from_all), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", true).expect_all_ingress("x/b", false).expect_all_ingress("x/c", false);
    s.validate("x/a open, x/b and x/c closed", 80, Proto::Tcp, &r);
}

fn allow_from_all_namespaces(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": {"matchLabels": {}}}]}]);
    s.create("x", policy("allow-from-another-ns", pod_sel("a"), Some(rule), None));
    let r = s.reach(true);
    s.validate("everything reaches x/a", 80, Proto::Tcp, &r);
}

fn x_a_only_from(s: &mut Suite, name: &str, ns_selector: Value) {
    s.create("x", policy(name, pod_sel("a"), Some(json!([{"from": [{"namespaceSelector": ns_selector}]}])), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false).expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    s.validate("x/a from namespace y only", 80, Proto::Tcp, &r);
}

fn allow_only_from_other_namespace(s: &mut Suite) {
    x_a_only_from(s, "allow-client-a-via-ns-selector", ns_sel("y"));
}

fn pod_selector_match_expressions(s: &mut Suite) {
    let rule = json!([{"from": [{"podSelector": expr("pod", "In", &["b"])}]}]);
    s.create("x", policy("x-a-allows-x-b", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    s.validate("x/a from x/b only", 80, Proto::Tcp, &r);
}

fn namespace_selector_match_expressions(s: &mut Suite) {
    x_a_only_from(s, "allow-ns-y-match-selector", expr(NAME_LABEL, "In", &["y"]));
}

fn pod_selector_or_namespace_selector(s: &mut Suite) {
    let rule =
        json!([{"from": [{"namespaceSelector": expr(NAME_LABEL, "NotIn", &["x"])}, {"podSelector": pod_sel("b")}]}]);
    s.create("x", policy("allow-ns-y-match-selector", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect("x/a", "x/a", false).expect("x/c", "x/a", false);
    s.validate("x/a from other namespaces or x/b", 80, Proto::Tcp, &r);
}

fn pod_selector_and_namespace_selector(s: &mut Suite) {
    let rule =
        json!([{"from": [{"namespaceSelector": expr(NAME_LABEL, "NotIn", &["x"]), "podSelector": pod_sel("b")}]}]);
    s.create("x", policy("allow-ns-y-podselector-and-nsselector", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false).expect("y/b", "x/a", true).expect("z/b", "x/a", true);
    s.validate("x/a from b of other namespaces", 80, Proto::Tcp, &r);
}

fn multiple_pod_and_namespace_selectors(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": expr(NAME_LABEL, "NotIn", &["x"]),
                                 "podSelector": expr("pod", "In", &["b", "c"])}]}]);
    s.create("x", policy("allow-ns-y-z-pod-b-c", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false).expect("y/a", "x/a", false).expect("z/a", "x/a", false);
    s.validate("x/a from b and c of other namespaces", 80, Proto::Tcp, &r);
}

fn any_pod_selectors(s: &mut Suite) {
    let rule = json!([{"from": [{"podSelector": pod_sel("b")}, {"podSelector": pod_sel("c")}]}]);
    s.create("x", policy("allow-ns-x-pod-b-c", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false).expect("x/b", "x/a", true).expect("x/c", "x/a", true);
    s.validate("x/a from x/b and x/c", 80, Proto::Tcp, &r);
}

fn only_from_pod_in_other_namespace(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("a")}]}]);
    s.create("x", policy("allow-ns-y-pod-a-via-namespace-pod-selector", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false).expect("y/a", "x/a", true);
    s.validate("x/a from y/a only", 80, Proto::Tcp, &r);
}

/// x/a accepts namespace y on port 81 only.
fn allow_port_81_from_y() -> Value {
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 81, "protocol": "TCP"}]}]);
    policy("allow-client-a-via-ns-selector", pod_sel("a"), Some(rule), None)
}

fn y_only_into_x_a(s: &Suite) -> Reachability {
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true)
        .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    r
}

fn based_on_ports(s: &mut Suite) {
    s.create("x", allow_port_81_from_y());
    let r = y_only_into_x_a(s);
    s.validate("x/a from y on 81", 81, Proto::Tcp, &r);
}

fn stacked_policies(s: &mut Suite) {
    s.create("x", allow_port_81_from_y());
    let allow = y_only_into_x_a(s);
    s.validate("port 81 from y", 81, Proto::Tcp, &allow);
    let mut deny = s.reach(true);
    deny.expect_all_ingress("x/a", false);
    s.validate("port 80 closed", 80, Proto::Tcp, &deny);
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 80, "protocol": "TCP"}]}]);
    s.create("x", policy("allow-client-a-via-ns-selector-80", pod_sel("a"), Some(rule), None));
    s.validate("a second policy opens 80 to y", 80, Proto::Tcp, &allow);
}

fn allow_all(s: &mut Suite) {
    s.create("x", policy("allow-all", everything(), Some(json!([{}])), None));
    let r = s.reach(true);
    s.validate("allow-all on 80", 80, Proto::Tcp, &r);
    s.validate("allow-all on 81", 81, Proto::Tcp, &r);
}

fn ingress_on_one_named_port(s: &mut Suite) {
    s.create("x", policy("allow-all", everything(), Some(json!([{"ports": [{"port": "serve-81-tcp"}]}])), None));
    let r81 = s.reach(true);
    s.validate("named port serve-81-tcp open", 81, Proto::Tcp, &r81);
    let mut r80 = s.reach(true);
    r80.expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("port 80 closed into x", 80, Proto::Tcp, &r80);
}

fn ingress_from_namespace_on_one_named_port(s: &mut Suite) {
    let rule =
        json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}]);
    s.create("x", policy("allow-client-a-via-ns-selector-80", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false).expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    s.validate("80 open to y", 80, Proto::Tcp, &r);
    let mut fail = s.reach(true);
    fail.expect_all_ingress("x/a", false);
    s.validate("81 closed to all", 81, Proto::Tcp, &fail);
}

fn egress_on_one_named_port(s: &mut Suite) {
    s.create("x", policy("allow-egress", everything(), None, Some(json!([{"ports": [{"port": "serve-80-tcp"}]}]))));
    let r80 = s.reach(true);
    s.validate("egress to serve-80-tcp", 80, Proto::Tcp, &r80);
    let mut r81 = s.reach(true);
    r81.expect_peer(Peer::ns("x"), Peer::any(), false);
    s.validate("no egress on 81", 81, Proto::Tcp, &r81);
}

fn updated_policy(s: &mut Suite) {
    s.create("x", policy("allow-all-mutate-to-deny-all", everything(), Some(json!([{}])), None));
    let r = s.reach(true);
    s.validate("allow all", 81, Proto::Tcp, &r);
    s.update("x", policy("allow-all-mutate-to-deny-all", everything(), Some(json!([])), None));
    let mut deny = s.reach(true);
    deny.expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("updated to deny all", 81, Proto::Tcp, &deny);
}

fn ingress_from_updated_namespace(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": labels(&[("ns2", "updated")])}]}]);
    s.create("x", policy("allow-client-a-via-ns-selector", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false);
    s.validate("no namespace has the label", 80, Proto::Tcp, &r);
    s.label_ns("y", "ns2", "updated");
    let mut with = s.reach(true);
    with.expect_all_ingress("x/a", false).expect_peer(Peer::ns("y"), Peer::any(), true);
    s.validate("y labelled", 80, Proto::Tcp, &with);
}

fn ingress_from_updated_pod(s: &mut Suite) {
    let rule = json!([{"from": [{"podSelector": labels(&[("pod", "b"), ("pod2", "updated")])}]}]);
    s.create("x", policy("allow-client-a-via-pod-selector", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false);
    s.validate("no pod has the label", 80, Proto::Tcp, &r);
    s.label_pod("x", "b", "pod2", "updated");
    let mut with = s.reach(true);
    with.expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    s.validate("x/b labelled", 80, Proto::Tcp, &with);
}

fn deny_ingress_from_other_namespaces(s: &mut Suite) {
    s.create(
        "x",
        policy(
            "deny-empty-policy",
            everything(),
            Some(json!([{"from": [{"podSelector": {"matchLabels": {}}}]}])),
            None,
        ),
    );
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("y"), Peer::ns("x"), false).expect_peer(Peer::ns("z"), Peer::ns("x"), false);
    s.validate("x only from x", 80, Proto::Tcp, &r);
}

fn deny_ingress_to_updated_pod(s: &mut Suite) {
    s.create("x", policy("deny-ingress-via-label-selector", labels(&[("target", "isolated")]), Some(json!([])), None));
    let r = s.reach(true);
    s.validate("nothing selected yet", 80, Proto::Tcp, &r);
    s.label_pod("x", "a", "target", "isolated");
    let mut iso = s.reach(true);
    iso.expect_all_ingress("x/a", false);
    s.validate("x/a labelled and isolated", 80, Proto::Tcp, &iso);
}

fn deny_egress_by_pod_selector(s: &mut Suite) {
    s.create("x", policy("deny-egress-pod-a", pod_sel("a"), None, Some(json!([]))));
    let mut r = s.reach(true);
    r.expect_all_egress("x/a", false);
    s.validate("no egress from x/a", 80, Proto::Tcp, &r);
}

fn deny_egress_from_namespace(s: &mut Suite) {
    s.create("x", policy("deny-egress-ns-x", everything(), None, Some(json!([]))));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    s.validate("no egress from x", 80, Proto::Tcp, &r);
}

fn ingress_and_egress_together(s: &mut Suite) {
    let mut p = policy(
        "allow-client-a-via-pod-selector",
        pod_sel("a"),
        Some(json!([{"from": [{"podSelector": pod_sel("b")}]}])),
        Some(json!([{"ports": [{"port": 80}]}])),
    );
    p["spec"]["policyTypes"] = json!(["Egress", "Ingress"]);
    s.create("x", p);
    let mut r80 = s.reach(true);
    r80.expect_all_ingress("x/a", false).expect("x/b", "x/a", true);
    s.validate("80: x/a from x/b only", 80, Proto::Tcp, &r80);
    let mut r81 = s.reach(true);
    r81.expect_all_ingress("x/a", false).expect_all_egress("x/a", false).expect("x/b", "x/a", true);
    s.validate("81: and no egress from x/a", 81, Proto::Tcp, &r81);
}

fn deny_egress_on_client_side(s: &mut Suite) {
    let egress = json!([{"to": [{"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("a")}]}]);
    s.create("x", policy("allow-to-ns-y-pod-a", pod_sel("a"), None, Some(egress)));
    let ingress = json!([{"from": [{"namespaceSelector": ns_sel("x"), "podSelector": pod_sel("a")}]}]);
    s.create("y", policy("allow-from-xa-on-ya-match-selector", pod_sel("a"), Some(ingress.clone()), None));
    s.create("y", policy("allow-from-xa-on-yb-match-selector", pod_sel("b"), Some(ingress), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::pod("x", "a"), Peer::any(), false)
        .expect_peer(Peer::any(), Peer::pod("y", "a"), false)
        .expect_peer(Peer::pod("x", "a"), Peer::pod("y", "a"), true)
        .expect_peer(Peer::any(), Peer::pod("y", "b"), false);
    s.validate("x/a only to y/a; y/b unreachable", 80, Proto::Tcp, &r);
}

fn egress_to_pod_in_other_namespace(s: &mut Suite) {
    let egress = json!([{"to": [{"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("a")}]}]);
    s.create("x", policy("allow-to-ns-y-pod-a", pod_sel("a"), None, Some(egress)));
    let mut r = s.reach(true);
    r.expect_all_egress("x/a", false).expect("x/a", "y/a", true);
    s.validate("x/a to y/a only", 80, Proto::Tcp, &r);
}

fn any_port_on_a_protocol(s: &mut Suite) {
    s.create(
        "x",
        policy("allow-ingress-by-proto", pod_sel("a"), Some(json!([{"ports": [{"protocol": "TCP"}]}])), None),
    );
    let tcp = s.reach(true);
    s.validate("TCP open", 80, Proto::Tcp, &tcp);
    let mut udp = s.reach(true);
    udp.expect_peer(Peer::any(), Peer::pod("x", "a"), false);
    s.validate("UDP closed", 80, Proto::Udp, &udp);
}

fn ingress_allow_all_precedence(s: &mut Suite) {
    s.create("x", policy("allow-ingress-port-80", everything(), Some(json!([{"ports": [{"port": 80}]}])), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("only 80 open: 81 closed", 81, Proto::Tcp, &r);
    s.create("x", policy("allow-ingress", everything(), Some(json!([{}])), None));
    let all = s.reach(true);
    s.validate("allow-all added", 81, Proto::Tcp, &all);
}

fn egress_allow_all_precedence(s: &mut Suite) {
    s.create("x", policy("allow-egress-port-80", everything(), None, Some(json!([{"ports": [{"port": 80}]}]))));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    s.validate("only 80 out: 81 closed", 81, Proto::Tcp, &r);
    s.create("x", policy("allow-egress", everything(), None, Some(json!([{}]))));
    let all = s.reach(true);
    s.validate("allow-all added", 81, Proto::Tcp, &all);
}

fn stop_enforcing_after_delete(s: &mut Suite) {
    s.create("x", policy("deny-all", everything(), Some(json!([])), Some(json!([]))));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::any(), false).expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("deny all", 80, Proto::Tcp, &r);
    s.delete_policies();
    let all = s.reach(true);
    s.validate("deleted", 80, Proto::Tcp, &all);
}

fn egress_to_cidr(s: &mut Suite) {
    let cidr = format!("{}/32", s.ip("y", "b"));
    s.create(
        "x",
        policy(
            "allow-client-a-via-cidr-egress-rule",
            pod_sel("a"),
            None,
            Some(json!([{"to": [{"ipBlock": {"cidr": cidr}}]}])),
        ),
    );
    let mut r = s.reach(true);
    r.expect_all_egress("x/a", false).expect("x/a", "y/b", true);
    s.validate("x/a to y/b's /32 only", 80, Proto::Tcp, &r);
}

/// The /4 around `ip`, written as its network (upstream writes x/a's address with /4).
fn wide_cidr(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else { panic!("IPv4 only") };
    format!("{}/4", Ipv4Addr::from(u32::from(v4) & 0xf000_0000))
}

fn cidr_except_policy(s: &Suite) -> Value {
    let block = json!({"cidr": wide_cidr(s.ip("x", "a")), "except": [format!("{}/32", s.ip("x", "b"))]});
    policy("allow-client-a-via-cidr-egress-rule", pod_sel("a"), None, Some(json!([{"to": [{"ipBlock": block}]}])))
}

fn except_clause(s: &mut Suite) {
    s.create("x", cidr_except_policy(s));
    let mut r = s.reach(true);
    r.expect("x/a", "x/b", false);
    s.validate("x/b excepted", 80, Proto::Tcp, &r);
}

fn cidr_and_except_overlap(s: &mut Suite) {
    s.create("x", cidr_except_policy(s));
    let mut r = s.reach(true);
    r.expect("x/a", "x/b", false);
    s.validate("x/b excepted", 80, Proto::Tcp, &r);
    let cidr = format!("{}/32", s.ip("x", "b"));
    s.update(
        "x",
        policy(
            "allow-client-a-via-cidr-egress-rule",
            pod_sel("a"),
            None,
            Some(json!([{"to": [{"ipBlock": {"cidr": cidr}}]}])),
        ),
    );
    let mut allow = s.reach(true);
    allow.expect_all_egress("x/a", false).expect("x/a", "x/b", true);
    s.validate("updated to x/b's /32", 80, Proto::Tcp, &allow);
}

fn ingress_egress_independent(s: &mut Suite) {
    s.create("x", policy("allow-egress-for-target", pod_sel("a"), None, Some(json!([{}]))));
    let all = s.reach(true);
    s.validate("egress allowed", 80, Proto::Tcp, &all);
    s.create("x", policy("deny-ingress-via-label-selector", pod_sel("a"), Some(json!([])), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false);
    s.validate("ingress denied, egress still allowed", 80, Proto::Tcp, &r);
}

fn sctp_is_not_tcp(s: &mut Suite) {
    s.create("x", policy("deny-ingress", everything(), Some(json!([])), None));
    let rule = json!([{"ports": [{"port": 81, "protocol": "SCTP"}]}]);
    s.create("x", policy("allow-only-sctp-ingress-on-port-81", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("TCP 81 stays closed", 81, Proto::Tcp, &r);
}

fn sctp_policy_isolates(s: &mut Suite) {
    let rule = json!([{"ports": [{"port": 80, "protocol": "SCTP"}]}]);
    s.create("x", policy("allow-only-sctp-ingress-on-port-80", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false);
    s.validate("TCP 81 closed by isolation", 81, Proto::Tcp, &r);
}

fn udp_only_is_not_tcp(s: &mut Suite) {
    let rule = json!([{"ports": [{"port": 81, "protocol": "UDP"}]}]);
    s.create("x", policy("allow-only-udp-ingress-on-port-81", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false);
    s.validate("TCP 81 closed", 81, Proto::Tcp, &r);
    // weft's addition: the UDP port the policy names is open.
    let udp = s.reach(true);
    s.validate("(weft) UDP 81 open", 81, Proto::Udp, &udp);
}

fn default_ns_label_match_labels(s: &mut Suite) {
    x_a_only_from(s, "allow-client-a-via-ns-selector-for-immutable-ns-label", ns_sel("y"));
}

fn default_ns_label_match_expressions(s: &mut Suite) {
    let egress = json!([{"to": [{"namespaceSelector": expr(NAME_LABEL, "NotIn", &["y"])}]}]);
    s.create("x", policy("allow-ns-y-match-selector-for-immutable-ns-label", pod_sel("a"), None, Some(egress)));
    let mut r = s.reach(true);
    r.expect_peer(Peer::pod("x", "a"), Peer::ns("y"), false);
    s.validate("x/a not to y", 80, Proto::Tcp, &r);
}

fn udp_default_deny_ingress(s: &mut Suite) {
    s.create("x", policy("deny-all", everything(), Some(json!([])), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    s.validate("deny ingress into x", 80, Proto::Udp, &r);
}

fn udp_based_on_ports(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 81, "protocol": "UDP"}]}]);
    s.create("x", policy("allow-ingress-on-port-81-ns-x", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false).expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    s.validate("x/a from y on UDP 81", 81, Proto::Udp, &r);
}

fn udp_only_from_pod_in_other_namespace(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("a")}]}]);
    s.create("x", policy("allow-ns-y-pod-a-via-namespace-pod-selector", pod_sel("a"), Some(rule), None));
    let mut r = s.reach(true);
    r.expect_all_ingress("x/a", false).expect("y/a", "x/a", true);
    s.validate("x/a from y/a only", 80, Proto::Udp, &r);
}

fn endport_ingress_range(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]);
    s.create("x", policy("allow-80-81-from-y", pod_sel("a"), Some(rule), None));
    let r = y_only_into_x_a(s);
    s.validate("range 80-81: 80 from y", 80, Proto::Tcp, &r);
    s.validate("range 80-81: 81 from y", 81, Proto::Tcp, &r);
    let mut udp = s.reach(true);
    udp.expect_all_ingress("x/a", false);
    s.validate("range 80-81 is TCP: UDP 81 closed", 81, Proto::Udp, &udp);
}

fn endport_range_bounds(s: &mut Suite) {
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 81, "endPort": 90}]}]);
    s.create("x", policy("allow-81-90-from-y", pod_sel("a"), Some(rule), None));
    let r81 = y_only_into_x_a(s);
    s.validate("range 81-90 holds 81", 81, Proto::Tcp, &r81);
    let mut r80 = s.reach(true);
    r80.expect_all_ingress("x/a", false);
    s.validate("range 81-90 does not hold 80", 80, Proto::Tcp, &r80);
    let rule = json!([{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 70, "endPort": 80}]}]);
    s.update("x", policy("allow-81-90-from-y", pod_sel("a"), Some(rule), None));
    let r80 = y_only_into_x_a(s);
    s.validate("updated to 70-80: 80 from y", 80, Proto::Tcp, &r80);
    let mut r81 = s.reach(true);
    r81.expect_all_ingress("x/a", false);
    s.validate("updated to 70-80: 81 closed", 81, Proto::Tcp, &r81);
}

fn endport_egress_range(s: &mut Suite) {
    let egress = json!([{"ports": [{"port": 75, "endPort": 80}, {"protocol": "UDP", "port": 81, "endPort": 81}]}]);
    s.create("x", policy("egress-75-80-and-udp-81", everything(), None, Some(egress)));
    let r80 = s.reach(true);
    s.validate("TCP 80 inside 75-80", 80, Proto::Tcp, &r80);
    let mut closed = s.reach(true);
    closed.expect_peer(Peer::ns("x"), Peer::any(), false);
    s.validate("TCP 81 outside", 81, Proto::Tcp, &closed);
    s.validate("UDP 80 outside (UDP range is 81-81)", 80, Proto::Udp, &closed);
    s.validate("UDP 81 inside", 81, Proto::Udp, &r80);
}

fn cases() -> Vec<Case> {
    vec![
        ("should support a 'default-deny-ingress' policy", default_deny_ingress),
        ("should support a 'default-deny-all' policy", default_deny_all),
        (
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            allow_from_pods_within_namespace,
        ),
        ("should enforce policy to allow ingress traffic for a target", allow_ingress_for_a_target),
        ("should enforce policy to allow ingress traffic from pods in all namespaces", allow_from_all_namespaces),
        (
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            allow_only_from_other_namespace,
        ),
        ("should enforce policy based on PodSelector with MatchExpressions", pod_selector_match_expressions),
        (
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            namespace_selector_match_expressions,
        ),
        ("should enforce policy based on PodSelector or NamespaceSelector", pod_selector_or_namespace_selector),
        ("should enforce policy based on PodSelector and NamespaceSelector", pod_selector_and_namespace_selector),
        (
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            multiple_pod_and_namespace_selectors,
        ),
        ("should enforce policy based on any PodSelectors", any_pod_selectors),
        (
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            only_from_pod_in_other_namespace,
        ),
        ("should enforce policy based on Ports", based_on_ports),
        ("should enforce multiple, stacked policies with overlapping podSelectors", stacked_policies),
        ("should support allow-all policy", allow_all),
        ("should allow ingress access on one named port", ingress_on_one_named_port),
        ("should allow ingress access from namespace on one named port", ingress_from_namespace_on_one_named_port),
        ("should allow egress access on one named port", egress_on_one_named_port),
        ("should enforce updated policy", updated_policy),
        ("should allow ingress access from updated namespace", ingress_from_updated_namespace),
        ("should allow ingress access from updated pod", ingress_from_updated_pod),
        ("should deny ingress from pods on other namespaces", deny_ingress_from_other_namespaces),
        ("should deny ingress access to updated pod", deny_ingress_to_updated_pod),
        ("should deny egress from pods based on PodSelector", deny_egress_by_pod_selector),
        ("should deny egress from all pods in a namespace", deny_egress_from_namespace),
        ("should work with Ingress, Egress specified together", ingress_and_egress_together),
        (
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            deny_egress_on_client_side,
        ),
        (
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            egress_to_pod_in_other_namespace,
        ),
        (
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            any_port_on_a_protocol,
        ),
        (
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            ingress_allow_all_precedence,
        ),
        (
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            egress_allow_all_precedence,
        ),
        ("should stop enforcing policies after they are deleted", stop_enforcing_after_delete),
        ("should allow egress access to server in CIDR block", egress_to_cidr),
        ("should enforce except clause while egress access to server in CIDR block", except_clause),
        ("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", cidr_and_except_overlap),
        (
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            ingress_egress_independent,
        ),
        (
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            sctp_is_not_tcp,
        ),
        (
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            sctp_policy_isolates,
        ),
        ("should not allow access by TCP when a policy specifies only UDP", udp_only_is_not_tcp),
        (
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            default_ns_label_match_labels,
        ),
        (
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            default_ns_label_match_expressions,
        ),
        ("UDP: should support a 'default-deny-ingress' policy", udp_default_deny_ingress),
        ("UDP: should enforce policy based on Ports", udp_based_on_ports),
        (
            "UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            udp_only_from_pod_in_other_namespace,
        ),
        (
            "weft: endPort range 80-81 from a namespace (after 'should enforce policy based on Ports')",
            endport_ingress_range,
        ),
        ("weft: endPort range bounds, and a range updated", endport_range_bounds),
        ("weft: egress endPort ranges per protocol", endport_egress_range),
    ]
}

/// The cases run again on the routed overlay, through Services.
const MAIN: &[&str] = &[
    "should support a 'default-deny-ingress' policy",
    "should support a 'default-deny-all' policy",
    "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
    "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
    "should enforce policy based on PodSelector and NamespaceSelector",
    "should enforce policy based on Ports",
    "should allow ingress access on one named port",
    "should allow egress access on one named port",
    "should enforce updated policy",
    "should work with Ingress, Egress specified together",
    "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
    "should stop enforcing policies after they are deleted",
    "should allow egress access to server in CIDR block",
    "should enforce except clause while egress access to server in CIDR block",
    "UDP: should enforce policy based on Ports",
    "weft: endPort range 80-81 from a namespace (after 'should enforce policy based on Ports')",
];

fn run_suite(overlay: &str, via: Via, only: Option<&[&str]>) {
    let lab = Lab::up(&["--nodes", "3", "--overlay", overlay]);
    println!("lab {} (overlay {overlay}, probing {via:?})", lab.name);
    let model = Model::up(&lab);
    let mut suite = Suite { lab: &lab, model, via, case: String::new(), failures: vec![], undo: vec![] };
    let mut cases: Vec<Case> = cases().into_iter().filter(|(n, _)| only.is_none_or(|o| o.contains(n))).collect();
    if let Some(o) = only {
        assert_eq!(cases.len(), o.len(), "every main case is a case");
    }
    // NETPOL_CASES=text runs only the cases whose name holds it (to look into one).
    if let Ok(filter) = std::env::var("NETPOL_CASES") {
        cases.retain(|(n, _)| n.contains(&filter));
    }
    suite.run(&cases);
    assert!(
        suite.failures.is_empty(),
        "{} of the reachability checks failed (overlay {overlay}, probing {via:?}):\n\n{}",
        suite.failures.len(),
        suite.failures.join("\n")
    );
}

#[test]
fn upstream_netpol_suite_vxlan_pod_ips() {
    let _one = serial();
    run_suite("vxlan", Via::PodIp, None);
}

#[test]
fn upstream_netpol_main_cases_routed_service_ips() {
    let _one = serial();
    run_suite("routed", Via::ServiceIp, Some(MAIN));
}

// ---------------------------------------------------------------------------------------------
// Checks of single connections, for the smaller tests.

/// What a check sends.
#[derive(Clone, Debug)]
enum Send {
    /// To the echo server, which must be this pod.
    Echo(Proto, Option<Answerer>),
    /// A DNS query for kubernetes.default; any answer with our ID counts.
    Dns,
}

#[derive(Clone, Debug)]
struct Check {
    what: String,
    netns: PathBuf,
    addr: SocketAddr,
    send: Send,
    want: bool,
}

fn dns_query(id: u16) -> Vec<u8> {
    let mut q = vec![(id >> 8) as u8, id as u8, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in "kubernetes.default.svc.cluster.local".split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn run_check(c: &Check) -> Outcome {
    match &c.send {
        Send::Echo(proto, expect) => probe::probe(&Job {
            netns: c.netns.clone(),
            addr: c.addr,
            proto: *proto,
            expect: expect.clone(),
            timeout: PROBE_TIMEOUT,
        }),
        Send::Dns => {
            let addr = c.addr;
            let r = weft_netlink::ns::run_in(Some(&c.netns), move || {
                let id = (std::process::id() as u16) ^ 0x5a5a;
                match probe::udp_exchange(addr, &dns_query(id), PROBE_TIMEOUT) {
                    Ok(a) if a.len() >= 4 && a[0..2] == id.to_be_bytes() && a[2] & 0x80 != 0 => Outcome::Connected,
                    Ok(a) => Outcome::Broken(format!("not an answer to our query: {a:02x?}")),
                    Err(o) => o,
                }
            });
            r.unwrap_or_else(|e| Outcome::Unreachable(e.to_string()))
        }
    }
}

/// Runs every check (in parallel) until all are as wanted or the deadline passes; the table of
/// what was seen on failure.
fn poll_checks(step: &str, checks: &[Check]) -> Result<(), String> {
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let seen: Vec<Outcome> = std::thread::scope(|s| {
            let hs: Vec<_> = checks.iter().map(|c| s.spawn(move || run_check(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = checks.iter().zip(&seen).all(|(c, o)| o.connected() == c.want);
        if ok && tries > 1 {
            println!(
                "    ok   {step} ({} checks, {tries} probes, {:.1} s)",
                checks.len(),
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if ok {
            std::thread::sleep(CONFIRM_AFTER);
            continue;
        }
        if start.elapsed() > DEADLINE {
            let mut t =
                format!("{step}: not as expected after {tries} probes in {:.1} s\n", start.elapsed().as_secs_f64());
            for (c, o) in checks.iter().zip(&seen) {
                let want = if c.want { "allowed" } else { "denied" };
                let mark = if o.connected() == c.want { "   " } else { "XX " };
                t += &format!("  {mark}{:<60} expected {want:<8} observed {}\n", c.what, o.describe());
            }
            println!("    FAIL {t}");
            return Err(t);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pods of one namespace for the smaller tests: name, labels, node, TCP ports, UDP ports.
struct SmallPod<'a> {
    name: &'a str,
    labels: Value,
    node: &'a str,
    tcp: &'a [u16],
    udp: &'a [u16],
}

fn small_pods(lab: &Lab, ns: &str, pods: &[SmallPod]) -> BTreeMap<String, (IpAddr, PathBuf)> {
    let mut docs = vec![];
    if ns != "default" {
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    for p in pods {
        let mut cs = vec![];
        for port in p.tcp {
            cs.push(json!({"name": format!("tcp-{port}"), "image": "weft/echo", "ports": [{"containerPort": port, "name": format!("tcp-{port}")}]}));
        }
        for port in p.udp {
            cs.push(json!({"name": format!("udp-{port}"), "image": "weft/echo",
                           "ports": [{"containerPort": port, "protocol": "UDP", "name": format!("udp-{port}")}]}));
        }
        docs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": ns, "labels": p.labels},
            "spec": {"nodeName": p.node, "terminationGracePeriodSeconds": 0, "containers": cs},
        }));
    }
    lab.apply_str(&yaml_docs(&docs));
    let running = lab.wait_running(ns, pods.len());
    running
        .iter()
        .map(|v| {
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            let ip = v["status"]["podIP"].as_str().unwrap().parse().unwrap();
            let netns = probe::pod_netns(lab, ns, &name, v["metadata"]["uid"].as_str()).unwrap();
            (name, (ip, netns))
        })
        .collect()
}

fn svc_ip(lab: &Lab, ns: &str, name: &str) -> IpAddr {
    get_json(lab, &["get", "service", "-n", ns, name])["spec"]["clusterIP"].as_str().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Seed 001.

/// examples/seeds/network-policy.yaml: `app=my-app` pods accept only `app=trusted-app`, on TCP
/// 80, and may open only TCP 443 to `app=external-service`: nothing else in or out (not port 80
/// of the external service, not DNS), replies of allowed connections flow, other pods are
/// untouched.
#[test]
fn seed_network_policy() {
    let _one = serial();
    let lab = Lab::up(&["--nodes", "3"]);
    let pods = small_pods(
        &lab,
        "default",
        &[
            SmallPod {
                name: "my-app",
                labels: json!({"app": "my-app"}),
                node: "node-1",
                tcp: &[80, 81, 443],
                udp: &[80],
            },
            SmallPod {
                name: "trusted",
                labels: json!({"app": "trusted-app"}),
                node: "node-2",
                tcp: &[80, 443],
                udp: &[],
            },
            SmallPod { name: "other", labels: json!({"app": "other"}), node: "node-1", tcp: &[80, 443], udp: &[] },
            SmallPod {
                name: "ext",
                labels: json!({"app": "external-service"}),
                node: "node-3",
                tcp: &[80, 443],
                udp: &[53],
            },
            SmallPod {
                name: "ext-local",
                labels: json!({"app": "external-service"}),
                node: "node-1",
                tcp: &[80, 443],
                udp: &[],
            },
        ],
    );
    let dns = SocketAddr::new(svc_ip(&lab, "kube-system", "kube-dns"), 53);
    let check = |from: &str, to: &str, port: u16, proto: Proto, want: bool| {
        let (ip, _) = &pods[to];
        Check {
            what: format!("{from} -> {to} {proto} {port}"),
            netns: pods[from].1.clone(),
            addr: SocketAddr::new(*ip, port),
            send: Send::Echo(proto, Some(Answerer::new("default", to))),
            want,
        }
    };
    let dns_check = |from: &str, want: bool| Check {
        what: format!("{from} -> cluster DNS {dns} (UDP query)"),
        netns: pods[from].1.clone(),
        addr: dns,
        send: Send::Dns,
        want,
    };
    let (t, u) = (Proto::Tcp, Proto::Udp);
    // Before the policy: everything is open (the checks below can fail).
    let before = vec![
        check("trusted", "my-app", 81, t, true),
        check("other", "my-app", 80, t, true),
        check("my-app", "ext", 80, t, true),
        check("my-app", "trusted", 80, t, true),
        check("my-app", "ext", 53, u, true),
        dns_check("my-app", true),
    ];
    let mut failures = vec![];
    if let Err(e) = poll_checks("before the policy", &before) {
        failures.push(e);
    }
    lab.weft_ok(&["apply", "-f", &weft_testkit::seed("network-policy.yaml")]);
    let after = vec![
        // Ingress: trusted-app on TCP 80, nothing else.
        check("trusted", "my-app", 80, t, true),
        check("trusted", "my-app", 81, t, false),
        check("trusted", "my-app", 443, t, false),
        check("trusted", "my-app", 80, u, false),
        check("other", "my-app", 80, t, false),
        check("ext", "my-app", 80, t, false),
        check("ext-local", "my-app", 80, t, false),
        // Egress: TCP 443 to external-service (on another node and on its own), nothing else.
        check("my-app", "ext", 443, t, true),
        check("my-app", "ext-local", 443, t, true),
        check("my-app", "ext", 80, t, false),
        check("my-app", "ext-local", 80, t, false),
        check("my-app", "ext", 53, u, false),
        check("my-app", "trusted", 443, t, false),
        check("my-app", "trusted", 80, t, false),
        check("my-app", "other", 443, t, false),
        dns_check("my-app", false),
        // Pods the policy does not select are untouched.
        dns_check("trusted", true),
        check("other", "trusted", 80, t, true),
        check("trusted", "ext", 80, t, true),
        check("ext", "other", 443, t, true),
        check("other", "ext-local", 80, t, true),
    ];
    if let Err(e) = poll_checks("seed 001's policy", &after) {
        failures.push(e);
    }
    lab.kubectl_ok(&["delete", "networkpolicy", "my-network-policy"]);
    if let Err(e) = poll_checks("the policy deleted", &before) {
        failures.push(e);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Egress to a Service.

/// `n` fresh connections to `addr` from `netns`: who answered (by pod) and how many failed.
fn spread(netns: &Path, addr: SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
    let results: Vec<Result<Value, Outcome>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let netns = netns.to_path_buf();
                s.spawn(move || {
                    weft_netlink::ns::run_in(Some(&netns), move || probe::http_get(addr, PROBE_TIMEOUT))
                        .unwrap_or_else(|e| Err(Outcome::Unreachable(e.to_string())))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut by = BTreeMap::new();
    let mut failed = 0;
    for r in results {
        match r {
            Ok(v) => *by.entry(v["pod"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    (by, failed)
}

/// Polls `spread` until `ok` holds or the deadline passes.
fn poll_spread(
    step: &str,
    netns: &Path,
    addr: SocketAddr,
    ok: impl Fn(&BTreeMap<String, usize>, usize) -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let (by, failed) = spread(netns, addr, 16);
        if ok(&by, failed) && tries > 1 {
            println!("    ok   {step}: {by:?}, {failed} failed ({tries} rounds)");
            return Ok(());
        }
        if ok(&by, failed) {
            // At once: maybe before the change took effect; it must still hold a moment later.
            std::thread::sleep(CONFIRM_AFTER);
            continue;
        }
        if start.elapsed() > DEADLINE {
            let e = format!("{step}: 16 connections to {addr} answered by {by:?}, {failed} failed");
            println!("    FAIL {e}");
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A client's egress through a Service (port 80 -> targetPort 8080) is judged on the endpoint
/// pod and its port, after the DNAT, as kube-proxy clusters do: a rule for the backends' pods
/// on 8080 lets it through, one on the Service's port 80 does not, an ipBlock of one backend's
/// address lets through exactly the connections sent to that backend; and the backends' own
/// ingress policy sees the client pod.
#[test]
fn egress_to_a_service_is_judged_after_dnat() {
    let _one = serial();
    let lab = Lab::up(&["--nodes", "3"]);
    let ns = "svc";
    let pods = small_pods(
        &lab,
        ns,
        &[
            SmallPod { name: "client", labels: json!({"app": "client"}), node: "node-1", tcp: &[80], udp: &[] },
            SmallPod { name: "web-1", labels: json!({"app": "web"}), node: "node-2", tcp: &[8080], udp: &[] },
            SmallPod { name: "web-2", labels: json!({"app": "web"}), node: "node-3", tcp: &[8080], udp: &[] },
            SmallPod { name: "other", labels: json!({"app": "other"}), node: "node-1", tcp: &[8080], udp: &[] },
        ],
    );
    lab.apply_str(
        r#"# two Services
{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "svc"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
---
{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "svc"},
 "spec": {"selector": {"app": "other"}, "ports": [{"port": 80, "targetPort": 8080}]}}"#,
    );
    let web = SocketAddr::new(svc_ip(&lab, ns, "web"), 80);
    let other_svc = SocketAddr::new(svc_ip(&lab, ns, "other"), 80);
    let client = pods["client"].1.clone();
    let web1 = pods["web-1"].0;
    let mut failures = vec![];
    let mut step = |r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(e)
        }
    };
    let both = |by: &BTreeMap<String, usize>, failed: usize| failed == 0 && by.len() == 2;
    let none = |by: &BTreeMap<String, usize>, _: usize| by.is_empty();
    step(poll_spread("no policy: both backends answer", &client, web, both));

    let egress = |name: &str, rule: Value| policy(name, labels(&[("app", "client")]), None, Some(json!([rule])));
    apply_in(
        &lab,
        ns,
        egress("client-egress", json!({"to": [{"podSelector": labels(&[("app", "web")])}], "ports": [{"port": 8080}]})),
    );
    step(poll_spread("egress to app=web on 8080: the Service works", &client, web, both));
    step(poll_spread("egress to app=web on 8080: the other Service does not", &client, other_svc, none));

    replace_in(
        &lab,
        ns,
        egress("client-egress", json!({"to": [{"podSelector": labels(&[("app", "web")])}], "ports": [{"port": 80}]})),
    );
    step(poll_spread(
        "egress to app=web on 80 (the Service's port): nothing after the DNAT to 8080",
        &client,
        web,
        none,
    ));

    replace_in(
        &lab,
        ns,
        egress(
            "client-egress",
            json!({"to": [{"ipBlock": {"cidr": format!("{web1}/32")}}], "ports": [{"port": 8080}]}),
        ),
    );
    step(poll_spread(
        "egress to web-1's address only: web-1 answers, what went to web-2 fails",
        &client,
        web,
        |by, failed| failed > 0 && by.len() == 1 && by.contains_key("web-1"),
    ));

    lab.kubectl_ok(&["delete", "networkpolicy", "-n", ns, "client-egress"]);
    let ingress = json!([{"from": [{"podSelector": labels(&[("app", "other")])}]}]);
    apply_in(&lab, ns, policy("web-ingress", labels(&[("app", "web")]), Some(ingress), None));
    step(poll_spread("backends accept app=other only: the client is refused through the Service", &client, web, none));
    step(poll_spread("backends accept app=other only: other gets through the Service", &pods["other"].1, web, both));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// From outside the cluster.

/// The external host reaches a pod through a NodePort (externalTrafficPolicy Local keeps its
/// address) as the pod's ingress policy says: not when only pods are allowed, not when its
/// address is in an ipBlock's except, yes when it is in the ipBlock (and only on the pod's port:
/// the policy sees the connection after the DNAT).
#[test]
fn ingress_from_outside_through_a_node_port() {
    let _one = serial();
    let lab = Lab::up(&["--nodes", "3"]);
    let ns = "edge";
    let pods = small_pods(
        &lab,
        ns,
        &[
            SmallPod { name: "web", labels: json!({"app": "web"}), node: "node-2", tcp: &[8080], udp: &[] },
            SmallPod { name: "friend", labels: json!({"app": "friend"}), node: "node-1", tcp: &[8080], udp: &[] },
        ],
    );
    lab.apply_str(
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "edge"},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}}"#,
    );
    let external = probe::external_netns(&lab);
    // node-2's address on the underlay.
    let node_port: SocketAddr = "172.18.0.11:30080".parse().unwrap();
    let from_outside = |want: bool| Check {
        what: format!("external host -> {node_port} (NodePort to web:8080)"),
        netns: external.clone(),
        addr: node_port,
        send: Send::Echo(Proto::Tcp, Some(Answerer::new(ns, "web"))),
        want,
    };
    let from_friend = |want: bool| Check {
        what: "friend -> web:8080".into(),
        netns: pods["friend"].1.clone(),
        addr: SocketAddr::new(pods["web"].0, 8080),
        send: Send::Echo(Proto::Tcp, Some(Answerer::new(ns, "web"))),
        want,
    };
    let mut failures = vec![];
    let mut step = |r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(e)
        }
    };
    step(poll_checks("no policy", &[from_outside(true), from_friend(true)]));
    // The client's address arrives unchanged, so an ipBlock can match it.
    let seen = weft_netlink::ns::run_in(Some(&external), move || probe::http_get(node_port, PROBE_TIMEOUT)).unwrap();
    assert_eq!(seen.as_ref().map(|v| v["clientIP"].clone()).ok(), Some(json!("172.18.0.2")), "{seen:?}");

    let web_policy = |rule: Value| policy("web-ingress", labels(&[("app", "web")]), Some(json!([rule])), None);
    apply_in(&lab, ns, web_policy(json!({"from": [{"podSelector": {}}]})));
    step(poll_checks("pods of the namespace only", &[from_outside(false), from_friend(true)]));
    replace_in(
        &lab,
        ns,
        web_policy(json!({"from": [{"ipBlock": {"cidr": "172.18.0.0/24", "except": ["172.18.0.2/32"]}}]})),
    );
    step(poll_checks("the underlay except the external host", &[from_outside(false), from_friend(false)]));
    replace_in(
        &lab,
        ns,
        web_policy(json!({"from": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [{"port": 8080}]})),
    );
    step(poll_checks("the external host on 8080", &[from_outside(true), from_friend(false)]));
    replace_in(
        &lab,
        ns,
        web_policy(json!({"from": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [{"port": 80}]})),
    );
    step(poll_checks(
        "the external host on 80 (the Service's port, not the pod's)",
        &[from_outside(false), from_friend(false)],
    ));
    lab.kubectl_ok(&["delete", "networkpolicy", "-n", ns, "web-ingress"]);
    step(poll_checks("policy deleted", &[from_outside(true), from_friend(true)]));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// A new pod is isolated from its first moment.

/// Creates the pod and probes it from `client` in a tight loop (8 threads, each a TCP connect
/// bounded by 200 ms, so a SYN every 25 ms or so) from the moment its address is known (its
/// sandbox record, written as the shim starts, before the containers listen) until `after` past
/// Running. Returns what the probes saw: (probes, reached, first reached after the address was
/// known).
fn watch_new_pod(
    lab: &Lab,
    ns: &str,
    name: &str,
    pod_labels: Value,
    node: &str,
    client: &Path,
    after: Duration,
) -> (usize, usize, Option<Duration>) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": pod_labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "web", "image": "weft/echo", "ports": [{"containerPort": 80}]}]},
    });
    let f = manifest_file(lab, &pod.to_string());
    let uid = lab.kubectl_ok(&["create", "-f", f.to_str().unwrap(), "-o", "jsonpath={.metadata.uid}"]);
    let record = lab.state_dir().join("pods").join(uid.trim()).join("sandbox.json");
    let start = Instant::now();
    let ip: IpAddr = loop {
        if let Ok(bytes) = std::fs::read(&record)
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
            && let Some(ip) = v["ips"][0].as_str()
        {
            break ip.parse().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no sandbox record for {ns}/{name} after 30 s");
        std::thread::sleep(Duration::from_millis(2));
    };
    let known = Instant::now();
    let stop = AtomicBool::new(false);
    let probes = AtomicUsize::new(0);
    let reached = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let first: Mutex<Option<Duration>> = Mutex::new(None);
    let addr = SocketAddr::new(ip, 80);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let client = client.to_path_buf();
                while !stop.load(Ordering::SeqCst) && known.elapsed() < Duration::from_secs(60) {
                    let o =
                        weft_netlink::ns::run_in(Some(&client), move || {
                            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                                Ok(_) => Outcome::Connected,
                                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
                                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
                                Err(e) => Outcome::Unreachable(e.to_string()),
                            }
                        })
                        .unwrap();
                    probes.fetch_add(1, Ordering::SeqCst);
                    if o.reached() {
                        reached.fetch_add(1, Ordering::SeqCst);
                        if o == Outcome::Refused {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        first.lock().unwrap().get_or_insert(known.elapsed());
                    }
                }
            });
        }
        // Running, then `after` more.
        let running = loop {
            let v = get_json(lab, &["get", "pod", "-n", ns, name]);
            if v["status"]["phase"] == "Running" {
                break Instant::now();
            }
            if known.elapsed() > Duration::from_secs(50) {
                break Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        while running.elapsed() < after {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let first = *first.lock().unwrap();
    println!(
        "    {ns}/{name} on {node} ({ip}): {} probes, {} reached it ({} refused: before it listened), the first {first:?} after its address was known",
        probes.load(Ordering::SeqCst),
        reached.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    );
    (probes.load(Ordering::SeqCst), reached.load(Ordering::SeqCst), first)
}

/// A pod that a deny-all policy selects is never reachable, not even in its first moments: a
/// client probes it in a tight loop from before its containers listen until seconds after it
/// runs, on another node and on the client's own node. The same loop on a pod no policy
/// selects does reach it (so the loop would see an open moment), and once the policy is deleted
/// the isolated pod answers (so it was listening all along).
#[test]
fn a_new_pod_selected_by_deny_all_is_never_reachable() {
    let _one = serial();
    let lab = Lab::up(&["--nodes", "3"]);
    let ns = "iso";
    let pods = small_pods(
        &lab,
        ns,
        &[
            SmallPod { name: "client", labels: json!({"app": "client"}), node: "node-1", tcp: &[80], udp: &[] },
            SmallPod { name: "canary", labels: json!({"role": "guarded"}), node: "node-2", tcp: &[80], udp: &[] },
        ],
    );
    let client = pods["client"].1.clone();
    let canary = |want: bool| Check {
        what: "client -> canary:80".into(),
        netns: client.clone(),
        addr: SocketAddr::new(pods["canary"].0, 80),
        send: Send::Echo(Proto::Tcp, Some(Answerer::new(ns, "canary"))),
        want,
    };
    poll_checks("no policy: the canary answers", &[canary(true)]).unwrap();
    apply_in(&lab, ns, policy("deny-guarded", labels(&[("role", "guarded")]), Some(json!([])), None));
    // The policy is in force (for the pods that were there).
    poll_checks("the canary is isolated", &[canary(false)]).unwrap();

    // The loop sees an unprotected new pod early.
    let (_, reached, first) =
        watch_new_pod(&lab, ns, "open", json!({"role": "open"}), "node-2", &client, Duration::from_secs(2));
    assert!(reached > 0, "the probe loop never reached a new pod no policy selects");
    println!("    an unselected new pod was first reached {first:?} after its address was known");

    let mut failures = vec![];
    for (name, node) in [("guarded-remote", "node-2"), ("guarded-local", "node-1")] {
        let (probes, reached, first) =
            watch_new_pod(&lab, ns, name, json!({"role": "guarded"}), node, &client, Duration::from_secs(5));
        if reached > 0 {
            failures.push(format!(
                "{ns}/{name} on {node}: {reached} of {probes} probes reached it (the first {first:?} after its address was known)"
            ));
        }
    }
    // The isolated pods were listening: deleting the policy opens them.
    lab.kubectl_ok(&["delete", "networkpolicy", "-n", ns, "deny-guarded"]);
    let running = lab.wait_running(ns, 5);
    let mut open = vec![canary(true)];
    for name in ["guarded-remote", "guarded-local"] {
        let ip = running.iter().find(|p| p["metadata"]["name"] == name).unwrap()["status"]["podIP"].as_str().unwrap();
        open.push(Check {
            what: format!("client -> {name}:80"),
            netns: client.clone(),
            addr: SocketAddr::new(ip.parse().unwrap(), 80),
            send: Send::Echo(Proto::Tcp, Some(Answerer::new(ns, name))),
            want: true,
        });
    }
    if let Err(e) = poll_checks("policy deleted: the guarded pods answer", &open) {
        failures.push(e);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
