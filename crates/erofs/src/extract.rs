//! Restoring an image's tree into a directory: contents, modes (setuid, sticky …), owners,
//! nanosecond mtimes, the xattrs the kernel lists (ACLs and `trusted.*` included),
//! symlinks, hardlinks, devices, fifos and sockets. Nothing is ever written outside the
//! destination: every name is checked, and directories get their final mode and mtime
//! only after their children are in place.

use crate::data::{self, Phys};
use crate::error::Error;
use crate::image::Image;
use crate::inode::{FileType, Inode};
use crate::walk::{Problem, try_walk};
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What went wrong while extracting.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Image(#[from] Error),
    /// A problem met while walking the tree: names the image, the path and what is wrong.
    #[error(transparent)]
    Walk(Problem),
    #[error("{path}: {op}: {cause}")]
    Io {
        path: PathBuf,
        op: &'static str,
        cause: io::Error,
    },
    #[error("{0}: destination exists and is not an empty directory")]
    NotEmpty(PathBuf),
    #[error("{path}: refusing to extract unsafe name {name:?}")]
    UnsafeName { path: String, name: String },
}

/// Counts of what was restored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub dirs: u64,
    pub files: u64,
    pub hardlinks: u64,
    pub symlinks: u64,
    pub specials: u64,
    pub bytes: u64,
    pub xattrs: u64,
}

impl From<Problem> for ExtractError {
    fn from(p: Problem) -> Self {
        ExtractError::Walk(p)
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |cause| ExtractError::Io {
        path: path.to_path_buf(),
        op,
        cause,
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Owner, xattrs, mode and mtime, in the order that keeps each one: chown first (it clears
/// setuid bits and file capabilities), then xattrs (an ACL rewrites group bits), then the
/// mode, then the mtime last.
fn apply_metadata(
    img: &Image,
    inode: &Inode,
    path: &Path,
    stats: &mut ExtractStats,
) -> Result<(), ExtractError> {
    let root = is_root();
    if root {
        std::os::unix::fs::lchown(path, Some(inode.uid), Some(inode.gid))
            .map_err(io_err(path, "lchown"))?;
    }
    for x in img.listed_xattrs(inode)? {
        if !root && x.name.starts_with(b"trusted.") {
            continue;
        }
        if x.name.contains(&0) {
            return Err(ExtractError::UnsafeName {
                path: path.display().to_string(),
                name: String::from_utf8_lossy(&x.name).into_owned(),
            });
        }
        // lsetxattr: the xattr crate never follows symlinks.
        xattr::set(path, std::ffi::OsStr::from_bytes(&x.name), &x.value)
            .map_err(io_err(path, "lsetxattr"))?;
        stats.xattrs += 1;
    }
    if inode.file_type() != FileType::Symlink {
        std::fs::set_permissions(
            path,
            std::os::unix::fs::PermissionsExt::from_mode(inode.permissions() as u32),
        )
        .map_err(io_err(path, "chmod"))?;
    }
    set_mtime(inode, path)
}

fn set_mtime(inode: &Inode, path: &Path) -> Result<(), ExtractError> {
    let t = rustix::fs::Timespec {
        tv_sec: inode.mtime,
        tv_nsec: inode.mtime_nsec as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(path, "utimensat")(e.into()))
}

/// Copy a regular file's content, leaving holes sparse.
fn write_content(img: &Image, inode: &Inode, path: &Path) -> Result<u64, ExtractError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "create"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < inode.size {
        // Skip holes of uncompressed files; compressed ones are simply read.
        if !inode.is_compressed() {
            let e = data::map(img, inode, off)?;
            if e.phys == Phys::Hole {
                off = e.logical + e.len;
                continue;
            }
        }
        let n = (buf.len() as u64).min(inode.size - off) as usize;
        let got = img.read_at(inode, off, &mut buf[..n])?;
        if got == 0 {
            break;
        }
        f.write_all_at(&buf[..got], off)
            .map_err(io_err(path, "write"))?;
        off += got as u64;
    }
    f.set_len(inode.size).map_err(io_err(path, "truncate"))?;
    let mut f = f;
    f.flush().map_err(io_err(path, "write"))?;
    Ok(inode.size)
}

fn mknod(inode: &Inode, path: &Path) -> Result<(), ExtractError> {
    use rustix::fs::FileType as Ft;
    let kind = match inode.file_type() {
        FileType::CharDev => Ft::CharacterDevice,
        FileType::BlockDev => Ft::BlockDevice,
        FileType::Fifo => Ft::Fifo,
        _ => Ft::Socket,
    };
    let dev = rustix::fs::makedev(inode.rdev_major(), inode.rdev_minor());
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(0o600),
        dev,
    )
    .map_err(|e| io_err(path, "mknod")(e.into()))
}

/// Prepare `dest`: create it if missing, accept it if it is an empty directory.
fn prepare(dest: &Path) -> Result<(), ExtractError> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(io_err(dest, "mkdir"))
        }
        Err(e) => Err(io_err(dest, "stat")(e)),
        Ok(md) if md.is_dir() => {
            let mut it = std::fs::read_dir(dest).map_err(io_err(dest, "read_dir"))?;
            if it.next().is_some() {
                return Err(ExtractError::NotEmpty(dest.to_path_buf()));
            }
            Ok(())
        }
        Ok(_) => Err(ExtractError::NotEmpty(dest.to_path_buf())),
    }
}

/// The destination of image path `path` ("/" or "/a/b"), refusing anything that could leave
/// `dest`.
fn target(dest: &Path, path: &[u8]) -> Result<PathBuf, ExtractError> {
    let mut out = dest.to_path_buf();
    for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if comp == b"." || comp == b".." || comp.contains(&0) {
            return Err(ExtractError::UnsafeName {
                path: String::from_utf8_lossy(path).into_owned(),
                name: String::from_utf8_lossy(comp).into_owned(),
            });
        }
        out.push(std::ffi::OsStr::from_bytes(comp));
    }
    Ok(out)
}

/// Restore the whole tree of `img` into `dest`.
pub fn extract(img: &Image, dest: &Path) -> Result<ExtractStats, ExtractError> {
    extract_with_progress(img, dest, &crate::build::NoProgress)
}

/// Restore like [`extract`], advancing `progress` by one per inode (of the superblock's count).
pub fn extract_with_progress(
    img: &Image,
    dest: &Path,
    progress: &dyn crate::build::Progress,
) -> Result<ExtractStats, ExtractError> {
    prepare(dest)?;
    progress.set_total(img.superblock().inos);
    let mut stats = ExtractStats::default();
    // nid → first path, for hardlinks.
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    // Directories get their metadata after their children, deepest first.
    let mut dirs: Vec<(PathBuf, Inode)> = Vec::new();
    try_walk(img, |path, inode| {
        progress.advance(1);
        restore(img, dest, path, inode, &mut links, &mut dirs, &mut stats)
    })?;
    for (path, inode) in dirs.iter().rev() {
        apply_metadata(img, inode, path, &mut stats)?;
    }
    Ok(stats)
}

fn restore(
    img: &Image,
    dest: &Path,
    path: &[u8],
    inode: &Inode,
    links: &mut HashMap<u64, PathBuf>,
    dirs: &mut Vec<(PathBuf, Inode)>,
    stats: &mut ExtractStats,
) -> Result<(), ExtractError> {
    let to = target(dest, path)?;
    let ft = inode.file_type();
    if ft != FileType::Dir && inode.nlink > 1 {
        if let Some(first) = links.get(&inode.nid) {
            std::fs::hard_link(first, &to).map_err(io_err(&to, "link"))?;
            stats.hardlinks += 1;
            return Ok(());
        }
        links.insert(inode.nid, to.clone());
    }
    match ft {
        FileType::Dir => {
            if path != b"/" {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&to)
                    .map_err(io_err(&to, "mkdir"))?;
            }
            stats.dirs += 1;
            dirs.push((to, inode.clone()));
            return Ok(());
        }
        FileType::Reg => {
            stats.bytes += write_content(img, inode, &to)?;
            stats.files += 1;
        }
        FileType::Symlink => {
            let t = img.read_link(inode)?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), &to)
                .map_err(io_err(&to, "symlink"))?;
            stats.symlinks += 1;
        }
        _ => {
            mknod(inode, &to)?;
            stats.specials += 1;
        }
    }
    apply_metadata(img, inode, &to, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_stay_inside_the_destination() {
        let d = Path::new("/dest");
        assert_eq!(target(d, b"/").unwrap(), PathBuf::from("/dest"));
        assert_eq!(target(d, b"/a/b").unwrap(), PathBuf::from("/dest/a/b"));
        for bad in [&b"/a/../../etc"[..], b"/..", b"/a/./b", b"/a\0b"] {
            assert!(
                matches!(target(d, bad), Err(ExtractError::UnsafeName { .. })),
                "{bad:?}"
            );
        }
    }
}
