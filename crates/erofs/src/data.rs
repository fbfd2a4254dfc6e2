//! File data: where each byte of an inode lives (flat plain, flat inline tail, chunk-based
//! block maps and chunk indexes with holes) and reading it. Compressed layouts are
//! dispatched to `read_compressed`, the one place the codecs plug in.

use crate::error::{Error, Result};
use crate::format::{ChunkIndex, NULL_ADDR, ZMapHeader, chunk, compr_alg, layout};
use crate::image::Image;
use crate::inode::{Inode, Space};
use zerocopy::FromBytes;

/// Where a run of a file's bytes is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phys {
    /// Reads as zeros.
    Hole,
    /// At this byte offset of the image.
    Image(u64),
    /// Inline after the inode (FLAT_INLINE tail); offset in the inode's metadata space
    /// (the image, or the metabox inode's data).
    Inline { offset: u64, in_metabox: bool },
}

/// A run of a file's bytes stored contiguously (or a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    pub len: u64,
    pub phys: Phys,
}

/// The extent containing `offset` (below the file size) of an uncompressed inode.
pub fn map(img: &Image, inode: &Inode, offset: u64) -> Result<Extent> {
    if offset >= inode.size {
        return Err(Error::WrongType {
            image: img.name().into(),
            nid: inode.nid,
            what: "no data mapped at or past the end of the file",
        });
    }
    match inode.layout {
        layout::FLAT_PLAIN | layout::FLAT_INLINE => map_flat(img, inode, offset),
        layout::CHUNK_BASED => map_chunk(img, inode, offset),
        _ => Err(compressed_error(img, inode)),
    }
}

fn check_in_image(img: &Image, inode: &Inode, what: &str, pos: u64, len: u64) -> Result<()> {
    let end = pos.checked_add(len);
    if end.is_none_or(|e| e > img.len()) {
        return Err(img.corrupt_nid(
            inode.nid,
            format!(
                "{what}: {len} bytes at offset {pos} run past the end of the {} byte image",
                img.len()
            ),
        ));
    }
    Ok(())
}

fn map_flat(img: &Image, inode: &Inode, offset: u64) -> Result<Extent> {
    let bs = img.superblock().block_size();
    let nblocks = inode.size.div_ceil(bs);
    let inline_tail = inode.layout == layout::FLAT_INLINE;
    let plain_end = (nblocks - inline_tail as u64) * bs;
    if offset < plain_end {
        let len = plain_end.min(inode.size);
        let Some(start) = inode.start_block else {
            // As the kernel: a plain inode without blocks reads as zeros.
            if !inline_tail {
                return Ok(Extent {
                    logical: 0,
                    len,
                    phys: Phys::Hole,
                });
            }
            return Err(img.corrupt_nid(
                inode.nid,
                format!("{len} bytes of data in blocks but no start block"),
            ));
        };
        let pos = start
            .checked_mul(bs)
            .ok_or_else(|| img.corrupt_nid(inode.nid, format!("start block {start} overflows")))?;
        check_in_image(img, inode, "data blocks", pos, len)?;
        return Ok(Extent {
            logical: 0,
            len,
            phys: Phys::Image(pos),
        });
    }
    let tail_len = inode.size - plain_end;
    let pos = inode
        .meta_end()
        .ok_or_else(|| img.corrupt_nid(inode.nid, "inline data offset overflows".into()))?;
    if pos % bs + tail_len > bs {
        return Err(img.corrupt_nid(
            inode.nid,
            format!(
                "inline tail of {tail_len} bytes at block offset {} crosses the {bs} byte block",
                pos % bs
            ),
        ));
    }
    Ok(Extent {
        logical: plain_end,
        len: tail_len,
        phys: Phys::Inline {
            offset: pos,
            in_metabox: inode.space == Space::Metabox,
        },
    })
}

fn map_chunk(img: &Image, inode: &Inode, offset: u64) -> Result<Extent> {
    let sb = img.superblock();
    let chunk_bits = sb.block_bits as u32 + (inode.chunk_format & chunk::BLKBITS_MASK) as u32;
    let chunk_nr = offset >> chunk_bits;
    let logical = chunk_nr << chunk_bits;
    let len = (1u64 << chunk_bits).min(inode.size - logical);
    let indexes = inode.chunk_format & chunk::INDEXES != 0;
    let unit: u64 = if indexes { 8 } else { 4 };
    let base = inode
        .meta_end()
        .and_then(|e| e.checked_next_multiple_of(unit))
        .ok_or_else(|| img.corrupt_nid(inode.nid, "chunk index offset overflows".into()))?;
    let pos = chunk_nr
        .checked_mul(unit)
        .and_then(|o| o.checked_add(base))
        .ok_or_else(|| img.corrupt_nid(inode.nid, "chunk index offset overflows".into()))?;
    let mut raw = [0u8; 8];
    let raw = &mut raw[..unit as usize];
    img.read_meta(inode.space, pos, raw).map_err(|e| {
        img.corrupt_nid(
            inode.nid,
            format!("chunk {chunk_nr}: index unreadable: {e}"),
        )
    })?;
    let block = if indexes {
        let ci = ChunkIndex::read_from_bytes(raw).expect("sized");
        let mask: u64 = if inode.chunk_format & chunk::BLOCKS_48BIT != 0 {
            (1 << 48) - 1
        } else {
            (1 << 32) - 1
        };
        let start = ((ci.startblk_hi.get() as u64) << 32 | ci.startblk_lo.get() as u64) & mask;
        if (start ^ NULL_ADDR as u64) & mask == 0 {
            None
        } else {
            // The kernel masks the device id with the extra-device count: with none, it
            // is ignored.
            let devices = sb.extra_devices as u32 + 1;
            let dev_mask = (devices.next_power_of_two() - 1) as u16;
            let dev = ci.device_id.get() & dev_mask;
            if dev != 0 {
                return Err(Error::Unsupported {
                    image: img.name().into(),
                    at: format!("nid {}", inode.nid),
                    what: format!("chunk {chunk_nr} on extra device {dev} (multi-device images)"),
                });
            }
            Some(start)
        }
    } else {
        let b = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
        (b != NULL_ADDR).then_some(b as u64)
    };
    let phys = match block {
        None => Phys::Hole,
        Some(b) => {
            let p = b.checked_mul(sb.block_size()).ok_or_else(|| {
                img.corrupt_nid(inode.nid, format!("chunk {chunk_nr}: block {b} overflows"))
            })?;
            check_in_image(img, inode, &format!("chunk {chunk_nr}"), p, len)?;
            Phys::Image(p)
        }
    };
    Ok(Extent { logical, len, phys })
}

/// Read file data at `offset` into `buf`; returns the bytes read (short only at EOF).
pub fn read_at(img: &Image, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
    if offset >= inode.size || buf.is_empty() {
        return Ok(0);
    }
    let want = (buf.len() as u64).min(inode.size - offset) as usize;
    let buf = &mut buf[..want];
    match inode.layout {
        layout::FLAT_PLAIN | layout::FLAT_INLINE | layout::CHUNK_BASED => {}
        _ => return read_compressed(img, inode, offset, buf),
    }
    let mut done = 0usize;
    while done < want {
        let pos = offset + done as u64;
        let ext = map(img, inode, pos)?;
        let skip = pos - ext.logical;
        let n = ((ext.len - skip) as usize).min(want - done);
        if n == 0 {
            return Err(img.corrupt_nid(inode.nid, format!("empty extent at offset {pos}")));
        }
        let out = &mut buf[done..done + n];
        match ext.phys {
            Phys::Hole => out.fill(0),
            Phys::Image(p) => img.read_raw(p + skip, out)?,
            Phys::Inline { offset, in_metabox } => {
                let space = if in_metabox {
                    Space::Metabox
                } else {
                    Space::Image
                };
                img.read_meta(space, offset + skip, out)?
            }
        }
        done += n;
    }
    Ok(done)
}

/// Every extent of an uncompressed inode, neighbours on disk merged (for `inspect`).
/// At most `limit` extents are returned; the bool says whether more exist.
pub fn extents(img: &Image, inode: &Inode, limit: usize) -> Result<(Vec<Extent>, bool)> {
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = 0;
    while pos < inode.size {
        let e = map(img, inode, pos)?;
        pos = e.logical + e.len;
        if let Some(last) = out.last_mut() {
            let contiguous = match (last.phys, e.phys) {
                (Phys::Hole, Phys::Hole) => true,
                (Phys::Image(a), Phys::Image(b)) => a + last.len == b,
                _ => false,
            };
            if contiguous {
                last.len += e.len;
                continue;
            }
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(e);
    }
    Ok((out, false))
}

/// The compression algorithm of a compressed inode's first head lcluster (from its map
/// header), by name.
pub fn compression_algorithm(img: &Image, inode: &Inode) -> Result<&'static str> {
    let pos = inode
        .meta_end()
        .and_then(|e| e.checked_next_multiple_of(8))
        .ok_or_else(|| img.corrupt_nid(inode.nid, "map header offset overflows".into()))?;
    let mut raw = [0u8; 8];
    img.read_meta(inode.space, pos, &mut raw)?;
    let h = ZMapHeader::read_from_bytes(&raw).expect("sized");
    Ok(compr_alg::name(h.h_algorithmtype & 0xf))
}

fn compressed_error(img: &Image, inode: &Inode) -> Error {
    match compression_algorithm(img, inode) {
        Ok(algorithm) => Error::CompressedUnsupported {
            image: img.name().into(),
            nid: inode.nid,
            algorithm,
        },
        Err(e) => e,
    }
}

/// Compressed layouts (COMPRESSED_FULL, COMPRESSED_COMPACT). The codecs replace this.
fn read_compressed(img: &Image, inode: &Inode, _offset: u64, _buf: &mut [u8]) -> Result<usize> {
    Err(compressed_error(img, inode))
}
