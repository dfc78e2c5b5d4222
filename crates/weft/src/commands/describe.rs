//! `weft describe`: an object in detail (a Service with its endpoints, a NetworkPolicy with the
//! pods it selects and its rules' peers match).

use std::process::ExitCode;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use weft_api::kinds;

use super::url_escape;
use crate::cli::DescribeArgs;
use crate::{client, lab, output};

pub async fn run(name: Option<String>, a: DescribeArgs) -> Result<ExitCode> {
    let DescribeArgs { kind, object: obj, namespace: ns } = a;
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let k = kinds::by_cli_name(&kind).with_context(|| format!("the server doesn't have a resource type {kind:?}"))?;
    let ns = ns.unwrap_or("default".into());
    let v = match client::get(&c, &client::path(k, Some(&ns), Some(&obj))).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    if k.kind == "Service" {
        let es = kinds::by_cli_name("endpointslices").unwrap();
        let path = format!(
            "{}?labelSelector={}",
            client::path(es, Some(&ns), None),
            url_escape(&weft_k8s::slices::selector_for(&obj))
        );
        let slices = client::get(&c, &path)
            .await
            .ok()
            .and_then(|l| l.get("items").and_then(|i| i.as_array()).cloned())
            .unwrap_or_default();
        print!("{}", output::describe_service(&v, &slices));
    } else if k.kind == "NetworkPolicy" {
        // What it selects now: evaluated here against the cluster's pods and namespaces.
        let np: NetworkPolicy = serde_json::from_value(v).context("reading the NetworkPolicy")?;
        let pods = kube::Api::<Pod>::all(c.clone()).list(&Default::default()).await.context("listing pods")?;
        let nss =
            kube::Api::<Namespace>::all(c.clone()).list(&Default::default()).await.context("listing namespaces")?;
        print!("{}", output::describe_network_policy(&np, &pods.items, &nss.items));
    } else {
        print!("{}", output::describe_generic(&v));
    }
    Ok(ExitCode::SUCCESS)
}
