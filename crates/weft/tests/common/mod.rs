//! A lab for one test: its own `$WEFT_HOME` and name, brought down when the test ends (also
//! when it panics).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

pub struct TestLab {
    pub name: String,
    pub home: tempfile::TempDir,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestLab {
    /// `weft up` with a unique name; `extra` are more `weft up` flags.
    pub fn up(extra: &[&str]) -> TestLab {
        let name = format!("weft-t{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let home = tempfile::tempdir().expect("tempdir");
        let lab = TestLab { name, home };
        let mut args = vec!["up"];
        args.extend_from_slice(extra);
        let out = lab.weft(&args);
        assert!(out.status.success(), "weft up failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("WEFT_HOME", self.home.path()).env("WEFT_CLUSTER", &self.name);
        c
    }

    pub fn weft(&self, args: &[&str]) -> Output {
        self.cmd(WEFT).args(args).output().expect("run weft")
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

    pub fn state_dir(&self) -> PathBuf {
        std::fs::read_link(self.home.path().join("labs").join(&self.name)).expect("lab registered")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir().join("kubeconfig")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl is installed")
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

    pub fn daemon_pid(&self) -> i32 {
        std::fs::read_to_string(self.state_dir().join("daemon.pid")).unwrap().trim().parse().unwrap()
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    pub fn fixture(name: &str) -> String {
        format!("{}/../../examples/seeds/{name}", env!("CARGO_MANIFEST_DIR"))
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.weft(&["down"]);
    }
}

impl TestLab {
    /// Waits (bounded) until `f` holds, checking every 100 ms.
    pub fn wait_for(&self, what: &str, timeout_s: u64, mut f: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
        while std::time::Instant::now() < until {
            if f() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("timed out after {timeout_s} s waiting for {what}");
    }

    /// The pods as JSON (`weft get pods -o json`).
    pub fn pods(&self, ns: &str) -> Vec<serde_json::Value> {
        let out = self.weft_ok(&["get", "pods", "-n", ns, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `n` pods in `ns` run with an IP and are Ready.
    pub fn wait_running(&self, ns: &str, n: usize) -> Vec<serde_json::Value> {
        let mut last = vec![];
        self.wait_for(&format!("{n} running pods"), 60, || {
            last = self.pods(ns);
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

    pub fn apply_str(&self, yaml: &str) {
        let f = self.home.path().join(format!("m{}.yaml", COUNTER.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&f, yaml).unwrap();
        self.weft_ok(&["apply", "-f", f.to_str().unwrap()]);
    }

    /// Runs a command in a pod (or `--node N`, `--external`) and returns stdout.
    pub fn exec(&self, target: &[&str], cmd: &[&str]) -> std::process::Output {
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
    pub fn http_json(&self, target: &[&str], url: &str) -> serde_json::Value {
        let out = self.exec_ok(target, &["curl", "-s", "-m", "3", url]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    pub fn netns_left(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&format!("weft-{}-", self.name)))
                    .collect()
            })
            .unwrap_or_default()
    }
}
