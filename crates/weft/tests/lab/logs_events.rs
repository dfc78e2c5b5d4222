//! `kubectl logs` (follow, previous, since, tail, limit-bytes, timestamps, containers,
//! selectors), Events as kube-apiserver keeps them (kube-rs's Recorder, `kubectl describe`,
//! `kubectl get events`, the TTL) and `kubectl get -w` keeping its columns, with the real kubectl
//! against a lab.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use weft_testkit::Lab;

/// A pod running `script` in one container `c`.
fn pod(name: &str, restart: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  restartPolicy: {restart}\n  containers:\n  - name: c\n    image: busybox\n    command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `kubectl logs ARGS` once it succeeds with output that `done` accepts (bounded).
fn logs_until(lab: &Lab, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let mut last = String::new();
    lab.wait_for(&format!("kubectl {all:?}"), 60, || {
        let o = lab.kubectl(&all);
        last = if o.status.success() { String::from_utf8_lossy(&o.stdout).to_string() } else { stderr_of(&o) };
        o.status.success() && done(&last)
    });
    last
}

#[test]
fn kubectl_logs_follows_and_reads_with_its_options() {
    let lab = Lab::up(&["--nodes", "1"]);
    // Long enough (5.3 s) that `-f` starts before it ends, however slowly `logs_until` saw
    // `start` (through a real kube-apiserver and the kubelet API, each poll takes longer).
    let script = "echo start; for i in 1 2 3 4 5; do sleep 1; echo line-$i; done; sleep 0.3; echo bye >&2";
    lab.apply_str(&pod("counter", "Never", script));
    lab.apply_str(&pod("lines", "Never", "for i in $(seq 1 10); do echo l$i; done; sleep 2; echo late; sleep 600"));
    lab.apply_str(&pod("huge", "Never", "head -c 100000 /dev/zero | tr '\\0' x; echo; echo after; sleep 600"));
    lab.apply_str(&pod("crash", "Always", "echo run-$(date +%s%N); sleep 4; exit 1"));
    lab.apply_str(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: two\nspec:\n  containers:\n  - name: a\n    image: busybox\n    command: [\"sh\", \"-c\", \"echo from-a; sleep 600\"]\n  - name: b\n    image: busybox\n    command: [\"sh\", \"-c\", \"echo from-b; sleep 600\"]\n",
    );
    for m in ["m1", "m2"] {
        lab.apply_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {m}\n  labels: {{app: multi}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [\"sh\", \"-c\", \"echo hello-from-$(hostname); sleep 600\"]\n"
        ));
    }

    // -f while the container runs: each line as it comes, and the end with the container's.
    logs_until(&lab, &["counter"], |l| l.starts_with("start\n"));
    let started = Instant::now();
    let followed = lab.kubectl_ok(&["logs", "-f", "counter"]);
    assert_eq!(followed, "start\nline-1\nline-2\nline-3\nline-4\nline-5\nbye\n");
    assert!(started.elapsed() > Duration::from_millis(1200), "it followed: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30), "it ended with the container: {:?}", started.elapsed());
    // `weft logs -f` of the ended container prints it whole and ends too.
    assert_eq!(lab.weft_ok(&["logs", "-f", "counter"]), followed);

    // --tail, --limit-bytes, --timestamps, --since-time, --since.
    let all = logs_until(&lab, &["lines"], |l| l.ends_with("late\n"));
    let want: String = (1..=10).map(|i| format!("l{i}\n")).chain(["late\n".to_string()]).collect();
    assert_eq!(all, want);
    assert_eq!(lab.kubectl_ok(&["logs", "lines", "--tail=3"]), "l9\nl10\nlate\n");
    assert_eq!(lab.kubectl_ok(&["logs", "lines", "--limit-bytes=5"]), "l1\nl2");
    let stamped = lab.kubectl_ok(&["logs", "lines", "--timestamps"]);
    let mut late_at = "";
    for (line, want) in stamped.lines().zip(want.lines()) {
        let (ts, text) = line.split_once(' ').unwrap();
        assert_eq!(text, want);
        // RFC 3339 with nine digits of nanoseconds, as the kubelet writes it.
        let shape = ts.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            29 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
        assert!(ts.len() == 30 && shape, "{line}");
        late_at = ts;
    }
    assert_eq!(lab.kubectl_ok(&["logs", "lines", &format!("--since-time={late_at}")]), "late\n");
    assert_eq!(lab.kubectl_ok(&["logs", "lines", "--since=1h"]), want);

    // A line of 100 000 bytes comes back whole (written in parts, joined when read).
    let huge = logs_until(&lab, &["huge"], |l| l.ends_with("after\n"));
    assert_eq!(huge, format!("{}\nafter\n", "x".repeat(100_000)));

    // -c, --all-containers, -l across pods.
    assert_eq!(logs_until(&lab, &["two", "-c", "b"], |l| !l.is_empty()), "from-b\n");
    let both = logs_until(&lab, &["two", "--all-containers"], |l| l.lines().count() == 2);
    // kubectl keeps its requests in a map: either order.
    assert!(both.contains("from-a\n") && both.contains("from-b\n"), "{both}");
    let multi = logs_until(&lab, &["-l", "app=multi"], |l| l.lines().count() == 2);
    assert!(multi.contains("hello-from-m1\n") && multi.contains("hello-from-m2\n"), "{multi}");

    // --previous: the instance before the restart, not the rotated file of the current one.
    let o = lab.kubectl(&["logs", "crash", "--previous"]);
    if !o.status.success() {
        assert!(stderr_of(&o).contains("previous terminated container \"c\" in pod \"crash\" not found"), "{o:?}");
    }
    lab.wait_for("crash restarted and running", 60, || {
        let p: serde_json::Value =
            serde_json::from_str(&lab.kubectl_ok(&["get", "pod", "crash", "-o", "json"])).unwrap();
        let st = &p["status"]["containerStatuses"][0];
        st["restartCount"].as_i64() >= Some(1) && st["state"]["running"].is_object()
    });
    let previous = lab.kubectl_ok(&["logs", "crash", "--previous"]);
    let current = lab.kubectl_ok(&["logs", "crash"]);
    assert!(previous.starts_with("run-") && previous.lines().count() == 1, "{previous}");
    assert!(current.starts_with("run-") && current.lines().count() == 1, "{current}");
    assert_ne!(previous, current, "a new instance, a new log");

    // A follow of a container that would run for ever ends when its pod is deleted.
    lab.apply_str(&pod("forever", "Always", "echo hi; sleep 600"));
    logs_until(&lab, &["forever"], |l| l == "hi\n");
    let mut follow = Command::new(weft_testkit::lab::kubectl_bin())
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(["logs", "-f", "forever"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl is installed");
    std::thread::sleep(Duration::from_millis(500));
    assert!(follow.try_wait().unwrap().is_none(), "still following");
    lab.kubectl_ok(&["delete", "pod", "forever", "--grace-period=1", "--wait=false"]);
    let ended = weft_testkit::run::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        follow.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = follow.kill();
    }
    let out = follow.wait_with_output().unwrap();
    assert!(ended, "kubectl logs -f went on after the pod was deleted");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    // Hostile requests get kube-apiserver's answers.
    let o = lab.kubectl(&["logs", "lines", "-c", "nope"]);
    assert!(!o.status.success() && stderr_of(&o).contains("container nope is not valid for pod lines"), "{o:?}");
    let raw = "/api/v1/namespaces/default/pods/lines/log";
    let o = lab.kubectl(&["get", "--raw", &format!("{raw}?limitBytes=0")]);
    assert!(!o.status.success() && stderr_of(&o).contains("must be greater than 0"), "{o:?}");
    let o = lab.kubectl(&["get", "--raw", &format!("{raw}?sinceTime=garbage")]);
    let want = r#"parsing time "garbage" as "2006-01-02T15:04:05Z07:00": cannot parse "garbage" as "2006""#;
    assert!(!o.status.success() && stderr_of(&o).contains(want), "{o:?}");
    let o = lab.kubectl(&["logs", "nonexistent"]);
    assert!(!o.status.success() && stderr_of(&o).contains("not found"), "{o:?}");
}

#[tokio::test]
async fn recorder_events_show_in_describe_and_get_events_and_expire() {
    let lab = Lab::up(&["--nodes", "0"]);
    lab.apply_str(&pod("web", "Always", "sleep 600"));
    let client = lab.client().await;
    let p = kube::Api::<Pod>::default_namespaced(client.clone()).get("web").await.unwrap();
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "weft-test".into(), instance: Some("node-9".into()) });
    let ev = Event {
        type_: EventType::Warning,
        reason: "Unhealthy".into(),
        note: Some("Readiness probe failed: connection refused".into()),
        action: "Probe".into(),
        secondary: None,
    };
    for _ in 0..3 {
        recorder.publish(&ev, &p.object_ref(&())).await.unwrap();
    }
    // `kubectl describe` finds it by the pod's name, namespace, kind and uid, with its count.
    let d = lab.kubectl_ok(&["describe", "pod", "web"]);
    let events = d.split_once("\nEvents:").map(|(_, e)| e).unwrap_or_else(|| panic!("{d}"));
    let line = events.lines().find(|l| l.contains("Unhealthy")).unwrap_or_else(|| panic!("{d}"));
    assert!(line.contains("Warning") && line.contains("(x3 over") && line.contains("weft-test"), "{line}");
    assert!(line.contains("Readiness probe failed: connection refused"), "{line}");
    // `kubectl get events`: kube-apiserver's columns; COUNT with -o wide.
    let get = lab.kubectl_ok(&["get", "events"]);
    let header = get.lines().next().unwrap();
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{get}");
    }
    let row = get.lines().find(|l| l.contains("Unhealthy")).unwrap_or_else(|| panic!("{get}"));
    assert!(row.contains("Warning") && row.contains("pod/web") && row.contains("Readiness probe failed"), "{row}");
    let wide = lab.kubectl_ok(&["get", "events", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("COUNT"), "{wide}");
    let row = wide.lines().find(|l| l.contains("Unhealthy")).unwrap();
    assert!(row.contains("weft-test, node-9") && row.split_whitespace().any(|c| c == "3"), "{row}");
    // The same Event through events.k8s.io/v1.
    let v1 = lab.kubectl_ok(&["get", "events.v1.events.k8s.io", "-o", "json"]);
    let v1: serde_json::Value = serde_json::from_str(&v1).unwrap();
    let e = v1["items"].as_array().unwrap().iter().find(|e| e["reason"] == "Unhealthy").unwrap();
    assert_eq!(e["regarding"]["name"], "web");
    assert_eq!(e["series"]["count"], 3);
    assert!(lab.kubectl_ok(&["get", "events.v1.events.k8s.io"]).contains("pod/web"));

    // A short TTL (kube-system/weft-config eventTTL): the Event goes once that long unwritten.
    let cm = lab.home.path().join("weft-config.yaml");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: weft-config, namespace: kube-system}\ndata: {eventTTL: 3s}\n").unwrap();
    lab.kubectl_ok(&["apply", "-f", cm.to_str().unwrap()]);
    let written = Instant::now();
    let ev = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"short-lived"},"involvedObject":{"kind":"Pod","name":"web","namespace":"default"},"reason":"Brief","message":"soon gone","type":"Normal"}"#;
    let f = lab.home.path().join("event.json");
    std::fs::write(&f, ev).unwrap();
    lab.kubectl_ok(&["create", "-f", f.to_str().unwrap()]);
    assert!(lab.kubectl_ok(&["get", "events", "-o", "name"]).contains("short-lived"));
    lab.wait_for("the Event's TTL", 30, || !lab.kubectl_ok(&["get", "events", "-o", "name"]).contains("short-lived"));
    assert!(written.elapsed() >= Duration::from_secs(3), "gone before its TTL: {:?}", written.elapsed());
}

/// `kubectl get pods -w ARGS`, read until `enough` holds on the output (60 s at most); then
/// killed (by its pid: the process itself, so its output ends).
fn watch_pods(lab: &Lab, args: &[&str], act: impl FnOnce(), enough: impl Fn(&str) -> bool) -> String {
    let mut child = Command::new(weft_testkit::lab::kubectl_bin())
        .arg("--kubeconfig")
        .arg(lab.kubeconfig())
        .args(["get", "pods", "-w"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl is installed");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The watch is open before the change.
    std::thread::sleep(Duration::from_secs(1));
    act();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    while !enough(&text) && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&l);
            text.push('\n');
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    text
}

#[test]
fn kubectl_get_pods_watch_keeps_its_columns() {
    let lab = Lab::up(&["--nodes", "1"]);
    let running = |t: &str| t.lines().any(|l| l.starts_with("w1 ") && l.contains("Running"));
    let text = watch_pods(&lab, &[], || lab.apply_str(&pod("w1", "Always", "sleep 600")), running);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{text}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.len() >= 2, "a row per change: {text}");
    for r in &rows {
        assert_eq!(r.len(), 5, "every row has all the columns: {text}");
        assert_eq!(r[0], "w1");
    }
    assert_eq!(&rows.last().unwrap()[1..4], ["1/1", "Running", "0"], "{text}");
    assert!(rows.iter().any(|r| r[2] != "Running"), "the status changed in place of a row: {text}");

    // -o wide: the wide columns on every row, the pod's IP and node once it runs.
    let ip = |t: &str| t.lines().any(|l| l.starts_with("w2 ") && l.contains("Running") && l.contains("10.244."));
    let text = watch_pods(&lab, &["-o", "wide"], || lab.apply_str(&pod("w2", "Always", "sleep 600")), ip);
    let header = text.lines().next().unwrap();
    for col in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"] {
        assert!(header.contains(col), "{text}");
    }
    let last: Vec<&str> = text.lines().rev().find(|l| l.starts_with("w2 ")).unwrap().split_whitespace().collect();
    assert_eq!(last.len(), 9, "{text}");
    assert!(last[5].starts_with("10.244.") && last[6] == "node-1", "{text}");
}
