//! The embedded API as kube-rs sees it: auth, conflicts, validation, allocation, watches across a
//! restart, and durability across `kill -9`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use weft_testkit::Lab;

fn svc(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}))
        .unwrap()
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn auth_conflicts_validation_and_allocation() {
    let lab = Lab::up(&["--nodes", "0", "--service-cidr", "10.96.0.0/28", "--node-port-range", "30000-30002"]);
    let client = lab.client().await;

    // No token: 401.
    let mut cfg = weft_testkit::kubeconfig::config(&lab.kubeconfig()).await.unwrap();
    cfg.auth_info = Default::default();
    let anon = kube::Client::try_from(cfg).unwrap();
    let e = api_err(Api::<Service>::default_namespaced(anon).list(&Default::default()).await.unwrap_err());
    assert_eq!(e.code, 401);

    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    // 409 on a stale update.
    let a = svcs.create(&PostParams::default(), &svc("a", json!({"ports": [{"port": 80}]}))).await.unwrap();
    let mut stale = a.clone();
    let mut fresh = a.clone();
    fresh.metadata.labels = Some(BTreeMap::from([("v".into(), "1".into())]));
    svcs.replace("a", &PostParams::default(), &fresh).await.unwrap();
    stale.metadata.labels = Some(BTreeMap::from([("v".into(), "2".into())]));
    let e = api_err(svcs.replace("a", &PostParams::default(), &stale).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    // 409 on a second create.
    let e =
        api_err(svcs.create(&PostParams::default(), &svc("a", json!({"ports": [{"port": 80}]}))).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    // 422 with field causes.
    let e = api_err(
        svcs.create(&PostParams::default(), &svc("bad", json!({"ports": [{"port": 0, "protocol": "ICMP"}]})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let causes = e.details.unwrap().causes;
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains(&"spec.ports[0].port") && fields.contains(&"spec.ports[0].protocol"), "{fields:?}");
    assert!(causes.iter().any(|c| c.reason == "FieldValueNotSupported"));

    // ClusterIP allocation in a /28: 13 usable after the kubernetes Service and "a", then full.
    let ip_a: std::net::Ipv4Addr = a.spec.as_ref().unwrap().cluster_ip.as_deref().unwrap().parse().unwrap();
    assert!(ipnet::Ipv4Net::new("10.96.0.0".parse().unwrap(), 28).unwrap().contains(&ip_a));
    // An explicit IP in use: 422 naming the field; out of range: 422.
    let e = api_err(
        svcs.create(
            &PostParams::default(),
            &svc("dup", json!({"clusterIP": ip_a.to_string(), "ports": [{"port": 80}]})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(e.message.contains("already allocated"), "{}", e.message);
    let e = api_err(
        svcs.create(&PostParams::default(), &svc("far", json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]})))
            .await
            .unwrap_err(),
    );
    assert!(e.message.contains("not in the valid range"), "{}", e.message);
    let mut made = vec![];
    for i in 0..20 {
        match svcs.create(&PostParams::default(), &svc(&format!("s{i}"), json!({"ports": [{"port": 80}]}))).await {
            Ok(s) => made.push(s.spec.unwrap().cluster_ip.unwrap()),
            Err(_) => break,
        }
    }
    assert_eq!(made.len(), 12, "a /28 has 14 addresses; two are taken");
    let mut uniq = made.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), made.len());
    // Release on delete: the freed IP can be asked for explicitly.
    svcs.delete("s0", &DeleteParams::default()).await.unwrap();
    let again = svcs
        .create(&PostParams::default(), &svc("again", json!({"clusterIP": made[0], "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(again.spec.unwrap().cluster_ip.unwrap(), made[0]);

    // NodePorts: explicit, conflict, out of range, exhaustion, release.
    let n1 = svcs.create(&PostParams::default(), &svc("hl", json!({"clusterIP": "None"}))).await.unwrap();
    assert_eq!(n1.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    // A full range is a 500, as kube-apiserver gives it.
    let e =
        api_err(svcs.create(&PostParams::default(), &svc("full", json!({"ports": [{"port": 80}]}))).await.unwrap_err());
    assert_eq!(e.code, 500);
    assert!(e.message.contains("full"), "{}", e.message);
    for i in 1..10 {
        svcs.delete(&format!("s{i}"), &DeleteParams::default()).await.unwrap();
    }
    svcs.create(
        &PostParams::default(),
        &svc("np1", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]})),
    )
    .await
    .unwrap();
    let e = api_err(
        svcs.create(
            &PostParams::default(),
            &svc("np2", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30001}]})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert_eq!(e.details.unwrap().causes[0].field, "spec.ports[0].nodePort");
    let e = api_err(
        svcs.create(
            &PostParams::default(),
            &svc("np3", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]})),
        )
        .await
        .unwrap_err(),
    );
    assert!(e.message.contains("30000-30002"), "{}", e.message);
    // Two ports need names.
    let unnamed = svc("np4", json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "name": "b"}]}));
    assert!(svcs.create(&PostParams::default(), &unnamed).await.is_err());
    let auto = svcs
        .create(
            &PostParams::default(),
            &svc("np4", json!({"type": "NodePort", "ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "b"}]})),
        )
        .await
        .unwrap();
    let mut ports: Vec<i32> = auto.spec.unwrap().ports.unwrap().iter().map(|p| p.node_port.unwrap()).collect();
    ports.sort();
    assert_eq!(ports, vec![30000, 30002]);
    let e = api_err(
        svcs.create(&PostParams::default(), &svc("np5", json!({"type": "NodePort", "ports": [{"port": 80}]})))
            .await
            .unwrap_err(),
    );
    assert!(e.message.contains("full"), "{}", e.message);
    svcs.delete("np1", &DeleteParams::default()).await.unwrap();
    let np5 = svcs
        .create(&PostParams::default(), &svc("np5", json!({"type": "NodePort", "ports": [{"port": 80}]})))
        .await
        .unwrap();
    assert_eq!(np5.spec.unwrap().ports.unwrap()[0].node_port, Some(30001));
}

#[tokio::test]
async fn watcher_sees_every_event_once_in_order_across_a_restart() {
    let lab = Lab::up(&["--nodes", "0"]);
    let client = lab.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = cms.clone();
    let task = tokio::spawn(async move {
        let cfg = watcher::Config::default().labels("t=watch");
        let mut s = watcher::watcher(w, cfg).boxed();
        while let Some(ev) = s.next().await {
            if let Ok(ev) = ev {
                let _ = tx.send(ev);
            }
        }
    });
    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<watcher::Event<ConfigMap>>,
    ) -> watcher::Event<ConfigMap> {
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("an event in time").unwrap()
    }
    // Initial list is empty.
    assert!(matches!(next(&mut rx).await, watcher::Event::Init));
    assert!(matches!(next(&mut rx).await, watcher::Event::InitDone));
    let cm = |name: &str, v: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"t": "watch"}}, "data": {"v": v}})).unwrap()
    };
    let mut expected = vec![];
    cms.create(&PostParams::default(), &cm("one", "1")).await.unwrap();
    expected.push(("apply", "one", "1"));
    let mut o = cms.get("one").await.unwrap();
    o.data = Some(BTreeMap::from([("v".into(), "2".into())]));
    cms.replace("one", &PostParams::default(), &o).await.unwrap();
    expected.push(("apply", "one", "2"));
    cms.delete("one", &DeleteParams::default()).await.unwrap();
    expected.push(("delete", "one", "2"));

    let mut seen = vec![];
    let mut last_rv = 0u64;
    let mut record = |ev: watcher::Event<ConfigMap>, seen: &mut Vec<(String, String, String)>| {
        let (ty, o) = match ev {
            watcher::Event::Apply(o) => ("apply", o),
            watcher::Event::Delete(o) => ("delete", o),
            other => panic!("unexpected {other:?}: the watch should resume, not relist"),
        };
        let rv: u64 = o.metadata.resource_version.as_deref().unwrap().parse().unwrap();
        assert!(rv > last_rv, "revisions must grow: {rv} after {last_rv}");
        last_rv = rv;
        let v = o.data.unwrap_or_default().get("v").cloned().unwrap_or_default();
        seen.push((ty.to_string(), o.metadata.name.unwrap(), v));
    };
    for _ in 0..3 {
        let ev = next(&mut rx).await;
        record(ev, &mut seen);
    }

    // Restart the daemon; the watch resumes from its last revision with nothing lost or repeated.
    let down = lab.weft_cmd().args(["up"]).output().unwrap();
    assert!(String::from_utf8_lossy(&down.stdout).contains("already up"));
    let pid = lab.daemon_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lab.weft_ok(&["up"]);
    let client = lab.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &cm("two", "3")).await.unwrap();
    expected.push(("apply", "two", "3"));
    cms.delete("two", &DeleteParams::default()).await.unwrap();
    expected.push(("delete", "two", "3"));
    for _ in 0..2 {
        let ev = next(&mut rx).await;
        record(ev, &mut seen);
    }
    let expected: Vec<(String, String, String)> =
        expected.into_iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(seen, expected);
    // And nothing more arrives.
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err());
    task.abort();
}

#[tokio::test]
async fn kill_9_mid_writes_loses_no_acknowledged_write() {
    let lab = Lab::up(&["--nodes", "0"]);
    let client = lab.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = vec![];
    for w in 0..8 {
        let cms = cms.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let name = format!("w{w}-{i}");
                let cm: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"i": i.to_string()}})).unwrap();
                match cms.create(&PostParams::default(), &cm).await {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let writes flow, then kill the daemon without warning.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acked.lock().unwrap().len() >= 300 {
            break;
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(lab.daemon_pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);
    lab.weft_ok(&["up"]);
    let cms: Api<ConfigMap> = Api::namespaced(lab.client().await, "default");
    let list = cms.list(&Default::default()).await.unwrap();
    let stored: std::collections::HashSet<String> = list.items.into_iter().filter_map(|c| c.metadata.name).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    // Every stored object is whole.
    for n in acked.iter().take(50) {
        let c = cms.get(n).await.unwrap();
        assert!(c.data.unwrap().contains_key("i"));
    }
}
