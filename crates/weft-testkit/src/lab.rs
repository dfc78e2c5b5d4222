//! One lab for one test or benchmark: `weft up` in a temporary `$WEFT_HOME` under a unique name,
//! driven through the `weft` binary, kubectl and a kube client. On drop (also when the test
//! panics) it runs `weft down`, then stops by pid whatever is still running (the daemons it saw,
//! the pods' shims) and removes the lab's namespaces, so a failed test leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::run::{output_bounded, run_bounded};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long one `weft` or `kubectl` command may take before it is killed.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);
/// How long `weft down` may take when the lab is dropped.
const DOWN_LIMIT: Duration = Duration::from_secs(120);

/// The `weft` binary: `$WEFT_BIN`, else the one in the target directory of this test or
/// benchmark (cargo builds a package's binaries before its tests).
pub fn weft_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().expect("the current executable");
    let dir = me.parent().expect("a directory");
    // target/debug/deps/<test> or target/<profile>/<bench>.
    for cand in [dir.join("weft"), dir.join("../weft")] {
        if cand.is_file() {
            return cand;
        }
    }
    PathBuf::from("weft")
}

/// A seed manifest of `examples/seeds`.
pub fn seed(name: &str) -> String {
    format!("{}/../../examples/seeds/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The kubectl the tests run: `$WEFT_TEST_KUBECTL` (say, the newest, built by `scripts/peers
/// kubernetes`), else the machine's.
pub fn kubectl_bin() -> PathBuf {
    std::env::var_os("WEFT_TEST_KUBECTL").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or("kubectl".into())
}

/// The control plane labs run on unless a test chooses: `$WEFT_TEST_CONTROL_PLANE` (`weft`,
/// the embedded API, or `kubernetes`, a real one), so one test runs in either mode.
pub fn control_plane() -> String {
    std::env::var("WEFT_TEST_CONTROL_PLANE").ok().filter(|v| !v.is_empty()).unwrap_or("weft".into())
}

/// How to bring a lab up.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    name: Option<String>,
    args: Vec<String>,
    bin: Option<PathBuf>,
    limit: Option<Duration>,
}

impl LabOptions {
    pub fn new() -> LabOptions {
        LabOptions::default()
    }
    /// The lab's name (default: unique to this process, `weft-t<pid>-<n>`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    pub fn nodes(self, n: u32) -> Self {
        self.args(&["--nodes", &n.to_string()])
    }
    pub fn state_dir(self, dir: &Path) -> Self {
        self.args(&["--state-dir", &dir.display().to_string()])
    }
    /// More `weft up` flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
    /// The `weft` binary (default [`weft_bin`]).
    pub fn bin(mut self, bin: &Path) -> Self {
        self.bin = Some(bin.to_path_buf());
        self
    }
    /// How long `weft up` may take (default 300 s).
    pub fn up_limit(mut self, limit: Duration) -> Self {
        self.limit = Some(limit);
        self
    }
}

pub struct Lab {
    pub name: String,
    /// `$WEFT_HOME` of this lab: its registry and (by default) its state directory.
    pub home: tempfile::TempDir,
    bin: PathBuf,
    /// Daemon pids seen, to stop whatever `weft down` did not.
    daemons: Mutex<Vec<i32>>,
    /// Brought down on purpose ([`Lab::down`]): drop only checks nothing is left.
    down: AtomicBool,
}

impl Lab {
    /// `weft up` with a unique name; `extra` are more `weft up` flags. Panics if it fails.
    pub fn up(extra: &[&str]) -> Lab {
        Lab::start(LabOptions::new().args(extra)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `weft up` as `opts` say.
    pub fn start(opts: LabOptions) -> Result<Lab> {
        let limit = opts.limit.unwrap_or(COMMAND_LIMIT);
        let lab = Lab::with_options(&opts);
        let mut args = vec!["up"];
        args.extend(opts.args.iter().map(String::as_str));
        let mode = control_plane();
        if !opts.args.iter().any(|a| a.starts_with("--control-plane")) {
            args.extend(["--control-plane", &mode]);
        }
        lab.weft_run(&args, limit)?;
        Ok(lab)
    }

    /// A lab with a name and a home that is not up yet (for tests of `weft up` itself).
    pub fn unstarted(name: &str) -> Lab {
        Lab::with_options(&LabOptions::new().name(name))
    }

    fn with_options(opts: &LabOptions) -> Lab {
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("weft-t{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
        Lab {
            name,
            home: tempfile::tempdir().expect("a temporary directory"),
            bin: opts.bin.clone().unwrap_or_else(weft_bin),
            daemons: Mutex::new(vec![]),
            down: AtomicBool::new(false),
        }
    }

    /// `prog` with this lab's `$WEFT_HOME` and `$WEFT_CLUSTER`.
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(prog);
        c.env("WEFT_HOME", self.home.path()).env("WEFT_CLUSTER", &self.name);
        c
    }

    /// The `weft` binary, for this lab.
    pub fn weft_cmd(&self) -> Command {
        self.cmd(&self.bin)
    }

    /// `weft ARGS` to its end (killed past 300 s).
    pub fn weft(&self, args: &[&str]) -> Output {
        let mut c = self.weft_cmd();
        c.args(args);
        let out = output_bounded(c, COMMAND_LIMIT).unwrap_or_else(|e| panic!("running weft: {e}"));
        self.note_daemon();
        out
    }

    /// Runs weft and returns stdout, failing the test on a non-zero exit.
    pub fn weft_ok(&self, args: &[&str]) -> String {
        let out = self.weft(args);
        assert!(
            out.status.success(),
            "weft {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `weft ARGS`, killed past `limit`; its stdout, or an error with what it said.
    pub fn weft_run(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut c = self.weft_cmd();
        c.args(args);
        let r = run_bounded(c, limit).with_context(|| format!("weft {}", args.join(" ")));
        self.note_daemon();
        r
    }

    /// `weft down`, on purpose: the drop then only removes what it left.
    pub fn down(&self, limit: Duration) -> Result<String> {
        let r = self.weft_run(&["down"], limit);
        self.down.store(r.is_ok(), Ordering::SeqCst);
        r
    }

    /// The lab's state directory (panics if the lab is not registered).
    pub fn state_dir(&self) -> PathBuf {
        self.try_state_dir().expect("the lab is registered")
    }

    pub fn try_state_dir(&self) -> Option<PathBuf> {
        std::fs::read_link(self.home.path().join("labs").join(&self.name)).ok()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir().join("kubeconfig")
    }

    /// The running daemon's pid (panics if there is none on record).
    pub fn daemon_pid(&self) -> i32 {
        self.try_daemon_pid().expect("the daemon's pid on record")
    }

    pub fn try_daemon_pid(&self) -> Option<i32> {
        let pid = std::fs::read_to_string(self.try_state_dir()?.join("daemon.pid")).ok()?.trim().parse().ok()?;
        let mut seen = self.daemons.lock().unwrap();
        if !seen.contains(&pid) {
            seen.push(pid);
        }
        Some(pid)
    }

    fn note_daemon(&self) {
        let _ = self.try_daemon_pid();
    }

    /// A client of the lab's API (panics if the kubeconfig is unusable).
    pub async fn client(&self) -> kube::Client {
        crate::kubeconfig::client(&self.kubeconfig()).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A seed manifest of `examples/seeds` (see [`seed`]).
    pub fn fixture(name: &str) -> String {
        seed(name)
    }

    /// Applies a seed manifest with kubectl, as a user would. On a real kube-apiserver, seed
    /// 000's `networking.k8s.io/v1beta1` Ingress is refused (not served since Kubernetes 1.22;
    /// the embedded API still takes it as written): the refusal is checked, and the same
    /// Ingress goes in as v1.
    pub fn apply_seed(&self, name: &str) {
        if name == "ingress-v1beta1.yaml" && control_plane() == "kubernetes" {
            let o = self.kubectl(&["apply", "-f", &seed(name)]);
            let err = String::from_utf8_lossy(&o.stderr);
            let refusal = "no matches for kind \"Ingress\" in version \"networking.k8s.io/v1beta1\"";
            assert!(!o.status.success() && err.contains(refusal), "{err}");
            self.apply_str(SEED_000_AS_V1);
            return;
        }
        self.kubectl_ok(&["apply", "-f", &seed(name)]);
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut c = Command::new(kubectl_bin());
        c.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        output_bounded(c, COMMAND_LIMIT).expect("kubectl is installed")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits (bounded) until `f` holds, checking every 100 ms; panics naming `what` at the limit.
    pub fn wait_for(&self, what: &str, timeout_s: u64, f: impl FnMut() -> bool) {
        if !crate::run::wait_until(Duration::from_secs(timeout_s), Duration::from_millis(100), f) {
            panic!("timed out after {timeout_s} s waiting for {what}");
        }
    }

    /// The pods of `ns` as JSON (`weft get pods -o json`).
    pub fn pods(&self, ns: &str) -> Vec<Value> {
        let out = self.weft_ok(&["get", "pods", "-n", ns, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `n` pods in `ns` run with an IP and are Ready.
    pub fn wait_running(&self, ns: &str, n: usize) -> Vec<Value> {
        self.wait_running_where(ns, n, |_| true)
    }

    /// As [`Lab::wait_running`], counting only the pods labelled `key=value` (kube-system also
    /// holds the ingress controller beside the DNS pods).
    pub fn wait_running_labeled(&self, ns: &str, (key, value): (&str, &str), n: usize) -> Vec<Value> {
        self.wait_running_where(ns, n, |p| p["metadata"]["labels"][key] == value)
    }

    fn wait_running_where(&self, ns: &str, n: usize, mut select: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut last = vec![];
        self.wait_for(&format!("{n} running pods"), 60, || {
            last = self.pods(ns);
            last.retain(&mut select);
            last.len() == n
                && last.iter().all(|p| {
                    p["status"]["phase"] == "Running"
                        && p["status"]["podIP"].is_string()
                        && p["status"]["conditions"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
        });
        last
    }

    /// `weft apply -f` of a manifest (YAML, or JSON documents).
    pub fn apply_str(&self, yaml: &str) {
        let f = self.home.path().join(format!("m{}.yaml", COUNTER.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&f, yaml).unwrap();
        self.weft_ok(&["apply", "-f", f.to_str().unwrap()]);
    }

    /// `weft apply -f` of typed objects (see [`crate::objects`]).
    pub fn apply<K: serde::Serialize>(&self, objects: &[K]) {
        self.apply_str(&crate::objects::manifest(objects));
    }

    /// Runs a command in a pod (or `--node N`, `--external`).
    pub fn exec(&self, target: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["exec"];
        args.extend_from_slice(target);
        args.push("--");
        args.extend_from_slice(cmd);
        self.weft(&args)
    }

    /// Runs a command like [`exec`](Self::exec) and returns stdout, failing the test on error.
    pub fn exec_ok(&self, target: &[&str], cmd: &[&str]) -> String {
        let o = self.exec(target, cmd);
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// The built-in echo server's JSON answer to `curl URL` run from `target`.
    pub fn http_json(&self, target: &[&str], url: &str) -> Value {
        let out = self.exec_ok(target, &["curl", "-s", "-m", "3", url]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The lab's network namespaces that exist (`weft-<name>-...`).
    pub fn netns_left(&self) -> Vec<String> {
        weft_netlink::ns::list(&format!("weft-{}-", self.name))
    }

    /// A pod's sandbox record as the kubelet keeps it (`pods/<uid>/sandbox.json`), by name.
    pub fn sandbox(&self, pod: &str) -> Result<Value> {
        for e in std::fs::read_dir(self.state_dir().join("pods"))?.flatten() {
            let Ok(bytes) = std::fs::read(e.path().join("sandbox.json")) else { continue };
            let v: Value = serde_json::from_slice(&bytes)?;
            if v["name"] == pod {
                return Ok(v);
            }
        }
        bail!("no sandbox for {pod}")
    }

    /// Stops by pid what `weft down` left running: the daemons seen and the pods' shims (with
    /// their sessions), each only if it still is this lab's.
    fn stop_leftovers(&self) {
        let state = self.try_state_dir();
        for pid in self.daemons.lock().unwrap().iter().copied() {
            if cmdline(pid).is_some_and(|c| is_daemon_of(&c, &self.name)) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let Some(state) = state else { return };
        let marker = format!("{}/pods/", state.display());
        for e in std::fs::read_dir(state.join("pods")).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(e.path().join("sandbox.json")) else { continue };
            let Some(pid) = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v["shim_pid"].as_i64()) else {
                continue;
            };
            let Ok(pid) = i32::try_from(pid) else { continue };
            if pid > 1 && cmdline(pid).is_some_and(|c| c.iter().any(|a| a.contains(&marker))) {
                // A shim leads its session and process group: take the containers too.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect())
}

/// Is this command line `weft daemon --name NAME ...` (the pid was not reused)?
fn is_daemon_of(cmdline: &[String], name: &str) -> bool {
    cmdline.get(1).is_some_and(|a| a == "daemon") && cmdline.windows(2).any(|w| w[0] == "--name" && w[1] == name)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down.load(Ordering::SeqCst) && self.try_state_dir().is_some() {
            let mut c = self.weft_cmd();
            c.arg("down");
            let _ = output_bounded(c, DOWN_LIMIT);
        }
        self.stop_leftovers();
        for ns in self.netns_left() {
            let _ = weft_netlink::ns::delete(&ns);
        }
    }
}

/// Seed 000's Ingress in networking.k8s.io/v1, for a real kube-apiserver.
const SEED_000_AS_V1: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: test-ingress
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  rules:
  - host: online.com
    http:
      paths:
      - {path: /watch, pathType: Prefix, backend: {service: {name: test, port: {number: 80}}}}
      - {path: /wear, pathType: Prefix, backend: {service: {name: test, port: {number: 80}}}}
"#;
