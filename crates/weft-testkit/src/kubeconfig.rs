//! A kube client from a kubeconfig file (a lab's, written by `weft up`).

use std::path::Path;

use anyhow::{Context, Result};

/// The client configuration a kubeconfig file describes (its current context), to adjust before
/// making a client (timeouts, credentials).
pub async fn config(path: &Path) -> Result<kube::Config> {
    let kc = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", path.display()))
}

/// A client of the API a kubeconfig file names.
pub async fn client(path: &Path) -> Result<kube::Client> {
    Ok(kube::Client::try_from(config(path).await?)?)
}
