//! `erofs-share mkfs`.

use std::process::ExitCode;

/// Arguments of `erofs-share mkfs`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`mkfs` is not implemented yet")
}
