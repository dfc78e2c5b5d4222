//! The commands the lab runs as processes, not people: `weft shim` (a pod's shim) and
//! `weft builtin` (the server a container without a command runs).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{BuiltinArgs, ShimArgs};

pub fn shim(a: ShimArgs) -> Result<ExitCode> {
    weft_lab::shim::run(&a.spec)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn builtin(a: BuiltinArgs) -> Result<ExitCode> {
    let ports = |s: &str| -> Result<Vec<u16>> {
        s.split(',').filter(|p| !p.is_empty()).map(|p| p.parse().context("port")).collect()
    };
    let mode = match a.mode.as_str() {
        "serve-hostname" => weft_lab::builtin::Mode::ServeHostname,
        "netexec" => weft_lab::builtin::Mode::Netexec,
        _ => weft_lab::builtin::Mode::Echo,
    };
    weft_lab::builtin::run(weft_lab::builtin::Builtin {
        pod: a.pod,
        namespace: a.namespace,
        mode,
        tcp: ports(&a.tcp)?,
        udp: ports(&a.udp)?,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
