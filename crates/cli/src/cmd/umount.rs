//! `erofs-share umount`: unmount an image mounted by the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use erofs_share_daemon::control::{self, Request};
use erofs_share_daemon::daemon::IMAGE_FSNAME;
use erofs_share_daemon::mounts::{detach, is_our_mount};

/// Arguments of `erofs-share umount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's state directory.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where the image is mounted.
    pub mountpoint: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Absolute without following the mount itself: a dead mount fails canonicalize (ENOTCONN).
    let mountpoint = std::path::absolute(&args.mountpoint)
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    match control::request(
        &args.state_dir,
        &Request::Umount {
            mountpoint: mountpoint.clone(),
        },
    ) {
        Ok(r) if r.ok => {
            if r.detached == Some(false) {
                println!(
                    "{} detached; it goes away when its last open file is closed",
                    mountpoint.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(r) => bail!("{}", r.error.unwrap_or_default()),
        // No daemon: a mount left by a killed daemon answers ENOTCONN; detach it ourselves.
        Err(_) if is_our_mount(&mountpoint, IMAGE_FSNAME) => {
            detach(&mountpoint).with_context(|| format!("umount {}", mountpoint.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} is not an erofs-share mount and no daemon answers at {}",
                mountpoint.display(),
                args.state_dir.display()
            )
        }),
    }
}
