//! Service networking end to end in a lab: ClusterIP from pods and nodes, NodePort from the
//! external host, distribution over endpoints, scaling, refusal without endpoints, the
//! selector-less Service of seed 000, a pod reaching itself, and `kubectl expose`.

use serde_json::Value;
use weft_testkit::Lab;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080, name: http}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: my-nodeport}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{protocol: TCP, port: 80, targetPort: 8080, nodePort: 32212}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing-here}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: lonely, labels: {app: lonely}}
spec:
  nodeName: node-2
  containers: [{name: echo, image: weft/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec:
  selector: {app: lonely}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: udp-echo, labels: {app: udp-echo}}
spec:
  nodeName: node-3
  containers: [{name: echo, image: weft/echo, ports: [{containerPort: 5353, protocol: UDP}]}]
---
apiVersion: v1
kind: Service
metadata: {name: udp}
spec:
  selector: {app: udp-echo}
  ports: [{port: 53, targetPort: 5353, protocol: UDP}]
"#;

fn svc_ip(lab: &Lab, name: &str) -> String {
    let v: Value = serde_json::from_str(&lab.weft_ok(&["get", "svc", name, "-o", "json"])).unwrap();
    v["spec"]["clusterIP"].as_str().unwrap().to_string()
}

/// Which pods answer `n` fresh connections to `url` from `from` (counted by pod name).
fn spread(lab: &Lab, from: &[&str], url: &str, n: usize) -> std::collections::BTreeMap<String, u64> {
    try_spread(lab, from, url, n).unwrap_or_else(|e| panic!("{e}"))
}

/// [`spread`], or the error if a connection failed: while a Deployment scales down, a pod
/// being stopped can still be an endpoint for a moment (with a real control plane, until the
/// controller manager's EndpointSlice update arrives, as in any cluster without a preStop
/// hook), so a wait for the new set of pods polls this.
fn try_spread(
    lab: &Lab,
    from: &[&str],
    url: &str,
    n: usize,
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let prog = format!(
        "import urllib.request,json,collections\nc=collections.Counter(json.load(urllib.request.urlopen('{url}',timeout=3))['pod'] for _ in range({n}))\nprint(json.dumps(c))"
    );
    let o = lab.exec(from, &["python3", "-c", &prog]);
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    serde_json::from_slice(&o.stdout).map_err(|e| e.to_string())
}

#[test]
fn services_in_the_lab() {
    let lab = Lab::up(&["--nodes", "3"]);
    lab.apply_str(APP);
    let pods = lab.wait_running("default", 6);
    let ip_of = |name: &str| {
        pods.iter().find(|p| p["metadata"]["name"] == name).unwrap()["status"]["podIP"].as_str().unwrap().to_string()
    };
    let web = svc_ip(&lab, "web");
    lab.wait_for("3 endpoints", 20, || lab.weft_ok(&["get", "ep", "web"]).matches(":8080").count() == 3);
    let slices = lab.weft_ok(&["get", "endpointslices"]);
    assert!(slices.lines().any(|l| l.starts_with("web-") && l.contains("8080")), "{slices}");

    // 1000 requests to a 3-pod Service reach all three, each 20%-47%.
    let counts = spread(&lab, &["client"], &format!("http://{web}/"), 1000);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (pod, c) in &counts {
        assert!((200..=470).contains(c), "{pod} got {c} of 1000: {counts:?}");
    }
    // Pod to ClusterIP keeps the client's address (no masquerade inside the pod network).
    assert_eq!(lab.http_json(&["client"], &format!("http://{web}/"))["clientIP"], ip_of("client"));
    // From a node.
    assert!(
        lab.http_json(&["--node", "node-3"], &format!("http://{web}/"))["pod"].as_str().unwrap().starts_with("web-")
    );
    // NodePort (seed 000's 32212) from the external host on every node's address.
    for node_ip in ["172.18.0.10", "172.18.0.11", "172.18.0.12"] {
        let r = lab.http_json(&["--external"], &format!("http://{node_ip}:32212/"));
        assert!(r["pod"].as_str().unwrap().starts_with("web-"), "{r}");
    }
    // No endpoints: refused at once (connection refused, not a time-out).
    let empty = svc_ip(&lab, "empty");
    let start = std::time::Instant::now();
    let o = lab.exec(&["client"], &["curl", "-s", "-m", "5", &format!("http://{empty}/")]);
    assert_eq!(o.status.code(), Some(7), "curl: connection refused");
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    // A pod reaches itself through its own Service (hairpin).
    let lonely = svc_ip(&lab, "lonely");
    assert_eq!(lab.http_json(&["lonely"], &format!("http://{lonely}/"))["pod"], "lonely");

    // UDP through a Service.
    let udp = svc_ip(&lab, "udp");
    let prog = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\ns.sendto(b'hello',('{udp}',53))\nprint(s.recv(512).decode())"
    );
    let reply = lab.exec_ok(&["client"], &["python3", "-c", &prog]);
    assert!(reply.contains("udp-echo") && reply.contains("hello"), "{reply}");

    // Scaling changes who answers.
    lab.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    lab.wait_for("one endpoint", 30, || lab.weft_ok(&["get", "ep", "web"]).matches(":8080").count() == 1);
    lab.wait_for("one pod answering", 30, || {
        try_spread(&lab, &["client"], &format!("http://{web}/"), 20).is_ok_and(|c| c.len() == 1)
    });
    lab.kubectl_ok(&["scale", "deployment/web", "--replicas=2"]);
    lab.wait_for("two pods answering", 30, || {
        try_spread(&lab, &["client"], &format!("http://{web}/"), 40).is_ok_and(|c| c.len() == 2)
    });

    // Seed 000: a Service without a selector and a hand-written Endpoints.
    let target = ip_of("lonely");
    lab.apply_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: manual}}\nspec:\n  ports: [{{protocol: TCP, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: manual}}\nsubsets:\n- addresses: [{{ip: {target}}}]\n  ports: [{{port: 8080}}]\n"
    ));
    let manual = svc_ip(&lab, "manual");
    lab.wait_for("the manual endpoint", 20, || {
        lab.exec(&["client"], &["curl", "-s", "-m", "2", &format!("http://{manual}/")]).status.success()
    });
    assert_eq!(lab.http_json(&["client"], &format!("http://{manual}/"))["pod"], "lonely");

    // kubectl expose, as the seeds use it.
    lab.kubectl_ok(&[
        "expose",
        "deployment",
        "web",
        "--name",
        "web-exposed",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--type",
        "NodePort",
    ]);
    let v: Value = serde_json::from_str(&lab.weft_ok(&["get", "svc", "web-exposed", "-o", "json"])).unwrap();
    let np = v["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    lab.wait_for("the exposed NodePort", 20, || {
        lab.exec(&["--external"], &["curl", "-s", "-m", "2", &format!("http://172.18.0.11:{np}/")]).status.success()
    });
    let d = lab.weft_ok(&["describe", "svc", "web"]);
    assert!(d.contains("Endpoints:") && d.contains(":8080"), "{d}");
}

#[test]
fn load_balancer_and_traffic_policies() {
    let lab = Lab::up(&["--nodes", "3"]);
    lab.apply_str(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx}
spec:
  replicas: 3
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec: {containers: [{name: echo, image: weft/echo, ports: [{containerPort: 80}]}]}
---
# Seed 003's LoadBalancer Service.
apiVersion: v1
kind: Service
metadata: {name: nginx-loadbalancer}
spec:
  type: LoadBalancer
  ports: [{port: 80, targetPort: 80}]
  selector: {app: nginx}
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 80, nodePort: 30100}]
  selector: {app: nginx}
---
apiVersion: v1
kind: Service
metadata: {name: local-lb}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ports: [{port: 8080, targetPort: 80}]
  selector: {app: nginx}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 80}]
  selector: {app: nginx}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: ["sleep", "3600"]}]
"#,
    );
    let pods = lab.wait_running("default", 4);
    let node_of = |pod: &str| -> String {
        pods.iter()
            .find(|p| p["metadata"]["name"] == pod)
            .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // The LoadBalancer gets an address from the lab's pool and answers from outside.
    let mut lb_ip = String::new();
    lab.wait_for("a LoadBalancer address", 20, || {
        let v: Value = serde_json::from_str(&lab.weft_ok(&["get", "svc", "nginx-loadbalancer", "-o", "json"])).unwrap();
        lb_ip = v["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().unwrap_or("").to_string();
        !lb_ip.is_empty()
    });
    assert!(lb_ip.starts_with("172.18.255."), "{lb_ip}");
    lab.wait_for("the LoadBalancer to answer", 20, || {
        lab.exec(&["--external"], &["curl", "-s", "-m", "2", &format!("http://{lb_ip}/")]).status.success()
    });
    let shown = lab.kubectl_ok(&["get", "svc", "nginx-loadbalancer"]);
    assert!(shown.contains(&lb_ip), "{shown}");
    // The allocator says so, as MetalLB's controller does.
    let want = format!("Assigned IP [\"{lb_ip}\"]");
    lab.wait_for("the IPAllocated event", 20, || {
        lab.kubectl_ok(&["describe", "svc", "nginx-loadbalancer"]).contains(&want)
    });
    // An address outside the pools is refused in words, on the Service.
    lab.apply_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: outside}\nspec: {type: LoadBalancer, loadBalancerIP: 192.0.2.1, ports: [{port: 80}]}\n",
    );
    let want = "Failed to allocate IP for \"default/outside\": \"192.0.2.1\" is not allowed in config";
    lab.wait_for("the AllocationFailed event", 20, || lab.kubectl_ok(&["describe", "svc", "outside"]).contains(want));

    // externalTrafficPolicy: Local keeps the client's address and never leaves the node.
    lab.wait_for("the Local node port", 20, || {
        lab.exec(&["--external"], &["curl", "-s", "-m", "2", "http://172.18.0.11:30100/"]).status.success()
    });
    for _ in 0..10 {
        let r = lab.http_json(&["--external"], "http://172.18.0.11:30100/");
        assert_eq!(r["clientIP"], "172.18.0.2", "client source preserved: {r}");
        assert_eq!(node_of(r["pod"].as_str().unwrap()), "node-2", "answered on the node it entered: {r}");
    }

    // The health check node port of a Local LoadBalancer, as kube-proxy answers it.
    let v: Value = serde_json::from_str(&lab.weft_ok(&["get", "svc", "local-lb", "-o", "json"])).unwrap();
    let hc = v["spec"]["healthCheckNodePort"].as_i64().expect("a health check node port");
    let mut body = String::new();
    lab.wait_for("the health check answer", 20, || {
        let o = lab.exec(&["--external"], &["curl", "-s", "-m", "2", &format!("http://172.18.0.11:{hc}/")]);
        body = String::from_utf8_lossy(&o.stdout).to_string();
        o.status.success() && body.contains("localEndpoints")
    });
    let h: Value = serde_json::from_str(&body).unwrap();
    let nginx_on_node_2 =
        pods.iter().filter(|p| p["metadata"]["labels"]["app"] == "nginx" && p["spec"]["nodeName"] == "node-2").count();
    assert!(nginx_on_node_2 > 0);
    assert_eq!(h["localEndpoints"], nginx_on_node_2, "{h}");
    assert_eq!(h["service"]["name"], "local-lb");

    // ClientIP affinity sticks.
    let sticky = svc_ip(&lab, "sticky");
    let counts = spread(&lab, &["client"], &format!("http://{sticky}/"), 30);
    assert_eq!(counts.len(), 1, "{counts:?}");

    // The node announcing the address goes away: another takes over.
    let announcer = (1..=3)
        .map(|i| format!("node-{i}"))
        .find(|n| {
            String::from_utf8_lossy(&lab.exec(&["--node", n], &["ip", "-o", "addr", "show", "dev", "lo"]).stdout)
                .contains(&lb_ip)
        })
        .expect("one node holds the address");
    lab.weft_ok(&["delete", "node", &announcer]);
    lab.wait_for("another node to announce", 20, || {
        (1..=3).map(|i| format!("node-{i}")).filter(|n| *n != announcer).any(|n| {
            String::from_utf8_lossy(&lab.exec(&["--node", &n], &["ip", "-o", "addr", "show", "dev", "lo"]).stdout)
                .contains(&lb_ip)
        })
    });
    lab.wait_for("the LoadBalancer to answer again", 20, || {
        lab.exec(&["--external"], &["curl", "-s", "-m", "2", &format!("http://{lb_ip}/")]).status.success()
    });
}
