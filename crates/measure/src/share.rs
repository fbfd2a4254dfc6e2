//! Images mounted through a private erofs-share daemon (its own state directory, so it never
//! touches a daemon the host runs): one sharing domain for all images, or `--no-share`.
//! Everything is undone on drop: unmount every image, stop the daemon, remove the directories.

use crate::runtime::{Mounted, Mounter};
use erofs_share_daemon::control::{self, Request};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The domain every image of a benchmark shares in.
pub const DOMAIN: &str = "bench";

/// A daemon process of ours.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    state: tempfile::TempDir,
    /// The front mounts ask for (None: the daemon's choice, the overlay front where the
    /// kernel has it).
    pub front: Option<String>,
    /// Mount in a trusted domain (no verification of sources), not a verified one.
    pub trusted: bool,
}

impl Daemon {
    /// Start `exe daemon --state-dir TMP` and wait until it answers.
    pub fn start(exe: &Path) -> Result<Daemon, String> {
        let state = tempfile::Builder::new()
            .prefix("erofs-share-bench-state-")
            .tempdir()
            .map_err(|e| format!("creating a state directory: {e}"))?;
        let log_path = state.path().join("daemon.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(exe)
            .arg("daemon")
            .arg("--state-dir")
            .arg(state.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {} daemon: {e}", exe.display()))?;
        let mut d = Daemon {
            child,
            state,
            front: None,
            trusted: false,
        };
        control::wait_ready(d.state.path(), &mut d.child, Duration::from_secs(10))
            .map_err(|e| format!("{e}: {}", crate::container::log_tail(&log_path)))?;
        Ok(d)
    }

    fn request(&self, req: &Request) -> Result<control::Response, String> {
        let resp = control::request(self.state.path(), req)
            .map_err(|e| format!("talking to the daemon: {e}"))?;
        if !resp.ok {
            return Err(resp.error.unwrap_or_else(|| "failed".into()));
        }
        Ok(resp)
    }

    /// Mount `image` at `mountpoint` (an existing directory), sharing in `domain`, or
    /// unshared without one.
    pub fn mount(
        &self,
        image: &Path,
        mountpoint: &Path,
        domain: Option<&str>,
    ) -> Result<(), String> {
        let share = domain.is_some();
        let image = image
            .canonicalize()
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let resp = self.request(&Request::Mount {
            image: image.clone(),
            mountpoint: mountpoint.to_path_buf(),
            domain: domain.map(str::to_string),
            share,
            front: self.front.clone(),
            trusted: self.trusted,
        })?;
        // A shared benchmark that silently shares nothing would report a wrong table.
        if share && let Some(why) = resp.mount.and_then(|m| m.unshared_reason) {
            return Err(format!(
                "{}: mounted but not shared: {why}",
                image.display()
            ));
        }
        Ok(())
    }

    /// Unmount `mountpoint`.
    pub fn umount(&self, mountpoint: &Path) -> Result<(), String> {
        self.request(&Request::Umount {
            mountpoint: mountpoint.to_path_buf(),
        })
        .map(|_| ())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = control::request(self.state.path(), &Request::Stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("erofs-share: the bench daemon did not stop; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
            }
        }
    }
}

/// Mount through erofs-share: every image in one domain, or each unshared.
#[derive(Debug, Clone)]
pub struct ErofsShare {
    /// The `erofs-share` executable (runs the daemon).
    pub exe: PathBuf,
    /// False for `--no-share`.
    pub share: bool,
    /// `Some("fuse")` for the FUSE front; None for the daemon's default (overlay).
    pub front: Option<&'static str>,
    /// A trusted domain (sources not verified against their fingerprints).
    pub trusted: bool,
}

#[derive(Debug)]
struct ShareMounts {
    mountpoints: Vec<PathBuf>,
    // Dropped after the unmounts in `drop`: the daemon, then the directories.
    daemon: Daemon,
    dirs: tempfile::TempDir,
}

impl Mounted for ShareMounts {
    fn roots(&self) -> Vec<PathBuf> {
        self.mountpoints.clone()
    }

    fn drop_own_caches(&self) -> Result<(), String> {
        self.daemon.request(&Request::DropCaches).map(drop)
    }
}

impl Drop for ShareMounts {
    fn drop(&mut self) {
        for m in self.mountpoints.iter().rev() {
            if let Err(e) = self.daemon.umount(m) {
                eprintln!("erofs-share: unmounting {}: {e}", m.display());
            }
        }
    }
}

impl Mounter for ErofsShare {
    fn label(&self) -> String {
        use crate::report::{
            NO_SHARE, NO_SHARE_FUSE, ONE_DOMAIN, ONE_DOMAIN_FUSE, ONE_DOMAIN_TRUSTED,
        };
        let fuse = self.front == Some("fuse");
        match (self.share, fuse) {
            (true, false) if self.trusted => ONE_DOMAIN_TRUSTED,
            (true, false) => ONE_DOMAIN,
            (true, true) => ONE_DOMAIN_FUSE,
            (false, false) => NO_SHARE,
            (false, true) => NO_SHARE_FUSE,
        }
        .into()
    }

    fn mount(&self, images: &[PathBuf]) -> Result<Box<dyn Mounted>, String> {
        let mut daemon = Daemon::start(&self.exe)?;
        daemon.front = self.front.map(str::to_string);
        daemon.trusted = self.trusted;
        let dirs = tempfile::Builder::new()
            .prefix("erofs-share-bench-mnt-")
            .tempdir()
            .map_err(|e| format!("creating mount points: {e}"))?;
        let mut mounts = ShareMounts {
            mountpoints: Vec::new(),
            daemon,
            dirs,
        };
        for (i, img) in images.iter().enumerate() {
            let mp = mounts.dirs.path().join(i.to_string());
            std::fs::create_dir(&mp).map_err(|e| format!("{}: {e}", mp.display()))?;
            let domain = self.share.then_some(DOMAIN);
            mounts.daemon.mount(img, &mp, domain)?;
            mounts.mountpoints.push(mp);
        }
        Ok(Box::new(mounts))
    }
}
