//! The CLI inside a pod: kube-rs's in-cluster configuration (the pod's ServiceAccount token and
//! cluster CA under /var/run/secrets/kubernetes.io/serviceaccount, the API at
//! `KUBERNETES_SERVICE_HOST`), as kubectl uses it there, so what the pod may do is what its
//! ServiceAccount's RBAC grants. Only `weft get` uses it so far.

use anyhow::Context;

/// In a pod (the API's address in the environment and a mounted token) with no lab named
/// (`--name`, `$WEFT_CLUSTER`): a client as the pod's ServiceAccount and the pod's namespace.
/// None elsewhere. A pod sees the host's files, other labs' among them: it never picks a lab.
pub fn client(lab_name: Option<&str>) -> Option<anyhow::Result<(kube::Client, String)>> {
    let named = lab_name.is_some() || std::env::var_os("WEFT_CLUSTER").is_some_and(|s| !s.is_empty());
    if named || !weft_watch::in_a_pod() {
        return None;
    }
    Some((|| {
        let cfg = kube::Config::incluster().context("reading the pod's in-cluster configuration")?;
        let ns = cfg.default_namespace.clone();
        Ok((kube::Client::try_from(cfg)?, ns))
    })())
}
