//! `erofs-share daemon`.

use std::process::ExitCode;

/// Arguments of `erofs-share daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`daemon` is not implemented yet")
}
