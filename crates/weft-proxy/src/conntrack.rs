//! Removing stale UDP conntrack entries lives in `weft-netlink` (the one place that speaks
//! netlink); the proxy names it here.

pub use weft_netlink::conntrack::{StaleFlow, remove};
