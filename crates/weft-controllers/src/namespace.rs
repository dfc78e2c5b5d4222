//! The namespace controller's loop, as kube-controller-manager runs it: a Terminating
//! namespace's content is deleted and the namespace goes once nothing is left in it.
//!
//! The embedded API server does the work itself (a namespace's DELETE sweeps its content, and
//! the last object's removal ends it), so this loop only finishes what a restart interrupted:
//! for each namespace with a `deletionTimestamp` it sends the DELETE again, which sweeps what
//! is left and ends it when it is empty. Against a real API server the same DELETE is a no-op
//! (kube-controller-manager's namespace controller does the work there).

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use weft_watch::{Controller, Wake};

/// How often Terminating namespaces are looked at again (their pods terminate meanwhile).
const RESYNC: Duration = Duration::from_secs(5);

/// The namespaces being deleted: (name, uid).
pub fn terminating(namespaces: &[std::sync::Arc<Namespace>]) -> Vec<(String, String)> {
    namespaces
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_some())
        .map(|n| (n.name_any(), n.uid().unwrap_or_default()))
        .collect()
}

/// Runs until the process ends.
pub async fn run(client: kube::Client) {
    let wake = Wake::new();
    let namespaces = weft_watch::cached::<Namespace>(&client, wake.clone());
    let _ = namespaces.wait_until_ready().await;
    let api: Api<Namespace> = Api::all(client);
    Controller::new("namespace")
        .wake_on(&wake)
        .resync(RESYNC)
        .debounce(Duration::from_millis(200))
        .run(async move || pass(&api, &namespaces.state()).await)
        .await
}

/// One pass: a DELETE again for each Terminating namespace.
async fn pass(api: &Api<Namespace>, namespaces: &[std::sync::Arc<Namespace>]) -> anyhow::Result<()> {
    for (name, uid) in terminating(namespaces) {
        // Bound to the uid: a namespace made again under the same name is not touched.
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => anyhow::bail!("finishing the deletion of namespace {name}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_namespaces_being_deleted_are_driven() {
        let ns = |name: &str, deleting: bool| -> Arc<Namespace> {
            let mut v = serde_json::json!({"metadata": {"name": name, "uid": format!("u-{name}")}});
            if deleting {
                v["metadata"]["deletionTimestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
            }
            Arc::new(serde_json::from_value(v).unwrap())
        };
        let all = [ns("a", false), ns("b", true)];
        assert_eq!(terminating(&all), vec![("b".to_string(), "u-b".to_string())]);
    }
}
