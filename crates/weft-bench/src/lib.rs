//! Shared helpers of the benchmark programs: percentiles, resident memory; the throwaway lab is
//! `weft_testkit::Lab`, the one the tests use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

pub use weft_testkit::{Lab, LabOptions, weft_bin};

pub mod world;

/// Another binary of the weft package next to `weft` (e.g. `weft-dns`).
pub fn sibling_bin(name: &str) -> PathBuf {
    weft_bin().with_file_name(name)
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

/// A small seeded generator (SplitMix64): the same seed gives the same run, so a benchmark's
/// world or a chaos run can be replayed. Not for anything secret.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// An index below `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
