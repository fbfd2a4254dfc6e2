//! `erofs-share mount`.

use std::process::ExitCode;

/// Arguments of `erofs-share mount`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`mount` is not implemented yet")
}
