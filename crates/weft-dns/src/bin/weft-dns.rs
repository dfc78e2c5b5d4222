//! `weft-dns`: the cluster DNS on its own (the same server as `weft dns`).

use std::process::ExitCode;

use clap::Parser;

/// weft's cluster DNS: the Kubernetes DNS spec for the cluster zone, a caching forwarder for
/// everything else.
#[derive(Parser)]
#[command(name = "weft-dns", version)]
struct Cli {
    #[command(flatten)]
    args: weft_dns::cli::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-dns: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(weft_dns::cli::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-dns: {e:#}");
            ExitCode::FAILURE
        }
    }
}
