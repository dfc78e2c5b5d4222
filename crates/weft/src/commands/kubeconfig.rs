//! `weft kubeconfig`: print the lab's kubeconfig.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::lab;

pub fn run(name: Option<String>) -> Result<ExitCode> {
    let lab = lab::select(name.as_deref())?;
    print!("{}", std::fs::read_to_string(lab.kubeconfig()).context("the lab has no kubeconfig yet")?);
    Ok(ExitCode::SUCCESS)
}
