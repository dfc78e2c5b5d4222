//! The pod shim (`weft shim SPEC`): one process per pod, in a session of its own so it outlives
//! the daemon (pods keep running across a daemon restart, as with containerd's shims). It enters
//! the pod's network namespace, takes private mount and UTS namespaces (the pod's resolv.conf over
//! /etc/resolv.conf, the pod's hostname), runs the containers' processes, restarts them per
//! `restartPolicy` with back-off, keeps their output in bounded, rotated log files and reports
//! their state in `status.json` for the kubelet.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

/// The shim's handle on the host's network namespace, as a path its children can open.
static HOST_NETNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A log file is rotated at this size; one old file is kept.
pub const LOG_LIMIT: u64 = 10 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimSpec {
    pub pod: String,
    pub namespace: String,
    pub uid: String,
    pub netns: PathBuf,
    pub hostname: String,
    pub resolv_conf: Option<PathBuf>,
    pub dir: PathBuf,
    pub restart_policy: String,
    pub containers: Vec<ContainerSpec>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub name: String,
    pub running: bool,
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub restart_count: u32,
    pub reason: Option<String>,
    /// Gave up (restartPolicy says so): the container will not run again.
    pub done: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShimStatus {
    pub shim_pid: u32,
    pub containers: Vec<ContainerState>,
}

pub fn log_path(dir: &Path, container: &str) -> PathBuf {
    dir.join(format!("{container}.log"))
}

pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn write_status(dir: &Path, st: &ShimStatus) {
    let tmp = dir.join("status.json.tmp");
    if fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default()).is_ok() {
        let _ = fs::rename(&tmp, dir.join("status.json"));
    }
}

pub fn read_status(dir: &Path) -> Option<ShimStatus> {
    serde_json::from_slice(&fs::read(dir.join("status.json")).ok()?).ok()
}

/// Enters the pod's namespaces. Mounts are slaves of the host's, so a namespace file the host
/// removes disappears here too.
fn enter(spec: &ShimSpec) -> Result<()> {
    let ns = File::open(&spec.netns).with_context(|| format!("opening {}", spec.netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).context("entering the pod's network namespace")?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS).context("unshare mount+uts")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .context("making / a slave")?;
    if let Some(r) = &spec.resolv_conf {
        mount(Some(r.as_path()), "/etc/resolv.conf", None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .context("bind-mounting the pod's resolv.conf")?;
    }
    nix::unistd::sethostname(&spec.hostname).context("sethostname")?;
    Ok(())
}

/// Appends a child's output to its log, rotating at [`LOG_LIMIT`].
fn pump(mut from: impl Read, path: PathBuf, lock: Arc<Mutex<()>>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let _g = lock.lock().unwrap();
        if fs::metadata(&path).map(|m| m.len() > LOG_LIMIT).unwrap_or(false) {
            let _ = fs::rename(&path, path.with_extension("log.1"));
        }
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) {
            let _ = f.write_all(&buf[..n]);
        }
    }
}

fn should_restart(policy: &str, code: Option<i32>) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != Some(0),
        _ => true,
    }
}

/// The shim's main: never returns while containers run.
pub fn run(spec_path: &Path) -> Result<()> {
    let spec: ShimSpec = serde_json::from_slice(&fs::read(spec_path)?).context("reading the shim spec")?;
    // SIGTERM is taken synchronously by one thread; block it everywhere first.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.add(nix::sys::signal::Signal::SIGINT);
    mask.thread_block()?;
    // The host's network namespace stays open here so processes that need the host (the lab's
    // DNS watching the lab's API on 127.0.0.1) can reach it: WEFT_HOST_NETNS names it.
    let host_netns = File::open("/proc/self/ns/net").context("opening the host's network namespace")?;
    let _ = HOST_NETNS.set(format!("/proc/{}/fd/{}", std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&host_netns)));
    enter(&spec)?;
    let status = Arc::new(Mutex::new(ShimStatus {
        shim_pid: std::process::id(),
        containers: spec
            .containers
            .iter()
            .map(|c| ContainerState { name: c.name.clone(), ..Default::default() })
            .collect(),
    }));
    write_status(&spec.dir, &status.lock().unwrap());
    let stopping = Arc::new(AtomicBool::new(false));
    let children: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut threads = vec![];
    for (i, c) in spec.containers.iter().cloned().enumerate() {
        let (status, stopping, children, spec) = (status.clone(), stopping.clone(), children.clone(), spec.clone());
        threads.push(std::thread::spawn(move || supervise(i, c, &spec, status, stopping, children)));
    }
    // Wait for a stop signal, or for every container to be done.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = mask.wait();
            let _ = tx.send(());
        });
    }
    std::thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
        let _ = tx.send(());
    });
    let _ = rx.recv();
    stopping.store(true, Ordering::SeqCst);
    let pids: Vec<u32> = children.lock().unwrap().values().copied().collect();
    for p in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !children.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in children.lock().unwrap().values() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGKILL);
    }
    Ok(())
}

fn supervise(
    i: usize,
    c: ContainerSpec,
    spec: &ShimSpec,
    status: Arc<Mutex<ShimStatus>>,
    stopping: Arc<AtomicBool>,
    children: Arc<Mutex<HashMap<String, u32>>>,
) {
    let log = log_path(&spec.dir, &c.name);
    let log_lock = Arc::new(Mutex::new(()));
    let mut backoff = Duration::from_secs(1);
    loop {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut cmd = Command::new(&c.argv[0]);
        cmd.args(&c.argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOSTNAME", &spec.hostname)
            .env("WEFT_HOST_NETNS", HOST_NETNS.get().map(String::as_str).unwrap_or(""))
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(w) = &c.workdir {
            cmd.current_dir(w);
        }
        let started = Instant::now();
        let code = match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                children.lock().unwrap().insert(c.name.clone(), pid);
                {
                    let mut st = status.lock().unwrap();
                    let s = &mut st.containers[i];
                    s.running = true;
                    s.pid = Some(pid);
                    s.started_at = Some(now());
                    s.reason = None;
                    write_status(&spec.dir, &st);
                }
                let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
                let (l1, l2, p1, p2) = (log_lock.clone(), log_lock.clone(), log.clone(), log.clone());
                let t1 = std::thread::spawn(move || pump(o, p1, l1));
                let t2 = std::thread::spawn(move || pump(e, p2, l2));
                let code = child.wait().ok().and_then(|s| {
                    s.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig))
                });
                let _ = t1.join();
                let _ = t2.join();
                children.lock().unwrap().remove(&c.name);
                code
            }
            Err(e) => {
                if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&log) {
                    let _ = writeln!(f, "weft: cannot start {:?}: {e}", c.argv[0]);
                }
                Some(127)
            }
        };
        let restart = !stopping.load(Ordering::SeqCst) && should_restart(&spec.restart_policy, code);
        {
            let mut st = status.lock().unwrap();
            let s = &mut st.containers[i];
            s.running = false;
            s.pid = None;
            s.exit_code = code;
            s.finished_at = Some(now());
            s.reason = Some(if code == Some(0) { "Completed".into() } else { "Error".into() });
            if restart {
                s.restart_count += 1;
            } else {
                s.done = true;
            }
            write_status(&spec.dir, &st);
        }
        if !restart {
            return;
        }
        // Back-off as kubelet does (shorter: this is a lab), reset after a good run.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_secs(1);
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
