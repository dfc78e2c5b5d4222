//! The API server against hostile and careless clients, over real HTTPS on loopback: bodies
//! too large, patch bombs, scale out of range, watches from the future, malformed delete
//! options, unknown fields, dry runs that must write nothing, and thousands of idle connections.

use std::time::Duration;

use http::Request;
use serde_json::{Value, json};
use weft_apiserver::{Config, Running, start};

struct Server {
    _dir: tempfile::TempDir,
    running: Running,
    client: kube::Client,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let running = start(Config {
        name: "hostile".into(),
        state_dir: dir.path().to_path_buf(),
        service_cidr: "10.96.0.0/16".parse().unwrap(),
        node_port_range: 30000..=32767,
        port: 0,
        advertise_address: None,
    })
    .await
    .unwrap();
    let kc = kube::config::Kubeconfig::read_from(&running.kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    // The answers themselves are under test: no retries of 504s behind the test's back.
    cfg.default_retry = false;
    let client = kube::Client::try_from(cfg).unwrap();
    Server { _dir: dir, running, client }
}

/// Sends a request; returns the status code and the body as JSON (or a string).
async fn call(c: &kube::Client, method: &str, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Value) {
    let req = Request::builder().method(method).uri(path).header("content-type", ctype).body(body).unwrap();
    match c.request_text(req).await {
        Ok(t) => (200, serde_json::from_str(&t).unwrap_or(Value::String(t))),
        Err(kube::Error::Api(s)) => (s.code, json!({"message": s.message, "reason": s.reason})),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn rev(s: &Server) -> u64 {
    s.running.api.store.revision()
}

const CM: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn a_huge_body_is_413_and_a_patch_bomb_422_in_bounded_memory() {
    let s = server().await;
    let huge = serde_json::to_vec(&json!({"metadata": {"name": "big"}, "data": {"x": "y".repeat(10 << 20)}})).unwrap();
    let (code, _) = call(&s.client, "POST", CM, "application/json", huge).await;
    assert_eq!(code, 413);
    // Under the body limit but over the object limit: refused by the store, also 413.
    let big = serde_json::to_vec(&json!({"metadata": {"name": "big"}, "data": {"x": "y".repeat(2 << 20)}})).unwrap();
    assert_eq!(call(&s.client, "POST", CM, "application/json", big).await.0, 413);
    let cm = serde_json::to_vec(&json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).unwrap();
    assert_eq!(call(&s.client, "POST", CM, "application/json", cm).await.0, 200);
    // Each copy doubles the subtree: 40 of them would be a terabyte.
    let mut ops = vec![json!({"op": "add", "path": "/data/k", "value": "x".repeat(1000)})];
    ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {"a": ["x"]}}));
    for _ in 0..40 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations/a", "path": "/metadata/annotations/a/0"}));
    }
    let body = serde_json::to_vec(&ops).unwrap();
    let before = rev(&s);
    let (code, v) = call(&s.client, "PATCH", &format!("{CM}/a"), "application/json-patch+json", body).await;
    assert_eq!(code, 422, "{v}");
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/data/k", "value": "v"})).collect();
    let body = serde_json::to_vec(&too_many).unwrap();
    assert_eq!(call(&s.client, "PATCH", &format!("{CM}/a"), "application/json-patch+json", body).await.0, 413);
    assert_eq!(rev(&s), before, "nothing written");
}

#[tokio::test]
async fn scale_is_admitted_and_subresources_are_not_deleted_through() {
    let s = server().await;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}});
    let path = "/apis/apps/v1/namespaces/default/deployments";
    assert_eq!(call(&s.client, "POST", path, "application/json", serde_json::to_vec(&deploy).unwrap()).await.0, 200);
    let scale = format!("{path}/web/scale");
    let put = |r: Value| {
        serde_json::to_vec(&json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web", "namespace": "default"}, "spec": r})).unwrap()
    };
    assert_eq!(
        call(&s.client, "PUT", &scale, "application/json", put(json!({"replicas": 3_000_000_000u64}))).await.0,
        422
    );
    assert_eq!(
        call(&s.client, "PUT", &scale, "application/json", put(json!({}))).await.0,
        422,
        "no replicas is not zero"
    );
    let merge = serde_json::to_vec(&json!({"spec": {"replicas": -1}})).unwrap();
    assert_eq!(call(&s.client, "PATCH", &scale, "application/merge-patch+json", merge).await.0, 422);
    assert_eq!(call(&s.client, "PUT", &scale, "application/json", put(json!({"replicas": 2}))).await.0, 200);
    // Typed clients still read the list.
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::default_namespaced(s.client.clone());
    assert_eq!(api.list(&Default::default()).await.unwrap().items[0].spec.replicas, Some(2));

    // A pod: DELETE on its status subresource does not delete it; bad DeleteOptions are 400.
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(call(&s.client, "POST", pods, "application/json", serde_json::to_vec(&pod).unwrap()).await.0, 200);
    assert_eq!(call(&s.client, "DELETE", &format!("{pods}/p/status"), "application/json", vec![]).await.0, 405);
    assert_eq!(call(&s.client, "DELETE", &format!("{pods}/p"), "application/json", b"{not json".to_vec()).await.0, 400);
    let bad = serde_json::to_vec(&json!({"propagationPolicy": "Sometimes"})).unwrap();
    assert_eq!(call(&s.client, "DELETE", &format!("{pods}/p"), "application/json", bad).await.0, 400);
    assert_eq!(call(&s.client, "GET", &format!("{pods}/p"), "application/json", vec![]).await.0, 200, "still there");
}

#[tokio::test]
async fn dry_runs_write_nothing_and_strict_validation_names_unknown_fields() {
    let s = server().await;
    let cm = |name: &str| serde_json::to_vec(&json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap();
    assert_eq!(call(&s.client, "POST", CM, "application/json", cm("a")).await.0, 200);
    let before = rev(&s);
    let (code, v) = call(&s.client, "POST", &format!("{CM}?dryRun=All"), "application/json", cm("b")).await;
    assert_eq!((code, &v["metadata"]["name"]), (200, &json!("b")), "{v}");
    assert_eq!(call(&s.client, "POST", &format!("{CM}?dryRun=All"), "application/json", cm("a")).await.0, 409);
    let merge = serde_json::to_vec(&json!({"data": {"k": "changed"}})).unwrap();
    let (code, v) =
        call(&s.client, "PATCH", &format!("{CM}/a?dryRun=All"), "application/merge-patch+json", merge).await;
    assert_eq!((code, &v["data"]["k"]), (200, &json!("changed")), "{v}");
    let put = serde_json::to_vec(&json!({"metadata": {"name": "a"}, "data": {"k": "put"}})).unwrap();
    assert_eq!(call(&s.client, "PUT", &format!("{CM}/a?dryRun=All"), "application/json", put).await.0, 200);
    assert_eq!(call(&s.client, "DELETE", &format!("{CM}/a?dryRun=All"), "application/json", vec![]).await.0, 200);
    let opts = serde_json::to_vec(&json!({"dryRun": ["All"]})).unwrap();
    assert_eq!(call(&s.client, "DELETE", &format!("{CM}/a"), "application/json", opts).await.0, 200);
    let svc =
        serde_json::to_vec(&json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}))
            .unwrap();
    let (code, v) =
        call(&s.client, "POST", "/api/v1/namespaces/default/services?dryRun=All", "application/json", svc.clone())
            .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(rev(&s), before, "a dry run writes nothing");
    let (_, v) = call(&s.client, "GET", &format!("{CM}/a"), "application/json", vec![]).await;
    assert_eq!(v["data"]["k"], "v");
    assert_eq!(call(&s.client, "POST", &format!("{CM}?dryRun=Some"), "application/json", cm("c")).await.0, 400);
    // The dry run's NodePort was not kept: a real create may get any port.
    assert_eq!(call(&s.client, "POST", "/api/v1/namespaces/default/services", "application/json", svc).await.0, 200);

    // A typo is an error when the client asks for strict validation (kubectl does by default).
    let typo = serde_json::to_vec(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replica": 2, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always"}]}}}}))
    .unwrap();
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let (code, v) =
        call(&s.client, "POST", &format!("{path}?fieldValidation=Strict"), "application/json", typo.clone()).await;
    assert_eq!(code, 400);
    assert!(v["message"].as_str().unwrap().contains("unknown field \"spec.replica\""), "{v}");
    assert_eq!(
        call(&s.client, "POST", &format!("{path}?fieldValidation=Ignore"), "application/json", typo).await.0,
        200
    );
    // Also for kinds kept as sent.
    let typo = serde_json::to_vec(&json!({"metadata": {"name": "t"}, "dat": {"k": "v"}})).unwrap();
    let (code, v) = call(&s.client, "POST", &format!("{CM}?fieldValidation=Strict"), "application/json", typo).await;
    assert_eq!(code, 400);
    assert!(v["message"].as_str().unwrap().contains("unknown field \"dat\""), "{v}");
    // The deep object that bricked the store: refused before it gets there.
    let mut deep = json!("x");
    for _ in 0..120 {
        deep = json!({"x": deep});
    }
    let body = serde_json::to_vec(&json!({"metadata": {"name": "deep"}, "unknown": deep})).unwrap();
    assert_eq!(call(&s.client, "POST", CM, "application/json", body).await.0, 400);
}

#[tokio::test]
async fn a_watch_from_the_future_is_refused() {
    let s = server().await;
    let path = format!("{CM}?watch=true&resourceVersion={}", rev(&s) + 1000);
    let (code, v) = call(&s.client, "GET", &path, "application/json", vec![]).await;
    assert_eq!(code, 504, "{v}");
}

/// A TLS client that trusts the lab's CA (from its kubeconfig).
fn tls_connector(s: &Server) -> tokio_rustls::TlsConnector {
    use base64::Engine;
    let kc = kube::config::Kubeconfig::read_from(&s.running.kubeconfig).unwrap();
    let ca = kc.clusters[0].cluster.as_ref().unwrap().certificate_authority_data.clone().unwrap();
    let pem = base64::engine::general_purpose::STANDARD.decode(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_shut_clients_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server().await;
    let addr = s.running.addr;
    // 1000 that never finish (or never start) their TLS handshake.
    let mut raw = vec![];
    for i in 0..1000 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 10 == 0 {
            let _ = c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
        }
        raw.push(c);
    }
    // 1000 that finish it and then say nothing.
    let tls = tls_connector(&s);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut idle = vec![];
    for _ in 0..1000 {
        let c = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.push(tls.connect(name.clone(), c).await.expect("TLS handshake"));
    }
    // The real kubectl still gets its answer.
    let kc = s.running.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kc)
            .args(["get", "ns", "--request-timeout=10s"])
            .output()
    })
    .await
    .unwrap()
    .expect("kubectl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("kube-system"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // And the idle ones are closed by the server: handshakes within 10 s, silence within 30 s.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), raw[1].read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a handshake that never came: {closed:?}");
    let closed = tokio::time::timeout(Duration::from_secs(45), idle[0].read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a TLS connection that never spoke: {closed:?}");
}

#[tokio::test]
async fn external_ips_follow_the_policy() {
    let s = server().await;
    let svcs = "/api/v1/namespaces/default/services";
    let svc = |name: &str, ip: &str| {
        serde_json::to_vec(&json!({"metadata": {"name": name}, "spec": {"externalIPs": [ip], "ports": [{"port": 80}]}}))
            .unwrap()
    };
    // Denied by default, wherever it is.
    let (code, v) = call(&s.client, "POST", svcs, "application/json", svc("a", "192.0.2.10")).await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("externalIPCIDRs"), "{v}");
    // Another Service's ClusterIP (the kubernetes Service's 10.96.0.1): never.
    let cfg = json!({"metadata": {"name": "weft-config", "namespace": "kube-system"},
        "data": {"externalIPCIDRs": "192.0.2.0/24, 10.96.0.0/16"}});
    let cms = "/api/v1/namespaces/kube-system/configmaps";
    assert_eq!(call(&s.client, "POST", cms, "application/json", serde_json::to_vec(&cfg).unwrap()).await.0, 200);
    let (code, v) = call(&s.client, "POST", svcs, "application/json", svc("b", "10.96.0.1")).await;
    assert_eq!(code, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("Service range"), "{v}");
    let (code, _) = call(&s.client, "POST", svcs, "application/json", svc("c", "127.0.0.1")).await;
    assert_eq!(code, 422);
    // Inside a listed CIDR: allowed.
    assert_eq!(call(&s.client, "POST", svcs, "application/json", svc("d", "192.0.2.10")).await.0, 200);
    // Special endpoint addresses are refused too.
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "x"},
        "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"]}]});
    let path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
    assert_eq!(call(&s.client, "POST", path, "application/json", serde_json::to_vec(&slice).unwrap()).await.0, 422);
}

/// Run by `out_of_descriptors_the_accept_loop_backs_off` in a child with few file descriptors:
/// serves until killed, its address on stdout.
#[tokio::test]
#[ignore]
async fn child_serving_with_few_descriptors() {
    if std::env::var("WEFT_API_CHILD").is_err() {
        return;
    }
    let s = server().await;
    println!("ADDR {}", s.running.addr);
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_backs_off() {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=64")
        .arg(&exe)
        .args(["child_serving_with_few_descriptors", "--exact", "--ignored", "--nocapture"])
        .env("WEFT_API_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr: std::net::SocketAddr = loop {
        let l = lines.next().expect("the child's address").unwrap();
        if let Some(a) = l.strip_prefix("ADDR ") {
            break a.parse().unwrap();
        }
    };
    // More connections than the server has descriptors: its accept fails with EMFILE.
    let mut held = vec![];
    for _ in 0..100 {
        if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
            held.push(c);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(child.id()) - before;
    let _ = child.kill();
    let _ = child.wait();
    // A loop retrying the failed accept at once burns a whole core (about 200 ticks in 2 s).
    assert!(used < 50, "the server used {used} ticks of CPU in 2 s while out of descriptors");
}

/// Run by `readyz_fails_while_the_store_cannot_write` in a child whose file size limit makes
/// the disk "full".
#[tokio::test]
#[ignore]
async fn child_with_a_full_disk() {
    if std::env::var("WEFT_API_CHILD").is_err() {
        return;
    }
    let s = server().await;
    let readyz = |c: kube::Client| async move {
        let req = Request::builder().uri("/readyz").body(vec![]).unwrap();
        c.request_text(req).await.map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(readyz(s.client.clone()).await.is_ok());
    let mut failed = false;
    for i in 0..100 {
        let body =
            serde_json::to_vec(&json!({"metadata": {"name": format!("c{i}")}, "data": {"x": "y".repeat(1_000_000)}}))
                .unwrap();
        if call(&s.client, "POST", CM, "application/json", body).await.0 != 200 {
            failed = true;
            break;
        }
    }
    assert!(failed, "the disk filled up");
    let r = readyz(s.client.clone()).await;
    assert!(r.as_ref().is_err_and(|e| e.contains("store cannot write")), "{r:?}");
    println!("CHILD-OK");
}

#[test]
fn readyz_fails_while_the_store_cannot_write() {
    let exe = std::env::current_exe().unwrap();
    // SIGXFSZ ignored (inherited across exec), so writes past the limit fail with EFBIG.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; exec prlimit --fsize=20000000 \"$0\" child_with_a_full_disk --exact --ignored --nocapture")
        .arg(&exe)
        .env("WEFT_API_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("CHILD-OK"), "{text}");
}
