//! weft-cni against Debian's reference `bridge` + `host-local` on the same configuration: the
//! results and the namespace state they leave are equivalent.

mod common;
use common::*;
use serde_json::{Value, json};

const REFERENCE: &str = "/usr/lib/cni/bridge";

/// What a namespace looks like to `ip -j`, reduced to what must match.
fn state(pod: &Netns, node: &Netns, bridge: &str) -> Value {
    let j =
        |ns: &Netns, args: &[&str]| -> Value { serde_json::from_str(&ns.ip(&[&["-j"][..], args].concat())).unwrap() };
    let addrs: Vec<String> = j(pod, &["addr", "show", "eth0"])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    let mut routes: Vec<String> = j(pod, &["route", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap()
            )
        })
        .collect();
    routes.sort();
    let br_addrs: Vec<String> = j(node, &["addr", "show", bridge])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    let ports = j(node, &["link", "show", "master", bridge]).as_array().unwrap().len();
    let eth0_up = j(pod, &["link", "show", "eth0"])[0]["operstate"].clone();
    json!({"pod_addrs": addrs, "pod_routes": routes, "bridge_addrs": br_addrs, "bridge_ports": ports, "eth0": eth0_up})
}

/// A result with the random parts (MACs, veth names, sandbox paths) masked.
fn shape(r: &Value) -> Value {
    let mut r = r.clone();
    for i in r["interfaces"].as_array_mut().unwrap() {
        let o = i.as_object_mut().unwrap();
        o.insert("mac".into(), json!(o.get("mac").map(|m| m.as_str().unwrap().len())));
        if let Some(n) = o.get("name").and_then(|n| n.as_str()).filter(|n| n.starts_with("veth")) {
            o.insert("name".into(), json!(format!("veth+{}", n.len() - 4)));
        }
        if o.contains_key("sandbox") {
            o.insert("sandbox".into(), json!("<netns>"));
        }
    }
    r
}

#[test]
fn same_results_and_state_as_the_reference_plugins() {
    assert!(
        std::path::Path::new(REFERENCE).exists(),
        "install containernetworking-plugins (scripts/install-test-deps)"
    );
    for (version, extra) in [("0.3.1", json!({})), ("1.0.0", json!({"isDefaultGateway": true}))] {
        let mut outs = vec![];
        for (plugin, ty) in [(REFERENCE, "bridge"), (WEFT_CNI, "weft-cni")] {
            let node = Netns::new("node");
            let pods = [Netns::new("p1"), Netns::new("p2")];
            let dir = tempfile::tempdir().unwrap();
            let mut conf = json!({
                "cniVersion": version, "name": "cmp", "type": ty, "bridge": "cnio0", "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "dataDir": dir.path().to_str().unwrap(),
                         "ranges": [[{"subnet": "10.210.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
                "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
            });
            for (k, v) in extra.as_object().unwrap() {
                conf[k] = v.clone();
            }
            if extra.get("isDefaultGateway").is_some() {
                conf["ipam"]["routes"] = json!([]);
            }
            let mut results = vec![];
            for (i, p) in pods.iter().enumerate() {
                results.push(shape(&cni(plugin, "ADD", &node, &format!("c{i}"), Some(p), &conf).unwrap().unwrap()));
            }
            let st = state(&pods[1], &node, "cnio0");
            assert!(pods[0].ping("10.210.0.3".parse().unwrap()), "{ty}: pods reach each other");
            for (i, p) in pods.iter().enumerate() {
                cni(plugin, "DEL", &node, &format!("c{i}"), Some(p), &conf).unwrap();
            }
            let after = node.ip(&["link", "show", "master", "cnio0"]);
            outs.push((results, st, after.trim().is_empty()));
        }
        let (reference, weft) = (&outs[0], &outs[1]);
        assert_eq!(weft.0, reference.0, "cniVersion {version}: results differ");
        assert_eq!(weft.1, reference.1, "cniVersion {version}: namespace state differs");
        assert_eq!(weft.2, reference.2, "cniVersion {version}: DEL leaves the same bridge ports");
    }
}
