//! Cluster mode against a real kube-apiserver (issue 17's first step): `weft agent` in a node's
//! network namespace, fed by the real control plane weft-controlplane starts, programs a
//! Service whose EndpointSlice points at a server in a second namespace, so a connection to the
//! ClusterIP reaches it; and it serves kube-proxy's /healthz, /livez and /metrics, with the
//! node's eligibility read from the real Node. `weft dns` answers for the real API's Services,
//! and `weft ingress` routes an Ingress to its backend and writes its status through the real
//! API. Loopback and the test's own namespaces only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams, PostParams};
use weft_controlplane::{ControlPlane, Spec};
use weft_testkit::netns::Netns;
use weft_testkit::run::eventually;

/// Kills a process by its id when the test ends, passed or not.
struct Process(std::process::Child);

impl Drop for Process {
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

/// A real control plane, a node's namespace that reaches its API at 127.0.0.1:6443, and a server
/// namespace behind a veth (10.77.0.1 the node, 10.77.0.2 the server).
struct RealCluster {
    /// Runs until the test ends.
    _cp: ControlPlane,
    client: kube::Client,
    node: Netns,
    server: Netns,
    kubeconfig: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl RealCluster {
    async fn start(tag: &str) -> RealCluster {
        let dir = tempfile::Builder::new().prefix("weft-cm-").tempdir().unwrap();
        let bin_dir = weft_controlplane::find_bin_dir(&std::env::current_exe().unwrap()).unwrap();
        let spec = Spec {
            dir: dir.path().join("control-plane"),
            bin_dir,
            name: format!("cluster-mode-{tag}"),
            service_cidr: "10.96.0.0/16".into(),
            node_port_range: "30000-32767".into(),
            advertise: Some(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1))),
            controllers: None,
            cluster_cidr: None,
            netns: None,
            api_port: 0,
        };
        let cp = ControlPlane::start(&spec, Duration::from_secs(120)).await.unwrap();
        let client = cp.client().await.unwrap();
        let node = Netns::new(&format!("{tag}-node"));
        let server = Netns::new(&format!("{tag}-ep"));
        node.veth("eth0", "10.77.0.1/24", &server, "eth0", "10.77.0.2/24").unwrap();
        node.ip(&["route", "add", "default", "via", "10.77.0.2"]);
        // The API as the node sees it: 127.0.0.1:6443 inside its namespace, forwarded to the
        // real kube-apiserver on the host's loopback (its certificate names 127.0.0.1).
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
        RealCluster { _cp: cp, client, node, server, kubeconfig, dir }
    }

    /// `weft ARGS --kubeconfig K` inside the node's namespace, its stderr in the test's folder.
    fn weft(&self, args: &[&str]) -> Process {
        let log = self.dir.path().join(format!("{}.log", args[0]));
        Process(
            self.node
                .command(weft_testkit::lab::weft_bin().to_str().unwrap())
                .args(args)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }

    /// A selectorless Service `name` (port 80 named `tcp`) and the EndpointSlice a user (or
    /// another controller) keeps for it: the server namespace's `port`. Returns its ClusterIP.
    async fn service(&self, name: &str, port: u16) -> Ipv4Addr {
        let svcs: kube::Api<Service> = kube::Api::namespaced(self.client.clone(), "default");
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "tcp", "port": 80, "targetPort": port}]}
        }))
        .unwrap();
        let made = svcs.create(&PostParams::default(), &svc).await.unwrap();
        let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(self.client.clone(), "default");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": format!("{name}-1"),
                "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "weft-test"}
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.77.0.2"], "conditions": {"ready": true}, "nodeName": "cm-node-1"}],
            "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}]
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
        made.spec.unwrap().cluster_ip.unwrap().parse().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_agent_serves_services_and_health_from_a_real_api_server() {
    let rc = RealCluster::start("cm-agent").await;
    let (node, client) = (&rc.node, rc.client.clone());
    let _echo = rc.server.peer_echo_server("10.77.0.2:8080".parse().unwrap());
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let n: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "cm-node-1"}})).unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
    let _agent = rc.weft(&[
        "agent",
        "--node",
        "cm-node-1",
        "--metrics-bind-address",
        "127.0.0.1:10249",
        "--healthz-bind-address",
        "127.0.0.1:10256",
    ]);
    let ip = rc.service("echo", 8080).await;

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
        let (code, body) = get(node, "http://127.0.0.1:10256/healthz");
        (code == 200).then_some((code, body))
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, v["nodeEligible"].clone(), v["healthy"].clone()), (200, true.into(), true.into()), "{body}");
    let (_, metrics) = get(node, "http://127.0.0.1:10249/metrics");
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
        let (code, body) = get(node, "http://127.0.0.1:10256/healthz");
        (code == 503 && body.contains("\"nodeEligible\":false")).then_some(())
    })
    .await;
    assert_eq!(get(node, "http://127.0.0.1:10256/livez").0, 200);
}

/// `dig` inside `ns` against 127.0.0.1: the answer's records, one per line.
fn dig(ns: &Netns, name: &str, kind: &str) -> String {
    let out = ns.exec(&["dig", "@127.0.0.1", "+short", "+time=2", "+tries=1", name, kind]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_dns_answers_for_a_real_api_server() {
    let rc = RealCluster::start("cm-dns").await;
    // Forwarding goes to a port in the node's namespace where nothing listens: only cluster
    // names are asked.
    let _dns =
        rc.weft(&["dns", "--listen", "127.0.0.1:53", "--http", "127.0.0.1:8080", "--upstream", "127.0.0.1:5353"]);
    let ip = rc.service("echo", 8080).await;
    let answer = eventually("echo's ClusterIP from weft dns", Duration::from_secs(30), async || {
        let a = dig(&rc.node, "echo.default.svc.cluster.local", "A");
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(answer, ip.to_string());
    // The API's own Service, made by the real kube-apiserver.
    assert_eq!(dig(&rc.node, "kubernetes.default.svc.cluster.local", "A"), "10.96.0.1");
    // SRV for the named port, as the DNS spec says.
    let srv = dig(&rc.node, "_tcp._tcp.echo.default.svc.cluster.local", "SRV");
    assert!(srv.ends_with(" 80 echo.default.svc.cluster.local."), "{srv}");
    assert_eq!(dig(&rc.node, "missing.default.svc.cluster.local", "A"), "");
}

/// An HTTP server in `ns` that answers every request with `hello from <path>` (at most 64
/// connections, one request each, 5 s bounds).
fn http_server(ns: &Netns, addr: SocketAddr) -> weft_netlink::ns::NsThread<()> {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = std::net::TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        for _ in 0..64 {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
            let body = format!("hello from {path}");
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    rx.recv().unwrap();
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_ingress_routes_and_writes_status_through_a_real_api_server() {
    let rc = RealCluster::start("cm-ing").await;
    let _web = http_server(&rc.server, "10.77.0.2:8081".parse().unwrap());
    rc.service("web", 8081).await;
    let objects = serde_json::json!([
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": {"name": "weft", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
         "spec": {"controller": "weft.dev/ingress"}},
    ]);
    let classes: kube::Api<k8s_openapi::api::networking::v1::IngressClass> = kube::Api::all(rc.client.clone());
    classes.create(&PostParams::default(), &serde_json::from_value(objects[0].clone()).unwrap()).await.unwrap();
    // No class named: the real API's admission gives it the default class, as a user's would.
    let ing: Ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"rules": [{"host": "web.example", "http": {"paths": [
            {"path": "/app", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    }))
    .unwrap();
    let ingresses: kube::Api<Ingress> = kube::Api::namespaced(rc.client.clone(), "default");
    let made = ingresses.create(&PostParams::default(), &ing).await.unwrap();
    assert_eq!(
        made.spec.unwrap().ingress_class_name.as_deref(),
        Some("weft"),
        "kube-apiserver's DefaultIngressClass admission"
    );
    let _ingress = rc.weft(&[
        "ingress",
        "--http",
        "127.0.0.1:8088",
        "--https",
        "127.0.0.1:8443",
        "--metrics",
        "127.0.0.1:10254",
        "--publish-status-address",
        "10.77.0.1",
    ]);
    let body = eventually("web.example/app/x through weft ingress", Duration::from_secs(30), async || {
        let out = rc.node.exec(&["curl", "-s", "-m", "3", "-H", "Host: web.example", "http://127.0.0.1:8088/app/x"]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.starts_with("hello").then_some(body)
    })
    .await;
    assert_eq!(body, "hello from /app/x");
    let (code, _) = get(&rc.node, "http://127.0.0.1:8088/other");
    assert_eq!(code, 404, "no rule: the built-in default backend");
    eventually("the Ingress's status.loadBalancer in the real API", Duration::from_secs(30), async || {
        let i = ingresses.get("web").await.ok()?;
        let ip = i.status?.load_balancer?.ingress?.first()?.ip.clone()?;
        (ip == "10.77.0.1").then_some(())
    })
    .await;
}
