//! `weft kubeconfig`: print the lab's kubeconfig, or (`--as NAMESPACE/SERVICEACCOUNT`) one whose
//! user is a fresh token of that ServiceAccount, asked of the API with a TokenRequest as
//! `kubectl create token` asks for one.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;

use crate::cli::KubeconfigArgs;
use crate::{client, lab};

pub async fn run(name: Option<String>, a: KubeconfigArgs) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let admin = std::fs::read_to_string(lab.kubeconfig()).context("the lab has no kubeconfig yet")?;
    let Some(account) = a.as_account else {
        print!("{admin}");
        return Ok(ExitCode::SUCCESS);
    };
    let (ns, sa) = parse_account(&account)?;
    let kc = kube::config::Kubeconfig::from_yaml(&admin).context("reading the lab's kubeconfig")?;
    let cluster =
        kc.clusters.first().and_then(|c| c.cluster.clone()).context("the lab's kubeconfig names no cluster")?;
    let server = cluster.server.context("the lab's kubeconfig names no server")?;
    let ca = cluster.certificate_authority_data.context("the lab's kubeconfig has no certificate-authority-data")?;
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client::connect(&lab).await?, ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(a.duration), ..Default::default() }),
        ..Default::default()
    };
    let token = api
        .create_token_request(sa, &Default::default(), &req)
        .await
        .map_err(|e| anyhow::anyhow!("a token for service account {ns}/{sa}: {}", client::describe_error(&e)))?
        .status
        .and_then(|s| s.token)
        .context("the API answered the TokenRequest without a token")?;
    print!("{}", kubeconfig(&lab.name, &server, &ca, ns, sa, &token));
    Ok(ExitCode::SUCCESS)
}

/// `NAMESPACE/NAME`, both non-empty.
fn parse_account(s: &str) -> Result<(&str, &str)> {
    match s.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => Ok((ns, sa)),
        _ => bail!("--as {s:?}: name a ServiceAccount as NAMESPACE/NAME (e.g. --as default/robot)"),
    }
}

/// A kubeconfig for `server` whose user is `token`, in namespace `ns` by default.
fn kubeconfig(lab: &str, server: &str, ca: &str, ns: &str, sa: &str, token: &str) -> String {
    let n = format!("weft-{lab}-{ns}-{sa}");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n    namespace: {ns}\ncurrent-context: {n}\nusers:\n- name: {n}\n  user:\n    token: {token}\npreferences: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_namespace_slash_name() {
        assert_eq!(parse_account("default/robot").unwrap(), ("default", "robot"));
        for bad in ["robot", "/robot", "default/", "a/b/c", ""] {
            assert!(parse_account(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_kubeconfig_reads_back() {
        let text = kubeconfig("lab", "https://127.0.0.1:6443", "Q0E=", "ns", "robot", "tok");
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert!(kc.auth_infos[0].auth_info.as_ref().is_some_and(|a| a.token.is_some()));
        assert!(text.contains("    token: tok\n"));
        assert_eq!(kc.contexts[0].context.as_ref().unwrap().namespace.as_deref(), Some("ns"));
    }
}
