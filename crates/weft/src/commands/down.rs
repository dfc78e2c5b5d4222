//! `weft down`: stop a lab's daemon and remove everything the lab made.
//!
//! Parallel and bounded: every pod's shim gets its SIGTERM at once and the rest of its grace
//! period (at most [`weft_lab::STOP_BOUND`] in all) before SIGKILL; the namespaces go a few at
//! a time. Resumable: files are removed only after what they describe is gone, and the state
//! directory's marker last, so a `weft down` cut short is finished by the next one.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;

use crate::{client, lab};

/// How long the API may take to say the pods' grace periods before the defaults are used.
const ASK_LIMIT: Duration = Duration::from_secs(2);

pub async fn run(name: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    // The pods' grace periods, while the API is there to say them.
    let graces = if lab.running() { pod_graces(&lab).await } else { HashMap::new() };
    lab::stop_daemon(&lab, Duration::from_secs(10))?;
    let (lab_name, dir) = (lab.name.clone(), lab.dir.clone());
    tokio::task::spawn_blocking(move || weft_lab::destroy_with(&lab_name, &dir, &graces)).await??;
    if lab.dir.join(lab::MARKER).exists() {
        lab::remove_state_dir(&lab.dir)?;
    } else if lab.dir.exists() {
        eprintln!("left {} in place: weft did not make it (it has no {} marker)", lab.dir.display(), lab::MARKER);
    }
    lab::unregister(&lab.name);
    println!("lab {:?} is down", lab.name);
    Ok(ExitCode::SUCCESS)
}

/// Each pod's `terminationGracePeriodSeconds` by uid (empty if the API does not answer in time).
async fn pod_graces(lab: &lab::Lab) -> HashMap<String, Duration> {
    let ask = async {
        let pods: kube::Api<Pod> = kube::Api::all(client::connect(lab).await?);
        anyhow::Ok(pods.list(&Default::default()).await?)
    };
    let Ok(Ok(list)) = tokio::time::timeout(ASK_LIMIT, ask).await else { return HashMap::new() };
    list.items
        .into_iter()
        .filter_map(|p| {
            let grace = p.spec.as_ref()?.termination_grace_period_seconds?;
            Some((p.metadata.uid?, Duration::from_secs(grace.max(0) as u64)))
        })
        .collect()
}
