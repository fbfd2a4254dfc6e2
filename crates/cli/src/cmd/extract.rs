//! `erofs-share extract`.

use std::process::ExitCode;

/// Arguments of `erofs-share extract`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`extract` is not implemented yet")
}
