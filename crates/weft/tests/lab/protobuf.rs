//! The real kubectl's generators (`kubectl create <kind>`, `expose`, `scale`, `set image`): its
//! typed clients send protobuf bodies (`application/vnd.kubernetes.protobuf`), which the API
//! decodes into the JSON it admits.

use serde_json::Value;
use weft_testkit::Lab;

fn get_json(lab: &Lab, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

#[test]
fn kubectl_generators_send_protobuf_and_are_admitted() {
    let lab = Lab::up(&["--nodes", "0"]);

    // kubectl really sends protobuf, and takes our JSON answer.
    let out = lab.kubectl(&["create", "configmap", "probe", "--from-literal=a=b", "-v=8"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Content-Type: application/vnd.kubernetes.protobuf"), "{log}");

    // namespace
    assert!(lab.kubectl_ok(&["create", "namespace", "pb"]).contains("namespace/pb created"));
    assert_eq!(get_json(&lab, &["ns", "pb"])["status"]["phase"], "Active");

    // configmap: literals, with an empty value.
    lab.kubectl_ok(&["create", "configmap", "cm", "-n", "pb", "--from-literal=a=b", "--from-literal=empty="]);
    let cm = get_json(&lab, &["cm", "cm", "-n", "pb"]);
    assert_eq!(cm["data"], serde_json::json!({"a": "b", "empty": ""}), "{cm}");
    assert!(cm["metadata"].get("generation").is_none(), "{cm}");

    // secret generic: bytes come back as they went in.
    lab.kubectl_ok(&["create", "secret", "generic", "s", "-n", "pb", "--from-literal=password=s3cr=t"]);
    let s = get_json(&lab, &["secret", "s", "-n", "pb"]);
    assert_eq!(s["data"]["password"], "czNjcj10", "{s}");
    let pw = lab.kubectl_ok(&["get", "secret", "s", "-n", "pb", "-o", "jsonpath={.data.password}"]);
    assert_eq!(pw, "czNjcj10", "base64 of s3cr=t");

    // secret tls, with the lab's own serving certificate and key.
    let dir = lab.state_dir();
    let pem = |name: &str| {
        let found = [dir.join(name), dir.join("api").join(name)].into_iter().find(|p| p.exists());
        found.unwrap_or_else(|| panic!("{name} under {}", dir.display())).to_string_lossy().to_string()
    };
    let (crt, key) = (pem("apiserver.crt"), pem("apiserver.key"));
    lab.kubectl_ok(&["create", "secret", "tls", "tls", "-n", "pb", "--cert", &crt, "--key", &key]);
    let s = get_json(&lab, &["secret", "tls", "-n", "pb"]);
    assert_eq!(s["type"], "kubernetes.io/tls", "{s}");
    assert!(s["data"]["tls.crt"].as_str().is_some_and(|c| c.len() > 100), "{s}");

    // deployment
    lab.kubectl_ok(&["create", "deployment", "web", "-n", "pb", "--image=nginx:1.27", "--replicas=2", "--port=80"]);
    let d = get_json(&lab, &["deploy", "web", "-n", "pb"]);
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27", "{d}");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80, "{d}");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web", "{d}");
    // Defaulted as a JSON create would be.
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "{d}");
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always", "{d}");
    lab.kubectl_ok(&["create", "deployment", "zero", "-n", "pb", "--image=nginx", "--replicas=0"]);
    assert_eq!(get_json(&lab, &["deploy", "zero", "-n", "pb"])["spec"]["replicas"], 0);

    // service clusterip / nodeport / loadbalancer / externalname
    lab.kubectl_ok(&["create", "service", "clusterip", "cip", "-n", "pb", "--tcp=80:8080"]);
    let svc = get_json(&lab, &["svc", "cip", "-n", "pb"]);
    let ip: std::net::Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().expect("a ClusterIP");
    assert!(ip.octets()[0] == 10, "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80, "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080, "{svc}");
    assert_eq!(svc["spec"]["type"], "ClusterIP", "{svc}");
    lab.kubectl_ok(&["create", "service", "nodeport", "np", "-n", "pb", "--tcp=80:8080", "--node-port=30111"]);
    let svc = get_json(&lab, &["svc", "np", "-n", "pb"]);
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30111, "{svc}");
    lab.kubectl_ok(&["create", "service", "loadbalancer", "lb", "-n", "pb", "--tcp=443:8443"]);
    let svc = get_json(&lab, &["svc", "lb", "-n", "pb"]);
    assert_eq!(svc["spec"]["type"], "LoadBalancer", "{svc}");
    assert!(svc["spec"]["ports"][0]["nodePort"].as_u64().is_some_and(|p| (30000..=32767).contains(&p)), "{svc}");
    lab.kubectl_ok(&["create", "service", "externalname", "ext", "-n", "pb", "--external-name=example.test"]);
    assert_eq!(get_json(&lab, &["svc", "ext", "-n", "pb"])["spec"]["externalName"], "example.test");

    // ingress
    lab.kubectl_ok(&["create", "ingress", "ing", "-n", "pb", "--rule=foo.com/bar=svc1:8080"]);
    let ing = get_json(&lab, &["ingress", "ing", "-n", "pb"]);
    let rule = &ing["spec"]["rules"][0];
    assert_eq!(rule["host"], "foo.com", "{ing}");
    let path = &rule["http"]["paths"][0];
    assert_eq!(path["path"], "/bar", "{ing}");
    assert_eq!(path["pathType"], "Exact", "{ing}");
    assert_eq!(path["backend"]["service"], serde_json::json!({"name": "svc1", "port": {"number": 8080}}), "{ing}");

    // job, serviceaccount
    lab.kubectl_ok(&["create", "job", "once", "-n", "pb", "--image=busybox", "--", "echo", "hi"]);
    let job = get_json(&lab, &["job", "once", "-n", "pb"]);
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"], serde_json::json!(["echo", "hi"]), "{job}");
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never", "{job}");
    lab.kubectl_ok(&["create", "serviceaccount", "robot", "-n", "pb"]);
    assert_eq!(get_json(&lab, &["sa", "robot", "-n", "pb"])["metadata"]["name"], "robot");

    // expose, scale, set image
    lab.kubectl_ok(&["expose", "deployment", "web", "-n", "pb", "--port=80", "--name=web"]);
    let svc = get_json(&lab, &["svc", "web", "-n", "pb"]);
    assert_eq!(svc["spec"]["selector"]["app"], "web", "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80, "{svc}");
    lab.kubectl_ok(&["scale", "deployment", "web", "-n", "pb", "--replicas=3"]);
    assert_eq!(get_json(&lab, &["deploy", "web", "-n", "pb"])["spec"]["replicas"], 3);
    lab.kubectl_ok(&["set", "image", "deployment/web", "-n", "pb", "nginx=nginx:1.28"]);
    let d = get_json(&lab, &["deploy", "web", "-n", "pb"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.28", "{d}");

    // Admission still applies: an invalid name is a 422 with kube-apiserver's words.
    let out = lab.kubectl(&["create", "configmap", "Bad_Name", "-n", "pb", "--from-literal=a=b"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is invalid") && !err.contains("415"), "{err}");
}

/// A length-delimited protobuf field (strings, bytes, messages, map entries) built by hand.
fn ld(n: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128 && n < 16);
    let mut out = vec![n << 3 | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// A ConfigMap `name` with `data: {a: b}` in the `k8s\0` envelope.
fn configmap(name: &str) -> Vec<u8> {
    let raw = [ld(1, &ld(1, name.as_bytes())), ld(2, &[ld(1, b"a"), ld(2, b"b")].concat())].concat();
    let type_meta = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
    [b"k8s\0".to_vec(), ld(1, &type_meta), ld(2, &raw)].concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_bodies_over_raw_http() {
    let lab = Lab::up(&["--nodes", "0"]);
    let client = lab.client().await;
    let send = |method: &str, uri: &str, accept: &str, body: Vec<u8>| {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .header("accept", accept)
            .body(kube::client::Body::from(body))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client.send(req).await.expect("an answer");
            let status = resp.status().as_u16();
            let ctype = resp.headers().get("content-type").map(|h| h.to_str().unwrap().to_string());
            let body = resp.into_body().collect_bytes().await.unwrap();
            (status, ctype, String::from_utf8_lossy(&body).to_string())
        }
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    let both = "application/vnd.kubernetes.protobuf, application/json";

    let (status, ctype, body) = send("POST", cms, both, configmap("raw")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["a"], "b", "{v}");

    // Truncated, damaged or foreign bodies: a 400 that says what is wrong, never a crash.
    let mut truncated = configmap("cut");
    truncated.truncate(truncated.len() - 2);
    let (status, _, body) = send("POST", cms, both, truncated).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("protobuf"), "{body}");
    let (status, _, body) = send("POST", cms, both, b"{\"kind\":\"ConfigMap\"}".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("magic bytes"), "{body}");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..64 {
        let mut b = configmap(&format!("r{i}"));
        for _ in 0..1 + i % 4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = 4 + (seed as usize) % (b.len() - 4);
            b[at] = (seed >> 32) as u8;
        }
        let (status, _, body) = send("POST", cms, both, b).await;
        assert!(matches!(status, 201 | 400 | 409 | 422), "{status} {body}");
    }

    // A client that takes only protobuf is told what this server answers.
    let (status, _, body) = send("POST", cms, "application/vnd.kubernetes.protobuf", configmap("pbonly")).await;
    assert_eq!(status, 406, "{body}");
    assert!(body.contains("application/json"), "{body}");
    // Patches have no protobuf form.
    let (status, _, body) = send("PATCH", &format!("{cms}/raw"), both, configmap("raw")).await;
    assert_eq!(status, 415, "{body}");
    // The API still answers.
    assert!(lab.kubectl_ok(&["get", "cm", "raw", "-o", "name"]).contains("configmap/raw"));
}
