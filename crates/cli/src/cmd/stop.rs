//! `erofs-share stop`: the daemon unmounts everything and exits; this waits until it has.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use erofs_share_daemon::control::{self, Request};

/// Arguments of `erofs-share stop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's state directory.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Give up waiting for the daemon to exit after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Its pid file goes once everything is unmounted, just before it exits.
    let pid_file = args.state_dir.join("daemon.pid");
    let resp = match control::request(&args.state_dir, &Request::Stop) {
        Ok(r) => r,
        Err(e) if super::status::no_daemon(&e) => {
            println!("no daemon runs at {}", args.state_dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => bail!("{}: {e}", control::socket_path(&args.state_dir).display()),
    };
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    let t = Instant::now();
    while pid_file.exists() {
        if t.elapsed() > Duration::from_secs(args.timeout) {
            bail!(
                "the daemon did not finish stopping within {} s ({} is still there)",
                args.timeout,
                pid_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("stopped the daemon at {}", args.state_dir.display());
    Ok(ExitCode::SUCCESS)
}
