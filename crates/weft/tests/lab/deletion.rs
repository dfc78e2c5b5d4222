//! Deletion as kubectl drives it against a lab: finalizers, namespaces through Terminating,
//! graceful and forced pod deletion, dry runs, deletecollection; and `weft down` of a lab with
//! pods, whole and cut short.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_testkit::Lab;

fn gone(out: &std::process::Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

fn ns_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

fn cm_yaml(name: &str, ns: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\ndata: {{a: \"1\"}}\n"
    )
}

const HELD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: held, finalizers: [example.com/hold]}
data: {a: "1"}
"#;

#[test]
fn finalizers_namespaces_dry_runs_and_deletecollection_with_kubectl() {
    let lab = Lab::up(&["--nodes", "0"]);
    // A finalizer holds a ConfigMap after its delete, until a patch takes the finalizer off.
    lab.apply_str(HELD);
    lab.kubectl_ok(&["delete", "configmap", "held", "--wait=false"]);
    let cm = json(&lab, &["get", "configmap", "held"]);
    assert!(cm["metadata"]["deletionTimestamp"].is_string(), "{cm}");
    assert_eq!(cm["metadata"]["deletionGracePeriodSeconds"], 0);
    // No new finalizer once it is being deleted.
    let out = lab.kubectl(&[
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/more"}]"#,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no new finalizers can be added if the object is being deleted"),
        "{err}"
    );
    lab.kubectl_ok(&["patch", "configmap", "held", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert!(gone(&lab.kubectl(&["get", "configmap", "held"])), "the ConfigMap went with its last finalizer");

    // A dry-run delete changes nothing.
    lab.apply_str(&cm_yaml("plain", "default", "other"));
    let before = json(&lab, &["get", "configmap", "plain"]);
    assert!(lab.kubectl_ok(&["delete", "configmap", "plain", "--dry-run=server"]).contains("deleted (server dry run)"));
    assert_eq!(
        json(&lab, &["get", "configmap", "plain"])["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );

    // A namespace goes through Terminating: its content is deleted, a finalizer in it keeps it
    // there, nothing new may be made in it, and it goes once empty.
    lab.apply_str(&ns_yaml("x"));
    lab.apply_str(&cm_yaml("a", "x", "x"));
    let held = lab.home.path().join("held.yaml");
    std::fs::write(&held, HELD).unwrap();
    lab.kubectl_ok(&["apply", "-n", "x", "-f", held.to_str().unwrap()]);
    lab.kubectl_ok(&["delete", "namespace", "x", "--wait=false"]);
    let row = lab.kubectl_ok(&["get", "namespace", "x", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    let ns = json(&lab, &["get", "namespace", "x"]);
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));
    let remaining =
        ns["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "NamespaceFinalizersRemaining");
    assert_eq!(
        remaining.unwrap()["message"],
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
    );
    assert!(gone(&lab.kubectl(&["get", "configmap", "a", "-n", "x"])));
    let b = lab.home.path().join("b.yaml");
    std::fs::write(&b, cm_yaml("b", "x", "x")).unwrap();
    let out = lab.kubectl(&["apply", "-f", b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unable to create new content in namespace x because it is being terminated"), "{err}");
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "x",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    lab.wait_for("namespace x to go", 10, || gone(&lab.kubectl(&["get", "namespace", "x"])));
    // `kubectl delete ns` waits until it has gone.
    lab.apply_str(&ns_yaml("gone-soon"));
    lab.apply_str(&cm_yaml("a", "gone-soon", "x"));
    lab.kubectl_ok(&["delete", "namespace", "gone-soon"]);
    assert!(gone(&lab.kubectl(&["get", "namespace", "gone-soon"])));

    // deletecollection (what kube-rs's delete_collection sends), by label.
    for (name, app) in [("c1", "x"), ("c2", "x"), ("c3", "other")] {
        lab.apply_str(&cm_yaml(name, "default", app));
    }
    let list: Value = serde_json::from_str(&lab.kubectl_ok(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps?labelSelector=app%3Dx",
    ]))
    .unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
    let names = lab.kubectl_ok(&["get", "configmaps", "-o", "name"]);
    assert!(
        !names.contains("configmap/c1") && !names.contains("configmap/c2") && names.contains("configmap/c3"),
        "{names}"
    );
}

const SLEEPERS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: graceful}
spec: {containers: [{name: c, image: busybox, command: [sh, -c, "trap 'echo TERM' TERM; while true; do sleep 0.2; done"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: forced}
spec: {containers: [{name: c, image: busybox, command: [sleep, "600"]}]}
"#;

/// Needs the kubelet's side of termination (it deletes a Terminating pod with grace 0 once its
/// containers have stopped) for the pod and the namespace to go.
#[test]
fn pods_terminate_gracefully_or_at_once_when_forced() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.apply_str(SLEEPERS);
    lab.wait_running("default", 2);
    // A dry run changes nothing.
    lab.kubectl_ok(&["delete", "pod", "graceful", "--dry-run=server"]);
    assert!(json(&lab, &["get", "pod", "graceful"])["metadata"].get("deletionTimestamp").is_none());
    // A grace period: Terminating, then gone when the kubelet has stopped it.
    let start = Instant::now();
    lab.kubectl_ok(&["delete", "pod", "graceful", "--grace-period=5", "--wait=false"]);
    let pod = json(&lab, &["get", "pod", "graceful"]);
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 5, "{pod}");
    let row = lab.kubectl_ok(&["get", "pod", "graceful", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    // Forced: gone at once.
    lab.kubectl_ok(&["delete", "pod", "forced", "--force", "--grace-period=0"]);
    assert!(gone(&lab.kubectl(&["get", "pod", "forced"])));
    // Its container ignores SIGTERM: it is killed at the end of the grace period, then goes.
    lab.wait_for("the Terminating pod to go", 20, || gone(&lab.kubectl(&["get", "pod", "graceful"])));
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(15), "{took:?}");
    // A namespace with a running pod goes through Terminating and goes.
    lab.apply_str(&ns_yaml("z"));
    lab.kubectl_ok(&["run", "s", "-n", "z", "--image=busybox", "--", "sleep", "600"]);
    lab.wait_running("z", 1);
    // An object with a finalizer holds the namespace in Terminating until it is let go (the pod
    // alone can be stopped and removed before the next kubectl runs).
    lab.kubectl_ok(&["create", "configmap", "hold", "-n", "z"]);
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "hold",
        "-n",
        "z",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["weft.test/hold"]}}"#,
    ]);
    lab.kubectl_ok(&["delete", "namespace", "z", "--wait=false"]);
    assert!(lab.kubectl_ok(&["get", "namespace", "z", "--no-headers"]).contains("Terminating"));
    lab.wait_for("the pod in z to go", 30, || lab.pods("z").is_empty());
    assert!(
        lab.kubectl_ok(&["get", "namespace", "z", "--no-headers"]).contains("Terminating"),
        "held by the finalizer"
    );
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "hold",
        "-n",
        "z",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    lab.wait_for("namespace z to go", 30, || gone(&lab.kubectl(&["get", "namespace", "z"])));
}

/// The pods' shims as their sandbox records name them: (pid, start time).
fn shims(state: &Path) -> Vec<(u32, u64)> {
    let mut out = vec![];
    for e in std::fs::read_dir(state.join("pods")).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("sandbox.json")) else { continue };
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        out.push((v["shim_pid"].as_u64().unwrap() as u32, v["shim_start"].as_u64().unwrap()));
    }
    out
}

/// Is this the same process, still running (not a zombie)?
fn alive(pid: u32, start: u64) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else { return false };
    let state = rest.chars().next().unwrap_or('X');
    rest.split_whitespace().nth(19).and_then(|t| t.parse::<u64>().ok()) == Some(start) && state != 'Z' && state != 'X'
}

fn lab_with_pods(n: usize) -> (Lab, PathBuf, Vec<(u32, u64)>) {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: many}}\nspec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: many}}}}\n  template:\n    metadata: {{labels: {{app: many}}}}\n    spec: {{containers: [{{name: c, image: busybox, command: [sleep, \"600\"]}}]}}\n"
    ));
    lab.wait_running("default", n);
    let state = lab.state_dir();
    let shims = shims(&state);
    assert!(shims.len() >= n, "{} shims for {n} pods", shims.len());
    assert!(shims.iter().all(|(p, s)| alive(*p, *s)));
    (lab, state, shims)
}

fn assert_nothing_left(lab: &Lab, state: &Path, shims: &[(u32, u64)]) {
    assert_eq!(lab.netns_left(), Vec::<String>::new(), "namespaces left");
    let running: Vec<_> = shims.iter().filter(|(p, s)| alive(*p, *s)).collect();
    assert!(running.is_empty(), "shims left: {running:?}");
    assert!(!state.exists(), "{} left", state.display());
    assert!(lab.try_state_dir().is_none(), "the lab is still registered");
}

#[test]
fn weft_down_of_thirty_pods_is_quick_and_leaves_nothing() {
    let (lab, state, shims) = lab_with_pods(30);
    let start = Instant::now();
    lab.down(Duration::from_secs(60)).expect("weft down");
    let took = start.elapsed();
    assert_nothing_left(&lab, &state, &shims);
    assert!(took < Duration::from_secs(5), "weft down of 30 pods took {took:?}");
}

/// A pod whose container ignores SIGTERM: its shim takes its own bound (2 s) to end, so a
/// `weft down` killed 0.3 s in is cut short in the middle of stopping the pods.
const STUBBORN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec: {containers: [{name: c, image: busybox, command: [sh, -c, "trap '' TERM; sleep 600 & wait; sleep 600"]}]}
"#;

#[test]
fn a_weft_down_cut_short_is_finished_by_the_next() {
    let (lab, state, _) = lab_with_pods(30);
    lab.apply_str(STUBBORN);
    lab.wait_running("default", 31);
    let shims = shims(&state);
    let mut first = lab.weft_cmd().arg("down").stdout(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(first.try_wait().unwrap().is_none(), "weft down ended before it could be cut short");
    // SIGKILL: no chance to tidy up.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(state.join(".weft-lab").exists() || !state.exists(), "the marker goes last");
    lab.down(Duration::from_secs(60)).expect("the second weft down");
    assert_nothing_left(&lab, &state, &shims);
}
