//! Cluster DNS end to end: the lab's kube-dns (weft's DNS in the two pods of deploy/dns.yaml,
//! behind the 10.96.0.10 Service) asked from pods by real resolvers: glibc (`getent hosts`, with the pod's
//! search list and ndots:5), `dig` and `nslookup` from Debian's dnsutils.

use std::time::{Duration, Instant};

use weft_testkit::Lab;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  containers: [{name: c, image: busybox, command: ["sleep", "600"]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: db, image: nginx, ports: [{containerPort: 5432}]}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  clusterIP: None
  selector: {app: nothing-has-this}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec:
  type: ExternalName
  externalName: www.example.com
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec:
  ports: [{port: 443}]
"#;

fn svc_ip(lab: &Lab, ns: &str, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&lab.weft_ok(&["get", "svc", name, "-n", ns, "-o", "json"])).unwrap();
    v["spec"]["clusterIP"].as_str().unwrap().to_string()
}

fn pod_ip(lab: &Lab, name: &str) -> String {
    let pods = lab.pods("default");
    let p = pods.iter().find(|p| p["metadata"]["name"] == name).expect("pod");
    p["status"]["podIP"].as_str().unwrap().to_string()
}

/// `dig` from the client pod with the given arguments (`+short` unless `full`).
fn dig(lab: &Lab, args: &[&str]) -> String {
    let mut a = vec!["dig", "+time=2", "+tries=2"];
    a.extend_from_slice(args);
    lab.exec_ok(&["client"], &a)
}

fn status(lab: &Lab, args: &[&str]) -> String {
    let out = dig(lab, args);
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no status in {out}"))
}

fn wait_dns_ready(lab: &Lab) {
    lab.wait_running_labeled("kube-system", ("k8s-app", "kube-dns"), 2);
    lab.wait_for("kube-dns endpoints", 30, || {
        let out = lab.weft_ok(&["get", "endpoints", "kube-dns", "-n", "kube-system", "-o", "json"]);
        out.contains("\"addresses\"")
    });
}

/// Waits until pods resolve through the kube-dns Service (the proxy has its endpoints).
fn wait_resolving(lab: &Lab) {
    lab.wait_for("kube-dns answering through its Service", 30, || {
        let o =
            lab.exec(&["client"], &["dig", "+short", "+time=1", "+tries=1", "kubernetes.default.svc.cluster.local"]);
        String::from_utf8_lossy(&o.stdout).trim() == "10.96.0.1"
    });
}

#[test]
fn cluster_dns_answers_the_spec_from_pods() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(MANIFESTS);
    wait_dns_ready(&lab);
    lab.wait_running("default", 4);
    wait_resolving(&lab);
    let web = svc_ip(&lab, "default", "web");
    let api = svc_ip(&lab, "other", "api");
    let db0 = pod_ip(&lab, "db-0");
    let client = pod_ip(&lab, "client");

    // The pod's resolv.conf points at the kube-dns Service.
    let resolv = lab.exec_ok(&["client"], &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );

    // glibc with the search list: short names in the namespace, <svc>.<ns> across namespaces.
    assert!(lab.exec_ok(&["client"], &["getent", "hosts", "web"]).starts_with(&format!("{web} ")));
    assert!(lab.exec_ok(&["client"], &["getent", "hosts", "api.other"]).starts_with(&format!("{api} ")));
    assert!(lab.exec_ok(&["client"], &["getent", "hosts", "web.default.svc.cluster.local"]).contains(&web));
    assert!(!lab.exec(&["client"], &["getent", "hosts", "nosuch"]).status.success());
    // Seed 000: nslookup kubernetes.
    let ns = lab.exec_ok(&["client"], &["nslookup", "kubernetes"]);
    assert!(ns.contains("kubernetes.default.svc.cluster.local") && ns.contains("10.96.0.1"), "{ns}");

    // ClusterIP Service: A, case-insensitive, SRV per named port, PTR; AAAA is NODATA.
    assert_eq!(dig(&lab, &["+short", "web.default.svc.cluster.local"]).trim(), web);
    assert_eq!(dig(&lab, &["+short", "WEB.Default.SVC.cluster.local"]).trim(), web);
    assert_eq!(dig(&lab, &["+short", "api.other.svc.cluster.local"]).trim(), api);
    assert_eq!(
        dig(&lab, &["+short", "SRV", "_http._tcp.web.default.svc.cluster.local"]).trim(),
        "0 100 80 web.default.svc.cluster.local."
    );
    assert_eq!(dig(&lab, &["+short", "-x", &web]).trim(), "web.default.svc.cluster.local.");
    assert_eq!(status(&lab, &["AAAA", "web.default.svc.cluster.local"]), "NOERROR");
    assert_eq!(dig(&lab, &["+short", "AAAA", "web.default.svc.cluster.local"]).trim(), "");

    // Headless Service: the ready pods, hostname records, SRV per endpoint, PTR to the hostname.
    assert_eq!(dig(&lab, &["+short", "db.default.svc.cluster.local"]).trim(), db0);
    assert_eq!(dig(&lab, &["+short", "db-0.db.default.svc.cluster.local"]).trim(), db0);
    assert!(lab.exec_ok(&["client"], &["getent", "hosts", "db-0.db"]).starts_with(&format!("{db0} ")));
    let srv = dig(&lab, &["SRV", "_pg._tcp.db.default.svc.cluster.local"]);
    assert!(srv.contains("SRV\t0 100 5432 db-0.db.default.svc.cluster.local."), "{srv}");
    assert!(srv.contains(&format!("db-0.db.default.svc.cluster.local. 5 IN\tA\t{db0}")), "additional A: {srv}");
    assert_eq!(dig(&lab, &["+short", "-x", &db0]).trim(), "db-0.db.default.svc.cluster.local.");
    // No ready endpoint: NXDOMAIN.
    assert_eq!(status(&lab, &["nobody.default.svc.cluster.local"]), "NXDOMAIN");

    // ExternalName: a CNAME.
    assert_eq!(dig(&lab, &["+short", "CNAME", "ext.default.svc.cluster.local"]).trim(), "www.example.com.");

    // Pod records, only for pods that exist in that namespace.
    let dashed = client.replace('.', "-");
    assert_eq!(dig(&lab, &["+short", &format!("{dashed}.default.pod.cluster.local")]).trim(), client);
    assert_eq!(status(&lab, &[&format!("{dashed}.other.pod.cluster.local")]), "NXDOMAIN");
    assert_eq!(status(&lab, &["10-244-250-250.default.pod.cluster.local"]), "NXDOMAIN");

    // The zone apex, the schema version, NXDOMAIN versus NODATA.
    assert_eq!(dig(&lab, &["+short", "TXT", "dns-version.cluster.local"]).trim(), "\"1.1.0\"");
    assert!(
        dig(&lab, &["+short", "SOA", "cluster.local"]).starts_with("ns.dns.cluster.local. hostmaster.cluster.local.")
    );
    assert_eq!(dig(&lab, &["+short", "NS", "cluster.local"]).trim(), "ns.dns.cluster.local.");
    assert_eq!(dig(&lab, &["+short", "ns.dns.cluster.local"]).trim(), "10.96.0.10");
    assert_eq!(status(&lab, &["nosuch.default.svc.cluster.local"]), "NXDOMAIN");
    assert_eq!(status(&lab, &["default.svc.cluster.local"]), "NOERROR");
    assert_eq!(status(&lab, &["nosuchns.svc.cluster.local"]), "NXDOMAIN");
    let nx = dig(&lab, &["nosuch.default.svc.cluster.local"]);
    assert!(nx.contains("AUTHORITY: 1") && nx.contains("SOA"), "negative answers carry the SOA: {nx}");

    // TCP answers the same.
    assert_eq!(dig(&lab, &["+short", "+tcp", "web.default.svc.cluster.local"]).trim(), web);

    // Metrics are served (the Service's metrics port).
    let m = lab.exec_ok(&["client"], &["curl", "-s", "-m", "3", "http://10.96.0.10:9153/metrics"]);
    assert!(m.contains("weft_dns_requests_total{proto=\"udp\",type=\"A\"}"), "{m}");
    assert!(m.contains("weft_dns_responses_total{rcode=\"NXDOMAIN\"}"));
}

/// A Service resolves within a second of being created, and stops within a second of deletion.
#[test]
fn new_and_deleted_services_resolve_within_a_second() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(MANIFESTS);
    wait_dns_ready(&lab);
    lab.wait_running("default", 4);
    // The client polls from inside the pod and prints the time it first sees the change.
    let poll = |want_answer: bool| {
        let test = if want_answer { "-n" } else { "-z" };
        let script = format!(
            "i=0; while [ $i -lt 300 ]; do r=$(dig +short +time=1 +tries=1 fresh.default.svc.cluster.local); \
             if [ {test} \"$r\" ]; then date +%s.%N; exit 0; fi; i=$((i+1)); sleep 0.01; done; exit 1"
        );
        lab.weft_cmd().args(["exec", "client", "--", "sh", "-c", &script]).output().unwrap()
    };
    let fresh =
        "apiVersion: v1\nkind: Service\nmetadata: {name: fresh, namespace: default}\nspec:\n  ports: [{port: 80}]\n";
    std::thread::scope(|s| {
        let seen = s.spawn(|| poll(true));
        std::thread::sleep(Duration::from_millis(500));
        let before = now();
        lab.apply_str(fresh);
        let out = seen.join().unwrap();
        assert!(out.status.success(), "never resolved: {}", String::from_utf8_lossy(&out.stderr));
        let at: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(at - before < 1.0, "resolved {:.3} s after the create began", at - before);
    });
    std::thread::scope(|s| {
        let gone = s.spawn(|| poll(false));
        std::thread::sleep(Duration::from_millis(500));
        let before = now();
        lab.weft_ok(&["delete", "svc", "fresh"]);
        let out = gone.join().unwrap();
        assert!(out.status.success(), "never went away: {}", String::from_utf8_lossy(&out.stderr));
        let at: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(at - before < 1.0, "still resolved {:.3} s after the delete began", at - before);
    });
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A test upstream on node-2, reached at its pod-network gateway (pods reach nodes there, over
/// the same path both ways; the lab has no way out): answers A queries with
/// 192.0.2.10 and prints each query with its sender and form (with an OPT record or without);
/// it stops after 30 s without a query.
const UPSTREAM: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5353)); s.settimeout(30)
print("ready", os.getpid(), flush=True)
while True:
    try:
        q, a = s.recvfrom(4096)
    except socket.timeout:
        break
    i = 12
    while i < len(q) and q[i]:
        i += q[i] + 1
    qtype = q[i+1:i+3]
    form = "edns" if q[10:12] != b"\x00\x00" else "plain"
    print("query", q[12:i].hex(), qtype.hex(), a[0], form, flush=True)
    ans = qtype == b"\x00\x01"
    r = q[:2] + b"\x81\x80\x00\x01" + (b"\x00\x01" if ans else b"\x00\x00") + b"\x00\x00\x00\x00" + q[12:i+5]
    if ans:
        r += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 10])
    s.sendto(r, a)
"#;

#[test]
fn names_outside_the_cluster_go_to_the_configured_upstream_and_are_cached() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.apply_str(MANIFESTS);
    wait_dns_ready(&lab);
    lab.wait_running("default", 4);
    wait_resolving(&lab);
    // Bound to that one address, so its replies come from the address that was asked.
    let node: serde_json::Value = serde_json::from_str(&lab.weft_ok(&["get", "node", "node-2", "-o", "json"])).unwrap();
    let cidr: ipnet::Ipv4Net = node["spec"]["podCIDR"].as_str().unwrap().parse().unwrap();
    let gateway = cidr.hosts().next().unwrap().to_string();
    let mut up = lab
        .weft_cmd()
        .args(["exec", "--node", "node-2", "--", "python3", "-c", UPSTREAM, &gateway])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    /// Stops the upstream by its pid, then the `weft exec` that started it.
    struct Kill(std::process::Child, String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").arg(&self.1).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdout = std::io::BufReader::new(up.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let pid = line.trim().strip_prefix("ready ").expect("the upstream started").to_string();
    let up = Kill(up, pid);
    // Without upstreams the lab refuses names outside the cluster (it has no way out).
    assert_eq!(status(&lab, &["www.example.org"]), "REFUSED");
    let patch = format!(r#"{{"data":{{"dnsUpstreams":"{gateway}:5353"}}}}"#);
    lab.kubectl_ok(&["patch", "configmap", "weft-config", "-n", "kube-system", "--type", "merge", "-p", &patch]);
    let start = Instant::now();
    let mut answer = String::new();
    while start.elapsed() < Duration::from_secs(10) {
        answer = dig(&lab, &["+short", "www.example.org"]);
        if answer.trim() == "192.0.2.10" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(answer.trim(), "192.0.2.10");
    // glibc walks the search list (cluster NXDOMAINs) and then asks the absolute name upstream.
    assert!(lab.exec_ok(&["client"], &["getent", "ahostsv4", "www.example.org"]).starts_with("192.0.2.10"));
    // Cached: repeated queries do not reach the upstream again.
    for _ in 0..5 {
        assert_eq!(dig(&lab, &["+short", "www.example.org"]).trim(), "192.0.2.10");
    }
    drop(up);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let asked: Vec<(&str, &str)> = rest
        .lines()
        .filter_map(|l| l.strip_prefix("query 03777777076578616d706c65036f7267 0001 "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    // Once for dig (EDNS) and once for glibc (no EDNS) by each DNS pod the Service chose: each
    // pod's cache keeps the two forms apart, so an OPT record never reaches a client that did
    // not send one; the five repeats add nothing.
    let pairs: std::collections::HashSet<_> = asked.iter().collect();
    assert_eq!(pairs.len(), asked.len(), "a DNS pod asked upstream twice for one form:\n{rest}");
    assert!(asked.iter().any(|(_, f)| *f == "edns") && asked.iter().any(|(_, f)| *f == "plain"), "{rest}");
    let senders: std::collections::HashSet<_> = asked.iter().map(|(a, _)| a).collect();
    assert!(senders.len() <= 2, "more senders than DNS pods:\n{rest}");
    assert!(!rest.contains("636c7573746572056c6f63616c"), "cluster names are never forwarded:\n{rest}");
}
