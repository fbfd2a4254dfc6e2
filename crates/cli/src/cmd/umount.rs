//! `erofs-share umount`.

use std::process::ExitCode;

/// Arguments of `erofs-share umount`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`umount` is not implemented yet")
}
