//! Cluster mode against a real kube-apiserver (issue 17's first step): `weft agent` in a node's
//! network namespace, fed by the real control plane weft-controlplane starts, programs a
//! Service whose EndpointSlice points at a server in a second namespace, so a connection to the
//! ClusterIP reaches it; and it serves kube-proxy's /healthz, /livez and /metrics, with the
//! node's eligibility read from the real Node. Loopback and the test's own namespaces only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use weft_controlplane::{ControlPlane, Spec};
use weft_testkit::netns::Netns;

/// Kills the agent by its id when the test ends, passed or not.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` inside `ns`: (status code, body).
fn get(ns: &Netns, url: &str) -> (u16, String) {
    let out = ns.exec(&["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn eventually<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_agent_serves_services_and_health_from_a_real_api_server() {
    let dir = tempfile::Builder::new().prefix("weft-cm-").tempdir().unwrap();
    let bin_dir = weft_controlplane::find_bin_dir(&std::env::current_exe().unwrap()).unwrap();
    let spec = Spec {
        dir: dir.path().to_path_buf(),
        bin_dir,
        name: "cluster-mode".into(),
        service_cidr: "10.96.0.0/16".into(),
        node_port_range: "30000-32767".into(),
        advertise: Some(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1))),
        controllers: None,
    };
    let cp = ControlPlane::start(&spec, Duration::from_secs(120)).await.unwrap();
    let client = cp.client().await.unwrap();

    // The node's namespace, and a server's behind a veth.
    let node = Netns::new("cm-node");
    let server = Netns::new("cm-ep");
    node.veth("eth0", "10.77.0.1/24", &server, "eth0", "10.77.0.2/24").unwrap();
    node.ip(&["route", "add", "default", "via", "10.77.0.2"]);
    let _echo = server.peer_echo_server("10.77.0.2:8080".parse().unwrap());
    // The API as the node sees it: 127.0.0.1:6443 inside its namespace, forwarded to the real
    // kube-apiserver on the host's loopback (its certificate names 127.0.0.1).
    let listener = node.run(|| std::net::TcpListener::bind("127.0.0.1:6443")).unwrap();
    listener.set_nonblocking(true).unwrap();
    tokio::spawn(weft_apiserver::kubernetes_service::forward(
        tokio::net::TcpListener::from_std(listener).unwrap(),
        cp.api,
    ));
    let kubeconfig = dir.path().join("node.kubeconfig");
    let text = std::fs::read_to_string(&cp.kubeconfig)
        .unwrap()
        .replace(&format!("https://{}", cp.api), "https://127.0.0.1:6443");
    std::fs::write(&kubeconfig, text).unwrap();

    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let n: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "cm-node-1"}})).unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();

    let _agent = Agent(
        node.command(weft_testkit::lab::weft_bin().to_str().unwrap())
            .args(["agent", "--node", "cm-node-1", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--metrics-bind-address", "127.0.0.1:10249", "--healthz-bind-address", "127.0.0.1:10256"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // A selectorless Service and the EndpointSlice a user (or another controller) keeps for it.
    let svcs: kube::Api<Service> = kube::Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let ip: Ipv4Addr =
        svcs.create(&PostParams::default(), &svc).await.unwrap().spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo", "endpointslice.kubernetes.io/managed-by": "weft-test"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.77.0.2"], "conditions": {"ready": true}, "nodeName": "cm-node-1"}],
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();

    // The ClusterIP reaches the server (it answers with the client's address: masqueraded to
    // the node's, as traffic from outside the pod network is).
    let to = SocketAddr::from((ip, 80));
    let answer = eventually("the ClusterIP answering from the node's namespace", Duration::from_secs(30), async || {
        node.tcp_get(to).ok().filter(|a| !a.is_empty())
    })
    .await;
    assert_eq!(answer, "10.77.0.1");

    // kube-proxy's health and metrics endpoints.
    let (code, body) = eventually("/healthz 200 with the node eligible", Duration::from_secs(30), async || {
        let (code, body) = get(&node, "http://127.0.0.1:10256/healthz");
        (code == 200).then_some((code, body))
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, v["nodeEligible"].clone(), v["healthy"].clone()), (200, true.into(), true.into()), "{body}");
    let (_, metrics) = get(&node, "http://127.0.0.1:10249/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert!(value("kubeproxy_sync_proxy_rules_last_timestamp_seconds") > 1.7e9, "{metrics}");
    assert!(value("kubeproxy_sync_proxy_rules_duration_seconds_count") >= 1.0);
    assert!(value("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 1.0);
    assert!(value("weft_proxy_service_ports") >= 2.0, "kubernetes and echo: {metrics}");

    // A node the autoscaler is deleting fails /healthz (load balancers drain it); /livez holds.
    let taint =
        serde_json::json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}});
    nodes.patch("cm-node-1", &PatchParams::default(), &Patch::Merge(&taint)).await.unwrap();
    eventually("/healthz 503 for a node being deleted", Duration::from_secs(30), async || {
        let (code, body) = get(&node, "http://127.0.0.1:10256/healthz");
        (code == 503 && body.contains("\"nodeEligible\":false")).then_some(())
    })
    .await;
    assert_eq!(get(&node, "http://127.0.0.1:10256/livez").0, 200);
}
