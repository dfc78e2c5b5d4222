//! What the proxy tells the API about itself: the node condition `ServiceProxyReady` (False,
//! with the kernel's error, while some rules are not in force) and a Warning Event on each
//! Service that asks for an address and port another Service has. Written only on change.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::compile::Conflict;

pub const CONDITION: &str = "ServiceProxyReady";

pub struct Reporter {
    client: kube::Client,
    /// The last condition written per node (None: ready).
    nodes: HashMap<String, Option<String>>,
    /// Conflicts already reported (Service, entry): a log line and an Event each, once.
    conflicts: BTreeSet<((String, String), String)>,
}

impl Reporter {
    pub fn new(client: kube::Client) -> Self {
        Reporter { client, nodes: HashMap::new(), conflicts: BTreeSet::new() }
    }

    pub async fn nodes(&mut self, outcome: Vec<(String, Option<String>)>) {
        for (node, error) in outcome {
            if self.nodes.get(&node) == Some(&error) {
                continue;
            }
            let now = jiff::Timestamp::now().to_string();
            let (status, reason, message) = match &error {
                None => ("True", "RulesApplied", "every Service's rules are in force".to_string()),
                Some(e) => ("False", "KernelRefused", format!("some Service rules are not in force: {e}")),
            };
            let cond = json!({"type": CONDITION, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now});
            let api: Api<Node> = Api::all(self.client.clone());
            let patch = Patch::Strategic(json!({"status": {"conditions": [cond]}}));
            match api.patch_status(&node, &PatchParams::default(), &patch).await {
                Ok(_) => {
                    self.nodes.insert(node, error);
                }
                Err(e) => tracing::warn!(node = %node, error = %e, "writing the ServiceProxyReady condition"),
            }
        }
    }

    pub async fn conflicts(&mut self, conflicts: Vec<Conflict>) {
        for c in conflicts {
            if !self.conflicts.insert((c.service.clone(), c.entry.clone())) {
                continue;
            }
            let (ns, name) = &c.service;
            let message = format!(
                "{} is already used by the older Service {}/{}; this Service gets no traffic there \
                 (choose another address or port, or delete one of the two)",
                c.entry, c.owner.0, c.owner.1
            );
            tracing::warn!(service = %format!("{ns}/{name}"), "{message}");
            let ev: Event = match serde_json::from_value(json!({
                "metadata": {"name": event_name(name, &c.entry), "namespace": ns},
                "involvedObject": {"kind": "Service", "apiVersion": "v1", "namespace": ns, "name": name},
                "reason": "AddressConflict", "type": "Warning", "message": message,
                "source": {"component": "weft-proxy"}, "reportingComponent": "weft-proxy",
                "firstTimestamp": jiff::Timestamp::now().to_string(),
                "lastTimestamp": jiff::Timestamp::now().to_string(), "count": 1,
            })) {
                Ok(e) => e,
                Err(_) => continue,
            };
            let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
            if let Err(e) = api.create(&PostParams::default(), &ev).await
                && !matches!(&e, kube::Error::Api(s) if s.code == 409)
            {
                tracing::warn!(error = %e, "recording an AddressConflict event");
            }
        }
    }
}

/// One Event per (Service, entry), so every node's proxy reporting it writes the same object.
fn event_name(service: &str, entry: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in entry.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x01000193);
    }
    format!("{service}.conflict-{h:08x}")
}
