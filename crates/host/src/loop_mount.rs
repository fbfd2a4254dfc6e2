//! A kernel EROFS mount through a read-only, direct-I/O loop device (so the image file is not
//! cached a second time), undone on drop: unmount, then detach the loop device.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why an image could not be loop-mounted.
#[derive(Debug, thiserror::Error)]
pub enum LoopMountError {
    /// The temporary mountpoint could not be created.
    #[error("creating a mountpoint: {0}")]
    Mountpoint(io::Error),
    /// A tool (`losetup`, `mount`) could not be started.
    #[error("running {command}: {cause}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        cause: io::Error,
    },
    /// A tool ran and failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on standard error.
        stderr: String,
    },
}

/// A mounted image. Dropping it unmounts and detaches the loop device.
#[derive(Debug)]
pub struct LoopMount {
    dir: tempfile::TempDir,
    loopdev: String,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<String, LoopMountError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|cause| LoopMountError::Spawn {
        command: command.clone(),
        cause,
    })?;
    if !out.status.success() {
        return Err(LoopMountError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopMount {
    /// Mounts `image` read-only with the kernel erofs driver, with extra `-o` options.
    pub fn new_with_options(image: &Path, options: &str) -> Result<LoopMount, LoopMountError> {
        let dir = tempfile::Builder::new()
            .prefix("erofs-mnt-")
            .tempdir()
            .map_err(LoopMountError::Mountpoint)?;
        let loopdev = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only", "--direct-io=on"])
            .arg(image))?;
        // From here on, dropping `m` detaches the loop device.
        let mut m = LoopMount {
            dir,
            loopdev,
            mounted: false,
        };
        let opts = if options.is_empty() {
            "ro".to_string()
        } else {
            format!("ro,{options}")
        };
        run(Command::new("mount")
            .args(["-t", "erofs", "-o", &opts])
            .arg(&m.loopdev)
            .arg(m.dir.path()))?;
        m.mounted = true;
        Ok(m)
    }

    /// Mounts `image` read-only with the kernel erofs driver.
    pub fn new(image: &Path) -> Result<LoopMount, LoopMountError> {
        Self::new_with_options(image, "")
    }

    /// Where the image is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The loop device backing the mount.
    pub fn loop_device(&self) -> PathBuf {
        PathBuf::from(&self.loopdev)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = run(Command::new("umount").arg(self.dir.path()))
        {
            eprintln!("LoopMount: {e}; detaching lazily");
            let _ = run(Command::new("umount").arg("-l").arg(self.dir.path()));
        }
        if let Err(e) = run(Command::new("losetup").arg("-d").arg(&self.loopdev)) {
            eprintln!("LoopMount: {e}");
        }
    }
}
