//! Image files read without polluting the page cache.
//!
//! The daemon must never cache image bytes twice: the content of a file already lands in a
//! FUSE page cache (the dedup file's or the image mount's), so the image file itself is read
//! with `O_DIRECT` through an aligned bounce buffer. Where the filesystem refuses `O_DIRECT`
//! (some tmpfs/overlay setups), it falls back to buffered reads followed right away by
//! `posix_fadvise(DONTNEED)` on the range read, with readahead disabled (`FADV_RANDOM`).
//! Small reads (metadata, inline file tails) share a cache of aligned blocks inside the
//! daemon: 16 MiB at most over all images, each block dropped 5 s after its last use.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Alignment of offsets, lengths and memory for `O_DIRECT`; 4 KiB covers every logical
/// block size Linux block devices use on this kind of host.
const DIO_ALIGN: usize = 4096;
/// Largest single `O_DIRECT` read; larger requests are split.
const MAX_CHUNK: usize = 1 << 20;
/// Aligned blocks kept for small reads over all images: inodes, directory entries, xattrs and
/// the inline tails of small files are tens to hundreds of bytes each, many to a block, and a
/// reader visits a block's files far apart (directory by directory, not in inode order): on
/// the redis pair a cold read of every file read 45 % of its metadata blocks twice with a
/// 1 MiB cache. 16 MiB at most; file data in whole blocks never goes through it.
const META_BUDGET: usize = 4096;
/// A block unused this long is dropped (by the next read of its image, or the sweeper):
/// the cache serves a burst of reads (a container start, a cold scan), then gives back its
/// memory.
const META_TTL: Duration = Duration::from_secs(5);
/// Blocks cached over all images.
static META_CACHED: AtomicUsize = AtomicUsize::new(0);

/// An image file opened for reads that leave no page-cache copy behind.
#[derive(Debug)]
pub struct UncachedFile {
    file: File,
    direct: bool,
    len: u64,
    bytes_read: AtomicU64,
    meta: Arc<Mutex<MetaCache>>,
}

/// Recently read aligned blocks of one image, for reads that fit in one block.
#[derive(Debug, Default)]
struct MetaCache {
    blocks: HashMap<u64, (Instant, Arc<[u8]>)>,
    /// Block numbers, least recently used first; an entry whose time no longer matches the
    /// block's is stale (the block was used again later).
    order: VecDeque<(Instant, u64)>,
}

impl MetaCache {
    fn get(&mut self, block: u64) -> Option<Arc<[u8]>> {
        let now = Instant::now();
        let (at, data) = self.blocks.get_mut(&block)?;
        *at = now;
        let data = data.clone();
        self.order.push_back((now, block));
        // Stale entries are skipped when met; past a bound, drop them all at once.
        if self.order.len() > 2 * self.blocks.len() + 64 {
            let blocks = &self.blocks;
            self.order
                .retain(|(t, b)| blocks.get(b).is_some_and(|(at, _)| at == t));
        }
        Some(data)
    }

    /// Drops blocks unused for [`META_TTL`], then (for room) the least recently used ones
    /// while the cache over all images is at its budget. False if no room could be made.
    fn make_room(&mut self, now: Instant) -> bool {
        while let Some(&(t, b)) = self.order.front() {
            let live = self.blocks.get(&b).is_some_and(|(at, _)| *at == t);
            let expired = now.duration_since(t) >= META_TTL;
            let full = META_CACHED.load(Ordering::Relaxed) >= META_BUDGET;
            if live && !expired && !full {
                break;
            }
            self.order.pop_front();
            if live {
                self.blocks.remove(&b);
                META_CACHED.fetch_sub(1, Ordering::Relaxed);
            }
        }
        META_CACHED.load(Ordering::Relaxed) < META_BUDGET
    }

    fn put(&mut self, block: u64, data: Arc<[u8]>) {
        let now = Instant::now();
        if self.blocks.contains_key(&block) || !self.make_room(now) {
            return;
        }
        self.blocks.insert(block, (now, data));
        self.order.push_back((now, block));
        META_CACHED.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for MetaCache {
    fn drop(&mut self) {
        META_CACHED.fetch_sub(self.blocks.len(), Ordering::Relaxed);
    }
}

/// Drops every image's cached blocks (see [`crate::control::Request::DropCaches`]).
pub fn drop_block_caches() {
    let live: Vec<_> = meta_caches()
        .lock()
        .unwrap()
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for c in live {
        let mut c = c.lock().unwrap();
        META_CACHED.fetch_sub(c.blocks.len(), Ordering::Relaxed);
        c.blocks.clear();
        c.order.clear();
    }
}

/// Every image's block cache, for the sweeper.
fn meta_caches() -> &'static Mutex<Vec<Weak<Mutex<MetaCache>>>> {
    static CACHES: OnceLock<Mutex<Vec<Weak<Mutex<MetaCache>>>>> = OnceLock::new();
    CACHES.get_or_init(|| {
        // Idle images give their blocks back too: a thread that drops expired blocks.
        let spawned = std::thread::Builder::new()
            .name("meta-sweeper".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(META_TTL / 5);
                    let live: Vec<_> = {
                        let mut all = meta_caches().lock().unwrap();
                        all.retain(|w| w.strong_count() > 0);
                        all.iter().filter_map(Weak::upgrade).collect()
                    };
                    let now = Instant::now();
                    for c in live {
                        c.lock().unwrap().make_room(now);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no metadata block sweeper ({e}): idle images keep their blocks");
        }
        Mutex::default()
    })
}

impl UncachedFile {
    /// Opens `path` read-only with `O_DIRECT`, or buffered with drop-behind when the
    /// filesystem does not support direct I/O.
    pub fn open(path: &Path) -> io::Result<Self> {
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path);
        let f = match direct {
            Ok(file) => Self::new(file, true)?,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Self::open_buffered(path),
            Err(e) => return Err(e),
        };
        // Probe once: some filesystems accept the flag at open time and fail reads.
        let mut probe = [0u8; 1];
        if f.len > 0 && f.read_direct(&mut probe, 0).is_err() {
            return Self::open_buffered(path);
        }
        f.bytes_read.store(0, Ordering::Relaxed);
        Ok(f)
    }

    /// An image file opened elsewhere (a predecessor daemon's, see [`crate::takeover`]): read
    /// with `O_DIRECT` when it was opened so.
    pub fn from_file(file: File) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&file)?;
        Self::new(file, flags.contains(rustix::fs::OFlags::DIRECT))
    }

    fn open_buffered(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        // Advice only: a failure costs speed, not correctness.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        Self::new(file, false)
    }

    fn new(file: File, direct: bool) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let meta = Arc::new(Mutex::new(MetaCache::default()));
        meta_caches().lock().unwrap().push(Arc::downgrade(&meta));
        Ok(Self {
            file,
            direct,
            len,
            bytes_read: AtomicU64::new(0),
            meta,
        })
    }

    /// True when reads bypass the page cache with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Bytes read from the image file so far (what the device delivered, alignment included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// A read inside one aligned block, served from (and kept in) the metadata cache.
    fn read_small(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let block = offset / DIO_ALIGN as u64;
        let lead = (offset % DIO_ALIGN as u64) as usize;
        let cached = self.meta.lock().unwrap().get(block);
        let data = match cached {
            Some(d) => d,
            None => {
                let start = block * DIO_ALIGN as u64;
                let mut bounce = AlignedBuf::new(DIO_ALIGN)?;
                let got = self.pread_full(bounce.as_mut_slice(), start)?;
                let d: Arc<[u8]> = Arc::from(&bounce.as_mut_slice()[..got]);
                self.meta.lock().unwrap().put(block, d.clone());
                d
            }
        };
        if lead + buf.len() > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} ends past the image end ({})",
                    buf.len(),
                    self.len
                ),
            ));
        }
        buf.copy_from_slice(&data[lead..lead + buf.len()]);
        Ok(())
    }

    fn read_direct(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.len() < DIO_ALIGN && (offset % DIO_ALIGN as u64) as usize + buf.len() <= DIO_ALIGN {
            return self.read_small(buf, offset);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let want = (buf.len() - done).min(MAX_CHUNK);
            let pos = offset + done as u64;
            let start = pos & !(DIO_ALIGN as u64 - 1);
            let lead = (pos - start) as usize;
            let span = (lead + want).next_multiple_of(DIO_ALIGN);
            let mut bounce = AlignedBuf::new(span)?;
            let got = self.pread_full(bounce.as_mut_slice(), start)?;
            if got < lead + want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {want} bytes at {pos} ends past the image end ({})",
                        self.len
                    ),
                ));
            }
            buf[done..done + want].copy_from_slice(&bounce.as_mut_slice()[lead..lead + want]);
            done += want;
        }
        Ok(())
    }

    /// Reads into an aligned buffer until it is full or the file ends; returns bytes read.
    fn pread_full(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    // A short O_DIRECT read ends at EOF; the rest cannot be aligned anyway.
                    if got % DIO_ALIGN != 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn read_buffered(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.file.read_exact_at(buf, offset);
        if r.is_ok() {
            self.bytes_read
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        // Drops the range just read (advice only, like the open's).
        let _ = rustix::fs::fadvise(
            &self.file,
            offset,
            std::num::NonZeroU64::new(buf.len() as u64),
            rustix::fs::Advice::DontNeed,
        );
        r
    }
}

impl std::os::fd::AsFd for UncachedFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl erofs::source::ReadAt for UncachedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.direct {
            self.read_direct(buf, offset)
        } else {
            self.read_buffered(buf, offset)
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// A heap buffer aligned for `O_DIRECT`: a zeroed `Vec` over-allocated by one alignment unit,
/// exposed from its first aligned byte. Safe code, at the cost of at most `DIO_ALIGN` spare
/// bytes; a zero `len` still allocates (one unit) and exposes an empty aligned slice.
struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let total = len.checked_add(DIO_ALIGN).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "bounce buffer size overflows")
        })?;
        let mut buf = Vec::new();
        // An error, not an abort, when memory runs out (as the allocation was before).
        buf.try_reserve_exact(total)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "bounce buffer"))?;
        buf.resize(total, 0);
        // The Vec is never grown again, so its address (and this offset) stays valid.
        let start = buf.as_ptr().addr().wrapping_neg() % DIO_ALIGN;
        Ok(Self { buf, start, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Feed what identifies an image file's version into `h`: device, inode, size, mtime and
/// ctime (ns). A rewritten or replaced file changes at least one of them; the caches keyed by
/// image identity (metadata images, computed fingerprints) all start from this.
pub fn hash_file_identity(h: &mut sha2::Sha256, md: &std::fs::Metadata) {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    for v in [
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
        md.ctime() as u64,
        md.ctime_nsec() as u64,
    ] {
        h.update(v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use erofs::source::ReadAt;
    use std::io::Write;

    #[test]
    fn aligned_buffers_of_any_size_are_aligned_and_zeroed() {
        for len in [0, 1, DIO_ALIGN - 1, DIO_ALIGN, 3 * DIO_ALIGN + 7] {
            let mut b = AlignedBuf::new(len).unwrap();
            let s = b.as_mut_slice();
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % DIO_ALIGN, 0, "len {len}");
            assert!(s.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn reads_unaligned_ranges_exactly() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let f = UncachedFile::open(&path).unwrap();
        assert_eq!(f.len().unwrap(), data.len() as u64);
        for (off, n) in [
            (0usize, 1usize),
            (1, 4095),
            (4095, 2),
            (4096, 8192),
            (49_000, 1000),
        ] {
            let mut buf = vec![0; n];
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert_eq!(buf, &data[off..off + n], "at {off}+{n}");
        }
        let mut buf = vec![0; 10];
        assert!(f.read_exact_at(&mut buf, 49_995).is_err(), "read past end");
    }

    #[test]
    fn small_reads_of_a_block_read_it_once_and_it_goes_after_its_ttl() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("img");
        let data: Vec<u8> = (0..3 * DIO_ALIGN as u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = UncachedFile::open(&path).unwrap();
        let mut a = [0u8; 10];
        let mut b = [0u8; 300];
        f.read_exact_at(&mut a, 4096 + 100).unwrap();
        f.read_exact_at(&mut b, 4096 + 3000).unwrap();
        f.read_exact_at(&mut a, 4096 + 7).unwrap();
        assert_eq!(a, data[4096 + 7..4096 + 17]);
        assert_eq!(b, data[4096 + 3000..4096 + 3300]);
        if f.is_direct() {
            assert_eq!(f.bytes_read(), DIO_ALIGN as u64, "one block read once");
            let mut cache = f.meta.lock().unwrap();
            // Block 0 too: open's probe read a byte of it.
            assert!(cache.blocks.contains_key(&1), "{:?}", cache.blocks.keys());
            cache.make_room(Instant::now());
            assert!(cache.blocks.contains_key(&1), "still fresh");
            cache.make_room(Instant::now() + META_TTL);
            assert!(cache.blocks.is_empty(), "expired blocks are dropped");
        }
    }
}
