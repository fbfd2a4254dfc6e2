//! Sparse regular files as chunk-based inodes (CHUNK_BASED, as upstream `mkfs.erofs
//! --chunksize` writes them): the file is cut into chunks of `block size << bits` bytes, and a
//! block map after the inode and its xattrs (4-byte aligned, one 32-bit start block per chunk)
//! names each chunk's blocks, or [`NULL_ADDR`] for a chunk that is all hole. A hole costs 4
//! bytes of map instead of its size in blocks.
//!
//! The source's holes come from `SEEK_DATA`/`SEEK_HOLE`. A chunk holding any data is stored
//! whole (its holes as zeros); the chunk size is chosen per file to store the fewest bytes.
//! The fingerprint is of the full logical content, holes read as zeros.

use super::tree::{ChunkMap, Stored};
use super::{BuildError, ImageFile, Progress};
use crate::format::NULL_ADDR;
use rustix::fs::SeekFrom;
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// The byte ranges of `f` (of `size` bytes) holding data, in order; everything else reads as
/// zeros. A filesystem without `SEEK_DATA` gives one range: the whole file.
pub fn data_ranges(f: &File, size: u64) -> std::io::Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let start = match rustix::fs::seek(f, SeekFrom::Data(off)) {
            Ok(s) => s,
            // No data after `off`.
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) if off == 0 => {
                return Ok(vec![Range {
                    start: 0,
                    end: size,
                }]);
            }
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(f, SeekFrom::Hole(start))?.min(size);
        if end <= start {
            // A hole cannot start at data: the file changed under us; treat the rest as data.
            out.push(start..size);
            break;
        }
        out.push(start..end);
        off = end;
    }
    Ok(out)
}

/// How a sparse file is cut: chunks of `block size << bits` bytes, and which of them hold
/// data.
#[derive(Debug, Clone)]
pub struct Plan {
    /// log2(chunk size / block size): the chunk format's low bits.
    pub bits: u8,
    /// Per chunk: holds data (stored) or is all hole.
    pub data: Vec<bool>,
}

/// Chunk indexes touched by `ranges` with chunks of `1 << chunk_bits` bytes, each once, in
/// order.
fn touched(ranges: &[Range<u64>], chunk_bits: u32) -> impl Iterator<Item = u64> + '_ {
    let mut last = None;
    ranges
        .iter()
        .filter(|r| r.end > r.start)
        .flat_map(move |r| (r.start >> chunk_bits)..=((r.end - 1) >> chunk_bits))
        .filter(move |&c| {
            let new = last.is_none_or(|l| c > l);
            last = Some(last.map_or(c, |l: u64| l.max(c)));
            new
        })
}

/// Blocks stored for chunk `c` of a file of `size` bytes (the last chunk may be short).
fn chunk_blocks(c: u64, chunk_bits: u32, size: u64, blkszbits: u8) -> u64 {
    let len = (1u64 << chunk_bits).min(size - (c << chunk_bits));
    len.div_ceil(1 << blkszbits)
}

/// The cheapest chunking of a file of `size` bytes with data in `ranges`, or `None` when it
/// would cost at least its size (what it costs flat, with an inline tail): a dense file stays
/// as it is.
pub fn plan(ranges: &[Range<u64>], size: u64, blkszbits: u8) -> Option<Plan> {
    let bs = 1u64 << blkszbits;
    let mut best: Option<(u64, u8)> = None;
    for bits in 0..=crate::format::chunk::BLKBITS_MASK as u8 {
        let chunk_bits = blkszbits as u32 + bits as u32;
        if chunk_bits >= 63 {
            break;
        }
        let chunks = size.div_ceil(1 << chunk_bits);
        let stored: u64 = touched(ranges, chunk_bits)
            .map(|c| chunk_blocks(c, chunk_bits, size, blkszbits))
            .sum();
        let cost = stored * bs + 4 * chunks;
        if best.is_none_or(|(b, _)| cost < b) {
            best = Some((cost, bits));
        }
        if chunks == 1 {
            break;
        }
    }
    let (_, bits) = best.filter(|&(cost, _)| cost < size)?;
    let chunk_bits = blkszbits as u32 + bits as u32;
    let mut data = vec![false; size.div_ceil(1 << chunk_bits) as usize];
    for c in touched(ranges, chunk_bits) {
        data[c as usize] = true;
    }
    Some(Plan { bits, data })
}

/// A sparse file's chunks with their blocks reserved: per chunk, its first block or `None`
/// for a hole.
#[derive(Debug, Clone)]
pub struct Placement {
    pub bits: u8,
    pub starts: Vec<Option<u64>>,
}

/// Reserve the blocks of the data chunks of `plan` (one run, chunks in order).
pub fn place(img: &ImageFile, size: u64, plan: &Plan) -> Placement {
    let chunk_bits = img.blkszbits as u32 + plan.bits as u32;
    let blocks = |c: usize| chunk_blocks(c as u64, chunk_bits, size, img.blkszbits);
    let total: u64 = (0..plan.data.len())
        .filter(|&c| plan.data[c])
        .map(blocks)
        .sum();
    let mut next = if total > 0 { img.alloc(total) } else { 0 };
    let starts = plan
        .data
        .iter()
        .enumerate()
        .map(|(c, &d)| {
            d.then(|| {
                let at = next;
                next += blocks(c);
                at
            })
        })
        .collect();
    Placement {
        bits: plan.bits,
        starts,
    }
}

/// Zeros to hash for holes.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Read the data chunks of `f` into their reserved blocks and build the block map; hash the
/// whole logical content (holes as zeros) when `hash`. `f` must still be `size` bytes long.
pub fn store(
    img: &ImageFile,
    at: &Placement,
    size: u64,
    f: &File,
    hash: bool,
    progress: &dyn Progress,
    read_err: &dyn Fn(std::io::Error) -> BuildError,
) -> Result<Stored, BuildError> {
    let bs = img.block_size();
    let chunk = bs << at.bits;
    let mut hasher = hash.then(Sha256::new);
    let mut map = Vec::with_capacity(at.starts.len() * 4);
    let mut buf = vec![0u8; (chunk.min(1 << 20)) as usize];
    for (c, start) in at.starts.iter().enumerate() {
        let logical = c as u64 * chunk;
        let len = chunk.min(size - logical);
        let Some(start) = *start else {
            map.extend_from_slice(&NULL_ADDR.to_le_bytes());
            if let Some(h) = hasher.as_mut() {
                let mut left = len;
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    h.update(&ZEROS[..n]);
                    left -= n as u64;
                }
            }
            progress.advance(len);
            continue;
        };
        let addr = u32::try_from(start)
            .ok()
            .filter(|&b| b != NULL_ADDR)
            .ok_or(BuildError::TooMany("blocks"))?;
        map.extend_from_slice(&addr.to_le_bytes());
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..want], logical + done)
                .map_err(|e| super::file_data::short_read(e, read_err))?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..want]);
            }
            let padded = want.next_multiple_of(bs as usize);
            buf[want..padded].fill(0);
            img.write_at(&buf[..padded], start * bs + done)?;
            done += want as u64;
            progress.advance(want as u64);
        }
    }
    let mut extra = [0u8; 1];
    if f.read_at(&mut extra, size).map_err(read_err)? != 0 {
        return Err(read_err(std::io::Error::other(
            "file grew while it was read",
        )));
    }
    let fingerprint = hasher.map(|h| crate::fingerprint::value_of_digest(&h.finalize().into()));
    Ok(Stored {
        chunks: Some(ChunkMap {
            format: at.bits as u16,
            map,
        }),
        fingerprint,
        ..Stored::default()
    })
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn holes_cost_map_entries_and_data_costs_its_chunks() {
        // All hole: one chunk covering the whole file.
        let p = plan(&[], 5 << 30, 12).unwrap();
        assert_eq!(p.data, vec![false]);
        assert!(5u64 << 30 <= 4096 << p.bits);
        // One block of data in the middle of 1 MiB: block-sized chunks, one stored.
        let p = plan(&[500_000..500_100], 1 << 20, 12).unwrap();
        assert_eq!((p.bits, p.data.iter().filter(|&&d| d).count()), (0, 1));
        assert!(p.data[500_000 / 4096]);
        // Data straddling a chunk boundary touches both chunks.
        let p = plan(&[4000..4200, 1 << 20..(1 << 20) + 1], 8 << 20, 12).unwrap();
        assert_eq!(
            touched(&[4000..4200, 4100..4300], 12).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert!(p.data.iter().filter(|&&d| d).count() >= 2);
        // Dense: no plan.
        assert!(plan(&[0..10_000], 10_000, 12).is_none());
        assert!(plan(&[0..4096, 4096..10_000], 10_000, 12).is_none());
        assert!(plan(&[], 3, 12).is_none());
        // A hole of one block in three is worth it: two blocks and a 12-byte map.
        assert_eq!(
            plan(&[0..4096, 8192..10_000], 10_000, 12).unwrap().data,
            [true, false, true]
        );
        // A small file all hole: 4 bytes of map instead of its tail.
        assert_eq!(plan(&[], 100, 12).unwrap().data, [false]);
        // Last chunk short: its blocks are only what the file has.
        assert_eq!(chunk_blocks(2, 13, 20_000, 12), 1);
    }
}
