//! `weft up`: check the settings and the machine, write the lab's config, start its daemon
//! and return when the API answers.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::cli::UpArgs;
use crate::lab::{self, Lab, LabConfig};

pub async fn run(name: Option<String>, a: UpArgs) -> Result<ExitCode> {
    // The same choice as every command: --name, $WEFT_CLUSTER, the one lab there is, default.
    let name = match name.or_else(|| std::env::var("WEFT_CLUSTER").ok().filter(|s| !s.is_empty())) {
        Some(n) => n,
        None => lab::select(None).map(|l| l.name).unwrap_or("default".into()),
    };
    if !weft_api::validate::is_dns1123_label(&name) {
        bail!("lab name {name:?} is invalid: use lowercase letters, digits and '-' (e.g. 'dev')");
    }
    // Check the settings before anything is made.
    let _: ipnet::IpNet =
        a.service_cidr.parse().with_context(|| format!("--service-cidr {:?} is not a CIDR", a.service_cidr))?;
    let _: ipnet::IpNet = a.pod_cidr.parse().with_context(|| format!("--pod-cidr {:?} is not a CIDR", a.pod_cidr))?;
    lab::parse_port_range(&a.node_port_range)?;
    weft_controllers::lb::parse_pools(&a.lb_pool).map_err(|e| anyhow::anyhow!("--lb-pool: {e}"))?;
    if a.egress {
        bail!("--egress is not built yet: pods reach only the lab's own networks");
    }
    if a.control_plane == "kubernetes" {
        // The binaries, before anything is made.
        weft_controlplane::find_bin_dir(&std::env::current_exe()?)?;
    }
    let dir = match (&a.state_dir, lab::select(Some(&name))) {
        (Some(d), _) => d.clone(),
        (None, Ok(existing)) => existing.dir,
        (None, Err(_)) => lab::home().join("state").join(&name),
    };
    let dir = if dir.is_absolute() { dir } else { std::env::current_dir()?.join(dir) };
    let lab = Lab::at(&name, dir.clone());
    if lab.running() {
        println!("lab {name:?} is already up (API {}); nothing changed", lab.api_url().unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    // What the lab needs from the machine, before anything is made (an API-only lab needs
    // nothing more).
    if a.nodes > 0 {
        preflight()?;
    }
    // What `weft up` and the daemon it starts write is private (the store holds every Secret).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    lab::secure_state_dir(&dir)?;
    let cfg_path = dir.join("config.json");
    let resumed = cfg_path.exists();
    if !resumed {
        let cfg = LabConfig {
            name: name.clone(),
            service_cidr: a.service_cidr,
            pod_cidr: a.pod_cidr,
            nodes: a.nodes,
            overlay: a.overlay,
            node_port_range: a.node_port_range,
            api_port: a.api_port,
            egress: a.egress,
            lb_pool: a.lb_pool,
            control_plane: a.control_plane,
        };
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    }
    lab::register(&name, &dir)?;
    eprintln!("{} lab {name:?}: starting the control plane", if resumed { "resuming" } else { "creating" });
    lab::spawn_daemon(&lab)?;
    println!("lab {name:?} is up");
    println!("  API:        {}", lab.api_url().unwrap_or_default());
    println!("  kubeconfig: {}", lab.kubeconfig().display());
    println!("  state:      {}", dir.display());
    println!("try: weft get svc -A    or    kubectl --kubeconfig {} get ns", lab.kubeconfig().display());
    Ok(ExitCode::SUCCESS)
}

/// Checks that the machine has what a lab needs (root, and a kernel with the nf_tables features
/// the service proxy and the NetworkPolicy engine use: no command-line tool is needed), so `weft up` fails at once, naming
/// what is missing, instead of reporting a lab up whose Services cannot work.
fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("weft up needs root: a lab makes network namespaces (run it with sudo)");
    }
    weft_proxy::apply::preflight().context("this machine cannot run a lab")?;
    weft_policy::apply::preflight().context("this machine cannot run a lab")
}
