//! A runtime that executes plugins in network namespaces a test made (`weft_testkit::Netns`:
//! uniquely named, removed on drop, also when the test panics).

#![allow(dead_code)]

use std::net::IpAddr;

use serde_json::Value;
use weft_cni::runtime::Invocation;
use weft_cni::spec::CniError;
pub use weft_testkit::Netns;

pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");

/// Runs `plugin` as a runtime on the node `node` would.
pub fn cni(
    plugin: &str,
    cmd: &str,
    node: &Netns,
    container: &str,
    pod: Option<&Netns>,
    conf: &Value,
) -> Result<Option<Value>, CniError> {
    let f = node.file();
    let netns = pod.map(|p| p.path()).unwrap_or_default();
    Invocation {
        plugin: std::path::Path::new(plugin),
        command: cmd,
        container_id: container,
        netns: &netns,
        ifname: "eth0",
        args: "",
        cni_path: "/usr/lib/cni",
        node_netns: Some(&f),
    }
    .run(conf)
}

pub fn bridge_conf(version: &str, data_dir: &str, subnet: &str, masq: bool) -> Value {
    serde_json::json!({
        "cniVersion": version, "name": "weft-test", "type": "weft-cni", "bridge": "cnio0",
        "isGateway": true, "ipMasq": masq,
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
    })
}

pub fn ip_of(result: &Value) -> IpAddr {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
}
