//! weft-cni run as a runtime runs it, in namespaces the test makes; observed with iproute2 and
//! real packets.

mod common;
use std::net::{IpAddr, SocketAddr};

use common::*;
use serde_json::json;
use weft_cni::spec::code;

#[test]
fn two_pods_on_the_bridge_reach_each_other_and_the_gateway() {
    let node = Netns::new("node");
    let (p1, p2) = (Netns::new("p1"), Netns::new("p2"));
    let dir = tempfile::tempdir().unwrap();
    let conf = bridge_conf("1.1.0", dir.path().to_str().unwrap(), "10.200.0.0/24", false);
    let r1 = cni(WEFT_CNI, "ADD", &node, "c1", Some(&p1), &conf).unwrap().unwrap();
    let r2 = cni(WEFT_CNI, "ADD", &node, "c2", Some(&p2), &conf).unwrap().unwrap();
    // The result, as the reference gives it: bridge, host veth, eth0 in the sandbox.
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["interfaces"][0]["name"], "cnio0");
    assert!(r1["interfaces"][1]["name"].as_str().unwrap().starts_with("veth"));
    assert_eq!(r1["interfaces"][2]["name"], "eth0");
    assert_eq!(r1["interfaces"][2]["sandbox"], p1.path());
    assert_eq!(r1["ips"][0], json!({"interface": 2, "address": "10.200.0.2/24", "gateway": "10.200.0.1"}));
    assert_eq!(r2["ips"][0]["address"], "10.200.0.3/24");
    assert_eq!(r1["routes"], json!([{"dst": "0.0.0.0/0"}]));
    // The pod's side as seed 002 shows it.
    let addr = p1.ip(&["-4", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 10.200.0.2/24"), "{addr}");
    let routes = p1.ip(&["route", "show"]);
    assert!(routes.contains("default via 10.200.0.1 dev eth0"), "{routes}");
    assert!(routes.contains("10.200.0.0/24 dev eth0"), "{routes}");
    // The node's side: the gateway on the bridge, the host veth on the bridge.
    assert!(node.ip(&["addr", "show", "cnio0"]).contains("inet 10.200.0.1/24"));
    let host_veth = r1["interfaces"][1]["name"].as_str().unwrap();
    assert!(node.ip(&["link", "show", host_veth]).contains("master cnio0"));
    // Real packets.
    assert!(p1.ping("10.200.0.3".parse().unwrap()));
    assert!(p2.ping("10.200.0.2".parse().unwrap()));
    assert!(p1.ping("10.200.0.1".parse().unwrap()));
    let _srv = p2.peer_echo_server("10.200.0.3:8080".parse().unwrap());
    assert_eq!(p1.tcp_get("10.200.0.3:8080".parse().unwrap()).unwrap(), "10.200.0.2", "no NAT on the bridge");
}

#[test]
fn ip_masq_rewrites_only_traffic_leaving_the_pod_cidr() {
    let node = Netns::new("node");
    let (p1, p2, ext) = (Netns::new("p1"), Netns::new("p2"), Netns::new("ext"));
    // An outside host on a link of the node's.
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "ext0", "netns", &ext.name]);
    node.ip(&["addr", "add", "192.168.77.1/24", "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    ext.ip(&["addr", "add", "192.168.77.2/24", "dev", "ext0"]);
    ext.ip(&["link", "set", "ext0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let conf = bridge_conf("1.0.0", dir.path().to_str().unwrap(), "10.201.0.0/24", true);
    let r1 = cni(WEFT_CNI, "ADD", &node, "c1", Some(&p1), &conf).unwrap().unwrap();
    cni(WEFT_CNI, "ADD", &node, "c2", Some(&p2), &conf).unwrap().unwrap();
    let _outside = ext.peer_echo_server("192.168.77.2:9000".parse().unwrap());
    let _inside = p2.peer_echo_server("10.201.0.3:9000".parse().unwrap());
    // Leaving the pod CIDR: masqueraded to the node's address (the outside host has no route back to pods).
    assert_eq!(p1.tcp_get("192.168.77.2:9000".parse().unwrap()).unwrap(), "192.168.77.1");
    // Inside the pod CIDR: the pod's own address.
    assert_eq!(p1.tcp_get("10.201.0.3:9000".parse().unwrap()).unwrap(), ip_of(&r1).to_string());
    // One table for the network, whatever the number of pods; no per-pod rules.
    let rules = String::from_utf8(node.exec(&["nft", "list", "ruleset"]).stdout).unwrap();
    assert_eq!(rules.matches("table ip weft-masq-").count(), 1, "{rules}");
    assert_eq!(rules.lines().filter(|l| l.trim_end().ends_with("masquerade")).count(), 1, "{rules}");
    assert!(!rules.contains("10.201.0.2"), "no per-pod rule: {rules}");
}

#[test]
fn check_reports_a_removed_address_and_del_is_idempotent() {
    let node = Netns::new("node");
    let p1 = Netns::new("p1");
    let dir = tempfile::tempdir().unwrap();
    let mut conf = bridge_conf("1.0.0", dir.path().to_str().unwrap(), "10.202.0.0/24", false);
    let r = cni(WEFT_CNI, "ADD", &node, "c1", Some(&p1), &conf).unwrap().unwrap();
    conf["prevResult"] = r.clone();
    cni(WEFT_CNI, "CHECK", &node, "c1", Some(&p1), &conf).expect("CHECK passes on a fresh pod");
    p1.ip(&["addr", "del", "10.202.0.2/24", "dev", "eth0"]);
    let e = cni(WEFT_CNI, "CHECK", &node, "c1", Some(&p1), &conf).unwrap_err();
    assert!(e.msg.contains("10.202.0.2/24"), "{e:?}");
    // DEL twice, and DEL of a container never added: all succeed.
    cni(WEFT_CNI, "DEL", &node, "c1", Some(&p1), &conf).unwrap();
    cni(WEFT_CNI, "DEL", &node, "c1", Some(&p1), &conf).unwrap();
    cni(WEFT_CNI, "DEL", &node, "never-added", Some(&p1), &conf).unwrap();
    assert!(!p1.ip(&["link", "show"]).contains("eth0"));
    assert!(!dir.path().join("weft-test/10.202.0.2").exists());
    // DEL after the netns is gone also succeeds.
    let p2 = Netns::new("p2");
    cni(WEFT_CNI, "ADD", &node, "c2", Some(&p2), &conf).unwrap();
    let gone = p2.path();
    drop(p2);
    let inv_ns = node.file();
    weft_cni::runtime::Invocation {
        plugin: std::path::Path::new(WEFT_CNI),
        command: "DEL",
        container_id: "c2",
        netns: &gone,
        ifname: "eth0",
        args: "",
        cni_path: "",
        node_netns: Some(&inv_ns),
    }
    .run(&conf)
    .unwrap();
}

#[test]
fn gc_frees_stale_addresses() {
    let node = Netns::new("node");
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("p{i}"))).collect();
    let dir = tempfile::tempdir().unwrap();
    let conf = bridge_conf("1.1.0", dir.path().to_str().unwrap(), "10.203.0.0/24", false);
    for (i, p) in pods.iter().enumerate() {
        cni(WEFT_CNI, "ADD", &node, &format!("c{i}"), Some(p), &conf).unwrap();
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    cni(WEFT_CNI, "GC", &node, "", None, &gc).unwrap();
    let left: Vec<String> = std::fs::read_dir(dir.path().join("weft-test"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect();
    assert_eq!(left, vec!["10.203.0.3".to_string()]);
}

#[test]
fn two_hundred_concurrent_adds_get_distinct_addresses() {
    let node = Netns::new("node");
    let pods: Vec<Netns> = (0..200).map(|i| Netns::new(&format!("c{i}"))).collect();
    let dir = tempfile::tempdir().unwrap();
    let conf = bridge_conf("1.1.0", dir.path().to_str().unwrap(), "10.204.0.0/16", false);
    let results: Vec<IpAddr> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || ip_of(&cni(WEFT_CNI, "ADD", node, &format!("c{i}"), Some(p), conf).unwrap().unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut uniq = results.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 200);
    let ports = node.ip(&["link", "show", "master", "cnio0"]);
    assert_eq!(ports.lines().filter(|l| l.contains("veth")).count(), 200);
}

#[test]
fn a_plugin_killed_mid_add_leaves_nothing_gc_does_not_reclaim() {
    let node = Netns::new("node");
    let dir = tempfile::tempdir().unwrap();
    let conf = bridge_conf("1.1.0", dir.path().to_str().unwrap(), "10.205.0.0/24", false);
    // Make the bridge first so kills land in the per-pod steps.
    let warm = Netns::new("warm");
    cni(WEFT_CNI, "ADD", &node, "warm", Some(&warm), &conf).unwrap();
    cni(WEFT_CNI, "DEL", &node, "warm", Some(&warm), &conf).unwrap();
    for i in 0..30u64 {
        let pod = Netns::new(&format!("k{i}"));
        let nodef = node.file();
        let mut cmd = std::process::Command::new(WEFT_CNI);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("k{i}"))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        let fd = nodef.as_fd().try_clone_to_owned().unwrap();
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_micros(200 * i));
        let _ = child.kill();
        let _ = child.wait();
        // The runtime removes the sandbox of a failed ADD.
        drop(pod);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    cni(WEFT_CNI, "GC", &node, "", None, &gc).unwrap();
    let ips = std::fs::read_dir(dir.path().join("weft-test"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
        .count();
    assert_eq!(ips, 0, "GC reclaims every address");
    // Namespace teardown is asynchronous in the kernel: give it a bounded moment.
    let mut links = String::new();
    for _ in 0..100 {
        links = node.ip(&["-o", "link", "show", "type", "veth"]);
        if links.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(links.trim().is_empty(), "no veth left in the node: {links}");
}

#[test]
fn results_follow_the_requested_version() {
    let node = Netns::new("node");
    let dir = tempfile::tempdir().unwrap();
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let p = Netns::new("v");
        let conf = bridge_conf(v, dir.path().to_str().unwrap(), "10.206.0.0/24", false);
        let r = cni(WEFT_CNI, "ADD", &node, &format!("c{i}"), Some(&p), &conf).unwrap().unwrap();
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["ips"][0].get("version").is_some(), v.starts_with("0."), "{v}: {r}");
    }
    let out = std::process::Command::new(WEFT_CNI).env("CNI_COMMAND", "VERSION").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("0.4.0")));
}

#[test]
fn errors_are_spec_json_and_leave_nothing_half_made() {
    let node = Netns::new("node");
    let dir = tempfile::tempdir().unwrap();
    // Missing netns.
    let conf = bridge_conf("1.1.0", dir.path().to_str().unwrap(), "10.207.0.0/30", false);
    let nodef = node.file();
    let e = weft_cni::runtime::Invocation {
        plugin: std::path::Path::new(WEFT_CNI),
        command: "ADD",
        container_id: "x",
        netns: "/run/netns/weft-does-not-exist",
        ifname: "eth0",
        args: "",
        cni_path: "",
        node_netns: Some(&nodef),
    }
    .run(&conf)
    .unwrap_err();
    assert_eq!(e.code, code::UNKNOWN_CONTAINER);
    // Bad config.
    let p = Netns::new("p");
    let mut bad = conf.clone();
    bad["ipam"]["ranges"] = json!([[{"subnet": "10.207.0.0/24", "rangeStart": "10.9.9.9"}]]);
    assert_eq!(cni(WEFT_CNI, "ADD", &node, "x", Some(&p), &bad).unwrap_err().code, code::INVALID_CONFIG);
    let mut bad = conf.clone();
    bad.as_object_mut().unwrap().remove("ipam");
    let e = cni(WEFT_CNI, "ADD", &node, "x", Some(&p), &bad).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("ipam"), "{e:?}");
    // An exhausted range (a /30 has one address besides the gateway).
    let p2 = Netns::new("p2");
    cni(WEFT_CNI, "ADD", &node, "a", Some(&p), &conf).unwrap();
    let e = cni(WEFT_CNI, "ADD", &node, "b", Some(&p2), &conf).unwrap_err();
    assert!(e.msg.contains("no IP addresses available"), "{e:?}");
    assert!(!p2.ip(&["link", "show"]).contains("eth0"), "nothing made in the pod");
    // The raw protocol: error JSON on stdout and a non-zero exit.
    let out = p.exec(&[WEFT_CNI]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["code"].as_u64().is_some() && v["msg"].as_str().is_some(), "{v}");
}

#[test]
fn dual_stack_and_host_ports() {
    let node = Netns::new("node");
    let p = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "weft-ds", "type": "weft-cni", "bridge": "cni-ds", "isGateway": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8088, "containerPort": 80, "protocol": "tcp"}]},
        "ipam": {"type": "host-local", "dataDir": dir.path().to_str().unwrap(),
                 "ranges": [[{"subnet": "10.208.0.0/24"}], [{"subnet": "fd00:208::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
    });
    let r = cni(WEFT_CNI, "ADD", &node, "c", Some(&p), &conf).unwrap().unwrap();
    assert_eq!(r["ips"][1]["address"], "fd00:208::2/64");
    let a = p.ip(&["addr", "show", "eth0"]);
    assert!(a.contains("10.208.0.2/24") && a.contains("fd00:208::2/64"), "{a}");
    assert!(p.ip(&["-6", "route", "show"]).contains("default via fd00:208::1"));
    assert!(p.ping("fd00:208::1".parse().unwrap()));
    // Host port 8088 on the node reaches the pod's port 80.
    let _srv = p.peer_echo_server("0.0.0.0:80".parse().unwrap());
    let ext = Netns::new("ext");
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "ext0", "netns", &ext.name]);
    node.ip(&["addr", "add", "192.168.78.1/24", "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    ext.ip(&["addr", "add", "192.168.78.2/24", "dev", "ext0"]);
    ext.ip(&["link", "set", "ext0", "up"]);
    let to: SocketAddr = "192.168.78.1:8088".parse().unwrap();
    assert_eq!(ext.tcp_get(to).unwrap(), "192.168.78.2", "DNAT to the pod, client address kept");
    cni(WEFT_CNI, "DEL", &node, "c", Some(&p), &conf).unwrap();
    let rules =
        String::from_utf8(node.exec(&["nft", "list", "map", "ip", "weft-hostports", "hostports"]).stdout).unwrap();
    assert!(rules.contains("map hostports"), "{rules}");
    assert!(!rules.contains("8088"), "DEL removes the host port: {rules}");
}

#[test]
fn host_ports_honour_host_ip() {
    let node = Netns::new("node");
    let (p, ext) = (Netns::new("p"), Netns::new("ext"));
    // The node has two addresses on the link to an outside host.
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "ext0", "netns", &ext.name]);
    node.ip(&["addr", "add", "192.168.79.1/24", "dev", "up0"]);
    node.ip(&["addr", "add", "192.168.79.3/24", "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    ext.ip(&["addr", "add", "192.168.79.2/24", "dev", "ext0"]);
    ext.ip(&["link", "set", "ext0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let mut conf = bridge_conf("1.1.0", dir.path().to_str().unwrap(), "10.211.0.0/24", false);
    conf["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 8090, "containerPort": 80, "hostIP": "192.168.79.1"},
        {"hostPort": 8091, "containerPort": 80},
        // An IPv6 hostIP does not apply to an IPv4-only pod.
        {"hostPort": 8092, "containerPort": 80, "hostIP": "fd00::1"}
    ]});
    cni(WEFT_CNI, "ADD", &node, "c", Some(&p), &conf).unwrap().unwrap();
    let _srv = p.peer_echo_server("0.0.0.0:80".parse().unwrap());
    let at = |a: &str| ext.tcp_get(a.parse().unwrap());
    assert_eq!(at("192.168.79.1:8090").unwrap(), "192.168.79.2", "hostIP's address reaches the pod");
    assert!(at("192.168.79.3:8090").is_err(), "another node address does not");
    assert_eq!(at("192.168.79.3:8091").unwrap(), "192.168.79.2", "no hostIP: every address");
    assert!(at("192.168.79.1:8092").is_err());
    cni(WEFT_CNI, "DEL", &node, "c", Some(&p), &conf).unwrap();
    let map = node.exec(&["nft", "list", "map", "ip", "weft-hostports", "hostip-ports"]);
    let map = String::from_utf8(map.stdout).unwrap();
    assert!(map.contains("map hostip-ports") && !map.contains("8090"), "DEL removes it: {map}");
    // A hostIP that is not an address is refused before anything is made.
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8093, "containerPort": 80, "hostIP": "192.168.79.1 } ; flush ruleset"}]});
    let e = cni(WEFT_CNI, "ADD", &node, "c2", Some(&p), &conf).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG, "{e:?}");
    assert!(e.msg.contains("hostIP"), "{e:?}");
    assert!(!p.ip(&["link", "show"]).contains("eth0"), "nothing made in the pod");
    assert!(!dir.path().join("weft-test/10.211.0.3").exists(), "no address reserved");
}

#[test]
fn conflist_chains_prev_result_and_ipam_can_be_delegated() {
    // weft-cni first, then the reference `tuning` plugin, which needs our result as prevResult.
    let node = Netns::new("node");
    let p = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(WEFT_CNI, bin_dir.path().join("weft-cni")).unwrap();
    let cni_path = format!("{}:/usr/lib/cni", bin_dir.path().display());
    let list = weft_cni::runtime::ConfList::parse(&json!({
        "cniVersion": "1.0.0", "name": "chain",
        "plugins": [
            {"type": "weft-cni", "bridge": "cni-ch", "isGateway": true,
             // IPAM delegated to the reference `static` plugin on CNI_PATH.
             "ipam": {"type": "static", "addresses": [{"address": "10.209.0.7/24", "gateway": "10.209.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}}
        ]
    }))
    .unwrap();
    let nodef = node.file();
    let path = p.path();
    let base = weft_cni::runtime::Invocation {
        plugin: std::path::Path::new(""),
        command: "ADD",
        container_id: "c1",
        netns: &path,
        ifname: "eth0",
        args: "",
        cni_path: &cni_path,
        node_netns: Some(&nodef),
    };
    let r = list.add(&base, &json!({})).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.209.0.7/24");
    assert!(p.ip(&["addr", "show", "eth0"]).contains("10.209.0.7/24"));
    let v = p.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects"]);
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "0", "tuning ran with our prevResult");
    list.check(&base, &r, &json!({})).unwrap();
    list.del(&base, Some(&r), &json!({})).unwrap();
    assert!(!p.ip(&["link", "show"]).contains("eth0"));
    drop(dir);
}
