//! The kubelet's pod lifecycle in a lab, driven with the real kubectl: graceful deletion (a
//! preStop hook, then SIGTERM, in that order; a pod that ignores SIGTERM killed at the end of
//! its grace period; a forced delete cleaned up at once), and the key case: a pod behind a
//! Service deleted with a 5 s grace period stays Terminating, keeps serving the connections it
//! has while new ones go to the other pods, then exits and goes. Liveness and startup probes,
//! init containers in order. Containers run the host's binaries (no images here) and share the
//! host's file system, so the test reads what they write in a temporary directory.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_testkit::Lab;

fn pod_json(lab: &Lab, name: &str) -> Option<Value> {
    let out = lab.kubectl_ok(&["get", "pod", name, "--ignore-not-found", "-o", "json"]);
    if out.trim().is_empty() { None } else { Some(serde_json::from_str(&out).unwrap()) }
}

/// Waits (bounded) until pod `name` is gone; returns how long that took.
fn wait_gone(lab: &Lab, name: &str, limit_s: u64) -> Duration {
    let t = Instant::now();
    lab.wait_for(&format!("pod {name} to be gone"), limit_s, || pod_json(lab, name).is_none());
    t.elapsed()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The kubelet's events about pod `name`, as "REASON: NOTE" lines.
fn events_of(lab: &Lab, name: &str) -> Vec<String> {
    let out = lab.kubectl_ok(&["get", "events.v1.events.k8s.io", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == name && e["reportingController"] == "kubelet")
        .map(|e| format!("{}: {}", e["reason"].as_str().unwrap_or(""), e["note"].as_str().unwrap_or("")))
        .collect()
}

fn deleted_gracefully(lab: &Lab, name: &str) {
    let p = pod_json(lab, name).unwrap_or_else(|| {
        panic!("pod {name} went at once: the API server does not keep a deleted pod Terminating (graceful deletion)")
    });
    assert!(p["metadata"]["deletionTimestamp"].is_string(), "{p}");
}

#[test]
fn graceful_deletion_runs_pre_stop_then_sigterm_then_sigkill() {
    let lab = Lab::up(&["--nodes", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    lab.apply_str(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "echo term >> {d}/order; exit 0" TERM; echo started >> {d}/order; while true; do sleep 0.1; done']
    lifecycle: {{preStop: {{exec: {{command: [sh, -c, 'echo prestop >> {d}/order; sleep 1']}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "" TERM; echo up > {d}/stubborn; while true; do sleep 0.1; done']
---
apiVersion: v1
kind: Pod
metadata: {{name: patient}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "" TERM; while true; do sleep 0.1; done']
---
apiVersion: v1
kind: Pod
metadata: {{name: sidecar}}
spec:
  initContainers:
  - name: proxy
    image: busybox
    restartPolicy: Always
    command: [sh, -c, 'trap "echo proxy-term >> {d}/sidecar; exit 0" TERM; while true; do sleep 0.1; done']
  containers:
  - name: app
    image: busybox
    command: [sh, -c, 'trap "sleep 1; echo app-term >> {d}/sidecar; exit 0" TERM; while true; do sleep 0.1; done']
---
apiVersion: v1
kind: Pod
metadata: {{name: forced}}
spec:
  containers: [{{name: main, image: busybox, command: [sleep, "3600"]}}]
"#
    ));
    lab.wait_running("default", 5);
    lab.wait_for("the containers to start", 30, || read(&dir.path().join("order")) == "started\n");

    // preStop, then SIGTERM, in that order; the pod goes once its container has exited.
    lab.kubectl_ok(&["delete", "pod", "hooked", "--grace-period=5", "--wait=false"]);
    deleted_gracefully(&lab, "hooked");
    let took = wait_gone(&lab, "hooked", 20);
    assert_eq!(read(&dir.path().join("order")), "started\nprestop\nterm\n");
    assert!(took < Duration::from_secs(5 + 10), "{took:?}");

    // SIGTERM ignored: killed at the end of the grace period, not before.
    let t = Instant::now();
    lab.kubectl_ok(&["delete", "pod", "stubborn", "--grace-period=3", "--wait=false"]);
    deleted_gracefully(&lab, "stubborn");
    let shown = lab.kubectl_ok(&["get", "pod", "stubborn", "--no-headers"]);
    assert!(shown.contains("Terminating"), "{shown}");
    wait_gone(&lab, "stubborn", 20);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(2900), "gone after {took:?}, before its grace period of 3 s");
    assert!(took < Duration::from_secs(3 + 12), "{took:?}");

    // A second DELETE with a shorter grace period brings the end closer: 60 s, then 1 s.
    lab.kubectl_ok(&["delete", "pod", "patient", "--grace-period=60", "--wait=false"]);
    deleted_gracefully(&lab, "patient");
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    lab.kubectl_ok(&["delete", "pod", "patient", "--grace-period=1", "--wait=false"]);
    wait_gone(&lab, "patient", 30);
    assert!(t.elapsed() < Duration::from_secs(1 + 2 + 10), "{:?}", t.elapsed());

    // A sidecar (an init container that keeps running) stops after the app container.
    let p = pod_json(&lab, "sidecar").unwrap();
    let proxy = &p["status"]["initContainerStatuses"][0];
    assert!(proxy["started"] == true && proxy["state"]["running"].is_object(), "{p}");
    lab.kubectl_ok(&["delete", "pod", "sidecar", "--grace-period=10", "--wait=false"]);
    wait_gone(&lab, "sidecar", 30);
    assert_eq!(read(&dir.path().join("sidecar")), "app-term\nproxy-term\n");

    // Forced (the object goes at once): the kubelet kills and cleans up all the same.
    let sandbox = lab.sandbox("forced").unwrap();
    let netns = sandbox["netns"].as_str().unwrap().to_string();
    lab.kubectl_ok(&["delete", "pod", "forced", "--force", "--grace-period=0"]);
    assert!(pod_json(&lab, "forced").is_none());
    lab.wait_for("the forced pod's sandbox to go", 20, || !lab.netns_left().contains(&netns));

    // The kubelet's events, as Kubernetes words them (published on a task of their own: waited for).
    let wants =
        ["Created: Created container: main", "Started: Started container main", "Killing: Stopping container main"];
    lab.wait_for("the kubelet's events of hooked", 20, || {
        let ev = events_of(&lab, "hooked");
        wants.iter().all(|w| ev.iter().any(|e| e == w))
    });
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: echo
        image: weft/echo
        ports: [{containerPort: 8080, name: http}]
        lifecycle: {preStop: {sleep: {seconds: 4}}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"#;

/// Run in the client pod: opens 24 keep-alive connections through the Service (noting which pod
/// each reached), waits for `go`, then for 12 s, every 200 ms: one request on each old
/// connection (the pod that answered, or `!` and the pod once it has closed) and one on a new
/// connection. One JSON line per round, in `out`.
const CLIENT: &str = r#"
import http.client, json, os, sys, time
ip, d = sys.argv[1], sys.argv[2]
def get(c):
    c.request('GET', '/')
    return json.loads(c.getresponse().read())['pod']
conns = []
for i in range(24):
    c = http.client.HTTPConnection(ip, 80, timeout=2)
    conns.append([c, get(c)])
with open(d + '/open', 'w') as f:
    json.dump([p for _, p in conns], f)
end = time.time() + 60
while not os.path.exists(d + '/go') and time.time() < end:
    time.sleep(0.02)
t0 = time.time()
out = open(d + '/out', 'w')
while time.time() - t0 < 12:
    old = []
    for x in conns:
        if x[0] is None:
            old.append('!' + x[1]); continue
        try:
            old.append(get(x[0]))
        except Exception:
            x[0] = None
            old.append('!' + x[1])
    try:
        c = http.client.HTTPConnection(ip, 80, timeout=2)
        new = get(c)
        c.close()
    except Exception as e:
        new = 'error: %s' % e
    out.write(json.dumps({'t': time.time() - t0, 'old': old, 'new': new}) + '\n')
    out.flush()
    time.sleep(0.2)
"#;

#[test]
fn a_terminating_pod_keeps_its_connections_while_new_ones_go_to_the_others() {
    let lab = Lab::up(&["--nodes", "3"]);
    lab.apply_str(WEB);
    let pods = lab.wait_running("default", 4);
    let ip_of = |name: &str| -> String {
        let p = pods.iter().find(|p| p["metadata"]["name"] == name).unwrap();
        p["status"]["podIP"].as_str().unwrap().to_string()
    };
    let svc: Value = serde_json::from_str(&lab.kubectl_ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::thread::scope(|scope| {
        let client = scope.spawn(|| lab.exec(&["client"], &["python3", "-c", CLIENT, &cluster_ip, &d]));
        lab.wait_for("the client's connections", 60, || dir.path().join("open").exists() || client.is_finished());
        let open: Vec<String> = serde_json::from_str(&read(&dir.path().join("open")))
            .unwrap_or_else(|e| panic!("{e}: the client did not open its connections"));
        // The pod that holds the most of them goes.
        let victim = open.iter().max_by_key(|p| open.iter().filter(|q| q == p).count()).unwrap().clone();
        let victim_ip = ip_of(&victim);
        let t_delete = Instant::now();
        lab.kubectl_ok(&["delete", "pod", &victim, "--grace-period=5", "--wait=false"]);
        std::fs::write(dir.path().join("go"), "").unwrap();
        deleted_gracefully(&lab, &victim);
        // Its endpoint: terminating, still serving (it is ready until its container stops).
        lab.wait_for("the victim's endpoint to be terminating and serving", 10, || {
            let out = lab.kubectl_ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "json"]);
            let v: Value = serde_json::from_str(&out).unwrap();
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .any(|e| {
                    e["addresses"][0] == victim_ip.as_str()
                        && e["conditions"]["terminating"] == true
                        && e["conditions"]["serving"] == true
                        && e["conditions"]["ready"] == false
                })
        });
        let t_terminating = t_delete.elapsed().as_secs_f64();
        let gone = wait_gone(&lab, &victim, 25);
        let out = client.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rounds: Vec<Value> =
            read(&dir.path().join("out")).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(rounds.len() > 20, "{rounds:?}");
        let old_to_victim: Vec<usize> = (0..open.len()).filter(|i| open[*i] == victim).collect();
        let last_served = rounds
            .iter()
            .filter(|r| old_to_victim.iter().all(|i| r["old"][*i] == victim.as_str()))
            .filter_map(|r| r["t"].as_f64())
            .fold(0.0, f64::max);
        eprintln!(
            "{victim}: {} of 24 connections; terminating at {t_terminating:.2} s, last served at {last_served:.2} s, gone after {gone:?}",
            old_to_victim.len()
        );
        // Its open connections kept being answered by it well after its endpoint stopped taking
        // new ones (its preStop hook sleeps 4 s)...
        let served_late = rounds.iter().any(|r| {
            r["t"].as_f64().unwrap() > t_terminating + 0.5
                && old_to_victim.iter().all(|i| r["old"][*i] == victim.as_str())
        });
        assert!(
            served_late,
            "the victim's connections were not served after it became terminating ({t_terminating:.1} s): {rounds:?}"
        );
        // ... until it exited: then they closed.
        let last = rounds.last().unwrap();
        assert!(old_to_victim.iter().all(|i| last["old"][*i] == format!("!{victim}")), "{last}");
        // The other pods' connections were never disturbed.
        for r in &rounds {
            for (i, p) in open.iter().enumerate().filter(|(_, p)| **p != victim) {
                assert_eq!(r["old"][i], p.as_str(), "{r}");
            }
        }
        // New connections, once the proxy has had a moment for the change: never the victim,
        // never an error (the others are ready).
        let settled = t_terminating + 1.5;
        for r in rounds.iter().filter(|r| r["t"].as_f64().unwrap() > settled) {
            let new = r["new"].as_str().unwrap();
            assert!(new != victim && !new.starts_with("error"), "{r}");
        }
        // And both at once: a round where the victim still served its connections while the new
        // one went elsewhere (unless the endpoint change came too late to leave such a window
        // before the preStop hook's 4 s were over).
        if settled < 3.7 {
            let both = rounds.iter().any(|r| {
                r["t"].as_f64().unwrap() > settled && old_to_victim.iter().all(|i| r["old"][*i] == victim.as_str())
            });
            assert!(both, "no round after {settled:.1} s with the victim still serving its connections: {rounds:?}");
        } else {
            eprintln!("note: the endpoint became terminating late ({t_terminating:.1} s); overlap not checked");
        }
        assert!(gone < Duration::from_secs(5 + 12), "{gone:?}");
    });
    // The Deployment replaces it.
    lab.wait_running("default", 4);
}

#[test]
fn liveness_restarts_startup_gates_and_init_containers_run_in_order() {
    let lab = Lab::up(&["--nodes", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    lab.apply_str(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: lively}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'rm -f {d}/sick; echo run >> {d}/lively; while true; do sleep 0.1; done']
    livenessProbe: {{exec: {{command: [sh, -c, 'if [ -e {d}/sick ]; then echo feeling sick; exit 1; fi']}}, periodSeconds: 1, failureThreshold: 2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  containers:
  - name: main
    image: weft/echo
    ports: [{{containerPort: 8080}}]
    startupProbe: {{exec: {{command: [test, -e, '{d}/started']}}, periodSeconds: 1, failureThreshold: 120}}
    livenessProbe: {{httpGet: {{port: 8080, path: /healthz}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ordered}}
spec:
  initContainers:
  - {{name: one, image: busybox, command: [sh, -c, 'sleep 1; echo one >> {d}/order']}}
  - {{name: two, image: busybox, command: [sh, -c, 'test -s {d}/order && echo two >> {d}/order']}}
  containers:
  - {{name: app, image: busybox, command: [sh, -c, 'echo app >> {d}/order; while true; do sleep 0.1; done']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: broken-init}}
spec:
  initContainers: [{{name: fail, image: busybox, command: [sh, -c, 'exit 3']}}]
  containers: [{{name: app, image: busybox, command: [sleep, "3600"]}}]
"#
    ));
    // Init containers: in order, each to completion, then the app.
    lab.wait_for("the ordered pod to run", 60, || {
        pod_json(&lab, "ordered").is_some_and(|p| p["status"]["phase"] == "Running")
    });
    lab.wait_for("the app container to start", 30, || read(&dir.path().join("order")) == "one\ntwo\napp\n");
    let p = pod_json(&lab, "ordered").unwrap();
    let inits = p["status"]["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    assert_eq!(inits.len(), 2, "{p}");
    assert!(inits.iter().all(|c| c["state"]["terminated"]["reason"] == "Completed"), "{inits:?}");
    // A failing init container holds the app back and is retried.
    lab.wait_for("the failing init container to be retried", 60, || {
        pod_json(&lab, "broken-init").is_some_and(|p| {
            p["status"]["phase"] == "Pending"
                && p["status"]["initContainerStatuses"][0]["restartCount"].as_i64() >= Some(1)
                && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
        })
    });

    // A startup probe that has not passed: running, not started, not ready; then it passes.
    lab.wait_for("the slow pod's container to run", 60, || {
        pod_json(&lab, "slow").is_some_and(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object())
    });
    std::thread::sleep(Duration::from_secs(3));
    let p = pod_json(&lab, "slow").unwrap();
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!((cs["started"].as_bool(), cs["ready"].as_bool()), (Some(false), Some(false)), "{p}");
    std::fs::write(dir.path().join("started"), "").unwrap();
    lab.wait_for("the slow pod to be ready", 30, || {
        pod_json(&lab, "slow").is_some_and(|p| p["status"]["containerStatuses"][0]["ready"] == true)
    });
    assert_eq!(pod_json(&lab, "slow").unwrap()["status"]["containerStatuses"][0]["restartCount"], 0);

    // Liveness: two failures in a row restart the container, once (it heals itself on start).
    lab.wait_for("the lively pod to run", 60, || read(&dir.path().join("lively")) == "run\n");
    std::fs::write(dir.path().join("sick"), "").unwrap();
    lab.wait_for("the container to be restarted", 60, || {
        pod_json(&lab, "lively").is_some_and(|p| {
            let cs = &p["status"]["containerStatuses"][0];
            cs["restartCount"] == 1 && cs["state"]["running"].is_object() && cs["lastState"]["terminated"].is_object()
        })
    });
    assert_eq!(read(&dir.path().join("lively")), "run\nrun\n");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(pod_json(&lab, "lively").unwrap()["status"]["containerStatuses"][0]["restartCount"], 1);

    // The probe's output is the message, as the kubelet's.
    lab.wait_for("the kubelet's liveness events of lively", 20, || {
        let ev = events_of(&lab, "lively");
        ev.iter().any(|e| e.starts_with("Unhealthy: Liveness probe failed: feeling sick"))
            && ev.iter().any(|e| e == "Killing: Container main failed liveness probe, will be restarted")
    });
}
