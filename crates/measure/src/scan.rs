//! Walk an image with the reader and list what [`crate::analyze`] needs: every regular file
//! once per inode with its content key (the stored fingerprint, or SHA-256 computed on the fly
//! when the image has none), and every directory.

use crate::analyze::{DirEntry, FileEntry, ImageFiles, KeySource, fuse_dir_pages};
use erofs::Image;
use erofs::format::{chunk, layout};
use erofs::inode::{FileType, Inode};
use erofs::walk::{Problem, try_walk};
use erofs_share_daemon::domain::{fingerprint_usable, sha256_of_fingerprint};
use std::collections::{HashMap, HashSet};

/// Why an image could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Read(Box<erofs::Error>),
    /// A problem the walk met, before [`scan`] names the image.
    #[error(transparent)]
    Problem(Box<Problem>),
    #[error("{image}: {path}: {}", error.detail())]
    Walk {
        image: String,
        path: String,
        error: Box<erofs::Error>,
    },
    #[error("{image}: the overlay front's metadata image: {why}")]
    Meta { image: String, why: String },
    #[error("{image}: {path} (nid {nid}): hashing the content: {error}")]
    Hash {
        image: String,
        path: String,
        nid: u64,
        error: std::io::Error,
    },
}

impl From<Problem> for ScanError {
    fn from(p: Problem) -> Self {
        ScanError::Problem(Box::new(p))
    }
}

impl From<erofs::Error> for ScanError {
    fn from(e: erofs::Error) -> Self {
        ScanError::Read(Box::new(e))
    }
}

/// Pages the overlay front caches for `image`'s metadata image when every file is read. A
/// metadata image holds no file data: every block is the superblock, shared xattrs, an inode
/// or a directory, and reading every file reads them all through the file-backed erofs
/// mount, which caches them in the metadata image's file; all but the superblock's page,
/// read when the daemon mounts (outside the reader's accounting). Each directory's blocks
/// are cached once more in the directory's own page cache, as on a kernel mount. Builds the
/// metadata image in a temporary directory, with object names like the daemon's.
/// `shared`: when the mount shares, each file's content key by nid (the stored fingerprint, or
/// the one the daemon computes for a file without: see [`scan`]); files with a key redirect to
/// the object of their content, so equal contents get equal redirects, which the builder may
/// store once as a shared xattr. Otherwise (and for files without a key) every file has an
/// object of its own.
pub fn overlay_front_pages(
    image: &Image,
    page_size: u64,
    shared: Option<&HashMap<u64, Vec<u8>>>,
) -> Result<OverlayPages, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let path = dir.path().join("meta.erofs");
    let built = erofs::build::meta::metadata_image(
        image,
        &path,
        erofs_share_daemon::front::overlay::kernel_reads(),
        &mut |i| {
            let key = match shared.and_then(|keys| keys.get(&i.nid)) {
                Some(fp) => fp.clone(),
                None => [b"own".as_slice(), &i.nid.to_le_bytes()].concat(),
            };
            Some(erofs_share_daemon::dedup::object_name(&key))
        },
    )
    .map_err(|e| e.to_string())?;
    let meta = Image::open(&path).map_err(|e| e.to_string())?;
    let mut dir_pages = 0;
    try_walk(&meta, |_, inode| {
        if inode.file_type() == FileType::Dir {
            dir_pages += crate::analyze::pages(inode.size, page_size);
        }
        Ok::<(), Problem>(())
    })
    .map_err(|e| e.to_string())?;
    Ok(OverlayPages {
        image: crate::analyze::pages(built.image_bytes, page_size).saturating_sub(1),
        dirs: dir_pages,
    })
}

/// What the overlay front caches for one image's metadata ([`overlay_front_pages`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayPages {
    /// The metadata image file's pages (inodes, xattrs, directory blocks).
    pub image: u64,
    /// The directories' own page cache: a page per directory block, as on any erofs mount.
    pub dirs: u64,
}

impl OverlayPages {
    pub fn total(self) -> u64 {
        self.image + self.dirs
    }
}

/// List the files (once per inode: hard links read one page cache) and directories of
/// `image`, in path order, and count the metadata pages a kernel mount reads on the way
/// (see [`MetaPages`]). The first problem the walk meets is an error: a prediction from a
/// partly readable image would be wrong.
pub fn scan(image: &Image, name: &str, page_size: u64) -> Result<ImageFiles, ScanError> {
    scan_with_progress(image, name, page_size, &erofs::build::NoProgress)
}

/// Scan like [`scan`], advancing `progress` by one per inode (its total is left to the caller,
/// which may scan several images into one bar).
pub fn scan_with_progress(
    image: &Image,
    name: &str,
    page_size: u64,
    progress: &dyn erofs::build::Progress,
) -> Result<ImageFiles, ScanError> {
    let mut out = ImageFiles {
        name: name.to_string(),
        ..ImageFiles::default()
    };
    let mut seen_files = HashSet::new();
    let mut keys = HashMap::new();
    let mut meta = MetaPages::new(image, page_size);
    try_walk(image, |path, inode| {
        progress.advance(1);
        meta.add(inode);
        let path = String::from_utf8_lossy(path).into_owned();
        match inode.file_type() {
            FileType::Dir => {
                out.dirs.push(DirEntry {
                    path,
                    size: inode.size,
                });
                // The listing as erofs-share serves it: every stored entry.
                let entries = image.read_dir(inode)?;
                out.fuse_dir_pages +=
                    fuse_dir_pages(entries.iter().map(|e| e.name.len()), page_size);
                Ok(())
            }
            FileType::Reg if seen_files.insert(inode.nid) => {
                let entry = file_entry(image, name, path, inode)?;
                if let Some(k) = &entry.key {
                    keys.insert(inode.nid, k.clone());
                }
                out.files.push(entry);
                Ok(())
            }
            _ => Ok(()),
        }
    })
    .map_err(|e| match e {
        ScanError::Problem(p) => ScanError::Walk {
            image: name.to_string(),
            path: String::from_utf8_lossy(&p.path).into_owned(),
            error: Box::new(p.error),
        },
        e => e,
    })?;
    out.meta_pages = meta.pages.len() as u64;
    let meta_err = |why| ScanError::Meta {
        image: name.to_string(),
        why,
    };
    out.overlay_pages = overlay_front_pages(image, page_size, None)
        .map_err(meta_err)?
        .total();
    let shared = overlay_front_pages(image, page_size, Some(&keys)).map_err(meta_err)?;
    out.overlay_pages_shared = shared.total();
    out.overlay_dir_pages = shared.dirs;
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
        // The daemon's rule in a (default) verified domain, so the prediction shares exactly
        // what it will: a usable `sha256:` value.
        let key = (fingerprint_usable(&value, image.superblock().block_size())
            && sha256_of_fingerprint(&value).is_some())
        .then_some(value);
        return Ok(FileEntry {
            path,
            size: inode.size,
            key,
            source: KeySource::Stored,
        });
    }
    let value = hash_content(image, name, &path, inode)?;
    Ok(FileEntry {
        path,
        size: inode.size,
        key: Some(value.to_vec()),
        source: KeySource::Hashed,
    })
}

fn hash_content(
    image: &Image,
    name: &str,
    path: &str,
    inode: &Inode,
) -> Result<erofs::fingerprint::Value, ScanError> {
    erofs::fingerprint::of_reader(image.content(inode)).map_err(|error| ScanError::Hash {
        image: name.to_string(),
        path: path.to_string(),
        nid: inode.nid,
        error,
    })
}

/// The image pages a kernel erofs mount caches (in the block device's page cache) when every
/// inode is looked up and every file read: the superblock, each inode with its inline xattrs,
/// the inline tail of FLAT_INLINE inodes and the chunk map of chunk-based ones. Compressed
/// inodes' extent maps are not counted (our images and the corpus are uncompressed).
#[derive(Debug)]
pub struct MetaPages {
    page_size: u64,
    block_size: u64,
    pages: HashSet<u64>,
}

impl MetaPages {
    fn new(image: &Image, page_size: u64) -> MetaPages {
        let mut pages = HashSet::new();
        pages.insert(0); // the superblock
        MetaPages {
            page_size,
            block_size: image.superblock().block_size(),
            pages,
        }
    }

    fn span(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len - 1);
        for p in start / self.page_size..=end / self.page_size {
            self.pages.insert(p);
        }
    }

    fn add(&mut self, inode: &Inode) {
        let Some(pos) = inode.image_offset() else {
            return;
        };
        let head = inode.inode_size() + inode.xattr_size();
        self.span(pos, head);
        let after = pos.saturating_add(head);
        let bs = self.block_size;
        match inode.layout {
            layout::FLAT_INLINE if inode.size > 0 => {
                let tail = inode.size - (inode.size.div_ceil(bs) - 1) * bs;
                self.span(after, tail.min(bs));
            }
            layout::CHUNK_BASED => {
                let bits = u32::from(inode.chunk_format & chunk::BLKBITS_MASK);
                let chunk_size = bs.checked_shl(bits).unwrap_or(u64::MAX);
                let chunks = inode.size.div_ceil(chunk_size);
                if inode.chunk_format & chunk::INDEXES != 0 {
                    self.span(after.next_multiple_of(8), chunks.saturating_mul(8));
                } else {
                    self.span(after, chunks.saturating_mul(4));
                }
            }
            _ => {}
        }
    }
}
