//! A kernel EROFS mount through a read-only, direct-I/O loop device (so the image file is not
//! cached a second time), undone on drop: unmount, then detach the loop device.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted image. Dropping it unmounts and detaches the loop device.
#[derive(Debug)]
pub struct LoopMount {
    dir: tempfile::TempDir,
    loopdev: String,
    mounted: bool,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopMount {
    /// Mount `image` read-only with the kernel erofs driver, with extra `-o` options.
    pub fn new_with_options(image: &Path, options: &str) -> Result<LoopMount, String> {
        let dir = tempfile::Builder::new()
            .prefix("erofs-mnt-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let loopdev = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only", "--direct-io=on"])
            .arg(image))?;
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

    /// Mount `image` read-only with the kernel erofs driver.
    pub fn new(image: &Path) -> Result<LoopMount, String> {
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

/// Drop clean page cache, dentries and inodes (root only).
pub fn drop_caches() -> std::io::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}
