//! Shared helpers of the benchmark programs: a throwaway lab, percentiles, resident memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The `weft` binary next to this benchmark (same target directory).
pub fn weft_bin() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let dir = me.parent().unwrap();
    for cand in [dir.join("weft"), dir.join("../weft")] {
        if cand.exists() {
            return cand;
        }
    }
    PathBuf::from("weft")
}

/// Another binary of the workspace, built next to `weft` (e.g. `weft-dns`).
pub fn sibling_bin(name: &str) -> PathBuf {
    weft_bin().with_file_name(name)
}

/// A lab with its own `$WEFT_HOME`, brought down on drop.
pub struct BenchLab {
    pub name: String,
    pub home: tempfile::TempDir,
}

impl BenchLab {
    pub fn up(name: &str, extra: &[&str]) -> Result<BenchLab> {
        let home = tempfile::tempdir()?;
        let lab = BenchLab { name: name.to_string(), home };
        let out = lab.weft().arg("up").args(extra).output()?;
        if !out.status.success() {
            bail!("weft up failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(lab)
    }
    pub fn weft(&self) -> Command {
        let mut c = Command::new(weft_bin());
        c.env("WEFT_HOME", self.home.path()).env("WEFT_CLUSTER", &self.name);
        c
    }
    pub fn state_dir(&self) -> PathBuf {
        std::fs::read_link(self.home.path().join("labs").join(&self.name)).expect("registered")
    }
    pub fn daemon_pid(&self) -> i32 {
        std::fs::read_to_string(self.state_dir().join("daemon.pid")).unwrap().trim().parse().unwrap()
    }
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.state_dir().join("kubeconfig"))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let _ = self.weft().arg("down").output();
    }
}

/// Resident memory of a process in MiB.
pub fn rss_mib(pid: i32) -> Result<f64> {
    status_mib(pid, "VmRSS")
}

/// A memory figure of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`, `VmHWM`) in MiB.
pub fn status_mib(pid: i32, field: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// The p-th percentile (0..=100) of durations, in milliseconds.
pub fn percentile_ms(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort();
    let idx = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[idx.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
