//! A kube-rs client of a lab's API, and the raw REST calls the CLI makes with it.

use anyhow::{Context, Result};
use http::{Method, Request};
use serde_json::Value;
use weft_api::Kind;

use crate::lab::Lab;

pub async fn connect(lab: &Lab) -> Result<kube::Client> {
    let path = lab.kubeconfig();
    let kc = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("lab {:?}: reading {}", lab.name, path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// The REST path of a kind, optionally in a namespace and for one object.
pub fn path(kind: &Kind, ns: Option<&str>, name: Option<&str>) -> String {
    let mut p = if kind.group.is_empty() {
        format!("/api/{}", kind.version)
    } else {
        format!("/apis/{}/{}", kind.group, kind.version)
    };
    if kind.namespaced
        && let Some(ns) = ns
    {
        p.push_str(&format!("/namespaces/{ns}"));
    }
    p.push('/');
    p.push_str(kind.plural);
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

/// An error from the API, worded as kubectl words it.
pub fn describe_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("Error from server ({}): {}", s.reason, s.message),
        other => format!("error: {other}"),
    }
}

pub async fn call(
    client: &kube::Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
    ctype: &str,
    accept: &str,
) -> Result<Value, kube::Error> {
    let mut b = Request::builder().method(method).uri(path).header(http::header::ACCEPT, accept);
    if body.is_some() {
        b = b.header(http::header::CONTENT_TYPE, ctype);
    }
    let req = b.body(body.map(|v| serde_json::to_vec(v).unwrap_or_default()).unwrap_or_default()).expect("request");
    client.request::<Value>(req).await
}

pub async fn get(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    call(client, Method::GET, path, None, "", "application/json").await
}

pub async fn get_table(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    call(client, Method::GET, path, None, "", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json").await
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
