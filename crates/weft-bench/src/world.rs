//! The benchmarks' cluster: N Services × M endpoints made through an API (the embedded one or a
//! real kube-apiserver), so every tool measured reads the same objects; and the real control
//! plane the benchmarks start for the real kube-proxy and CoreDNS.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// What to make.
pub struct World<'a> {
    pub services: usize,
    pub per_service: usize,
    /// Services are spread over `ns-0` .. `ns-(namespaces-1)`.
    pub namespaces: usize,
    /// The k-th endpoint's address of Service i.
    pub addr: &'a (dyn Fn(usize, usize) -> String + Sync),
    /// The endpoints' port (the Services' port is 80).
    pub target_port: u16,
    /// A Running pod per endpoint, bound to this Node (None: endpoints without pods).
    pub pods_on: Option<&'a str>,
}

/// Service i's name and namespace.
pub fn name(i: usize, namespaces: usize) -> (String, String) {
    (format!("svc-{i}"), format!("ns-{}", i % namespaces.max(1)))
}

/// Makes Services `from..w.services` (selectorless, port 80), each with one EndpointSlice
/// (`svc-I-1`) of ready endpoints, and their namespaces; returns their ClusterIPs in order.
pub async fn create(client: &kube::Client, w: &World<'_>, from: usize) -> Result<Vec<String>> {
    let nss: Api<Namespace> = Api::all(client.clone());
    for m in 0..w.namespaces.min(w.services) {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": format!("ns-{m}")}}))?;
        match nss.create(&PostParams::default(), &ns).await {
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            r => drop(r?),
        }
    }
    // A real API takes pods only once their namespace's default ServiceAccount is there (the
    // controller manager makes it a moment after the namespace).
    if w.pods_on.is_some() {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        for m in 0..w.namespaces.min(w.services) {
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &format!("ns-{m}"));
            while sas.get_opt("default").await?.is_none() {
                anyhow::ensure!(std::time::Instant::now() < until, "namespace ns-{m} got no default ServiceAccount");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let made: Vec<Result<(usize, String)>> = futures::stream::iter(from..w.services)
        .map(|i| async move {
            let (svc, ns) = name(i, w.namespaces);
            let s: Service = serde_json::from_value(json!({
                "metadata": {"name": svc},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": w.target_port}]}}))?;
            let s = Api::<Service>::namespaced(client.clone(), &ns).create(&PostParams::default(), &s).await?;
            let ip = s.spec.and_then(|s| s.cluster_ip).context("no ClusterIP")?;
            let eps: Vec<serde_json::Value> = (0..w.per_service)
                .map(|k| json!({"addresses": [(w.addr)(i, k)], "conditions": {"ready": true}}))
                .collect();
            let sl: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("{svc}-1"), "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4", "endpoints": eps,
                "ports": [{"name": "http", "port": w.target_port, "protocol": "TCP"}]}))?;
            Api::<EndpointSlice>::namespaced(client.clone(), &ns).create(&PostParams::default(), &sl).await?;
            if let Some(node) = w.pods_on {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                for k in 0..w.per_service {
                    let name = format!("{svc}-{k}");
                    let p: Pod = serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": {"app": svc}},
                        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}))?;
                    pods.create(&PostParams::default(), &p).await?;
                    let ip = (w.addr)(i, k);
                    let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(st)).await?;
                }
            }
            Ok((i, ip))
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ips = vec![String::new(); w.services - from];
    for r in made {
        let (i, ip) = r?;
        ips[i - from] = ip;
    }
    Ok(ips)
}

/// A Node without a kubelet (the benchmarks' pods are bound to it, the proxies run as it).
pub async fn node(client: &kube::Client, name: &str, ip: &str) -> Result<()> {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &n).await?;
    let st = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(st)).await?;
    Ok(())
}

/// A real control plane (from `scripts/peers etcd kubernetes`) on loopback in `dir`, with the
/// controllers that would act on the benchmarks' kubelet-less Node left out: node lifecycle
/// (it taints a Node whose kubelet never reports, and evicts its pods) and pod GC.
pub async fn real_control_plane(dir: &Path) -> Result<weft_controlplane::ControlPlane> {
    let spec = weft_controlplane::Spec {
        dir: dir.to_path_buf(),
        bin_dir: weft_controlplane::find_bin_dir(&std::env::current_exe()?)?,
        name: "bench".into(),
        service_cidr: "10.96.0.0/12".into(),
        node_port_range: "30000-32767".into(),
        advertise: None,
        controllers: Some("*,-node-lifecycle-controller,-pod-garbage-collector-controller".into()),
        cluster_cidr: None,
        netns: None,
        api_port: 0,
    };
    weft_controlplane::ControlPlane::start(&spec, Duration::from_secs(180)).await
}
