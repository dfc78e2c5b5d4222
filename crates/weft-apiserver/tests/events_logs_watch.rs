//! Events as kube-apiserver keeps them (kube-rs's Recorder through events.k8s.io/v1, read back as
//! core/v1 with field selectors and as a Table; the TTL; the bound on their number), watches that
//! send Tables (`kubectl get -w`), and the log subresource's options and streaming, over real
//! HTTPS on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt};
use http::Request;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use weft_apiserver::pod_logs::{LogOptions, LogStream, PodLogs, PodRef};
use weft_apiserver::{Config, Running, start_with_pod_logs};

struct Server {
    _dir: tempfile::TempDir,
    running: Running,
    client: kube::Client,
}

async fn server_with(logs: Arc<dyn PodLogs>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let running = start_with_pod_logs(
        Config {
            name: "events".into(),
            state_dir: dir.path().to_path_buf(),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            node_port_range: 30000..=32767,
            port: 0,
            advertise_address: None,
        },
        logs,
    )
    .await
    .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&running.kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).unwrap();
    Server { _dir: dir, running, client }
}

async fn server() -> Server {
    server_with(Arc::new(weft_apiserver::pod_logs::NoPodLogs)).await
}

/// Sends a request; returns the status code and the body as JSON (or a string).
async fn call(c: &kube::Client, method: &str, path: &str, accept: &str, body: Option<Value>) -> (u16, Value) {
    let ctype = if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
    let mut req = Request::builder().method(method).uri(path).header("content-type", ctype);
    if !accept.is_empty() {
        req = req.header("accept", accept);
    }
    let req = req.body(body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default()).unwrap();
    match c.request_text(req).await {
        Ok(t) => (200, serde_json::from_str(&t).unwrap_or(Value::String(t))),
        Err(kube::Error::Api(s)) => (s.code, json!({"message": s.message, "reason": s.reason})),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
const EVENTS: &str = "/api/v1/namespaces/default/events";

fn pod_ref() -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: Some("u-web".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn recorder_events_are_core_events_with_their_count_and_columns() {
    let s = server().await;
    let recorder = Recorder::new(
        s.client.clone(),
        Reporter { controller: "weft.dev/test".into(), instance: Some("node-1".into()) },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "Unhealthy".into(),
        note: Some("Readiness probe failed".into()),
        action: "Probe".into(),
        secondary: None,
    };
    // Created once, then its series merge-patched twice.
    for _ in 0..3 {
        recorder.publish(&ev, &pod_ref()).await.unwrap();
    }
    // As `kubectl describe pod` asks for them.
    let sel = "involvedObject.name=web,involvedObject.namespace=default,involvedObject.uid=u-web";
    let (code, list) = call(&s.client, "GET", &format!("{EVENTS}?fieldSelector={sel}"), "", None).await;
    assert_eq!(code, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let e = &items[0];
    assert_eq!(e["apiVersion"], "v1");
    assert_eq!(e["involvedObject"]["name"], "web");
    assert_eq!(e["message"], "Readiness probe failed");
    assert_eq!(e["reportingComponent"], "weft.dev/test");
    assert_eq!(e["reportingInstance"], "node-1");
    assert_eq!(e["series"]["count"], 3);
    assert!(e.get("note").is_none() && e.get("regarding").is_none());
    // Other field labels kube-apiserver has for Events; an unknown one is its 400.
    for (sel, n) in [("reason=Unhealthy,type=Warning", 1), ("involvedObject.kind=Node", 0), ("source=weft.dev/test", 1)]
    {
        let (_, l) = call(&s.client, "GET", &format!("{EVENTS}?fieldSelector={sel}"), "", None).await;
        assert_eq!(l["items"].as_array().unwrap().len(), n, "{sel}");
    }
    let (code, v) = call(&s.client, "GET", &format!("{EVENTS}?fieldSelector=note=x"), "", None).await;
    assert_eq!((code, v["message"].as_str().unwrap()), (400, "field label not supported: note"));
    // `kubectl get events`: kube-apiserver's columns, the count from the series.
    let (_, t) = call(&s.client, "GET", EVENTS, TABLE, None).await;
    let cols: Vec<&str> =
        t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        cols,
        ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source", "Message", "First Seen", "Count", "Name"]
    );
    let cells = &t["rows"][0]["cells"];
    assert_eq!(cells[1], "Warning");
    assert_eq!(cells[3], "pod/web");
    assert_eq!(cells[5], "weft.dev/test, node-1");
    assert_eq!(cells[8], 3);
    // The same storage through events.k8s.io/v1, with its own field labels.
    let v1 = "/apis/events.k8s.io/v1/namespaces/default/events";
    let (code, l) = call(&s.client, "GET", &format!("{v1}?fieldSelector=regarding.name=web"), "", None).await;
    assert_eq!(code, 200, "{l}");
    let e1 = &l["items"][0];
    assert_eq!(e1["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e1["regarding"]["uid"], "u-web");
    assert_eq!(e1["note"], "Readiness probe failed");
    assert_eq!(e1["reportingController"], "weft.dev/test");
    assert_eq!(e1["series"]["count"], 3);
    let (_, t) = call(&s.client, "GET", v1, TABLE, None).await;
    assert_eq!(t["rows"][0]["object"]["apiVersion"], "events.k8s.io/v1");
    // Discovery names the group, so kubectl finds `events.v1.events.k8s.io`.
    let (code, d) = call(&s.client, "GET", "/apis/events.k8s.io/v1", "", None).await;
    assert_eq!(code, 200);
    assert_eq!(d["resources"][0]["name"], "events");
}

#[tokio::test]
async fn events_expire_a_ttl_after_their_last_write() {
    let s = server().await;
    let cm = json!({"metadata": {"name": "weft-config", "namespace": "kube-system"}, "data": {"eventTTL": "2s"}});
    assert_eq!(call(&s.client, "POST", "/api/v1/namespaces/kube-system/configmaps", "", Some(cm)).await.0, 200);
    let ev = |name: &str| {
        json!({"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
               "reason": "Started", "message": "m", "count": 1, "type": "Normal"})
    };
    let start = Instant::now();
    assert_eq!(call(&s.client, "POST", EVENTS, "", Some(ev("kept"))).await.0, 200);
    assert_eq!(call(&s.client, "POST", EVENTS, "", Some(ev("gone"))).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A write renews the TTL (etcd's lease is renewed by every write).
    let (code, _) = call(&s.client, "PATCH", &format!("{EVENTS}/kept"), "", Some(json!({"count": 2}))).await;
    assert_eq!(code, 200);
    let deadline = start + Duration::from_secs(10);
    loop {
        let gone = call(&s.client, "GET", &format!("{EVENTS}/gone"), "", None).await.0 == 404;
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "the Event did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(start.elapsed() >= Duration::from_secs(2), "expired before its TTL: {:?}", start.elapsed());
    // `gone` went at least 2 s after its write; `kept`, written 1.5 s later, is still there.
    if start.elapsed() < Duration::from_millis(3300) {
        assert_eq!(call(&s.client, "GET", &format!("{EVENTS}/kept"), "", None).await.0, 200);
    }
    loop {
        if call(&s.client, "GET", &format!("{EVENTS}/kept"), "", None).await.0 == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed Event did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_flood_of_events_stays_bounded() {
    let s = server().await;
    let n = 10_000;
    let client = s.client.clone();
    futures::stream::iter(0..n)
        .map(|i| {
            let c = client.clone();
            async move {
                let ev = json!({"metadata": {"name": format!("flood-{i:05}")},
                    "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
                    "reason": "Flood", "message": "x".repeat(200), "type": "Warning"});
                call(&c, "POST", EVENTS, "", Some(ev)).await.0
            }
        })
        .buffer_unordered(64)
        .for_each(|code| async move { assert_eq!(code, 200) })
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = loop {
        let (items, _) = s.running.api.store.list("events", Some("default"));
        if items.len() <= weft_apiserver::events::MAX_PER_NAMESPACE || Instant::now() > deadline {
            break items.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(count, weft_apiserver::events::MAX_PER_NAMESPACE);
    // The newest stay, the oldest went.
    let (code, _) = call(&s.client, "GET", &format!("{EVENTS}/flood-{:05}", n - 1), "", None).await;
    assert_eq!(code, 200);
    assert_eq!(call(&s.client, "GET", &format!("{EVENTS}/flood-00000"), "", None).await.0, 404);
}

#[tokio::test]
async fn a_table_watch_sends_one_row_per_event_with_its_columns() {
    let s = server().await;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(call(&s.client, "POST", pods, "", Some(pod)).await.0, 200);
    let req = Request::builder()
        .uri(format!("{pods}?watch=true&resourceVersion=0"))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(vec![])
        .unwrap();
    let mut lines = s.client.request_stream(req).await.unwrap().lines();
    let first: Value = serde_json::from_str(&lines.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "ADDED");
    let t = &first["object"];
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
    assert_eq!(t["rows"][0]["cells"][0], "web");
    assert_eq!(t["rows"][0]["cells"][2], "Pending");
    // includeObject defaults to Metadata, as kube-apiserver's.
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "web");
    let status = json!({"status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": true,
        "restartCount": 2, "image": "busybox", "imageID": "", "state": {"running": {}}}]}});
    let (code, v) = call(&s.client, "PATCH", &format!("{pods}/web/status"), "", Some(status)).await;
    assert_eq!(code, 200, "{v}");
    let next: Value = serde_json::from_str(&lines.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(next["type"], "MODIFIED");
    let t = &next["object"];
    assert_eq!(t["kind"], "Table");
    assert!(t["columnDefinitions"].is_null(), "headers only in the first event: {t}");
    let cells = t["rows"][0]["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 9);
    assert_eq!(
        (&cells[0], &cells[1], &cells[2], &cells[3]),
        (&json!("web"), &json!("1/1"), &json!("Running"), &json!("2"))
    );
    assert_eq!(t["metadata"]["resourceVersion"], v["metadata"]["resourceVersion"]);
    // A bad includeObject is kube-apiserver's 400.
    let (code, v) = call(&s.client, "GET", &format!("{pods}?watch=true&includeObject=All"), TABLE, None).await;
    assert_eq!(code, 400, "{v}");
}

/// A container's log that comes in three parts, one every 100 ms, then ends.
struct SlowLog {
    parts: Vec<&'static str>,
    next_at: Instant,
}

impl LogStream for SlowLog {
    fn next_chunk(&mut self, wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
        if self.parts.is_empty() {
            return Ok(None);
        }
        if Instant::now() < self.next_at {
            std::thread::sleep(wait.min(self.next_at - Instant::now()));
            if Instant::now() < self.next_at {
                return Ok(Some(vec![]));
            }
        }
        self.next_at = Instant::now() + Duration::from_millis(100);
        Ok(Some(self.parts.remove(0).as_bytes().to_vec()))
    }
}

struct FakeLogs;

impl PodLogs for FakeLogs {
    fn open(&self, _pod: PodRef<'_>, container: &str, opts: &LogOptions) -> std::io::Result<Box<dyn LogStream>> {
        if opts.previous {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("previous terminated container {container:?} in pod \"web\" not found"),
            ));
        }
        Ok(Box::new(SlowLog { parts: vec!["one\n", "two\n", "three\n"], next_at: Instant::now() }))
    }
}

#[tokio::test]
async fn logs_stream_with_their_options_checked_as_kube_apiserver_does() {
    let s = server_with(Arc::new(FakeLogs)).await;
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(call(&s.client, "POST", pods, "", Some(pod)).await.0, 200);
    let log = format!("{pods}/web/log");
    // A follow gets the parts as they come and ends with the log.
    let req = Request::builder().uri(format!("{log}?follow=true")).body(vec![]).unwrap();
    let started = Instant::now();
    let mut lines = s.client.request_stream(req).await.unwrap().lines();
    let mut got = vec![];
    while let Some(l) = tokio::time::timeout(Duration::from_secs(5), lines.next()).await.unwrap() {
        got.push((l.unwrap(), started.elapsed()));
    }
    assert_eq!(got.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
    assert!(got[0].1 < got[2].1, "streamed as written: {got:?}");
    assert_eq!(call(&s.client, "GET", &format!("{log}?limitBytes=5"), "", None).await.1, json!("one\nt"));
    for (q, code, msg) in [
        ("limitBytes=0", 422, "limitBytes: Invalid value: 0: must be greater than 0"),
        (
            "sinceTime=yesterday",
            400,
            r#"parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006""#,
        ),
        ("tailLines=-1", 422, "tailLines: Invalid value: -1: must be greater than or equal to 0"),
        ("container=nope", 400, "container nope is not valid for pod web"),
        ("previous=true", 400, "previous terminated container \"c\" in pod \"web\" not found"),
    ] {
        let (c, v) = call(&s.client, "GET", &format!("{log}?{q}"), "", None).await;
        assert_eq!(c, code, "{q}: {v}");
        assert!(v["message"].as_str().unwrap().contains(msg), "{q}: {v}");
    }
    assert_eq!(call(&s.client, "GET", &format!("{pods}/nope/log"), "", None).await.0, 404);
}

#[tokio::test]
async fn an_events_v1_create_without_the_new_fields_is_invalid() {
    let s = server().await;
    let v1 = "/apis/events.k8s.io/v1/namespaces/default/events";
    let bare = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "bare"},
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default"}, "note": "n", "type": "Normal"});
    let (code, v) = call(&s.client, "POST", v1, "", Some(bare)).await;
    assert_eq!(code, 422, "{v}");
    let msg = v["message"].as_str().unwrap();
    for field in ["eventTime", "reportingController", "reportingInstance", "action", "reason"] {
        assert!(msg.contains(&format!("{field}: Required value")), "{msg}");
    }
    assert!(msg.starts_with("Event \"bare\" is invalid"), "{msg}");
    // core/v1 stays as lax as kube-apiserver keeps it for old clients.
    let legacy = json!({"metadata": {"name": "old"}, "involvedObject": {"kind": "Pod", "name": "web"},
        "reason": "Started", "message": "m"});
    assert_eq!(call(&s.client, "POST", EVENTS, "", Some(legacy)).await.0, 200);
}
