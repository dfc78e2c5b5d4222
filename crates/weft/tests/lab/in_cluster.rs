//! Pods as in-cluster clients of the lab's API, with the real kubectl: the cluster DNS runs from
//! deploy/dns.yaml as its ServiceAccount weft-dns (the mounted token's subject, nothing of the
//! host's network namespace, no admin kubeconfig, only the capability the manifest adds), RBAC
//! decides what its watches may see (a ClusterRole without endpointslices leaves it refused with
//! a 403 its log shows; the rule back heals it), and `weft get` in an ordinary pod is what its
//! ServiceAccount's Role allows (Services listed, Pods refused with kube-apiserver's 403).

use std::process::Output;

use base64::Engine;
use serde_json::Value;
use weft_testkit::Lab;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn dns_pods(lab: &Lab) -> Vec<Value> {
    let out = lab.kubectl_ok(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns", "-o", "json"]);
    serde_json::from_str::<Value>(&out).unwrap()["items"].as_array().cloned().unwrap_or_default()
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap().to_string()
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The claims of a JWT, unverified (the API server checked it; this reads whom it names).
fn claims(jwt: &str) -> Value {
    let payload = jwt.trim().split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn nul_separated(path: &str) -> Vec<String> {
    std::fs::read(path)
        .map(|b| b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into()).collect())
        .unwrap_or_default()
}

#[test]
fn the_dns_runs_as_its_service_account_with_nothing_of_the_hosts() {
    let lab = Lab::up(&["--nodes", "2"]);
    lab.wait_running_labeled("kube-system", ("k8s-app", "kube-dns"), 2);
    let deploy =
        lab.kubectl_ok(&["-n", "kube-system", "get", "deployment", "weft-dns", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(deploy, "2");
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let state = lab.state_dir().display().to_string();
    for p in dns_pods(&lab) {
        let pod = name(&p);
        assert_eq!(p["spec"]["serviceAccountName"], "weft-dns", "{p}");
        // The Priority admission's value for the built-in class.
        assert_eq!(p["spec"]["priorityClassName"], "system-cluster-critical");
        assert_eq!(p["spec"]["priority"], 2_000_000_000, "{p}");
        assert_eq!(p["spec"]["preemptionPolicy"], "PreemptLowerPriority");
        // The token mounted in the pod is the ServiceAccount's, bound to this pod.
        let token = lab.kubectl_ok(&["-n", "kube-system", "exec", &pod, "--", "cat", &format!("{SA_DIR}/token")]);
        let c = claims(&token);
        assert_eq!(c["sub"], "system:serviceaccount:kube-system:weft-dns", "{c}");
        assert_eq!(c["kubernetes.io"]["pod"]["name"], pod.as_str(), "{c}");
        // The lab's admin kubeconfig is out of its reach.
        let o = lab.kubectl(&["-n", "kube-system", "exec", &pod, "--", "cat", &format!("{state}/kubeconfig")]);
        assert!(!o.status.success(), "the DNS pod reads the admin kubeconfig: {}", text(&o));

        // From the host: every process in the pod's network namespace (its shim and the DNS).
        let uid = p["metadata"]["uid"].as_str().unwrap();
        let netns = weft_netlink::ns::path(&weft_lab::kubelet::netns_name(&lab.name, uid));
        let procs = weft_netlink::ns::pids_in(&netns);
        let mut dns = 0;
        for pid in &procs {
            let argv = nul_separated(&format!("/proc/{pid}/cmdline"));
            let env = nul_separated(&format!("/proc/{pid}/environ"));
            // The pod's shim carries the daemon's environment; its containers only their own.
            let shim = argv.get(1).is_some_and(|a| a == "shim");
            assert!(shim || !argv.iter().any(|a| a.contains("kubeconfig") || a.contains("netns")), "{pid}: {argv:?}");
            assert!(shim || !env.iter().any(|e| e.starts_with("WEFT_") || e.starts_with("KUBECONFIG=")), "{env:?}");
            // No descriptor on the host's network namespace.
            for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
                let target = std::fs::read_link(fd.path()).unwrap_or_default();
                assert_ne!(target, host_net, "process {pid} ({argv:?}) holds the host's network namespace");
            }
            if argv.last().is_some_and(|a| a == "--cluster-domain=cluster.local") {
                dns += 1;
                // The manifest's capabilities: NET_BIND_SERVICE alone (it binds port 53).
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
                assert_eq!(u64::from_str_radix(eff, 16).unwrap(), CAP_NET_BIND_SERVICE, "{argv:?}");
                assert!(env.iter().any(|e| e == "KUBERNETES_SERVICE_HOST=10.96.0.1"), "{env:?}");
            }
        }
        assert_eq!(dns, 1, "one DNS process in {pod}'s namespace among {procs:?}");
    }
}

const ENDPOINTSLICES_RULE: &str =
    r#"{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}"#;

#[test]
fn rbac_decides_what_the_dns_may_watch() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.wait_running_labeled("kube-system", ("k8s-app", "kube-dns"), 2);
    let can_i = || {
        let as_dns = "system:serviceaccount:kube-system:weft-dns";
        let o = lab.kubectl(&["auth", "can-i", "watch", "endpointslices.discovery.k8s.io", "--as", as_dns]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(can_i(), "yes");
    let role: Value = serde_json::from_str(&lab.kubectl_ok(&["get", "clusterrole", "weft-dns", "-o", "json"])).unwrap();
    let i = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["resources"].as_array().unwrap().iter().any(|x| x == "endpointslices"))
        .expect("the endpointslices rule");
    let remove = format!(r#"[{{"op": "remove", "path": "/rules/{i}"}}]"#);
    lab.kubectl_ok(&["patch", "clusterrole", "weft-dns", "--type", "json", "-p", &remove]);
    assert_eq!(can_i(), "no");

    // New DNS pods start their watches under the cut role: the EndpointSlice list is refused.
    let old: Vec<String> = dns_pods(&lab).iter().map(name).collect();
    lab.kubectl_ok(&["-n", "kube-system", "delete", "pods", "-l", "k8s-app=kube-dns", "--wait=false"]);
    let mut refused = String::new();
    lab.wait_for("a new DNS pod's log to show the 403", 60, || {
        dns_pods(&lab).iter().map(name).filter(|n| !old.contains(n)).any(|pod| {
            let o = lab.kubectl(&["-n", "kube-system", "logs", &pod]);
            let log = String::from_utf8_lossy(&o.stdout).to_string();
            let hit =
                log.lines().find(|l| l.contains("watch failed") && l.contains("endpointslices")).map(String::from);
            hit.inspect(|l| refused = format!("{pod}: {l}")).is_some()
        })
    });
    eprintln!("{refused}");
    assert!(refused.contains("403") || refused.contains("Forbidden"), "{refused}");
    assert!(refused.contains("system:serviceaccount:kube-system:weft-dns"), "{refused}");
    assert!(refused.contains("cannot list resource"), "{refused}");
    // Without its EndpointSlices the DNS has no complete view: that pod is not ready.
    let pod = refused.split(':').next().unwrap().to_string();
    let p: Value =
        serde_json::from_str(&lab.kubectl_ok(&["-n", "kube-system", "get", "pod", &pod, "-o", "json"])).unwrap();
    assert!(!ready(&p), "{pod} is ready without its EndpointSlices: {p}");

    // The rule back: the retried watches list, the pods become ready, names resolve.
    let add = format!(r#"[{{"op": "add", "path": "/rules/-", "value": {ENDPOINTSLICES_RULE}}}]"#);
    lab.kubectl_ok(&["patch", "clusterrole", "weft-dns", "--type", "json", "-p", &add]);
    assert_eq!(can_i(), "yes");
    lab.wait_for("both DNS pods ready again", 90, || {
        let pods = dns_pods(&lab);
        pods.len() == 2 && pods.iter().all(|p| ready(p) && !old.contains(&name(p)))
    });
    let log = text(&lab.kubectl(&["-n", "kube-system", "logs", &pod]));
    assert!(log.contains("watch works again"), "{log}");
    lab.kubectl_ok(&["run", "client", "--image=busybox", "--restart=Never", "--", "sleep", "600"]);
    lab.wait_running("default", 1);
    lab.wait_for("the DNS to answer", 60, || {
        let o =
            lab.exec(&["client"], &["dig", "+short", "+time=1", "+tries=1", "kube-dns.kube-system.svc.cluster.local"]);
        String::from_utf8_lossy(&o.stdout).trim() == "10.96.0.10"
    });
}

const LISTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: team}
spec:
  serviceAccountName: lister
  containers:
  - {name: c, image: busybox, command: [sleep, "100000"]}
"#;

#[test]
fn weft_get_in_a_pod_is_what_its_service_account_may_do() {
    let lab = Lab::up(&["--nodes", "1"]);
    lab.kubectl_ok(&["create", "namespace", "team"]);
    lab.kubectl_ok(&["-n", "team", "create", "serviceaccount", "lister"]);
    lab.kubectl_ok(&["-n", "team", "create", "role", "svc-lister", "--verb=list", "--resource=services"]);
    lab.kubectl_ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "lister",
        "--role=svc-lister",
        "--serviceaccount=team:lister",
    ]);
    lab.kubectl_ok(&["-n", "team", "create", "service", "clusterip", "web", "--tcp=80"]);
    lab.apply_str(LISTER);
    lab.wait_running("team", 1);
    let weft = weft_testkit::lab::weft_bin();
    let weft = weft.to_str().unwrap();
    // kube-rs's in-cluster configuration: the pod's token, to 10.96.0.1, in the pod's namespace.
    let o = lab.kubectl(&["-n", "team", "exec", "client", "--", weft, "get", "services"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("web ")), "{out}");
    // What the Role does not grant: kube-apiserver's 403.
    let o = lab.kubectl(&["-n", "team", "exec", "client", "--", weft, "get", "pods", "-n", "team"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(
            r#"Error from server (Forbidden): pods is forbidden: User "system:serviceaccount:team:lister" cannot list resource "pods" in API group "" in the namespace "team""#
        ),
        "{}",
        text(&o)
    );
    // Nor services elsewhere: the Role is the namespace's.
    let o = lab.kubectl(&["-n", "team", "exec", "client", "--", weft, "get", "services", "-n", "default"]);
    assert!(
        text(&o).contains(r#"cannot list resource "services" in API group "" in the namespace "default""#),
        "{}",
        text(&o)
    );
}
