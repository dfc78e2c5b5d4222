//! One module per command (`weft up`, `weft get`, ...); `manifests` reads what `apply` and
//! `delete` are given.

pub mod apply;
pub mod cluster;
pub mod delete;
pub mod describe;
pub mod down;
pub mod exec;
pub mod get;
pub mod internal;
pub mod kubeconfig;
pub mod logs;
mod manifests;
pub mod metrics;
pub mod policy;
pub mod status;
pub mod up;

/// How kubectl names a kind in its messages (`service`, `deployment.apps`).
fn display_name(kind: &weft_api::Kind) -> String {
    if kind.group.is_empty() { kind.singular.to_string() } else { format!("{}.{}", kind.singular, kind.group) }
}

/// Percent-encodes a query parameter's value.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
