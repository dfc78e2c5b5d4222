//! `weft-cni`: a CNI 1.1.0 plugin with the reference `bridge` plugin's behaviour and built-in
//! `host-local` IPAM (same configuration, same on-disk layout, so a node switches by changing only
//! `type`), plus the runtime side that executes CNI plugins.
//!
//! - `spec`: configuration, results (with version conversion) and errors; pure.
//! - `ipam`: host-local on disk, safe under concurrent ADDs (flock) and crashes (O_EXCL files).
//! - `nft`: the per-network masquerade table (made once) and host ports, in nftables.
//! - `plugin`: ADD, DEL, CHECK, GC, STATUS, VERSION.
//! - `runtime`: invoking plugins and conflists as a container runtime does.

pub mod ipam;
/// Links, addresses and routes (the `weft-netlink` crate).
pub use weft_netlink as net;
pub mod nft;
pub mod plugin;
pub mod runtime;
pub mod spec;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use plugin::Env;
use spec::{CniError, code};

/// The environment as text. `std::env::vars` panics on a value that is not UTF-8; here such a
/// value is dropped, unless it is one of ours, which is an error naming it.
fn utf8_vars() -> Result<HashMap<String, String>, CniError> {
    let mut vars = HashMap::new();
    for (k, v) in std::env::vars_os() {
        let (Some(k), v) = (k.to_str(), v.into_string()) else { continue };
        match v {
            Ok(v) => {
                vars.insert(k.to_string(), v);
            }
            Err(_) if k.starts_with("CNI_") || k.starts_with("WEFT_CNI_") => {
                return Err(CniError::new(code::INVALID_ENV, format!("{k} is not UTF-8 text"), "set it to valid text"));
            }
            Err(_) => {}
        }
    }
    Ok(vars)
}

/// The plugin's whole protocol: CNI_* environment and stdin in, result or error JSON out.
pub fn cli_main() -> ExitCode {
    let env = match utf8_vars() {
        Ok(vars) => Env::from_vars(&vars),
        Err(e) => return fail(&e, "1.1.0"),
    };
    let mut stdin = vec![];
    if env.command != "VERSION" && std::io::stdin().read_to_end(&mut stdin).is_err() {
        return fail(&CniError::new(code::IO, "cannot read the network configuration from stdin", ""), "1.1.0");
    }
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(String::from))
        .unwrap_or_else(|| "1.1.0".into());
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&CniError::io("cannot start", e), &version),
    };
    match rt.block_on(plugin::run(&env, &stdin)) {
        Ok(Some(v)) => {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &v);
            let _ = out.write_all(b"\n");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => fail(&e, &version),
    }
}

fn fail(e: &CniError, version: &str) -> ExitCode {
    // Not println!: it panics when stdout is closed.
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &e.to_json(version));
    let _ = out.write_all(b"\n");
    ExitCode::FAILURE
}
