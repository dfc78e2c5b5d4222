//! Network namespaces made by a test (named `weft-cni-<pid>-...`, removed on drop, also when the
//! test panics) and a runtime that executes plugins in them.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use weft_cni::runtime::Invocation;
use weft_cni::spec::CniError;

pub const WEFT_CNI: &str = env!("CARGO_BIN_EXE_weft-cni");
static N: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("weft-cni-{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let st = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(st.success(), "ip netns add {name}");
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
    pub fn file(&self) -> File {
        File::open(self.path()).unwrap()
    }
    /// `ip -n NS ARGS`, as an independent observer; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().unwrap();
        assert!(out.status.success(), "ip -n {} {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().unwrap()
    }
    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let fd = self.file().as_fd().try_clone_to_owned().unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
    /// A TCP server in this namespace that answers each connection with the peer's address.
    pub fn peer_echo_server(&self, addr: SocketAddr) -> std::thread::JoinHandle<()> {
        let fd = self.file().as_fd().try_clone_to_owned().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            // Bounded: serves at most 64 connections, each for at most 5 s.
            for _ in 0..64 {
                let Ok((mut s, peer)) = l.accept() else { return };
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
        });
        rx.recv().unwrap();
        h
    }
    /// Connects from this namespace and returns what the server said.
    pub fn tcp_get(&self, to: SocketAddr) -> std::io::Result<String> {
        self.run(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
    }
    pub fn ping(&self, ip: IpAddr) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", &ip.to_string()]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

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
