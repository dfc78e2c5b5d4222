//! The pod shim (`weft shim SPEC`): one process per pod, in a session of its own so it outlives
//! the daemon (pods keep running across a daemon restart, as with containerd's shims), started by
//! [`spawn`] as pid 1 of a PID namespace of the pod's own (it reaps the pod's orphans; when it
//! ends, the kernel ends everything in the pod). It enters the pod's network namespace, takes
//! private mount and UTS namespaces (the pod's resolv.conf over /etc/resolv.conf, a /proc of the
//! pod's PID namespace with containerd's read-only and masked paths, a read-only /sys, the lab's
//! state directory hidden, the pod's hostname), runs the containers' processes with their
//! capabilities and no_new_privs ([`Security`]), init containers first, one after another
//! (sidecars kept running), each container in a process group of its own; restarts them per
//! `restartPolicy` with back-off, keeps their output in bounded, rotated log files, reports
//! their state in `status.json` for the kubelet, and runs the kubelet's exec probes in the pod
//! (`exec.sock`, [`exec_probe`]) with their timeout. On the same socket it takes the kubelet's
//! stop requests ([`stop`]): one container (a failed liveness probe: it restarts) or the whole
//! pod (its deletion: nothing restarts or starts any more): preStop hook, SIGTERM, SIGKILL to the
//! container's group at the end of the grace period.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::libc;
use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::container_log::{self, Stream};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub security: Security,
    /// `lifecycle.preStop`, run before the container is stopped (pod deletion, a failed liveness
    /// or startup probe).
    #[serde(default)]
    pub pre_stop: Option<Hook>,
    /// An init container's own `restartPolicy`: `Always` makes it a sidecar, started in its turn
    /// and kept running beside the app containers.
    #[serde(default)]
    pub restart_policy: Option<String>,
    /// `stdin: true`: the container reads a fifo that `kubectl attach -i` writes to
    /// ([`stdin_fifo`]); otherwise its stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

/// A lifecycle hook as the shim runs it (the kubelet resolves ports and the pod's address).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Hook {
    /// A command in the container (its environment and capabilities).
    Exec(Vec<String>),
    /// `GET path` from `addr` (the pod's own address unless the hook names a host); any answer
    /// will do: the kubelet's HTTP handler does not look at the status.
    Http { addr: std::net::SocketAddr, path: String, host: String, headers: Vec<(String, String)> },
    /// `sleep.seconds`.
    Sleep(u64),
    /// A hook the lab cannot run (HTTPS, an unknown port): it fails with this message.
    Invalid(String),
}

/// What a container's processes may do, from its `securityContext` ([`Security::of`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Security {
    /// The capabilities kept, a bit per `CAP_*` number; `None` keeps all (`privileged: true`).
    pub caps: Option<u64>,
    /// PR_SET_NO_NEW_PRIVS (unless `allowPrivilegeEscalation: true` or privileged).
    pub no_new_privs: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security { caps: Some(DEFAULT_CAPS), no_new_privs: true }
    }
}

/// Capability names by number (`CAP_` left off), as in linux/capability.h.
pub const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability's bit from its name as a securityContext writes it (`NET_ADMIN`, `CAP_NET_ADMIN`,
/// any case).
pub fn cap_bit(name: &str) -> Option<u64> {
    let up = name.trim().to_ascii_uppercase();
    let up = up.strip_prefix("CAP_").unwrap_or(&up);
    CAP_NAMES.iter().position(|n| *n == up).map(|i| 1u64 << i)
}

/// containerd's (and Docker's) default capabilities: CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD,
/// NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE.
pub const DEFAULT_CAPS: u64 = 0xa80425fb;

impl Security {
    /// As containerd's CRI plugin reads a container's securityContext: privileged keeps every
    /// capability; otherwise the default set, `add: [ALL]` / `drop: [ALL]` first, then the named
    /// ones added, then the named ones dropped (an unknown name is ignored). no_new_privs unless
    /// `allowPrivilegeEscalation: true` (stricter than Kubernetes, which sets it only for an
    /// explicit `false`: the lab's pods are all root on the host's file system).
    pub fn of(sc: Option<&k8s_openapi::api::core::v1::SecurityContext>) -> Security {
        if sc.and_then(|s| s.privileged) == Some(true) {
            return Security { caps: None, no_new_privs: false };
        }
        let (add, drop) = sc
            .and_then(|s| s.capabilities.as_ref())
            .map(|c| (c.add.clone().unwrap_or_default(), c.drop.clone().unwrap_or_default()))
            .unwrap_or_default();
        let all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        let mut caps = DEFAULT_CAPS;
        if all(&add) {
            caps = (1u64 << CAP_NAMES.len()) - 1;
        }
        if all(&drop) {
            caps = 0;
        }
        caps |= add.iter().filter_map(|c| cap_bit(c)).fold(0, |a, b| a | b);
        caps &= !drop.iter().filter_map(|c| cap_bit(c)).fold(0, |a, b| a | b);
        let escalate = sc.and_then(|s| s.allow_privilege_escalation) == Some(true);
        Security { caps: Some(caps), no_new_privs: !escalate }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Applies `sec` to the calling process, for the program it is about to exec (run between fork
/// and exec: system calls only, nothing allocated). The bounding set loses what is not kept (an
/// exec'd root program gets its bounding set), ambient and inheritable sets are cleared,
/// effective and permitted cut to the kept set; then no_new_privs.
pub fn confine(sec: &Security) -> std::io::Result<()> {
    if let Some(keep) = sec.caps {
        for cap in 0..64u64 {
            if keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
                return Err(e);
            }
        }
        // SAFETY: as above.
        unsafe {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
        }
        let mut hdr = CapHeader { version: 0x2008_0522, pid: 0 };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget/capset with a version-3 header and two data words, as the ABI says.
        if unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (i, d) in data.iter_mut().enumerate() {
            let k = (keep >> (32 * i)) as u32;
            d.effective &= k;
            d.permitted &= k;
            d.inheritable = 0;
        }
        if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if sec.no_new_privs {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
    /// `spec.initContainers`, run one after another (each to completion, or started for a
    /// sidecar) before `containers` start.
    #[serde(default)]
    pub init_containers: Vec<ContainerSpec>,
    /// Directories hidden from the pod (an empty read-only tmpfs over each): the lab's state
    /// directory, with the API's credentials and the other pods' files.
    #[serde(default)]
    pub hide: Vec<PathBuf>,
    /// Volumes bind-mounted into the pod (projected ones: `crate::volumes`).
    #[serde(default)]
    pub mounts: Vec<crate::volumes::Mount>,
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
    /// The last stop's preStop hook failed (or did not finish in the grace period): why.
    #[serde(default)]
    pub pre_stop_error: Option<String>,
    /// The last stop ended with SIGKILL at the end of the grace period.
    #[serde(default)]
    pub killed: bool,
    /// Stops asked of this container so far (a liveness kill, the pod's deletion).
    #[serde(default)]
    pub stop_count: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShimStatus {
    pub shim_pid: u32,
    pub containers: Vec<ContainerState>,
    #[serde(default)]
    pub init_containers: Vec<ContainerState>,
    /// The kubelet asked the pod to stop: nothing is started or restarted any more.
    #[serde(default)]
    pub terminating: bool,
    /// Every init container finished (or, a sidecar, started): the app containers run.
    #[serde(default)]
    pub initialized: bool,
}

impl ShimSpec {
    /// Init containers, then app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.init_containers.iter().chain(&self.containers)
    }
}

/// The log of one instance of a container (its restart count when it started).
pub fn log_path(dir: &Path, container: &str, instance: u32) -> PathBuf {
    container_log::instance_path(dir, container, instance)
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

/// Enters the pod (`weft_netlink::ns::enter_pod`: its network namespace, private mount and UTS
/// namespaces, resolv.conf, hostname) and hardens its view of the host. The caller is pid 1 of
/// the pod's PID namespace: the /proc mounted here shows the pod's processes only; as containerd does, some of /proc is read-only
/// (/proc/sys, /proc/sysrq-trigger, ...) or masked (/proc/kcore, ...), and /sys is read-only.
fn enter(spec: &ShimSpec) -> Result<()> {
    weft_netlink::ns::enter_pod(&weft_netlink::ns::PodEntry {
        netns: spec.netns.clone(),
        resolv_conf: spec.resolv_conf.clone(),
        hostname: Some(spec.hostname.clone()),
    })
    .context("entering the pod")?;
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), hard, None::<&str>).context("mounting the pod's /proc")?;
    for p in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"] {
        if Path::new(p).exists() {
            mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .and_then(|_| {
                    mount(
                        None::<&str>,
                        p,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | hard,
                        None::<&str>,
                    )
                })
                .with_context(|| format!("making {p} read-only"))?;
        }
    }
    for p in ["/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/sched_debug"] {
        if Path::new(p).is_file() {
            mount(Some("/dev/null"), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .with_context(|| format!("masking {p}"))?;
        }
    }
    for p in ["/proc/acpi", "/proc/scsi"] {
        if Path::new(p).is_dir() {
            mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY | hard, None::<&str>)
                .with_context(|| format!("masking {p}"))?;
        }
    }
    // A sysfs of the pod's network namespace, read-only (the host's /sys/class/net, /sys/power,
    // ... are out of reach).
    mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::MS_RDONLY | hard, None::<&str>)
        .context("mounting a read-only /sys")?;
    Ok(())
}

/// Hides each directory behind an empty read-only tmpfs.
fn hide(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("tmpfs"), d, Some("tmpfs"), flags, Some("size=4k,mode=0755"))
            .with_context(|| format!("hiding {}", d.display()))?;
    }
    Ok(())
}

/// Starts the shim for `spec` (`weft shim SPEC`, `exe` being the `weft` binary) as pid 1 of a new
/// PID namespace, in a session of its own, its output to `log`. Returns its pid (as this process
/// sees it).
pub fn spawn(exe: &Path, spec: &Path, log: &File) -> Result<u32> {
    let args = [std::ffi::OsStr::new("shim"), spec.as_os_str()];
    Ok(weft_netlink::ns::spawn_pid_namespace(exe, &args, log)?)
}

/// The pod's child processes and who waits for each. As pid 1 of the pod, the shim also inherits
/// every orphan of the pod: those are reaped and forgotten.
#[derive(Default)]
struct Reaper {
    waiting: Mutex<HashMap<i32, Sender<i32>>>,
}

impl Reaper {
    /// Spawns `cmd`; its exit code (128+signal when killed) arrives on the receiver.
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<(std::process::Child, Receiver<i32>)> {
        // Held across the spawn: an exit seen before the child is registered waits for it.
        let mut w = self.waiting.lock().unwrap();
        let child = cmd.spawn()?;
        let (tx, rx) = channel();
        w.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    fn run(&self) {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        loop {
            // Look first (without reaping), so a child that std's spawn reaps itself (a failed
            // exec) is not taken from under it.
            let pid = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(st) => match st.pid() {
                    Some(p) => p,
                    None => continue,
                },
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let mut w = self.waiting.lock().unwrap();
            let code = match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => c,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                _ => continue,
            };
            if let Some(tx) = w.remove(&pid.as_raw()) {
                let _ = tx.send(code);
            }
        }
    }
}

/// Where a container with `stdin: true` reads its input from: a fifo in the pod's directory,
/// which `kubectl attach -i` writes to (`weft_lab::streams`).
pub fn stdin_path(dir: &Path, container: &str) -> PathBuf {
    dir.join(format!("{container}.stdin"))
}

/// The container's stdin: the fifo, opened for reading and writing so that it never reads an
/// end of file while no client is attached (a container's stdin stays open, as with
/// `stdinOnce: false`). /dev/null if the fifo cannot be made.
fn stdin_fifo(dir: &Path, container: &str) -> Stdio {
    let path = stdin_path(dir, container);
    let made = nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600));
    if made.is_err() && made != Err(nix::errno::Errno::EEXIST) {
        return Stdio::null();
    }
    fs::OpenOptions::new().read(true).write(true).open(&path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// The container's environment, as its processes (and its exec probes) get it.
pub fn container_env(c: &ContainerSpec, spec: &ShimSpec) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOSTNAME".to_string(), spec.hostname.clone()),
    ];
    env.extend(c.env.iter().cloned());
    env
}

/// A command of container `c`: its environment, its capabilities and no_new_privs.
fn container_command(argv: &[String], c: &ContainerSpec, spec: &ShimSpec) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(container_env(c, spec)).stdin(Stdio::null());
    if let Some(w) = &c.workdir {
        cmd.current_dir(w);
    }
    let sec = c.security.clone();
    // SAFETY: `confine` makes system calls only.
    unsafe {
        cmd.pre_exec(move || confine(&sec));
    }
    cmd
}

#[derive(Serialize, Deserialize, Default)]
struct ExecRequest {
    #[serde(default)]
    container: String,
    #[serde(default)]
    argv: Vec<String>,
    #[serde(default)]
    timeout_ms: u64,
    /// Not a probe but a stop: of `container`, or of the whole pod.
    #[serde(default)]
    stop: Option<StopRequest>,
}

/// Stop a container (a failed liveness or startup probe: it restarts as its policy says) or the
/// whole pod (its deletion: nothing restarts, nothing more starts): preStop, SIGTERM, SIGKILL
/// once `grace_ms` from now have passed (at least [`MIN_KILL_WINDOW`] after the SIGTERM, as the
/// kubelet's minimum grace). A second request can only bring the pod's deadline closer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StopRequest {
    grace_ms: u64,
    pod: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct ExecReply {
    exit: Option<i32>,
    timed_out: bool,
    error: Option<String>,
    /// What an exec probe wrote (stdout and stderr, cut at 10 KiB).
    #[serde(default)]
    output: String,
}

pub const EXEC_SOCKET: &str = "exec.sock";

/// Connects to a socket in `dir` through a descriptor of the directory (a path under
/// /proc/self/fd stays short whatever the state directory's length).
fn connect_in(dir: &Path, name: &str) -> std::io::Result<UnixStream> {
    let d = File::open(dir)?;
    UnixStream::connect(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()))
}

/// What the kubelet's exec probe gets from the pod whose shim keeps `dir`: did `argv` exit 0
/// within `timeout`, run by the shim in the pod's namespaces as container `container`'s process
/// (else its output, or that it timed out)? A probe still running at the timeout is killed
/// (with its process group) and fails. An outer error: the shim could not be asked.
pub fn exec_probe(
    dir: &Path,
    container: &str,
    argv: &[String],
    timeout: Duration,
) -> Result<std::result::Result<(), String>> {
    let s = connect_in(dir, EXEC_SOCKET).context("connecting to the pod's shim")?;
    s.set_read_timeout(Some(timeout + Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let req = ExecRequest {
        container: container.into(),
        argv: argv.to_vec(),
        timeout_ms: timeout.as_millis() as u64,
        stop: None,
    };
    let r = ask(s, &req)?;
    if let Some(e) = r.error {
        anyhow::bail!("{e}");
    }
    if r.timed_out {
        return Ok(Err(format!("command {:?} timed out", argv.join(" "))));
    }
    Ok(if r.exit == Some(0) { Ok(()) } else { Err(r.output) })
}

/// One request on the shim's control socket and its one-line answer.
fn ask(mut s: UnixStream, req: &ExecRequest) -> Result<ExecReply> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).context("the shim's answer")?;
    serde_json::from_str(&reply).context("the shim's answer")
}

/// Asks the shim of the pod whose files are in `dir` to stop `container` (`None`: the whole pod,
/// for its deletion) within `grace`; see [`StopRequest`]. Returns once the shim has taken the
/// request; the stop goes on in the shim.
pub fn stop(dir: &Path, container: Option<&str>, grace: Duration) -> Result<()> {
    let s = connect_in(dir, EXEC_SOCKET).context("connecting to the pod's shim")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let req = ExecRequest {
        container: container.unwrap_or_default().into(),
        stop: Some(StopRequest { grace_ms: grace.as_millis() as u64, pod: container.is_none() }),
        ..Default::default()
    };
    match ask(s, &req)?.error {
        Some(e) => anyhow::bail!("{e}"),
        None => Ok(()),
    }
}

fn serve_exec(listener: UnixListener, pod: Arc<PodRun>) {
    for conn in listener.incoming().flatten() {
        let pod = pod.clone();
        std::thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                return;
            }
            let reply = match serde_json::from_str::<ExecRequest>(&line) {
                Ok(ExecRequest { stop: Some(stop), container, .. }) => pod.stop(&container, &stop),
                Ok(req) => run_exec(&req, &pod.spec, &pod.reaper),
                Err(e) => ExecReply { error: Some(format!("bad request: {e}")), ..Default::default() },
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = (&conn).write_all(&out);
        });
    }
}

fn run_exec(req: &ExecRequest, spec: &ShimSpec, reaper: &Reaper) -> ExecReply {
    let Some(c) = spec.all_containers().find(|c| c.name == req.container) else {
        return ExecReply { error: Some(format!("no container {:?}", req.container)), ..Default::default() };
    };
    if req.argv.is_empty() {
        return ExecReply { error: Some("an empty command".into()), ..Default::default() };
    }
    let mut cmd = container_command(&req.argv, c, spec);
    // Its output (both streams, as the kubelet reads a probe's), for the probe's failure message.
    let output = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok((r, w)) => {
            let w2 = w.try_clone().ok();
            cmd.stdout(Stdio::from(w));
            cmd.stderr(w2.map(Stdio::from).unwrap_or_else(Stdio::null));
            let (tx, rx) = channel();
            std::thread::spawn(move || tx.send(read_bounded(File::from(r), PROBE_OUTPUT_LIMIT)));
            Some(rx)
        }
        Err(_) => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            None
        }
    };
    cmd.process_group(0);
    let spawned = reaper.spawn(&mut cmd);
    // The write ends go with the command: the reader sees the end once the probe's are closed.
    drop(cmd);
    let (child, rx) = match spawned {
        Ok(x) => x,
        // As a runtime reports a command it cannot start: a failed probe, not an error.
        Err(_) => return ExecReply { exit: Some(127), ..Default::default() },
    };
    let group = Pid::from_raw(child.id() as i32);
    let mut reply = match rx.recv_timeout(Duration::from_millis(req.timeout_ms.max(1))) {
        Ok(code) => ExecReply { exit: Some(code), ..Default::default() },
        Err(_) => {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(2));
            ExecReply { timed_out: true, ..Default::default() }
        }
    };
    // What the probe left running in its group would hold its output open.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    // Bounded: a process that left the group could keep the pipe open.
    reply.output = output.and_then(|o| o.recv_timeout(Duration::from_secs(1)).ok()).unwrap_or_default();
    reply
}

/// A probe's output is cut here, as the kubelet cuts it (10 KiB).
const PROBE_OUTPUT_LIMIT: usize = 10 << 10;

/// Reads `from` to its end, keeping the first `limit` bytes.
fn read_bounded(mut from: File, limit: usize) -> String {
    let (mut kept, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => kept.extend_from_slice(&buf[..n.min(limit.saturating_sub(kept.len()))]),
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The write end of the pipe the stop signals are reported on.
static STOP_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_stop(_: libc::c_int) {
    let fd = STOP_PIPE.load(Ordering::SeqCst);
    // SAFETY: write(2) is async-signal-safe.
    unsafe {
        libc::write(fd, b"x".as_ptr().cast(), 1);
    }
}

/// Copies a child's output stream into its instance's log, line by line in the CRI format
/// (`container_log`: timestamps, partial lines, rotation).
fn pump(from: impl Read, stream: Stream, log: Arc<container_log::Writer>) {
    log.pump(stream, from)
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
    let mut spec: ShimSpec = serde_json::from_slice(&fs::read(spec_path)?).context("reading the shim spec")?;
    // Stop signals go to a handler that reports them on a pipe (not to a blocked mask: the
    // runtime's threads predate this call, and as pid 1 a signal without a handler is dropped).
    let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    STOP_PIPE.store(stop_w.as_raw_fd(), Ordering::SeqCst);
    std::mem::forget(stop_w);
    {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let act = SigAction::new(SigHandler::Handler(on_stop), SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handler only writes to a pipe.
        unsafe {
            sigaction(Signal::SIGTERM, &act)?;
            sigaction(Signal::SIGINT, &act)?;
        }
    }
    enter(&spec)?;
    crate::volumes::mount_in_pod(&spec.mounts, &spec.dir.join("shadow")).context("mounting the pod's volumes")?;
    // The pod's own files through a descriptor: the state directory is hidden next.
    let dir = File::open(&spec.dir).with_context(|| format!("opening {}", spec.dir.display()))?;
    spec.dir = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let sock = spec.dir.join(EXEC_SOCKET);
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).context("binding the exec socket")?;
    hide(&spec.hide)?;
    let spec = Arc::new(spec);
    let reaper = Arc::new(Reaper::default());
    {
        let reaper = reaper.clone();
        std::thread::spawn(move || reaper.run());
    }
    let state = |c: &ContainerSpec| ContainerState { name: c.name.clone(), ..Default::default() };
    let pod = Arc::new(PodRun {
        status: Mutex::new(ShimStatus {
            shim_pid: std::process::id(),
            containers: spec.containers.iter().map(state).collect(),
            init_containers: spec.init_containers.iter().map(state).collect(),
            initialized: spec.init_containers.is_empty(),
            terminating: false,
        }),
        spec,
        reaper,
        stopping: AtomicBool::new(false),
        children: Mutex::default(),
        deadline: Mutex::new(None),
        stops: Mutex::default(),
    });
    write_status(&pod.spec.dir, &pod.status.lock().unwrap());
    {
        let pod = pod.clone();
        std::thread::spawn(move || serve_exec(listener, pod));
    }
    // Wait for a stop signal, or for every container to be done.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let _ = File::from(stop_r).read(&mut b);
            let _ = tx.send(());
        });
    }
    {
        let pod = pod.clone();
        std::thread::spawn(move || {
            run_pod(&pod);
            let _ = tx.send(());
        });
    }
    let _ = rx.recv();
    // A stop signal (the sandbox's teardown, `weft down`): no hooks, 2 s, then this process
    // ends and the kernel kills whatever is left in the pod's PID namespace.
    let deadline = Instant::now() + Duration::from_secs(2);
    pod.stop_all(deadline, false);
    while Instant::now() < deadline && !pod.children.lock().unwrap().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The pod's containers in order: init containers one after another (each to completion, a
/// sidecar until it runs), then the app containers together; returns when they are all done.
fn run_pod(pod: &Arc<PodRun>) {
    let spec = pod.spec.clone();
    let mut sidecars = vec![];
    let mut ok = true;
    for (i, c) in spec.init_containers.iter().cloned().enumerate() {
        if pod.stopping.load(Ordering::SeqCst) {
            ok = false;
            break;
        }
        if c.restart_policy.as_deref() == Some("Always") {
            let p = pod.clone();
            sidecars.push(std::thread::spawn(move || supervise(Slot::Init(i), c, "Always", &p)));
            // Its turn ends once it runs (a startup probe, which the kubelet runs, is not waited for).
            while !pod.stopping.load(Ordering::SeqCst) && !pod.state(Slot::Init(i)).running {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        // The pod's Always is OnFailure for an init container: it has to finish once.
        let policy = if spec.restart_policy == "Never" { "Never" } else { "OnFailure" };
        if supervise(Slot::Init(i), c, policy, pod) != Some(0) {
            ok = false;
            break;
        }
    }
    if ok {
        pod.update(|st| st.initialized = true);
        let apps: Vec<_> = spec
            .containers
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| {
                let p = pod.clone();
                std::thread::spawn(move || supervise(Slot::App(i), c, &p.spec.restart_policy.clone(), &p))
            })
            .collect();
        for t in apps {
            let _ = t.join();
        }
    }
    // Sidecars end with the pod's other containers, as the kubelet stops them (unless the pod
    // is being stopped: then they are on their way out with what is left of its grace period).
    if !sidecars.is_empty() && !pod.stopping.load(Ordering::SeqCst) {
        pod.stop_all(Instant::now() + Duration::from_secs(2), false);
    }
    for t in sidecars {
        let _ = t.join();
    }
}

/// Which container of the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Init(usize),
    App(usize),
}

/// What the shim's threads share about the pod.
struct PodRun {
    spec: Arc<ShimSpec>,
    reaper: Arc<Reaper>,
    status: Mutex<ShimStatus>,
    /// The pod is stopping: nothing more starts or restarts.
    stopping: AtomicBool,
    /// Each running container's main process by name; a container starts only with this held
    /// and `stopping` unset, so a stop sees every container that will ever run.
    children: Mutex<HashMap<String, u32>>,
    /// When a stopping pod's containers get SIGKILL (a later request may bring it closer).
    deadline: Mutex<Option<Instant>>,
    /// Containers with a stop under way.
    stops: Mutex<std::collections::HashSet<String>>,
}

impl PodRun {
    fn slot(&self, name: &str) -> Option<Slot> {
        let s = &self.spec;
        s.init_containers
            .iter()
            .position(|c| c.name == name)
            .map(Slot::Init)
            .or_else(|| s.containers.iter().position(|c| c.name == name).map(Slot::App))
    }

    fn state(&self, slot: Slot) -> ContainerState {
        let st = self.status.lock().unwrap();
        match slot {
            Slot::Init(i) => st.init_containers[i].clone(),
            Slot::App(i) => st.containers[i].clone(),
        }
    }

    /// Changes the pod's status and writes status.json.
    fn update(&self, f: impl FnOnce(&mut ShimStatus)) {
        let mut st = self.status.lock().unwrap();
        f(&mut st);
        write_status(&self.spec.dir, &st);
    }

    fn update_container(&self, slot: Slot, f: impl FnOnce(&mut ContainerState)) {
        self.update(|st| match slot {
            Slot::Init(i) => f(&mut st.init_containers[i]),
            Slot::App(i) => f(&mut st.containers[i]),
        });
    }

    /// The kubelet's stop request: one container, or the whole pod (from then on nothing starts
    /// or restarts).
    fn stop(self: &Arc<Self>, container: &str, req: &StopRequest) -> ExecReply {
        let deadline = Instant::now() + Duration::from_millis(req.grace_ms);
        if req.pod {
            self.update(|st| st.terminating = true);
            self.stop_all(deadline, true);
            return ExecReply::default();
        }
        if self.slot(container).is_none() {
            return ExecReply { error: Some(format!("no container {container:?}")), ..Default::default() };
        }
        self.stop_one(container.to_string(), Some(deadline), true);
        ExecReply::default()
    }

    /// Stops every running container by `deadline` (sooner if an earlier stop said so), with
    /// their preStop hooks if `hooks`.
    fn stop_all(self: &Arc<Self>, deadline: Instant, hooks: bool) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let mut d = self.deadline.lock().unwrap();
            *d = Some(d.map_or(deadline, |old| old.min(deadline)));
        }
        let names: Vec<String> = self.children.lock().unwrap().keys().cloned().collect();
        for name in names {
            self.stop_one(name, None, hooks);
        }
    }

    /// Stops container `name` on a thread of its own (unless a stop of it is under way): its
    /// preStop hook, SIGTERM, then SIGKILL to its process group at its deadline (`own`, or the
    /// pod's; whichever is sooner), at least [`MIN_KILL_WINDOW`] after the SIGTERM.
    fn stop_one(self: &Arc<Self>, name: String, own: Option<Instant>, hooks: bool) {
        let Some(slot) = self.slot(&name) else { return };
        let Some(pid) = self.children.lock().unwrap().get(&name).copied() else { return };
        if !self.stops.lock().unwrap().insert(name.clone()) {
            return;
        }
        let pod = self.clone();
        std::thread::spawn(move || {
            let deadline = || {
                let pod_deadline = *pod.deadline.lock().unwrap();
                match (own, pod_deadline) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or_else(Instant::now),
                }
            };
            let still = || pod.children.lock().unwrap().get(&name) == Some(&pid);
            let c = pod.spec.all_containers().find(|c| c.name == name).cloned();
            // A sidecar stops once the app containers have, as the kubelet orders a pod's
            // termination (within the grace period).
            if own.is_none() && matches!(slot, Slot::Init(_)) {
                let app_running =
                    || pod.spec.containers.iter().any(|a| pod.children.lock().unwrap().contains_key(&a.name));
                while app_running() && Instant::now() < deadline() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            pod.update_container(slot, |s| {
                s.stop_count += 1;
                s.pre_stop_error = None;
                s.killed = false;
            });
            if let Some(hook) = c.as_ref().and_then(|c| c.pre_stop.as_ref()).filter(|_| hooks)
                && let Some(c) = &c
                && Instant::now() < deadline()
                && let Err(e) = pod.run_hook(hook, c, &deadline)
            {
                pod.update_container(slot, |s| s.pre_stop_error = Some(e));
            }
            let term_at = Instant::now();
            if still() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            while still() {
                if Instant::now() >= crate::lifecycle::kill_at(deadline(), term_at) {
                    let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
                    pod.update_container(slot, |s| s.killed = true);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            pod.stops.lock().unwrap().remove(&name);
        });
    }

    /// Runs a preStop hook of container `c`, given up at `deadline()` (which may come closer
    /// while it runs). The kubelet only waits for a hook until the grace period ends: a hook
    /// still running then is not an error.
    fn run_hook(&self, hook: &Hook, c: &ContainerSpec, deadline: &dyn Fn() -> Instant) -> Result<(), String> {
        let left = || deadline().saturating_duration_since(Instant::now());
        match hook {
            Hook::Invalid(why) => Err(why.clone()),
            Hook::Sleep(secs) => {
                // Seconds from the pod's spec: any number (None: past what an Instant holds).
                let until = Instant::now().checked_add(Duration::from_secs(*secs));
                while until.is_none_or(|u| Instant::now() < u) && !left().is_zero() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            }
            Hook::Exec(argv) if argv.is_empty() => Err("the preStop exec hook has no command".into()),
            Hook::Exec(argv) => {
                let mut cmd = container_command(argv, c, &self.spec);
                cmd.stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
                let (child, rx) = self.reaper.spawn(&mut cmd).map_err(|e| format!("starting {:?}: {e}", argv[0]))?;
                loop {
                    match rx.recv_timeout(left().min(Duration::from_millis(50))) {
                        Ok(0) => return Ok(()),
                        Ok(code) => return Err(format!("command {argv:?} exited with {code}")),
                        Err(_) if left().is_zero() => {
                            let pg = Pid::from_raw(child.id() as i32);
                            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                            return Ok(());
                        }
                        Err(_) => {}
                    }
                }
            }
            Hook::Http { addr, path, host, headers } => http_hook(*addr, path, host, headers, left()),
        }
    }
}

/// An httpGet hook: `GET path` from `addr` within `timeout`. The kubelet does not look at the
/// answer's status: an answer is a hook that ran; no connection or no answer is a failure.
fn http_hook(
    addr: std::net::SocketAddr,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let get = |why: &dyn std::fmt::Display| format!("Get \"http://{addr}{path}\": {why}");
    let timeout = timeout.max(Duration::from_millis(1));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| get(&e))?;
    let _ = s.set_write_timeout(Some(timeout));
    let _ = s.set_read_timeout(Some(timeout));
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-lifecycle/1.33\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| get(&e))?;
    let mut head = [0u8; 12];
    match s.read(&mut head) {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(get(&"EOF")),
        Err(e) => Err(get(&e)),
    }
}

/// Runs container `c` and restarts it as `policy` says (with back-off) until it is done or the
/// pod stops; returns its last exit code.
fn supervise(slot: Slot, c: ContainerSpec, policy: &str, pod: &PodRun) -> Option<i32> {
    let (spec, reaper) = (&*pod.spec, &*pod.reaper);
    let mut backoff = Duration::from_secs(1);
    let mut last = None;
    loop {
        let mut cmd = container_command(&c.argv, &c, spec);
        // A process group per container, so its stop (and its end) takes all its processes.
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        if c.stdin {
            cmd.stdin(stdin_fifo(&spec.dir, &c.name));
        }
        // This instance's log, named by its restart count as the kubelet names its files.
        let log = Arc::new(container_log::Writer::open(&spec.dir, &c.name, pod.state(slot).restart_count));
        let started = Instant::now();
        // Started with `children` held and the pod not stopping: a stop sees every container.
        let mut children = pod.children.lock().unwrap();
        if pod.stopping.load(Ordering::SeqCst) {
            return last;
        }
        let spawned = reaper.spawn(&mut cmd);
        if let Ok((child, _)) = &spawned {
            let pid = child.id();
            children.insert(c.name.clone(), pid);
            // Reported running before a stop can look: a stopping pod never seems to have
            // nothing left running while this starts.
            pod.update_container(slot, |s| {
                s.running = true;
                s.pid = Some(pid);
                s.started_at = Some(now());
                s.reason = None;
            });
        }
        drop(children);
        let code = match spawned {
            Ok((mut child, exited)) => {
                let pid = child.id();
                let (o, e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
                let (l1, l2) = (log.clone(), log.clone());
                let t1 = std::thread::spawn(move || pump(o, Stream::Stdout, l1));
                let t2 = std::thread::spawn(move || pump(e, Stream::Stderr, l2));
                let code = exited.recv().ok();
                // As a container's end ends its PID namespace: whatever it left in its group
                // goes too (and lets go of its output).
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
                let _ = t1.join();
                let _ = t2.join();
                pod.children.lock().unwrap().remove(&c.name);
                code
            }
            Err(e) => {
                log.message(&format!("weft: cannot start {:?}: {e}", c.argv[0]));
                Some(127)
            }
        };
        last = code;
        let restart = !pod.stopping.load(Ordering::SeqCst) && should_restart(policy, code);
        pod.update_container(slot, |s| {
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
        });
        if !restart {
            return last;
        }
        // Back-off as kubelet does (shorter: this is a lab), reset after a good run.
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_secs(1);
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if pod.stopping.load(Ordering::SeqCst) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::SecurityContext;
    use serde_json::json;

    fn sc(v: serde_json::Value) -> SecurityContext {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn capabilities_as_containerd_reads_a_security_context() {
        let net_admin = cap_bit("NET_ADMIN").unwrap();
        let sys_admin = cap_bit("CAP_SYS_ADMIN").unwrap();
        assert_eq!((net_admin, sys_admin), (1 << 12, 1 << 21));
        let names: Vec<&str> = (0..64).filter(|i| DEFAULT_CAPS & (1 << i) != 0).map(|i| CAP_NAMES[i]).collect();
        assert_eq!(
            names,
            [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "KILL",
                "SETGID",
                "SETUID",
                "SETPCAP",
                "NET_BIND_SERVICE",
                "NET_RAW",
                "SYS_CHROOT",
                "MKNOD",
                "AUDIT_WRITE",
                "SETFCAP"
            ]
        );
        assert_eq!(Security::of(None), Security { caps: Some(DEFAULT_CAPS), no_new_privs: true });
        let s = Security::of(Some(&sc(json!({"capabilities": {"add": ["NET_ADMIN"], "drop": ["chown", "CAP_KILL"]}}))));
        assert_eq!(s.caps, Some((DEFAULT_CAPS | net_admin) & !1 & !(1 << 5)));
        assert!(s.no_new_privs);
        let s = Security::of(Some(&sc(json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}))));
        assert_eq!(s.caps, Some(1 << 10));
        let s = Security::of(Some(&sc(json!({"capabilities": {"add": ["ALL"], "drop": ["SYS_ADMIN"]}}))));
        assert_eq!(s.caps, Some(((1u64 << 41) - 1) & !sys_admin));
        let s = Security::of(Some(&sc(json!({"allowPrivilegeEscalation": true}))));
        assert_eq!(s, Security { caps: Some(DEFAULT_CAPS), no_new_privs: false });
        let s = Security::of(Some(&sc(json!({"privileged": true, "capabilities": {"drop": ["ALL"]}}))));
        assert_eq!(s, Security { caps: None, no_new_privs: false });
        // An older spec without the field gets the default, not everything.
        let c: ContainerSpec = serde_json::from_value(json!({"name": "c", "argv": ["x"]})).unwrap();
        assert_eq!(c.security, Security::default());
    }

    /// A server on 127.0.0.1 that takes one request, hands it over and answers `reply`.
    fn one_request(reply: &'static [u8]) -> (std::net::SocketAddr, Receiver<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
            let _ = s.write_all(reply);
        });
        (addr, rx)
    }

    #[test]
    fn an_http_pre_stop_hook_sends_its_request_and_takes_any_answer() {
        let headers = vec![("X-Why".to_string(), "stop".to_string())];
        let (addr, got) = one_request(b"HTTP/1.1 500 Oops\r\n\r\n");
        assert_eq!(http_hook(addr, "/drain", "10.0.0.1:80", &headers, Duration::from_secs(2)), Ok(()));
        let req = got.recv_timeout(Duration::from_secs(3)).unwrap();
        assert!(req.starts_with("GET /drain HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"), "{req}");
        assert!(req.contains("\r\nX-Why: stop\r\n") && req.ends_with("\r\n\r\n"), "{req}");
        // Nothing listening: a failure that says where.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let why = http_hook(closed, "/", "h", &[], Duration::from_secs(1)).unwrap_err();
        assert!(why.starts_with(&format!("Get \"http://{closed}/\": ")), "{why}");
        // A server that never answers: given up at the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let t = Instant::now();
        assert!(http_hook(silent.local_addr().unwrap(), "/", "h", &[], Duration::from_millis(300)).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    /// What a process confined by `confine` sees of itself (runs `cat`, as root in the tests).
    #[test]
    fn confine_cuts_the_capability_sets_and_sets_no_new_privs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root");
            return;
        }
        let status = |sec: Security| -> String {
            let mut cmd = Command::new("cat");
            cmd.arg("/proc/self/status");
            unsafe {
                cmd.pre_exec(move || confine(&sec));
            }
            String::from_utf8(cmd.output().unwrap().stdout).unwrap()
        };
        let field =
            |s: &str, k: &str| -> String { s.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string() };
        let keep = DEFAULT_CAPS | (1 << 12);
        let s = status(Security { caps: Some(keep), no_new_privs: true });
        for k in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(u64::from_str_radix(&field(&s, k), 16).unwrap(), keep, "{k} in {s}");
        }
        assert_eq!(field(&s, "CapInh:"), "0000000000000000");
        assert_eq!(field(&s, "NoNewPrivs:"), "1");
        let s = status(Security { caps: None, no_new_privs: false });
        assert_eq!(field(&s, "NoNewPrivs:"), "0");
        assert_ne!(u64::from_str_radix(&field(&s, "CapEff:"), 16).unwrap() & (1 << 21), 0);
    }
}
