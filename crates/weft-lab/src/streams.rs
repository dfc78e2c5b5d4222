//! `kubectl exec`, `attach` and `port-forward` in a lab: the lab's side of the API server's
//! [`PodStreams`]. A pod is found by its kubelet's sandbox record; its shim (pid 1 of the pod's
//! PID namespace, in the pod's network, mount and UTS namespaces) is the way in.
//!
//! - exec joins the shim's namespaces ([`ProcessNamespaces`]: network, mount with the pod's
//!   resolv.conf, /proc and hidden state directory, UTS, PID) and runs the command as the
//!   container's own processes run: its environment ([`shim::container_env`]), working
//!   directory, capabilities and no_new_privs ([`shim::confine`]); with a tty, on a new pty that
//!   is its controlling terminal, resized as the client asks.
//! - attach follows the container's output from now on, through the lab's logs (a container's
//!   stdout and stderr are its log), and ends with the container's instance; a container with
//!   `stdin: true` reads a fifo its shim made, which attach writes the client's stdin to.
//! - port-forward connects to 127.0.0.1:PORT from inside the pod's network namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_apiserver::pod_logs::{LogOptions, PodLogs, PodRef};
use weft_apiserver::streams::{BoxRead, Duplex, PodStreams, Process, StreamOptions};
use weft_netlink::ns::ProcessNamespaces;

use crate::kubelet::{Sandbox, load_sandbox, pod_dir, shim_alive};
use crate::shim::{self, ContainerSpec, ShimSpec};

/// The streams of the pods of the lab whose state directory this is.
pub struct LabPodStreams {
    pub state_dir: PathBuf,
}

fn not_found(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, msg)
}

/// A path component from the API (a pod's uid) that names one entry.
fn plain(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains('/')
}

/// The pod's sandbox, with its shim alive.
pub fn running_sandbox(state_dir: &Path, pod: PodRef<'_>) -> io::Result<Sandbox> {
    let (ns, name) = (pod.namespace, pod.name);
    let sb = plain(pod.uid)
        .then(|| load_sandbox(state_dir, pod.uid))
        .flatten()
        .ok_or_else(|| not_found(format!("pod {ns}/{name} has no sandbox in this lab: is it running?")))?;
    if !shim_alive(&sb) {
        return Err(not_found(format!("the shim of pod {ns}/{name} is not running: the pod is being restarted")));
    }
    Ok(sb)
}

/// The pod's shim spec and the spec of one of its containers, as the shim runs it.
fn container_spec(state_dir: &Path, pod: PodRef<'_>, name: &str) -> io::Result<(ShimSpec, ContainerSpec)> {
    let path = pod_dir(state_dir, pod.uid).join("shim.json");
    let spec: ShimSpec = serde_json::from_slice(&std::fs::read(&path)?)
        .map_err(|e| io::Error::other(format!("reading {}: {e}", path.display())))?;
    let c = spec.containers.iter().find(|c| c.name == name).cloned().ok_or_else(|| {
        not_found(format!("container {name} of pod {}/{} is not running in its sandbox", pod.namespace, pod.name))
    })?;
    Ok((spec, c))
}

/// A command as the container's processes run, inside the running pod of shim `shim_pid`:
/// its namespaces joined first (that needs the capabilities), then the container's
/// capabilities and no_new_privs. Stdio and the session are the caller's.
pub fn pod_command(
    ns: &ProcessNamespaces,
    argv: &[String],
    c: &ContainerSpec,
    spec: &ShimSpec,
) -> io::Result<std::process::Command> {
    let Some(program) = argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty command"));
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..]).env_clear().envs(shim::container_env(c, spec));
    ns.command(&mut cmd, c.workdir.as_deref().map(Path::new)).map_err(io::Error::other)?;
    let sec = c.security.clone();
    // SAFETY: `confine` makes system calls only.
    unsafe {
        cmd.pre_exec(move || shim::confine(&sec));
    }
    Ok(cmd)
}

/// A pty's master side, for tokio: reads are the terminal's output, writes its input.
struct PtyMaster(AsyncFd<OwnedFd>);

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: an OwnedFd stays open, and the same descriptor, for as long as it is owned.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(PtyMaster(fd))
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|fd| {
                // SAFETY: read into the initialized, unfilled part of the buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: write from a live slice.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A terminal has no half-close: end-of-input is ^D, which the client types itself.
        self.poll_flush(cx)
    }
}

/// Kills the session of an exec'd process if the client goes before the process ends.
struct SessionGuard {
    pid: i32,
    ended: Arc<AtomicBool>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if !self.ended.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().or(st.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// Starts `argv` in container `c` of the running pod of shim `shim_pid`, its stdio as `opts`
/// asks (with a tty: a new pty, the controlling terminal of a session of its own).
fn spawn_exec(shim_pid: u32, c: &ContainerSpec, spec: &ShimSpec, opts: &StreamOptions) -> io::Result<Process> {
    let ns = ProcessNamespaces::of(shim_pid).map_err(|e| not_found(format!("the pod's shim: {e}")))?;
    let mut cmd = pod_command(&ns, &opts.command, c, spec)?;
    let mut master = None;
    if opts.tty {
        let size =
            opts.size.map(|(cols, rows)| nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 });
        let pty = nix::pty::openpty(size.as_ref(), None).map_err(io::Error::from)?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        // runc sets TERM for a terminal that has none.
        if !c.env.iter().any(|(k, _)| k == "TERM") {
            cmd.env("TERM", "xterm");
        }
        // SAFETY: setsid and ioctl only: a session whose controlling terminal is the pty.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        master = Some(pty.master);
    } else {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(opts.stdin)).stdout(pipe(opts.stdout)).stderr(pipe(opts.stderr));
        // SAFETY: setsid only: a session of its own, so it can be stopped whole.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let program = opts.command[0].clone();
    let rt = tokio::runtime::Handle::current();
    let spawned = ns
        .spawn(move || {
            let _rt = rt.enter();
            // The command (and the pty's slave ends it holds) goes with this thread.
            tokio::process::Command::from(cmd).spawn()
        })
        .map_err(io::Error::other)?;
    let mut child = spawned.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            io::Error::other(format!("exec: {program:?}: executable file not found in $PATH (or in the container)"))
        }
        _ => io::Error::other(format!("starting {program:?}: {e}")),
    })?;
    let pid = child.id().unwrap_or(0) as i32;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let ended = Arc::new(AtomicBool::new(false));
    let guard = SessionGuard { pid, ended: ended.clone() };
    let exit: BoxFuture<'static, io::Result<i32>> = Box::pin(async move {
        let st = child.wait().await;
        ended.store(true, Ordering::SeqCst);
        drop(guard);
        st.map(exit_code)
    });
    Ok(match master {
        Some(m) => {
            let resize_fd = m.try_clone()?;
            let reader = PtyMaster::new(m.try_clone()?)?;
            let writer = PtyMaster::new(m)?;
            let resize = move |cols: u16, rows: u16| -> io::Result<()> {
                let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                // SAFETY: TIOCSWINSZ with a winsize that lives through the call.
                if unsafe { libc::ioctl(resize_fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            };
            Process {
                stdin: opts.stdin.then(|| Box::pin(writer) as _),
                stdout: Some(Box::pin(reader)),
                stderr: None,
                resize: Some(Box::new(resize)),
                exit,
            }
        }
        None => Process {
            stdin: stdin.map(|w| Box::pin(w) as _),
            stdout: stdout.map(|r| Box::pin(r) as _),
            stderr: stderr.map(|r| Box::pin(r) as _),
            resize: None,
            exit,
        },
    })
}

impl PodStreams for LabPodStreams {
    fn exec(&self, pod: PodRef<'_>, name: &str, opts: &StreamOptions) -> BoxFuture<'static, io::Result<Process>> {
        let found = running_sandbox(&self.state_dir, pod)
            .and_then(|sb| container_spec(&self.state_dir, pod, name).map(|(spec, c)| (sb, spec, c)));
        let opts = opts.clone();
        Box::pin(async move {
            let (sb, spec, c) = found?;
            spawn_exec(sb.shim_pid, &c, &spec, &opts)
        })
    }

    fn attach(
        &self,
        pod: PodRef<'_>,
        container: &str,
        opts: &StreamOptions,
    ) -> BoxFuture<'static, io::Result<Process>> {
        // The container's stdin, if it has one (`stdin: true`): the fifo its shim gave it.
        let stdin = match opts.stdin {
            false => Ok(None),
            true => container_spec(&self.state_dir, pod, container).and_then(|(_, c)| {
                if !c.stdin {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "container {container} of pod {}/{} was not started with stdin: set stdin: true in \
                             its spec to attach to its input, or attach without -i to follow its output",
                            pod.namespace, pod.name
                        ),
                    ));
                }
                Ok(Some(shim::stdin_path(&pod_dir(&self.state_dir, pod.uid), container)))
            }),
        };
        let found = running_sandbox(&self.state_dir, pod);
        let logs = crate::logs::LabPodLogs { state_dir: self.state_dir.clone() };
        // What the container writes from now on, as `kubectl logs -f` would show it.
        let follow = LogOptions { follow: true, since: Some(jiff::Timestamp::now()), ..Default::default() };
        let stream = found.and_then(|_| logs.open(pod, container, &follow));
        let dir = pod_dir(&self.state_dir, pod.uid);
        let (container, want_output) = (container.to_string(), opts.stdout || opts.stderr);
        Box::pin(async move {
            let stdin = match stdin? {
                // The shim holds the fifo open for reading while the container runs.
                Some(path) => Some(Box::pin(
                    tokio::net::unix::pipe::OpenOptions::new()
                        .open_sender(&path)
                        .map_err(|e| io::Error::new(e.kind(), format!("opening the container's stdin: {e}")))?,
                ) as weft_apiserver::streams::BoxWrite),
                None => None,
            };
            let mut stream = stream?;
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(8);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            tokio::task::spawn_blocking(move || {
                while !tx.is_closed() {
                    match stream.next_chunk(Duration::from_millis(300)) {
                        Ok(Some(c)) if c.is_empty() => continue,
                        Ok(Some(c)) => {
                            if tx.blocking_send(Ok(c)).is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            break;
                        }
                    }
                }
                let _ = done_tx.send(());
            });
            let exit: BoxFuture<'static, io::Result<i32>> = Box::pin(async move {
                let _ = done_rx.await;
                // The instance ended (or the client went): its exit code as the shim reported it.
                let code = shim::read_status(&dir)
                    .and_then(|st| st.containers.into_iter().find(|c| c.name == container))
                    .and_then(|c| c.exit_code)
                    .unwrap_or(0);
                Ok(code)
            });
            let out: BoxRead = Box::pin(ChunkReader { rx, pending: vec![], at: 0 });
            Ok(Process { stdin, stdout: want_output.then_some(out), stderr: None, resize: None, exit })
        })
    }

    fn port_forward(&self, pod: PodRef<'_>, port: u16) -> BoxFuture<'static, io::Result<Box<dyn Duplex>>> {
        let found = running_sandbox(&self.state_dir, pod);
        Box::pin(async move {
            let sb = found?;
            let netns = crate::netns::path(&sb.netns);
            let std = tokio::task::spawn_blocking(move || {
                // A socket made inside the namespace stays there, whichever thread uses it.
                weft_netlink::ns::run_in(Some(&netns), move || {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                    s.set_nonblocking(true)?;
                    let _ = s.set_nodelay(true);
                    Ok::<_, io::Error>(s)
                })
                .map_err(io::Error::other)?
            })
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to 127.0.0.1:{port} inside the pod: {e}")))?;
            Ok(Box::new(tokio::net::TcpStream::from_std(std)?) as Box<dyn Duplex>)
        })
    }
}

/// Chunks from a channel as a byte stream.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    pending: Vec<u8>,
    at: usize,
}

impl AsyncRead for ChunkReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at >= self.pending.len() {
            match ready!(self.rx.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(c)) => {
                    self.pending = c;
                    self.at = 0;
                }
            }
        }
        let n = buf.remaining().min(self.pending.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.pending[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}
