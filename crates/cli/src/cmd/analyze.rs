//! `erofs-share analyze`.

use std::process::ExitCode;

/// Arguments of `erofs-share analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`analyze` is not implemented yet")
}
