//! The mount table as the daemon reads it (/proc/self/mountinfo, unescaped), which of its
//! entries are ours, and lazy unmounts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Lazy unmount (`umount -l`): the mount leaves the namespace now, open files keep working.
pub fn detach(path: &Path) -> io::Result<()> {
    if let Err(e) = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        if e != rustix::io::Errno::PERM {
            return Err(e.into());
        }
        // An unprivileged daemon's mounts go through the setuid helper.
        let out = std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(path)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "fusermount3 -u -z {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// FUSE and overlay mountpoints in /proc/self/mountinfo whose source starts with
/// `fsname_prefix`.
pub fn our_mounts(fsname_prefix: &str) -> Vec<PathBuf> {
    our_mounts_with(fsname_prefix)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// [`our_mounts`] with each mount's super options (an overlay's layers are there).
pub(crate) fn our_mounts_with(fsname_prefix: &str) -> Vec<(PathBuf, String)> {
    mount_table()
        .into_iter()
        .filter(|m| {
            (m.fstype.starts_with("fuse") || m.fstype == "overlay")
                && m.source.starts_with(fsname_prefix)
        })
        .map(|m| (m.mountpoint, m.options))
        .collect()
}

/// One line of /proc/self/mountinfo, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`fuse.…`, `overlay`, `erofs`, …).
    pub fstype: String,
    /// Mount source ("fsname").
    pub source: String,
    /// Super options.
    pub options: String,
}

/// The calling process's mounts, in /proc/self/mountinfo order (empty if unreadable).
pub fn mount_table() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse_mountinfo(&info))
        .unwrap_or_default()
}

/// Every mountpoint of the calling process (tests check what is left mounted with it).
pub fn mountpoints() -> Vec<PathBuf> {
    mount_table().into_iter().map(|m| m.mountpoint).collect()
}

fn parse_mountinfo(info: &str) -> Vec<MountEntry> {
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut fields = right.split(' ');
            let fstype = fields.next()?.to_string();
            let source = unescape_mountinfo(fields.next()?);
            let options = unescape_mountinfo(fields.next().unwrap_or(""));
            let mountpoint = PathBuf::from(unescape_mountinfo(left.split(' ').nth(4)?));
            Some(MountEntry {
                mountpoint,
                fstype,
                source,
                options,
            })
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (three octal digits).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when the FUSE mount at `path` has lost its daemon. Looks up a name that cannot exist:
/// the root's attributes are cached for long, a failed lookup is not.
pub fn is_dead(path: &Path) -> bool {
    fs::symlink_metadata(path.join(".erofs-share-liveness-probe"))
        .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// True when `path` is a FUSE or overlay mountpoint whose source starts with `fsname_prefix`.
pub fn is_our_mount(path: &Path, fsname_prefix: &str) -> bool {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    our_mounts(fsname_prefix)
        .iter()
        .any(|m| m == path || *m == canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let info = "36 35 98:0 / /mnt/a\\040b\\134c rw,noatime master:1 - fuse.erofs-share \
                    erofs-share:/img\\040x ro,user_id=0\n\
                    37 35 98:0 / /plain rw - overlay overlay lowerdir=/l\n";
        let m = parse_mountinfo(info);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, Path::new("/mnt/a b\\c"));
        assert_eq!(m[0].source, "erofs-share:/img x");
        assert_eq!(m[0].fstype, "fuse.erofs-share");
        assert_eq!(m[0].options, "ro,user_id=0");
        assert_eq!(m[1].mountpoint, Path::new("/plain"));
    }
}
