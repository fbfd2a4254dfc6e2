//! A directory source: walk it (not following symlinks, not entering excluded paths) while
//! other threads read, hash and store the regular files it finds.

use super::chunks;
use super::compress::{self, Prepared};
use super::exclude;
use super::file_data::{self, Placement};
use super::tree::{Content, Kind, Node, NodeId, Stored, Tree, encode_dev};
use super::xattrs::max_ibody_size;
use super::{BuildError, ImageFile, Options, Progress};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Read the tree under `root` and store its files' content in `img`. One thread walks the
/// tree and reserves each regular file's blocks as it finds it (a fixed order, so builds are
/// reproducible); the files are read, hashed and written by the other threads meanwhile.
pub fn read(
    root: &Path,
    opts: &Options,
    img: &ImageFile,
    progress: &dyn Progress,
) -> Result<Tree, BuildError> {
    tracing::debug!("walking {}", root.display());
    let md = std::fs::symlink_metadata(root).map_err(BuildError::io(root))?;
    if !md.is_dir() {
        return Err(BuildError::Source(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    // The image being written may sit inside the source: never include it.
    let own = img.file.metadata().map_err(BuildError::Write)?;
    let own = (own.dev(), own.ino());
    let stored: Mutex<Vec<(NodeId, Result<Stored, BuildError>)>> = Mutex::new(Vec::new());
    // Compressed builds: files are read and compressed meanwhile, and given their blocks in
    // walk order afterwards (their sizes are not known before).
    let prepared: Mutex<Vec<(NodeId, Result<Prepared, BuildError>)>> = Mutex::new(Vec::new());
    let failed = AtomicBool::new(false);
    let tree = rayon::scope(|scope| -> Result<Tree, BuildError> {
        let mut tree = Tree::new();
        tree.nodes[0] = node_of(root, &md)?;
        let mut total = 0u64;
        let mut hardlinks: HashMap<(u64, u64), NodeId> = HashMap::new();
        // (directory node, its path, its path relative to root)
        let mut stack: Vec<(NodeId, PathBuf, Vec<u8>)> = vec![(0, root.to_path_buf(), Vec::new())];
        while let Some((dir, path, rel)) = stack.pop() {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .map_err(BuildError::io(&path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(BuildError::io(&path))?;
            names.sort();
            for name in names {
                let child_path = path.join(&name);
                let mut child_rel = rel.clone();
                if !child_rel.is_empty() {
                    child_rel.push(b'/');
                }
                child_rel.extend_from_slice(name.as_bytes());
                if exclude::excluded(&opts.exclude, &child_rel) {
                    continue;
                }
                let md =
                    std::fs::symlink_metadata(&child_path).map_err(BuildError::io(&child_path))?;
                let key = (md.dev(), md.ino());
                if key == own {
                    continue;
                }
                let id = match hardlinks.get(&key) {
                    Some(&id) if !md.is_dir() => id,
                    _ => {
                        let node = node_of(&child_path, &md)?;
                        if let (Kind::File { size, .. }, Some(c)) = (&node.kind, &opts.compression)
                        {
                            let size = *size;
                            total += size;
                            let hash = opts.fingerprint.is_some() && size > 0;
                            let bs = img.block_size();
                            let max_ibody = max_ibody_size(&node.xattrs, hash);
                            let at = compress::Placement::of(c, opts.inline, bs, size, max_ibody);
                            let id = tree.nodes.len();
                            let (prepared, failed) = (&prepared, &failed);
                            let path = child_path.clone();
                            scope.spawn(move |_| {
                                if failed.load(Ordering::Relaxed) {
                                    return;
                                }
                                let r = if size > compress::SEGMENT as u64 {
                                    prepare_big(img, &path, size, c, hash, at)
                                } else {
                                    read_whole(&path, size)
                                        .and_then(|data| compress::prepare(data, c, bs, hash, at))
                                };
                                progress.advance(size);
                                failed.fetch_or(r.is_err(), Ordering::Relaxed);
                                prepared
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push((id, r));
                            });
                        } else if let Kind::File { size, .. } = node.kind {
                            total += size;
                            let job = job(img, opts, &node, size, &child_path, &md)?;
                            let id = tree.nodes.len();
                            let (stored, failed) = (&stored, &failed);
                            let path = child_path.clone();
                            scope.spawn(move |_| {
                                if failed.load(Ordering::Relaxed) {
                                    return;
                                }
                                let r = store_one(img, &job, size, &path, progress);
                                failed.fetch_or(r.is_err(), Ordering::Relaxed);
                                stored
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push((id, r));
                            });
                        }
                        let id = tree.add(node);
                        if !md.is_dir() && md.nlink() > 1 {
                            hardlinks.insert(key, id);
                        }
                        id
                    }
                };
                tree.entries_mut(dir)
                    .expect("stack holds directories")
                    .insert(name.as_bytes().to_vec(), id);
                if md.is_dir() {
                    stack.push((id, child_path, child_rel));
                }
            }
        }
        progress.set_total(total);
        tracing::debug!(inodes = tree.nodes.len(), "walked {}", root.display());
        Ok(tree)
    });
    let mut tree = tree?;
    for (id, r) in stored.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let s = r?;
        if let Kind::File { content, .. } = &mut tree.nodes[id].kind {
            *content = Content::Stored(s);
        }
    }
    let mut prepared = prepared.into_inner().unwrap_or_else(|p| p.into_inner());
    prepared.sort_by_key(|(id, _)| *id);
    if let Some(c) = &opts.compression {
        for (id, r) in prepared {
            let s = compress::store(img, r?, c)?;
            if let Kind::File { content, .. } = &mut tree.nodes[id].kind {
                *content = Content::Stored(s);
            }
        }
    }
    tracing::debug!("stored file contents");
    Ok(tree)
}

/// Compress a big file without holding it (see [`compress::prepare_stream`]); it must
/// still have the size the walk saw.
fn prepare_big(
    img: &ImageFile,
    path: &Path,
    size: u64,
    c: &super::Compression,
    hash: bool,
    at: compress::Placement,
) -> Result<Prepared, BuildError> {
    let err = |e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let origin = compress::Origin::Path(path.to_path_buf());
    let p = compress::prepare_stream(img, &mut f, size, origin, c, hash, at, &err)?;
    expect_end(&mut f, &err)?;
    Ok(p)
}

/// A file's whole content; it must still have the size the walk saw.
fn read_whole(path: &Path, size: u64) -> Result<Vec<u8>, BuildError> {
    let err = |e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    // Only files of at most one compression segment come here.
    let mut data = vec![0; size as usize];
    file_data::read_exact(&mut f, &mut data, &err)?;
    expect_end(&mut f, &err)?;
    Ok(data)
}

/// Fails when `f` has more to read: the file grew after the walk measured it.
fn expect_end(
    f: &mut std::fs::File,
    err: &dyn Fn(std::io::Error) -> BuildError,
) -> Result<(), BuildError> {
    let mut extra = [0u8; 1];
    if f.read(&mut extra).map_err(err)? != 0 {
        return Err(err(std::io::Error::other("file grew while it was read")));
    }
    Ok(())
}

/// How one file will be stored: its blocks, reserved now, and whether it is hashed.
struct Job {
    at: At,
    hash: bool,
}

/// Where a file's content goes.
enum At {
    /// Flat: consecutive blocks and maybe an inline tail.
    Flat(Placement),
    /// Sparse: chunk-based, holes not stored.
    Chunks(chunks::Placement),
}

fn job(
    img: &ImageFile,
    opts: &Options,
    node: &Node,
    size: u64,
    path: &Path,
    md: &std::fs::Metadata,
) -> Result<Job, BuildError> {
    let hash = opts.fingerprint.is_some() && size > 0;
    // Fewer bytes allocated than the size: the file may have holes worth not storing.
    if md.blocks().saturating_mul(512) < size {
        let f = std::fs::File::open(path).map_err(BuildError::io(path))?;
        let ranges = chunks::data_ranges(&f, size).map_err(BuildError::io(path))?;
        if let Some(plan) = chunks::plan(&ranges, size, img.blkszbits) {
            return Ok(Job {
                at: At::Chunks(chunks::place(img, size, &plan)),
                hash,
            });
        }
    }
    let inline = file_data::can_inline(
        opts.inline,
        img.block_size(),
        size,
        max_ibody_size(&node.xattrs, hash),
    );
    Ok(Job {
        at: At::Flat(file_data::place(img, size, inline)),
        hash,
    })
}

/// Read, hash and write one file; it must still have the size the walk saw.
fn store_one(
    img: &ImageFile,
    job: &Job,
    size: u64,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Stored, BuildError> {
    let err = |e: std::io::Error| BuildError::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    match &job.at {
        At::Flat(at) => {
            let s = file_data::store(img, at, size, &mut f, job.hash, progress, &err)?;
            expect_end(&mut f, &err)?;
            Ok(s)
        }
        At::Chunks(at) => chunks::store(img, at, size, &f, job.hash, progress, &err),
    }
}

fn node_of(path: &Path, md: &std::fs::Metadata) -> Result<Node, BuildError> {
    let ft = md.file_type();
    let rdev = || encode_dev(rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
    let kind = if ft.is_dir() {
        Kind::Dir(BTreeMap::new())
    } else if ft.is_file() {
        Kind::File {
            size: md.len(),
            content: Content::Pending,
        }
    } else if ft.is_symlink() {
        let t = std::fs::read_link(path).map_err(BuildError::io(path))?;
        Kind::Symlink(t.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        Kind::CharDev(rdev())
    } else if ft.is_block_device() {
        Kind::BlockDev(rdev())
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let mut n = Node::new(kind, (md.mode() & 0o7777) as u16);
    n.uid = md.uid();
    n.gid = md.gid();
    n.mtime = md.mtime();
    n.mtime_nsec = md.mtime_nsec() as u32;
    n.xattrs = xattrs_of(path).map_err(BuildError::io(path))?;
    super::xattrs::validate(&n.xattrs)
        .map_err(|m| BuildError::Source(format!("{}: {m}", path.display())))?;
    Ok(n)
}

/// Every xattr of `path`, not following symlinks (the xattr crate retries on ERANGE).
fn xattrs_of(path: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for name in names {
        // None: removed since it was listed.
        if let Some(value) = xattr::get(path, &name)? {
            out.insert(name.into_vec(), value);
        }
    }
    Ok(out)
}
