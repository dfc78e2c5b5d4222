//! The one Linux plumbing layer of weft: namespaces ([`ns`]: create, delete, enter, run a
//! closure or a command in one, enter a pod, start a pod's init in a PID namespace, sysctl),
//! rtnetlink ([`Netlink`]: links including veth, bridge and vxlan, addresses, routes, neighbours
//! and FDB entries), nf_tables ([`nft`]: tables, chains, rules, sets, maps and elements in one
//! batch, written by hand: the crates that speak it are GPL), ctnetlink ([`conntrack`]) and
//! nfnetlink_log ([`nflog`]: the packets a `log group` rule copies), in the
//! caller's network namespace or in another (a pod's, a lab node's). Every other crate goes
//! through it: nothing else calls `setns` or builds netlink messages, and weft needs no `nft` or
//! `ip` command.
//!
//! Errors are [`Error`]s that keep the kernel's errno, so callers ask `e.is_exists()` or
//! `e.is_missing()` instead of matching raw numbers.

pub mod addr;
pub mod conntrack;
pub mod error;
pub mod link;
pub mod neigh;
pub mod nflog;
pub mod nft;
pub mod ns;
pub mod route;

pub use error::{Error, Result};
pub use link::{Link, Vxlan};

use std::fs::File;
use std::path::Path;

use rtnetlink::Handle;

/// A netlink (rtnetlink) connection bound to one network namespace; its operations live in
/// [`link`], [`addr`], [`route`] and [`neigh`].
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in this thread's network namespace (inside a tokio runtime).
    pub fn here() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::io("opening netlink", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection in the network namespace open as `netns` (inside a tokio runtime). A netlink
    /// socket stays bound to the namespace it was opened in, so it is opened on a thread that
    /// entered the namespace and then used from anywhere.
    pub fn in_netns(netns: &File) -> Result<Netlink> {
        let rt =
            tokio::runtime::Handle::try_current().map_err(|e| Error::other(format!("netlink needs a runtime: {e}")))?;
        let made = if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            // The caller's own thread: in and back out, no thread to start (the CNI plugin,
            // exec'd per pod, does this on every ADD and DEL).
            ns::while_in(netns, rtnetlink::new_connection)?
        } else {
            ns::run_in_file(netns, move || {
                // The socket registers with the caller's runtime from the namespace's thread.
                let _inside = rt.enter();
                rtnetlink::new_connection()
            })?
        };
        let (conn, handle, _) = made.map_err(|e| Error::io("opening netlink in a namespace", e))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection in the network namespace at `netns` (here when `None`).
    pub fn at(netns: Option<&Path>) -> Result<Netlink> {
        match netns {
            None => Netlink::here(),
            Some(p) => Netlink::in_netns(&File::open(p).map_err(|e| Error::io(format!("opening {}", p.display()), e))?),
        }
    }
}

/// Writes a sysctl (`net/ipv4/ip_forward` or dotted) in the network namespace open as `netns`
/// (here when `None`).
pub fn sysctl_in(netns: Option<&File>, path: &str, value: &str) -> Result<()> {
    ns::sysctl_at(netns, path, value)
}

/// A random host-side veth name like the reference plugin's (`veth` + 8 hex digits).
pub fn host_veth_name() -> String {
    format!("veth{:08x}", rand::random::<u32>())
}
