//! Network namespaces a test or benchmark makes: uniquely named `weft-ns<pid>-<n>-<tag>`, removed
//! on drop (also when the test panics). Code and commands run inside one through
//! `weft_netlink::ns`; `ip -n` is used only as an independent observer and for veth set-up.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_netlink::ns;

static N: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with loopback up; panics if it cannot be made.
    pub fn new(tag: &str) -> Netns {
        Netns::try_new(tag).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_new(tag: &str) -> Result<Netns> {
        let name = format!("weft-ns{}-{}-{tag}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        // Made by `ip netns add`, not `ns::create`: that one leaves a netlink socket open inside
        // the namespace (seen with it as of this writing), which keeps a deleted namespace, and
        // the links in it, alive as long as this process runs.
        let out = Command::new("ip").args(["netns", "add", &name]).output().context("running ip")?;
        if !out.status.success() {
            bail!("ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let ns = Netns { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> String {
        ns::path(&self.name).display().to_string()
    }

    pub fn file(&self) -> File {
        File::open(self.path()).unwrap_or_else(|e| panic!("opening {}: {e}", self.path()))
    }

    /// `ip -n NAME ARGS` (an independent observer); panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_ip(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().context("running ip")?;
        if !out.status.success() {
            bail!("ip -n {} {args:?}: {}", self.name, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// A command that starts inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        ns::command_in(&mut c, Path::new(&self.path())).unwrap_or_else(|e| panic!("{e}"));
        c
    }

    /// Runs `argv` inside this namespace to its end.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        ns::run_in(Some(Path::new(&self.path())), f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `f` on a thread of its own inside this namespace (a server), once it is inside.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> ns::NsThread<T> {
        ns::spawn_in(Some(Path::new(&self.path())), f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A veth pair: `here` in this namespace, `there` in `peer`, both up with these addresses
    /// (CIDR notation, e.g. `10.99.0.1/24`).
    pub fn veth(&self, here: &str, here_addr: &str, peer: &Netns, there: &str, there_addr: &str) -> Result<()> {
        self.try_ip(&["link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer.name])?;
        self.try_ip(&["addr", "add", here_addr, "dev", here])?;
        peer.try_ip(&["addr", "add", there_addr, "dev", there])?;
        self.try_ip(&["link", "set", here, "up"])?;
        peer.try_ip(&["link", "set", there, "up"])?;
        Ok(())
    }

    /// A TCP server in this namespace that answers each connection with the peer's address
    /// (at most 64 connections, each written for at most 5 s).
    pub fn peer_echo_server(&self, addr: SocketAddr) -> ns::NsThread<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = self.spawn(move || {
            let l = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            for _ in 0..64 {
                let Ok((mut s, peer)) = l.accept() else { return };
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(peer.ip().to_string().as_bytes());
            }
        });
        rx.recv().unwrap();
        h
    }

    /// Connects from this namespace and returns what the server said (3 s bounds).
    pub fn tcp_get(&self, to: SocketAddr) -> std::io::Result<String> {
        self.run(move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            Ok(buf)
        })
    }

    /// One ping (2 s) from this namespace.
    pub fn ping(&self, ip: IpAddr) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", &ip.to_string()]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ns::delete(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_unique_wired_and_removed() {
        let (a, b) = (Netns::new("a"), Netns::new("b"));
        assert_ne!(a.name, b.name);
        assert!(a.name.starts_with("weft-ns") && Path::new(&a.path()).exists());
        a.veth("eth0", "10.99.7.1/24", &b, "eth0", "10.99.7.2/24").unwrap();
        assert!(b.ip(&["-4", "addr", "show", "eth0"]).contains("10.99.7.2/24"));
        let _srv = b.peer_echo_server("10.99.7.2:7000".parse().unwrap());
        assert_eq!(a.tcp_get("10.99.7.2:7000".parse().unwrap()).unwrap(), "10.99.7.1");
        assert!(a.ping("10.99.7.2".parse().unwrap()));
        // Commands run inside: this namespace's links, not the host's.
        let links = String::from_utf8(a.exec(&["ip", "-o", "link"]).stdout).unwrap();
        assert!(links.contains("eth0") && links.lines().count() == 2, "{links}");
        let path = a.path();
        drop(a);
        assert!(!Path::new(&path).exists());
        // The kernel dismantles a namespace in the background.
        let gone = crate::run::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            b.try_ip(&["link", "show", "eth0"]).is_err()
        });
        assert!(gone, "the pair went with its namespace");
    }
}
