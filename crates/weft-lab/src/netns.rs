//! The lab's named network namespaces (`weft-<lab>-...` under /run/netns): a thin layer over
//! `weft_netlink::ns`, which makes, enters and removes them.

use std::path::Path;

use anyhow::Result;

pub use weft_netlink::ns::{NETNS_DIR, delete, list, path};

/// Creates the named namespace with its loopback up (an existing one is kept).
pub fn create(name: &str) -> Result<std::path::PathBuf> {
    Ok(weft_netlink::ns::create(name)?)
}

/// The processes whose network namespace is the named one, so nothing of a lab outlives its
/// namespaces: a process that was started but not yet recorded (a daemon killed in between)
/// included.
pub fn pids(name: &str) -> Vec<i32> {
    weft_netlink::ns::pids_in(&path(name))
}

/// Runs `f` on a fresh thread inside the namespace at `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(weft_netlink::ns::run_in(Some(ns), f)?)
}

/// Writes a sysctl inside the namespace.
pub fn sysctl(ns: &Path, key: &str, value: &str) -> Result<()> {
    Ok(weft_netlink::ns::sysctl(Some(ns), key, value)?)
}
