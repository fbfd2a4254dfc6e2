//! `erofs-share fsck`.

use std::process::ExitCode;

/// Arguments of `erofs-share fsck`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`fsck` is not implemented yet")
}
