//! `weft`: start and stop labs, talk to their API as kubectl would, and run the daemons.
//!
//! `cli` is the command line, `daemon` the lab daemon's composition root, `commands` one module
//! per command; `lab` finds labs and starts and stops their daemons, `client` talks to a lab's
//! API, `output` prints what it says.

mod cli;
mod client;
mod commands;
mod daemon;
mod in_cluster;
mod lab;
mod output;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Cmd};

fn main() -> ExitCode {
    // Called as `weft-cni` (a link the lab makes), this binary is the CNI plugin.
    if std::env::args_os().next().is_some_and(|a| std::path::Path::new(&a).file_name().is_some_and(|f| f == "weft-cni"))
    {
        return weft_cni::cli_main();
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let name = cli.name;
    match cli.cmd {
        Cmd::Up(a) => commands::up::run(name, a).await,
        Cmd::Down => commands::down::run(name).await,
        Cmd::Daemon(a) => daemon::run(name, a).await,
        Cmd::Kubeconfig(a) => commands::kubeconfig::run(name, a).await,
        Cmd::Status => commands::status::run(name).await,
        Cmd::Exec(a) => commands::exec::run(name, a),
        Cmd::Logs(a) => commands::logs::run(name, a).await,
        Cmd::Agent(a) => commands::cluster::agent(a).await,
        Cmd::Dns(a) => commands::cluster::dns(a).await,
        Cmd::Ingress(a) => commands::cluster::ingress(a).await,
        Cmd::Shim(a) => commands::internal::shim(a),
        Cmd::Builtin(a) => commands::internal::builtin(a).await,
        Cmd::Apply(a) => commands::apply::run(name, a).await,
        Cmd::Delete(a) => commands::delete::run(name, a).await,
        Cmd::Get(a) => commands::get::run(name, a).await,
        Cmd::Describe(a) => commands::describe::run(name, a).await,
        Cmd::Policy(cli::PolicyCmd::Denials(a)) => commands::policy::denials(name, a).await,
    }
}
