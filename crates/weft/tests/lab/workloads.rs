//! Workloads as their controllers behave, driven by the real kubectl: a Deployment's rolling
//! update under a steady stream of requests (none may fail), `kubectl rollout
//! status/history/undo/pause/resume/restart` and `kubectl wait`; a DaemonSet with a pod on every
//! node that follows a Node added and removed, rolled and rolled back; a StatefulSet behind a
//! headless Service whose pods' names resolve in the cluster DNS, made in order and scaled down
//! in reverse; Jobs that complete and that fail at their backoffLimit.

use std::time::{Duration, Instant};

use serde_json::Value;
use weft_testkit::Lab;

fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

fn items(lab: &Lab, args: &[&str]) -> Vec<Value> {
    json(lab, args)["items"].as_array().cloned().unwrap_or_default()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {kubernetes.io/change-cause: "first"}
spec:
  replicas: 10
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 15
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 80}]
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
        # Endpoints drain before the server stops, as people do in real clusters.
        lifecycle: {preStop: {exec: {command: ["sleep", "4"]}}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#;

/// Requests to `url` from node-2, one fresh connection every 20 ms, until `stop` exists (at
/// most `limit` seconds, 20 000 requests): {"ok": n, "failed": [when and why], "pods": n}.
const LOAD: &str = r#"
import urllib.request, time, json, os, sys
url, stop, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
ok, failed, pods, start = 0, [], set(), time.time()
while time.time() - start < limit and not os.path.exists(stop) and ok + len(failed) < 20000:
    try:
        body = json.load(urllib.request.urlopen(url, timeout=3))
        ok += 1
        pods.add(body.get("pod"))
    except Exception as e:
        failed.append("%.2fs %s" % (time.time() - start, e))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed, "pods": len(pods)}))
"#;

fn replica_sets(lab: &Lab) -> Vec<Value> {
    items(lab, &["get", "rs", "-l", "app=web"])
}

fn revision(v: &Value) -> String {
    v["metadata"]["annotations"]["deployment.kubernetes.io/revision"].as_str().unwrap_or("").to_string()
}

fn rollout_ok(lab: &Lab, what: &str) {
    let out = lab.kubectl_ok(&["rollout", "status", what, "--timeout=180s"]);
    // (A StatefulSet's default partition 0 makes kubectl say "partitioned roll out complete".)
    assert!(out.contains("successfully rolled out") || out.contains("roll out complete"), "{out}");
}

fn env_of(d: &Value) -> Value {
    d["spec"]["template"]["spec"]["containers"][0]["env"].clone()
}

#[test]
fn deployment_rolls_without_a_failed_request() {
    let lab = Lab::up(&["--nodes", "3"]);
    lab.apply_str(WEB);
    rollout_ok(&lab, "deploy/web");
    let out = lab.kubectl_ok(&["wait", "--for=condition=Available", "deploy/web", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    let d = json(&lab, &["get", "deploy", "web"]);
    assert_eq!(revision(&d), "1");
    assert_eq!(d["status"]["availableReplicas"], 10, "{d}");
    assert_eq!(d["status"]["observedGeneration"], d["metadata"]["generation"]);
    let conds = d["status"]["conditions"].as_array().unwrap();
    assert!(conds.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"), "{conds:?}");
    assert!(conds.iter().any(|c| c["type"] == "Available" && c["reason"] == "MinimumReplicasAvailable"), "{conds:?}");
    let rs = replica_sets(&lab);
    assert_eq!(rs.len(), 1);
    let ann = &rs[0]["metadata"]["annotations"];
    assert_eq!(
        (&ann["deployment.kubernetes.io/desired-replicas"], &ann["deployment.kubernetes.io/max-replicas"]),
        (&Value::from("10"), &Value::from("13")),
        "25% surge of 10, rounded up"
    );
    assert_eq!(rs[0]["status"]["fullyLabeledReplicas"], 10);

    // The rolling update under load: a request every 20 ms through the Service from node-2.
    let svc = json(&lab, &["get", "svc", "web"]);
    let url = format!("http://{}/", svc["spec"]["clusterIP"].as_str().unwrap());
    let stop = lab.home.path().join("stop-load");
    let stop_s = stop.to_str().unwrap().to_string();
    let load = std::thread::scope(|s| {
        let worker = s.spawn(|| lab.exec(&["--node", "node-2"], &["python3", "-c", LOAD, &url, &stop_s, "240"]));
        std::thread::sleep(Duration::from_secs(2));
        lab.kubectl_ok(&["set", "env", "deploy/web", "VERSION=2"]);
        lab.kubectl_ok(&["annotate", "deploy/web", "kubernetes.io/change-cause=second", "--overwrite"]);
        rollout_ok(&lab, "deploy/web");
        // Old pods still draining finish their preStop and go.
        std::thread::sleep(Duration::from_secs(6));
        std::fs::write(&stop, "").unwrap();
        worker.join().unwrap()
    });
    let out = String::from_utf8_lossy(&load.stdout).to_string();
    let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {}", text(&load)));
    eprintln!("requests during the rollout: {report}");
    let failed = report["failed"].as_array().unwrap();
    assert!(report["ok"].as_u64() > Some(100), "{report}");
    if !failed.is_empty() {
        // Where the unanswered connections went: node-2's conntrack keeps them (UNREPLIED), with
        // the backend they were sent to; and which pod had that address.
        let flows = lab.exec(&["--node", "node-2"], &["conntrack", "-L", "-p", "tcp", "--state", "SYN_SENT"]);
        let pods = lab.kubectl(&["get", "pods", "-o", "wide"]);
        let events = lab.kubectl(&["get", "events", "-o", "wide", "--sort-by=.lastTimestamp"]);
        let log = std::fs::read_to_string(lab.state_dir().join("weft.log")).unwrap_or_default();
        let log: Vec<&str> =
            log.lines().filter(|l| l.contains("web-") || l.contains("WARN") || l.contains("ERROR")).collect();
        panic!(
            "{} failed requests during the rollout: {report}\nunanswered flows:\n{}\npods:\n{}\nevents:\n{}\nlog:\n{}",
            failed.len(),
            text(&flows),
            text(&pods),
            text(&events),
            log[log.len().saturating_sub(150)..].join("\n")
        );
    }
    assert!(report["pods"].as_u64() >= Some(11), "old and new pods answered: {report}");

    let d = json(&lab, &["get", "deploy", "web"]);
    assert_eq!(revision(&d), "2");
    assert_eq!((d["status"]["updatedReplicas"].as_i64(), d["status"]["replicas"].as_i64()), (Some(10), Some(10)));
    // The controllers' Events, in kube-controller-manager's words.
    let mut ev = String::new();
    let seen = weft_testkit::run::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        ev = lab.kubectl_ok(&["get", "events", "--field-selector", "reason=ScalingReplicaSet"]);
        ev.contains("Scaled up replica set web-") && ev.contains("Scaled down replica set web-")
    });
    assert!(seen, "ScalingReplicaSet events: {ev}\n{}", lab.kubectl_ok(&["get", "events"]));
    let created = lab.kubectl_ok(&["get", "events", "--field-selector", "reason=SuccessfulCreate"]);
    assert!(created.contains("Created pod: web-"), "{created}");
    let scheduled = lab.kubectl_ok(&["get", "events", "--field-selector", "reason=Scheduled"]);
    assert!(scheduled.contains("Successfully assigned default/web-"), "{scheduled}");
    let history = lab.kubectl_ok(&["rollout", "history", "deploy/web"]);
    assert!(history.contains("1         first") && history.contains("2         second"), "{history}");

    // Undo: the first template again, as revision 3 (its ReplicaSet comes back).
    let out = lab.kubectl_ok(&["rollout", "undo", "deploy/web"]);
    assert!(out.contains("rolled back"), "{out}");
    rollout_ok(&lab, "deploy/web");
    let d = json(&lab, &["get", "deploy", "web"]);
    assert!(env_of(&d).is_null(), "{d}");
    assert_eq!(revision(&d), "3");
    let rs = replica_sets(&lab);
    assert_eq!(
        rs.len(),
        2,
        "the first ReplicaSet is reused: {:#?} {:#}",
        rs.iter().map(|r| (&r["metadata"]["name"], &r["spec"]["template"])).collect::<Vec<_>>(),
        d["spec"]["template"]
    );
    let active: Vec<&Value> = rs.iter().filter(|r| r["spec"]["replicas"] == 10).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(revision(active[0]), "3");
    assert!(active[0]["spec"]["template"]["spec"]["containers"][0]["env"].is_null());

    // Pause: a template change waits; resume rolls it.
    lab.kubectl_ok(&["rollout", "pause", "deploy/web"]);
    lab.kubectl_ok(&["set", "env", "deploy/web", "VERSION=4"]);
    lab.wait_for("the paused condition", 20, || {
        let d = json(&lab, &["get", "deploy", "web"]);
        d["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused" && c["status"] == "Unknown")
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replica_sets(&lab).len(), 2, "no new ReplicaSet while paused");
    lab.kubectl_ok(&["rollout", "resume", "deploy/web"]);
    rollout_ok(&lab, "deploy/web");
    assert_eq!(replica_sets(&lab).len(), 3);
    assert_eq!(revision(&json(&lab, &["get", "deploy", "web"])), "4");

    // Restart: a template annotation, a new ReplicaSet.
    lab.kubectl_ok(&["rollout", "restart", "deploy/web"]);
    rollout_ok(&lab, "deploy/web");
    let rs = replica_sets(&lab);
    assert_eq!(rs.len(), 4);
    let newest = rs.iter().find(|r| r["spec"]["replicas"] == 10).unwrap();
    assert!(newest["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string());
    let history = lab.kubectl_ok(&["rollout", "history", "deploy/web"]);
    assert!(history.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count() >= 4, "{history}");

    // Recreate: every old pod goes before a new one is made.
    lab.kubectl_ok(&[
        "patch",
        "deploy/web",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":3,"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
    ]);
    rollout_ok(&lab, "deploy/web");
    lab.kubectl_ok(&["set", "env", "deploy/web", "VERSION=6"]);
    rollout_ok(&lab, "deploy/web");
    let pods = items(&lab, &["get", "pods", "-l", "app=web"]);
    assert!(pods.len() >= 3);
}

const AGENT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: agent
        image: busybox
        command: ["sleep", "3600"]
"#;

const EXTRA_NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: extra-1, labels: {kubernetes.io/hostname: extra-1}}
spec: {unschedulable: true}
"#;

fn agents(lab: &Lab) -> Vec<Value> {
    items(lab, &["get", "pods", "-l", "app=agent"])
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

#[test]
fn daemonset_follows_the_nodes() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(AGENT);
    rollout_ok(&lab, "ds/agent");
    let pods = agents(&lab);
    let mut nodes: Vec<&str> = pods.iter().map(|p| p["spec"]["nodeName"].as_str().unwrap_or("")).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"], "one pod per node");
    for p in &pods {
        let term = &p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0];
        assert_eq!((&term["key"], &term["values"][0]), (&Value::from("metadata.name"), &p["spec"]["nodeName"]));
        let tolerations = p["spec"]["tolerations"].as_array().unwrap();
        assert!(tolerations.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["effect"] == "NoExecute"));
    }
    let ds = json(&lab, &["get", "ds", "agent"]);
    assert_eq!(
        (ds["status"]["desiredNumberScheduled"].as_i64(), ds["status"]["numberReady"].as_i64()),
        (Some(2), Some(2)),
        "{ds}"
    );
    let table = lab.kubectl_ok(&["get", "ds", "agent"]);
    assert!(
        table.starts_with("NAME    DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR   AGE"),
        "{table}"
    );

    // A Node added through the API (no kubelet: it reports itself Ready here, cordoned so that
    // nothing else goes there) gets its pod, bound to it; deleted, its pod goes (PodGC).
    let f = lab.home.path().join("extra.yaml");
    std::fs::write(&f, EXTRA_NODE).unwrap();
    lab.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
    lab.kubectl_ok(&[
        "patch",
        "node",
        "extra-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],"allocatable":{"pods":"10"}}}"#,
    ]);
    lab.wait_for("a daemon pod bound to extra-1", 30, || {
        agents(&lab).iter().any(|p| p["spec"]["nodeName"] == "extra-1")
    });
    lab.wait_for("the DaemonSet to count 3 nodes", 20, || {
        let ds = json(&lab, &["get", "ds", "agent"]);
        ds["status"]["desiredNumberScheduled"] == 3 && ds["status"]["currentNumberScheduled"] == 3
    });
    lab.kubectl_ok(&["delete", "node", "extra-1"]);
    lab.wait_for("the pod of the deleted node to go", 30, || {
        let pods = agents(&lab);
        pods.len() == 2 && pods.iter().all(|p| p["spec"]["nodeName"] != "extra-1")
    });
    lab.wait_for("the DaemonSet to count 2 nodes", 20, || {
        json(&lab, &["get", "ds", "agent"])["status"]["desiredNumberScheduled"] == 2
    });

    // A rolling update, its history, and back.
    lab.kubectl_ok(&["set", "env", "ds/agent", "V=2"]);
    rollout_ok(&lab, "ds/agent");
    let pods = agents(&lab);
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p["spec"]["containers"][0]["env"][0]["value"] == "2"), "{pods:?}");
    let history = lab.kubectl_ok(&["rollout", "history", "ds/agent"]);
    assert!(history.contains("1 ") && history.contains("2 "), "{history}");
    let revs = items(&lab, &["get", "controllerrevisions", "-l", "app=agent"]);
    assert_eq!(revs.len(), 2, "{revs:?}");
    let out = lab.kubectl_ok(&["rollout", "undo", "ds/agent"]);
    assert!(out.contains("rolled back"), "{out}");
    lab.wait_for("the pods back on the first template", 60, || {
        let pods = agents(&lab);
        pods.len() == 2
            && pods.iter().all(|p| p["spec"]["containers"][0]["env"].is_null() && p["status"]["phase"] == "Running")
    });
    rollout_ok(&lab, "ds/agent");
    let table = lab.kubectl_ok(&["get", "controllerrevisions"]);
    assert!(table.contains("daemonset.apps/agent") && table.lines().any(|l| l.contains(" 3 ")), "{table}");
}

const WEB_STS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: nginx}
  ports: [{name: web, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 3
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports: [{containerPort: 80, name: web}]
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
  volumeClaimTemplates:
  - metadata: {name: www}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: busybox, command: ["sleep", "600"]}]
"#;

fn running_ready(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[test]
fn statefulset_pods_have_stable_names_in_order_and_in_dns() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(WEB_STS);
    // OrderedReady: a pod exists only once the one before it is Running and Ready.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pods = items(&lab, &["get", "pods", "-l", "app=nginx"]);
        let at = |i: usize| pods.iter().find(|p| p["metadata"]["name"] == format!("web-{i}").as_str());
        for i in 1..3 {
            if at(i).is_some() {
                assert!(at(i - 1).is_some_and(running_ready), "web-{i} exists before web-{} is ready: {pods:?}", i - 1);
            }
        }
        if (0..3).all(|i| at(i).is_some_and(running_ready)) {
            break;
        }
        assert!(Instant::now() < deadline, "the StatefulSet did not come up: {pods:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    rollout_ok(&lab, "sts/web");
    let pods: Vec<Value> = items(&lab, &["get", "pods", "-l", "app=nginx"]);
    let mut names: Vec<&str> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    let by = |n: &str| pods.iter().find(|p| p["metadata"]["name"] == n).unwrap().clone();
    for (i, n) in names.iter().enumerate() {
        let p = by(n);
        assert_eq!(p["spec"]["hostname"], *n);
        assert_eq!(p["spec"]["subdomain"], "nginx");
        assert_eq!(p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], *n);
        assert_eq!(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"], i.to_string());
    }
    let sts = json(&lab, &["get", "sts", "web"]);
    assert_eq!(sts["status"]["readyReplicas"], 3, "{sts}");
    assert_eq!(sts["status"]["currentRevision"], sts["status"]["updateRevision"]);
    assert!(lab.kubectl_ok(&["get", "sts", "web"]).contains("3/3"));

    // The per-pod names resolve in the cluster DNS.
    lab.wait_running("default", 4);
    for n in ["web-0", "web-1", "web-2"] {
        let ip = by(n)["status"]["podIP"].as_str().unwrap().to_string();
        let name = format!("{n}.nginx.default.svc.cluster.local");
        let mut got = String::new();
        lab.wait_for(&format!("{name} to resolve to {ip}"), 30, || {
            got =
                String::from_utf8_lossy(&lab.exec(&["client"], &["nslookup", "-timeout=2", &name]).stdout).to_string();
            got.contains(&ip)
        });
    }
    let all = lab.exec_ok(&["client"], &["nslookup", "nginx.default.svc.cluster.local"]);
    assert_eq!(all.matches("Address: 10.244.").count(), 3, "{all}");

    // Scale down: the highest ordinal first, one at a time.
    lab.kubectl_ok(&["scale", "sts/web", "--replicas=1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<String> = items(&lab, &["get", "pods", "-l", "app=nginx"])
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert!(!live.iter().any(|n| n == "web-2") || live.iter().any(|n| n == "web-1"), "web-1 went before web-2");
        if live == ["web-0"] {
            break;
        }
        assert!(Instant::now() < deadline, "scale down did not finish: {live:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A rolling update replaces the pod with the update revision.
    lab.kubectl_ok(&["set", "env", "sts/web", "V=2"]);
    rollout_ok(&lab, "sts/web");
    let p = items(&lab, &["get", "pods", "-l", "app=nginx"]);
    assert_eq!(p[0]["spec"]["containers"][0]["env"][0]["value"], "2");
    let sts = json(&lab, &["get", "sts", "web"]);
    assert_eq!(p[0]["metadata"]["labels"]["controller-revision-hash"], sts["status"]["updateRevision"]);
}

const JOBS: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: ok}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["sh", "-c", "sleep 1"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["sh", "-c", "exit 3"]}]
"#;

#[test]
fn jobs_complete_and_fail_at_their_backoff_limit() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(JOBS);
    // Never more than parallelism at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let running = items(&lab, &["get", "pods", "-l", "batch.kubernetes.io/job-name=ok"])
            .iter()
            .filter(|p| p["status"]["phase"] != "Succeeded" && p["status"]["phase"] != "Failed")
            .count();
        assert!(running <= 2, "{running} pods of a job with parallelism 2");
        if json(&lab, &["get", "job", "ok"])["status"]["succeeded"] == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = lab.kubectl_ok(&["wait", "--for=condition=complete", "job/ok", "--timeout=90s"]);
    assert!(out.contains("condition met"), "{out}");
    let job = json(&lab, &["get", "job", "ok"]);
    assert_eq!((job["status"]["succeeded"].as_i64(), job["status"]["active"].as_i64()), (Some(3), Some(0)), "{job}");
    assert!(job["status"]["completionTime"].is_string());
    let pods = items(&lab, &["get", "pods", "-l", "batch.kubernetes.io/job-name=ok"]);
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter().all(|p| p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == job["metadata"]["uid"])
    );
    let table = lab.kubectl_ok(&["get", "job", "ok"]);
    assert!(table.contains("Complete") && table.contains("3/3"), "{table}");

    // Two failures (the second after a 10 s back-off) exhaust backoffLimit 1.
    let out = lab.kubectl_ok(&["wait", "--for=condition=failed", "job/bad", "--timeout=120s"]);
    assert!(out.contains("condition met"), "{out}");
    let job = json(&lab, &["get", "job", "bad"]);
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let failed = job["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").cloned();
    assert_eq!(failed.map(|c| c["reason"].clone()), Some(Value::from("BackoffLimitExceeded")));
    assert!(lab.kubectl_ok(&["get", "job", "bad"]).contains("Failed"));
    lab.wait_for("the jobs' Events", 20, || {
        let ev = lab.kubectl_ok(&["get", "events"]);
        ev.contains("Job completed") && ev.contains("BackoffLimitExceeded")
    });
}
