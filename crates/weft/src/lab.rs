//! Where labs live and which one a command acts on; starting and stopping a lab's daemon.
//!
//! `$WEFT_HOME` (default `/var/lib/weft` for root, `~/.local/state/weft` otherwise) holds
//! `labs/<name>`, a symlink to the lab's state directory (by default `$WEFT_HOME/state/<name>`).
//! A daemon holds an exclusive lock on `<state>/daemon.lock` while it runs, which is how
//! "running" is decided: no pid guessing, and a `kill -9` releases it.

use std::fs;
use std::io::BufRead;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("WEFT_HOME") {
        return PathBuf::from(h);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/weft");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("weft")
}

fn labs_dir() -> PathBuf {
    home().join("labs")
}

/// The file `weft up` writes into a state directory it made or adopted: `weft down` removes
/// only directories that have it, never one a typo in `--state-dir` named.
pub const MARKER: &str = ".weft-lab";

/// Makes `dir` (and missing parents) private to this user: mode 0700, files in it 0600 (the
/// store holds every Secret, the kubeconfig the admin token). Refuses a directory another user
/// owns, and a non-empty one weft did not make (no marker, no lab config): it is not ours to
/// fill or, later, to remove.
pub fn secure_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let md = fs::symlink_metadata(dir)?;
    if !md.is_dir() {
        bail!("the state directory {} is not a directory (a symlink?): choose another --state-dir", dir.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        bail!(
            "the state directory {} belongs to user {}, not to you ({me}): choose a directory of your own with --state-dir",
            dir.display(),
            md.uid()
        );
    }
    let ours = dir.join(MARKER).exists() || dir.join("config.json").exists();
    if !ours && fs::read_dir(dir)?.next().is_some() {
        bail!(
            "the state directory {} is not empty and was not made by weft: choose a new or empty directory with --state-dir",
            dir.display()
        );
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    fs::write(dir.join(MARKER), b"made by weft up; weft down removes this directory\n")?;
    // Files made before permissions were tightened (older labs).
    for e in fs::read_dir(dir)?.flatten() {
        if let Ok(m) = e.metadata()
            && m.is_file()
            && m.mode() & 0o077 != 0
        {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600));
        }
    }
    Ok(())
}

/// Settings a lab keeps for its whole life (a restart reuses them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabConfig {
    pub name: String,
    pub service_cidr: String,
    pub pod_cidr: String,
    pub nodes: u32,
    pub overlay: String,
    pub node_port_range: String,
    pub api_port: u16,
    #[serde(default)]
    pub egress: bool,
    #[serde(default = "default_lb_pool")]
    pub lb_pool: String,
    /// `weft` (the embedded API and controllers) or `kubernetes` (a real control plane).
    #[serde(default = "default_control_plane")]
    pub control_plane: String,
}

fn default_lb_pool() -> String {
    "172.18.255.0/24".into()
}

fn default_control_plane() -> String {
    "weft".into()
}

impl LabConfig {
    /// Runs the lab on a real control plane rather than the embedded one.
    pub fn real_control_plane(&self) -> bool {
        self.control_plane == "kubernetes"
    }
}

/// A node port range as `--node-port-range` and the lab's config write it: `FIRST-LAST`.
pub fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<i32>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("node port range {s:?}: write it as FIRST-LAST, e.g. 30000-32767"))?;
    let (a, b): (i32, i32) = (a.trim().parse()?, b.trim().parse()?);
    if !(1..=65535).contains(&a) || !(1..=65535).contains(&b) || a > b {
        bail!("node port range {s:?}: ports must be 1-65535 with FIRST <= LAST");
    }
    Ok(a..=b)
}

pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
}

impl Lab {
    pub fn at(name: &str, dir: PathBuf) -> Lab {
        Lab { name: name.to_string(), dir }
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    pub fn config(&self) -> Result<LabConfig> {
        let p = self.dir.join("config.json");
        let text = fs::read_to_string(&p).with_context(|| format!("lab {:?}: reading {}", self.name, p.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
    /// Is the daemon alive? (It holds the lock while it runs.)
    pub fn running(&self) -> bool {
        let Ok(f) = fs::File::open(self.dir.join("daemon.lock")) else {
            return false;
        };
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(_unlocked_on_drop) => false,
            Err(_) => true,
        }
    }
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("daemon.pid")).ok()?.trim().parse().ok()
    }
    pub fn api_url(&self) -> Option<String> {
        let port = fs::read_to_string(self.dir.join("api.port")).ok()?;
        Some(format!("https://127.0.0.1:{}", port.trim()))
    }
}

/// All labs known on this machine (running or not).
pub fn all() -> Vec<Lab> {
    let mut out = vec![];
    if let Ok(rd) = fs::read_dir(labs_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(dir) = fs::read_link(e.path()) {
                out.push(Lab::at(&name, dir));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The lab a command acts on: `--name`, else `$WEFT_CLUSTER`, else the only one running, else `default`.
pub fn select(name: Option<&str>) -> Result<Lab> {
    let name = match name.map(String::from).or_else(|| std::env::var("WEFT_CLUSTER").ok().filter(|s| !s.is_empty())) {
        Some(n) => n,
        None => {
            let labs = all();
            let running: Vec<&Lab> = labs.iter().filter(|l| l.running()).collect();
            if running.len() == 1 {
                return Ok(Lab::at(&running[0].name, running[0].dir.clone()));
            }
            // None running (say, after a crash) but only one lab known: that one.
            if running.is_empty() && labs.len() == 1 {
                return Ok(labs.into_iter().next().unwrap());
            }
            "default".to_string()
        }
    };
    match fs::read_link(labs_dir().join(&name)) {
        Ok(dir) => Ok(Lab::at(&name, dir)),
        Err(_) => bail!("no lab named {name:?}: start one with `weft up --name {name}`"),
    }
}

pub fn register(name: &str, dir: &Path) -> Result<()> {
    fs::create_dir_all(labs_dir())?;
    let link = labs_dir().join(name);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(dir, &link).with_context(|| format!("registering lab {name:?}"))?;
    Ok(())
}

pub fn unregister(name: &str) {
    let _ = fs::remove_file(labs_dir().join(name));
}

/// Starts the daemon for `lab` in the background and waits until it reports ready (through a
/// pipe, so there is no polling) or fails (then its log says why).
pub fn spawn_daemon(lab: &Lab) -> Result<()> {
    let exe = std::env::current_exe()?;
    let log = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new().create(true).append(true).mode(0o600).open(lab.dir.join("weft.log"))?
    };
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe()?;
    let wr_fd = wr.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--name")
        .arg(&lab.name)
        .arg("--state-dir")
        .arg(&lab.dir)
        .arg("--ready-fd")
        .arg(wr_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: the daemon outlives the terminal and `weft up`.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // Let the pipe's write end survive exec.
            let flags = nix::fcntl::fcntl(std::os::fd::BorrowedFd::borrow_raw(wr_fd), nix::fcntl::FcntlArg::F_GETFD)
                .map_err(std::io::Error::from)?;
            let mut fl = nix::fcntl::FdFlag::from_bits_truncate(flags);
            fl.remove(nix::fcntl::FdFlag::FD_CLOEXEC);
            nix::fcntl::fcntl(std::os::fd::BorrowedFd::borrow_raw(wr_fd), nix::fcntl::FcntlArg::F_SETFD(fl))
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    // The daemon outlives this command; its handle is not waited for.
    let _daemon = cmd.spawn().context("starting the weft daemon")?;
    drop(wr);
    // Progress lines, then "ready" or the reason it failed.
    let mut last = String::new();
    for line in std::io::BufReader::new(fs::File::from(rd)).lines() {
        let line = line?;
        if line == "ready" {
            return Ok(());
        }
        match line.strip_prefix("progress: ") {
            Some(p) => eprintln!("  {p}"),
            None => last = line,
        }
    }
    let tail = fs::read_to_string(lab.dir.join("weft.log")).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
    bail!("the weft daemon for lab {:?} did not start: {}\n{}", lab.name, last.trim(), tail.join("\n"))
}

/// Removes a lab's state directory, its marker last: a removal cut short leaves a directory
/// that the next `weft down` still recognises as weft's and finishes.
pub fn remove_state_dir(dir: &Path) -> Result<()> {
    let gone_ok = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries.flatten() {
        if e.file_name() == MARKER {
            continue;
        }
        let p = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        gone_ok(r).with_context(|| format!("removing {}", p.display()))?;
    }
    gone_ok(fs::remove_file(dir.join(MARKER))).with_context(|| format!("removing {}", dir.join(MARKER).display()))?;
    gone_ok(fs::remove_dir(dir)).with_context(|| format!("removing {}", dir.display()))
}

/// Stops the daemon (SIGTERM, then SIGKILL after `grace`) and waits until its lock is free.
pub fn stop_daemon(lab: &Lab, grace: Duration) -> Result<()> {
    if !lab.running() {
        return Ok(());
    }
    let Some(pid) = lab.pid() else { bail!("lab {:?} runs but has no daemon.pid", lab.name) };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    // Wait on the lock itself: a blocking lock returns the moment the daemon exits.
    let f = fs::File::open(lab.dir.join("daemon.lock"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive);
        let _ = tx.send(());
    });
    if rx.recv_timeout(grace).is_err() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        rx.recv_timeout(Duration::from_secs(10)).context("the daemon did not exit after SIGKILL")?;
    }
    Ok(())
}
