//! Containers' logs as the API server serves them (`kubectl logs`): the lab's kubelets keep
//! them where each pod's shim writes them ([`crate::container_log`]: one CRI-format file per
//! container instance); only this module knows that layout on the API's behalf. Which instance
//! is current or previous, and whether a followed one still runs, comes from the shim's
//! `status.json` and the kubelet's sandbox record, as the kubelet decides it from the runtime.

use std::path::{Path, PathBuf};

use weft_apiserver::pod_logs::{LogOptions, LogStream, PodLogs, PodRef};

use crate::container_log::{Reader, instance_path, instances};
use crate::kubelet::{load_sandbox, pod_dir, shim_alive};
use crate::shim::read_status;

/// The logs of the pods of the lab whose state directory this is.
pub struct LabPodLogs {
    pub state_dir: PathBuf,
}

/// A path component from the API (a pod's uid, a container's name) that names one entry.
fn plain(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains('/')
}

fn bad_request(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// The container's state as its shim last reported it: (running, restart count, done).
fn state(dir: &Path, container: &str) -> Option<(bool, u32, bool)> {
    let st = read_status(dir)?;
    let c = st.containers.into_iter().chain(st.init_containers).find(|c| c.name == container)?;
    Some((c.running, c.restart_count, c.done))
}

impl PodLogs for LabPodLogs {
    fn open(&self, pod: PodRef<'_>, container: &str, opts: &LogOptions) -> std::io::Result<Box<dyn LogStream>> {
        if !plain(pod.uid) || !plain(container) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("pod {}/{} has no log for container {container:?}", pod.namespace, pod.name),
            ));
        }
        let dir = pod_dir(&self.state_dir, pod.uid);
        let have = instances(&dir, container);
        let (running, _, done) = state(&dir, container).unwrap_or_default();
        let instance = if opts.previous {
            // As the kubelet: the last terminated instance. While the container waits to
            // restart, that is the newest one; otherwise the one before the newest.
            let newest = have.last().copied();
            let waiting = !running && !done;
            let want = if waiting { newest } else { newest.and_then(|n| have.iter().rev().find(|i| **i < n).copied()) };
            want.ok_or_else(|| {
                bad_request(format!("previous terminated container {container:?} in pod {:?} not found", pod.name))
            })?
        } else {
            *have.last().ok_or_else(|| {
                bad_request(format!(
                    "container {container:?} in pod {:?} is waiting to start: ContainerCreating",
                    pod.name
                ))
            })?
        };
        let path = instance_path(&dir, container, instance);
        // A follow goes on while this instance runs: its shim is alive and says the instance
        // (its restart count) is the running one; a deleted pod's directory ends it too.
        let (state_dir, uid, name) = (self.state_dir.clone(), pod.uid.to_string(), container.to_string());
        let still_writing = Box::new(move || {
            let dir = pod_dir(&state_dir, &uid);
            let shim_up = load_sandbox(&state_dir, &uid).is_some_and(|sb| shim_alive(&sb));
            shim_up && state(&dir, &name).is_some_and(|(running, count, _)| running && count == instance)
        });
        Ok(Box::new(Reader::new(&path, *opts, Some(still_writing))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container_log::{Stream, Writer};
    use crate::shim::{ContainerState, ShimStatus};
    use weft_apiserver::pod_logs::read_all;

    fn pod(uid: &str) -> PodRef<'_> {
        PodRef { namespace: "default", name: "web", uid }
    }

    fn read(logs: &LabPodLogs, uid: &str, c: &str, opts: LogOptions) -> std::io::Result<String> {
        let s = logs.open(pod(uid), c, &opts)?;
        Ok(String::from_utf8(read_all(s, 1 << 20)?).unwrap())
    }

    fn set_state(dir: &Path, running: bool, restart_count: u32, done: bool) {
        let st = ShimStatus {
            shim_pid: 1,
            containers: vec![ContainerState { name: "c".into(), running, restart_count, done, ..Default::default() }],
            ..Default::default()
        };
        std::fs::write(dir.join("status.json"), serde_json::to_vec(&st).unwrap()).unwrap();
    }

    #[test]
    fn reads_the_current_or_previous_instance_and_tails_it() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = pod_dir(dir.path(), "u1");
        std::fs::create_dir_all(&pod_dir).unwrap();
        let logs = LabPodLogs { state_dir: dir.path().to_path_buf() };
        // Not started: kubelet's 400.
        let e = read(&logs, "u1", "c", LogOptions::default()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is waiting to start"), "{e}");
        let w = Writer::open(&pod_dir, "c", 0);
        w.pump(Stream::Stdout, &b"one\ntwo\nthree\n"[..]);
        set_state(&pod_dir, true, 0, false);
        assert_eq!(read(&logs, "u1", "c", LogOptions::default()).unwrap(), "one\ntwo\nthree\n");
        let tail = LogOptions { tail_lines: Some(1), ..Default::default() };
        assert_eq!(read(&logs, "u1", "c", tail).unwrap(), "three\n");
        let previous = LogOptions { previous: true, ..Default::default() };
        let e = read(&logs, "u1", "c", previous).unwrap_err();
        assert!(e.to_string().contains("previous terminated container \"c\""), "{e}");
        // Restarted: instance 1 runs, instance 0 is the previous one.
        Writer::open(&pod_dir, "c", 1).entry(Stream::Stdout, false, b"second run");
        set_state(&pod_dir, true, 1, false);
        assert_eq!(read(&logs, "u1", "c", LogOptions::default()).unwrap(), "second run\n");
        assert_eq!(read(&logs, "u1", "c", previous).unwrap(), "one\ntwo\nthree\n");
        // Instance 1 ended and waits to restart: it is both the current log and the previous one.
        set_state(&pod_dir, false, 2, false);
        assert_eq!(read(&logs, "u1", "c", previous).unwrap(), "second run\n");
        // A name that would leave the pod's directory is refused.
        assert!(read(&logs, "..", "c", LogOptions::default()).is_err());
        assert!(read(&logs, "u1", "../c", LogOptions::default()).is_err());
    }

    #[test]
    fn a_follow_of_a_pod_without_a_live_shim_ends_at_the_end_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = pod_dir(dir.path(), "u1");
        std::fs::create_dir_all(&pod_dir).unwrap();
        Writer::open(&pod_dir, "c", 0).entry(Stream::Stdout, false, b"only");
        set_state(&pod_dir, true, 0, false);
        let logs = LabPodLogs { state_dir: dir.path().to_path_buf() };
        // No sandbox record (no shim): the follow ends instead of waiting for ever.
        let follow = LogOptions { follow: true, ..Default::default() };
        assert_eq!(read(&logs, "u1", "c", follow).unwrap(), "only\n");
    }
}
