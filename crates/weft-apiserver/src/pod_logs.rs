//! Where pods' container logs come from. The API server checks the request (the pod exists,
//! the container is one of its own, the options, as kube-apiserver's `PodLogOptions`) and leaves
//! the reading to whatever runs the containers: in a lab, the lab's kubelets (`weft_lab::logs`),
//! passed in by the daemon. A log is read as a [`LogStream`] of chunks, so `follow` (a response
//! that goes on while the container writes) is the same code as a plain read.

use std::time::Duration;

/// The pod whose log is asked for.
#[derive(Clone, Copy, Debug)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// The options of `kubectl logs` the kubelet applies (`PodLogOptions`). `limitBytes` is the
/// server's own ([`limit`]), applied to whatever stream a [`PodLogs`] returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The log of the container's previous instance (the one before its last restart).
    pub previous: bool,
    /// Go on sending what the container writes until it ends.
    pub follow: bool,
    /// Only lines written at or after this time (`sinceTime`, or now minus `sinceSeconds`).
    pub since: Option<jiff::Timestamp>,
    /// Each line prefixed with the time it was written (RFC 3339, nanoseconds) and a space.
    pub timestamps: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<usize>,
    /// At most this many bytes of the log.
    pub limit_bytes: Option<u64>,
}

/// A container's log being read.
pub trait LogStream: Send {
    /// The next bytes of the log as the options format it. `Ok(None)`: the log has ended (for a
    /// follow: the container's instance has ended and everything it wrote was sent). A follow
    /// that has nothing new within `wait` returns an empty chunk, so the caller can notice that
    /// its client went away.
    fn next_chunk(&mut self, wait: Duration) -> std::io::Result<Option<Vec<u8>>>;
}

pub trait PodLogs: Send + Sync {
    /// Opens a container's log. Errors: `NotFound` (no log for this pod here), `InvalidInput`
    /// (kubelet's 400s: a container waiting to start, no previous instance), others are 500s.
    fn open(&self, pod: PodRef<'_>, container: &str, opts: &LogOptions) -> std::io::Result<Box<dyn LogStream>>;
}

/// A stream cut after `limit` bytes (`limitBytes`), as kube-apiserver's `LimitWriter`.
pub fn limit(inner: Box<dyn LogStream>, limit: Option<u64>) -> Box<dyn LogStream> {
    match limit {
        None => inner,
        Some(left) => Box::new(Limited { inner, left }),
    }
}

struct Limited {
    inner: Box<dyn LogStream>,
    left: u64,
}

impl LogStream for Limited {
    fn next_chunk(&mut self, wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
        if self.left == 0 {
            return Ok(None);
        }
        let Some(mut chunk) = self.inner.next_chunk(wait)? else { return Ok(None) };
        if chunk.len() as u64 > self.left {
            chunk.truncate(self.left as usize);
        }
        self.left -= chunk.len() as u64;
        Ok(Some(chunk))
    }
}

/// Reads what a log holds now into memory, at most `max` bytes (a follow stops at its first
/// wait).
pub fn read_all(mut s: Box<dyn LogStream>, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = vec![];
    while let Some(chunk) = s.next_chunk(Duration::ZERO)? {
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
        if out.len() >= max {
            out.truncate(max);
            break;
        }
    }
    Ok(out)
}

/// For an API server that runs no containers (no lab): no pod has a log.
pub struct NoPodLogs;

impl PodLogs for NoPodLogs {
    fn open(&self, pod: PodRef<'_>, _container: &str, _opts: &LogOptions) -> std::io::Result<Box<dyn LogStream>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("pod {}/{} has no logs here: this API server runs no containers", pod.namespace, pod.name),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that gives its chunks, then ends.
    struct Chunks(Vec<Vec<u8>>);

    impl LogStream for Chunks {
        fn next_chunk(&mut self, _wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
            Ok(if self.0.is_empty() { None } else { Some(self.0.remove(0)) })
        }
    }

    fn chunks(parts: &[&str]) -> Box<dyn LogStream> {
        Box::new(Chunks(parts.iter().map(|p| p.as_bytes().to_vec()).collect()))
    }

    #[test]
    fn limit_cuts_at_the_byte_and_ends_the_stream() {
        assert_eq!(read_all(limit(chunks(&["abc\n", "def\n"]), None), 100).unwrap(), b"abc\ndef\n");
        assert_eq!(read_all(limit(chunks(&["abc\n", "def\n"]), Some(5)), 100).unwrap(), b"abc\nd");
        assert_eq!(read_all(limit(chunks(&["abc\n", "def\n"]), Some(4)), 100).unwrap(), b"abc\n");
        let mut s = limit(chunks(&["abc\n", "def\n"]), Some(4));
        assert!(s.next_chunk(Duration::ZERO).unwrap().is_some());
        // Nothing more is read once the limit is reached: a follow ends there.
        assert!(s.next_chunk(Duration::ZERO).unwrap().is_none());
        assert_eq!(read_all(chunks(&["abcdef"]), 3).unwrap(), b"abc");
    }
}
