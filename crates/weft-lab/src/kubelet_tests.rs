//! The kubelet's pure parts: what a pod spec becomes for its shim (command, args, environment,
//! security, restart policy, hostname, resolv.conf, host ports), the status reported from what the
//! shim says, probes (what is run, when it counts as failed, thresholds), the sandbox record on
//! disk, and hostile specs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use serde_json::{Value, json};

use super::*;
use crate::shim::{ContainerState, ShimStatus};
use crate::topology::Overlay;

fn ctx(state: &Path) -> LabCtx {
    LabCtx {
        name: "t".into(),
        state_dir: state.to_path_buf(),
        weft_exe: state.join("bin").join("weft"),
        cni_path: "/usr/lib/cni".into(),
        overlay: Overlay::Vxlan,
        dns_ip: "10.96.0.10".into(),
        cluster_domain: "cluster.local".into(),
        kubelet_ca: None,
    }
}

fn node() -> NodeNet {
    NodeNet {
        name: "node-2".into(),
        netns: "weft-t-node-2".into(),
        ip: Ipv4Addr::new(172, 18, 0, 11),
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
    }
}

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "0123456789abcdef-uid"},
        "spec": spec,
    }))
    .unwrap()
}

fn container(v: Value) -> Container {
    serde_json::from_value(v).unwrap()
}

fn spec_of(pod: &Pod) -> ShimSpec {
    let dir = tempfile::tempdir().unwrap();
    shim_spec(&ctx(dir.path()), &node(), pod, "0123456789abcdef-uid", "weft-t-pod-0123456789abc", "10.244.1.7")
}

fn env_map(env: &[(String, String)]) -> std::collections::HashMap<&str, &str> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

// ---------------------------------------------------------------------------------------------
// Command, args, environment

#[test]
fn command_and_args_are_run_as_written() {
    let p = pod(json!({"containers": [
        {"name": "a", "image": "busybox", "command": ["sh", "-c"], "args": ["echo $(HOME) 'two words'"]},
        {"name": "b", "image": "busybox", "command": ["sleep", "600"]},
    ]}));
    let s = spec_of(&p);
    assert_eq!(s.containers[0].argv, ["sh", "-c", "echo $(HOME) 'two words'"]);
    assert_eq!(s.containers[1].argv, ["sleep", "600"]);
    assert_eq!(s.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn an_image_without_a_command_runs_the_built_in_server_on_its_ports() {
    let p = pod(json!({"containers": [{"name": "echo", "image": "weft/echo", "ports": [
        {"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}, {"containerPort": 9090, "protocol": "TCP"}]}]}));
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let argv = argv_for(&c, &p, &p.spec.as_ref().unwrap().containers[0]);
    let exe = c.weft_exe.display().to_string();
    assert_eq!(
        argv,
        [
            exe.as_str(),
            "builtin",
            "--pod",
            "web-0",
            "--namespace",
            "shop",
            "--mode",
            "echo",
            "--tcp",
            "8080,9090",
            "--udp",
            "5353"
        ]
    );
}

/// The DNS pod of deploy/dns.yaml, as its ReplicaSet makes it.
fn dns_pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "weft-dns-abc-x", "namespace": "kube-system", "uid": "u-dns", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"serviceAccountName": "weft-dns", "containers": [{"name": "dns", "image": "weft:latest",
            "command": ["weft-dns", "--cluster-domain=cluster.local"],
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}}]},
    }))
    .unwrap()
}

#[test]
fn the_dns_pod_runs_the_hosts_weft_dns_as_an_ordinary_pod() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let p = dns_pod();
    let cont = &p.spec.as_ref().unwrap().containers[0];
    // Without a `weft-dns` next to `weft`: `weft dns`, with the manifest's arguments only (no
    // kubeconfig: it is an in-cluster client with its ServiceAccount's token).
    let argv = argv_for(&c, &p, cont);
    assert_eq!(argv, [c.weft_exe.display().to_string(), "dns".into(), "--cluster-domain=cluster.local".into()]);
    // With one: that binary.
    std::fs::create_dir_all(c.weft_exe.parent().unwrap()).unwrap();
    std::fs::write(c.weft_exe.with_file_name("weft-dns"), "").unwrap();
    let argv = argv_for(&c, &p, cont);
    assert_eq!(
        argv,
        [c.weft_exe.with_file_name("weft-dns").display().to_string(), "--cluster-domain=cluster.local".into()]
    );
    // The lab's files hidden, and only the capability the manifest adds (port 53), as any pod.
    let s = shim_spec(&c, &node(), &p, "u-dns", "weft-t-pod-u-dns", "10.244.1.2");
    assert_eq!(s.hide, [dir.path().to_path_buf()]);
    assert_eq!(s.containers[0].security, Security { caps: Some(1 << 10), no_new_privs: true });
    let env = &s.containers[0].env;
    assert!(env.iter().any(|(k, v)| k == "KUBERNETES_SERVICE_HOST" && v == "10.96.0.1"), "{env:?}");
    assert!(!env.iter().any(|(k, _)| k.starts_with("WEFT_")), "{env:?}");
}

#[test]
fn environment_has_the_api_address_values_and_field_references_in_order() {
    let p = pod(
        json!({"serviceAccountName": "robot", "containers": [{"name": "c", "image": "busybox", "command": ["env"], "env": [
            {"name": "PLAIN", "value": "x=y $(PLAIN)"},
            {"name": "EMPTY"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "ODD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['x']"}}},
        ]}]}),
    );
    let env = &spec_of(&p).containers[0].env;
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "KUBERNETES_SERVICE_PORT_HTTPS",
            "KUBERNETES_PORT",
            "KUBERNETES_PORT_443_TCP",
            "KUBERNETES_PORT_443_TCP_PROTO",
            "KUBERNETES_PORT_443_TCP_PORT",
            "KUBERNETES_PORT_443_TCP_ADDR",
            "PLAIN",
            "EMPTY",
            "POD",
            "NS",
            "UID",
            "IP",
            "HOST",
            "NODE",
            "SA",
            "ODD"
        ]
    );
    let m = env_map(env);
    assert_eq!((m["KUBERNETES_SERVICE_HOST"], m["KUBERNETES_SERVICE_PORT"]), ("10.96.0.1", "443"));
    assert_eq!((m["KUBERNETES_PORT"], m["KUBERNETES_PORT_443_TCP_ADDR"]), ("tcp://10.96.0.1:443", "10.96.0.1"));
    assert_eq!(m["PLAIN"], "x=y $(PLAIN)");
    assert_eq!(m["EMPTY"], "");
    assert_eq!((m["POD"], m["NS"], m["UID"]), ("web-0", "shop", "0123456789abcdef-uid"));
    assert_eq!((m["IP"], m["HOST"], m["NODE"]), ("10.244.1.7", "172.18.0.11", "node-2"));
    assert_eq!(m["SA"], "robot");
    assert_eq!(m["ODD"], "", "a field weft does not know is empty, not an error");
    // No serviceAccountName: "default", as the API server defaults it.
    let p = pod(json!({"containers": [{"name": "c", "image": "busybox", "command": ["env"], "env": [
        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}]}]}));
    assert_eq!(env_map(&spec_of(&p).containers[0].env)["SA"], "default");
}

#[test]
fn working_dir_hostname_security_and_hidden_state_are_carried_over() {
    let p = pod(json!({"hostname": "db-0", "containers": [
        {"name": "a", "image": "busybox", "command": ["true"], "workingDir": "/srv"},
        {"name": "b", "image": "busybox", "command": ["true"],
         "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}, "allowPrivilegeEscalation": true}},
    ]}));
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let s = shim_spec(&c, &node(), &p, "uid-1", "weft-t-pod-uid-1", "10.244.1.7");
    assert_eq!((s.pod.as_str(), s.namespace.as_str(), s.uid.as_str()), ("web-0", "shop", "uid-1"));
    assert_eq!(s.hostname, "db-0");
    assert_eq!(s.netns, crate::netns::path("weft-t-pod-uid-1"));
    assert_eq!(s.dir, pod_dir(dir.path(), "uid-1"));
    assert_eq!(s.resolv_conf, Some(pod_dir(dir.path(), "uid-1").join("resolv.conf")));
    assert_eq!(s.containers[0].workdir.as_deref(), Some("/srv"));
    assert_eq!(s.containers[0].security, Security::default());
    assert_eq!(
        s.containers[1].security,
        Security::of(p.spec.as_ref().unwrap().containers[1].security_context.as_ref())
    );
    assert!(!s.containers[1].security.no_new_privs);
    assert_eq!(s.hide, [dir.path().to_path_buf()], "the lab's state is hidden from a user's pod");
    // Without spec.hostname: the pod's name, cut to a hostname's 63 characters.
    let long = "x".repeat(100);
    let mut p = pod(json!({"containers": []}));
    p.metadata.name = Some(long.clone());
    assert_eq!(spec_of(&p).hostname, long[..63]);
}

#[test]
fn restart_policy_defaults_to_always_and_is_passed_on() {
    assert_eq!(spec_of(&pod(json!({"containers": []}))).restart_policy, "Always");
    for policy in ["Always", "OnFailure", "Never"] {
        assert_eq!(spec_of(&pod(json!({"restartPolicy": policy, "containers": []}))).restart_policy, policy);
    }
}

#[test]
fn resolv_conf_follows_the_dns_policy_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    assert_eq!(
        resolv_conf(&c, &pod(json!({"containers": []}))),
        "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    let r = resolv_conf(
        &c,
        &pod(json!({"dnsPolicy": "None", "containers": [], "dnsConfig": {
            "nameservers": ["192.0.2.1"], "searches": ["example.org"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
    );
    assert_eq!(r, "search example.org\nnameserver 192.0.2.1\noptions ndots:2 edns0\n");
    assert_eq!(resolv_conf(&c, &pod(json!({"dnsPolicy": "Default", "containers": []}))), "options ndots:5\n");
}

#[test]
fn host_network_pods_take_their_nodes_hostname_and_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let p = pod(json!({"hostNetwork": true, "hostname": "ignored", "containers": []}));
    assert_eq!(shim_spec(&c, &node(), &p, "uid-1", &node().netns, &node().ip.to_string()).hostname, node().name);
    // ClusterFirst means Default for them; ClusterFirstWithHostNet asks for the cluster's DNS.
    assert_eq!(resolv_conf(&c, &p), "options ndots:5\n");
    let with = pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}));
    assert_eq!(
        resolv_conf(&c, &with),
        "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
}

#[test]
fn host_ports_become_port_mappings() {
    let p = pod(json!({"containers": [{"name": "c", "image": "nginx", "ports": [
        {"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
        {"containerPort": 443}, {"containerPort": 9, "hostPort": 0}]}]}));
    assert_eq!(
        port_mappings(&p),
        json!({"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]})
    );
}

// ---------------------------------------------------------------------------------------------
// Status: phases, restarts, readiness

fn sandbox() -> Sandbox {
    Sandbox {
        uid: "0123456789abcdef-uid".into(),
        namespace: "shop".into(),
        name: "web-0".into(),
        node: "node-2".into(),
        netns: "weft-t-pod-0123456789abc".into(),
        ips: vec!["10.244.1.7".into()],
        shim_pid: 4242,
        shim_start: 99,
        cni_result: json!({"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.7/24"}]}),
        host_network: false,
    }
}

fn state(name: &str, running: bool, restarts: u32, exit: Option<i32>, done: bool) -> ContainerState {
    ContainerState {
        name: name.into(),
        running,
        pid: running.then_some(7),
        started_at: Some("2025-01-01T00:00:00Z".into()),
        finished_at: exit.map(|_| "2025-01-01T00:00:01Z".into()),
        exit_code: exit,
        restart_count: restarts,
        reason: exit.map(|c| if c == 0 { "Completed".into() } else { "Error".into() }),
        done,
        ..Default::default()
    }
}

fn status(pod: &Pod, containers: Vec<ContainerState>, probe_ready: bool) -> Value {
    let st = ShimStatus { shim_pid: 4242, containers, ..Default::default() };
    status_of(pod, &sandbox(), &st, |_, _| probe_ready, Ipv4Addr::new(172, 18, 0, 11), "2025-01-02T00:00:00Z")
}

fn condition(s: &Value, t: &str) -> String {
    s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).unwrap()["status"].as_str().unwrap().into()
}

fn two() -> Pod {
    pod(json!({"containers": [
        {"name": "a", "image": "busybox", "command": ["sleep", "1"]},
        {"name": "b", "image": "busybox", "command": ["sleep", "1"]}]}))
}

#[test]
fn running_containers_make_a_ready_running_pod_with_its_addresses() {
    let s = status(&two(), vec![state("a", true, 0, None, false), state("b", true, 0, None, false)], false);
    assert_eq!(s["phase"], "Running");
    assert_eq!((condition(&s, "Ready"), condition(&s, "ContainersReady")), ("True".into(), "True".into()));
    assert_eq!(s["podIP"], "10.244.1.7");
    assert_eq!(s["podIPs"], json!([{"ip": "10.244.1.7"}]));
    assert_eq!((s["hostIP"].as_str(), s["hostIPs"][0]["ip"].as_str()), (Some("172.18.0.11"), Some("172.18.0.11")));
    assert_eq!(s["startTime"], "2025-01-02T00:00:00Z");
    let cs = &s["containerStatuses"];
    assert_eq!(cs[0]["state"], json!({"running": {"startedAt": "2025-01-01T00:00:00Z"}}));
    assert_eq!(cs[1]["containerID"], "weft://0123456789abcdef-uid/b");
    assert_eq!((cs[0]["ready"].as_bool(), cs[0]["started"].as_bool()), (Some(true), Some(true)));
}

#[test]
fn a_readiness_probe_that_has_not_passed_keeps_the_pod_unready() {
    let p = pod(json!({"containers": [
        {"name": "a", "image": "busybox", "command": ["sleep", "1"], "readinessProbe": {"tcpSocket": {"port": 80}}},
        {"name": "b", "image": "busybox", "command": ["sleep", "1"]}]}));
    let run = || vec![state("a", true, 0, None, false), state("b", true, 0, None, false)];
    let s = status(&p, run(), false);
    assert_eq!((s["phase"].as_str(), condition(&s, "Ready")), (Some("Running"), "False".into()));
    assert_eq!(s["containerStatuses"][0]["ready"], false);
    assert_eq!(s["containerStatuses"][1]["ready"], true, "b has no probe");
    let s = status(&p, run(), true);
    assert_eq!(condition(&s, "Ready"), "True");
    // A probe that passed counts for nothing while the container is not running.
    let s = status(&p, vec![state("a", false, 1, Some(1), false), state("b", true, 0, None, false)], true);
    assert_eq!(condition(&s, "Ready"), "False");
}

#[test]
fn a_container_between_restarts_is_in_crash_loop_back_off_with_its_last_exit() {
    let s = status(&two(), vec![state("a", false, 2, Some(3), false), state("b", true, 0, None, false)], true);
    assert_eq!(s["phase"], "Running");
    let a = &s["containerStatuses"][0];
    assert_eq!(a["restartCount"], 2);
    assert_eq!(a["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(a["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(a["lastState"]["terminated"]["reason"], "Error");
    assert!(s["containerStatuses"][1].get("lastState").is_none());
}

#[test]
fn the_phase_ends_when_the_restart_policy_lets_every_container_finish() {
    // The shim marks a container done when its restart policy says no more restarts.
    let s = status(&two(), vec![state("a", false, 0, Some(0), true), state("b", false, 0, Some(0), true)], true);
    assert_eq!(s["phase"], "Succeeded");
    assert_eq!(s["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0);
    assert_eq!(condition(&s, "Ready"), "False");
    let s = status(&two(), vec![state("a", false, 0, Some(0), true), state("b", false, 1, Some(2), true)], true);
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["containerStatuses"][1]["state"]["terminated"]["exitCode"], 2);
    // One still running: not over.
    let s = status(&two(), vec![state("a", false, 0, Some(0), true), state("b", true, 0, None, false)], true);
    assert_eq!(s["phase"], "Running");
}

#[test]
fn nothing_reported_yet_is_pending_and_creating() {
    let s = status(&two(), vec![], true);
    assert_eq!(s["phase"], "Pending");
    assert_eq!(s["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating");
    assert_eq!(condition(&s, "Ready"), "False");
    assert_eq!(condition(&s, "PodScheduled"), "True");
    // No containers at all: never Ready, never finished.
    let s = status(&pod(json!({"containers": []})), vec![], true);
    assert_eq!((s["phase"].as_str(), condition(&s, "Ready")), (Some("Pending"), "False".into()));
    // A pod keeps the start time it has.
    let mut p = two();
    p.status = Some(serde_json::from_value(json!({"startTime": "2024-05-05T05:05:05Z"})).unwrap());
    assert_eq!(status(&p, vec![], true)["startTime"], "2024-05-05T05:05:05Z");
}

// ---------------------------------------------------------------------------------------------
// Probes

fn probe(v: Value) -> Probe {
    serde_json::from_value(v).unwrap()
}

fn web() -> Container {
    container(json!({"name": "web", "image": "weft/echo", "ports": [{"name": "http", "containerPort": 8080}]}))
}

#[test]
fn what_each_probe_runs() {
    let c = web();
    let at = |s: &str| -> SocketAddr { s.parse().unwrap() };
    assert_eq!(
        probe_action(&probe(json!({"httpGet": {"port": "http", "path": "/healthz"}})), &c, "10.244.1.7"),
        ProbeAction::Http { addr: at("10.244.1.7:8080"), path: "/healthz".into() }
    );
    assert_eq!(
        probe_action(&probe(json!({"httpGet": {"port": 9000, "host": "10.0.0.9"}})), &c, "10.244.1.7"),
        ProbeAction::Http { addr: at("10.0.0.9:9000"), path: "/".into() }
    );
    assert_eq!(
        probe_action(&probe(json!({"tcpSocket": {"port": "http"}})), &c, "10.244.1.7"),
        ProbeAction::Tcp(at("10.244.1.7:8080"))
    );
    assert_eq!(
        probe_action(&probe(json!({"exec": {"command": ["cat", "/tmp/ok"]}})), &c, "10.244.1.7"),
        ProbeAction::Exec(vec!["cat".into(), "/tmp/ok".into()])
    );
    assert_eq!(
        probe_action(&probe(json!({"grpc": {"port": 9}})), &c, "10.244.1.7"),
        ProbeAction::Grpc { addr: at("10.244.1.7:9"), service: String::new() }
    );
    assert_eq!(
        probe_action(&probe(json!({"grpc": {"port": 9000, "service": "db"}})), &c, "10.244.1.7"),
        ProbeAction::Grpc { addr: at("10.244.1.7:9000"), service: "db".into() }
    );
    // No handler at all passes.
    assert_eq!(probe_action(&probe(json!({})), &c, "10.244.1.7"), ProbeAction::Pass);
}

#[test]
fn a_probe_that_cannot_be_run_counts_as_failed() {
    let c = web();
    let fails = |p: Value, ip: &str| matches!(probe_action(&probe(p), &c, ip), ProbeAction::Fail(_));
    assert!(fails(json!({"httpGet": {"port": "nosuch"}}), "10.244.1.7"));
    assert!(fails(json!({"httpGet": {"port": 70000}}), "10.244.1.7"));
    assert!(fails(json!({"httpGet": {"port": -1}}), "10.244.1.7"));
    assert!(fails(json!({"httpGet": {"port": 80, "host": "not an address"}}), "10.244.1.7"));
    assert!(fails(json!({"httpGet": {"port": 80}}), ""), "a pod without an IP");
    assert!(fails(json!({"tcpSocket": {"port": "nosuch"}}), "10.244.1.7"));
    assert!(fails(json!({"tcpSocket": {"port": 80}}), "garbage"));
    assert!(fails(json!({"exec": {"command": []}}), "10.244.1.7"));
    assert!(fails(json!({"exec": {}}), "10.244.1.7"));
    assert!(fails(json!({"grpc": {"port": 0}}), "10.244.1.7"));
    assert!(fails(json!({"grpc": {"port": 70000}}), "10.244.1.7"));
    assert!(fails(json!({"grpc": {"port": 9000}}), ""), "a pod without an IP");
    // A named port that names a port beyond u16 is no port.
    let odd = container(json!({"name": "o", "ports": [{"name": "big", "containerPort": 65536}]}));
    assert!(matches!(
        probe_action(&probe(json!({"tcpSocket": {"port": "big"}})), &odd, "10.244.1.7"),
        ProbeAction::Fail(_)
    ));
}

#[test]
fn http_success_is_2xx_and_3xx() {
    for (line, ok) in [
        ("HTTP/1.1 200", true),
        ("HTTP/1.0 204", true),
        ("HTTP/1.1 302", true),
        ("HTTP/1.1 399", true),
        ("HTTP/1.1 400", false),
        ("HTTP/1.1 500", false),
        ("HTTP/1.1 199", false),
        ("HTTP/1.1 2x0", false),
        ("garbage-here", false),
        ("HTTP/1.1 20", false),
        ("", false),
    ] {
        assert_eq!(http_status_ok(line.as_bytes()), ok, "{line:?}");
    }
    assert!(!http_status_ok(&[0xff; 12]));
}

fn counter() -> ProbeState {
    ProbeState::new(ProbeKind::Readiness, &probe(json!({})), (0, None), Instant::now())
}

#[test]
fn thresholds_count_results_in_a_row() {
    // Defaults: one success makes Ready, three failures in a row make it unready.
    let p = probe(json!({"tcpSocket": {"port": 80}}));
    let mut s = counter();
    s.record(false, &p);
    assert!(!s.ok, "not ready before any success");
    s.record(true, &p);
    assert!(s.ok);
    s.record(false, &p);
    s.record(false, &p);
    assert!(s.ok, "two failures are under the threshold of 3");
    s.record(true, &p);
    s.record(false, &p);
    s.record(false, &p);
    assert!(s.ok, "a success resets the failures");
    s.record(false, &p);
    assert!(!s.ok, "three in a row");
    // successThreshold 3, failureThreshold 1.
    let p = probe(json!({"tcpSocket": {"port": 80}, "successThreshold": 3, "failureThreshold": 1}));
    let mut s = counter();
    s.record(true, &p);
    s.record(true, &p);
    s.record(false, &p);
    s.record(true, &p);
    s.record(true, &p);
    assert!(!s.ok, "a failure resets the successes");
    s.record(true, &p);
    assert!(s.ok);
    s.record(false, &p);
    assert!(!s.ok);
}

/// A server on 127.0.0.1 that answers each of at most `n` connections with `reply` after `delay`.
fn server(reply: &'static [u8], delay: Duration, n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            std::thread::sleep(delay);
            let _ = s.write_all(reply);
        }
    });
    addr
}

/// Runs a probe as the kubelet does, here on loopback (this process's own namespace as the node's).
fn run(p: Value, addr: SocketAddr) -> bool {
    let c = container(json!({"name": "web", "ports": [{"name": "http", "containerPort": addr.port()}]}));
    let dir = tempfile::tempdir().unwrap();
    probe_once(&probe(p), &c, &addr.ip().to_string(), Path::new("/proc/self/ns/net"), dir.path())
}

#[test]
fn http_and_tcp_probes_against_real_servers() {
    let ok = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Duration::ZERO, 1);
    assert!(run(json!({"httpGet": {"port": "http", "path": "/healthz"}}), ok));
    let err = server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", Duration::ZERO, 1);
    assert!(!run(json!({"httpGet": {"port": "http"}}), err));
    let short = server(b"HTTP/1.1", Duration::ZERO, 1);
    assert!(!run(json!({"httpGet": {"port": "http"}}), short), "a status line cut short");
    // Slower than timeoutSeconds (1 s): failed, and within about that time.
    let slow = server(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(3), 1);
    let t = Instant::now();
    assert!(!run(json!({"httpGet": {"port": "http"}, "timeoutSeconds": 1}), slow));
    assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
    // tcpSocket: a listener passes, a closed port fails.
    let open = server(b"", Duration::ZERO, 1);
    assert!(run(json!({"tcpSocket": {"port": open.port()}}), open));
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(!run(json!({"tcpSocket": {"port": closed.port()}}), closed));
    assert!(!run(json!({"httpGet": {"port": closed.port()}}), closed));
}

#[test]
fn an_exec_probe_without_a_shim_to_run_it_fails() {
    let t = Instant::now();
    assert!(!run(json!({"exec": {"command": ["true"]}}), "127.0.0.1:1".parse().unwrap()));
    assert!(t.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// The sandbox record

#[test]
fn a_sandbox_record_reads_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let sb = sandbox();
    std::fs::create_dir_all(pod_dir(dir.path(), &sb.uid)).unwrap();
    save_sandbox(dir.path(), &sb).unwrap();
    let back = load_sandbox(dir.path(), &sb.uid).expect("the record");
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&sb).unwrap());
    assert!(!pod_dir(dir.path(), &sb.uid).join("sandbox.json.tmp").exists());
    // Saved again with a new shim: replaced whole.
    let sb2 = Sandbox { shim_pid: 7, shim_start: 8, ..sb.clone() };
    save_sandbox(dir.path(), &sb2).unwrap();
    assert_eq!(load_sandbox(dir.path(), &sb.uid).unwrap().shim_pid, 7);
    assert_eq!(all_sandboxes(dir.path()).len(), 1);
}

#[test]
fn damaged_or_stray_records_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good = sandbox();
    std::fs::create_dir_all(pod_dir(dir.path(), &good.uid)).unwrap();
    save_sandbox(dir.path(), &good).unwrap();
    let full = serde_json::to_vec(&good).unwrap();
    for (uid, bytes) in [
        ("cut", &full[..full.len() / 2]),
        ("empty", &b""[..]),
        ("binary", &[0xff, 0x00, 0xfe][..]),
        ("other", &br#"{"uid": 5}"#[..]),
    ] {
        std::fs::create_dir_all(pod_dir(dir.path(), uid)).unwrap();
        std::fs::write(pod_dir(dir.path(), uid).join("sandbox.json"), bytes).unwrap();
        assert!(load_sandbox(dir.path(), uid).is_none(), "{uid}");
    }
    std::fs::create_dir_all(pod_dir(dir.path(), "no-record")).unwrap();
    std::fs::write(pods_dir(dir.path()).join("a-file"), "x").unwrap();
    let all = all_sandboxes(dir.path());
    assert_eq!(all.iter().map(|s| s.uid.as_str()).collect::<Vec<_>>(), [good.uid.as_str()]);
    assert!(load_sandbox(dir.path(), "missing").is_none());
    assert!(all_sandboxes(&dir.path().join("nowhere")).is_empty());
    // A record whose pod directory is gone cannot be saved: an error, not a panic.
    let lost = Sandbox { uid: "gone".into(), ..good };
    assert!(save_sandbox(dir.path(), &lost).is_err());
}

#[test]
fn a_dead_shim_is_not_alive() {
    let mut sb = sandbox();
    sb.shim_pid = 0;
    assert!(!shim_alive(&sb));
    // This process, but with another start time: a reused pid.
    sb.shim_pid = std::process::id();
    sb.shim_start = proc_start(sb.shim_pid).unwrap() + 1;
    assert!(!shim_alive(&sb));
    sb.shim_start -= 1;
    assert!(shim_alive(&sb));
}

#[test]
fn pod_namespace_names_are_short_and_safe_for_any_uid() {
    assert_eq!(netns_name("lab", "0123456789abcdef-0000"), "weft-lab-pod-0123456789abc");
    assert_eq!(netns_name("lab", "abc"), "weft-lab-pod-abc");
    assert_eq!(netns_name("lab", ""), "weft-lab-pod-");
    // Multi-byte characters across the cut: no panic, whole characters.
    assert_eq!(netns_name("lab", "ééééééééééééééé"), format!("weft-lab-pod-{}", "é".repeat(13)));
}

// ---------------------------------------------------------------------------------------------
// Hostile specs

#[test]
fn huge_specs_translate_without_panicking() {
    let env: Vec<Value> = (0..200).map(|i| json!({"name": format!("V{i}"), "value": "v".repeat(1000)})).collect();
    let containers: Vec<Value> = (0..500)
        .map(|i| {
            json!({"name": format!("c{i}"), "image": "busybox", "command": ["sh", "-c", "x".repeat(64 << 10)],
                   "env": env, "ports": [{"containerPort": 80 + i, "hostPort": 30000 + i}],
                   "readinessProbe": {"httpGet": {"port": 80 + i}}})
        })
        .collect();
    let p = pod(json!({"hostname": "h".repeat(10_000), "containers": containers}));
    let s = spec_of(&p);
    assert_eq!(s.containers.len(), 500);
    assert_eq!(s.containers[499].env.len(), 208);
    assert_eq!(s.hostname.len(), 63);
    assert_eq!(port_mappings(&p)["portMappings"].as_array().unwrap().len(), 500);
    let st: Vec<ContainerState> = (0..500).map(|i| state(&format!("c{i}"), true, 0, None, false)).collect();
    let v = status(&p, st, true);
    assert_eq!(v["containerStatuses"].as_array().unwrap().len(), 500);
    assert_eq!(condition(&v, "Ready"), "True");
}

#[test]
fn odd_specs_translate_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let odd = pod(json!({"restartPolicy": "Sometimes", "dnsPolicy": "Weird", "containers": [
        {"name": "", "ports": [{"containerPort": -5}, {"containerPort": 2147483647, "hostPort": -1},
                               {"containerPort": 53, "protocol": "SCTP"}],
         "env": [{"name": "", "valueFrom": {}}, {"name": "\u{0}", "value": "\u{0}"}],
         "readinessProbe": {"httpGet": {"port": "", "path": "/\r\nX: y"}, "timeoutSeconds": -100,
                            "periodSeconds": 2147483647, "initialDelaySeconds": -1,
                            "successThreshold": -2147483648, "failureThreshold": 2147483647}},
        {"name": "dup", "command": []}, {"name": "dup", "args": ["--port=99999"]}]}));
    let s = shim_spec(&c, &node(), &odd, "uid", "weft-t-pod-uid", "");
    assert_eq!(s.restart_policy, "Sometimes", "passed on: the shim restarts unless Never or OnFailure");
    assert_eq!(s.containers.len(), 3);
    let _ = resolv_conf(&c, &odd);
    let _ = port_mappings(&odd);
    let _ = status(&odd, vec![state("dup", true, u32::MAX, Some(i32::MIN), false)], true);
    let cont = &odd.spec.as_ref().unwrap().containers[0];
    let p = cont.readiness_probe.clone().unwrap();
    assert!(matches!(probe_action(&p, cont, "10.0.0.1"), ProbeAction::Fail(_)));
    let mut st = counter();
    for _ in 0..3 {
        st.record(true, &p);
        st.record(false, &p);
    }
    // A pod with no spec, no name, no namespace, no uid.
    let bare: Pod = serde_json::from_value(json!({"metadata": {}})).unwrap();
    let s = shim_spec(&c, &node(), &bare, "", "", "");
    assert!(s.containers.is_empty() && s.hostname.is_empty());
    assert_eq!(s.namespace, "default");
    assert_eq!(status(&bare, vec![], true)["phase"], "Pending");
    assert_eq!(port_mappings(&bare), json!({"portMappings": []}));
    let _: PathBuf = pod_dir(dir.path(), "");
}

// ---------------------------------------------------------------------------------------------
// Graceful termination

use crate::lifecycle::{
    self, MIN_KILL_WINDOW, Note, OVERDUE, ProbeKind, ProbeState, Seen, TermStep, Termination, kill_at,
};
use crate::shim::Hook;

fn shim_report(terminating: bool, running: &[bool]) -> ShimStatus {
    ShimStatus {
        shim_pid: 4242,
        containers: running.iter().enumerate().map(|(i, r)| state(&format!("c{i}"), *r, 0, None, !r)).collect(),
        terminating,
        initialized: true,
        ..Default::default()
    }
}

#[test]
fn the_grace_period_comes_from_the_deletion_then_the_spec_then_30_s() {
    let mut p = pod(json!({"terminationGracePeriodSeconds": 12, "containers": []}));
    assert_eq!(lifecycle::grace_period(&p), Duration::from_secs(12));
    p.metadata.deletion_grace_period_seconds = Some(5);
    assert_eq!(lifecycle::grace_period(&p), Duration::from_secs(5));
    p.metadata.deletion_grace_period_seconds = Some(-3);
    assert_eq!(lifecycle::grace_period(&p), Duration::ZERO, "a negative grace is none");
    assert_eq!(lifecycle::grace_period(&pod(json!({"containers": []}))), Duration::from_secs(30));
    // A liveness kill: the probe's own grace, else the pod's.
    let pr = probe(json!({"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 3}));
    assert_eq!(lifecycle::probe_kill_grace(&p, &pr), Duration::from_secs(3));
    assert_eq!(lifecycle::probe_kill_grace(&p, &probe(json!({}))), Duration::from_secs(12));
    // Any i64 from the API: a termination's deadline arithmetic must not overflow.
    p.metadata.deletion_grace_period_seconds = Some(i64::MAX);
    let grace = lifecycle::grace_period(&p);
    let now = Instant::now();
    let mut t = Termination::new(grace, now);
    assert!(matches!(t.step(grace, None, true, now), TermStep::Stop(_)));
    let huge = probe(json!({"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": i64::MAX}));
    let _ = now + lifecycle::probe_kill_grace(&p, &huge);
}

#[test]
fn sigkill_comes_at_the_deadline_but_never_sooner_than_2_s_after_sigterm() {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(5);
    // preStop took 1 s: SIGTERM at 1 s, SIGKILL at the deadline (4 s later).
    assert_eq!(kill_at(deadline, t0 + Duration::from_secs(1)), deadline);
    // preStop used up the grace period (SIGTERM at 5 s): still 2 s to exit.
    assert_eq!(kill_at(deadline, deadline), deadline + MIN_KILL_WINDOW);
    // SIGTERM at 4 s: the 2 s minimum reaches past the deadline.
    assert_eq!(kill_at(deadline, t0 + Duration::from_secs(4)), t0 + Duration::from_secs(6));
}

#[test]
fn a_termination_tells_the_shim_once_waits_and_finishes_when_nothing_runs() {
    let t0 = Instant::now();
    let grace = Duration::from_secs(5);
    let mut t = Termination::new(grace, t0);
    // The shim has not heard yet: tell it, with the whole grace period.
    assert_eq!(t.step(grace, Some(&shim_report(false, &[true, true])), true, t0), TermStep::Stop(grace));
    // It has (its report says terminating): wait while containers run.
    let stopping = shim_report(true, &[true, false]);
    assert_eq!(t.step(grace, Some(&stopping), true, t0 + Duration::from_secs(1)), TermStep::Wait);
    assert_eq!(t.step(grace, Some(&stopping), true, t0 + Duration::from_secs(6)), TermStep::Wait);
    // Everything stopped: tear down and delete.
    let done = shim_report(true, &[false, false]);
    assert_eq!(t.step(grace, Some(&done), true, t0 + Duration::from_secs(2)), TermStep::Finish { overdue: false });
    // A shim gone is a pod stopped.
    assert_eq!(t.step(grace, None, false, t0 + Duration::from_secs(2)), TermStep::Finish { overdue: false });
    // A request that got lost (the report does not say terminating) is sent again, with what is left.
    let mut t = Termination::new(grace, t0);
    let _ = t.step(grace, None, true, t0);
    assert_eq!(
        t.step(grace, Some(&shim_report(false, &[true])), true, t0 + Duration::from_secs(2)),
        TermStep::Stop(Duration::from_secs(3))
    );
    // A failed request (the kubelet forgets it was told) too.
    t.told = None;
    assert_eq!(
        t.step(grace, Some(&shim_report(true, &[true])), true, t0 + Duration::from_secs(3)),
        TermStep::Stop(Duration::from_secs(2))
    );
}

#[test]
fn a_shorter_second_delete_brings_the_deadline_closer_and_a_longer_one_does_not() {
    let t0 = Instant::now();
    let mut t = Termination::new(Duration::from_secs(30), t0);
    let running = shim_report(true, &[true]);
    assert_eq!(t.step(Duration::from_secs(30), None, true, t0), TermStep::Stop(Duration::from_secs(30)));
    // `kubectl delete --grace-period=1` 10 s in: 1 s from then.
    let at = t0 + Duration::from_secs(10);
    assert_eq!(t.step(Duration::from_secs(1), Some(&running), true, at), TermStep::Stop(Duration::from_secs(1)));
    assert_eq!(t.deadline, at + Duration::from_secs(1));
    assert_eq!(t.step(Duration::from_secs(1), Some(&running), true, at), TermStep::Wait);
    // A longer one later changes nothing.
    assert_eq!(t.step(Duration::from_secs(60), Some(&running), true, at), TermStep::Wait);
    assert_eq!(t.deadline, at + Duration::from_secs(1));
}

#[test]
fn a_shim_that_does_not_stop_its_containers_is_overdue_after_the_deadline_and_the_minimum() {
    let t0 = Instant::now();
    let grace = Duration::from_secs(5);
    let mut t = Termination::new(grace, t0);
    let running = shim_report(true, &[true]);
    let _ = t.step(grace, Some(&running), true, t0);
    let edge = t0 + grace + MIN_KILL_WINDOW + OVERDUE;
    assert_eq!(t.step(grace, Some(&running), true, edge - Duration::from_millis(1)), TermStep::Wait);
    assert_eq!(t.step(grace, Some(&running), true, edge), TermStep::Finish { overdue: true });
}

#[test]
fn a_finished_shim_is_not_started_again() {
    assert!(!lifecycle::shim_finished(&shim_report(false, &[true])));
    assert!(lifecycle::shim_finished(&shim_report(false, &[false, false])), "every container done");
    assert!(lifecycle::shim_finished(&shim_report(true, &[false])), "stopped for its deletion");
    assert!(!lifecycle::shim_finished(&shim_report(true, &[true])));
    let mut init_failed = shim_report(false, &[]);
    init_failed.initialized = false;
    init_failed.init_containers = vec![state("setup", false, 0, Some(1), true)];
    assert!(lifecycle::shim_finished(&init_failed));
    // Not yet initialized, nothing done: not finished.
    let mut waiting = shim_report(false, &[]);
    waiting.initialized = false;
    waiting.containers = vec![state("c0", false, 0, None, false)];
    assert!(!lifecycle::shim_finished(&waiting));
}

#[test]
fn a_terminating_pods_stopped_containers_show_terminated_and_unready() {
    let mut sts = vec![state("a", false, 0, Some(137), true), state("b", true, 0, None, false)];
    sts[0].killed = true;
    let s = status(&two(), sts, true);
    assert_eq!(s["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);
    assert_eq!(s["containerStatuses"][0]["ready"], false);
    assert_eq!(s["containerStatuses"][1]["ready"], true, "b is still serving");
    assert_eq!(condition(&s, "Ready"), "False");
}

// ---------------------------------------------------------------------------------------------
// preStop hooks

#[test]
fn pre_stop_hooks_become_what_the_shim_runs() {
    let hook = |lc: Value| {
        let c = container(json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}], "lifecycle": lc}));
        pre_stop_hook(&c, "10.244.1.7")
    };
    assert_eq!(
        hook(json!({"preStop": {"exec": {"command": ["sh", "-c", "echo bye"]}}})),
        Some(Hook::Exec(vec!["sh".into(), "-c".into(), "echo bye".into()]))
    );
    assert_eq!(
        hook(json!({"preStop": {"httpGet": {"port": "http", "path": "drain",
                                            "httpHeaders": [{"name": "X-Why", "value": "stop"}]}}})),
        Some(Hook::Http {
            addr: "10.244.1.7:8080".parse().unwrap(),
            path: "/drain".into(),
            host: "10.244.1.7:8080".into(),
            headers: vec![("X-Why".into(), "stop".into())]
        })
    );
    assert_eq!(
        hook(json!({"preStop": {"httpGet": {"port": 9000, "host": "10.0.0.3"}}})),
        Some(Hook::Http {
            addr: "10.0.0.3:9000".parse().unwrap(),
            path: "/".into(),
            host: "10.0.0.3:9000".into(),
            headers: vec![]
        })
    );
    assert_eq!(hook(json!({"preStop": {"sleep": {"seconds": 4}}})), Some(Hook::Sleep(4)));
    assert_eq!(hook(json!({"postStart": {"sleep": {"seconds": 4}}})), None);
    assert_eq!(hook(json!({})), None);
    // What the lab cannot run fails when it runs, naming the field.
    for bad in [
        json!({"preStop": {"httpGet": {"port": "nosuch"}}}),
        json!({"preStop": {"httpGet": {"port": 80, "scheme": "HTTPS"}}}),
        json!({"preStop": {"httpGet": {"port": 80, "host": "example.com"}}}),
    ] {
        match hook(bad.clone()) {
            Some(Hook::Invalid(why)) => assert!(why.contains("lifecycle.preStop.httpGet"), "{why}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Carried into the shim's spec, init containers too, with a sidecar's own restart policy.
    let p = pod(json!({
        "initContainers": [{"name": "setup", "command": ["true"]},
                           {"name": "proxy", "command": ["sleep", "9"], "restartPolicy": "Always"}],
        "containers": [{"name": "app", "command": ["sleep", "9"],
                        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}}}]}));
    let s = spec_of(&p);
    assert_eq!(s.init_containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["setup", "proxy"]);
    assert_eq!(s.init_containers[1].restart_policy.as_deref(), Some("Always"));
    assert_eq!(s.init_containers[0].restart_policy, None);
    assert_eq!(s.containers[0].pre_stop, Some(Hook::Exec(vec!["sleep".into(), "1".into()])));
    // An older shim spec without the new fields still reads.
    let old: ShimSpec = serde_json::from_value(json!({"pod": "p", "namespace": "n", "uid": "u", "netns": "/x",
        "hostname": "h", "resolv_conf": null, "dir": "/d", "restart_policy": "Always", "containers": []}))
    .unwrap();
    assert!(old.init_containers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Liveness and startup probes

#[test]
fn liveness_starts_alive_and_asks_for_a_restart_after_its_failure_threshold() {
    let p = probe(json!({"exec": {"command": ["true"]}, "failureThreshold": 2, "periodSeconds": 3}));
    let t0 = Instant::now();
    let mut s = ProbeState::new(ProbeKind::Liveness, &p, (0, Some("t".into())), t0);
    assert!(s.ok, "alive until proven otherwise");
    assert!(!s.record(false, &p), "one failure is under the threshold");
    assert!(s.record(false, &p), "the second asks for a restart");
    assert!(!s.ok && s.on_hold);
    assert!(!s.due(true, true, t0 + Duration::from_secs(60)), "no probing until the next instance");
    assert_eq!(ProbeState::period(&p), Duration::from_secs(3));
    // A success between failures resets the count.
    let mut s = ProbeState::new(ProbeKind::Liveness, &p, (1, None), t0);
    assert!(!s.record(false, &p));
    assert!(!s.record(true, &p));
    assert!(!s.record(false, &p));
    assert!(s.ok);
}

#[test]
fn probes_wait_for_their_initial_delay_and_a_startup_probe_gates_the_others() {
    let p = probe(json!({"tcpSocket": {"port": 80}, "initialDelaySeconds": 5}));
    let t0 = Instant::now();
    let live = ProbeState::new(ProbeKind::Liveness, &p, (0, None), t0);
    assert!(!live.due(true, true, t0 + Duration::from_secs(4)));
    assert!(live.due(true, true, t0 + Duration::from_secs(5)));
    assert!(!live.due(false, true, t0 + Duration::from_secs(5)), "not while the container is not running");
    assert!(!live.due(true, false, t0 + Duration::from_secs(5)), "not before the container has started");
    let mut startup = ProbeState::new(ProbeKind::Startup, &probe(json!({"tcpSocket": {"port": 80}})), (0, None), t0);
    assert!(!startup.ok, "not started before the startup probe passes");
    assert!(startup.due(true, false, t0));
    assert!(!startup.record(true, &p));
    assert!(startup.ok);
    assert!(!startup.due(true, true, t0 + Duration::from_secs(60)), "a started container is not startup-probed");
    // A startup probe that keeps failing restarts the container.
    let sp = probe(json!({"tcpSocket": {"port": 80}, "failureThreshold": 3}));
    let mut startup = ProbeState::new(ProbeKind::Startup, &sp, (0, None), t0);
    assert!(!startup.record(false, &sp) && !startup.record(false, &sp));
    assert!(startup.record(false, &sp));
    // Readiness never asks for a restart.
    let mut ready = ProbeState::new(ProbeKind::Readiness, &sp, (0, None), t0);
    assert!((0..10).all(|_| !ready.record(false, &sp)));
}

#[test]
fn a_startup_probe_that_has_not_passed_keeps_the_container_unstarted_and_unready() {
    let p = pod(json!({"containers": [{"name": "a", "image": "busybox", "command": ["sleep", "9"],
        "startupProbe": {"tcpSocket": {"port": 80}}}]}));
    let st = ShimStatus { shim_pid: 1, containers: vec![state("a", true, 0, None, false)], ..Default::default() };
    let at = Ipv4Addr::new(172, 18, 0, 11);
    let not_started = status_of(&p, &sandbox(), &st, |_, k| k != ProbeKind::Startup, at, "now");
    assert_eq!(not_started["containerStatuses"][0]["started"], false);
    assert_eq!(condition(&not_started, "Ready"), "False");
    let started = status_of(&p, &sandbox(), &st, |_, _| true, at, "now");
    assert_eq!(started["containerStatuses"][0]["started"], true);
    assert_eq!(condition(&started, "Ready"), "True");
}

#[test]
fn probe_failures_say_why_in_the_kubelets_words() {
    let err = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", Duration::ZERO, 1);
    let c = container(json!({"name": "web", "ports": [{"name": "http", "containerPort": err.port()}]}));
    let dir = tempfile::tempdir().unwrap();
    let ns = Path::new("/proc/self/ns/net");
    let check = |p: Value, ip: &str| probe_check(&probe(p), &c, ip, ns, dir.path());
    assert_eq!(
        check(json!({"httpGet": {"port": "http"}}), "127.0.0.1"),
        Err("HTTP probe failed with statuscode: 503".into())
    );
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let why = check(json!({"tcpSocket": {"port": closed.port()}}), "127.0.0.1").unwrap_err();
    assert!(why.starts_with(&format!("dial tcp {closed}: ")), "{why}");
    let why = check(json!({"httpGet": {"port": closed.port(), "path": "/healthz"}}), "127.0.0.1").unwrap_err();
    assert!(why.starts_with(&format!("Get \"http://{closed}/healthz\": dial tcp")), "{why}");
}

// ---------------------------------------------------------------------------------------------
// gRPC probes

/// How the test's gRPC server answers Health/Check.
#[derive(Clone, Copy, PartialEq)]
enum Health {
    /// A message with this `status`, then grpc-status 0 in the trailers.
    Status(u8),
    /// Trailers-only: grpc-status 12 (the health service is not there).
    Unimplemented,
    /// Takes the call and never answers.
    Silent,
    /// A message whose length prefix says 64 MiB, then endless data.
    Huge,
}

/// An HTTP/2 gRPC server on 127.0.0.1 (hyper's), answering Health/Check as `health` for at most
/// `n` connections; it records the services asked for.
fn grpc_server(health: Health, n: usize) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let seen = asked.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            let mut served = Vec::new();
            for _ in 0..n {
                let Ok(Ok((s, _))) = tokio::time::timeout(Duration::from_secs(10), l.accept()).await else { break };
                let seen = seen.clone();
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        assert_eq!(req.headers()["content-type"], "application/grpc");
                        let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                        seen.lock().unwrap().push(body);
                        type Frames = Vec<Result<Frame<Bytes>, std::convert::Infallible>>;
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let resp = hyper::Response::builder().header("content-type", "application/grpc");
                        let frames: Frames = match health {
                            Health::Status(s) => vec![
                                Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]))),
                                Ok(Frame::trailers(trailers)),
                            ],
                            Health::Unimplemented => {
                                let body = StreamBody::new(futures::stream::iter(Frames::new())).boxed();
                                return Ok::<_, std::convert::Infallible>(
                                    resp.header("grpc-status", "12")
                                        .header("grpc-message", "unknown service grpc.health.v1.Health")
                                        .body(body)
                                        .unwrap(),
                                );
                            }
                            Health::Silent => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                vec![]
                            }
                            Health::Huge => {
                                let mut first = vec![0, 4, 0, 0, 0];
                                first.extend_from_slice(&[0x55; 16 << 10]);
                                let rest = (0..1000).map(|_| Ok(Frame::data(Bytes::from(vec![0x55; 16 << 10]))));
                                std::iter::once(Ok(Frame::data(Bytes::from(first)))).chain(rest).collect()
                            }
                        };
                        Ok(resp.body(StreamBody::new(futures::stream::iter(frames)).boxed()).unwrap())
                    }
                });
                served.push(tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                }));
            }
            // The connections are served to their end (the runtime's end would cut them).
            for h in served {
                let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
            }
        });
    });
    (addr, asked)
}

/// A gRPC probe of `addr` as the kubelet runs it (this namespace as the node's), and how long it took.
fn grpc_check(addr: SocketAddr, service: Option<&str>) -> (Result<(), String>, Duration) {
    let c = container(json!({"name": "web"}));
    let dir = tempfile::tempdir().unwrap();
    let p = probe(json!({"grpc": {"port": addr.port(), "service": service}, "timeoutSeconds": 1}));
    let t = Instant::now();
    let r = probe_check(&p, &c, &addr.ip().to_string(), Path::new("/proc/self/ns/net"), dir.path());
    (r, t.elapsed())
}

#[test]
fn a_grpc_probe_passes_only_for_serving() {
    let (serving, asked) = grpc_server(Health::Status(1), 2);
    assert_eq!(grpc_check(serving, None).0, Ok(()));
    assert_eq!(grpc_check(serving, Some("db")).0, Ok(()));
    // HealthCheckRequest{service}: nothing for "", field 1 for "db", each length-prefixed.
    assert_eq!(*asked.lock().unwrap(), vec![vec![0, 0, 0, 0, 0], vec![0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']]);

    let (not_serving, _) = grpc_server(Health::Status(2), 1);
    assert_eq!(grpc_check(not_serving, None).0, Err("service unhealthy (responded with \"NOT_SERVING\")".into()));
    let (unknown, _) = grpc_server(Health::Status(3), 1);
    assert_eq!(
        grpc_check(unknown, Some("nosuch")).0,
        Err("service unhealthy (responded with \"SERVICE_UNKNOWN\")".into())
    );
    let (unimplemented, _) = grpc_server(Health::Unimplemented, 1);
    assert_eq!(
        grpc_check(unimplemented, None).0,
        Err("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): \
             unknown service grpc.health.v1.Health"
            .into())
    );
}

#[test]
fn a_grpc_probe_fails_at_its_timeout_as_the_kubelet_says() {
    let near = |d: Duration| d >= Duration::from_millis(900) && d < Duration::from_millis(2500);
    // A server that takes the call and never answers.
    let (silent, _) = grpc_server(Health::Silent, 1);
    let (r, took) = grpc_check(silent, None);
    assert_eq!(r, Err("timeout: health rpc did not complete within 1s".into()));
    assert!(near(took), "{took:?}");
    // A closed port: grpc-go's dial keeps trying until the timeout.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (r, took) = grpc_check(closed, None);
    assert_eq!(r, Err(format!("timeout: failed to connect service \"{closed}\" within 1s: context deadline exceeded")));
    assert!(near(took), "{took:?}");
    // A listener that accepts and never speaks HTTP/2 is not connected either.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mute.local_addr().unwrap();
    let (r, took) = grpc_check(addr, None);
    assert_eq!(r, Err(format!("timeout: failed to connect service \"{addr}\" within 1s: context deadline exceeded")));
    assert!(near(took), "{took:?}");
    drop(mute);
}

#[test]
fn a_grpc_probe_of_a_hostile_server_fails_in_time_and_bounded() {
    // Garbage instead of HTTP/2 (a frame header claiming 16 MiB, then more): never connected.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        l.set_nonblocking(false).unwrap();
        for _ in 0..20 {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            std::thread::spawn(move || {
                for _ in 0..64 {
                    if s.write_all(&[0xff; 64 << 10]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (r, took) = grpc_check(addr, None);
    assert_eq!(r, Err(format!("timeout: failed to connect service \"{addr}\" within 1s: context deadline exceeded")));
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // A message far over the limit: refused at its length prefix.
    let (huge, _) = grpc_server(Health::Huge, 1);
    let (r, took) = grpc_check(huge, None);
    assert_eq!(
        r,
        Err("error: health rpc probe failed: rpc error: code = ResourceExhausted desc = \
             grpc: received message larger than max (67108864 vs. 4194304)"
            .into())
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // HTTP/2's preface (an empty SETTINGS frame), then the connection closes under the call.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // All the client sends (its preface, the call) is read first, so the close is a FIN.
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        for _ in 0..100 {
            if matches!(s.read(&mut [0u8; 4096]), Ok(0) | Err(_)) {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let (r, took) = grpc_check(addr, None);
    let why = r.unwrap_err();
    assert!(why.starts_with("error: health rpc probe failed: rpc error: code = Unavailable desc = "), "{why}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // An HTTP/1 server answering anything: not HTTP/2, so never connected.
    let h1 = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Duration::ZERO, 20);
    let (r, _) = grpc_check(h1, None);
    assert!(r.unwrap_err().starts_with("timeout: failed to connect service"));
}

// ---------------------------------------------------------------------------------------------
// Init containers

fn with_inits() -> Pod {
    pod(json!({"initContainers": [
        {"name": "one", "image": "busybox", "command": ["true"]},
        {"name": "two", "image": "busybox", "command": ["true"]}],
        "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "9"]}]}))
}

fn init_status(pod: &Pod, inits: Vec<ContainerState>, initialized: bool, apps: Vec<ContainerState>) -> Value {
    let st = ShimStatus { shim_pid: 1, containers: apps, init_containers: inits, initialized, terminating: false };
    status_of(pod, &sandbox(), &st, |_, _| true, Ipv4Addr::new(172, 18, 0, 11), "now")
}

#[test]
fn init_containers_run_in_order_before_the_app_and_the_status_says_which() {
    let p = with_inits();
    // The first runs, the second waits: Init:0/2 in kubectl's words.
    let s =
        init_status(&p, vec![state("one", true, 0, None, false), state("two", false, 0, None, false)], false, vec![]);
    assert_eq!(s["phase"], "Pending");
    let ics = &s["initContainerStatuses"];
    assert!(ics[0]["state"]["running"].is_object());
    assert_eq!(ics[1]["state"]["waiting"]["reason"], "PodInitializing");
    assert_eq!(s["containerStatuses"][0]["state"]["waiting"]["reason"], "PodInitializing");
    let init = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Initialized").unwrap().clone();
    assert_eq!(init["status"], "False");
    assert_eq!(init["reason"], "ContainersNotInitialized");
    assert_eq!(init["message"], "containers with incomplete status: [one two]");
    // The first done, the second failing and retried: CrashLoopBackOff, its exit kept.
    let s = init_status(
        &p,
        vec![state("one", false, 0, Some(0), true), state("two", false, 2, Some(1), false)],
        false,
        vec![],
    );
    let ics = &s["initContainerStatuses"];
    assert_eq!(ics[0]["state"]["terminated"]["reason"], "Completed");
    assert_eq!(ics[0]["ready"], true);
    assert_eq!(ics[1]["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(ics[1]["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(ics[1]["restartCount"], 2);
    assert_eq!(s["phase"], "Pending");
    // Both done: initialized, the app runs.
    let s = init_status(
        &p,
        vec![state("one", false, 0, Some(0), true), state("two", false, 0, Some(0), true)],
        true,
        vec![state("app", true, 0, None, false)],
    );
    assert_eq!(
        (s["phase"].as_str(), condition(&s, "Initialized"), condition(&s, "Ready")),
        (Some("Running"), "True".into(), "True".into())
    );
    // A pod without init containers has no initContainerStatuses.
    assert!(status(&two(), vec![], true).get("initContainerStatuses").is_none());
}

#[test]
fn an_init_container_that_fails_for_good_fails_the_pod() {
    let mut p = with_inits();
    p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    let s = init_status(
        &p,
        vec![state("one", false, 0, Some(3), true), state("two", false, 0, None, false)],
        false,
        vec![],
    );
    assert_eq!(s["phase"], "Failed");
    assert_eq!(s["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Error");
    assert_eq!(s["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 3);
}

#[test]
fn a_sidecar_init_container_counts_once_running_and_for_readiness() {
    let p = pod(json!({"initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
        "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "9"]}]}));
    let s = init_status(&p, vec![state("proxy", true, 0, None, false)], true, vec![state("app", true, 0, None, false)]);
    assert_eq!((s["phase"].as_str(), condition(&s, "Ready")), (Some("Running"), "True".into()));
    assert_eq!(s["initContainerStatuses"][0]["started"], true);
    let s =
        init_status(&p, vec![state("proxy", false, 1, Some(1), false)], true, vec![state("app", true, 0, None, false)]);
    assert_eq!(condition(&s, "Ready"), "False", "a sidecar down makes the pod unready");
}

// ---------------------------------------------------------------------------------------------
// Events

#[test]
fn a_containers_changes_make_the_kubelets_events_once_each() {
    let mut seen = Seen::default();
    let pod_ref = "web-0_shop(uid)";
    let reasons = |notes: &[Note]| notes.iter().map(|n| n.reason).collect::<Vec<_>>();
    let mut cs = state("app", true, 0, None, false);
    let notes = lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, false);
    assert_eq!(reasons(&notes), ["Pulled", "Created", "Started"]);
    assert_eq!(notes[0].message, "Container image \"busybox\" already present on machine");
    assert_eq!(notes[1].message, "Created container: app");
    assert_eq!(notes[2].message, "Started container app");
    assert!(notes.iter().all(|n| !n.warning));
    assert!(lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, false).is_empty(), "once");
    // It failed and waits to be restarted: BackOff, once per restart.
    cs = state("app", false, 1, Some(1), false);
    let notes = lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, false);
    assert_eq!(
        notes,
        [Note::warning("BackOff", "Back-off restarting failed container app in pod web-0_shop(uid)".into())]
    );
    assert!(lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, false).is_empty());
    // The next instance starts: the three again.
    cs = state("app", true, 1, None, false);
    cs.started_at = Some("2025-01-01T00:01:00Z".into());
    assert_eq!(
        reasons(&lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, false)),
        ["Pulled", "Created", "Started"]
    );
    // A failed preStop hook, once per stop, without the hook's output.
    cs.pre_stop_error = Some("command exited with 1".into());
    cs.stop_count = 1;
    let notes = lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, true);
    assert_eq!(notes, [Note::warning("FailedPreStopHook", "PreStopHook failed".into())]);
    assert!(lifecycle::container_events(&mut seen, &cs, "busybox", pod_ref, true).is_empty());
    // A terminating pod's stopped container is not in back-off.
    let mut seen = Seen::default();
    let stopped = state("app", false, 1, Some(143), false);
    assert!(lifecycle::container_events(&mut seen, &stopped, "busybox", pod_ref, true).is_empty());
}

#[test]
fn events_name_the_pod_and_the_container_as_the_kubelet_does() {
    let p = with_inits();
    assert_eq!(crate::pod_events::field_path(&p, "one"), "spec.initContainers{one}");
    assert_eq!(crate::pod_events::field_path(&p, "app"), "spec.containers{app}");
    let r = crate::pod_events::reference(&p, Some("spec.containers{app}".into()));
    assert_eq!(
        (r.kind.as_deref(), r.name.as_deref(), r.namespace.as_deref()),
        (Some("Pod"), Some("web-0"), Some("shop"))
    );
    assert_eq!(r.uid.as_deref(), Some("0123456789abcdef-uid"));
}

#[test]
fn no_grace_left_still_tells_the_shim_which_then_gives_the_2_s_minimum() {
    let t0 = Instant::now();
    let mut t = Termination::new(Duration::ZERO, t0);
    assert_eq!(t.step(Duration::ZERO, None, true, t0), TermStep::Stop(Duration::ZERO));
    // The shim sends SIGTERM at once and SIGKILL 2 s later; the kubelet waits for that.
    assert_eq!(kill_at(t.deadline, t0), t0 + MIN_KILL_WINDOW);
    assert_eq!(t.step(Duration::ZERO, Some(&shim_report(true, &[true])), true, t0 + MIN_KILL_WINDOW), TermStep::Wait);
    // A running init container (or sidecar) counts as running too.
    let mut st = shim_report(true, &[false]);
    st.init_containers = vec![state("proxy", true, 0, None, false)];
    assert!(lifecycle::any_running(&st));
    assert_eq!(t.step(Duration::ZERO, Some(&st), true, t0), TermStep::Wait);
}
