//! Manifests as `apply -f` and `delete -f` take them: files, directories, or stdin.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;
use weft_api::kinds;

/// Reads manifests from files, directories (their .yaml/.yml/.json files) or stdin.
pub(super) fn read_manifests(files: &[String]) -> Result<Vec<Value>> {
    let mut out = vec![];
    for f in files {
        let mut texts = vec![];
        if f == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            texts.push(("stdin".to_string(), s));
        } else {
            let p = PathBuf::from(f);
            if p.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|e| e.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                    .collect();
                entries.sort();
                for e in entries {
                    texts.push((e.display().to_string(), std::fs::read_to_string(&e)?));
                }
            } else {
                texts.push((f.clone(), std::fs::read_to_string(&p).with_context(|| format!("reading {f}"))?));
            }
        }
        for (src, t) in texts {
            out.extend(weft_api::yaml::parse_manifests(&t).map_err(|e| anyhow::anyhow!("{src}: {e}"))?);
        }
    }
    Ok(out)
}

/// The kind a manifest names, or an error listing the kinds weft serves.
pub(super) fn kind_of(v: &Value) -> Result<&'static weft_api::Kind> {
    let av = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
    let k = v.get("kind").and_then(|a| a.as_str()).unwrap_or("");
    kinds::by_gvk(av, k)
        .with_context(|| format!("no matches for kind {k:?} in version {av:?}: weft serves {}", served_kinds()))
}

fn served_kinds() -> String {
    kinds::ALL.iter().map(|k| format!("{}/{}", k.api_version(), k.kind)).collect::<Vec<_>>().join(", ")
}
