//! `weft status`: the lab, its daemon, the health of the API server and each node's proxy, and
//! the packets NetworkPolicy denied on each node.

use std::process::ExitCode;

use anyhow::Result;
use http::Method;

use crate::{client, lab};

pub async fn run(name: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    let running = lab.running();
    println!("lab:        {}", lab.name);
    println!("state:      {}", lab.dir.display());
    println!(
        "daemon:     {}",
        if running { format!("running (pid {})", lab.pid().unwrap_or(0)) } else { "stopped".into() }
    );
    if running {
        let c = client::connect(&lab).await?;
        let ok = client::call(&c, Method::GET, "/readyz", None, "", "text/plain").await;
        let health = match ok {
            Ok(_) | Err(kube::Error::SerdeError(_)) => "ok".to_string(),
            Err(e) => client::describe_error(&e),
        };
        println!("apiserver:  {} ({})", health, lab.api_url().unwrap_or_default());
        // The service proxy's health per node, as its node condition says.
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(c.clone());
        if let Ok(list) = nodes.list(&Default::default()).await {
            for n in list.items {
                let cond = n
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "ServiceProxyReady");
                let text = match cond {
                    Some(c) if c.status == "True" => "ok".to_string(),
                    Some(c) => format!("NOT READY: {}", c.message.unwrap_or_default()),
                    None => "starting".to_string(),
                };
                println!("proxy:      {} {}", n.metadata.name.unwrap_or_default(), text);
            }
        }
        // NetworkPolicy denials per node, from the daemon's own counters (its /metrics; a lab
        // without nodes has none).
        let has_metrics = lab.dir.join(super::metrics::ADDR_FILE).exists();
        match super::metrics::scrape(&lab.dir).await {
            Err(_) if !has_metrics => {}
            Ok(text) => {
                let totals = weft_policy::denials::parse_totals(&text);
                let mut nodes: Vec<&String> = totals.keys().map(|(n, _)| n).collect();
                nodes.dedup();
                if nodes.is_empty() {
                    println!("policy:     no denied packets");
                }
                for n in nodes {
                    let get = |d: &str| totals.get(&(n.clone(), d.to_string())).copied().unwrap_or(0);
                    let (i, e) = (get("ingress"), get("egress"));
                    println!("policy:     {n} denied {} packets (ingress {i}, egress {e})", i + e);
                }
            }
            Err(e) => println!("policy:     denials unknown: {e:#}"),
        }
    }
    Ok(if running { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
