//! Routes in the main table.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;

use crate::Netlink;
use crate::error::{Error, Result, nl};

/// A route to `dst` out of link `oif`, through `gateway` if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    /// The gateway is reachable on the link even outside its addresses (a VXLAN peer's VTEP).
    pub onlink: bool,
}

impl Route {
    pub fn new(dst: IpNet, gateway: Option<IpAddr>, oif: u32) -> Route {
        Route { dst, gateway, oif, onlink: false }
    }

    fn message(&self) -> Result<RouteMessage> {
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.addr(), self.dst.prefix_len())
            .map_err(|e| Error::other(format!("route to {}: {e}", self.dst)))?
            .output_interface(self.oif);
        if let Some(g) = self.gateway {
            b = b.gateway(g).map_err(|e| Error::other(format!("route to {} via {g}: {e}", self.dst)))?;
        }
        if self.onlink {
            b = b.onlink();
        }
        Ok(b.build())
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " dev {}{}", self.oif, if self.onlink { " onlink" } else { "" })
    }
}

impl Netlink {
    /// Adds a route to `dst` (through `gw`) out of link `oif`; one already there is fine.
    pub async fn add_route(&self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<()> {
        self.ensure_route(&Route::new(dst, gw, oif)).await
    }

    /// Adds `route`; one already there (to the same destination) is fine.
    pub async fn ensure_route(&self, route: &Route) -> Result<()> {
        match self.handle.route().add(route.message()?).execute().await.map_err(nl(format!("adding route {route}"))) {
            Err(e) if !e.is_exists() => Err(e),
            _ => Ok(()),
        }
    }

    /// (destination, gateway, output interface) of every main-table route.
    pub async fn routes(&self) -> Result<Vec<(IpNet, Option<IpAddr>, Option<u32>)>> {
        let mut out = vec![];
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            let mut s = self.handle.route().get(msg).execute();
            while let Some(m) = s.try_next().await.map_err(nl("listing routes"))? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_builds_the_message_it_names() {
        let r = Route { onlink: true, ..Route::new("10.244.1.0/24".parse().unwrap(), Some([10, 244, 1, 0].into()), 4) };
        assert_eq!(r.to_string(), "10.244.1.0/24 via 10.244.1.0 dev 4 onlink");
        let m = r.message().unwrap();
        assert_eq!(m.header.destination_prefix_length, 24);
        assert!(m.header.flags.contains(netlink_packet_route::route::RouteFlags::Onlink));
        assert!(m.attributes.contains(&RouteAttribute::Oif(4)));
        assert!(m.attributes.contains(&RouteAttribute::Gateway(RouteAddress::Inet([10, 244, 1, 0].into()))));
    }
}
