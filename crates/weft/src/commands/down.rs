//! `weft down`: stop a lab's daemon and remove everything the lab made.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::lab;

pub async fn run(name: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    lab::stop_daemon(&lab, Duration::from_secs(10))?;
    weft_lab::destroy(&lab.name, &lab.dir)?;
    if lab.dir.join(lab::MARKER).exists() {
        std::fs::remove_dir_all(&lab.dir)
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?;
    } else if lab.dir.exists() {
        eprintln!("left {} in place: weft did not make it (it has no {} marker)", lab.dir.display(), lab::MARKER);
    }
    lab::unregister(&lab.name);
    println!("lab {:?} is down", lab.name);
    Ok(ExitCode::SUCCESS)
}
