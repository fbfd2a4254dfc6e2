//! `erofs-share daemon`: run the sharing daemon in the foreground (for systemd), or take over
//! the mounts of the one running (an upgrade without unmounting anything).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `erofs-share daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the control socket, pid file and internal dedup mounts.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Directory of the metadata images and computed fingerprints, kept across remounts and
    /// reboots [default: /var/cache/erofs-share with the default state directory, else the
    /// state directory]. Best on disk: on a tmpfs these pages could never be evicted.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Take over every mount of the daemon running on this state directory: it hands over its
    /// FUSE connections, images and state and exits without unmounting, and this process serves
    /// them from then on (an upgrade in place); if this fails, the running daemon goes on.
    #[arg(long)]
    pub takeover: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cache_dir =
        (args.cache_dir).unwrap_or_else(|| erofs_share_daemon::default_cache_dir(&args.state_dir));
    // The daemon's errors name the path or the state directory.
    if args.takeover {
        erofs_share_daemon::service::run_takeover(&args.state_dir, &cache_dir)?;
    } else {
        erofs_share_daemon::run(&args.state_dir, &cache_dir)?;
    }
    Ok(ExitCode::SUCCESS)
}
