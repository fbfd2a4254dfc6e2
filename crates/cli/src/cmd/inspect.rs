//! `erofs-share inspect`.

use std::process::ExitCode;

/// Arguments of `erofs-share inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`inspect` is not implemented yet")
}
