//! `erofs-share status`.

use std::process::ExitCode;

/// Arguments of `erofs-share status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`status` is not implemented yet")
}
