//! Controller Events (`events.k8s.io/v1`, through kube's `Recorder`), as kube-controller-manager
//! and kube-scheduler record them. Publishing never holds up or fails a reconcile: each event is
//! sent on a task of its own, at most [`IN_FLIGHT`] at a time (more are dropped), each bounded
//! in time; a failure (an API server without the events API answers 404) is logged at debug.
//! kube's `Recorder` folds events of the same object and reason into one series whatever their
//! message, which would leave one "Scaled up replica set ..." for a whole rollout. So each
//! (object, type, reason, message) gets a recorder of its own, kept for a while: the same event
//! again becomes a count on one Event (client-go's correlator aggregates exact repeats the same
//! way), a different message an Event of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;

const IN_FLIGHT: usize = 64;
/// Recorders kept for repeats; beyond this many distinct events they are all dropped and start
/// afresh (a repeat then makes a new Event instead of counting on the old one).
const KEPT: usize = 4096;

#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    controller: String,
    slots: Arc<Semaphore>,
    recorders: Arc<Mutex<HashMap<String, Recorder>>>,
}

impl Events {
    /// A recorder reporting as `controller` (e.g. `deployment-controller`, `default-scheduler`).
    pub fn new(client: &kube::Client, controller: &str) -> Events {
        Events {
            client: client.clone(),
            controller: controller.into(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            recorders: Arc::default(),
        }
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
        let key = format!(
            "{}/{}/{}/{}/{type_:?}/{reason}/{note}",
            regarding.kind.as_deref().unwrap_or(""),
            regarding.namespace.as_deref().unwrap_or(""),
            regarding.name.as_deref().unwrap_or(""),
            regarding.uid.as_deref().unwrap_or(""),
        );
        let recorder = {
            let mut kept = self.recorders.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() >= KEPT && !kept.contains_key(&key) {
                kept.clear();
            }
            kept.entry(key)
                .or_insert_with(|| {
                    let reporter = Reporter { controller: self.controller.clone(), instance: None };
                    Recorder::new(self.client.clone(), reporter)
                })
                .clone()
        };
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
    pub loadbalancer: Events,
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
            loadbalancer: Events::new(client, "weft-lb-allocator"),
        }
    }
}
