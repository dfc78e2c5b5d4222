//! The kubelet's Events (events.k8s.io/v1, through kube's `Recorder`: reporting controller
//! `kubelet`, instance the node's name). Publishing never holds up pod work: events go through a
//! bounded queue to a task of their own; when the queue is full they are dropped, and a refusal
//! (an API server without the events API answers 404) is logged at debug level.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

use crate::lifecycle::Note;

/// Events waiting to be published, at most.
const QUEUE: usize = 256;
/// One publication, at most.
const PUBLISH_LIMIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PodEvents {
    tx: mpsc::Sender<(ObjectReference, Note)>,
}

impl PodEvents {
    /// Starts the publishing task (on the current tokio runtime).
    pub fn start(client: kube::Client, node: &str) -> PodEvents {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, Note)>(QUEUE);
        let reporter = Reporter { controller: "kubelet".into(), instance: Some(node.to_string()) };
        let recorder = Recorder::new(client, reporter);
        tokio::spawn(async move {
            while let Some((regarding, note)) = rx.recv().await {
                let ev = Event {
                    type_: if note.warning { EventType::Warning } else { EventType::Normal },
                    reason: note.reason.into(),
                    note: Some(note.message.clone()),
                    action: note.reason.into(),
                    secondary: None,
                };
                match tokio::time::timeout(PUBLISH_LIMIT, recorder.publish(&ev, &regarding)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(pod = ?regarding.name, reason = note.reason, error = %e, "event"),
                    Err(_) => tracing::debug!(pod = ?regarding.name, reason = note.reason, "event: timed out"),
                }
            }
        });
        PodEvents { tx }
    }

    /// Queues an event about `pod`, or about one of its containers (`field_path`, as the kubelet
    /// writes it: `spec.containers{NAME}`, `spec.initContainers{NAME}`).
    pub fn emit(&self, pod: &Pod, field_path: Option<String>, note: Note) {
        if self.tx.try_send((reference(pod, field_path), note)).is_err() {
            tracing::debug!(pod = ?pod.metadata.name, "event queue full: event dropped");
        }
    }
}

/// The reference an event about `pod` carries.
pub fn reference(pod: &Pod, field_path: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        field_path,
        ..Default::default()
    }
}

/// The field path of a container of `pod` by name, as the kubelet's container references.
pub fn field_path(pod: &Pod, container: &str) -> String {
    let init = pod.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).any(|c| c.name == container);
    if init { format!("spec.initContainers{{{container}}}") } else { format!("spec.containers{{{container}}}") }
}
