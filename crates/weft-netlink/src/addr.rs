//! Addresses of a link.

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;

use crate::Netlink;
use crate::error::{Result, nl};

impl Netlink {
    /// The addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let mut out = vec![];
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.map_err(nl(format!("listing link {index}'s addresses")))? {
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
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<bool> {
        let added = self.handle.address().add(index, addr.addr(), addr.prefix_len()).execute().await;
        match added.map_err(nl(format!("adding address {addr} to link {index}"))) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes `addr` from link `index` (whatever its prefix length); absent is fine.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut s = self.handle.address().get().set_link_index_filter(index).set_address_filter(addr.addr()).execute();
        while let Some(m) = s.try_next().await.map_err(nl(format!("listing link {index}'s addresses")))? {
            match self.handle.address().del(m).execute().await.map_err(nl(format!("deleting address {addr}"))) {
                Err(e) if !e.is_missing() => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}
