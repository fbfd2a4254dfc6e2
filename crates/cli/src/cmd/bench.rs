//! `erofs-share bench`.

use std::process::ExitCode;

/// Arguments of `erofs-share bench`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`bench` is not implemented yet")
}
