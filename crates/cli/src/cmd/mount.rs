//! `erofs-share mount`: ask the daemon (started in the background if none runs) to mount an
//! image.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use erofs_share_daemon::control::{self, Request};

/// Arguments of `erofs-share mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Share identical files with the other mounts of this domain. A domain is verified
    /// unless its first mount says `--trusted`: each shared file's content is checked against
    /// its fingerprint before any of it is served.
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub domain: Option<String>,
    /// Make the domain trusted: fingerprints are believed, not checked (as the kernel's
    /// `inode_share`; for images that all come from one trusted source).
    #[arg(long, requires = "domain")]
    pub trusted: bool,
    /// Do not share files, even with a domain.
    #[arg(long)]
    pub no_share: bool,
    /// How to mount: `overlay` (the kernel serves metadata and opens, the daemon only
    /// page-cache misses), `fuse` (the daemon serves everything), or `auto`: overlay where
    /// the kernel supports it.
    #[arg(long, default_value = "auto", value_parser = ["auto", "overlay", "fuse"])]
    pub front: String,
    /// The daemon's state directory.
    #[arg(long, default_value = erofs_share_daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The EROFS image file.
    pub image: PathBuf,
    /// An existing directory to mount it on.
    pub mountpoint: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let image = args
        .image
        .canonicalize()
        .with_context(|| format!("image {}", args.image.display()))?;
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    // What the daemon would refuse anyway, before starting one for nothing.
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    erofs::Image::open(&image)?.root()?;
    ensure_daemon(&args.state_dir)?;
    let resp = control::request(
        &args.state_dir,
        &Request::Mount {
            image,
            mountpoint,
            domain: args.domain,
            share: !args.no_share,
            front: Some(args.front),
            trusted: args.trusted,
        },
    )
    .context("talk to the daemon")?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_default());
    }
    if let Some(m) = resp.mount {
        let sharing = match (&m.domain, m.unshared_reason) {
            (Some(d), None) => format!("sharing in domain {d:?}"),
            (_, Some(why)) => format!("not shared: {why}"),
            (None, None) => "not shared".to_string(),
        };
        let front = match m.front_reason {
            Some(why) => format!("{} front: {why}", m.front),
            None => format!("{} front", m.front),
        };
        println!(
            "mounted {} at {} ({sharing}; {front})",
            m.image.display(),
            m.mountpoint.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts `erofs-share daemon --state-dir DIR` in the background unless one answers, and says
/// so on stderr with where its log is.
pub fn ensure_daemon(state_dir: &Path) -> anyhow::Result<()> {
    if control::request(state_dir, &Request::Status).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let log_path = state_dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("find the erofs-share executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure only calls setsid, which is async-signal-safe and allocates nothing;
    // detaching from our session keeps the daemon alive when this terminal goes.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the daemon")?;
    control::wait_ready(state_dir, &mut child, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("{e}; see {}", log_path.display()))?;
    eprintln!(
        "started the erofs-share daemon (pid {}); its log is {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}
