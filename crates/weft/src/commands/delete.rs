//! `weft delete`: delete objects named by manifests, or by kind and name (in the background,
//! as kubectl does: what they own goes after them).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use http::Method;
use serde_json::json;
use weft_api::kinds;

use super::display_name;
use super::manifests::{kind_of, read_manifests};
use crate::cli::DeleteArgs;
use crate::{client, lab};

pub async fn run(name: Option<String>, a: DeleteArgs) -> Result<ExitCode> {
    let (files, kind, names, ns) = (a.files, a.kind, a.objects, a.namespace);
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let mut targets: Vec<(&'static weft_api::Kind, String, String)> = vec![];
    if !files.is_empty() {
        for d in read_manifests(&files)? {
            let k = kind_of(&d)?;
            let n = d.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
            let obj_ns = d.pointer("/metadata/namespace").and_then(|n| n.as_str()).map(String::from);
            targets.push((k.storage(), obj_ns.or(ns.clone()).unwrap_or("default".into()), n));
        }
    } else {
        let Some(kind) = kind else { bail!("say what to delete: `weft delete -f FILE` or `weft delete KIND NAME`") };
        let k =
            kinds::by_cli_name(&kind).with_context(|| format!("the server doesn't have a resource type {kind:?}"))?;
        if names.is_empty() {
            bail!("name the {} to delete: `weft delete {kind} NAME`", k.plural);
        }
        for n in names {
            targets.push((k, ns.clone().unwrap_or("default".into()), n));
        }
    }
    let mut failed = false;
    for (k, ns, n) in targets {
        let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        match client::call(
            &c,
            Method::DELETE,
            &client::path(k, Some(&ns), Some(&n)),
            Some(&body),
            "application/json",
            "application/json",
        )
        .await
        {
            Ok(_) => println!("{} {n:?} deleted", display_name(k)),
            Err(e) => {
                eprintln!("{}", client::describe_error(&e));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
