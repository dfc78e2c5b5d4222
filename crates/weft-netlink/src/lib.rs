//! Links, addresses and routes through netlink (rtnetlink), in the caller's network namespace or
//! in another (a pod's, a lab node's); used by the CNI plugin and the lab. A netlink socket stays
//! bound to the namespace it was opened in, so a handle for another namespace is opened after a
//! brief `setns` and then used from anywhere.


pub mod error;
pub mod ns;

pub use error::{Error, Result};

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

pub type NlResult<T> = std::result::Result<T, String>;

fn e(what: &str) -> impl Fn(rtnetlink::Error) -> String + '_ {
    move |err| format!("{what}: {err}")
}

pub struct Netlink {
    pub handle: Handle,
}

/// What a link looks like, as far as the plugin cares.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub up: bool,
    pub mtu: u32,
}

fn mac_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

impl From<&LinkMessage> for Link {
    fn from(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: String::new(),
            kind: None,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mtu: 0,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(b) => l.mac = mac_string(b),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::Mtu(m) => l.mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

impl Netlink {
    /// A connection in this process's network namespace.
    pub fn here() -> NlResult<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection in the network namespace at `netns`: this thread enters it just long enough to
    /// open the socket (which stays bound to it), then returns to where it was.
    pub fn in_netns(netns: &File) -> NlResult<Netlink> {
        use nix::sched::{CloneFlags, setns};
        let home = File::open("/proc/thread-self/ns/net").map_err(|e| format!("reading this thread's netns: {e}"))?;
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering the netns: {e}"))?;
        let made = rtnetlink::new_connection().map_err(|e| format!("opening netlink in the netns: {e}"));
        setns(home.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("returning from the netns: {e}"))?;
        let (conn, handle, _) = made?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> NlResult<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(Link::from(&m))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(None),
            Err(err) => Err(format!("looking up {name}: {err}")),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> NlResult<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from)),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(None),
            Err(err) => Err(format!("looking up link {index}: {err}")),
        }
    }

    /// The bridge, made (up, with `mtu` and promiscuity) if missing. An existing non-bridge of
    /// that name is an error.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>, promisc: bool) -> NlResult<Link> {
        if let Some(l) = self.link(name).await? {
            if l.kind.as_deref() != Some("bridge") {
                return Err(format!("{name:?} already exists but is not a bridge"));
            }
            let mut b = LinkUnspec::new_with_index(l.index).up();
            if promisc {
                b = b.promiscuous(true);
            }
            if let Some(m) = mtu.filter(|m| *m != l.mtu) {
                b = b.mtu(m);
            }
            if !l.up || promisc || mtu.is_some_and(|m| m != l.mtu) {
                self.handle.link().set(b.build()).execute().await.map_err(e("setting up the bridge"))?;
            }
            return Ok(l);
        }
        let mut b = LinkBridge::new(name).up();
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        if promisc {
            b = b.promiscuous(true);
        }
        match self.handle.link().add(b.build()).execute().await {
            Ok(()) => {}
            // A concurrent ADD made it first.
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -17 => {}
            Err(err) => return Err(format!("creating bridge {name}: {err}")),
        }
        self.link(name).await?.ok_or_else(|| format!("bridge {name} vanished"))
    }

    /// A veth pair: `host` here, `peer` created directly inside `peer_netns` (so a plugin killed
    /// half way never leaves both ends in the host namespace).
    pub async fn create_veth(&self, host: &str, peer: &str, peer_netns: &File, mtu: Option<u32>) -> NlResult<()> {
        use std::os::fd::AsRawFd;
        let mut peer_msg =
            LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string()).setns_by_fd(peer_netns.as_raw_fd());
        if let Some(m) = mtu {
            peer_msg = peer_msg.mtu(m);
        }
        let mut b = LinkVeth::new(host, peer);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        let b = b.set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())));
        self.handle.link().add(b.build()).execute().await.map_err(e("creating the veth pair"))
    }

    pub async fn set_controller_up(&self, index: u32, controller: u32) -> NlResult<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(controller).up().build())
            .execute()
            .await
            .map_err(e("attaching the host veth to the bridge"))
    }

    pub async fn set_up(&self, index: u32) -> NlResult<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(e("setting a link up"))
    }

    pub async fn set_hairpin(&self, index: u32) -> NlResult<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(e("setting hairpin mode"))
    }

    pub async fn del_link(&self, index: u32) -> NlResult<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(()),
            Err(err) => Err(format!("deleting link {index}: {err}")),
        }
    }

    pub async fn addresses(&self, index: u32) -> NlResult<Vec<IpNet>> {
        let mut out = vec![];
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.map_err(e("listing addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a
                    && let Ok(n) = IpNet::new(*ip, m.header.prefix_len)
                {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    /// Adds an address; `Ok(false)` when it was there already.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> NlResult<bool> {
        match self.handle.address().add(index, addr.addr(), addr.prefix_len()).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -17 => Ok(false),
            Err(err) => Err(format!("adding address {addr}: {err}")),
        }
    }

    pub async fn del_address(&self, index: u32, addr: IpNet) -> NlResult<()> {
        let mut s = self.handle.address().get().set_link_index_filter(index).set_address_filter(addr.addr()).execute();
        while let Some(m) = s.try_next().await.map_err(e("listing addresses"))? {
            self.handle.address().del(m).execute().await.map_err(e("deleting an address"))?;
        }
        Ok(())
    }

    pub async fn add_route(&self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> NlResult<()> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|err| format!("route to {dst}: {err}"))?
            .output_interface(oif);
        if let Some(g) = gw {
            b = b.gateway(g).map_err(|err| format!("route via {g}: {err}"))?;
        }
        match self.handle.route().add(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -17 => Ok(()),
            Err(err) => {
                Err(format!("adding route {dst}{}: {err}", gw.map(|g| format!(" via {g}")).unwrap_or_default()))
            }
        }
    }

    /// (destination, gateway, output interface) of every main-table route.
    pub async fn routes(&self) -> NlResult<Vec<(IpNet, Option<IpAddr>, Option<u32>)>> {
        let mut out = vec![];
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            let mut s = self.handle.route().get(msg).execute();
            while let Some(m) = s.try_next().await.map_err(e("listing routes"))? {
                let (mut dst, mut gw, mut oif) = (None, None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
                        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(IpAddr::V4(*ip)),
                        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some(IpAddr::V6(*ip)),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let unspecified =
                    if fam == AddressFamily::Inet { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
                if let Ok(n) = IpNet::new(dst.unwrap_or(unspecified), m.header.destination_prefix_length) {
                    out.push((n, gw, oif));
                }
            }
        }
        Ok(out)
    }
}

/// Writes a sysctl in the network namespace `netns` (or here when `None`), from a thread that
/// entered it: /proc/sys/net follows the opening thread's namespace.
pub fn sysctl_in(netns: Option<&File>, path: &str, value: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/{path}");
    let value = value.to_string();
    match netns {
        None => std::fs::write(&path, &value),
        Some(ns) => {
            let fd = ns.as_fd().try_clone_to_owned()?;
            std::thread::spawn(move || -> std::io::Result<()> {
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                std::fs::write(&path, &value)
            })
            .join()
            .map_err(|_| std::io::Error::other("sysctl thread panicked"))?
        }
    }
}

/// A random host-side veth name like the reference plugin's (`veth` + 8 hex digits).
pub fn host_veth_name() -> String {
    format!("veth{:08x}", rand::random::<u32>())
}

pub fn kind_is(l: &Link, k: InfoKind) -> bool {
    l.kind.as_deref() == Some(&k.to_string())
}
