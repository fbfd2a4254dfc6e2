//! The overlay front's kernel side (DESIGN.md, "the overlay front"): a read-only overlayfs
//! whose only lower layer is a kernel erofs mount of the image's metadata-only image and whose
//! data-only layer is the domain's dedup mount. Lookups, readdir, getattr and opens stay in the
//! kernel; only page-cache misses of the dedup files reach the daemon.
//!
//! The erofs mount is never attached anywhere: the overlay holds the only reference to it, so
//! when the overlay's last user goes (after a lazy unmount, its last open file) the erofs
//! superblock goes too and closes the metadata image file. That file is the mount's own copy,
//! unlinked once mounted, so its inode goes with that last close: [`Ends`] turns the inode's
//! end into "this mount has ended" with inotify, which is when its files stop being sources.
//! (A close alone would not do: anyone may open and close a file that has a name.)

use erofs::build::meta::KernelReads;
use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rustix::fs::{CWD, inotify};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, fsconfig_create, fsconfig_set_fd,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
};

/// Whether this kernel can serve the overlay front, probed once: the reason when not.
pub fn unsupported() -> Option<&'static str> {
    static PROBE: OnceLock<Option<&'static str>> = OnceLock::new();
    *PROBE.get_or_init(|| {
        if !crate::front::fuse::has_cap_sys_admin() {
            return Some("the daemon lacks CAP_SYS_ADMIN (overlay xattrs need it)");
        }
        if fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).is_err() {
            return Some("the kernel has no erofs");
        }
        let Ok(fs) = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) else {
            return Some("the kernel has no overlayfs");
        };
        // `datadir+` (data-only layers through the new mount API) came with Linux 6.8; an
        // empty value is refused by a kernel that knows the key, and EINVAL'd by name by one
        // that does not, so probe with a real directory.
        if fsconfig_set_string(&fs, "datadir+", "/").is_err() {
            return Some("overlayfs has no data-only layers (Linux 6.8 or later is needed)");
        }
        None
    })
}

/// What the running kernel reads in a metadata image (by its release: these are on-disk
/// features, which no mount option probes).
pub fn kernel_reads() -> KernelReads {
    static ANSWER: OnceLock<KernelReads> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        KernelReads {
            compact_mtimes: kernel_at_least(&release, (6, 15)),
            plain_xattr_prefixes: kernel_at_least(&release, (6, 17)),
        }
    })
}

/// Whether a kernel release string (`6.18.0-1-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// What a kernel mount step failed on.
fn step(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> io::Error {
    move |e| io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}"))
}

/// A detached read-only erofs mount of `meta_image`: file-backed (Linux 6.12+), else on a
/// read-only loop device that goes away with the mount. `EROFS_SHARE_META_LOOP=1` takes the
/// loop device on any kernel (tests).
fn erofs_mount(meta_image: &Path) -> io::Result<OwnedFd> {
    if std::env::var_os("EROFS_SHARE_META_LOOP").is_none() {
        match erofs_mount_from(meta_image) {
            // Before 6.12 erofs takes only block devices.
            Err(rustix::io::Errno::NOTBLK) => {}
            other => return other.map_err(step("file-backed erofs mount of the metadata image")),
        }
    }
    let dev = loop_attach(meta_image)?;
    let mounted =
        erofs_mount_from(&dev).map_err(step("erofs mount of the metadata image's loop device"));
    // Detaching a device in use only marks it to go with its last user: the erofs mount.
    let detached = loop_detach(&dev);
    let mounted = mounted?;
    detached?;
    Ok(mounted)
}

/// The errno is kept: the caller tells "not a block device" from other failures.
fn erofs_mount_from(source: &Path) -> rustix::io::Result<OwnedFd> {
    let fs = fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "source", source)?;
    // A read-only superblock: a read-only loop device refuses anything else.
    fsconfig_set_flag(&fs, "ro")?;
    fsconfig_create(&fs)?;
    fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
}

/// A free loop device attached read-only to `file` (util-linux `losetup`, which knows every
/// kernel's loop interface).
fn loop_attach(file: &Path) -> io::Result<PathBuf> {
    let out = losetup(&[
        "--find".as_ref(),
        "--show".as_ref(),
        "--read-only".as_ref(),
        file.as_os_str(),
    ])?;
    Ok(PathBuf::from(out.trim()))
}

fn loop_detach(dev: &Path) -> io::Result<()> {
    losetup(&["--detach".as_ref(), dev.as_os_str()]).map(drop)
}

/// Runs `losetup ARGS`; its stdout, or an error with its stderr.
fn losetup(args: &[&std::ffi::OsStr]) -> io::Result<String> {
    let out = std::process::Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("losetup: {e}")))?;
    if !out.status.success() {
        let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        return Err(io::Error::other(format!(
            "losetup {}: {}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Mounts the overlay front of one image at `mountpoint`: `meta_image` as its only lower
/// layer, `data_dir` (a dedup mount) as its data-only layer. `source` names it in mountinfo.
pub fn mount(
    meta_image: &Path,
    data_dir: &Path,
    mountpoint: &Path,
    source: &str,
) -> io::Result<()> {
    let meta = erofs_mount(meta_image)?;
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(step("fsopen overlay"))?;
    fsconfig_set_string(&fs, "source", source).map_err(step("overlay source"))?;
    // Layers by descriptor (Linux 6.15+); before that by a path to the descriptor.
    if fsconfig_set_fd(&fs, "lowerdir+", &meta).is_err() {
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&meta));
        fsconfig_set_string(&fs, "lowerdir+", path).map_err(step("overlay lowerdir+"))?;
    }
    fsconfig_set_string(&fs, "datadir+", data_dir).map_err(step("overlay datadir+"))?;
    // Data-only layers need metacopy before Linux 6.16; redirects are only followed.
    fsconfig_set_string(&fs, "metacopy", "on").map_err(step("overlay metacopy=on"))?;
    fsconfig_set_string(&fs, "redirect_dir", "follow").map_err(step("overlay redirect_dir"))?;
    fsconfig_create(&fs).map_err(step("overlay mount"))?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(step("fsmount overlay"))?;
    move_mount(
        mnt.as_fd(),
        "",
        CWD,
        mountpoint,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(step("move_mount"))?;
    Ok(())
}

/// Tells when overlay mounts have ended: the kernel closes a mount's own (unlinked) copy of its
/// metadata image when the erofs superblock under the overlay goes away, and the inode goes.
/// The inotify instance (non-blocking, so that a successor daemon can share it) and its
/// watches can be handed to a successor: [`Ends::stop`] first, so that no event is read here.
#[derive(Debug)]
pub struct Ends {
    fd: OwnedFd,
    stop: OwnedFd,
    by_wd: Mutex<HashMap<i32, u64>>,
}

impl Ends {
    /// An inotify instance with no watches.
    pub fn new() -> io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        Self::adopt(fd, Vec::new())
    }

    /// A predecessor's inotify instance with its watches (watch descriptor, mount id).
    pub fn adopt(fd: OwnedFd, watches: Vec<(i32, u64)>) -> io::Result<Self> {
        let stop = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        Ok(Self {
            fd,
            stop,
            by_wd: Mutex::new(watches.into_iter().collect()),
        })
    }

    /// The inotify instance, to hand over.
    pub fn inotify_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The watches, (watch descriptor, mount id), to hand over.
    pub fn watches(&self) -> Vec<(i32, u64)> {
        self.by_wd
            .lock()
            .unwrap()
            .iter()
            .map(|(w, m)| (*w, *m))
            .collect()
    }

    /// Reports mount `id` as ended once `meta_image`'s inode goes: unlink it after this call,
    /// the end is its last close.
    pub fn watch(&self, id: u64, meta_image: &Path) -> io::Result<()> {
        let wd = inotify::add_watch(&self.fd, meta_image, inotify::WatchFlags::DELETE_SELF)
            .map_err(io::Error::from)?;
        self.by_wd.lock().unwrap().insert(wd, id);
        Ok(())
    }

    /// Makes [`Ends::run`] return (now, or as soon as it is called).
    pub fn stop(&self) -> io::Result<()> {
        rustix::io::write(&self.stop, &1u64.to_ne_bytes())?;
        Ok(())
    }

    /// Blocks, calling `ended(id)` for each mount whose metadata image's inode went (or whose
    /// watch the kernel dropped), until [`Ends::stop`] (Ok) or a read error.
    pub fn run(&self, ended: impl Fn(u64)) -> io::Result<()> {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                PollFd::new(&self.stop, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if !fds[1].revents().is_empty() {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.stop, &mut b);
                return Ok(());
            }
            let mut reader = inotify::Reader::new(&self.fd, &mut buf);
            loop {
                let ev = match reader.next() {
                    Ok(ev) => ev,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                };
                let gone = ev
                    .events()
                    .intersects(inotify::ReadFlags::DELETE_SELF | inotify::ReadFlags::IGNORED);
                if !gone {
                    continue;
                }
                let Some(id) = self.by_wd.lock().unwrap().remove(&ev.wd()) else {
                    continue;
                };
                ended(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_release_strings_compare_by_major_then_minor() {
        assert!(kernel_at_least("6.18.0-1-amd64", (6, 15)));
        assert!(kernel_at_least("6.15", (6, 15)));
        assert!(kernel_at_least("7.0.1", (6, 15)));
        assert!(!kernel_at_least("6.14.9-arch1", (6, 15)));
        assert!(!kernel_at_least("6.8.0-45-generic", (6, 15)));
        assert!(!kernel_at_least("garbage", (6, 15)));
    }
}
