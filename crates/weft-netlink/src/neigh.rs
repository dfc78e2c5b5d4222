//! Neighbour (ARP/NDP) entries and bridge FDB entries, as a VXLAN overlay needs them.

use std::net::IpAddr;

use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};

use crate::Netlink;
use crate::error::{Result, nl};

impl Netlink {
    /// A permanent neighbour entry: `ip` is at `mac` on link `index` (replacing what was there).
    pub async fn set_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("neighbour {ip} on link {index}")))
    }

    /// A permanent FDB entry on the VXLAN device `index`: frames for `mac` go to the VTEP at
    /// `dst` (replacing what was there).
    pub async fn set_fdb(&self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("fdb entry for {dst} on link {index}")))
    }
}
