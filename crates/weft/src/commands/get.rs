//! `weft get`: list or show objects, with kubectl's columns (the server's Table), or as YAML,
//! JSON or names.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;
use weft_api::kinds;

use super::{display_name, url_escape};
use crate::cli::GetArgs;
use crate::{client, lab, output};

pub async fn run(name: Option<String>, a: GetArgs) -> Result<ExitCode> {
    let GetArgs { kind, object: obj, namespace: ns, all_namespaces: all, output, selector, no_headers } = a;
    // Inside a pod: as its ServiceAccount, in its namespace by default (as kubectl there).
    let (c, default_ns) = match crate::in_cluster::client(name.as_deref()) {
        Some(c) => c?,
        None => (client::connect(&lab::select(name.as_deref())?).await?, "default".to_string()),
    };
    let k = kinds::by_cli_name(&kind).with_context(|| {
        format!("the server doesn't have a resource type {kind:?}: try one of svc, ep, endpointslices, po, ns, no, deploy, rs, rc, ing, ingressclass, netpol, cm, secret")
    })?;
    let ns = ns.unwrap_or(default_ns);
    let ns_opt = if all && obj.is_none() { None } else { Some(ns.as_str()) };
    let mut path = client::path(k, ns_opt, obj.as_deref());
    if let Some(sel) = &selector {
        path.push_str(&format!("?labelSelector={}", url_escape(sel)));
    }
    let result = match output.as_deref() {
        None | Some("wide") => client::get_table(&c, &path).await.map(|t| {
            let rows = t.get("rows").and_then(|r| r.as_array()).map(|r| r.len()).unwrap_or(0);
            if rows == 0 && obj.is_none() {
                if !k.namespaced || all {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {ns} namespace.");
                }
            } else {
                print!(
                    "{}",
                    output::render_table(
                        &t,
                        output.as_deref() == Some("wide"),
                        all && k.namespaced && obj.is_none(),
                        no_headers
                    )
                );
            }
        }),
        Some(fmt @ ("yaml" | "json")) => client::get(&c, &path).await.map(|mut v| {
            if obj.is_none() {
                v = json!({"apiVersion": "v1", "kind": "List", "items": v.get("items").cloned().unwrap_or(json!([])),
                           "metadata": {"resourceVersion": ""}});
            }
            if fmt == "yaml" {
                print!("{}", output::yaml(&v));
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }),
        Some("name") => client::get(&c, &path).await.map(|v| {
            let items = if obj.is_none() {
                v.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default()
            } else {
                vec![v]
            };
            for i in items {
                println!("{}/{}", display_name(k), i.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or(""));
            }
        }),
        Some(other) => bail!("unknown output format {other:?}: use wide, yaml, json or name"),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}
