//! `weft logs`: a container's log, from the API (`pods/NAME/log`); `-f` follows it, printing
//! what comes as it comes, until the container ends.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use futures::AsyncReadExt;
use weft_api::kinds;

use crate::cli::LogsArgs;
use crate::{client, lab};

pub async fn run(name: Option<String>, a: LogsArgs) -> Result<ExitCode> {
    let LogsArgs { pod, namespace: ns, container, tail, follow, previous, timestamps, since, limit_bytes } = a;
    let mut q = vec![];
    if let Some(c) = container {
        q.push(format!("container={c}"));
    }
    if let Some(t) = tail {
        q.push(format!("tailLines={t}"));
    }
    for (on, key) in [(follow, "follow"), (previous, "previous"), (timestamps, "timestamps")] {
        if on {
            q.push(format!("{key}=true"));
        }
    }
    if let Some(s) = since {
        let Some(d) = weft_apiserver::events::parse_go_duration(&s) else {
            bail!("--since {s:?} is not a duration: write it as 5s, 2m or 1h");
        };
        // As kubectl: whole seconds, at least one.
        q.push(format!("sinceSeconds={}", d.as_secs_f64().ceil().max(1.0) as u64));
    }
    if let Some(l) = limit_bytes {
        if l == 0 {
            bail!("--limit-bytes must be greater than 0");
        }
        q.push(format!("limitBytes={l}"));
    }
    let lab = lab::select(name.as_deref())?;
    let c = client::connect(&lab).await?;
    let k = kinds::by_cli_name("pods").unwrap();
    let mut path = format!("{}/log", client::path(k, Some(&ns.unwrap_or("default".into())), Some(&pod)));
    if !q.is_empty() {
        path = format!("{path}?{}", q.join("&"));
    }
    let req = http::Request::builder().uri(path).body(vec![]).unwrap();
    // The body is copied as it arrives: a follow prints each line when the container writes it.
    let mut body = match c.request_stream(req).await {
        Ok(b) => Box::pin(b),
        Err(e) => {
            eprintln!("{}", client::describe_error(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut buf = vec![0u8; 32 << 10];
    let mut out = std::io::stdout().lock();
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}
