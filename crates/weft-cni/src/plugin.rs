//! The plugin's commands, with the reference `bridge` plugin's behaviour: ADD, DEL, CHECK, GC,
//! STATUS, VERSION. IPAM `host-local` is built in; any other IPAM type is delegated to its binary
//! on CNI_PATH as the spec says.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::Value;

use crate::ipam::{HostLocal, Lease};
use crate::net::{self, Netlink};
use crate::spec::{CniError, CniOutput, CniResult, Interface, IpConfig, NetConf, Route, code, version_info};
use crate::{nft, runtime};

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    pub fn from_vars(vars: &HashMap<String, String>) -> Env {
        let g = |k: &str| vars.get(k).cloned().unwrap_or_default();
        Env {
            command: g("CNI_COMMAND"),
            container_id: g("CNI_CONTAINERID"),
            netns: g("CNI_NETNS"),
            ifname: g("CNI_IFNAME"),
            args: g("CNI_ARGS"),
            path: g("CNI_PATH"),
        }
    }

    fn require(&self, what: &[(&str, &str)]) -> CniResult<()> {
        for (name, v) in what {
            if v.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("{name} is not set"),
                    "the runtime must set it for this command",
                ));
            }
        }
        Ok(())
    }
}

/// Runs one command; `Ok` carries what goes to stdout (nothing for DEL, GC and STATUS).
pub async fn run(env: &Env, stdin: &[u8]) -> CniResult<Option<Value>> {
    if env.command == "VERSION" {
        return Ok(Some(version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    // Delegated IPAM plugins get the configuration exactly as it came.
    let raw: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
    match env.command.as_str() {
        "ADD" => add(env, &conf, &raw).await.map(|r| Some(r.to_json(conf.version()))),
        "DEL" => del(env, &conf, &raw).await.map(|_| None),
        "CHECK" => check(env, &conf).await.map(|_| None),
        "GC" => gc(env, &conf, &raw).await.map(|_| None),
        "STATUS" => status(&conf).map(|_| None),
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "set it to ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "use ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
    }
}

fn open_netns(path: &str) -> CniResult<File> {
    File::open(path).map_err(|e| {
        CniError::new(code::UNKNOWN_CONTAINER, format!("cannot open the network namespace {path:?}"), e.to_string())
    })
}

fn ipam_of(conf: &NetConf) -> CniResult<&crate::spec::Ipam> {
    match &conf.ipam {
        Some(i) if !i.type_.is_empty() => Ok(i),
        _ => Err(CniError::config(
            "the network configuration has no \"ipam\" section with a \"type\": add e.g. {\"type\": \"host-local\", \"ranges\": [[{\"subnet\": \"10.244.1.0/24\"}]]}",
        )),
    }
}

fn builtin_ipam(conf: &NetConf) -> bool {
    conf.ipam.as_ref().is_some_and(|i| i.type_ == "host-local")
}

/// IPAM ADD: built-in host-local, or the IPAM binary on CNI_PATH.
async fn ipam_add(env: &Env, conf: &NetConf, stdin: &Value) -> CniResult<(Vec<Lease>, Vec<Route>, Value)> {
    let ipam = ipam_of(conf)?;
    if builtin_ipam(conf) {
        let sets = ipam.range_sets();
        if sets.is_empty() {
            return Err(CniError::config(
                "ipam.ranges is empty: give at least one subnet, e.g. [[{\"subnet\": \"10.244.1.0/24\"}]]",
            ));
        }
        let store = HostLocal::open(ipam.data_dir.as_deref(), &conf.name)?;
        let leases = store.allocate(&sets, &env.container_id, &env.ifname)?;
        return Ok((leases, ipam.routes.clone(), Value::Null));
    }
    let out = runtime::exec_plugin(&ipam.type_, &env.path, "ADD", env, stdin).await?;
    let r = CniOutput::from_json(&out.unwrap_or(Value::Null))?;
    let leases = r
        .ips
        .iter()
        .map(|ip| Lease { address: ip.address, gateway: ip.gateway.unwrap_or_else(|| first_host(ip.address)) })
        .collect();
    Ok((leases, r.routes, r.dns))
}

async fn ipam_del(env: &Env, conf: &NetConf, stdin: &Value) -> CniResult<()> {
    let ipam = ipam_of(conf)?;
    if builtin_ipam(conf) {
        return HostLocal::open(ipam.data_dir.as_deref(), &conf.name)?.release(&env.container_id, &env.ifname);
    }
    runtime::exec_plugin(&ipam.type_, &env.path, "DEL", env, stdin).await.map(|_| ())
}

fn first_host(n: IpNet) -> IpAddr {
    n.hosts().next().unwrap_or(n.addr())
}

fn nl_err(msg: impl Into<String>) -> impl Fn(String) -> CniError {
    let msg = msg.into();
    move |d| CniError::new(code::IO, msg.clone(), d)
}

/// Where per-container state the plugin keeps (host-port undo scripts) lives.
fn state_dir(conf: &NetConf) -> PathBuf {
    let base =
        conf.ipam.as_ref().and_then(|i| i.data_dir.clone()).unwrap_or_else(|| crate::ipam::DEFAULT_DATA_DIR.into());
    Path::new(&base).join(&conf.name)
}

async fn add(env: &Env, conf: &NetConf, raw: &Value) -> CniResult<CniOutput> {
    env.require(&[("CNI_CONTAINERID", &env.container_id), ("CNI_NETNS", &env.netns), ("CNI_IFNAME", &env.ifname)])?;
    let netns = open_netns(&env.netns)?;
    let host = Netlink::here().map_err(nl_err("netlink"))?;
    let pod = Netlink::in_netns(&netns).map_err(nl_err("netlink in the pod's namespace"))?;
    let (leases, routes, ipam_dns) = ipam_add(env, conf, raw).await?;
    let made = AddUndo { env: env.clone(), conf: conf.clone(), raw: raw.clone() };
    match wire(env, conf, &host, &pod, &netns, &leases, &routes).await {
        Ok(mut out) => {
            if out.dns.is_null() {
                out.dns = conf.dns.clone().filter(|d| !d.is_null()).unwrap_or(ipam_dns);
            }
            Ok(out)
        }
        Err(e) => {
            // Nothing half-made: take back the addresses and the veth.
            made.undo(&pod).await;
            Err(e)
        }
    }
}

struct AddUndo {
    env: Env,
    conf: NetConf,
    raw: Value,
}

impl AddUndo {
    async fn undo(self, pod: &Netlink) {
        if let Ok(Some(l)) = pod.link(&self.env.ifname).await {
            let _ = pod.del_link(l.index).await;
        }
        let _ = ipam_del(&self.env, &self.conf, &self.raw).await;
    }
}

async fn wire(
    env: &Env,
    conf: &NetConf,
    host: &Netlink,
    pod: &Netlink,
    netns: &File,
    leases: &[Lease],
    ipam_routes: &[Route],
) -> CniResult<CniOutput> {
    let is_gateway = conf.is_gateway || conf.is_default_gateway;
    let br = host.ensure_bridge(conf.bridge_name(), conf.mtu, conf.promisc_mode).await.map_err(nl_err("bridge"))?;
    let has_v6 = leases.iter().any(|l| l.address.addr().is_ipv6());
    if has_v6 {
        let _ = net::sysctl_in(None, &format!("net/ipv6/conf/{}/accept_dad", conf.bridge_name()), "0");
    }
    // The gateway addresses on the bridge (reference `ensureAddr`, with forceAddress). Usually
    // they are there already, which one add (EEXIST) tells without listing the bridge's addresses.
    if is_gateway {
        for l in leases {
            let want = IpNet::new(l.gateway, l.address.prefix_len()).map_err(|e| CniError::config(e.to_string()))?;
            if !host.add_address(br.index, want).await.map_err(nl_err("bridge address"))? {
                continue;
            }
            let have = host.addresses(br.index).await.map_err(nl_err("bridge addresses"))?;
            for a in have.iter().filter(|a| **a != want && a.addr().is_ipv4() == want.addr().is_ipv4()) {
                if want.addr().is_ipv4() || a.contains(&want.addr()) || want.contains(&a.addr()) {
                    if conf.force_address {
                        host.del_address(br.index, *a).await.map_err(nl_err("bridge address"))?;
                    } else {
                        let _ = host.del_address(br.index, want).await;
                        return Err(CniError::new(
                            code::IO,
                            format!("{:?} already has an IP address different from {want}", conf.bridge_name()),
                            "set \"forceAddress\": true to replace it, or fix the subnet",
                        ));
                    }
                }
            }
        }
        let _ = net::sysctl_in(None, "net/ipv4/ip_forward", "1");
        if has_v6 {
            let _ = net::sysctl_in(None, "net/ipv6/conf/all/forwarding", "1");
        }
    }
    // The veth pair, the pod end created inside the pod's namespace.
    let host_name = net::host_veth_name();
    match host.create_veth(&host_name, &env.ifname, netns, conf.mtu).await {
        Ok(()) => {}
        Err(d) if d.contains("File exists") => {
            // A random name can collide in the node; the pod's interface name can exist already.
            if pod.link(&env.ifname).await.map_err(nl_err("netlink"))?.is_some() {
                return Err(CniError::new(
                    code::IO,
                    format!("container veth name provided ({}) already exists", env.ifname),
                    "DEL the attachment first, or use another CNI_IFNAME",
                ));
            }
            return Err(CniError::new(code::TRY_AGAIN, "the host veth name collided", d));
        }
        Err(d) => return Err(CniError::new(code::IO, "veth", d)),
    }
    let hv = host
        .link(&host_name)
        .await
        .map_err(nl_err("veth"))?
        .ok_or_else(|| CniError::io("veth", "host end vanished"))?;
    host.set_controller_up(hv.index, br.index).await.map_err(nl_err("veth"))?;
    if conf.hairpin_mode {
        host.set_hairpin(hv.index).await.map_err(nl_err("hairpin"))?;
    }
    let pv =
        pod.link(&env.ifname).await.map_err(nl_err("veth"))?.ok_or_else(|| CniError::io("veth", "pod end vanished"))?;
    if has_v6 {
        // Duplicate address detection off on the pod interface, as the reference does.
        let _ = net::sysctl_in(Some(netns), &format!("net/ipv6/conf/{}/accept_dad", env.ifname), "0");
    }
    for l in leases {
        pod.add_address(pv.index, l.address).await.map_err(nl_err("pod address"))?;
    }
    pod.set_up(pv.index).await.map_err(nl_err("pod link"))?;
    // Routes: IPAM's, via the range's gateway of the same family; plus the default route.
    let mut routes: Vec<Route> = vec![];
    for r in ipam_routes {
        let gw =
            r.gw.or_else(|| leases.iter().find(|l| l.gateway.is_ipv4() == r.dst.addr().is_ipv4()).map(|l| l.gateway));
        pod.add_route(r.dst, gw, pv.index).await.map_err(nl_err("pod route"))?;
        routes.push(r.clone());
    }
    if conf.is_default_gateway {
        for l in leases {
            let dst: IpNet = if l.gateway.is_ipv4() { "0.0.0.0/0".parse().unwrap() } else { "::/0".parse().unwrap() };
            if routes.iter().any(|r| r.dst == dst) {
                continue;
            }
            pod.add_route(dst, Some(l.gateway), pv.index).await.map_err(nl_err("default route"))?;
            routes.push(Route { dst, gw: Some(l.gateway) });
        }
    }
    let subnets: Vec<IpNet> = leases.iter().map(|l| l.address.trunc()).collect();
    if conf.ip_masq {
        nft::ensure_masquerade(&conf.name, &subnets)?;
    }
    if !conf.runtime_config.port_mappings.is_empty() {
        let ips: Vec<IpAddr> = leases.iter().map(|l| l.address.addr()).collect();
        let undo = nft::add_host_ports(&conf.runtime_config.port_mappings, &ips)?;
        let dir = state_dir(conf).join("hostports");
        std::fs::create_dir_all(&dir).map_err(|e| CniError::io("host-port state", e))?;
        std::fs::write(dir.join(&env.container_id), undo).map_err(|e| CniError::io("host-port state", e))?;
    }
    Ok(CniOutput {
        interfaces: vec![
            Interface { name: br.name.clone(), mac: br.mac.clone(), ..Default::default() },
            Interface { name: hv.name.clone(), mac: hv.mac.clone(), ..Default::default() },
            Interface {
                name: env.ifname.clone(),
                mac: pv.mac.clone(),
                sandbox: env.netns.clone(),
                ..Default::default()
            },
        ],
        ips: leases
            .iter()
            .map(|l| IpConfig { interface: Some(2), address: l.address, gateway: is_gateway.then_some(l.gateway) })
            .collect(),
        routes,
        dns: Value::Null,
    })
}

async fn del(env: &Env, conf: &NetConf, raw: &Value) -> CniResult<()> {
    env.require(&[("CNI_CONTAINERID", &env.container_id), ("CNI_IFNAME", &env.ifname)])?;
    if conf.ipam.is_some() {
        ipam_del(env, conf, raw).await?;
    }
    let undo = state_dir(conf).join("hostports").join(&env.container_id);
    if let Ok(script) = std::fs::read_to_string(&undo) {
        if !script.is_empty() {
            // Elements already gone are not an error for DEL.
            let _ = nft::apply(&script);
        }
        let _ = std::fs::remove_file(&undo);
    }
    // The netns may be gone already; then so is the veth.
    if env.netns.is_empty() {
        return Ok(());
    }
    let Ok(netns) = File::open(&env.netns) else { return Ok(()) };
    let pod = Netlink::in_netns(&netns).map_err(nl_err("netlink in the pod's namespace"))?;
    if let Some(l) = pod.link(&env.ifname).await.map_err(nl_err("netlink"))? {
        pod.del_link(l.index).await.map_err(nl_err("deleting the pod's veth"))?;
    }
    Ok(())
}

async fn check(env: &Env, conf: &NetConf) -> CniResult<()> {
    env.require(&[("CNI_CONTAINERID", &env.container_id), ("CNI_NETNS", &env.netns), ("CNI_IFNAME", &env.ifname)])?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult: the runtime must pass the ADD result"))?;
    let prev = CniOutput::from_json(prev)?;
    let netns = open_netns(&env.netns)?;
    let pod = Netlink::in_netns(&netns).map_err(nl_err("netlink in the pod's namespace"))?;
    let Some(pv) = pod.link(&env.ifname).await.map_err(nl_err("netlink"))? else {
        return Err(CniError::new(
            code::IO,
            format!("interface {} is missing from the pod's namespace", env.ifname),
            "",
        ));
    };
    let have = pod.addresses(pv.index).await.map_err(nl_err("addresses"))?;
    let idx = prev.interfaces.iter().position(|i| i.name == env.ifname && !i.sandbox.is_empty());
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none() || ip.interface == idx) {
        if !have.contains(&ip.address) {
            return Err(CniError::new(
                code::IO,
                format!("address {} is missing from {} in the pod's namespace", ip.address, env.ifname),
                format!("it has {}", have.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
            ));
        }
    }
    let routes = pod.routes().await.map_err(nl_err("routes"))?;
    for r in &prev.routes {
        if !routes.iter().any(|(dst, _, _)| *dst == r.dst) {
            return Err(CniError::new(code::IO, format!("route to {} is missing from the pod's namespace", r.dst), ""));
        }
    }
    // The host end is still on the bridge.
    let host = Netlink::here().map_err(nl_err("netlink"))?;
    let br = host.link(conf.bridge_name()).await.map_err(nl_err("netlink"))?;
    let Some(br) = br else {
        return Err(CniError::new(code::IO, format!("bridge {} is missing", conf.bridge_name()), ""));
    };
    if let Some(hv) = prev.interfaces.iter().find(|i| i.sandbox.is_empty() && i.name != br.name) {
        match host.link(&hv.name).await.map_err(nl_err("netlink"))? {
            Some(l) if l.controller == Some(br.index) => {}
            _ => {
                return Err(CniError::new(code::IO, format!("host veth {} is not on bridge {}", hv.name, br.name), ""));
            }
        }
    }
    Ok(())
}

async fn gc(env: &Env, conf: &NetConf, raw: &Value) -> CniResult<()> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    if builtin_ipam(conf) {
        let ipam = ipam_of(conf)?;
        HostLocal::open(ipam.data_dir.as_deref(), &conf.name)?.gc(&valid)?;
    } else if let Some(ipam) = &conf.ipam {
        runtime::exec_plugin(&ipam.type_, &env.path, "GC", env, raw).await?;
    }
    // Host-port undo scripts of attachments that are gone.
    if let Ok(rd) = std::fs::read_dir(state_dir(conf).join("hostports")) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if !valid.iter().any(|a| a.container_id == id) {
                if let Ok(script) = std::fs::read_to_string(e.path()) {
                    let _ = nft::apply(&script);
                }
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> CniResult<()> {
    if builtin_ipam(conf) {
        let ipam = ipam_of(conf)?;
        HostLocal::open(ipam.data_dir.as_deref(), &conf.name)
            .map_err(|e| CniError::new(code::NOT_AVAILABLE, "the IPAM store is not usable", e.to_string()))?;
        for set in ipam.range_sets() {
            for r in &set {
                crate::ipam::canonicalize(r)?;
            }
        }
    }
    Ok(())
}
