//! Image files read without polluting the page cache.
//!
//! The daemon must never cache image bytes twice: the content of a file already lands in a
//! FUSE page cache (the dedup file's or the image mount's), so the image file itself is read
//! with `O_DIRECT` through an aligned bounce buffer. Where the filesystem refuses `O_DIRECT`
//! (some tmpfs/overlay setups), it falls back to buffered reads followed right away by
//! `posix_fadvise(DONTNEED)` on the range read, with readahead disabled (`FADV_RANDOM`).
//! Small reads (metadata) share a 1 MiB cache of aligned blocks inside the daemon.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Alignment of offsets, lengths and memory for `O_DIRECT`; 4 KiB covers every logical
/// block size Linux block devices use on this kind of host.
const DIO_ALIGN: usize = 4096;
/// Largest single `O_DIRECT` read; larger requests are split.
const MAX_CHUNK: usize = 1 << 20;
/// Aligned blocks kept for small (metadata) reads: inodes, directory entries and xattrs are
/// tens of bytes each and would otherwise cost one device block read apiece. 1 MiB at most;
/// file data never goes through it.
const META_BLOCKS: usize = 256;

/// An image file opened for reads that leave no page-cache copy behind.
#[derive(Debug)]
pub struct UncachedFile {
    file: File,
    direct: bool,
    len: u64,
    bytes_read: AtomicU64,
    meta: Mutex<MetaCache>,
}

/// A small FIFO of recently read aligned blocks, for reads that fit in one block.
#[derive(Debug, Default)]
struct MetaCache {
    blocks: HashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
}

impl MetaCache {
    fn get(&self, block: u64) -> Option<Arc<[u8]>> {
        self.blocks.get(&block).cloned()
    }

    fn put(&mut self, block: u64, data: Arc<[u8]>) {
        if self.blocks.insert(block, data).is_none() {
            self.order.push_back(block);
            if self.order.len() > META_BLOCKS
                && let Some(old) = self.order.pop_front()
            {
                self.blocks.remove(&old);
            }
        }
    }
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

    fn open_buffered(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        // Advice only: a failure costs speed, not correctness.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        Self::new(file, false)
    }

    fn new(file: File, direct: bool) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            direct,
            len,
            bytes_read: AtomicU64::new(0),
            meta: Mutex::new(MetaCache::default()),
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
}
