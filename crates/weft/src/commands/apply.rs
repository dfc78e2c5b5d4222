//! `weft apply -f`: create or update the objects in manifests, as client-side `kubectl apply`
//! does (created, configured or unchanged).

use std::process::ExitCode;

use anyhow::Result;
use http::Method;
use serde_json::Value;

use super::display_name;
use super::manifests::{kind_of, read_manifests};
use crate::cli::ApplyArgs;
use crate::{client, lab};

pub async fn run(name: Option<String>, a: ApplyArgs) -> Result<ExitCode> {
    let (files, ns) = (a.files, a.namespace);
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let docs = read_manifests(&files)?;
    let mut failed = false;
    for mut d in docs {
        let kind = match kind_of(&d) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
                continue;
            }
        };
        let obj_ns = d.pointer("/metadata/namespace").and_then(|n| n.as_str()).map(String::from);
        let ns = obj_ns.or(ns.clone()).unwrap_or("default".into());
        let n = d.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let label = format!("{}/{}", display_name(kind), n);
        let result = async {
            for _attempt in 0..5 {
                match client::get(&c, &client::path(kind, Some(&ns), Some(&n))).await {
                    Err(e) if client::is_not_found(&e) => {
                        client::call(
                            &c,
                            Method::POST,
                            &client::path(kind, Some(&ns), None),
                            Some(&d),
                            "application/json",
                            "application/json",
                        )
                        .await?;
                        return Ok::<_, kube::Error>("created");
                    }
                    Err(e) => return Err(e),
                    Ok(cur) => {
                        let rv = cur.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                        d["metadata"]["resourceVersion"] = rv.clone();
                        let out = client::call(
                            &c,
                            Method::PUT,
                            &client::path(kind, Some(&ns), Some(&n)),
                            Some(&d),
                            "application/json",
                            "application/json",
                        )
                        .await;
                        match out {
                            Ok(o) => {
                                return Ok(if o.pointer("/metadata/resourceVersion") == Some(&rv) {
                                    "unchanged"
                                } else {
                                    "configured"
                                });
                            }
                            Err(kube::Error::Api(s)) if s.code == 409 => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Ok("configured")
        }
        .await;
        match result {
            Ok(what) => println!("{label} {what}"),
            Err(e) => {
                eprintln!("{}", client::describe_error(&e));
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
