//! Namespaces: the one place in weft that calls `setns`. A network namespace is named by a path
//! (`/run/netns/NAME`, `/proc/PID/ns/net`); `None` means this process's own.
//!
//! Work in another namespace runs on a fresh thread that enters it and ends with the work, so no
//! thread of the caller's runtime ever changes namespace; a child process enters it between fork
//! and exec.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

fn open(ns: &Path) -> Result<File> {
    File::open(ns).map_err(|e| Error::io(format!("opening the namespace {}", ns.display()), e))
}

/// Runs `f` on a fresh thread inside the network namespace `netns` (here when `None`).
pub fn run_in<T: Send + 'static>(netns: Option<&Path>, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = netns.map(open).transpose()?;
    let what = netns.map(|p| p.display().to_string()).unwrap_or_default();
    std::thread::spawn(move || -> Result<T> {
        if let Some(file) = file {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::errno(format!("entering {what}"), e))?;
        }
        Ok(f())
    })
    .join()
    .map_err(|_| Error::other("a thread working in a network namespace panicked"))?
}

/// Makes `cmd` start inside the network namespace `netns` (entered between fork and exec).
pub fn command_in(cmd: &mut Command, netns: &Path) -> Result<()> {
    let file = open(netns)?;
    // SAFETY: setns is async-signal-safe; the closure only calls it on a file opened before fork.
    unsafe {
        cmd.pre_exec(move || setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(())
}

/// Writes `/proc/sys/KEY` (dots or slashes) in the network namespace `netns` (here when `None`):
/// /proc/sys/net follows the namespace of the thread that opens it.
pub fn sysctl(netns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = value.to_string();
    let what = format!("sysctl {key}={value}");
    run_in(netns, move || std::fs::write(&path, v))?.map_err(|e| Error::io(what, e))
}

/// Runs `f` on a fresh thread inside a private network namespace of its own (only loopback,
/// down), which disappears when the thread ends unless something else holds it.
pub fn run_in_fresh<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    std::thread::spawn(move || -> Result<T> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::errno("making a private network namespace", e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::other("a thread working in a private network namespace panicked"))?
}
