//! The CNI protocol's data: network configuration, results (with conversion between spec
//! versions) and errors, as the CNI specification 1.1.0 gives them. Pure: no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const CURRENT_VERSION: &str = "1.1.0";

/// The spec's well-known error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED: u32 = 51;
}

/// A CNI error result (`{"cniVersion", "code", "msg", "details"}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: details.into() }
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg, "")
    }
    pub fn io(msg: impl Into<String>, details: impl std::fmt::Display) -> Self {
        Self::new(code::IO, msg, details.to_string())
    }
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

pub type CniResult<T> = Result<T, CniError>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    #[serde(default, rename = "rangeStart", skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, rename = "rangeEnd", skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub ranges: Vec<Vec<Range>>,
    /// The old single-range form of host-local.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    #[serde(default, rename = "rangeStart")]
    pub range_start: Option<IpAddr>,
    #[serde(default, rename = "rangeEnd")]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, rename = "dataDir")]
    pub data_dir: Option<String>,
}

impl Ipam {
    /// The range sets, with the old single-subnet form folded in.
    pub fn range_sets(&self) -> Vec<Vec<Range>> {
        let mut sets = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            sets.insert(
                0,
                vec![Range { subnet, range_start: self.range_start, range_end: self.range_end, gateway: self.gateway }],
            );
        }
        sets
    }
}

/// libcni's `ValidateContainerID` and `ValidateNetworkName`: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`. Such a
/// name is one path component (never `.` or `..`) and needs no quoting in nft text.
pub fn valid_cni_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// What is wrong with an interface name, if anything: libcni's `ValidateInterfaceName` (the
/// kernel's `dev_valid_name`: 1-15 bytes, not `.` or `..`, no '/', ':' or whitespace), and, being
/// stricter than both, no quotes, backslashes or control characters.
pub fn interface_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("is empty");
    }
    if s.len() > 15 {
        return Some("is longer than 15 bytes (IFNAMSIZ-1)");
    }
    if s == "." || s == ".." {
        return Some("is \".\" or \"..\"");
    }
    if s.chars().any(|c| matches!(c, '/' | ':' | '"' | '\'' | '\\') || c.is_whitespace() || c.is_control()) {
        return Some("contains '/', ':', whitespace, a quote, a backslash or a control character");
    }
    None
}

/// A `portMappings` protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A port mapping with every field checked and parsed: nothing of it reaches nft as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    pub proto: Proto,
    pub host_port: u16,
    pub container_port: u16,
    /// Only traffic to this address is forwarded; `None` (hostIP empty, 0.0.0.0 or ::) means any
    /// local address, as the reference `portmap` plugin does.
    pub host_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn tcp() -> String {
    "tcp".into()
}

impl PortMapping {
    pub fn check(&self, i: usize) -> CniResult<HostPort> {
        let bad = |what: String| CniError::config(format!("runtimeConfig.portMappings[{i}]: {what}"));
        let proto = match self.protocol.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            _ => return Err(bad(format!("protocol {:?} is not tcp, udp or sctp", self.protocol))),
        };
        if self.host_port == 0 || self.container_port == 0 {
            return Err(bad("hostPort and containerPort must be 1-65535".into()));
        }
        let host_ip = match self.host_ip.as_deref().unwrap_or("") {
            "" => None,
            h => match h.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => return Err(bad(format!("hostIP {h:?} is not an IP address: give one, or leave it empty"))),
            },
        };
        Ok(HostPort { proto, host_port: self.host_port, container_port: self.container_port, host_ip })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default, rename = "portMappings")]
    pub port_mappings: Vec<PortMapping>,
}

impl RuntimeConfig {
    /// The host ports, each checked (capability arguments are input like any other).
    pub fn validate(&self) -> CniResult<Vec<HostPort>> {
        self.port_mappings.iter().enumerate().map(|(i, m)| m.check(i)).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The configuration of the `bridge` plugin (and ours), as the runtime sends it on stdin.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default, rename = "isGateway")]
    pub is_gateway: bool,
    #[serde(default, rename = "isDefaultGateway")]
    pub is_default_gateway: bool,
    #[serde(default, rename = "forceAddress")]
    pub force_address: bool,
    #[serde(default, rename = "ipMasq")]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default, rename = "hairpinMode")]
    pub hairpin_mode: bool,
    #[serde(default, rename = "promiscMode")]
    pub promisc_mode: bool,
    #[serde(default)]
    pub ipam: Option<Ipam>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: RuntimeConfig,
    /// GC's list of attachments still in use; `None` when the key is absent (see `plugin::gc`).
    #[serde(default, rename = "cni.dev/valid-attachments", deserialize_with = "null_is_empty")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The same list under the name the spec first gave it (libcni sends both).
    #[serde(default, rename = "cni.dev/attachments", deserialize_with = "null_is_empty")]
    pub attachments: Option<Vec<Attachment>>,
}

/// A present key holding `null` is an empty list: libcni sends a Go nil slice so.
fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Attachment>>, D::Error> {
    Ok(Some(Option::<Vec<Attachment>>::deserialize(d)?.unwrap_or_default()))
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> CniResult<NetConf> {
        let decode = |e: serde_json::Error| {
            CniError::new(code::DECODE, "failed to decode the network configuration", e.to_string())
        };
        let v: Value = serde_json::from_slice(stdin).map_err(decode)?;
        // serde would read a struct from an array too; the spec's configuration is an object.
        if !v.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
                "give {\"cniVersion\": ..., \"name\": ..., \"type\": ...} on stdin",
            ));
        }
        let c: NetConf = serde_json::from_value(v).map_err(decode)?;
        if !c.cni_version.is_empty() && !SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {:?} is not supported", c.cni_version),
                format!("use one of {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if c.name.is_empty() {
            return Err(CniError::config("the network configuration has no \"name\": give the network a name"));
        }
        // The name becomes a directory and part of nft text: libcni's rule keeps it one plain word.
        if !valid_cni_name(&c.name) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("invalid characters in network name {:?}", c.name),
                "use letters, digits, '_', '.' and '-', starting with a letter or digit",
            ));
        }
        if let Some(b) = &c.bridge
            && let Some(why) = interface_name_problem(b)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("bridge name {b:?} {why}"),
                "give \"bridge\" a valid interface name, e.g. \"cni0\"",
            ));
        }
        if let Some(m) = c.mtu
            && !(68..=65535).contains(&m)
        {
            return Err(CniError::config(format!("mtu {m} is out of range: use 68-65535")));
        }
        Ok(c)
    }

    pub fn version(&self) -> &str {
        if self.cni_version.is_empty() { "0.3.0" } else { &self.cni_version }
    }

    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or("cni0")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// A result in the current (1.x) shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniOutput {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Value,
}

impl CniOutput {
    /// The result as a plugin prints it for `version` (0.3.x and 0.4.0 add `version` to each IP).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::to_value(self).expect("result serializes");
        v["cniVersion"] = json!(version);
        if v["dns"].is_null() {
            v["dns"] = json!({});
        }
        if version.starts_with("0.")
            && let Some(ips) = v.get_mut("ips").and_then(|i| i.as_array_mut())
        {
            for ip in ips {
                let fam = if ip["address"].as_str().is_some_and(|a| a.contains(':')) { "6" } else { "4" };
                ip["version"] = json!(fam);
            }
        }
        v
    }

    /// Reads a result of any supported version (a `prevResult`, or a delegated IPAM plugin's output).
    pub fn from_json(v: &Value) -> CniResult<CniOutput> {
        let mut v = v.clone();
        if let Some(ips) = v.get_mut("ips").and_then(|i| i.as_array_mut()) {
            for ip in ips {
                if let Some(o) = ip.as_object_mut() {
                    o.remove("version");
                }
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("cniVersion");
        }
        serde_json::from_value(v)
            .map_err(|e| CniError::new(code::DECODE, "failed to decode a CNI result", e.to_string()))
    }
}

/// The answer to VERSION.
pub fn version_info() -> Value {
    json!({"cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_002_config_parses() {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"bridge","type":"bridge","bridge":"cnio0","isGateway":true,"ipMasq":true,
            "ipam":{"type":"host-local","ranges":[[{"subnet":"10.200.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.bridge_name(), "cnio0");
        assert!(c.is_gateway && c.ip_masq);
        let ipam = c.ipam.unwrap();
        assert_eq!(ipam.range_sets()[0][0].subnet.to_string(), "10.200.0.0/24");
    }

    #[test]
    fn bad_configs_get_spec_errors() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n"}"#).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":5}"#).unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","bridge":"waytoolongbridgename"}"#).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn network_names_are_checked_as_libcni_does() {
        let parse = |name: &str| NetConf::parse(json!({"cniVersion": "1.1.0", "name": name}).to_string().as_bytes());
        for bad in ["a\"\nflush ruleset\n", "a b", "-x", "_x", ".x", "x/y", "../x", "a\r\n", "a'b", "é"] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}: {e:?}");
            assert!(e.msg.contains("name"), "{e:?}");
        }
        for good in ["weft", "a.b_c-d", "9", "Net-1"] {
            parse(good).expect(good);
        }
    }

    #[test]
    fn bridge_names_are_interface_names() {
        let parse =
            |b: &str| NetConf::parse(json!({"cniVersion": "1.1.0", "name": "n", "bridge": b}).to_string().as_bytes());
        for bad in ["..", ".", "a:b", "a\nb", "a\"b"] {
            assert_eq!(parse(bad).expect_err(bad).code, code::INVALID_CONFIG, "{bad:?}");
        }
        parse("cni0").unwrap();
    }

    #[test]
    fn port_mappings_are_checked() {
        let rc = |m: Value| serde_json::from_value::<RuntimeConfig>(json!({"portMappings": [m]})).unwrap().validate();
        for bad in [
            json!({"hostPort": 80, "containerPort": 80, "protocol": "tcp\" ; flush ruleset"}),
            json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}),
            json!({"hostPort": 80, "containerPort": 80, "hostIP": "1.2.3.4\"\nflush ruleset"}),
            json!({"hostPort": 80, "containerPort": 80, "hostIP": "../x"}),
            json!({"hostPort": 0, "containerPort": 80}),
            json!({"hostPort": 80, "containerPort": 0}),
        ] {
            let Err(e) = rc(bad.clone()) else { panic!("{bad} was accepted") };
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}: {e:?}");
            assert!(e.msg.contains("portMappings"), "{e:?}");
        }
        for good in [
            json!({"hostPort": 80, "containerPort": 8080}),
            json!({"hostPort": 80, "containerPort": 8080, "protocol": "UDP", "hostIP": ""}),
            json!({"hostPort": 80, "containerPort": 8080, "protocol": "sctp", "hostIP": "fd00::1"}),
        ] {
            rc(good.clone()).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
    }

    #[test]
    fn results_convert_between_versions() {
        let r = CniOutput {
            interfaces: vec![Interface { name: "eth0".into(), sandbox: "/run/netns/x".into(), ..Default::default() }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "10.0.0.2/24".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
            }],
            routes: vec![Route { dst: "0.0.0.0/0".parse().unwrap(), gw: None }],
            dns: json!({}),
        };
        let v031 = r.to_json("0.3.1");
        assert_eq!(v031["ips"][0]["version"], "4");
        assert_eq!(v031["cniVersion"], "0.3.1");
        let v1 = r.to_json("1.1.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(CniOutput::from_json(&v031).unwrap(), r);
        assert_eq!(CniOutput::from_json(&v1).unwrap(), r);
    }

    /// Arbitrary JSON, nested a few levels, with the configuration's own keys likely.
    fn arb_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("cniVersion".to_string()),
            Just("name".to_string()),
            Just("bridge".to_string()),
            Just("mtu".to_string()),
            Just("ipam".to_string()),
            Just("ranges".to_string()),
            Just("subnet".to_string()),
            Just("runtimeConfig".to_string()),
            Just("portMappings".to_string()),
            Just("hostIP".to_string()),
            Just("cni.dev/valid-attachments".to_string()),
            Just("prevResult".to_string()),
            "[a-zA-Z./\"\\-]{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            prop_oneof![Just("1.1.0".to_string()), Just("10.0.0.0/24".to_string()), any::<String>()]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::vec((key.clone(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = NetConf::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json(v in arb_json()) {
            let mut v = v;
            // Half the cases get a valid header, so the rest of the configuration is reached.
            if let Some(o) = v.as_object_mut().filter(|o| o.len() % 2 == 0) {
                o.insert("cniVersion".into(), json!("1.1.0"));
                o.insert("name".into(), json!("n"));
            }
            if let Ok(c) = NetConf::parse(v.to_string().as_bytes()) {
                // What parses is usable: names are safe and the rest does not panic either.
                prop_assert!(valid_cni_name(&c.name));
                let _ = c.runtime_config.validate();
                let _ = c.ipam.as_ref().map(|i| i.range_sets());
                let _ = c.prev_result.as_ref().map(CniOutput::from_json);
            }
        }
    }
}
