//! The Ingress controller `weft up` runs (deploy/ingress.yaml), end to end from the lab's
//! external host with real clients (curl, python's urllib, a tokio-tungstenite WebSocket) to the
//! address of its LoadBalancer Service:
//!
//! - seeds 000 (v1beta1, `rewrite-target: /`) and 001 (TLS from a `kubectl create secret tls`
//!   Secret, verified by SNI over HTTP/1.1 and HTTP/2; plain HTTP redirected with 308; an
//!   unknown SNI gets the controller's default certificate), a WebSocket and a gRPC health call
//!   (`backend-protocol: GRPC`) through it, X-Forwarded-For, `whitelist-source-range`, a refused
//!   `configuration-snippet` and a resource backend (Warning Events), the Ingress status, and an
//!   edit taking effect under a loop of requests none of which fails;
//! - the Kubernetes ingress-controller-conformance suite's features (default backend, host
//!   rules, path rules, load balancing, ingress class).
//!
//! One echo pod with many ports stands for many Services (each Service targets a port of its
//! own; the echo server says which port answered), so a lab runs few pods.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_testkit::{Lab, run_bounded};

/// The ingress controller's pod label (deploy/ingress.yaml).
const CONTROLLER_LABEL: &str = "app.kubernetes.io/name";
const CONTROLLER: &str = "weft-ingress";

/// What curl saw.
#[derive(Debug)]
struct Reply {
    /// 0: no HTTP answer (see `err` and `exit`).
    code: u16,
    /// `1.1` or `2`.
    version: String,
    head: String,
    body: String,
    err: String,
    exit: Option<i32>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The echo server's answer.
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not the echo server's JSON ({e}): {self:#?}"))
    }

    /// 200 from the echo server: its JSON.
    fn ok(&self) -> Value {
        assert_eq!(self.code, 200, "expected 200 from the echo server: {self:#?}");
        self.json()
    }
}

/// `curl ARGS` on the external host, headers and body and status kept apart.
fn curl(lab: &Lab, args: &[&str]) -> Reply {
    let mut a = vec!["curl", "-sS", "-m", "5", "-D", "-", "-w", "\n<<%{http_code} %{http_version}>>"];
    a.extend_from_slice(args);
    let o = lab.exec(&["--external"], &a);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let (resp, meta) = out.rsplit_once("\n<<").unwrap_or((out.as_str(), "000 >>"));
    let meta = meta.trim_end_matches(">>");
    let (code, version) = meta.split_once(' ').unwrap_or((meta, ""));
    // With -L, a header block per response: the last one is the answer's.
    let (mut head, mut body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    while body.starts_with("HTTP/")
        && let Some((h, b)) = body.split_once("\r\n\r\n")
    {
        (head, body) = (h, b);
    }
    Reply {
        code: code.parse().unwrap_or(0),
        version: version.to_string(),
        head: head.to_string(),
        body: body.to_string(),
        err,
        exit: o.status.code(),
    }
}

/// `--resolve host:port:IP` for a URL whose host is a name, so the request goes to the
/// controller with that host (and SNI).
fn resolve(ip: &str, url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.to_string()),
        None => (authority, if scheme == "https" { "443".into() } else { "80".into() }),
    };
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some(format!("{host}:{port}:{ip}"))
}

/// A request to `url` at the controller's address `ip`.
fn at(lab: &Lab, ip: &str, url: &str, extra: &[&str]) -> Reply {
    let r = resolve(ip, url);
    let mut a: Vec<&str> = vec![];
    if let Some(r) = &r {
        a.extend(["--resolve", r.as_str()]);
    }
    a.extend_from_slice(extra);
    a.push(url);
    curl(lab, &a)
}

/// Waits (bounded) until a request to `url` gets `code`; the last reply otherwise.
fn wait_code(lab: &Lab, ip: &str, url: &str, extra: &[&str], code: u16, secs: u64) -> Reply {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = at(lab, ip, url, extra);
        if r.code == code {
            return r;
        }
        assert!(
            Instant::now() < end,
            "{url} did not answer {code} within {secs} s; last: {r:#?}{}",
            controller_log(lab)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The controller's last log lines, for failure messages.
fn controller_log(lab: &Lab) -> String {
    let o = lab.kubectl(&["-n", "kube-system", "logs", "deployment/weft-ingress", "--tail=40"]);
    format!("\n--- the controller's log:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn kjson(lab: &Lab, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&a)).unwrap()
}

fn status_ip(v: &Value) -> String {
    v["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().unwrap_or("").to_string()
}

/// The controller's address: its pod Ready, its Service's LoadBalancer address taken, and the
/// proxy answering there (a 404: no Ingress yet).
fn controller(lab: &Lab) -> String {
    let end = Instant::now() + Duration::from_secs(90);
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    loop {
        let mut pods = lab.pods("kube-system");
        pods.retain(|p| p["metadata"]["labels"][CONTROLLER_LABEL] == CONTROLLER);
        if pods.len() == 1 && ready(&pods[0]) {
            break;
        }
        assert!(
            Instant::now() < end,
            "the weft-ingress pod was not Ready within 90 s: {}",
            serde_json::to_string_pretty(&pods).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut svc = Value::Null;
    let mut ip = String::new();
    lab.wait_for("the weft-ingress Service's LoadBalancer address", 30, || {
        svc = kjson(lab, &["-n", "kube-system", "get", "service", CONTROLLER]);
        ip = status_ip(&svc);
        !ip.is_empty()
    });
    let r = wait_code(lab, &ip, &format!("http://{ip}/"), &[], 404, 30);
    assert!(r.body.contains("404 Not Found"), "{r:#?}");
    ip
}

/// The external host's address (what the controller sees as the client).
fn external_ip(lab: &Lab) -> String {
    let out = lab.exec_ok(&["--external"], &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address on the external host's eth0: {out}"))
        .to_string()
}

/// A self-signed certificate for `host` (openssl), as `(cert, key)` files in `dir`.
fn certificate(dir: &Path, host: &str) -> (String, String) {
    let crt = dir.join(format!("{host}.crt")).display().to_string();
    let key = dir.join(format!("{host}.key")).display().to_string();
    let mut c = std::process::Command::new("openssl");
    c.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256"])
        .args(["-days", "2", "-subj", &format!("/CN={host}"), "-addext", &format!("subjectAltName=DNS:{host}")])
        .args(["-keyout", &key, "-out", &crt]);
    run_bounded(c, Duration::from_secs(30)).unwrap_or_else(|e| panic!("openssl: {e:#}"));
    (crt, key)
}

/// The Events of an object, as `kubectl get events` shows them.
fn events(lab: &Lab, ns: &str, name: &str) -> Vec<Value> {
    let v = kjson(lab, &["-n", ns, "get", "events", "--field-selector", &format!("involvedObject.name={name}")]);
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Waits for a Warning Event on Ingress `name` whose reason is `needle` or whose message has it.
fn wait_warning(lab: &Lab, ns: &str, name: &str, needle: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let evs = events(lab, ns, name);
        if let Some(e) = evs.iter().find(|e| {
            e["type"] == "Warning"
                && e["involvedObject"]["kind"] == "Ingress"
                && (e["reason"] == needle || e["message"].as_str().is_some_and(|m| m.contains(needle)))
        }) {
            return e.clone();
        }
        assert!(
            Instant::now() < end,
            "no Warning Event naming {needle:?} on Ingress {ns}/{name} within 30 s; its Events: {}",
            serde_json::to_string_pretty(&evs).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until Ingress `name`'s status carries `ip`.
fn wait_status(lab: &Lab, ns: &str, name: &str, ip: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let v = kjson(lab, &["-n", ns, "get", "ingress", name]);
        if status_ip(&v) == ip {
            return;
        }
        assert!(
            Instant::now() < end,
            "Ingress {ns}/{name}'s status did not get {ip} within 30 s: {}{}",
            v["status"],
            controller_log(lab)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds, TLS, protocols, annotations

/// The backends of the first lab: seed 000's `test` (two pods), seed 001's two Services, and
/// one pod `multi` whose ports stand for the other Services.
const BACKENDS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: test}
spec:
  replicas: 2
  selector: {matchLabels: {app: test}}
  template:
    metadata: {labels: {app: test}}
    spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: test}
spec: {selector: {app: test}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api, labels: {app: api}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: my-api-service}
spec: {selector: {app: api}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: my-web-service}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: multi, labels: {app: multi}}
spec:
  containers:
  - name: echo
    image: weft/echo
    ports: [{containerPort: 8081}, {containerPort: 8082}, {containerPort: 8083}, {containerPort: 50051}]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec: {selector: {app: multi}, ports: [{port: 80, targetPort: 8081}]}
---
apiVersion: v1
kind: Service
metadata: {name: live-v1}
spec: {selector: {app: multi}, ports: [{port: 80, targetPort: 8082}]}
---
apiVersion: v1
kind: Service
metadata: {name: live-v2}
spec: {selector: {app: multi}, ports: [{port: 80, targetPort: 8083}]}
---
apiVersion: v1
kind: Service
metadata: {name: grpc}
spec: {selector: {app: multi}, ports: [{name: grpc, port: 50051, targetPort: 50051}]}
"#;

/// The first lab's own Ingresses; `{EXT}` is the external host's address.
const INGRESSES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: websocket}
spec:
  rules:
  - host: ws.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: grpc
  annotations: {nginx.ingress.kubernetes.io/backend-protocol: GRPC}
spec:
  tls: [{hosts: [grpc.example.com], secretName: grpc-tls}]
  rules:
  - host: grpc.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: grpc, port: {name: grpc}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: allowed
  annotations: {nginx.ingress.kubernetes.io/whitelist-source-range: "{EXT}/32"}
spec:
  rules:
  - host: allowed.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: denied
  annotations: {nginx.ingress.kubernetes.io/whitelist-source-range: "10.0.0.0/8, 192.168.0.0/16"}
spec:
  rules:
  - host: denied.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: snippet
  annotations:
    nginx.ingress.kubernetes.io/configuration-snippet: |
      more_set_headers "X-Snippet: injected";
    nginx.ingress.kubernetes.io/rewrite-target: /rewritten
spec:
  rules:
  - host: snippet.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: resource}
spec:
  rules:
  - host: resource.example.com
    http:
      paths:
      - path: /assets
        pathType: Prefix
        backend: {resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: static-assets}}
      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: live}
spec:
  rules:
  - host: live.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: live-v1, port: {number: 80}}}}]}
"#;

#[test]
fn seeds_tls_protocols_and_annotations() {
    let lab = Lab::up(&["--nodes", "2"]);
    let ip = controller(&lab);
    let ext = external_ip(&lab);
    let dir = lab.home.path().to_path_buf();

    // Certificates, and Secrets made from them by kubectl.
    let (crt, key) = certificate(&dir, "my-app.example.com");
    lab.kubectl_ok(&["create", "secret", "tls", "my-tls-secret", "--cert", &crt, "--key", &key]);
    let (grpc_crt, grpc_key) = certificate(&dir, "grpc.example.com");
    lab.kubectl_ok(&["create", "secret", "tls", "grpc-tls", "--cert", &grpc_crt, "--key", &grpc_key]);

    lab.apply_str(BACKENDS);
    lab.apply_str(&INGRESSES.replace("{EXT}", &ext));
    // The seeds as they are, with the real kubectl.
    for s in ["ingress-v1beta1.yaml", "ingress-v1-tls.yaml"] {
        lab.apply_seed(s);
    }
    lab.wait_running("default", 5);

    // Seed 000: both paths reach `test` with the path rewritten to `/`.
    wait_code(&lab, &ip, "http://online.com/watch", &[], 200, 30);
    // Both pods answer, round-robin. A pod is Ready a moment before its EndpointSlice says so
    // (the real control plane's slice controller runs apart from the kubelet), so this polls.
    let mut pods = BTreeSet::new();
    lab.wait_for("both pods of `test` to answer through the ingress", 30, || {
        for path in ["/watch", "/wear"] {
            let j = at(&lab, &ip, &format!("http://online.com{path}"), &[]).ok();
            assert_eq!(j["path"], "/", "{path} rewritten to /: {j}");
            assert_eq!(j["host"], "online.com", "{j}");
            let pod = j["pod"].as_str().unwrap_or("").to_string();
            assert!(pod.starts_with("test-"), "{path} served by a pod of `test`: {j}");
            pods.insert(pod);
        }
        pods.len() == 2
    });
    let r = at(&lab, &ip, "http://online.com/elsewhere", &[]);
    assert_eq!(r.code, 404, "a path of neither rule: {r:#?}");

    // Seed 001: TLS by SNI, verified against our certificate, over HTTP/1.1 and HTTP/2.
    wait_code(&lab, &ip, "https://my-app.example.com/api", &["--cacert", &crt], 200, 30);
    for (path, pod) in [("/api", "api"), ("/web", "web"), ("/api/v1/items", "api")] {
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let r = at(&lab, &ip, &format!("https://my-app.example.com{path}"), &["--cacert", &crt, flag]);
            let j = r.ok();
            assert_eq!(r.version, version, "{flag} {path}: {r:#?}");
            assert_eq!(j["pod"], pod, "{path} served by {pod}: {j}");
            assert_eq!(j["path"], path, "the path passed as it came: {j}");
            assert_eq!(j["host"], "my-app.example.com", "{j}");
            assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{j}");
        }
    }
    // Plain HTTP to a TLS host: 308 to https.
    let r = at(&lab, &ip, "http://my-app.example.com/api?x=1", &[]);
    assert_eq!(r.code, 308, "{r:#?}");
    assert_eq!(r.header("location"), Some("https://my-app.example.com/api?x=1"), "{r:#?}");
    // An unknown SNI: the default certificate, which our CA does not vouch for.
    let r = at(&lab, &ip, "https://unknown.example.com/", &["-k", "-v"]);
    assert!(r.err.contains("Kubernetes Ingress Controller Fake Certificate"), "the default certificate: {r:#?}");
    assert_eq!(r.code, 404, "{r:#?}");
    let r = at(&lab, &ip, "https://unknown.example.com/", &["--cacert", &crt]);
    assert_eq!(r.exit, Some(60), "curl cannot verify the default certificate: {r:#?}");
    // And the seed's certificate is not served for another name either.
    let r = at(&lab, &ip, "https://my-app.example.com/api", &["-v", "--cacert", &crt]);
    assert!(r.err.contains("CN=my-app.example.com"), "{r:#?}");

    // The status of the seeds' Ingresses is the Service's address (my-ingress has no class: the
    // default one, weft, was given at create).
    let svc = kjson(&lab, &["-n", "kube-system", "get", "service", CONTROLLER]);
    assert_eq!(status_ip(&svc), ip);
    for name in ["test-ingress", "my-ingress"] {
        wait_status(&lab, "default", name, &ip);
    }
    let mine = kjson(&lab, &["get", "ingress", "my-ingress"]);
    assert_eq!(mine["spec"]["ingressClassName"], "weft", "the default class: {mine}");

    // X-Forwarded-For is the external host; an allowlist without it is 403.
    let j = wait_code(&lab, &ip, "http://allowed.example.com/", &[], 200, 30).json();
    assert_eq!(j["headers"]["x-forwarded-for"], ext.as_str(), "{j}");
    let r = wait_code(&lab, &ip, "http://denied.example.com/", &[], 403, 30);
    assert!(r.body.contains("403 Forbidden"), "{r:#?}");
    // A client-sent X-Forwarded-For is not taken as the client (the allowlist still sees us).
    let r = at(&lab, &ip, "http://denied.example.com/", &["-H", "X-Forwarded-For: 10.1.2.3"]);
    assert_eq!(r.code, 403, "a forged X-Forwarded-For does not pass the allowlist: {r:#?}");

    // A snippet is refused in words; the rest of that Ingress is served.
    let e = wait_warning(&lab, "default", "snippet", "configuration-snippet");
    let shown = lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=snippet"]);
    assert!(shown.contains("configuration-snippet"), "kubectl get events shows it: {shown}\n{e}");
    let r = wait_code(&lab, &ip, "http://snippet.example.com/page", &[], 200, 30);
    assert_eq!(r.json()["path"], "/rewritten", "the Ingress's other annotation applies: {r:#?}");
    assert_eq!(r.header("x-snippet"), None, "nothing of the snippet ran: {r:#?}");

    // A resource backend: an Event, and the rest of the Ingress served.
    let e = wait_warning(&lab, "default", "resource", "ResourceBackend");
    let m = e["message"].as_str().unwrap_or("");
    assert!(m.contains("paths[0].backend.resource"), "the Event names the field: {e}");
    let r = wait_code(&lab, &ip, "http://resource.example.com/other", &[], 200, 30);
    assert_eq!(r.json()["port"], 8081, "{r:#?}");
    let r = at(&lab, &ip, "http://resource.example.com/assets/logo.png", &[]);
    assert_eq!(r.code, 503, "a resource backend has nothing to send to: {r:#?}");

    // A WebSocket through the controller.
    wait_code(&lab, &ip, "http://ws.example.com/", &[], 200, 30);
    let got = websocket(&lab, &ip, "ws.example.com", &["hello", "through the ingress", "3"]);
    assert_eq!(got, Ok(vec!["hello".to_string(), "through the ingress".into(), "3".into()]));

    // gRPC: the health service's Check, over TLS and HTTP/2 to the controller, h2c to the pod.
    let end = Instant::now() + Duration::from_secs(30);
    let (head, body, meta) = loop {
        let (head, body, meta) = grpc_check(&lab, &ip, &grpc_crt);
        if meta == "200 2" || Instant::now() > end {
            break (head, body, meta);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(meta, "200 2", "HTTP/2 200: {head}");
    assert!(head.contains("content-type: application/grpc"), "{head}");
    assert!(head.lines().any(|l| l.trim() == "grpc-status: 0"), "the trailer grpc-status 0: {head}");
    assert_eq!(body, [0, 0, 0, 0, 2, 0x08, 0x01], "HealthCheckResponse{{status: SERVING}}: {head}");

    // An edit of the routes takes effect within seconds, no request failing meanwhile.
    live_edit(&lab, &ip);
}

/// Opens a WebSocket from the external host through the controller at `ip` to `host` and sends
/// `msgs`: what came back.
fn websocket(lab: &Lab, ip: &str, host: &str, msgs: &[&str]) -> Result<Vec<String>, String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ns = weft_netlink::ns::path(&weft_lab::topology::external_ns(&lab.name));
    let addr = format!("{ip}:80");
    let url = format!("ws://{host}/chat");
    let msgs: Vec<String> = msgs.iter().map(|m| m.to_string()).collect();
    let run = move || -> Result<Vec<String>, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let exchange = async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
            let (mut ws, resp) =
                tokio_tungstenite::client_async(url.as_str(), tcp).await.map_err(|e| format!("handshake: {e:?}"))?;
            if resp.status() != 101 {
                return Err(format!("not 101: {resp:?}"));
            }
            let mut back = vec![];
            for m in msgs {
                ws.send(Message::text(m)).await.map_err(|e| format!("send: {e}"))?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => back.push(t.to_string()),
                    other => return Err(format!("instead of the echo: {other:?}")),
                }
            }
            let _ = ws.close(None).await;
            Ok(back)
        };
        // The timer is made inside the runtime.
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), exchange).await })
            .map_err(|_| "the WebSocket exchange took over 15 s".to_string())?
    };
    weft_netlink::ns::run_in(Some(&ns), run).map_err(|e| format!("{e:#}"))?
}

/// `grpc.health.v1.Health/Check` with curl over TLS and HTTP/2: the response's headers (and
/// trailers), its body, and `code version`.
fn grpc_check(lab: &Lab, ip: &str, ca: &str) -> (String, Vec<u8>, String) {
    let dir = lab.home.path();
    let (req, head, body) = (dir.join("grpc.req"), dir.join("grpc.head"), dir.join("grpc.body"));
    // An empty HealthCheckRequest in gRPC's length-prefixed framing.
    std::fs::write(&req, [0u8; 5]).unwrap();
    let (req, head_s, body_s) = (req.display().to_string(), head.display().to_string(), body.display().to_string());
    let resolve = format!("grpc.example.com:443:{ip}");
    let o = lab.exec(
        &["--external"],
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            "--http2",
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &format!("@{req}"),
            "-D",
            &head_s,
            "-o",
            &body_s,
            "-w",
            "%{http_code} %{http_version}",
            "https://grpc.example.com/grpc.health.v1.Health/Check",
        ],
    );
    let meta = String::from_utf8_lossy(&o.stdout).to_string();
    let head = std::fs::read_to_string(&head)
        .unwrap_or_else(|_| format!("(no headers) {}", String::from_utf8_lossy(&o.stderr)));
    (head, std::fs::read(&body).unwrap_or_default(), meta)
}

/// A loop of requests from the external host to live.example.com while its Ingress is edited
/// from live-v1 (port 8082) to live-v2 (port 8083): none fails, the change is served within
/// 5 s and, once served, stays.
fn live_edit(lab: &Lab, ip: &str) {
    wait_code(lab, ip, "http://live.example.com/", &[], 200, 30);
    let prog = format!(
        r#"
import json, time, urllib.request
out = []
end = time.time() + 12
while time.time() < end and len(out) < 1500:
    t = time.time()
    try:
        r = urllib.request.urlopen(urllib.request.Request("http://{ip}/", headers={{"Host": "live.example.com"}}), timeout=2)
        out.append([r.status, json.load(r)["port"], t])
    except Exception as e:
        out.append([getattr(e, "code", 0), str(e), t])
    time.sleep(0.01)
print(json.dumps(out))
"#
    );
    let (samples, edited) = std::thread::scope(|s| {
        let looping = s.spawn(|| lab.exec_ok(&["--external"], &["python3", "-c", &prog]));
        std::thread::sleep(Duration::from_secs(3));
        let edited = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        lab.kubectl_ok(&[
            "patch",
            "ingress",
            "live",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/http/paths/0/backend/service/name","value":"live-v2"}]"#,
        ]);
        let out = looping.join().expect("the request loop");
        (serde_json::from_str::<Vec<(u16, Value, f64)>>(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")), edited)
    });
    assert!(samples.len() >= 100, "the loop made {} requests in 12 s: {samples:?}", samples.len());
    let failed: Vec<_> = samples.iter().filter(|(code, _, _)| *code != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed during the edit: {failed:?}", failed.len(), samples.len());
    let before: BTreeMap<String, usize> = samples.iter().filter(|s| s.2 < edited).fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.1.to_string()).or_default() += 1;
        m
    });
    assert_eq!(before.keys().collect::<Vec<_>>(), ["8082"], "live-v1 alone before the edit: {before:?}");
    let first = samples.iter().position(|s| s.1 == 8083);
    let Some(first) = first else { panic!("live-v2 never answered after the edit: {samples:?}") };
    let took = samples[first].2 - edited;
    assert!(took < 5.0, "the edit took {took:.2} s to be served");
    eprintln!("live edit: {} requests, none failed; live-v2 served {took:.2} s after the edit", samples.len());
    let after: Vec<_> = samples[first..].iter().filter(|s| s.1 != 8083).collect();
    assert!(after.is_empty(), "live-v1 answered again after live-v2 had: {after:?}");
}

// ---------------------------------------------------------------------------------------------
// ingress-controller-conformance

/// The conformance suite's Services, each on a port of its own of pod `conf` (the echo server
/// names the port that answered), and `echo-service` on a Deployment of four pods.
const SERVICES: [(&str, u16); 10] = [
    ("foo-exact", 8001),
    ("foo-prefix", 8002),
    ("aaa-slash-bbb-prefix", 8003),
    ("aaa-prefix", 8004),
    ("aaa-slash-bbb-slash-prefix", 8005),
    ("foo-slash-exact", 8006),
    ("wildcard-foo-com", 8007),
    ("foo-bar-com", 8008),
    ("ingress-class-prefix", 8009),
    ("no-host", 8010),
];

fn conformance_backends() -> String {
    let ports: Vec<String> = SERVICES.iter().map(|(_, p)| format!("{{containerPort: {p}}}")).collect();
    let mut m = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: conformance}}
---
apiVersion: v1
kind: Pod
metadata: {{name: conf, namespace: conformance, labels: {{app: conf}}}}
spec: {{containers: [{{name: echo, image: weft/echo, ports: [{}]}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-service, namespace: conformance}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: echo-service}}}}
  template:
    metadata: {{labels: {{app: echo-service}}}}
    spec: {{containers: [{{name: echo, image: weft/echo, ports: [{{containerPort: 8080}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo-service, namespace: conformance}}
spec: {{selector: {{app: echo-service}}, ports: [{{name: http, port: 8080, targetPort: 8080}}]}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: other}}
spec: {{controller: example.com/other-controller}}
"#,
        ports.join(", ")
    );
    for (name, port) in SERVICES {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: conformance}}\nspec: {{selector: {{app: conf}}, ports: [{{name: http, port: 8080, targetPort: {port}}}]}}\n"
        ));
    }
    m
}

/// path_rules.feature's and host_rules.feature's Ingresses as the suite writes them, and
/// ingress_class.feature's with more ways of naming a class than its one.
const CONFORMANCE_INGRESSES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: path-rules, namespace: conformance}
spec:
  rules:
    - host: "exact-path-rules"
      http:
        paths:
          - path: /foo
            pathType: Exact
            backend: {service: {name: foo-exact, port: {number: 8080}}}
    - host: "prefix-path-rules"
      http:
        paths:
          - path: /foo
            pathType: Prefix
            backend: {service: {name: foo-prefix, port: {number: 8080}}}
          - path: /aaa/bbb
            pathType: Prefix
            backend: {service: {name: aaa-slash-bbb-prefix, port: {number: 8080}}}
          - path: /aaa
            pathType: Prefix
            backend: {service: {name: aaa-prefix, port: {number: 8080}}}
    - host: "mixed-path-rules"
      http:
        paths:
          - path: /foo
            pathType: Prefix
            backend: {service: {name: foo-prefix, port: {number: 8080}}}
          - path: /foo
            pathType: Exact
            backend: {service: {name: foo-exact, port: {number: 8080}}}
    - host: "trailing-slash-path-rules"
      http:
        paths:
          - path: /aaa/bbb/
            pathType: Prefix
            backend: {service: {name: aaa-slash-bbb-slash-prefix, port: {number: 8080}}}
          - path: /foo/
            pathType: Exact
            backend: {service: {name: foo-slash-exact, port: {number: 8080}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: host-rules, namespace: conformance}
spec:
  tls:
    - hosts: [foo.bar.com]
      secretName: conformance-tls
  rules:
    - host: "*.foo.com"
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: wildcard-foo-com, port: {number: 8080}}}
    - host: foo.bar.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: foo-bar-com, port: {name: http}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: no-host, namespace: conformance}
spec:
  rules:
    - http:
        paths:
          - path: /no-host
            pathType: Prefix
            backend: {service: {name: no-host, port: {number: 8080}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: test-ingress-class, namespace: conformance}
spec:
  ingressClassName: some-invalid-class-name
  rules:
    - host: "ingress-class"
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: ingress-class-prefix, port: {number: 8080}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other-class, namespace: conformance}
spec:
  ingressClassName: other
  rules:
    - host: "other-class"
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: ingress-class-prefix, port: {number: 8080}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: annotated-nginx
  namespace: conformance
  annotations: {kubernetes.io/ingress.class: nginx}
spec:
  rules:
    - host: "annotated-nginx"
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: ingress-class-prefix, port: {number: 8080}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: annotated-weft
  namespace: conformance
  annotations: {kubernetes.io/ingress.class: weft}
spec:
  rules:
    - host: "annotated-weft"
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: ingress-class-prefix, port: {number: 8080}}}
"#;

const DEFAULT_BACKEND: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: default-backend, namespace: conformance}
spec:
  defaultBackend:
    service:
      name: echo-service
      port: {number: 8080}
"#;

/// A request's answer from the `conf` pod: the Service (by port) that served it.
fn served_by(r: &Reply) -> String {
    let j = r.ok();
    let port = j["port"].as_u64().unwrap_or(0);
    match SERVICES.iter().find(|(_, p)| u64::from(*p) == port) {
        Some((name, _)) => name.to_string(),
        None if j["pod"].as_str().is_some_and(|p| p.starts_with("echo-service-")) => "echo-service".into(),
        None => panic!("served by something else: {r:#?}"),
    }
}

#[test]
fn conformance_features() {
    let lab = Lab::up(&["--nodes", "2"]);
    let ip = controller(&lab);
    let dir = lab.home.path().to_path_buf();
    let (crt, key) = certificate(&dir, "foo.bar.com");
    lab.apply_str(&conformance_backends());
    lab.kubectl_ok(&["-n", "conformance", "create", "secret", "tls", "conformance-tls", "--cert", &crt, "--key", &key]);
    lab.apply_str(CONFORMANCE_INGRESSES);
    lab.wait_running("conformance", 5);
    for name in ["path-rules", "host-rules", "no-host", "annotated-weft"] {
        wait_status(&lab, "conformance", name, &ip);
    }
    // Named no class: the default one was given at create.
    let v = kjson(&lab, &["-n", "conformance", "get", "ingress", "path-rules"]);
    assert_eq!(v["spec"]["ingressClassName"], "weft", "{v}");

    // path_rules.feature, every scenario: (url, the Service, the path it sees) or 404.
    wait_code(&lab, &ip, "http://exact-path-rules/foo", &[], 200, 30);
    let cases: [(&str, Option<&str>); 16] = [
        ("http://exact-path-rules/foo", Some("foo-exact")),
        ("http://exact-path-rules/foo/", None),
        ("http://exact-path-rules/FOO", None),
        ("http://exact-path-rules/bar", None),
        ("http://prefix-path-rules/foo", Some("foo-prefix")),
        ("http://prefix-path-rules/foo/", Some("foo-prefix")),
        ("http://prefix-path-rules/FOO", None),
        ("http://prefix-path-rules/aaa/bbb", Some("aaa-slash-bbb-prefix")),
        ("http://prefix-path-rules/aaa/bbb/ccc", Some("aaa-slash-bbb-prefix")),
        ("http://prefix-path-rules/aaa/ccc", Some("aaa-prefix")),
        ("http://prefix-path-rules/aaaccc", None),
        ("http://mixed-path-rules/foo", Some("foo-exact")),
        ("http://mixed-path-rules/foo/bar", Some("foo-prefix")),
        ("http://trailing-slash-path-rules/aaa/bbb", Some("aaa-slash-bbb-slash-prefix")),
        ("http://trailing-slash-path-rules/aaa/bbb/", Some("aaa-slash-bbb-slash-prefix")),
        ("http://trailing-slash-path-rules/foo", None),
    ];
    check_cases(&lab, &ip, &cases);
    let r = at(&lab, &ip, "http://trailing-slash-path-rules/foo/", &[]);
    assert_eq!(served_by(&r), "foo-slash-exact", "{r:#?}");

    // host_rules.feature.
    let r = at(&lab, &ip, "https://foo.bar.com", &["--cacert", &crt]);
    assert_eq!(served_by(&r), "foo-bar-com", "TLS verified for foo.bar.com: {r:#?}");
    assert_eq!(r.json()["host"], "foo.bar.com");
    // The suite's client follows the redirect ingress-nginx answers for a host with TLS.
    let https = format!("foo.bar.com:443:{ip}");
    let r = at(&lab, &ip, "http://foo.bar.com", &["-L", "--resolve", &https, "--cacert", &crt]);
    assert_eq!(served_by(&r), "foo-bar-com", "{r:#?}");
    assert_eq!(r.json()["host"], "foo.bar.com", "{r:#?}");
    let cases: [(&str, Option<&str>); 4] = [
        ("http://subdomain.bar.com", None),
        ("http://bar.foo.com", Some("wildcard-foo-com")),
        ("http://baz.bar.foo.com", None),
        ("http://foo.com", None),
    ];
    check_cases(&lab, &ip, &cases);
    let j = at(&lab, &ip, "http://bar.foo.com/x", &[]).ok();
    assert_eq!(j["host"], "bar.foo.com", "{j}");
    // A rule without a host takes any host that has no rules of its own (the address too).
    let no_host = format!("http://{ip}/no-host");
    let cases: [(&str, Option<&str>); 4] = [
        ("http://anything.example/no-host", Some("no-host")),
        ("http://subdomain.bar.com/no-host/sub", Some("no-host")),
        (no_host.as_str(), Some("no-host")),
        ("http://exact-path-rules/no-host", None),
    ];
    check_cases(&lab, &ip, &cases);

    // ingress_class.feature: Ingresses of another class, named or annotated, are not served and
    // get no address; one annotated with our class is.
    let r = at(&lab, &ip, "http://annotated-weft/", &[]);
    assert_eq!(served_by(&r), "ingress-class-prefix", "{r:#?}");
    for (name, host) in [
        ("test-ingress-class", "ingress-class"),
        ("other-class", "other-class"),
        ("annotated-nginx", "annotated-nginx"),
    ] {
        let r = at(&lab, &ip, &format!("http://{host}/"), &[]);
        assert_eq!(r.code, 404, "Ingress {name} is not ours, yet {host} is served: {r:#?}");
        let v = kjson(&lab, &["-n", "conformance", "get", "ingress", name]);
        assert_eq!(v["status"]["loadBalancer"]["ingress"], Value::Null, "Ingress {name} has an address: {v}");
    }
    let v = kjson(&lab, &["-n", "conformance", "get", "ingress", "annotated-nginx"]);
    assert_eq!(v["spec"]["ingressClassName"], Value::Null, "an annotated Ingress gets no default class: {v}");

    // default_backend.feature: with one, whatever no rule takes goes there.
    lab.apply_str(DEFAULT_BACKEND);
    let mut no_server = vec![];
    wait_status(&lab, "conformance", "default-backend", &ip);
    wait_code(&lab, &ip, "http://my-host/", &[], 200, 30);
    for (method, host, path) in [
        ("GET", "my-host", ""),
        ("GET", "my-host", "sub-path"),
        ("POST", "some-host", ""),
        ("PUT", "", "resource"),
        ("DELETE", "some-host", "resource"),
        ("PATCH", "my-host", "resource"),
    ] {
        let host = if host.is_empty() { ip.as_str() } else { host };
        let url = format!("http://{host}/{path}");
        let r = at(&lab, &ip, &url, &["-X", method, "--http1.1", "-A", "Go-http-client/1.1"]);
        assert_eq!(served_by(&r), "echo-service", "{method} {url}: {r:#?}");
        assert_eq!(r.version, "1.1", "{r:#?}");
        for h in ["content-length", "content-type", "date"] {
            assert!(r.header(h).is_some(), "{method} {url}: no {h} header in the response: {r:#?}");
        }
        // The suite wants a Server header too (ingress-nginx's `nginx`): checked at the end, so
        // that its absence does not hide the rest.
        if r.header("server").is_none() {
            no_server.push(format!("{method} {url}: {}", r.head));
        }
        let j = r.json();
        assert_eq!(j["method"], method, "{j}");
        assert_eq!(j["path"], format!("/{path}"), "{j}");
        assert_eq!(j["proto"], "HTTP/1.1", "{j}");
        assert_eq!(j["headers"]["user-agent"], "Go-http-client/1.1", "{j}");
    }
    // A host with rules whose paths do not match goes there too; the rules still win.
    assert_eq!(served_by(&at(&lab, &ip, "http://exact-path-rules/bar", &[])), "echo-service");
    assert_eq!(served_by(&at(&lab, &ip, "http://exact-path-rules/foo", &[])), "foo-exact");
    // And an Ingress of another class still is not served.
    assert_eq!(served_by(&at(&lab, &ip, "http://ingress-class/", &[])), "echo-service");

    // load_balancing.feature: 100 requests through the default backend reach every pod.
    let prog = format!(
        r#"
import json, urllib.request, collections
c = collections.Counter()
for _ in range(100):
    r = urllib.request.urlopen(urllib.request.Request("http://{ip}/", headers={{"Host": "load-balancing"}}), timeout=3)
    c[(r.status, json.load(r)["pod"])] += 1
print(json.dumps([[s, p, n] for (s, p), n in c.items()]))
"#
    );
    let out = lab.exec_ok(&["--external"], &["python3", "-c", &prog]);
    let counts: Vec<(u16, String, u32)> = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(counts.iter().all(|(s, _, _)| *s == 200), "{counts:?}");
    let pods: BTreeSet<&str> = counts.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(pods.len(), 4, "100 requests reach all four pods of echo-service: {counts:?}");
    assert!(pods.iter().all(|p| p.starts_with("echo-service-")), "{counts:?}");
    assert!(counts.iter().all(|(_, _, n)| *n >= 5), "each pod takes a share: {counts:?}");

    assert!(
        no_server.is_empty(),
        "answers without a Server header (default_backend.feature wants one): {no_server:#?}"
    );
}

/// Each URL is served by its Service (seeing the path as requested) or answered 404.
fn check_cases(lab: &Lab, ip: &str, cases: &[(&str, Option<&str>)]) {
    for (url, want) in cases {
        let r = at(lab, ip, url, &[]);
        match want {
            Some(svc) => {
                assert_eq!(&served_by(&r), svc, "{url}: {r:#?}");
                let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_else(|| "/".into());
                assert_eq!(r.json()["path"], path, "{url}: the path as requested: {r:#?}");
            }
            None => assert_eq!(r.code, 404, "{url} matches no rule: {r:#?}"),
        }
    }
}
