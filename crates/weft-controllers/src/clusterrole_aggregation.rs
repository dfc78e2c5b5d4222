//! The clusterrole-aggregation controller, as kube-controller-manager runs it: the rules of
//! every ClusterRole with an `aggregationRule` are kept equal to the union of the rules of the
//! ClusterRoles its selectors select (`weft_rbac::aggregate`), so that a role labelled
//! `rbac.authorization.k8s.io/aggregate-to-edit: "true"` adds its rules to `edit` (and, through
//! `edit`, to `admin`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use weft_watch::{Controller, Wake};

/// How often every aggregated role is looked at again, changes or not.
const RESYNC: Duration = Duration::from_secs(30);

/// The roles whose rules are not what they aggregate, with the rules they should have.
pub fn plan(roles: &[Arc<ClusterRole>]) -> Vec<(String, Vec<PolicyRule>)> {
    roles
        .iter()
        .filter_map(|r| {
            let rules = weft_rbac::aggregate::aggregated_rules(r, roles)?;
            weft_rbac::aggregate::differs(r, &rules).then(|| (r.name_any(), rules))
        })
        .collect()
}

/// Runs until the process ends.
pub async fn run(client: kube::Client) {
    let wake = Wake::new();
    let roles = weft_watch::cached::<ClusterRole>(&client, wake.clone());
    let _ = roles.wait_until_ready().await;
    let api: Api<ClusterRole> = Api::all(client);
    Controller::new("clusterrole-aggregation")
        .wake_on(&wake)
        .resync(RESYNC)
        .debounce(Duration::from_millis(50))
        .run(async move || pass(&api, &roles.state()).await)
        .await
}

/// One pass: each aggregated role whose rules differ gets them (a merge patch replaces the list).
async fn pass(api: &Api<ClusterRole>, roles: &[Arc<ClusterRole>]) -> anyhow::Result<()> {
    for (name, rules) in plan(roles) {
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"rules": rules}))).await {
            Ok(_) => {}
            // Gone meanwhile: the next pass works from the newer cache.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => anyhow::bail!("aggregating the rules of ClusterRole {name}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(v: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn only_aggregated_roles_that_lag_are_written() {
        let view = role(json!({"metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]}}));
        let part = role(json!({"metadata": {"name": "part", "labels": {"to-view": "true"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}));
        let plain = role(json!({"metadata": {"name": "plain"}, "rules": []}));
        let planned = plan(&[view.clone(), part.clone(), plain]);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].0, "view");
        assert_eq!(planned[0].1, part.rules.clone().unwrap());
        // Once written, nothing more to do.
        let mut done = (*view).clone();
        done.rules = Some(planned[0].1.clone());
        assert!(plan(&[Arc::new(done), part]).is_empty());
    }
}
