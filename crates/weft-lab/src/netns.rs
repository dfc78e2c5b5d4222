//! Named network namespaces, made the way `ip netns add` makes them (a bind mount of a new
//! namespace under /run/netns), without exec'ing `ip`; and running code or processes inside one.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes /run/netns a shared mount (as `ip netns` does), so that removing a namespace's mount
/// also removes it from the mount namespaces of pod processes (which are slaves of this one).
fn prepare_dir() -> Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_mount = mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(NETNS_DIR));
    if !is_mount {
        mount(Some(NETNS_DIR), NETNS_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .context("bind-mounting /run/netns")?;
    }
    let _ = mount(None::<&str>, NETNS_DIR, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    Ok(())
}

/// Creates the named namespace (an existing one is kept: creation is idempotent).
pub fn create(name: &str) -> Result<PathBuf> {
    let p = path(name);
    if p.exists() && File::open(&p).is_ok() && is_netns(&p) {
        return Ok(p);
    }
    prepare_dir()?;
    File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    let target = p.clone();
    std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .context("bind-mounting the new namespace")?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))??;
    // Loopback up, as every namespace needs.
    in_netns(&p, || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let nl = weft_netlink::Netlink::here().map_err(anyhow::Error::msg)?;
            if let Some(lo) = nl.link("lo").await.map_err(anyhow::Error::msg)? {
                nl.set_up(lo.index).await.map_err(anyhow::Error::msg)?;
            }
            Ok(())
        })
    })??;
    Ok(p)
}

fn is_netns(p: &Path) -> bool {
    // A bind-mounted nsfs file, not the empty placeholder.
    nix::sys::statfs::statfs(p).map(|s| s.filesystem_type().0 == 0x6e736673).unwrap_or(false)
}

/// Removes the named namespace; links inside it go with it. Missing is fine.
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    let _ = umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    Ok(())
}

/// The processes whose network namespace is the named one (found by the namespace's inode, as
/// `ip netns pids` does), so nothing of a lab outlives its namespaces: a process that was
/// started but not yet recorded (a daemon killed in between) included.
pub fn pids(name: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = fs::metadata(path(name)) else { return vec![] };
    let Ok(rd) = fs::read_dir("/proc") else { return vec![] };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

/// Every namespace whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a fresh thread inside the namespace at `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
    let fd = file.as_fd().try_clone_to_owned()?;
    std::thread::spawn(move || -> Result<T> {
        setns(fd, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// Writes a sysctl inside the namespace.
pub fn sysctl(ns: &Path, key: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = value.to_string();
    in_netns(ns, move || fs::write(&p, v))?.with_context(|| format!("sysctl {key}={value}"))
}

pub fn must_exist(ns: &Path) -> Result<()> {
    if !is_netns(ns) {
        bail!("{} is not a network namespace", ns.display());
    }
    Ok(())
}
