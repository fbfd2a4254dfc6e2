//! Prediction from images alone: how much page cache reading every file of a set of images
//! needs without sharing (one copy per image and inode) and with sharing in one domain (one
//! copy per distinct content), and where the difference comes from.
//!
//! What the kernel caches when every file is read, per mount type (each term was checked
//! against a memory cgroup's page cache growth, see the tests and `page_cache`):
//! - file data: `ceil(size / page)` pages per inode (hard links read one inode); with
//!   sharing, per distinct (size, fingerprint) across all images of the domain, also inside
//!   one image. Files with an unusable fingerprint are never shared, as in the daemon.
//! - erofs-share overlay-front mounts add their metadata image: the pages of its file that
//!   the erofs mount reads (metadata and directory blocks: file-backed mounts read through
//!   the file's page cache) and each directory's blocks in its own page cache; see
//!   [`crate::scan::overlay_front_pages`].
//! - erofs-share FUSE-front mounts add each directory's listing, cached by FUSE
//!   (`FOPEN_CACHE_DIR`) as `fuse_dirent` records packed into pages; metadata itself is
//!   served from user space and the image file is read with O_DIRECT.
//! - kernel erofs mounts add each directory's blocks (in its own page cache) and the image
//!   pages holding the superblock, the inodes, their inline tails and chunk maps (in the
//!   block device's page cache); see [`crate::scan::MetaPages`].

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// How many entries each list (contributors, directories) keeps by default.
pub const TOP: usize = 10;

/// Where a file's content key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The image's fingerprint xattr.
    Stored,
    /// Computed by reading the file (the image has no fingerprint for it).
    Hashed,
}

/// One regular file (one inode: hard links are listed once) of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path from the image root, with a leading `/`.
    pub path: String,
    /// Content size in bytes.
    pub size: u64,
    /// Content key (fingerprint value); `None` when the file cannot be shared (empty file, or
    /// a stored fingerprint the daemon would refuse).
    pub key: Option<Vec<u8>>,
    /// Where the key came from.
    pub source: KeySource,
}

/// A directory of an image (for the metadata figure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Path from the image root.
    pub path: String,
    /// Directory size in bytes.
    pub size: u64,
}

/// What a scan of one image found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFiles {
    /// Name shown in reports (usually the image path).
    pub name: String,
    /// Regular files, one per inode.
    pub files: Vec<FileEntry>,
    /// Directories.
    pub dirs: Vec<DirEntry>,
    /// Image pages a kernel mount caches for metadata ([`crate::scan::MetaPages`]).
    pub meta_pages: u64,
    /// Pages FUSE caches for the listings of every directory ([`fuse_dir_pages`]).
    pub fuse_dir_pages: u64,
    /// Pages the overlay front caches for the image's metadata image, mounted without and
    /// with sharing ([`crate::scan::overlay_front_pages`]).
    pub overlay_pages: u64,
    pub overlay_pages_shared: u64,
    /// Of those, the metadata image's directories' own page cache (the same either way).
    pub overlay_dir_pages: u64,
}

/// Size of one `struct fuse_dirent` record in FUSE's directory cache: 24 header bytes and
/// the name, 8-byte aligned.
pub fn fuse_dirent_size(name_len: usize) -> u64 {
    ((24 + name_len as u64) + 7) & !7
}

/// Pages FUSE's directory cache uses for a listing with these name lengths: records are
/// packed into pages and never straddle two (as `fuse_add_dirent_to_cache` does).
pub fn fuse_dir_pages(name_lens: impl IntoIterator<Item = usize>, page_size: u64) -> u64 {
    let mut size = 0u64;
    for len in name_lens {
        let rec = fuse_dirent_size(len);
        let in_page = size % page_size;
        if in_page + rec > page_size {
            size += page_size - in_page;
        }
        size += rec;
    }
    size.div_ceil(page_size)
}

/// Pages needed to cache `size` bytes.
pub fn pages(size: u64, page_size: u64) -> u64 {
    size.div_ceil(page_size)
}

/// Per-image figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    pub name: String,
    /// Regular files (inodes).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes of files whose content also appears in another image.
    pub shared_bytes: u64,
    /// Files whose key was stored in the image / computed here.
    pub fingerprinted_files: u64,
    pub hashed_files: u64,
    /// File data pages to read every file of this image on its own.
    pub pages: u64,
    /// Directories, and their listings' pages in FUSE's directory cache (erofs-share).
    pub dirs: u64,
    pub fuse_dir_pages: u64,
    /// Directory block pages and metadata pages a kernel erofs mount caches.
    pub dir_pages: u64,
    pub meta_pages: u64,
    /// Pages of the metadata image the overlay front caches, without and with sharing.
    pub overlay_pages: u64,
    pub overlay_pages_shared: u64,
    /// Of those, the directories' own page cache: a page per directory block per mount.
    pub overlay_dir_pages: u64,
}

/// A content shared by several files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedContributor {
    /// One path holding it (the first in image order).
    pub path: String,
    pub size: u64,
    /// Files (across all images) holding it.
    pub copies: u64,
    /// Images holding it.
    pub images: u64,
    /// Pages sharing saves: (copies − 1) × pages.
    pub saved_pages: u64,
}

/// A file whose content no other file has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsharedContributor {
    pub image: String,
    pub path: String,
    pub size: u64,
    pub pages: u64,
}

/// Figures for one top-level directory, over all images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirSummary {
    /// `/usr`, `/etc`, …; `/` for files directly under the root.
    pub dir: String,
    pub files: u64,
    pub bytes: u64,
    pub pages_without: u64,
    /// Each distinct content counted once, in the directory where it is first met.
    pub pages_with: u64,
}

/// The whole prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub page_size: u64,
    pub images: Vec<ImageReport>,
    /// Page cache to read every file of every image through erofs-share (the overlay front)
    /// without sharing (`--no-share`): file pages and the metadata images' pages.
    pub pages_without: u64,
    /// … with every image in one sharing domain.
    pub pages_with: u64,
    /// The same through the FUSE front: file pages and FUSE's directory listings.
    pub fuse_pages_without: u64,
    pub fuse_pages_with: u64,
    /// 1 − with / without (0 when nothing is read).
    pub reduction: f64,
    /// File data alone, without and with sharing (the latter is the ideal: each distinct
    /// content once).
    pub file_pages_without: u64,
    pub file_pages_with: u64,
    pub bytes_without: u64,
    pub bytes_with: u64,
    /// Page cache kernel erofs mounts (one per image, no sharing) need to read every file:
    /// file pages, directory pages and metadata pages.
    pub kernel_pages: u64,
    pub top_shared: Vec<SharedContributor>,
    pub top_unshared: Vec<UnsharedContributor>,
    /// The top-level directories with the most file pages (at most `top` of them).
    pub by_dir: Vec<DirSummary>,
    /// Directories left out of `by_dir`.
    pub dirs_left_out: usize,
}

/// Where the page cache of one domain on the overlay front goes, in pages: what sharing
/// cannot go below (one copy of each distinct content), what every erofs mount of a tree pays
/// (a page per directory block), and the metadata images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OverlayParts {
    pub distinct_content: u64,
    pub directories: u64,
    pub metadata_images: u64,
}

impl Analysis {
    /// [`Analysis::pages_with`], split into its parts.
    pub fn overlay_parts(&self) -> OverlayParts {
        let directories: u64 = self.images.iter().map(|i| i.overlay_dir_pages).sum();
        OverlayParts {
            distinct_content: self.file_pages_with,
            directories,
            metadata_images: self.pages_with - self.file_pages_with - directories,
        }
    }
}

/// Everything known about one distinct content.
#[derive(Debug)]
struct Content {
    first_path: String,
    first_dir: String,
    size: u64,
    copies: u64,
    images: Vec<usize>,
}

fn top_dir(path: &str) -> String {
    let rest = path.trim_start_matches('/');
    match rest.split_once('/') {
        Some((first, _)) => format!("/{first}"),
        None => "/".to_string(),
    }
}

/// Predict the page cache for reading every file of `images`, `page_size` bytes per page.
pub fn analyze(images: &[ImageFiles], page_size: u64) -> Analysis {
    analyze_top(images, page_size, TOP)
}

/// [`analyze`], keeping `top` entries in each list (contributors and directories).
pub fn analyze_top(images: &[ImageFiles], page_size: u64, top: usize) -> Analysis {
    assert!(page_size > 0, "page size must be positive");
    // Distinct contents by (size, key): the daemon shares only equal keys of equal size.
    let mut contents: HashMap<(u64, &[u8]), Content> = HashMap::new();
    for (i, img) in images.iter().enumerate() {
        for f in &img.files {
            let Some(key) = f.key.as_deref() else {
                continue;
            };
            let c = contents.entry((f.size, key)).or_insert_with(|| Content {
                first_path: f.path.clone(),
                first_dir: top_dir(&f.path),
                size: f.size,
                copies: 0,
                images: Vec::new(),
            });
            c.copies += 1;
            if c.images.last() != Some(&i) {
                c.images.push(i);
            }
        }
    }

    let mut reports: Vec<ImageReport> = Vec::with_capacity(images.len());
    let mut by_dir: BTreeMap<String, DirSummary> = BTreeMap::new();
    let mut unshared = Vec::new();
    let (mut pages_without, mut bytes_without) = (0u64, 0u64);
    let (mut pages_unkeyed, mut bytes_unkeyed) = (0u64, 0u64);
    for (i, img) in images.iter().enumerate() {
        let mut r = ImageReport {
            name: img.name.clone(),
            files: 0,
            bytes: 0,
            shared_bytes: 0,
            fingerprinted_files: 0,
            hashed_files: 0,
            pages: 0,
            dirs: img.dirs.len() as u64,
            dir_pages: img.dirs.iter().map(|d| pages(d.size, page_size)).sum(),
            meta_pages: img.meta_pages,
            fuse_dir_pages: img.fuse_dir_pages,
            overlay_pages: img.overlay_pages,
            overlay_pages_shared: img.overlay_pages_shared,
            overlay_dir_pages: img.overlay_dir_pages,
        };
        for f in &img.files {
            let p = pages(f.size, page_size);
            r.files += 1;
            r.bytes += f.size;
            r.pages += p;
            match f.source {
                KeySource::Stored if f.key.is_some() => r.fingerprinted_files += 1,
                KeySource::Hashed => r.hashed_files += 1,
                KeySource::Stored => {}
            }
            let d = by_dir
                .entry(top_dir(&f.path))
                .or_insert_with(|| DirSummary {
                    dir: top_dir(&f.path),
                    files: 0,
                    bytes: 0,
                    pages_without: 0,
                    pages_with: 0,
                });
            d.files += 1;
            d.bytes += f.size;
            d.pages_without += p;
            let alone = match f.key.as_deref() {
                None => {
                    // Never shared: one copy per inode.
                    d.pages_with += p;
                    pages_unkeyed += p;
                    bytes_unkeyed += f.size;
                    true
                }
                Some(key) => {
                    let c = &contents[&(f.size, key)];
                    if c.images.iter().any(|&j| j != i) {
                        r.shared_bytes += f.size;
                    }
                    c.copies == 1
                }
            };
            if alone && p > 0 {
                unshared.push(UnsharedContributor {
                    image: img.name.clone(),
                    path: f.path.clone(),
                    size: f.size,
                    pages: p,
                });
            }
        }
        pages_without += r.pages;
        bytes_without += r.bytes;
        reports.push(r);
    }

    let (mut pages_with, mut bytes_with) = (pages_unkeyed, bytes_unkeyed);
    let mut shared = Vec::new();
    for c in contents.values() {
        let p = pages(c.size, page_size);
        pages_with += p;
        bytes_with += c.size;
        if let Some(d) = by_dir.get_mut(&c.first_dir) {
            d.pages_with += p;
        }
        if c.copies > 1 && p > 0 {
            shared.push(SharedContributor {
                path: c.first_path.clone(),
                size: c.size,
                copies: c.copies,
                images: c.images.len() as u64,
                saved_pages: (c.copies - 1) * p,
            });
        }
    }
    shared.sort_by(|a, b| {
        b.saved_pages
            .cmp(&a.saved_pages)
            .then_with(|| a.path.cmp(&b.path))
    });
    shared.truncate(top);
    unshared.sort_by(|a, b| {
        b.pages
            .cmp(&a.pages)
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.image.cmp(&b.image))
    });
    unshared.truncate(top);
    let (file_pages_without, file_pages_with) = (pages_without, pages_with);
    let fuse_dirs: u64 = reports.iter().map(|r| r.fuse_dir_pages).sum();
    let (fuse_pages_without, fuse_pages_with) = (pages_without + fuse_dirs, pages_with + fuse_dirs);
    let metas: u64 = reports.iter().map(|r| r.overlay_pages).sum();
    let metas_shared: u64 = reports.iter().map(|r| r.overlay_pages_shared).sum();
    let (pages_without, pages_with) = (pages_without + metas, pages_with + metas_shared);
    let reduction = if pages_without == 0 {
        0.0
    } else {
        1.0 - pages_with as f64 / pages_without as f64
    };
    let kernel_pages = reports
        .iter()
        .map(|r| r.pages + r.dir_pages + r.meta_pages)
        .sum();
    let mut by_dir: Vec<DirSummary> = by_dir.into_values().collect();
    by_dir.sort_by(|a, b| {
        b.pages_without
            .cmp(&a.pages_without)
            .then_with(|| a.dir.cmp(&b.dir))
    });
    let dirs_left_out = by_dir.len().saturating_sub(top);
    by_dir.truncate(top);
    Analysis {
        page_size,
        images: reports,
        pages_without,
        pages_with,
        fuse_pages_without,
        fuse_pages_with,
        file_pages_without,
        file_pages_with,
        bytes_without,
        bytes_with,
        reduction,
        kernel_pages,
        top_shared: shared,
        top_unshared: unshared,
        by_dir,
        dirs_left_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64, key: Option<&[u8]>) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            key: key.map(<[u8]>::to_vec),
            source: KeySource::Stored,
        }
    }

    #[test]
    fn counts_pages_per_inode_without_and_per_content_with_sharing() {
        let a = ImageFiles {
            name: "a".into(),
            files: vec![
                file("/usr/lib/libc.so", 10_000, Some(b"c")), // 3 pages, in both
                file("/usr/bin/app", 4096, Some(b"a1")),      // 1 page, only here
                file("/etc/dup1", 1, Some(b"d")),             // same content twice in a
                file("/etc/dup2", 1, Some(b"d")),
                file("/empty", 0, None),
            ],
            dirs: vec![DirEntry {
                path: "/".into(),
                size: 5000,
            }],
            meta_pages: 7,
            fuse_dir_pages: 3,
            overlay_pages: 5,
            overlay_pages_shared: 5,
            overlay_dir_pages: 2,
        };
        let b = ImageFiles {
            name: "b".into(),
            files: vec![
                file("/usr/lib/libc.so", 10_000, Some(b"c")),
                file("/usr/bin/app", 4097, Some(b"a2")), // 2 pages
                file("/etc/nofp", 100, None),            // 1 page, never shared
                file("/etc/samekey", 5, Some(b"c")),     // same key, other size: not shared
            ],
            dirs: vec![],
            meta_pages: 1,
            fuse_dir_pages: 1,
            overlay_pages: 2,
            overlay_pages_shared: 1,
            overlay_dir_pages: 0,
        };
        let r = analyze(&[a, b], 4096);
        assert_eq!(r.images[0].pages, 3 + 1 + 1 + 1);
        assert_eq!(r.images[1].pages, 3 + 2 + 1 + 1);
        assert_eq!(r.file_pages_without, 13);
        // libc 3, a1 1, d 1, a2 2, nofp 1, samekey 1.
        assert_eq!(r.file_pages_with, 9);
        // Metadata images (overlay front) and directory listings (FUSE front) are per mount,
        // shared or not.
        assert_eq!((r.pages_without, r.pages_with), (13 + 7, 9 + 6));
        assert_eq!((r.fuse_pages_without, r.fuse_pages_with), (13 + 4, 9 + 4));
        assert_eq!(r.images[0].shared_bytes, 10_000);
        assert_eq!(r.images[1].shared_bytes, 10_000);
        assert_eq!(r.images[0].dir_pages, 2);
        let parts = r.overlay_parts();
        assert_eq!(
            (
                parts.distinct_content,
                parts.directories,
                parts.metadata_images
            ),
            (9, 2, 4)
        );
        assert_eq!(r.kernel_pages, 13 + 2 + 7 + 1);
        assert_eq!(r.top_shared[0].path, "/usr/lib/libc.so");
        assert_eq!(r.top_shared[0].saved_pages, 3);
        assert_eq!(r.top_shared[1].saved_pages, 1);
        assert_eq!(r.top_unshared[0].path, "/usr/bin/app");
        assert_eq!(r.top_unshared[0].image, "b");
        let usr = r.by_dir.iter().find(|d| d.dir == "/usr").unwrap();
        assert_eq!((usr.pages_without, usr.pages_with), (9, 6));
        let root = r.by_dir.iter().find(|d| d.dir == "/").unwrap();
        assert_eq!((root.files, root.pages_without), (1, 0));
        let sum: u64 = r.by_dir.iter().map(|d| d.pages_with).sum();
        assert_eq!(sum, r.file_pages_with);
        assert!((r.reduction - (1.0 - 15.0 / 20.0)).abs() < 1e-12);
    }

    #[test]
    fn fuse_directory_records_do_not_straddle_pages() {
        assert_eq!(fuse_dirent_size(1), 32);
        assert_eq!(fuse_dirent_size(8), 32);
        assert_eq!(fuse_dirent_size(9), 40);
        assert_eq!(fuse_dir_pages([], 4096), 0);
        assert_eq!(fuse_dir_pages([1, 2], 4096), 1);
        // 128 records of 32 bytes fill one page exactly; the 129th starts a second.
        assert_eq!(fuse_dir_pages(std::iter::repeat_n(8, 128), 4096), 1);
        assert_eq!(fuse_dir_pages(std::iter::repeat_n(8, 129), 4096), 2);
        // 4000 + 280 > 4096: the second record moves to the next page.
        assert_eq!(fuse_dir_pages([3976, 256], 4096), 2);
    }

    #[test]
    fn nothing_to_read_is_no_reduction() {
        let r = analyze(&[], 4096);
        assert_eq!((r.pages_without, r.pages_with, r.reduction), (0, 0, 0.0));
    }
}
