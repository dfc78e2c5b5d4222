//! Containers' logs as the API server serves them (`kubectl logs`): the lab's kubelets keep
//! them where each pod's shim writes them (`pods/<uid>/<container>.log`, the previous run's in
//! `.log.1`); only this module knows that layout on the API's behalf.

use std::path::PathBuf;

use weft_apiserver::pod_logs::{LogOptions, PodLogs, PodRef};

use crate::kubelet::pod_dir;
use crate::shim::log_path;

/// The logs of the pods of the lab whose state directory this is.
pub struct LabPodLogs {
    pub state_dir: PathBuf,
}

/// A path component from the API (a pod's uid, a container's name) that names one entry.
fn plain(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains('/')
}

impl PodLogs for LabPodLogs {
    fn read(&self, pod: PodRef<'_>, container: &str, opts: LogOptions) -> std::io::Result<String> {
        if !plain(pod.uid) || !plain(container) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("pod {}/{} has no log for container {container:?}", pod.namespace, pod.name),
            ));
        }
        let mut path = log_path(&pod_dir(&self.state_dir, pod.uid), container);
        if opts.previous {
            path = path.with_extension("log.1");
        }
        // A container that has not written anything yet (or not started) has an empty log.
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(opts.tail(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> PodRef<'_> {
        PodRef { namespace: "default", name: "web", uid }
    }

    #[test]
    fn reads_the_current_or_previous_log_and_tails_it() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = pod_dir(dir.path(), "u1");
        std::fs::create_dir_all(&pod_dir).unwrap();
        std::fs::write(pod_dir.join("c.log"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(pod_dir.join("c.log.1"), "old\n").unwrap();
        let logs = LabPodLogs { state_dir: dir.path().to_path_buf() };
        assert_eq!(logs.read(pod("u1"), "c", LogOptions::default()).unwrap(), "one\ntwo\nthree\n");
        let tail = LogOptions { tail_lines: Some(1), ..Default::default() };
        assert_eq!(logs.read(pod("u1"), "c", tail).unwrap(), "three\n");
        let previous = LogOptions { previous: true, ..Default::default() };
        assert_eq!(logs.read(pod("u1"), "c", previous).unwrap(), "old\n");
        // Nothing written yet: an empty log.
        assert_eq!(logs.read(pod("u1"), "other", LogOptions::default()).unwrap(), "");
        // A name that would leave the pod's directory is refused.
        assert!(logs.read(pod(".."), "c", LogOptions::default()).is_err());
        assert!(logs.read(pod("u1"), "../c", LogOptions::default()).is_err());
    }
}
