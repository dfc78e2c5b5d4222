//! Where pods' container logs come from. The API server checks the request (the pod exists,
//! the container is one of its own, the options) and leaves the reading to whatever runs the
//! containers: in a lab, the lab's kubelets (`weft_lab::logs`), passed in by the daemon.

/// The pod whose log is asked for.
#[derive(Clone, Copy, Debug)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// The options of `kubectl logs` that are served: `--previous` and `--tail`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The log of the container's previous run.
    pub previous: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<usize>,
}

impl LogOptions {
    /// Cuts a whole log down to what the options ask for.
    pub fn tail(&self, text: String) -> String {
        let Some(n) = self.tail_lines else { return text };
        let lines: Vec<&str> = text.lines().collect();
        let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

pub trait PodLogs: Send + Sync {
    /// A container's log as text (empty while it has written nothing). `NotFound` means there
    /// is no log to read for this pod here.
    fn read(&self, pod: PodRef<'_>, container: &str, opts: LogOptions) -> std::io::Result<String>;
}

/// For an API server that runs no containers (no lab): no pod has a log.
pub struct NoPodLogs;

impl PodLogs for NoPodLogs {
    fn read(&self, pod: PodRef<'_>, _container: &str, _opts: LogOptions) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("pod {}/{} has no logs here: this API server runs no containers", pod.namespace, pod.name),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let text = "a\nb\nc\n".to_string();
        assert_eq!(LogOptions::default().tail(text.clone()), text);
        assert_eq!(LogOptions { tail_lines: Some(2), ..Default::default() }.tail(text.clone()), "b\nc\n");
        assert_eq!(LogOptions { tail_lines: Some(9), ..Default::default() }.tail(text.clone()), text);
        assert_eq!(LogOptions { tail_lines: Some(0), ..Default::default() }.tail(text), "");
    }
}
