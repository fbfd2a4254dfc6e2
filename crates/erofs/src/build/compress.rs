//! Compressed file data for mkfs.
//!
//! A file is cut into fixed 4 MiB segments compressed in parallel (so big files use every
//! core and the result does not depend on the thread count). Within a segment, physical
//! clusters are filled greedily: the codec compresses as much input as fits in one pcluster
//! ([`Codec::compress_fill`]); when that does not save space the next block of input is
//! stored plain instead. Compressed data sits at the end of its blocks with zeros before it
//! (ZERO_PADDING), which is how readers find where the stream starts.
//!
//! The map is written as full lcluster indexes (COMPRESSED_FULL, one 8-byte index per
//! block of the file): every kernel since 5.3 and every erofs-utils reads it. A file whose
//! compressed form saves no block is stored uncompressed, so small files keep their inline
//! tails.

use super::tree::Stored;
use super::{BuildError, ImageFile};
use crate::codec::{self, Codec};
use crate::format::{ZMAP_HEADER_SIZE, incompat, lcluster, zadvise};
use rayon::prelude::*;
use std::sync::Arc;

/// Input per parallel segment.
pub(crate) const SEGMENT: usize = 4 << 20;
/// Most input one pcluster may hold: keeps decoded extents far below the kernel's 12 MiB.
const MAX_EXTENT_INPUT: usize = 1 << 20;
/// Largest pcluster the kernel reads (`Z_EROFS_PCLUSTER_MAX_SIZE`).
pub const MAX_PCLUSTER_SIZE: u32 = 1 << 20;

/// How mkfs compresses files.
#[derive(Debug, Clone)]
pub struct Compression {
    /// The codec and its level, as named on the command line.
    pub spec: String,
    pub codec: Arc<dyn Codec>,
    /// Largest physical cluster in bytes (a multiple of the block size).
    pub pcluster_size: u32,
    /// Store files with identical content once (their inodes share the blocks).
    pub dedupe: bool,
    /// Put the last extent of every compressed file in the packed inode (fragments),
    /// where all tails compress together.
    pub fragments: bool,
}

impl Compression {
    /// `spec` as `lz4hc,level=9`; `pcluster_size` in bytes (`None`: one block).
    pub fn new(
        spec: &str,
        pcluster_size: Option<u32>,
        block_size: u32,
    ) -> Result<Self, BuildError> {
        let pcluster_size = pcluster_size.unwrap_or(block_size);
        if pcluster_size < block_size
            || !pcluster_size.is_multiple_of(block_size)
            || pcluster_size > MAX_PCLUSTER_SIZE
            || pcluster_size / block_size >= lcluster::D0_CBLKCNT as u32
        {
            return Err(BuildError::Option(format!(
                "pcluster size {pcluster_size} must be a multiple of the {block_size} byte block \
                 size, at most {MAX_PCLUSTER_SIZE} bytes and fewer than 2048 blocks"
            )));
        }
        let codec = codec::parse_spec_for(spec, pcluster_size).map_err(BuildError::Option)?;
        Ok(Compression {
            spec: spec.to_string(),
            codec: Arc::from(codec),
            pcluster_size,
            dedupe: false,
            fragments: false,
        })
    }

    fn big(&self, bs: u64) -> bool {
        self.pcluster_size as u64 > bs
    }

    /// Incompat feature bits an image written this way needs.
    pub fn incompat(&self, bs: u64) -> u32 {
        let mut bits = incompat::ZERO_PADDING;
        if self.needs_configs(bs) {
            bits |= incompat::COMPR_CFGS;
        }
        if self.big(bs) {
            bits |= incompat::BIG_PCLUSTER;
        }
        bits
    }

    /// Per-algorithm configs are needed for anything but LZ4 with one-block pclusters (the
    /// layout every kernel reads).
    fn needs_configs(&self, bs: u64) -> bool {
        self.codec.algorithm() != codec::Algorithm::Lz4 || self.big(bs)
    }

    /// The superblock's `available_compr_algs` (with configs) or LZ4 max distance (0).
    pub fn algs_field(&self, bs: u64) -> u16 {
        if self.needs_configs(bs) {
            1 << self.codec.algorithm().id()
        } else {
            0
        }
    }

    /// The config records that follow the superblock (each `le16 size` + payload, 4-byte
    /// aligned), empty when none are needed.
    pub fn configs(&self, bs: u64) -> Vec<u8> {
        if !self.needs_configs(bs) {
            return Vec::new();
        }
        let payload = self.codec.config((self.pcluster_size as u64 / bs) as u16);
        let mut out = (payload.len() as u16).to_le_bytes().to_vec();
        out.extend_from_slice(&payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }
}

/// Where a compressed file's last pcluster goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// In blocks like the others.
    Blocks,
    /// Inline after the map (ztailpacking).
    Inline,
    /// Its uncompressed bytes in the packed inode at this offset (fragments).
    Fragment(u64),
}

/// One physical cluster of a file.
#[derive(Debug)]
pub struct Pcluster {
    /// Logical start and decoded length.
    pub la: u64,
    pub llen: u64,
    /// Stored plain (shifted) rather than compressed.
    pub plain: bool,
    /// Whole blocks: compressed data at the end with zeros before it, or plain data.
    /// Empty when the blocks wait in the image's spool (see `spooled`).
    pub data: Vec<u8>,
    /// Blocks the pcluster takes.
    pub blocks: u64,
    /// Where its blocks wait in the spool (big files), if not in `data`.
    pub spooled: Option<u64>,
    /// Bytes of compressed stream (or plain data) at the end (start) of `data`.
    pub stream_len: usize,
}

impl Pcluster {
    /// The bytes an inline (ztailpacking) copy of this pcluster holds: the compressed
    /// stream exactly, or the plain data.
    fn inline_bytes(&self) -> &[u8] {
        if self.plain {
            &self.data[..self.stream_len]
        } else {
            &self.data[self.data.len() - self.stream_len..]
        }
    }
}

/// Compress `data` into pclusters (`None` for files of at most one block: compression
/// cannot save a block there).
pub fn compress(
    data: &[u8],
    c: &Compression,
    bs: u64,
) -> Result<Option<Vec<Pcluster>>, BuildError> {
    if data.len() as u64 <= bs {
        return Ok(None);
    }
    let parts = data
        .par_chunks(SEGMENT)
        .enumerate()
        .map(|(i, seg)| segment(seg, (i * SEGMENT) as u64, c, bs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(parts.into_iter().flatten().collect()))
}

/// Whether the last pcluster can go inline after the map (ztailpacking): `budget` bytes are
/// left in the inode's block. A plain tail must start in the last lcluster (the kernel
/// checks a plain extent's mapped length against the inline size).
fn inline_tail(pcls: &[Pcluster], size: u64, bs: u64, budget: Option<usize>) -> bool {
    let (Some(last), Some(budget)) = (pcls.last(), budget) else {
        return false;
    };
    let last_lcn = (size - 1) / bs;
    last.inline_bytes().len() <= budget && (!last.plain || last.la / bs == last_lcn)
}

/// Bytes left for an inline tail in the block of an inode whose xattrs take at most
/// `max_xattr` bytes, after its compressed map (`inline`: tails may be inlined at all).
pub fn tail_budget(inline: bool, size: u64, bs: u64, max_xattr: usize) -> Option<usize> {
    let map = ZMAP_HEADER_SIZE as u64 + 8 + size.div_ceil(bs) * 8;
    let fixed = 64 + max_xattr as u64 + 4 + map;
    (inline && fixed < bs).then(|| (bs - fixed) as usize)
}

fn segment(seg: &[u8], base: u64, c: &Compression, bs: u64) -> Result<Vec<Pcluster>, BuildError> {
    let bsz = bs as usize;
    let mut out = Vec::new();
    let mut buf = vec![0u8; c.pcluster_size as usize];
    let mut pos = 0usize;
    while pos < seg.len() {
        let window = &seg[pos..seg.len().min(pos + MAX_EXTENT_INPUT)];
        let fill = c
            .codec
            .compress_fill(window, &mut buf)
            .map_err(|e| BuildError::Source(e.to_string()))?;
        let blocks = fill.written.div_ceil(bsz).max(1);
        if fill.consumed > blocks * bsz && fill.written > 0 {
            let mut data = vec![0u8; blocks * bsz];
            data[blocks * bsz - fill.written..].copy_from_slice(&buf[..fill.written]);
            out.push(Pcluster {
                la: base + pos as u64,
                llen: fill.consumed as u64,
                plain: false,
                data,
                blocks: blocks as u64,
                spooled: None,
                stream_len: fill.written,
            });
            pos += fill.consumed;
        } else {
            // Does not shrink: one block of it, stored as is.
            let n = bsz.min(seg.len() - pos);
            let mut data = vec![0u8; bsz];
            data[..n].copy_from_slice(&seg[pos..pos + n]);
            out.push(Pcluster {
                la: base + pos as u64,
                llen: n as u64,
                plain: true,
                data,
                blocks: 1,
                spooled: None,
                stream_len: n,
            });
            pos += n;
        }
    }
    Ok(out)
}

/// The map of a compressed file: header, 8 reserved bytes, then one full lcluster index per
/// block of the file. `pblks[i]` is where pcluster `i` was written.
pub fn full_index(
    pcls: &[Pcluster],
    pblks: &[u64],
    size: u64,
    c: &Compression,
    bs: u64,
    tail: Tail,
) -> Result<Vec<u8>, BuildError> {
    let inline_tail = tail == Tail::Inline;
    let lcb = bs.trailing_zeros();
    let n = size.div_ceil(bs) as usize;
    let mut idx = vec![[0u8; 8]; n];
    let heads: Vec<usize> = pcls.iter().map(|p| (p.la >> lcb) as usize).collect();
    for (k, p) in pcls.iter().enumerate() {
        let h = heads[k];
        let next = heads.get(k + 1).copied().unwrap_or(n);
        if next <= h && k + 1 < pcls.len() {
            return Err(BuildError::Source(format!(
                "internal: two extents start in lcluster {h}"
            )));
        }
        let fragment = matches!(tail, Tail::Fragment(_)) && k + 1 == pcls.len();
        // A fragment tail is a HEAD1 (a plain head would be checked against a pcluster
        // size it does not have); its block address holds the offset's high 32 bits.
        let ty = if p.plain && !fragment {
            lcluster::PLAIN
        } else {
            lcluster::HEAD1
        } as u16;
        let blkaddr = match tail {
            Tail::Fragment(off) if fragment => (off >> 32) as u32,
            _ => u32::try_from(pblks[k]).map_err(|_| BuildError::TooMany("blocks"))?,
        };
        let e = &mut idx[h];
        e[..2].copy_from_slice(&ty.to_le_bytes());
        e[2..4].copy_from_slice(&((p.la & (bs - 1)) as u16).to_le_bytes());
        e[4..8].copy_from_slice(&blkaddr.to_le_bytes());
        let blocks = p.blocks;
        for (lcn, e) in idx.iter_mut().enumerate().take(next).skip(h + 1) {
            let mut d0 = (lcn - h) as u16;
            if lcn == h + 1 && c.big(bs) && !p.plain && !fragment {
                d0 = lcluster::D0_CBLKCNT | blocks as u16;
            }
            let d1 = (next - lcn) as u16;
            e[..2].copy_from_slice(&(lcluster::NONHEAD as u16).to_le_bytes());
            e[2..4].fill(0);
            e[4..6].copy_from_slice(&d0.to_le_bytes());
            e[6..8].copy_from_slice(&d1.to_le_bytes());
        }
    }
    // A plain last extent reaching into the last lcluster: the kernel maps a queried
    // NONHEAD lcluster of a plain extent up to that lcluster's end, past the one-block
    // pcluster. End the extent with a head at EOF instead (as upstream mkfs does): its
    // cluster offset is past every byte of the file in that lcluster, so it maps nothing.
    if let Some(last) = pcls.last()
        && last.plain
        && tail == Tail::Blocks
        && n >= 1
        && (last.la >> lcb) < (n - 1) as u64
    {
        let e = &mut idx[n - 1];
        e[..2].copy_from_slice(&(lcluster::PLAIN as u16).to_le_bytes());
        e[2..4].copy_from_slice(&((size & (bs - 1)) as u16).to_le_bytes());
        e[4..8].copy_from_slice(&(*pblks.last().expect("non-empty") as u32).to_le_bytes());
    }
    let mut out = vec![0u8; ZMAP_HEADER_SIZE + 8];
    let mut advise = if c.big(bs) {
        zadvise::BIG_PCLUSTER_1
    } else {
        0
    };
    if let Tail::Fragment(off) = tail {
        advise |= zadvise::FRAGMENT_PCLUSTER;
        out[..4].copy_from_slice(&(off as u32).to_le_bytes());
    }
    if inline_tail {
        // The last pcluster follows the index (where the index of the last lcluster ends).
        advise |= zadvise::INLINE_PCLUSTER;
        let len = pcls.last().expect("a tail").inline_bytes().len() as u16;
        out[2..4].copy_from_slice(&len.to_le_bytes());
    }
    out[4..6].copy_from_slice(&advise.to_le_bytes());
    out[6] = c.codec.algorithm().id();
    out[7] = 0; // lcluster = block
    for e in idx {
        out.extend_from_slice(&e);
    }
    if inline_tail {
        out.extend_from_slice(pcls.last().expect("a tail").inline_bytes());
    }
    Ok(out)
}

/// Write a compressed file's pclusters to consecutive new blocks (all but an inline tail)
/// and describe it.
pub fn commit(
    img: &ImageFile,
    pcls: &[Pcluster],
    size: u64,
    c: &Compression,
    tail: Tail,
    fingerprint: Option<crate::fingerprint::Value>,
) -> Result<Stored, BuildError> {
    let bs = img.block_size();
    let stored = if tail == Tail::Blocks {
        pcls
    } else {
        &pcls[..pcls.len() - 1]
    };
    let total: u64 = stored.iter().map(|p| p.blocks).sum();
    let first = img.alloc(total);
    let mut pblks = Vec::with_capacity(pcls.len());
    let mut at = first;
    let mut run: Vec<u8> = Vec::new();
    for p in stored {
        pblks.push(at);
        at += p.blocks;
        match p.spooled {
            Some(off) => img.spool.read(&mut run, off, p.blocks * bs)?,
            None => run.extend_from_slice(&p.data),
        }
        if run.len() >= 1 << 20 {
            img.write_at(&run, at * bs - run.len() as u64)?;
            run.clear();
        }
    }
    if !run.is_empty() {
        img.write_at(&run, at * bs - run.len() as u64)?;
    }
    if tail != Tail::Blocks {
        pblks.push(0); // not a block: the tail is inline or a fragment
    }
    let map = full_index(pcls, &pblks, size, c, bs, tail)?;
    Ok(Stored {
        start_block: None,
        inline_tail: None,
        fingerprint,
        compressed: Some(super::tree::CompressedMap {
            blocks: total,
            map,
            tail_inline: tail == Tail::Inline,
        }),
        hole: false,
    })
}

/// Compressed blocks of big files waiting for their place in the image (blocks are handed
/// out in walk order, after files are compressed): an unnamed temporary file beside the
/// image, created on first use.
#[derive(Debug)]
pub struct Spool {
    dir: std::path::PathBuf,
    file: std::sync::Mutex<Option<(std::fs::File, u64)>>,
}

impl Spool {
    pub(crate) fn new(dir: std::path::PathBuf) -> Self {
        Spool {
            dir,
            file: Default::default(),
        }
    }

    /// Where temporary files go: beside the image.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Move `p`'s blocks to the spool.
    fn put(&self, p: &mut Pcluster) -> Result<(), BuildError> {
        use std::os::unix::fs::FileExt;
        if p.spooled.is_some() {
            return Ok(());
        }
        let mut g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let f = tempfile::tempfile_in(&self.dir).map_err(BuildError::io(&self.dir))?;
            *g = Some((f, 0));
        }
        let (f, len) = g.as_mut().expect("created above");
        f.write_all_at(&p.data, *len).map_err(BuildError::Write)?;
        p.spooled = Some(*len);
        *len += p.data.len() as u64;
        p.data = Vec::new();
        Ok(())
    }

    /// Append `len` spooled bytes at `off` to `out`.
    fn read(&self, out: &mut Vec<u8>, off: u64, len: u64) -> Result<(), BuildError> {
        use std::os::unix::fs::FileExt;
        let g = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let (f, _) = g
            .as_ref()
            .ok_or_else(|| BuildError::Source("internal: nothing was spooled".into()))?;
        let start = out.len();
        out.resize(start + len as usize, 0);
        f.read_exact_at(&mut out[start..], off)
            .map_err(BuildError::Write)
    }
}

/// Content stored so far, for dedupe: digest and size → where it went.
pub type Seen = std::collections::HashMap<([u8; 32], u64), Stored>;

/// A file read and compressed, waiting for its blocks: only what is still needed is kept
/// (the plain content, or a fragment tail's bytes), so files can be prepared in parallel
/// ahead of their turn without holding every file's content.
#[derive(Debug)]
pub struct Prepared {
    size: u64,
    /// Plain: the whole content (unless `origin` has it). Compressed: the last extent's
    /// bytes when it becomes a fragment, else nothing.
    data: Vec<u8>,
    /// Big files: where the plain content is read again if it is stored plain.
    origin: Option<Origin>,
    /// The compressed form and where its last pcluster goes; `None`: store it plain.
    chosen: Option<(Vec<Pcluster>, Tail)>,
    inline: bool,
    /// sha256 of the content, when fingerprints or dedupe need it.
    digest: Option<[u8; 32]>,
    fingerprint: Option<crate::fingerprint::Value>,
}

/// Where a file goes: `inline` (its plain tail may follow the inode), `tail_budget` (room
/// for an inline compressed tail, see [`tail_budget`]), `fragments` (the last extent goes to
/// the packed inode).
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub inline: bool,
    pub tail_budget: Option<usize>,
    pub fragments: bool,
}

impl Placement {
    /// Where a file of `size` bytes goes when inlining is `inline` and its inode body may
    /// hold up to `max_xattr` bytes of xattrs.
    pub fn of(c: &Compression, inline: bool, bs: u64, size: u64, max_xattr: usize) -> Self {
        Placement {
            inline: super::file_data::can_inline(inline, bs, size, max_xattr),
            tail_budget: tail_budget(inline, size, bs, max_xattr),
            fragments: c.fragments,
        }
    }
}

/// Where a big file's content can be read again: it is not kept in memory, and is needed
/// once more only when it is stored plain.
#[derive(Debug)]
pub enum Origin {
    /// A file of the source directory.
    Path(std::path::PathBuf),
    /// A temporary copy (tar entries), read from the start.
    File(std::fs::File),
}

/// Fingerprint (over the uncompressed bytes) and compress a file's content, and choose how
/// to store it: compressed when that saves a block, else plain.
pub fn prepare(
    data: Vec<u8>,
    c: &Compression,
    bs: u64,
    hash: bool,
    at: Placement,
) -> Result<Prepared, BuildError> {
    let digest = ((hash || c.dedupe) && !data.is_empty()).then(|| {
        use sha2::{Digest, Sha256};
        Sha256::digest(&data).into()
    });
    let size = data.len() as u64;
    let pcls = compress(&data, c, bs)?;
    let fragment = pcls
        .as_ref()
        .and_then(|p| p.last())
        .map(|last| last.la as usize);
    let mut p = choose(pcls, size, digest, bs, hash, at);
    p.data = match &p.chosen {
        None => data,
        Some((_, Tail::Fragment(_))) => data[fragment.expect("a tail")..].to_vec(),
        Some(_) => Vec::new(),
    };
    Ok(p)
}

/// [`prepare`] for a file of `size` bytes read from `r`, without holding it: a few segments
/// at a time are read and compressed in parallel, and all pclusters but the last wait in
/// the image's spool for their blocks. Memory is bounded by the thread count, not the size.
/// If the file ends up stored plain, its content is read again from `origin`.
#[allow(clippy::too_many_arguments)]
pub fn prepare_stream(
    img: &ImageFile,
    r: &mut dyn std::io::Read,
    size: u64,
    origin: Origin,
    c: &Compression,
    hash: bool,
    at: Placement,
    read_err: &dyn Fn(std::io::Error) -> BuildError,
) -> Result<Prepared, BuildError> {
    use sha2::{Digest, Sha256};
    let bs = img.block_size();
    let mut hasher = ((hash || c.dedupe) && size > 0).then(Sha256::new);
    let batch = SEGMENT * rayon::current_num_threads().clamp(1, 8);
    let mut buf = Vec::new();
    let mut pcls: Vec<Pcluster> = Vec::new();
    let mut tail = Vec::new();
    let mut base = 0u64;
    while base < size {
        let n = (size - base).min(batch as u64) as usize;
        buf.resize(n, 0);
        super::file_data::read_exact(r, &mut buf, read_err)?;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        let parts = buf
            .par_chunks(SEGMENT)
            .enumerate()
            .map(|(i, seg)| segment(seg, base + (i * SEGMENT) as u64, c, bs))
            .collect::<Result<Vec<_>, _>>()?;
        // The one before the newest may go to the spool: only the file's last pcluster
        // (inline or fragment tail) stays in memory.
        if let Some(prev) = pcls.last_mut() {
            img.spool.put(prev)?;
        }
        let mut parts = parts.into_iter().flatten().peekable();
        while let Some(mut p) = parts.next() {
            if parts.peek().is_some() {
                img.spool.put(&mut p)?;
            }
            pcls.push(p);
        }
        base += n as u64;
        if base == size {
            let last = pcls.last().expect("a big file has pclusters");
            if at.fragments {
                tail = buf[(last.la - (base - n as u64)) as usize..].to_vec();
            }
        }
    }
    let digest = hasher.map(|h| h.finalize().into());
    let mut p = choose(Some(pcls), size, digest, bs, hash, at);
    match &p.chosen {
        None => p.origin = Some(origin),
        Some((_, Tail::Fragment(_))) => p.data = tail,
        Some(_) => {}
    }
    Ok(p)
}

/// Choose compressed (`pcls`) or plain for a file: compressed when that saves a block.
fn choose(
    pcls: Option<Vec<Pcluster>>,
    size: u64,
    digest: Option<[u8; 32]>,
    bs: u64,
    hash: bool,
    at: Placement,
) -> Prepared {
    let fingerprint = digest
        .filter(|_| hash)
        .map(|d| crate::fingerprint::value_of_digest(&d));
    let plain_blocks = if at.inline {
        size / bs
    } else {
        size.div_ceil(bs)
    };
    let chosen = pcls.and_then(|pcls| {
        let tail = if at.fragments {
            Tail::Fragment(0)
        } else if inline_tail(&pcls, size, bs, at.tail_budget) {
            Tail::Inline
        } else {
            Tail::Blocks
        };
        let own = pcls.len() - (tail != Tail::Blocks) as usize;
        let blocks: u64 = pcls[..own].iter().map(|p| p.blocks).sum();
        (blocks < plain_blocks).then_some((pcls, tail))
    });
    Prepared {
        size,
        data: Vec::new(),
        origin: None,
        chosen,
        inline: at.inline,
        digest,
        fingerprint,
    }
}

/// Give a prepared file its blocks (or, with dedupe, those of identical content stored
/// before). Called in a fixed file order: the image does not depend on the thread count.
pub fn store(img: &ImageFile, p: Prepared, c: &Compression) -> Result<Stored, BuildError> {
    let key = p.digest.map(|d| (d, p.size));
    fn seen(img: &ImageFile) -> Option<std::sync::MutexGuard<'_, Seen>> {
        img.dedupe
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }
    if let (Some(seen), Some(key)) = (seen(img), key)
        && let Some(s) = seen.get(&key)
    {
        let mut s = s.clone();
        s.fingerprint = p.fingerprint;
        return Ok(s);
    }
    let s = store_new(img, p, c)?;
    if let (Some(mut seen), Some(key)) = (seen(img), key) {
        seen.insert(key, s.clone());
    }
    Ok(s)
}

fn store_new(img: &ImageFile, p: Prepared, c: &Compression) -> Result<Stored, BuildError> {
    match p.chosen {
        Some((pcls, mut tail)) => {
            if let Tail::Fragment(_) = tail {
                let packed = img.packed.as_ref().ok_or_else(|| {
                    BuildError::Source("internal: a fragment without a packed inode".into())
                })?;
                let mut packed = packed.lock().unwrap_or_else(|e| e.into_inner());
                tail = Tail::Fragment(packed.len() as u64);
                packed.extend_from_slice(&p.data);
            }
            commit(img, &pcls, p.size, c, tail, p.fingerprint)
        }
        None => {
            let at = super::file_data::place(img, p.size, p.inline);
            let (mut s, what) = match p.origin {
                None => {
                    let err = |e: std::io::Error| BuildError::Source(e.to_string());
                    let s = super::file_data::store(
                        img,
                        &at,
                        p.size,
                        &mut &p.data[..],
                        false,
                        &super::NoProgress,
                        &err,
                    )?;
                    (s, None)
                }
                Some(origin) => {
                    let (mut f, path) = match origin {
                        Origin::Path(path) => (
                            std::fs::File::open(&path).map_err(BuildError::io(&path))?,
                            path,
                        ),
                        Origin::File(mut f) => {
                            use std::io::Seek;
                            f.rewind().map_err(BuildError::Write)?;
                            (f, "(spooled tar entry)".into())
                        }
                    };
                    let err = |e: std::io::Error| BuildError::Io {
                        path: path.clone(),
                        cause: e,
                    };
                    // Hashed again: the content read the first time must be what is stored.
                    let s = super::file_data::store(
                        img,
                        &at,
                        p.size,
                        &mut f,
                        p.digest.is_some(),
                        &super::NoProgress,
                        &err,
                    )?;
                    (s, Some(path))
                }
            };
            if let (Some(path), Some(d)) = (what, p.digest)
                && s.fingerprint != Some(crate::fingerprint::value_of_digest(&d))
            {
                return Err(BuildError::Io {
                    path,
                    cause: std::io::Error::other("file changed while it was read"),
                });
            }
            s.fingerprint = p.fingerprint;
            Ok(s)
        }
    }
}

/// Fragments: compress the tails collected in the packed inode and add it to the tree (in
/// no directory; the superblock names it).
pub fn store_packed(
    tree: &mut super::tree::Tree,
    opts: &super::Options,
    c: &Compression,
    img: &ImageFile,
) -> Result<(), BuildError> {
    use super::tree::{Content, Kind, Node};
    let data = match &img.packed {
        Some(m) => std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner())),
        None => return Ok(()),
    };
    if data.is_empty() {
        return Ok(());
    }
    let size = data.len() as u64;
    let bs = img.block_size();
    // Its own tail goes to blocks, never back into itself.
    let at = Placement {
        inline: false,
        tail_budget: None,
        fragments: false,
    };
    let stored = store_new(img, prepare(data, c, bs, false, at)?, c)?;
    let mut node = Node::new(
        Kind::File {
            size,
            content: Content::Stored(stored),
        },
        0o600,
    );
    node.mtime = opts.build_time as i64;
    tree.packed = Some(tree.add(node));
    Ok(())
}
