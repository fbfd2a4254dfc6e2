//! `erofs-share snapshotter`: a containerd proxy snapshotter (snapshots v1 gRPC) whose
//! layers are fingerprinted EROFS images served by the daemon in one sharing domain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use erofs_share_snapshotter::{Config, ErofsSnapshotter};

/// Arguments of `erofs-share snapshotter`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unix socket containerd's proxy plugin connects to.
    #[arg(long, default_value = "/run/erofs-share-snapshotter/snapshotter.sock")]
    pub address: PathBuf,
    /// Directory of the snapshot metadata, upper directories and layer images.
    #[arg(long, default_value = "/var/lib/erofs-share/snapshotter")]
    pub root: PathBuf,
    /// Sharing domain of every layer mount.
    #[arg(long, default_value = "containerd")]
    pub domain: String,
    /// State directory of the running erofs-share daemon.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating {}", args.root.display()))?;
    let root = std::path::absolute(&args.root)?;
    let state_dir = std::path::absolute(&args.state_dir)?;
    let address = std::path::absolute(&args.address)?;
    let snapshotter = ErofsSnapshotter::open(Config {
        root,
        daemon_state_dir: state_dir,
        domain: args.domain,
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(erofs_share_snapshotter::serve(
        Arc::new(snapshotter),
        &address,
    ))?;
    Ok(ExitCode::SUCCESS)
}
