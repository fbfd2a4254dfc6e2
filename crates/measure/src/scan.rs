//! Walk an image with the reader and list what [`crate::analyze`] needs: every regular file
//! once per inode with its content key (the stored fingerprint, or SHA-256 computed on the fly
//! when the image has none), and every directory.

use crate::analyze::{DirEntry, FileEntry, ImageFiles, KeySource, usable_fingerprint};
use erofs::Image;
use erofs::inode::{FileType, Inode};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Why an image could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Read(#[from] erofs::Error),
    #[error("{image}: directory {path} (nid {nid}) is reached twice: the tree has a cycle")]
    Cycle { image: String, path: String, nid: u64 },
    #[error("{image}: {path} (nid {nid}): read {got} bytes of {size}")]
    ShortRead {
        image: String,
        path: String,
        nid: u64,
        got: u64,
        size: u64,
    },
}

/// List the files and directories of `image`.
pub fn scan(image: &Image, name: &str) -> Result<ImageFiles, ScanError> {
    let mut out = ImageFiles {
        name: name.to_string(),
        ..ImageFiles::default()
    };
    let root = image.inode(image.root_nid())?;
    let mut seen_dirs = HashSet::new();
    let mut seen_files = HashSet::new();
    seen_dirs.insert(root.nid);
    // Depth-first with an explicit stack: a hostile image cannot overflow ours.
    let mut stack = vec![("/".to_string(), root)];
    while let Some((path, dir)) = stack.pop() {
        out.dirs.push(DirEntry {
            path: path.clone(),
            size: dir.size,
        });
        let mut entries = image.read_dir(&dir)?;
        entries.retain(|e| e.name != b"." && e.name != b"..");
        // Reverse so the stack pops children in directory (name) order.
        for e in entries.into_iter().rev() {
            let child_path = if path == "/" {
                format!("/{}", String::from_utf8_lossy(&e.name))
            } else {
                format!("{path}/{}", String::from_utf8_lossy(&e.name))
            };
            match e.file_type {
                FileType::Dir => {
                    if !seen_dirs.insert(e.nid) {
                        return Err(ScanError::Cycle {
                            image: name.to_string(),
                            path: child_path,
                            nid: e.nid,
                        });
                    }
                    stack.push((child_path, image.inode(e.nid)?));
                }
                FileType::Reg => {
                    if seen_files.insert(e.nid) {
                        let inode = image.inode(e.nid)?;
                        out.files.push(file_entry(image, name, child_path, &inode)?);
                    }
                }
                _ => {}
            }
        }
    }
    // Stable order for reports: by path.
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn file_entry(
    image: &Image,
    name: &str,
    path: String,
    inode: &Inode,
) -> Result<FileEntry, ScanError> {
    if inode.size == 0 {
        return Ok(FileEntry {
            path,
            size: 0,
            key: None,
            source: KeySource::Stored,
        });
    }
    if let Some(value) = image.fingerprint(inode)? {
        let key = usable_fingerprint(&value).then_some(value);
        return Ok(FileEntry {
            path,
            size: inode.size,
            key,
            source: KeySource::Stored,
        });
    }
    let digest = hash_content(image, name, &path, inode)?;
    Ok(FileEntry {
        path,
        size: inode.size,
        key: Some(erofs::fingerprint::value_of_digest(&digest).to_vec()),
        source: KeySource::Hashed,
    })
}

fn hash_content(
    image: &Image,
    name: &str,
    path: &str,
    inode: &Inode,
) -> Result<[u8; 32], ScanError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < inode.size {
        let want = (inode.size - off).min(buf.len() as u64) as usize;
        let n = image.read_at(inode, off, &mut buf[..want])?;
        if n == 0 {
            return Err(ScanError::ShortRead {
                image: name.to_string(),
                path: path.to_string(),
                nid: inode.nid,
                got: off,
                size: inode.size,
            });
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}
