//! api-bench: the embedded API under load. Prints the time to create 10 000 Services (JSON
//! bodies, then protobuf bodies as kubectl's typed clients send them), list latency, watch event
//! latency (write acknowledged -> event received), server-side apply latency (a first apply that
//! creates, and applies to an existing Deployment) and resident memory.
//!
//! Usage: api-bench [SERVICES] (default 10000). Runs against a throwaway lab of its own.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use weft_bench::{Lab, LabOptions, percentile_ms, rss_mib};

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let lab = Lab::start(LabOptions::new().name(&format!("weft-bench-api-{}", std::process::id())))?;
    let client = lab.client().await;
    let pid = lab.daemon_pid();
    println!("== api-bench: {n} Services against weft's embedded API (pid {pid})");
    println!("rss at start: {:.1} MiB", rss_mib(pid)?);

    // 1. Create N Services, 64 requests in flight (as `kubectl apply` of many files or a controller would).
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let t0 = Instant::now();
    let mut lat = vec![];
    let results: Vec<Result<Duration, kube::Error>> = futures::stream::iter(0..n)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let s: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("app-{}", i % 100)}},
                    "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))
                .unwrap();
                let t = Instant::now();
                svcs.create(&PostParams::default(), &s).await.map(|_| t.elapsed())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = t0.elapsed();
    let mut errors = 0;
    for r in results {
        match r {
            Ok(d) => lat.push(d),
            Err(_) => errors += 1,
        }
    }
    println!(
        "create {n} Services: {:.2} s ({:.0}/s), per-request p50 {:.2} ms p99 {:.2} ms, errors {errors}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile_ms(&mut lat, 50.0),
        percentile_ms(&mut lat, 99.0)
    );

    println!("rss after creating {n} Services: {:.1} MiB", rss_mib(pid)?);

    // 2. List latency: all Services (JSON), a label-selected tenth, one namespace's Table (kubectl get).
    let mut full = vec![];
    let mut sel = vec![];
    for _ in 0..20 {
        let t = Instant::now();
        let l = svcs.list(&ListParams::default()).await?;
        full.push(t.elapsed());
        assert!(l.items.len() > n);
        let t = Instant::now();
        svcs.list(&ListParams::default().labels("app=app-7")).await?;
        sel.push(t.elapsed());
    }
    println!(
        "list {} Services: p50 {:.1} ms p99 {:.1} ms; label-selected (1%): p50 {:.1} ms",
        n + 1,
        percentile_ms(&mut full, 50.0),
        percentile_ms(&mut full, 99.0),
        percentile_ms(&mut sel, 50.0)
    );

    // 3. Watch event latency: a watcher on ConfigMaps; 1000 sequential writes, each timed from
    // sending the write to receiving its event.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let w = cms.clone();
    let watch_task = tokio::spawn(async move {
        let mut s = watcher::watcher(w, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            if let watcher::Event::Apply(cm) = ev {
                let _ = tx.send((cm.metadata.name.unwrap_or_default(), Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut wl = vec![];
    for i in 0..1000 {
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}))?;
        let t = Instant::now();
        cms.create(&PostParams::default(), &cm).await?;
        let want = format!("cm-{i}");
        loop {
            let (name, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.unwrap();
            if name == want {
                wl.push(at - t);
                break;
            }
        }
    }
    watch_task.abort();
    println!(
        "watch event latency (write sent -> event received, 1000 writes): p50 {:.2} ms p99 {:.2} ms",
        percentile_ms(&mut wl, 50.0),
        percentile_ms(&mut wl, 99.0)
    );
    println!("rss at {} objects, after the lists and watches above: {:.1} MiB", n + 1000 + 6, rss_mib(pid)?);

    // 4. Protobuf creates: the same Services as in 1, as `k8s\0` protobuf bodies (what kubectl's
    // typed clients send), 64 in flight; at most 2000 of them.
    let pn = n.min(2000);
    let t0 = Instant::now();
    let mut plat = vec![];
    let results: Vec<Result<Duration>> = futures::stream::iter(0..pn)
        .map(|i| {
            let client = client.clone();
            async move {
                let body = protobuf_service(&format!("pb-svc-{i}"), &format!("app-{i}"));
                let req = http::Request::post("/api/v1/namespaces/default/services")
                    .header("Content-Type", "application/vnd.kubernetes.protobuf")
                    .header("Accept", "application/json")
                    .body(body)?;
                let t = Instant::now();
                client.request::<serde_json::Value>(req).await?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = t0.elapsed();
    let perrors = results.iter().filter(|r| r.is_err()).count();
    plat.extend(results.into_iter().flatten());
    println!(
        "create {pn} Services (protobuf bodies): {:.2} s ({:.0}/s), per-request p50 {:.2} ms p99 {:.2} ms, errors {perrors}",
        elapsed.as_secs_f64(),
        pn as f64 / elapsed.as_secs_f64(),
        percentile_ms(&mut plat, 50.0),
        percentile_ms(&mut plat, 99.0)
    );

    // 5. Server-side apply (PATCH application/apply-patch+yaml), one request at a time: 200
    // first applies that create a Deployment, then 500 applies that change an existing one.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("api-bench").force();
    let mut created = vec![];
    for i in 0..200 {
        let d = bench_deployment(&format!("ssa-{i}"), 0);
        let t = Instant::now();
        deps.patch(&format!("ssa-{i}"), &pp, &Patch::Apply(&d)).await?;
        created.push(t.elapsed());
    }
    let mut applied = vec![];
    for i in 0..500 {
        let d = bench_deployment("ssa-0", i + 1);
        let t = Instant::now();
        deps.patch("ssa-0", &pp, &Patch::Apply(&d)).await?;
        applied.push(t.elapsed());
    }
    println!(
        "server-side apply: first apply (creates) p50 {:.2} ms p99 {:.2} ms; to an existing Deployment p50 {:.2} ms p99 {:.2} ms",
        percentile_ms(&mut created, 50.0),
        percentile_ms(&mut created, 99.0),
        percentile_ms(&mut applied, 50.0),
        percentile_ms(&mut applied, 99.0)
    );
    let disk = std::fs::metadata(lab.state_dir().join("store.redb"))?.len() as f64 / 1048576.0;
    println!("store file: {disk:.1} MiB");
    Ok(())
}

/// A Deployment with no replicas (no pods to run); `round` changes an annotation each apply.
fn bench_deployment(name: &str, round: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": {"round": round.to_string()}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1", "ports": [{"containerPort": 80}]}]}}}
    })
}

/// A Service as client-go's protobuf marshaller writes it: the `k8s\0` magic and a
/// `runtime.Unknown` envelope around `v1.Service` (field numbers from k8s.io/api's generated.proto).
fn protobuf_service(name: &str, app: &str) -> Vec<u8> {
    use weft_protobuf::wire::{envelope, ld, vi};
    let entry = |k: &str, v: &str| weft_protobuf::wire::entry(k, v.as_bytes());
    let meta = [ld(1, name.as_bytes()), ld(11, &entry("app", app))].concat();
    // ServicePort{name "http", protocol TCP, port 80, targetPort 8080}
    let port = [ld(1, b"http"), ld(2, b"TCP"), vi(3, 80), ld(4, &[vi(1, 0), vi(2, 8080)].concat())].concat();
    let spec = [ld(1, &port), ld(2, &entry("app", app)), ld(4, b"ClusterIP")].concat();
    let service = [ld(1, &meta), ld(2, &spec)].concat();
    envelope("v1", "Service", &service)
}
