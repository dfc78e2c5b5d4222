//! `weft-cni`: a CNI 1.1.0 plugin with the reference `bridge` plugin's behaviour and built-in
//! `host-local` IPAM (same configuration, same on-disk layout, so a node switches by changing only
//! `type`), plus the runtime side that executes CNI plugins.
//!
//! - `spec`: configuration, results (with version conversion) and errors; pure.
//! - `ipam`: host-local on disk, safe under concurrent ADDs (flock) and crashes (O_EXCL files).
//! - `net`: links, addresses, routes through rtnetlink, in the node's or a pod's namespace.
//! - `nft`: the per-network masquerade table (made once) and host ports, in nftables.
//! - `plugin`: ADD, DEL, CHECK, GC, STATUS, VERSION.
//! - `runtime`: invoking plugins and conflists as a container runtime does.

pub mod ipam;
pub mod net;
pub mod nft;
pub mod plugin;
pub mod runtime;
pub mod spec;
