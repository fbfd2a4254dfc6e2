//! Reading compressed inodes: map an offset to its extent ([`crate::zmap`]), decode the
//! extent's pcluster once with the image's codec for that algorithm, keep it in a bounded
//! cache, copy out. Also the per-algorithm configs that follow the superblock.

use crate::codec::{self, Algorithm, Codec, Deflate, Lz4, Lzma, Zstd};
use crate::error::{Error, Result};
use crate::format::{SUPER_OFFSET, SUPERBLOCK_SIZE, incompat};
use crate::image::Image;
use crate::inode::Inode;
use crate::zmap::{Format, MAX_EXTENT, MAX_PCLUSTER, Place, ZExtent, ZMap};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Decoded extents kept per image (bytes).
const CACHE_BYTES: usize = 32 << 20;
/// Decoded inode maps kept per image.
const CACHE_MAPS: usize = 1024;
/// The kernel looks for the start of a zero-padded stream within the first page only.
const PAGE: u64 = 4096;

/// The decoders an image's superblock enables, one per algorithm id.
#[derive(Debug, Default)]
pub(crate) struct Decoders {
    by_id: [Option<Box<dyn Codec>>; 4],
}

impl Decoders {
    /// Read the per-algorithm configs after the superblock (COMPR_CFGS), or LZ4 alone.
    pub fn load(img: &Image) -> Result<Decoders> {
        let sb = img.superblock();
        let mut d = Decoders::default();
        if !sb.has_incompat(incompat::COMPR_CFGS) {
            d.by_id[Algorithm::Lz4.id() as usize] = Some(Box::new(Lz4::fast()));
            return Ok(d);
        }
        let bad = |what: String| img.corrupt_at("compression configs", what);
        let algs = sb.available_compr_algs;
        if algs >> 4 != 0 {
            return Err(Error::Unsupported {
                image: img.name().into(),
                at: "superblock".into(),
                what: format!("compression algorithm bitmap {algs:#x}"),
            });
        }
        let mut pos = SUPER_OFFSET + SUPERBLOCK_SIZE as u64 + sb.sb_extslots as u64 * 16;
        for alg in Algorithm::ALL {
            if algs & (1 << alg.id()) == 0 {
                continue;
            }
            pos = pos.next_multiple_of(4);
            let mut len = [0u8; 2];
            img.read_raw(pos, &mut len)?;
            let len = match u16::from_le_bytes(len) {
                0 => 1 << 16,
                n => n as usize,
            };
            let mut cfg = vec![0u8; len];
            img.read_raw(pos + 2, &mut cfg)?;
            pos += 2 + len as u64;
            let need = |n: usize| {
                if len < n {
                    Err(bad(format!("{alg} config of {len} bytes, expected {n}")))
                } else {
                    Ok(())
                }
            };
            let codec: Box<dyn Codec> = match alg {
                Algorithm::Lz4 => {
                    need(4)?;
                    Box::new(Lz4::fast())
                }
                Algorithm::Lzma => {
                    need(6)?;
                    let dict = u32::from_le_bytes(cfg[..4].try_into().expect("4 bytes"));
                    let format = u16::from_le_bytes([cfg[4], cfg[5]]);
                    if format != 0 {
                        return Err(bad(format!("unknown lzma format {format}")));
                    }
                    let dict = if dict == 0 { Lzma::MAX_DICT_SIZE } else { dict };
                    Box::new(Lzma::new(Lzma::DEFAULT_LEVEL, dict).map_err(bad)?)
                }
                Algorithm::Deflate => {
                    need(1)?;
                    if cfg[0] > 15 {
                        return Err(bad(format!("deflate window bits {} above 15", cfg[0])));
                    }
                    Box::new(Deflate::new(Deflate::DEFAULT_LEVEL).map_err(bad)?)
                }
                Algorithm::Zstd => {
                    need(2)?;
                    if cfg[0] != 0 {
                        return Err(bad(format!("unknown zstd format {}", cfg[0])));
                    }
                    let wlog = cfg[1] as u32 + 10;
                    Box::new(Zstd::new(Zstd::DEFAULT_LEVEL, wlog).map_err(bad)?)
                }
            };
            d.by_id[alg.id() as usize] = Some(codec);
        }
        Ok(d)
    }

    fn get(&self, alg: Algorithm) -> Option<&dyn Codec> {
        self.by_id[alg.id() as usize].as_deref()
    }
}

/// A decoded extent and the stamp of its last use.
type Entry = (Arc<Vec<u8>>, u64);

/// Decoded extents by (nid, extent start), least recently used evicted first.
#[derive(Debug, Default)]
struct Lru {
    /// Key → decoded bytes and the stamp of its last use.
    map: HashMap<(u64, u64), Entry>,
    /// Stamp of last use → key, oldest first.
    order: BTreeMap<u64, (u64, u64)>,
    bytes: usize,
    clock: u64,
}

impl Lru {
    fn get(&mut self, key: (u64, u64)) -> Option<Arc<Vec<u8>>> {
        let (value, used) = self.map.get_mut(&key)?;
        self.order.remove(used);
        self.clock += 1;
        *used = self.clock;
        self.order.insert(self.clock, key);
        Some(value.clone())
    }

    fn insert(&mut self, key: (u64, u64), value: Arc<Vec<u8>>) {
        if value.len() > CACHE_BYTES / 4 {
            return;
        }
        self.clock += 1;
        self.bytes += value.len();
        if let Some((old, used)) = self.map.insert(key, (value, self.clock)) {
            self.bytes -= old.len();
            self.order.remove(&used);
        }
        self.order.insert(self.clock, key);
        while self.bytes > CACHE_BYTES {
            let (_, oldest) = self.order.pop_first().expect("non-empty while over budget");
            let (v, _) = self.map.remove(&oldest).expect("present");
            self.bytes -= v.len();
        }
    }
}

/// Per-image state for compressed reads: decoders, inode maps and decoded extents.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    decoders: OnceLock<std::result::Result<Decoders, String>>,
    packed: OnceLock<std::result::Result<Inode, String>>,
    maps: Mutex<HashMap<u64, Arc<ZMap>>>,
    /// The last extent mapped per inode: sequential reads skip the map walk.
    last: Mutex<HashMap<u64, ZExtent>>,
    extents: Mutex<Lru>,
    /// Pclusters decoded so far (a cache miss each).
    decoded: std::sync::atomic::AtomicU64,
}

impl Cache {
    /// How many pclusters were decoded since the image was opened.
    pub fn pclusters_decoded(&self) -> u64 {
        self.decoded.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn decoders(&self, img: &Image) -> Result<&Decoders> {
        self.decoders
            .get_or_init(|| Decoders::load(img).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| img.corrupt_at("compression configs", e.clone()))
    }

    fn packed_inode(&self, img: &Image) -> Result<&Inode> {
        self.packed
            .get_or_init(|| {
                let nid = img.superblock().packed_nid;
                img.inode(nid)
                    .map_err(|e| format!("packed inode {nid}: {e}"))
            })
            .as_ref()
            .map_err(|e| img.corrupt_at("packed inode", e.clone()))
    }

    fn zmap(&self, img: &Image, inode: &Inode) -> Result<Arc<ZMap>> {
        if let Some(z) = self.maps.lock().expect("not poisoned").get(&inode.nid) {
            return Ok(z.clone());
        }
        let z = Arc::new(ZMap::load(img, inode)?);
        let mut maps = self.maps.lock().expect("not poisoned");
        if maps.len() >= CACHE_MAPS {
            maps.clear();
            self.last.lock().expect("not poisoned").clear();
        }
        maps.insert(inode.nid, z.clone());
        Ok(z)
    }

    fn extent(&self, img: &Image, inode: &Inode, z: &ZMap, pos: u64) -> Result<ZExtent> {
        if let Some(e) = self.last.lock().expect("not poisoned").get(&inode.nid)
            && e.la <= pos
            && pos < e.end()
        {
            return Ok(*e);
        }
        let e = z.map(img, pos)?;
        self.last.lock().expect("not poisoned").insert(inode.nid, e);
        Ok(e)
    }
}

/// Read `buf.len()` bytes (already clipped to the file size) at `offset` of a compressed
/// inode.
pub(crate) fn read(img: &Image, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let cache = img.zcache();
    let z = cache.zmap(img, inode)?;
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let ext = cache.extent(img, inode, &z, pos)?;
        let skip = pos - ext.la;
        let n = ((ext.end() - pos) as usize).min(buf.len() - done);
        let out = &mut buf[done..done + n];
        match ext.place {
            Place::Hole => out.fill(0),
            Place::Fragment { offset: base } => read_fragment(img, inode, &ext, base + skip, out)?,
            Place::Image { .. } | Place::Inline { .. } => {
                let key = (inode.nid, ext.la);
                let hit = cache.extents.lock().expect("not poisoned").get(key);
                let data = match hit {
                    Some(d) => d,
                    None => {
                        let d = Arc::new(decode(img, inode, &ext)?);
                        cache
                            .decoded
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        cache
                            .extents
                            .lock()
                            .expect("not poisoned")
                            .insert(key, d.clone());
                        d
                    }
                };
                out.copy_from_slice(&data[skip as usize..skip as usize + n]);
            }
        }
        done += n;
    }
    Ok(done)
}

fn read_fragment(img: &Image, inode: &Inode, ext: &ZExtent, at: u64, out: &mut [u8]) -> Result<()> {
    let packed = img.zcache().packed_inode(img)?;
    if packed.nid == inode.nid {
        return Err(img.corrupt_nid(
            inode.nid,
            format!(
                "the packed inode's extent at {} is a fragment of itself",
                ext.la
            ),
        ));
    }
    let got = img.read_at(packed, at, out)?;
    if got != out.len() {
        return Err(img.corrupt_nid(
            inode.nid,
            format!(
                "fragment of {} bytes at packed inode offset {at} runs past its {} bytes",
                out.len(),
                packed.size
            ),
        ));
    }
    Ok(())
}

/// Decode one whole extent.
fn decode(img: &Image, inode: &Inode, ext: &ZExtent) -> Result<Vec<u8>> {
    let bad = |what: String| {
        img.corrupt_nid(
            inode.nid,
            format!("extent at offset {} ({} bytes): {what}", ext.la, ext.llen),
        )
    };
    let (raw_pos, plen) = match ext.place {
        Place::Image { pa, plen } | Place::Inline { pos: pa, plen } => (pa, plen),
        _ => unreachable!("only stored pclusters are decoded"),
    };
    if plen == 0 || plen > 2 * MAX_PCLUSTER {
        return Err(bad(format!("pcluster size {plen} out of range")));
    }
    if ext.llen > MAX_EXTENT {
        return Err(bad(format!(
            "decoded size above the {MAX_EXTENT} byte maximum"
        )));
    }
    let mut raw = vec![0u8; plen as usize];
    match ext.place {
        Place::Inline { .. } => img.read_meta(inode.space, raw_pos, &mut raw),
        _ => img.read_raw(raw_pos, &mut raw),
    }
    .map_err(|e| bad(format!("pcluster at {raw_pos} unreadable: {e}")))?;
    let llen = ext.llen as usize;
    let mut out = vec![0u8; llen];
    match ext.format {
        Format::Shifted | Format::Interlaced => {
            if llen > raw.len() {
                return Err(bad(format!("plain pcluster of {plen} bytes is too short")));
            }
            if ext.format == Format::Shifted {
                out.copy_from_slice(&raw[..llen]);
            } else {
                // The extent's first bytes sit at its in-block offset within the last
                // block of the pcluster; the rest continues from the pcluster's start.
                let bs = img.superblock().block_size();
                let rest_of_block = (bs - ext.la % bs) as usize;
                let from = raw.len().checked_sub(rest_of_block).ok_or_else(|| {
                    bad(format!(
                        "the inode is marked INTERLACED but this plain pcluster has only \
                         {plen} bytes: interlacing needs the {rest_of_block} bytes to the end \
                         of its block (an inline tail stored unrotated?)"
                    ))
                })?;
                let head = rest_of_block.min(llen);
                out[..head].copy_from_slice(&raw[from..from + head]);
                out[head..].copy_from_slice(&raw[..llen - head]);
            }
        }
        Format::Codec(alg) => {
            let codec = img
                .zcache()
                .decoders(img)?
                .get(alg)
                .ok_or_else(|| bad(format!("{alg} is not enabled in the superblock")))?;
            let padded =
                alg != Algorithm::Lz4 || img.superblock().has_incompat(incompat::ZERO_PADDING);
            let start = if padded {
                let window = (PAGE - raw_pos % PAGE) as usize;
                codec::stream_start(alg, &raw, window)
                    .map_err(|e| bad(format!("pcluster at {raw_pos}: {e}")))?
            } else {
                0
            };
            // Without zero padding an LZ4 stream is followed by garbage: stop when full.
            let partial = ext.partial || !padded;
            codec
                .decompress(&raw[start..], &mut out, partial)
                .map_err(|e| bad(format!("pcluster at {raw_pos} ({plen} bytes): {e}")))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_keeps_its_budget_and_evicts_the_least_recently_used() {
        let mut lru = Lru::default();
        let chunk = CACHE_BYTES / 8;
        for i in 0..8 {
            lru.insert((1, i), Arc::new(vec![0u8; chunk]));
        }
        assert_eq!(lru.bytes, CACHE_BYTES);
        // Use the oldest: the next one in age goes first.
        assert!(lru.get((1, 0)).is_some());
        lru.insert((2, 0), Arc::new(vec![0u8; chunk]));
        assert!(lru.bytes <= CACHE_BYTES);
        assert!(lru.get((1, 1)).is_none());
        assert!(lru.get((1, 0)).is_some());
        // Replacing a key does not count it twice; oversized values are not kept.
        lru.insert((2, 0), Arc::new(vec![0u8; chunk]));
        assert_eq!(lru.map.len(), lru.order.len());
        lru.insert((3, 0), Arc::new(vec![0u8; CACHE_BYTES / 2]));
        assert!(lru.get((3, 0)).is_none());
        assert_eq!(
            lru.bytes,
            lru.map.values().map(|(v, _)| v.len()).sum::<usize>()
        );
    }
}
