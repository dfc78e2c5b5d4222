//! The command line of the ingress controller, shared by `weft ingress` and `weft-ingress` (the
//! binary the Deployment of deploy/ingress.yaml runs: it holds only this controller).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use crate::proxy::{Options, Proxy};
use crate::watch::{Publish, Source, WriteBack};
use crate::{ClassConfig, Compiled, Inputs};

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// A kubeconfig; without one, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where plain HTTP is served (repeatable).
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http: Vec<SocketAddr>,
    /// Where HTTPS is served (repeatable).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub https: Vec<SocketAddr>,
    /// Where /healthz and Prometheus /metrics are served (repeatable).
    #[arg(long, default_value = "0.0.0.0:10254")]
    pub metrics: Vec<SocketAddr>,
    /// Proxy worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// A JSON access log line per request on stdout (`--access-log=false` to turn it off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub access_log: bool,
    /// The `spec.controller` of the IngressClasses served.
    #[arg(long, default_value = crate::CONTROLLER)]
    pub controller_class: String,
    /// Also serve Ingresses that name no class when none of ours is the default.
    #[arg(long)]
    pub watch_ingress_without_class: bool,
    /// `namespace/name` of the Service in front of this controller: its addresses go into the
    /// status of every Ingress served.
    #[arg(long)]
    pub publish_service: Option<String>,
    /// Addresses (comma-separated IPs or hostnames) for the status of every Ingress served, in
    /// place of --publish-service's.
    #[arg(long)]
    pub publish_status_address: Option<String>,
    /// Serve the objects of this YAML file (read again when it changes) instead of the API's.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// The Lease whose holder, of all replicas, writes Ingress status and Events (as
    /// ingress-nginx's --election-id); empty: every replica writes.
    #[arg(long, default_value = "weft-ingress-leader")]
    pub election_id: String,
    /// The Lease's namespace: the controller's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub election_namespace: String,
}

/// Serves as `a` says (logging already set up). Returns only on an error.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.controller_class.trim().is_empty() {
        anyhow::bail!(
            "--controller-class is empty: give the spec.controller of your IngressClass, such as {}",
            crate::CONTROLLER
        );
    }
    if a.http.is_empty() && a.https.is_empty() {
        anyhow::bail!("nothing to serve on: give --http or --https an address such as 0.0.0.0:80");
    }
    let publish = Publish::from_flags(a.publish_service.as_deref(), a.publish_status_address.as_deref())?;
    let cfg =
        ClassConfig { controller: a.controller_class.clone(), watch_without_class: a.watch_ingress_without_class };
    let opts =
        Options { http: a.http, https: a.https, metrics: a.metrics, threads: a.threads, access_log: a.access_log };
    if let Some(path) = a.from_file {
        if publish != Publish::Nothing {
            anyhow::bail!("--from-file serves without an API: drop --publish-service and --publish-status-address");
        }
        let proxy = Proxy::start(opts).await?;
        let mut generation = 0;
        tracing::info!(file = %path.display(), "weft ingress: serving the objects of a file");
        return crate::file::run(path.clone(), move |inputs| {
            generation += 1;
            let c = compile(&inputs, &cfg, generation);
            for p in &c.problems {
                tracing::warn!(ingress = %p.ingress, reason = p.reason, "{}", p.message);
            }
            proxy.install(c.table);
        })
        .await
        .with_context(|| format!("--from-file {}", path.display()));
    }
    let client = weft_watch::client(a.kubeconfig.clone()).await?;
    let proxy = Proxy::start(opts).await?;
    let source = Source::start(&client);
    let election = (!a.election_id.is_empty()).then(|| {
        let me =
            format!("{}_{:016x}", crate::watch::instance().unwrap_or("weft-ingress".into()), rand::random::<u64>());
        weft_leader::Config::new(&a.election_namespace, &a.election_id, &me)
    });
    let writeback = WriteBack::start(client, source.caches.ingresses.clone(), publish, election);
    tracing::info!(controller = %cfg.controller, "weft ingress: watching the API");
    let mut generation = 0;
    source
        .run(move |inputs| {
            generation += 1;
            let c = compile(&inputs, &cfg, generation);
            writeback.report(&c.served, &c.problems);
            proxy.install(c.table);
        })
        .await;
    Ok(())
}

/// One compile, timed and logged.
fn compile(inputs: &Inputs, cfg: &ClassConfig, generation: u64) -> Compiled {
    let t = std::time::Instant::now();
    let c = crate::compile::compile(inputs, cfg, generation);
    tracing::debug!(
        generation,
        ingresses = inputs.ingresses.len(),
        served = c.served.len(),
        problems = c.problems.len(),
        took = ?t.elapsed(),
        "route table compiled"
    );
    c
}
