//! The plugin's commands, with the reference `bridge` plugin's behaviour: ADD, DEL, CHECK, GC,
//! STATUS, VERSION. IPAM `host-local` is built in; any other IPAM type is delegated to its binary
//! on CNI_PATH as the spec says.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::ipam::{HostLocal, Lease};
use crate::net::{self, Netlink};
use crate::spec::{
    CniError, CniOutput, CniResult, HostPort, Interface, IpConfig, NetConf, Route, code, interface_name_problem,
    valid_cni_name, version_info,
};
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
    /// How long a delegated plugin or `nft` may run (`WEFT_CNI_EXEC_TIMEOUT_MS`; default 30 s).
    pub exec_timeout: Option<Duration>,
}

/// A delegated plugin or `nft` that runs longer than this is hung: killed, and the command fails.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

fn invalid_env(name: &str, value: &str, why: &str, fix: &str) -> CniError {
    CniError::new(code::INVALID_ENV, format!("{name} {value:?} {why}"), fix)
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
            exec_timeout: g("WEFT_CNI_EXEC_TIMEOUT_MS").parse().ok().filter(|ms| *ms > 0).map(Duration::from_millis),
        }
    }

    pub fn exec_timeout(&self) -> Duration {
        self.exec_timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT)
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

    /// Every CNI_* value the command uses, checked before any is used: the container ID names
    /// files, the interface name goes into sysctl paths, all of them reach delegated plugins.
    fn validate(&self) -> CniResult<()> {
        let attachment = matches!(self.command.as_str(), "ADD" | "DEL" | "CHECK");
        if attachment {
            self.require(&[("CNI_CONTAINERID", &self.container_id), ("CNI_IFNAME", &self.ifname)])?;
            if self.command != "DEL" {
                self.require(&[("CNI_NETNS", &self.netns)])?;
            }
        }
        if !self.container_id.is_empty() {
            check_container_id(&self.container_id)?;
        }
        if attachment && let Some(why) = interface_name_problem(&self.ifname) {
            return Err(invalid_env("CNI_IFNAME", &self.ifname, why, "give a valid interface name, e.g. eth0"));
        }
        if !self.netns.is_empty() && !valid_netns_path(&self.netns) {
            return Err(invalid_env(
                "CNI_NETNS",
                &self.netns,
                "is not a plain absolute path",
                "give the namespace's path, e.g. /run/netns/NAME, without '..', quotes or control characters",
            ));
        }
        check_cni_args(&self.args)
    }
}

/// libcni's `ValidateContainerID` (code 4, as libcni gives it).
fn check_container_id(id: &str) -> CniResult<()> {
    if valid_cni_name(id) {
        return Ok(());
    }
    Err(invalid_env(
        "CNI_CONTAINERID",
        id,
        "has invalid characters",
        "use letters, digits, '_', '.' and '-', starting with a letter or digit",
    ))
}

fn plain_text(s: &str) -> bool {
    !s.chars().any(|c| matches!(c, '"' | '\'' | '\\' | '`') || c.is_control())
}

fn valid_netns_path(p: &str) -> bool {
    p.starts_with('/') && plain_text(p) && !p.split('/').any(|seg| seg == "..")
}

/// CNI_ARGS is `KEY=VALUE` pairs separated by ';' (the spec: "alphanumeric key-value pairs").
fn check_cni_args(args: &str) -> CniResult<()> {
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let bad = |why: &str| {
            invalid_env("CNI_ARGS", args, &format!("has a bad pair {pair:?}: {why}"), "use KEY=VALUE;KEY=VALUE")
        };
        let Some((k, v)) = pair.split_once('=') else { return Err(bad("no '='")) };
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            return Err(bad("the key is not alphanumeric"));
        }
        if !plain_text(v) || v.split('/').any(|seg| seg == "..") {
            return Err(bad("the value has '..', a quote, a backslash or a control character"));
        }
    }
    Ok(())
}

/// Runs one command; `Ok` carries what goes to stdout (nothing for DEL, GC and STATUS).
pub async fn run(env: &Env, stdin: &[u8]) -> CniResult<Option<Value>> {
    if env.command == "VERSION" {
        return Ok(Some(version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    env.validate()?;
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
    let out = runtime::exec_plugin(&ipam.type_, "ADD", env, stdin).await?;
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
    runtime::exec_plugin(&ipam.type_, "DEL", env, stdin).await.map(|_| ())
}

fn first_host(n: IpNet) -> IpAddr {
    n.hosts().next().unwrap_or(n.addr())
}

fn nl_err(msg: impl Into<String>) -> impl Fn(net::Error) -> CniError {
    let msg = msg.into();
    move |d| CniError::new(code::IO, msg.clone(), d.to_string())
}

/// Where per-container state the plugin keeps (host-port undo scripts) lives.
fn state_dir(conf: &NetConf) -> PathBuf {
    let base =
        conf.ipam.as_ref().and_then(|i| i.data_dir.clone()).unwrap_or_else(|| crate::ipam::DEFAULT_DATA_DIR.into());
    Path::new(&base).join(&conf.name)
}

/// The host-port undo script of a container. Checked here too: this path is read, fed to nft
/// and removed, so an ID that is not one plain path component must never reach it.
fn hostport_file(conf: &NetConf, container_id: &str) -> CniResult<PathBuf> {
    check_container_id(container_id)?;
    Ok(state_dir(conf).join("hostports").join(container_id))
}

async fn add(env: &Env, conf: &NetConf, raw: &Value) -> CniResult<CniOutput> {
    // Checked before anything is made, so a bad mapping leaves nothing to undo.
    let ports = conf.runtime_config.validate()?;
    let netns = open_netns(&env.netns)?;
    let host = Netlink::here().map_err(nl_err("netlink"))?;
    let pod = Netlink::in_netns(&netns).map_err(nl_err("netlink in the pod's namespace"))?;
    let (leases, routes, ipam_dns) = ipam_add(env, conf, raw).await?;
    let made = AddUndo { env: env.clone(), conf: conf.clone(), raw: raw.clone() };
    match wire(env, conf, &host, &pod, &netns, &leases, &routes, &ports).await {
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

#[allow(clippy::too_many_arguments)]
async fn wire(
    env: &Env,
    conf: &NetConf,
    host: &Netlink,
    pod: &Netlink,
    netns: &File,
    leases: &[Lease],
    ipam_routes: &[Route],
    ports: &[HostPort],
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
        Err(d) if d.is_exists() => {
            // A random name can collide in the node; the pod's interface name can exist already.
            if pod.link(&env.ifname).await.map_err(nl_err("netlink"))?.is_some() {
                return Err(CniError::new(
                    code::IO,
                    format!("container veth name provided ({}) already exists", env.ifname),
                    "DEL the attachment first, or use another CNI_IFNAME",
                ));
            }
            return Err(CniError::new(code::TRY_AGAIN, "the host veth name collided", d.to_string()));
        }
        Err(d) => return Err(CniError::new(code::IO, "veth", d.to_string())),
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
    if !ports.is_empty() {
        let ips: Vec<IpAddr> = leases.iter().map(|l| l.address.addr()).collect();
        let undo = nft::add_host_ports(ports, &ips)?;
        let file = hostport_file(conf, &env.container_id)?;
        let dir = file.parent().expect("a state file has a directory");
        std::fs::create_dir_all(dir).map_err(|e| CniError::io("host-port state", e))?;
        let undo = serde_json::to_vec(&undo).map_err(|e| CniError::new(code::IO, "host-port state", e.to_string()))?;
        std::fs::write(&file, undo).map_err(|e| CniError::io("host-port state", e))?;
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
    if conf.ipam.is_some() {
        ipam_del(env, conf, raw).await?;
    }
    let undo = hostport_file(conf, &env.container_id)?;
    if undo.exists() {
        remove_host_ports(&undo);
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

/// The attachments GC must keep. SPEC.md 1.1.0, "GC: Clean up any stale resources": the runtime
/// provides the configuration with "an additional key; `cni.dev/valid-attachments`", and the plugin
/// "may then remove any resources related to attachments that do not exist in this set". Without
/// the key there is no set, so nothing is proven stale: an error, never "free everything".
/// (A present `null` is libcni's empty list; `cni.dev/attachments` is the spec's first spelling.)
fn valid_attachments(conf: &NetConf) -> CniResult<&[crate::spec::Attachment]> {
    conf.valid_attachments.as_deref().or(conf.attachments.as_deref()).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC without \"cni.dev/valid-attachments\": nothing freed",
            "the runtime must list the attachments still in use (an empty list frees everything)",
        )
    })
}

/// Removes the host ports kept in a pod's state file (what is already gone is no error, for
/// DEL and GC must be repeatable), then the file. A file in an older or unreadable format is
/// dropped: its entries stay in the map until the table is flushed.
fn remove_host_ports(file: &Path) {
    if let Ok(bytes) = std::fs::read(file)
        && let Ok(entries) = serde_json::from_slice::<Vec<nft::HostPortEntry>>(&bytes)
    {
        nft::remove_host_ports(&entries);
    }
    let _ = std::fs::remove_file(file);
}

async fn gc(env: &Env, conf: &NetConf, raw: &Value) -> CniResult<()> {
    let valid = valid_attachments(conf)?;
    if builtin_ipam(conf) {
        let ipam = ipam_of(conf)?;
        HostLocal::open(ipam.data_dir.as_deref(), &conf.name)?.gc(valid)?;
    } else if let Some(ipam) = &conf.ipam {
        runtime::exec_plugin(&ipam.type_, "GC", env, raw).await?;
    }
    // Host-port undo scripts of attachments that are gone.
    if let Ok(rd) = std::fs::read_dir(state_dir(conf).join("hostports")) {
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if !valid.iter().any(|a| a.container_id == id) {
                remove_host_ports(&e.path());
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
        for (idx, set) in ipam.range_sets().iter().enumerate() {
            let ranges: Vec<_> = set.iter().map(crate::ipam::canonicalize).collect::<CniResult<_>>()?;
            crate::ipam::check_set(&ranges, idx)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Attachment;
    use serde_json::json;

    fn env(command: &str, vars: &[(&str, &str)]) -> Env {
        let mut m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.insert("CNI_COMMAND".into(), command.into());
        Env::from_vars(&m)
    }

    fn run_now(env: &Env, conf: &Value) -> CniResult<Option<Value>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(env, conf.to_string().as_bytes()))
    }

    fn conf(dir: &Path) -> Value {
        json!({"cniVersion": "1.1.0", "name": "net", "type": "weft-cni",
               "ipam": {"type": "host-local", "dataDir": dir.to_str().unwrap(), "ranges": [[{"subnet": "10.30.0.0/24"}]]}})
    }

    #[test]
    fn del_refuses_a_container_id_that_climbs_out_of_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        // DEL would feed <dataDir>/net/hostports/<id> to nft and remove it.
        let victim = d.path().join("victim");
        std::fs::write(&victim, "").unwrap();
        let e = run_now(&env("DEL", &[("CNI_CONTAINERID", "../../victim"), ("CNI_IFNAME", "eth0")]), &conf(d.path()))
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV, "{e:?}");
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e:?}");
        assert!(victim.exists(), "the file outside the state directory is untouched");
    }

    #[test]
    fn container_ids_are_checked_as_libcni_does() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../x", "a/b", ".hidden", "-x", "_x", "a b", "a\nb", "a\r\nb", "a\"b", "a'b", "a;b", "a\u{0}b", "é"]
        {
            let e = run_now(&env("DEL", &[("CNI_CONTAINERID", bad), ("CNI_IFNAME", "eth0")]), &conf(d.path()))
                .expect_err(bad);
            assert_eq!(e.code, code::INVALID_ENV, "{bad:?}: {e:?}");
        }
        for good in ["c1", "9", "a.b_c-d", "0123456789abcdef0123456789abcdef", "A.."] {
            run_now(&env("DEL", &[("CNI_CONTAINERID", good), ("CNI_IFNAME", "eth0")]), &conf(d.path())).expect(good);
        }
    }

    #[test]
    fn ifnames_are_checked_as_libcni_does() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../../x",
            "a:b",
            "a b",
            "a\tb",
            "eth0\n",
            "a\u{a0}b",
            "sixteen-chars-xx",
            "a\"b",
            "a'b",
            "a\u{1}b",
        ] {
            let e = run_now(&env("DEL", &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", bad)]), &conf(d.path()))
                .expect_err(bad);
            assert_eq!(e.code, code::INVALID_ENV, "{bad:?}: {e:?}");
            assert!(e.msg.contains("CNI_IFNAME"), "{e:?}");
        }
        for good in ["eth0", "net1", "a.b", "fifteen-chars-x", "veth-1_2"] {
            run_now(&env("DEL", &[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", good)]), &conf(d.path())).expect(good);
        }
    }

    #[test]
    fn netns_paths_and_cni_args_with_traversal_newlines_or_quotes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let base = [("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")];
        for (var, bad) in [
            ("CNI_NETNS", "/run/netns/../../etc/passwd"),
            ("CNI_NETNS", "run/netns/x"),
            ("CNI_NETNS", "/run/netns/x\ny"),
            ("CNI_NETNS", "/run/netns/x\"y"),
            ("CNI_ARGS", "K8S_POD_NAME=../../x"),
            ("CNI_ARGS", "K8S_POD_NAME=a\r\nb"),
            ("CNI_ARGS", "K8S_POD_NAME=\"a\""),
            ("CNI_ARGS", "novalue"),
            ("CNI_ARGS", "a b=c"),
        ] {
            let e = run_now(&env("DEL", &[base[0], base[1], (var, bad)]), &conf(d.path())).expect_err(bad);
            assert_eq!(e.code, code::INVALID_ENV, "{var}={bad:?}: {e:?}");
            assert!(e.msg.contains(var), "{e:?}");
        }
        let ok = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IP=10.0.0.5/24";
        run_now(
            &env("DEL", &[base[0], base[1], ("CNI_ARGS", ok), ("CNI_NETNS", "/run/netns/weft-gone")]),
            &conf(d.path()),
        )
        .unwrap();
    }

    fn reserved(dir: &Path) -> usize {
        HostLocal::open(Some(dir.to_str().unwrap()), "net").unwrap().reservations().len()
    }

    #[test]
    fn gc_without_valid_attachments_frees_nothing() {
        let d = tempfile::tempdir().unwrap();
        let h = HostLocal::open(Some(d.path().to_str().unwrap()), "net").unwrap();
        let sets = conf(d.path())["ipam"]["ranges"].clone();
        let sets: Vec<Vec<crate::spec::Range>> = serde_json::from_value(sets).unwrap();
        for id in ["c1", "c2"] {
            h.allocate(&sets, id, "eth0").unwrap();
        }
        let e = run_now(&env("GC", &[]), &conf(d.path())).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{e:?}");
        assert!(e.msg.contains("cni.dev/valid-attachments"), "{e:?}");
        assert_eq!(reserved(d.path()), 2, "a GC that names no valid attachments frees nothing");
        // The old spec text's key (libcni sends both).
        let mut c = conf(d.path());
        c["cni.dev/attachments"] = json!([Attachment { container_id: "c1".into(), ifname: "eth0".into() }]);
        run_now(&env("GC", &[]), &c).unwrap();
        assert_eq!(reserved(d.path()), 1);
        // libcni encodes an empty list as null: nothing is valid any more.
        let mut c = conf(d.path());
        c["cni.dev/valid-attachments"] = Value::Null;
        run_now(&env("GC", &[]), &c).unwrap();
        assert_eq!(reserved(d.path()), 0);
    }

    #[test]
    fn a_hung_delegated_ipam_plugin_is_killed_after_the_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().unwrap();
        let kid = bin.path().join("kid");
        let script = format!("#!/bin/sh\nsleep 20 &\necho $! > {}\nwait\n", kid.display());
        let plugin = bin.path().join("hang");
        std::fs::write(&plugin, script).unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = tempfile::tempdir().unwrap();
        let mut c = conf(d.path());
        c["ipam"] = json!({"type": "hang"});
        c["cni.dev/valid-attachments"] = json!([]);
        let e = env("GC", &[("CNI_PATH", bin.path().to_str().unwrap()), ("WEFT_CNI_EXEC_TIMEOUT_MS", "300")]);
        let t = std::time::Instant::now();
        let err = run_now(&e, &c).unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "returned after {:?}", t.elapsed());
        assert!(err.msg.contains("hang") && err.msg.contains("did not finish"), "{err:?}");
        // The plugin's own children went with it.
        let pid = std::fs::read_to_string(&kid).unwrap().trim().to_string();
        let gone = (0..100).any(|_| {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let dead = st.is_empty() || st.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'));
            if !dead {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            dead
        });
        assert!(gone, "the hung plugin's child {pid} was killed");
    }
}
