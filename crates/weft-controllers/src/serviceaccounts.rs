//! kube-controller-manager's serviceaccount controller and root-ca-cert-publisher: every
//! namespace that is not being deleted has a `default` ServiceAccount and a `kube-root-ca.crt`
//! ConfigMap holding the cluster CA. The API server makes both with the namespace (so a pod
//! created right after it finds them); this loop puts back one that was deleted, and the CA
//! where it was changed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use weft_watch::{Controller, Wake};

pub const ROOT_CA: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// What one pass writes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Namespaces lacking their `default` ServiceAccount.
    pub accounts: Vec<String>,
    /// Namespaces lacking `kube-root-ca.crt`.
    pub create_ca: Vec<String>,
    /// Namespaces whose `kube-root-ca.crt` holds another CA.
    pub fix_ca: Vec<String>,
}

/// Compares namespaces with the accounts and ConfigMaps there are.
pub fn plan(namespaces: &[Arc<Namespace>], accounts: &[Arc<ServiceAccount>], cms: &[Arc<ConfigMap>], ca: &str) -> Plan {
    let with_account: BTreeSet<String> =
        accounts.iter().filter(|a| a.name_any() == "default").filter_map(|a| a.namespace()).collect();
    let mut p = Plan::default();
    for n in namespaces.iter().filter(|n| n.metadata.deletion_timestamp.is_none()) {
        let ns = n.name_any();
        if !with_account.contains(&ns) {
            p.accounts.push(ns.clone());
        }
        match cms.iter().find(|c| c.name_any() == ROOT_CA && c.namespace().as_deref() == Some(ns.as_str())) {
            None => p.create_ca.push(ns),
            Some(c) if c.data.as_ref().and_then(|d| d.get("ca.crt")).map(String::as_str) != Some(ca) => {
                p.fix_ca.push(ns)
            }
            Some(_) => {}
        }
    }
    p
}

fn root_ca(ns: &str, ca: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": ROOT_CA, "namespace": ns,
        "annotations": {"kubernetes.io/description": DESCRIPTION}}, "data": {"ca.crt": ca}}))
    .unwrap_or_default()
}

/// Runs until the process ends; `ca` is the cluster CA (PEM).
pub async fn run(client: kube::Client, ca: String) {
    let wake = Wake::new();
    let namespaces = weft_watch::cached::<Namespace>(&client, wake.clone());
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let accounts =
        weft_watch::cached_with(Api::<ServiceAccount>::all(client.clone()), by_name("default"), wake.clone());
    let cms = weft_watch::cached_with(Api::<ConfigMap>::all(client.clone()), by_name(ROOT_CA), wake.clone());
    let _ = namespaces.wait_until_ready().await;
    let _ = accounts.wait_until_ready().await;
    let _ = cms.wait_until_ready().await;
    Controller::new("serviceaccounts")
        .wake_on(&wake)
        .resync(Duration::from_secs(30))
        .debounce(Duration::from_millis(100))
        .run(async move || {
            let p = plan(&namespaces.state(), &accounts.state(), &cms.state(), &ca);
            pass(&client, p, &ca).await
        })
        .await
}

async fn pass(client: &kube::Client, p: Plan, ca: &str) -> anyhow::Result<()> {
    let pp = PostParams::default();
    for ns in &p.accounts {
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default", "namespace": ns}}))?;
        match Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&pp, &sa).await {
            Ok(_) => {}
            // Made meanwhile, or the namespace began terminating.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 || e.code == 404 => {}
            Err(e) => anyhow::bail!("creating the default ServiceAccount of {ns}: {e}"),
        }
    }
    for ns in &p.create_ca {
        match Api::<ConfigMap>::namespaced(client.clone(), ns).create(&pp, &root_ca(ns, ca)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 || e.code == 404 => {}
            Err(e) => anyhow::bail!("creating {ROOT_CA} in {ns}: {e}"),
        }
    }
    for ns in &p.fix_ca {
        let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
        let patch = json!({"data": {"ca.crt": ca}});
        match api.patch(ROOT_CA, &Default::default(), &kube::api::Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => anyhow::bail!("updating {ROOT_CA} in {ns}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, deleting: bool) -> Arc<Namespace> {
        let mut v = json!({"metadata": {"name": name}});
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn missing_accounts_and_cas_are_made_and_stale_cas_fixed() {
        let namespaces = [ns("a", false), ns("b", false), ns("c", false), ns("gone", true)];
        let accounts = [Arc::new(
            serde_json::from_value::<ServiceAccount>(json!({"metadata": {"name": "default", "namespace": "a"}}))
                .unwrap(),
        )];
        let cms = [Arc::new(root_ca("a", "CA")), Arc::new(root_ca("b", "OLD"))];
        let p = plan(&namespaces, &accounts, &cms, "CA");
        assert_eq!(p.accounts, ["b", "c"]);
        assert_eq!(p.create_ca, ["c"]);
        assert_eq!(p.fix_ca, ["b"]);
    }
}
