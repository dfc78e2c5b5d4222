//! `weft-ingress`: the Ingress controller on its own (the same controller as `weft ingress`).

use std::process::ExitCode;

use clap::Parser;

/// weft's Ingress controller: Ingress v1 and the ingress-nginx annotations, served by a reverse
/// proxy whose routes change without a reload.
#[derive(Parser)]
#[command(name = "weft-ingress", version)]
struct Cli {
    #[command(flatten)]
    args: weft_ingress::cli::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The controller's log on stderr: stdout is the proxy's access log (JSON lines), as
    // ingress-nginx keeps them apart.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-ingress: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(weft_ingress::cli::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-ingress: {e:#}");
            ExitCode::FAILURE
        }
    }
}
