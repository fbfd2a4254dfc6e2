//! `erofs-share daemon`: run the sharing daemon in the foreground (for systemd).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `erofs-share daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the control socket, pid file and internal dedup mounts.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    erofs_share_daemon::run(&args.state_dir)
        .with_context(|| format!("daemon with state directory {}", args.state_dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
