//! `erofs-share daemon`: run the sharing daemon in the foreground (for systemd).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `erofs-share daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the control socket, pid file and internal dedup mounts.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The daemon's errors name the path or the state directory.
    erofs_share_daemon::run(&args.state_dir)?;
    Ok(ExitCode::SUCCESS)
}
