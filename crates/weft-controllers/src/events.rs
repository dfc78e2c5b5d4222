//! Controller Events (`events.k8s.io/v1`, through kube's `Recorder`), as kube-controller-manager
//! and kube-scheduler record them. Publishing never holds up or fails a reconcile: each event is
//! sent on a task of its own, at most [`IN_FLIGHT`] at a time (more are dropped), each bounded
//! in time; a failure (an API server without the events API answers 404) is logged at debug.
//! Each event is published through a recorder of its own: kube's `Recorder` folds events of the
//! same object and reason into one series whatever their message, which would leave one
//! "Scaled up replica set ..." for a whole rollout; kube-controller-manager's messages are
//! events of their own.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;

const IN_FLIGHT: usize = 64;

#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    controller: String,
    slots: Arc<Semaphore>,
}

impl Events {
    /// A recorder reporting as `controller` (e.g. `deployment-controller`, `default-scheduler`).
    pub fn new(client: &kube::Client, controller: &str) -> Events {
        Events { client: client.clone(), controller: controller.into(), slots: Arc::new(Semaphore::new(IN_FLIGHT)) }
    }

    pub fn normal(&self, regarding: ObjectReference, reason: &str, action: &str, note: String) {
        self.send(regarding, EventType::Normal, reason, action, note)
    }

    pub fn warning(&self, regarding: ObjectReference, reason: &str, action: &str, note: String) {
        self.send(regarding, EventType::Warning, reason, action, note)
    }

    fn send(&self, regarding: ObjectReference, type_: EventType, reason: &str, action: &str, note: String) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(reason, "event dropped: too many in flight");
            return;
        };
        let reporter = Reporter { controller: self.controller.clone(), instance: None };
        let recorder = Recorder::new(self.client.clone(), reporter);
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(Duration::from_secs(5), recorder.publish(&ev, &regarding)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(reason = %ev.reason, error = %e, "event not recorded"),
                Err(_) => tracing::debug!(reason = %ev.reason, "event not recorded: timed out"),
            }
        });
    }
}

/// One recorder per controller, under the names kube-controller-manager and kube-scheduler
/// report as.
#[derive(Clone)]
pub struct Recorders {
    pub deployment: Events,
    pub replicaset: Events,
    pub daemonset: Events,
    pub statefulset: Events,
    pub job: Events,
    pub scheduler: Events,
}

impl Recorders {
    pub fn new(client: &kube::Client) -> Recorders {
        Recorders {
            deployment: Events::new(client, "deployment-controller"),
            replicaset: Events::new(client, "replicaset-controller"),
            daemonset: Events::new(client, "daemonset-controller"),
            statefulset: Events::new(client, "statefulset-controller"),
            job: Events::new(client, "job-controller"),
            scheduler: Events::new(client, "default-scheduler"),
        }
    }
}
