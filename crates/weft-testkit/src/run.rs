//! Commands bounded in time (killed by their pid past a limit), and bounded waits.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Runs `cmd` to its end with stdout and stderr captured, killing it (by its pid) past `limit`.
/// A killed command's output says so at the end of its stderr, and its status is not a success.
pub fn output_bounded(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    // Files, not pipes: a child that fills a pipe nobody reads would stall until the limit.
    let dir = tempfile::tempdir()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child =
        cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&out)?).stderr(std::fs::File::create(&err)?).spawn()?;
    let start = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            killed = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = std::fs::read(&err).unwrap_or_default();
    if killed {
        stderr.extend_from_slice(format!("\n(killed: did not finish within {limit:?})\n").as_bytes());
    }
    Ok(Output { status, stdout: std::fs::read(&out).unwrap_or_default(), stderr })
}

/// Runs `cmd` as [`output_bounded`] does and returns its stdout; a non-zero exit or the limit is
/// an error carrying what the command said.
pub fn run_bounded(cmd: Command, limit: Duration) -> Result<String> {
    let out = output_bounded(cmd, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("{}: {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(stdout)
}

/// Checks `f` every `every` until it holds (true) or `limit` has passed (false).
pub fn wait_until(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Awaits `f` every 200 ms until it gives a value; panics naming `what` after `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lines under `label:` in `weft describe`'s output: its own line and the continuation lines
/// indented to the value column (26 spaces).
pub fn describe_section(text: &str, label: &str) -> Vec<String> {
    let mut out = vec![];
    let mut inside = false;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix(&format!("{label}:")) {
            inside = true;
            out.push(rest.trim().to_string());
        } else if inside && l.starts_with(&" ".repeat(26)) {
            out.push(l.trim().to_string());
        } else if inside {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_limit_is_killed_and_says_so() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let out = output_bounded(c, Duration::from_millis(200)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("killed"));
    }

    #[test]
    fn output_and_failures_are_reported() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2"]);
        let out = output_bounded(c, Duration::from_secs(10)).unwrap();
        assert_eq!((out.stdout.as_slice(), out.stderr.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
        let mut c = Command::new("sh");
        c.args(["-c", "echo why >&2; exit 3"]);
        let e = run_bounded(c, Duration::from_secs(10)).unwrap_err().to_string();
        assert!(e.contains("why") && e.contains('3'), "{e}");
    }

    #[test]
    fn waits_are_bounded() {
        let t = Instant::now();
        assert!(!wait_until(Duration::from_millis(100), Duration::from_millis(10), || false));
        assert!(t.elapsed() < Duration::from_secs(2));
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            n == 3
        }));
    }
}
