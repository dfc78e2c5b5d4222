//! `weft logs`: a container's log, from the API (`pods/NAME/log`).

use std::process::ExitCode;

use anyhow::Result;
use weft_api::kinds;

use crate::cli::LogsArgs;
use crate::{client, lab};

pub async fn run(name: Option<String>, a: LogsArgs) -> Result<ExitCode> {
    let LogsArgs { pod, namespace: ns, container, tail } = a;
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let k = kinds::by_cli_name("pods").unwrap();
    let mut path = format!("{}/log", client::path(k, Some(&ns.unwrap_or("default".into())), Some(&pod)));
    let mut q = vec![];
    if let Some(c) = container {
        q.push(format!("container={c}"));
    }
    if let Some(t) = tail {
        q.push(format!("tailLines={t}"));
    }
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let req = http::Request::builder().uri(path).body(vec![]).unwrap();
    match c.request_text(req).await {
        Ok(t) => {
            print!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}
