//! Namespaces: the one place in weft that calls `setns` or `unshare`. A network namespace is named
//! by a path (`/run/netns/NAME`, `/proc/PID/ns/net`); `None` means this process's own.
//!
//! Work in another namespace runs on a fresh thread that enters it and ends with the work (or
//! lives as long as the work, [`spawn_in`]), so no thread of the caller's runtime ever changes
//! namespace; a child process enters it between fork and exec ([`command_in`], [`PodEntry`]).
//! Named namespaces are made the way `ip netns add` makes them: a bind mount of a new namespace
//! under /run/netns, without exec'ing `ip`.

use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};

/// Where named network namespaces live (as for `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// nsfs's magic number: a bind-mounted namespace file has it, the empty placeholder does not.
const NSFS_MAGIC: i64 = 0x6e736673;

fn open(ns: &Path) -> Result<File> {
    File::open(ns).map_err(|e| Error::io(format!("opening the namespace {}", ns.display()), e))
}

fn dup(file: &File) -> Result<OwnedFd> {
    file.as_fd().try_clone_to_owned().map_err(|e| Error::io("duplicating a namespace file", e))
}

/// The path of the named network namespace.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The network namespace of process `pid`.
pub fn of_pid(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Whether `p` is a namespace file (a bind-mounted nsfs file, not an empty placeholder).
pub fn is_netns(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Makes /run/netns a shared mount (as `ip netns` does), so that removing a namespace's mount
/// also removes it from the mount namespaces of pod processes (which are slaves of this one).
fn prepare_dir() -> Result<()> {
    fs::create_dir_all(NETNS_DIR).map_err(|e| Error::io(format!("creating {NETNS_DIR}"), e))?;
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_mount = mounts.lines().any(|l| l.split_whitespace().nth(4) == Some(NETNS_DIR));
    if !is_mount {
        mount(Some(NETNS_DIR), NETNS_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| Error::errno(format!("bind-mounting {NETNS_DIR}"), e))?;
    }
    let _ = mount(None::<&str>, NETNS_DIR, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    Ok(())
}

/// Creates the named network namespace with its loopback up, and returns its path. An existing
/// one is kept: creation is idempotent.
pub fn create(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::other(format!("{name:?} is not a namespace name (no '/', not empty)")));
    }
    let p = path(name);
    if is_netns(&p) {
        return Ok(p);
    }
    prepare_dir()?;
    File::create(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    let target = p.clone();
    let made = run_in_fresh(move || -> Result<()> {
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Error::errno(format!("bind-mounting a new namespace at {}", target.display()), e))?;
        loopback_up()
    });
    if let Err(e) = made.and_then(|r| r) {
        let _ = delete(name);
        return Err(e);
    }
    Ok(p)
}

/// Sets `lo` up in this thread's network namespace, as every namespace needs.
fn loopback_up() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("starting a runtime for netlink", e))?;
    rt.block_on(async {
        let nl = crate::Netlink::here()?;
        let lo = nl.link("lo").await?.ok_or_else(|| Error::other("a new namespace has no loopback"))?;
        nl.set_up(lo.index).await
    })
}

/// Removes the named namespace; links inside it go with it (once no process holds it). Missing
/// is fine.
pub fn delete(name: &str) -> Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    let _ = umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!("removing {}", p.display()), e)),
        _ => Ok(()),
    }
}

/// The names of the named namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The processes whose network namespace is the one at `netns` (found by the namespace's inode,
/// as `ip netns pids` does).
pub fn pids_in(netns: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = fs::metadata(netns) else { return vec![] };
    let Ok(rd) = fs::read_dir("/proc") else { return vec![] };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(of_pid(*pid as u32)).is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

/// Makes the process-wide state that tokio creates with its first I/O runtime (the signal
/// driver's socket pair) here, in the caller's namespace, before any thread enters another. A
/// socket belongs to the namespace it was made in and keeps it alive: made inside a namespace
/// that is then deleted, it would pin that namespace (and its links) for the process's life.
fn settle_process_globals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Inside a runtime they exist already (made with it); a runtime may not be dropped
        // inside another one anyway. Otherwise make them here, on this thread.
        if tokio::runtime::Handle::try_current().is_err() {
            drop(tokio::runtime::Builder::new_current_thread().enable_io().build());
        }
    });
}

/// Moves the calling thread into the network namespace `netns` for good. Only for a thread made
/// for that namespace (a runtime's `on_thread_start`); anything else uses [`run_in`].
pub fn enter(netns: &File) -> Result<()> {
    settle_process_globals();
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::errno("entering a network namespace", e))
}

/// Runs `f` on a fresh thread inside the network namespace `netns` (on this thread when `None`).
pub fn run_in<T: Send + 'static>(netns: Option<&Path>, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    // Here: no thread needed (the CNI plugin, exec'd per pod, asks this several times per ADD).
    let Some(netns) = netns else { return Ok(f()) };
    settle_process_globals();
    let file = open(netns)?;
    let what = netns.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::errno(format!("entering {what}"), e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::other("a thread working in a network namespace panicked"))?
}

/// Runs `f` on this thread inside the network namespace open as `netns`, then returns to the
/// thread's own: no thread to start. Only for a thread that is the caller's own (a plain thread,
/// or the one a current-thread runtime runs on), never a multi-thread runtime's worker, whose
/// other tasks must not run in the wrong namespace. If the way back fails, the process aborts
/// rather than go on in the wrong namespace.
pub fn while_in<T>(netns: &File, f: impl FnOnce() -> T) -> Result<T> {
    let home = open(Path::new("/proc/thread-self/ns/net"))?;
    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::errno("entering a network namespace", e))?;
    let out = f();
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        eprintln!("weft: cannot return to this thread's network namespace ({e}); stopping");
        std::process::abort();
    }
    Ok(out)
}

/// Runs `f` on a fresh thread inside the network namespace open as `netns`.
pub fn run_in_file<T: Send + 'static>(netns: &File, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    settle_process_globals();
    let fd = dup(netns)?;
    std::thread::spawn(move || -> Result<T> {
        setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::errno("entering a network namespace", e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::other("a thread working in a network namespace panicked"))?
}

/// A thread working inside a network namespace, from [`spawn_in`].
pub struct NsThread<T>(std::thread::JoinHandle<Option<T>>);

impl<T> NsThread<T> {
    /// Waits for the work's result (`Err` if it panicked).
    pub fn join(self) -> std::thread::Result<T> {
        // The thread got past entering the namespace (spawn_in saw it), so it returns Some.
        self.0.join().map(|v| v.expect("the thread entered its namespace"))
    }
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// Starts `f` on a thread of its own inside the network namespace `netns` (here when `None`),
/// for work that outlives the call (a listener). Returns once the thread is in the namespace, so
/// failing to enter it is this call's error.
pub fn spawn_in<T: Send + 'static>(
    netns: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<NsThread<T>> {
    settle_process_globals();
    let file = netns.map(open).transpose()?;
    let what = netns.map(|p| p.display().to_string()).unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> Option<T> {
        if let Some(file) = file
            && let Err(e) = setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
        {
            let _ = tx.send(Err(Error::errno(format!("entering {what}"), e)));
            return None;
        }
        let _ = tx.send(Ok(()));
        Some(f())
    });
    rx.recv().map_err(|_| Error::other("a thread entering a network namespace ended early"))??;
    Ok(NsThread(handle))
}

/// Runs `f` on a fresh thread inside a private network namespace of its own (only loopback,
/// down), which disappears when the thread ends unless something else holds it.
pub fn run_in_fresh<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    settle_process_globals();
    std::thread::spawn(move || -> Result<T> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::errno("making a private network namespace", e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::other("a thread working in a private network namespace panicked"))?
}

/// Starts `exe ARGS` as pid 1 of a new PID namespace (a pod's init, which reaps its orphans and
/// whose end ends the pod), in a session of its own, stdin from /dev/null and its output to
/// `out`, with this process's environment. Returns its pid as this process sees it. A fork in
/// a threaded process: the child only makes async-signal-safe system calls, then execs.
pub fn spawn_pid_namespace(exe: &Path, args: &[&std::ffi::OsStr], out: &File) -> Result<u32> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    use nix::libc;

    let cstr = |b: &[u8]| CString::new(b).map_err(|_| Error::other("a NUL byte in a program, argument or variable"));
    let prog = cstr(exe.as_os_str().as_bytes())?;
    let mut argv_owned = vec![prog.clone()];
    for a in args {
        argv_owned.push(cstr(a.as_bytes())?);
    }
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let argv: Vec<*const libc::c_char> =
        argv_owned.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        env.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let null = File::open("/dev/null").map_err(|e| Error::io("opening /dev/null", e))?;
    let (null_fd, out_fd) = (null.as_raw_fd(), out.as_raw_fd());
    let mut stack = vec![0u8; 256 << 10];
    let cb = Box::new(move || -> isize {
        // SAFETY: async-signal-safe system calls only, on memory prepared before the clone.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if libc::setsid() < 0
                || libc::dup2(null_fd, 0) < 0
                || libc::dup2(out_fd, 1) < 0
                || libc::dup2(out_fd, 2) < 0
            {
                libc::_exit(126);
            }
            libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        }
    });
    // SAFETY: the child runs on `stack` (ample for the calls above) and execs or exits.
    let pid = unsafe { nix::sched::clone(cb, &mut stack, CloneFlags::CLONE_NEWPID, Some(libc::SIGCHLD)) }
        .map_err(|e| Error::errno("clone(CLONE_NEWPID)", e))?;
    Ok(pid.as_raw() as u32)
}

/// Makes `cmd` start inside the network namespace `netns` (entered between fork and exec).
pub fn command_in(cmd: &mut Command, netns: &Path) -> Result<()> {
    command_in_file(cmd, &open(netns)?)
}

/// Makes `cmd` start inside the network namespace open as `netns`.
pub fn command_in_file(cmd: &mut Command, netns: &File) -> Result<()> {
    let fd = dup(netns)?;
    // SAFETY: setns is async-signal-safe; the closure only calls it on a file opened before fork.
    unsafe {
        cmd.pre_exec(move || setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(())
}

/// Writes `/proc/sys/KEY` in the network namespace `netns` (here when `None`): /proc/sys/net
/// follows the namespace of the thread that opens it. KEY is dotted (`net.ipv4.ip_forward`) or,
/// when it names an interface that may hold dots, slashed (`net/ipv6/conf/eth0.5/accept_dad`).
pub fn sysctl(netns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let file = netns.map(open).transpose()?;
    sysctl_at(file.as_ref(), key, value)
}

/// [`sysctl`] in the network namespace open as `netns` (here when `None`).
pub fn sysctl_at(netns: Option<&File>, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    let v = value.to_string();
    let what = format!("sysctl {key}={value}");
    let write = move || std::fs::write(&path, v);
    match netns {
        None => write(),
        Some(f) => run_in_file(f, write)?,
    }
    .map_err(|e| Error::io(what, e))
}

/// `/proc/sys/...` for a sysctl key; a key that climbs out of /proc/sys is refused.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "..") {
        return Err(Error::other(format!("{key:?} is not a sysctl key")));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

/// What entering a pod means, for the pod's shim and for `weft exec` alike: its network
/// namespace, then private mount and UTS namespaces (mounts slaves of the host's, so a namespace
/// file the host removes disappears here too) with the pod's resolv.conf over /etc/resolv.conf
/// and the pod's hostname.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub netns: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<String>,
}

/// A [`PodEntry`] whose namespace file is open, so entering allocates nothing (a `pre_exec`
/// closure may not allocate).
struct OpenPodEntry {
    netns: File,
    resolv_conf: Option<PathBuf>,
    hostname: Option<String>,
}

impl PodEntry {
    fn open(&self) -> Result<OpenPodEntry> {
        Ok(OpenPodEntry {
            netns: open(&self.netns)?,
            resolv_conf: self.resolv_conf.clone(),
            hostname: self.hostname.as_deref().map(|h| pod_hostname(h).to_string()),
        })
    }
}

/// The hostname the kernel takes: Kubernetes cuts a pod's to 63 bytes (the kernel allows 64).
fn pod_hostname(h: &str) -> &str {
    let mut end = h.len().min(63);
    while !h.is_char_boundary(end) {
        end -= 1;
    }
    &h[..end]
}

impl OpenPodEntry {
    /// The steps, each naming itself on failure; no allocation.
    fn enter(&self) -> std::result::Result<(), (&'static str, Errno)> {
        setns(self.netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| ("entering the pod's network namespace", e))?;
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
            .map_err(|e| ("making private mount and UTS namespaces", e))?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .map_err(|e| ("making / a slave mount", e))?;
        if let Some(r) = &self.resolv_conf {
            mount(Some(r.as_path()), "/etc/resolv.conf", None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| ("bind-mounting the pod's resolv.conf", e))?;
        }
        if let Some(h) = &self.hostname {
            nix::unistd::sethostname(h).map_err(|e| ("setting the pod's hostname", e))?;
        }
        Ok(())
    }
}

/// Moves the calling thread (and so the process, if it is the only one) into the pod.
pub fn enter_pod(pod: &PodEntry) -> Result<()> {
    pod.open()?.enter().map_err(|(what, errno)| Error::errno(what, errno))
}

/// Makes `cmd` start inside the pod (entered between fork and exec).
pub fn command_in_pod(cmd: &mut Command, pod: &PodEntry) -> Result<()> {
    let open = pod.open()?;
    // SAFETY: the closure makes system calls only, on values prepared before fork.
    unsafe {
        cmd.pre_exec(move || open.enter().map_err(|(_, errno)| std::io::Error::from(errno)));
    }
    Ok(())
}

/// The namespaces of a running process (a pod's shim, pid 1 of the pod's PID namespace), open,
/// so a command can join them exactly: network, mount (with the pod's resolv.conf, /proc and
/// hidden paths as the shim made them), UTS and PID. This is how `kubectl exec` and `weft exec`
/// get into a running pod, so what they run sees what the containers see.
pub struct ProcessNamespaces {
    net: File,
    mnt: File,
    uts: File,
    pid: File,
}

impl ProcessNamespaces {
    /// Opens process `pid`'s namespaces (it must be alive; `is_missing()` when it is not).
    pub fn of(pid: u32) -> Result<ProcessNamespaces> {
        let ns = |kind: &str| open(Path::new(&format!("/proc/{pid}/ns/{kind}")));
        Ok(ProcessNamespaces { net: ns("net")?, mnt: ns("mnt")?, uts: ns("uts")?, pid: ns("pid")? })
    }

    /// Makes `cmd` join the network, UTS and mount namespaces between fork and exec, then change
    /// to `cwd` (joining a mount namespace moves a process to its root, so a `current_dir` set on
    /// `cmd` would not hold). Register this before anything that drops capabilities: joining
    /// needs CAP_SYS_ADMIN. The PID namespace is joined by the spawning thread: [`Self::spawn`].
    pub fn command(&self, cmd: &mut Command, cwd: Option<&Path>) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let (net, uts, mnt) = (dup(&self.net)?, dup(&self.uts)?, dup(&self.mnt)?);
        let cwd = cwd
            .map(|c| std::ffi::CString::new(c.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| Error::other("a NUL byte in a working directory"))?;
        // SAFETY: system calls only, on descriptors and a string prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, kind) in [
                    (&net, CloneFlags::CLONE_NEWNET),
                    (&uts, CloneFlags::CLONE_NEWUTS),
                    (&mnt, CloneFlags::CLONE_NEWNS),
                ] {
                    setns(fd.as_fd(), kind).map_err(std::io::Error::from)?;
                }
                if let Some(c) = &cwd {
                    nix::unistd::chdir(c.as_c_str()).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Runs `spawn` on a fresh thread that has entered the PID namespace for its children (a
    /// thread cannot leave a PID namespace it entered, so it is one made for this and gone after),
    /// so the processes it starts are in the pod's PID namespace.
    pub fn spawn<T: Send + 'static>(&self, spawn: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let pid = dup(&self.pid)?;
        std::thread::spawn(move || -> Result<T> {
            setns(pid.as_fd(), CloneFlags::CLONE_NEWPID)
                .map_err(|e| Error::errno("entering the pod's PID namespace", e))?;
            Ok(spawn())
        })
        .join()
        .map_err(|_| Error::other("a thread starting a process in a PID namespace panicked"))?
    }

    /// The network namespace, to open sockets in ([`run_in_file`]).
    pub fn netns(&self) -> &File {
        &self.net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_proc_sys() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward").unwrap(), Path::new("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            sysctl_path("net/ipv6/conf/eth0.5/accept_dad").unwrap(),
            Path::new("/proc/sys/net/ipv6/conf/eth0.5/accept_dad")
        );
        for bad in ["", "net/../../etc/passwd", "/net/ipv4", "net//x", "net/ipv4/"] {
            assert!(sysctl_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pod_hostnames_are_cut_at_63_bytes_on_a_char_boundary() {
        assert_eq!(pod_hostname("web-0"), "web-0");
        let long = "a".repeat(100);
        assert_eq!(pod_hostname(&long).len(), 63);
        let wide = format!("{}é", "a".repeat(62));
        assert_eq!(pod_hostname(&wide), "a".repeat(62));
    }

    #[test]
    fn namespace_names_with_a_slash_are_refused() {
        for bad in ["", "a/b", "..", "."] {
            assert!(create(bad).is_err(), "{bad:?}");
        }
    }
}
