//! Links: look up, create (bridge, veth pair, VXLAN device), set (up, MTU, controller, hairpin,
//! namespace) and delete.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};

use crate::Netlink;
use crate::error::{Error, Result, nl};

/// What a link looks like, as far as weft cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    /// The driver kind (`bridge`, `veth`, `vxlan`), if the link has one.
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub up: bool,
    pub mtu: u32,
}

impl Link {
    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
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

/// A VXLAN device as flannel makes one: no learning, a fixed MAC, over `dev`.
#[derive(Debug, Clone)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    /// The underlay link it sends through.
    pub dev: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl Netlink {
    /// The link called `name`, `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await.map_err(nl(format!("looking up link {name}"))) {
            Ok(m) => Ok(m.as_ref().map(Link::from)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with `index`, `None` when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await.map_err(nl(format!("looking up link {index}"))) {
            Ok(m) => Ok(m.as_ref().map(Link::from)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link called `name`, which must exist.
    pub async fn must_link(&self, name: &str) -> Result<Link> {
        self.link(name).await?.ok_or_else(|| Error::errno(format!("link {name}"), nix::errno::Errno::ENODEV))
    }

    /// The bridge, made (up, with `mtu` and promiscuity) if missing. An existing non-bridge of
    /// that name is an error.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>, promisc: bool) -> Result<Link> {
        if let Some(l) = self.link(name).await? {
            if !l.is_kind("bridge") {
                return Err(Error::other(format!("{name:?} already exists but is not a bridge")));
            }
            let mut b = LinkUnspec::new_with_index(l.index).up();
            if promisc {
                b = b.promiscuous(true);
            }
            if let Some(m) = mtu.filter(|m| *m != l.mtu) {
                b = b.mtu(m);
            }
            if !l.up || promisc || mtu.is_some_and(|m| m != l.mtu) {
                self.handle.link().set(b.build()).execute().await.map_err(nl(format!("setting up bridge {name}")))?;
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
        match self.handle.link().add(b.build()).execute().await.map_err(nl(format!("creating bridge {name}"))) {
            // A concurrent ADD made it first.
            Err(e) if !e.is_exists() => return Err(e),
            _ => {}
        }
        self.must_link(name).await
    }

    /// A veth pair: `host` here, `peer` created directly inside `peer_netns` (so a plugin killed
    /// half way never leaves both ends in this namespace).
    pub async fn create_veth(&self, host: &str, peer: &str, peer_netns: &File, mtu: Option<u32>) -> Result<()> {
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
        self.handle.link().add(b.build()).execute().await.map_err(nl(format!("creating the veth pair {host}/{peer}")))
    }

    /// A VXLAN device (down; see [`Netlink::set_up`]).
    pub async fn create_vxlan(&self, v: &Vxlan) -> Result<()> {
        let msg = LinkVxlan::new(&v.name, v.vni)
            .dev(v.dev)
            .local(v.local)
            .port(v.port)
            .learning(false)
            .mtu(v.mtu)
            .address(v.mac.to_vec())
            .build();
        self.handle.link().add(msg).execute().await.map_err(nl(format!("creating vxlan device {}", v.name)))
    }

    async fn set(&self, msg: LinkMessage, what: String) -> Result<()> {
        self.handle.link().set(msg).execute().await.map_err(nl(what))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).up().build(), format!("setting link {index} up")).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(LinkUnspec::new_with_index(index).mtu(mtu).build(), format!("setting link {index}'s mtu to {mtu}"))
            .await
    }

    /// Makes link `index` a port of `controller` (a bridge) and sets it up.
    pub async fn set_controller_up(&self, index: u32, controller: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).controller(controller).up().build(),
            format!("attaching link {index} to bridge {controller}"),
        )
        .await
    }

    /// Moves link `index` into the network namespace open as `netns`.
    pub async fn set_netns(&self, index: u32, netns: &File) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build(),
            format!("moving link {index} to another namespace"),
        )
        .await
    }

    /// Lets a bridge port send frames back out the port they came in on.
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(true).build())
            .execute()
            .await
            .map_err(nl(format!("setting hairpin mode on link {index}")))
    }

    /// Deletes link `index`; one already gone is fine.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await.map_err(nl(format!("deleting link {index}"))) {
            Err(e) if !e.is_missing() => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_message_reads_as_a_link() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = LinkFlags::Up;
        m.attributes = vec![
            LinkAttribute::IfName("cni0".into()),
            LinkAttribute::Address(vec![0x0a, 0x58, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Controller(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(netlink_packet_route::link::InfoKind::Bridge)]),
        ];
        let l = Link::from(&m);
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "cni0".into(),
                mac: "0a:58:00:00:00:01".into(),
                kind: Some("bridge".into()),
                controller: Some(3),
                up: true,
                mtu: 1450,
            }
        );
        assert!(l.is_kind("bridge") && !l.is_kind("veth"));
    }
}
