//! `erofs-share drop-caches`: the daemon forgets its own short-lived copies of image bytes,
//! so that after `echo 3 > /proc/sys/vm/drop_caches` a read is as cold as after a restart.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use erofs_share_daemon::control::{self, Request};

/// Arguments of `erofs-share drop-caches`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's state directory.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let resp = match control::request(&args.state_dir, &Request::DropCaches) {
        Ok(r) => r,
        Err(e) => bail!("{}: {e}", control::socket_path(&args.state_dir).display()),
    };
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    println!("the daemon dropped its caches of image bytes");
    Ok(ExitCode::SUCCESS)
}
