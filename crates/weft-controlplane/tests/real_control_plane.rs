//! The real control plane, started from the peers' binaries: kube-apiserver answers kubectl (the
//! machine's and the one built from the module), kube-controller-manager makes ReplicaSets, pods
//! and EndpointSlices, kube-scheduler judges the pods (no node: Unschedulable), and the
//! `kubernetes` Service points at the advertised lab address. Loopback only; every process is
//! stopped when the test ends, also when it fails.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use weft_controlplane::{ControlPlane, Spec};
use weft_testkit::run::eventually;

fn kubectl(bin: &str, cp: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_control_plane_serves_controls_and_schedules() {
    let dir = tempfile::Builder::new().prefix("weft-cp-").tempdir().unwrap();
    let bin_dir = weft_controlplane::find_bin_dir(&std::env::current_exe().unwrap()).unwrap();
    let advertise = IpAddr::V4(Ipv4Addr::new(172, 18, 0, 10));
    let spec = Spec {
        dir: dir.path().to_path_buf(),
        bin_dir: bin_dir.clone(),
        name: "cp-test".into(),
        service_cidr: "10.96.0.0/16".into(),
        node_port_range: "30000-32767".into(),
        advertise: Some(advertise),
        controllers: None,
        cluster_cidr: None,
        netns: None,
        api_port: 0,
    };
    let cp = ControlPlane::start(&spec, Duration::from_secs(120)).await.unwrap();
    let client = cp.client().await.unwrap();

    // kubectl, the machine's and the module's newest, against the real API.
    let built = bin_dir.join("kubectl").display().to_string();
    for k in ["kubectl", built.as_str()] {
        let ns = kubectl(k, &cp, &["get", "namespaces", "-o", "name"]);
        assert!(ns.lines().any(|l| l == "namespace/kube-system"), "{k}: {ns}");
    }
    let version = kubectl(&built, &cp, &["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.37.2", "the server reports the module's release: {version}");

    // The `kubernetes` Service: first address of the range, endpoint at the advertised address.
    let svcs: kube::Api<Service> = kube::Api::namespaced(client.clone(), "default");
    let k8s = svcs.get("kubernetes").await.unwrap();
    assert_eq!(k8s.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.1"));
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let api_port = cp.api.port().to_string();
    eventually("the kubernetes EndpointSlice", Duration::from_secs(30), async || {
        let s = slices.get_opt("kubernetes").await.ok()??;
        let addr = s.endpoints.as_ref()?.first()?.addresses.first()?.clone();
        let port = s.ports.as_ref()?.first()?.port?;
        (addr == advertise.to_string() && port.to_string() == api_port).then_some(())
    })
    .await;

    // kube-controller-manager: a Deployment becomes a ReplicaSet and pods; kube-scheduler finds
    // no node for them.
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "weft/echo", "ports": [{"containerPort": 8080}]}]}
            }
        }
    }))
    .unwrap();
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "default");
    deployments.create(&PostParams::default(), &deploy).await.unwrap();
    let rss: kube::Api<ReplicaSet> = kube::Api::namespaced(client.clone(), "default");
    eventually("a ReplicaSet from kube-controller-manager", Duration::from_secs(60), async || {
        let l = rss.list(&ListParams::default().labels("app=web")).await.ok()?;
        (!l.items.is_empty()).then_some(())
    })
    .await;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    eventually("two pods, each judged Unschedulable by kube-scheduler", Duration::from_secs(60), async || {
        let l = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let judged = l
            .items
            .iter()
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
            })
            .count();
        (judged == 2).then_some(())
    })
    .await;

    // A Service gets a ClusterIP from the range and an EndpointSlice from kube-controller-manager.
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let made = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let ip: Ipv4Addr = made.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    assert_eq!(ip.octets()[..2], [10, 96], "{ip} is in 10.96.0.0/16");
    eventually("the web Service's EndpointSlice", Duration::from_secs(60), async || {
        let l = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.ok()?;
        (!l.items.is_empty()).then_some(())
    })
    .await;

    // etcd answers only to its own CA's client certificates (kube-apiserver's): not to plain
    // HTTP, nor to TLS without a certificate.
    let etcd = cp.etcd;
    let pki = dir.path().join("etcd-pki");
    let curl = |extra: &[String]| {
        let o = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(pki.join("ca.crt"))
            .args(extra)
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (ok, out) = curl(&[format!("http://{etcd}/version")]);
    assert!(!out.contains("etcdserver"), "plain HTTP: {ok} {out}");
    let (ok, out) = curl(&[format!("https://{etcd}/version")]);
    assert!(!ok && !out.contains("etcdserver"), "TLS without a client certificate: {out}");
    let cert = |f: &str| pki.join(f).display().to_string();
    let (ok, out) = curl(&[
        "--cert".into(),
        cert("apiserver-etcd-client.crt"),
        "--key".into(),
        cert("apiserver-etcd-client.key"),
        format!("https://{etcd}/version"),
    ]);
    assert!(ok && out.contains("etcdserver"), "with kube-apiserver's certificate: {out}");

    // Everything it started stops with it.
    drop(cp);
    assert!(std::net::TcpStream::connect_timeout(&etcd, Duration::from_secs(1)).is_err(), "etcd still answers");
}
