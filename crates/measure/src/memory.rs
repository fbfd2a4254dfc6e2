//! `erofs-share bench memory`: what sharing saves, measured.
//!
//! The images are mounted three ways (kernel erofs over a `--direct-io=on` loop device;
//! erofs-share `--no-share`; erofs-share with every image in one domain, through a private
//! daemon, see [`crate::share`]). For each, `runs` times: drop caches, read every file of every
//! mount in a memory cgroup of its own ([`crate::page_cache::reading`]: the page cache that read
//! charges, whatever holds it — file pages, the kernel mount's metadata pages, FUSE's cached
//! directory listings, the domain's dedup files — and robust to other processes dropping
//! caches), then read it all again (warm), then open and close every file once more: warm
//! reads of many small files are dominated by that per-open cost. The ideal is the page-rounded
//! size of the distinct contents (size, fingerprint) as [`crate::scan`] keys them.

use crate::page_cache::{self, PageCacheError};
use crate::read_tree::read_tree;
use crate::runtime::{KernelLoop, Mounter};
use crate::scan::{self, ScanError};
use crate::share::ErofsShare;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("no images given")]
    NoImages,
    #[error("{cause}")]
    Open { image: String, cause: erofs::Error },
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("{image}: {path}: {why}")]
    Hash {
        image: String,
        path: String,
        why: String,
    },
    #[error("{setup}: mounting: {why}")]
    Mount { setup: String, why: String },
    #[error("{setup}: {cause}")]
    Measure {
        setup: String,
        cause: PageCacheError,
    },
    #[error("{setup}: warm read of {path}: {cause}")]
    Warm {
        setup: String,
        path: String,
        cause: std::io::Error,
    },
}

/// One measured setup.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was mounted.
    pub setup: String,
    /// Page cache the cold read charged to its memory cgroup (largest over the runs).
    pub cache_growth: u64,
    /// Growth of the system-wide `Cached:` over the cold read (median): the same, plus
    /// whatever else the host did meanwhile.
    pub meminfo_growth: u64,
    /// Bytes of file content read per pass.
    pub bytes_read: u64,
    /// First read of everything after dropping caches (shortest).
    pub cold: Duration,
    /// Second read of everything (shortest).
    pub warm: Duration,
    /// Regular files read per pass.
    pub files: u64,
    /// Mean time to open and close one warm file (shortest over the runs).
    pub open_close: Duration,
}

/// The whole benchmark.
#[derive(Debug, Clone)]
pub struct Report {
    /// The images, in order.
    pub images: Vec<PathBuf>,
    /// Measured setups: kernel, `--no-share`, one domain (overlay front), one domain (FUSE
    /// front), one trusted domain (overlay front).
    pub rows: Vec<Row>,
    /// Page-rounded size of the distinct file contents of all images.
    pub ideal: u64,
    /// Page-rounded size of all file contents (one copy per inode per image).
    pub total_content: u64,
    /// Bytes of each image file left in the page cache after the run.
    pub images_cached_after: Vec<u64>,
}

/// Page-rounded size of the distinct contents and of all contents of `images`: every
/// regular file once per inode, keyed by (size, fingerprint) as [`scan::scan`] gives it; a
/// file whose stored fingerprint the daemon would refuse is hashed here (the ideal counts
/// equal content once whatever its xattrs say).
pub fn content_sizes(images: &[PathBuf]) -> Result<(u64, u64), MemoryError> {
    let mut seen: HashSet<(u64, Vec<u8>)> = HashSet::new();
    let (mut unique, mut total) = (0, 0);
    for path in images {
        let name = path.display().to_string();
        let img = erofs::Image::open(path).map_err(|source| MemoryError::Open {
            image: name.clone(),
            cause: source,
        })?;
        let files = scan::scan(&img, &name, PAGE)?;
        for f in files.files.iter().filter(|f| f.size > 0) {
            let rounded = f.size.div_ceil(PAGE) * PAGE;
            total += rounded;
            let key = match &f.key {
                Some(k) => k.clone(),
                None => {
                    let hash_err = |why: String| MemoryError::Hash {
                        image: name.clone(),
                        path: f.path.clone(),
                        why,
                    };
                    let inode = img.resolve(&f.path).map_err(|e| hash_err(e.to_string()))?;
                    erofs::fingerprint::of_reader(img.content(&inode))
                        .map_err(|e| hash_err(e.to_string()))?
                        .to_vec()
                }
            };
            if seen.insert((f.size, key)) {
                unique += rounded;
            }
        }
    }
    Ok((unique, total))
}

/// Opens and closes each of `files` once; returns the mean time per file.
fn open_close(files: &[PathBuf]) -> Result<Duration, (PathBuf, std::io::Error)> {
    let t = Instant::now();
    for p in files {
        drop(std::fs::File::open(p).map_err(|e| (p.clone(), e))?);
    }
    Ok(t.elapsed() / files.len().max(1) as u32)
}

/// Mounts `images` with `mounter` and measures it `runs` times. On a shared host other
/// processes only ever add time, and only ever take page cache away, so the shortest times and
/// the largest growth are kept; the system-wide figure is the median.
fn measure(mounter: &dyn Mounter, images: &[PathBuf], runs: usize) -> Result<Row, MemoryError> {
    let setup = mounter.label();
    let mounted = mounter.mount(images).map_err(|why| MemoryError::Mount {
        setup: setup.clone(),
        why,
    })?;
    let roots = mounted.roots();
    let dirs: Vec<&Path> = roots.iter().map(|r| r.as_path()).collect();
    let mut buf = vec![0u8; 1 << 20];
    let (mut growth, mut cold, mut warm, mut bytes_read) = (0, Duration::MAX, Duration::MAX, 0);
    let (mut files, mut open_close_mean) = (Vec::new(), Duration::MAX);
    let mut meminfo = Vec::new();
    for _ in 0..runs.max(1) {
        let r =
            page_cache::reading_after(&dirs, &|| mounted.drop_own_caches()).map_err(|source| {
                MemoryError::Measure {
                    setup: setup.clone(),
                    cause: source,
                }
            })?;
        growth = growth.max(r.growth);
        meminfo.push(r.meminfo_growth);
        cold = cold.min(r.elapsed);
        let t = Instant::now();
        bytes_read = 0;
        files.clear();
        let warm_err = |(p, source): (PathBuf, std::io::Error)| MemoryError::Warm {
            setup: setup.clone(),
            path: p.display().to_string(),
            cause: source,
        };
        for root in &roots {
            bytes_read += read_tree(root, &mut buf, &mut files).map_err(warm_err)?;
        }
        warm = warm.min(t.elapsed());
        open_close_mean = open_close_mean.min(open_close(&files).map_err(warm_err)?);
    }
    meminfo.sort_unstable();
    Ok(Row {
        setup,
        cache_growth: growth,
        meminfo_growth: meminfo[meminfo.len() / 2],
        bytes_read,
        cold,
        warm,
        files: files.len() as u64,
        open_close: open_close_mean,
    })
}

/// Runs the benchmark on `images` (root); `exe` is the `erofs-share` executable, which runs
/// the private daemon.
pub fn run(exe: &Path, images: &[PathBuf], runs: usize) -> Result<Report, MemoryError> {
    if images.is_empty() {
        return Err(MemoryError::NoImages);
    }
    let (ideal, total_content) = content_sizes(images)?;
    let setups: [&dyn Mounter; 5] = [
        &KernelLoop,
        &ErofsShare {
            exe: exe.to_path_buf(),
            share: false,
            front: None,
            trusted: false,
        },
        &ErofsShare {
            exe: exe.to_path_buf(),
            share: true,
            front: None,
            trusted: false,
        },
        &ErofsShare {
            exe: exe.to_path_buf(),
            share: true,
            front: Some("fuse"),
            trusted: false,
        },
        // What verification costs: the same domain, trusted.
        &ErofsShare {
            exe: exe.to_path_buf(),
            share: true,
            front: None,
            trusted: true,
        },
    ];
    let mut rows = Vec::new();
    for m in setups {
        rows.push(measure(m, images, runs)?);
    }
    let images_cached_after = images
        .iter()
        .map(|i| erofs_share_daemon::page_cache::cached_bytes(i).unwrap_or(0))
        .collect();
    Ok(Report {
        images: images.to_vec(),
        rows,
        ideal,
        total_content,
        images_cached_after,
    })
}
