//! The compressed extent map: which physical cluster (pcluster) holds a logical offset of a
//! compressed inode, and how it is encoded.
//!
//! Three on-disk forms, all after the 8-byte map header that follows the inode and its
//! inline xattrs (8-byte aligned):
//! - full indexes (COMPRESSED_FULL): one 8-byte [`LclusterIndex`] per logical cluster;
//! - compact indexes (COMPRESSED_COMPACT): packs of 2 (4B) or 16 (2B) lclusters sharing one
//!   32-bit start block, each lcluster a bit field of offset/delta and type;
//! - extent records (COMPRESSED_FULL + `EXTENTS`, the 48-bit layout): byte-addressed extents
//!   of 4, 8, 16 or 32 bytes each.
//!
//! In the lcluster forms a HEAD lcluster starts an extent at `clusterofs` within it and names
//! its pcluster; NONHEAD lclusters carry the distance back to their head (`delta[0]`) and
//! forward to the next head (`delta[1]`); the first NONHEAD of a big pcluster carries its
//! block count (CBLKCNT) instead. The last extent may be inline after the index
//! (ztailpacking) or a fragment of the packed inode. Every value read is checked before use:
//! a corrupt map is an error naming the inode and the offset, never a panic or a loop.

use crate::codec::Algorithm;
use crate::error::{Error, Result};
use crate::format::{incompat, layout, lcluster, zadvise};
use crate::image::Image;
use crate::inode::{Inode, Space};

/// `h_clusterbits` bit 7: the whole file is one fragment of the packed inode.
const FRAGMENT_INODE_BIT: u8 = 0x80;
/// Largest pcluster the kernel decodes (`Z_EROFS_PCLUSTER_MAX_SIZE`), and twice that for
/// byte-addressed extents (`Z_EROFS_EXTENT_PLEN_MASK`).
pub(crate) const MAX_PCLUSTER: u64 = 1 << 20;
const EXTENT_PLEN_MASK: u32 = ((1 << 20) << 1) - 1;
const EXTENT_PLEN_PARTIAL: u32 = 1 << 27;
const EXTENT_PLEN_FMT_BIT: u32 = 28;
/// Largest decoded extent the kernel accepts (`Z_EROFS_PCLUSTER_MAX_DSIZE`).
pub(crate) const MAX_EXTENT: u64 = 12 << 20;

/// How a pcluster's bytes become file data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Compressed with this algorithm.
    Codec(Algorithm),
    /// Stored plain: the extent's bytes from the pcluster's start.
    Shifted,
    /// Stored plain, rotated so the extent's first byte sits at its in-block offset: the
    /// first `block − la % block` bytes are at the pcluster's end, the rest from its start.
    Interlaced,
}

/// Where an extent's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A pcluster at this image byte offset, `plen` bytes long.
    Image { pa: u64, plen: u64 },
    /// The inline tail pcluster after the index, in the inode's metadata space.
    Inline { pos: u64, plen: u64 },
    /// In the packed inode from this offset (the extent's first byte).
    Fragment { offset: u64 },
    /// Not stored: reads as zeros.
    Hole,
}

/// One extent of a compressed inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZExtent {
    /// Logical start and length (the whole extent, up to the next head or EOF).
    pub la: u64,
    pub llen: u64,
    pub place: Place,
    pub format: Format,
    /// The pcluster decodes to more than this extent (dedupe): decode a prefix.
    pub partial: bool,
}

impl ZExtent {
    pub fn end(&self) -> u64 {
        self.la + self.llen
    }
}

/// The index form of an inode.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Full indexes starting at `base`.
    Full { base: u64 },
    /// Compact indexes starting at `ebase` (right after the map header).
    Compact { ebase: u64 },
    /// Extent records of `recsz` bytes from `base`; `count` of them (16/32-byte records).
    Extents { base: u64, recsz: u64, count: u64 },
    /// The whole file is one fragment.
    WholeFragment,
}

/// One decoded lcluster.
#[derive(Debug, Clone, Copy, Default)]
struct Lcluster {
    lcn: u64,
    ty: u8,
    /// HEAD/PLAIN: where the extent starts in this lcluster.
    clusterofs: u64,
    /// NONHEAD: distance back to the head, and forward to the next head (when looked up).
    delta: [u64; 2],
    /// HEAD/PLAIN: start block of the pcluster.
    pblk: u64,
    /// First NONHEAD of a big pcluster: its block count.
    cblkcnt: Option<u64>,
    /// HEAD (full indexes): partially referenced pcluster.
    partial: bool,
    /// Where the index after this lcluster's index (or pack) starts.
    next_pack: u64,
}

/// The decoded map header of one compressed inode, and what it takes to map offsets.
#[derive(Debug)]
pub(crate) struct ZMap {
    nid: u64,
    size: u64,
    space: Space,
    block_bits: u32,
    advise: u16,
    algs: [u8; 2],
    lclusterbits: u32,
    kind: Kind,
    /// FRAGMENT: offset of the tail (or whole file) in the packed inode.
    fragment_off: u64,
    /// ztailpacking: size and position of the inline tail pcluster.
    idata_size: u64,
    idata_pos: u64,
    /// The head lcluster of the last extent (ztailpacking / fragment tails).
    tail_headlcn: u64,
    /// Which algorithms the superblock enables.
    available_algs: u16,
    /// 4-byte extent records: start offset of every record's pcluster, plus the end.
    prefix: Vec<u64>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ZMap {
    /// Read the map header of a compressed inode (and, for ztailpacking and fragment tails,
    /// find its last extent as the kernel does).
    pub fn load(img: &Image, inode: &Inode) -> Result<ZMap> {
        let sb = img.superblock();
        let nid = inode.nid;
        let bad = |what: String| img.corrupt_nid(nid, what);
        let hpos = inode
            .meta_end()
            .and_then(|e| e.checked_next_multiple_of(8))
            .ok_or_else(|| bad("map header offset overflows".into()))?;
        let mut h = [0u8; 8];
        img.read_meta(inode.space, hpos, &mut h)
            .map_err(|e| bad(format!("map header unreadable: {e}")))?;
        let available_algs = if sb.has_incompat(incompat::COMPR_CFGS) {
            sb.available_compr_algs
        } else {
            1 << Algorithm::Lz4.id()
        };
        let mut z = ZMap {
            nid,
            size: inode.size,
            space: inode.space,
            block_bits: sb.block_bits as u32,
            advise: 0,
            algs: [0, 0],
            lclusterbits: sb.block_bits as u32,
            kind: Kind::WholeFragment,
            fragment_off: 0,
            idata_size: 0,
            idata_pos: 0,
            tail_headlcn: 0,
            available_algs,
            prefix: Vec::new(),
        };
        if h[7] & FRAGMENT_INODE_BIT != 0 {
            z.advise = zadvise::FRAGMENT_PCLUSTER;
            z.fragment_off = u64::from_le_bytes(h) ^ (1 << 63);
            return Ok(z);
        }
        z.advise = le16(&h, 4);
        z.lclusterbits = z.block_bits + (h[7] & 15) as u32;
        let extents = inode.layout == layout::COMPRESSED_FULL && z.advise & zadvise::EXTENTS != 0;
        if extents {
            let count = le32(&h, 0) as u64 | (le16(&h, 6) as u64) << 32;
            let recsz = 4u64 << ((z.advise >> 1) & 3);
            if z.lclusterbits > 30 {
                return Err(bad(format!("lcluster size 2^{} too large", z.lclusterbits)));
            }
            let base = (hpos + 8).next_multiple_of(recsz);
            let bs = 1u64 << z.block_bits;
            // Every extent but the last covers at least one block: more records than
            // blocks (plus one) cannot be right, and this bounds the binary search.
            if recsz > 8 && count > inode.size.div_ceil(bs) + 1 {
                return Err(bad(format!(
                    "{count} extent records for a {} byte file",
                    inode.size
                )));
            }
            z.kind = Kind::Extents { base, recsz, count };
            if recsz == 4 {
                z.prefix = z.load_prefix(img, base)?;
            }
            return Ok(z);
        }
        z.algs = [h[6] & 15, h[6] >> 4];
        for (i, &a) in z.algs.iter().enumerate() {
            if Algorithm::from_id(a).is_none() {
                return Err(bad(format!("HEAD{} algorithm {a} is unknown", i + 1)));
            }
        }
        if z.advise & zadvise::FRAGMENT_PCLUSTER != 0 {
            z.fragment_off = le32(&h, 0) as u64;
        } else if z.advise & zadvise::INLINE_PCLUSTER != 0 {
            z.idata_size = le16(&h, 2) as u64;
        }
        let big = zadvise::BIG_PCLUSTER_1 | zadvise::BIG_PCLUSTER_2;
        if z.advise & big != 0 && !sb.has_incompat(incompat::BIG_PCLUSTER) {
            return Err(bad(
                "big pclusters without the superblock's BIG_PCLUSTER feature".into(),
            ));
        }
        match inode.layout {
            layout::COMPRESSED_FULL => {
                if z.lclusterbits > 16 {
                    return Err(bad(format!("lcluster size 2^{} too large", z.lclusterbits)));
                }
                z.kind = Kind::Full { base: hpos + 16 };
            }
            _ => {
                if (z.advise & zadvise::BIG_PCLUSTER_1 == 0)
                    != (z.advise & zadvise::BIG_PCLUSTER_2 == 0)
                {
                    return Err(bad(
                        "compact indexes with inconsistent HEAD1/HEAD2 big pcluster bits".into(),
                    ));
                }
                if z.lclusterbits > 14 {
                    return Err(bad(format!(
                        "lcluster size 2^{} too large for compact indexes",
                        z.lclusterbits
                    )));
                }
                z.kind = Kind::Compact { ebase: hpos + 8 };
            }
        }
        if (z.idata_size != 0 || z.advise & zadvise::FRAGMENT_PCLUSTER != 0) && inode.size > 0 {
            z.find_tail(img)?;
        }
        Ok(z)
    }

    fn bad(&self, img: &Image, what: String) -> Error {
        img.corrupt_nid(self.nid, what)
    }

    fn lclusters(&self) -> u64 {
        self.size.div_ceil(1 << self.lclusterbits)
    }

    /// Locate the last extent: the inline tail sits right after the index of the last
    /// lcluster; a fragment tail of a full index keeps its high 32 bits in the head's block.
    fn find_tail(&mut self, img: &Image) -> Result<()> {
        let ofs = self.size - 1;
        let m = self.load_lcluster(img, ofs >> self.lclusterbits, false)?;
        if self.idata_size != 0 {
            self.idata_pos = m.next_pack;
        }
        let head = self.head_of(img, m, ofs)?;
        self.tail_headlcn = head.lcn;
        if self.advise & zadvise::FRAGMENT_PCLUSTER != 0 && matches!(self.kind, Kind::Full { .. }) {
            self.fragment_off |= head.pblk << 32;
        }
        Ok(())
    }

    /// The extent containing logical offset `la` (below the file size).
    pub fn map(&self, img: &Image, la: u64) -> Result<ZExtent> {
        debug_assert!(la < self.size);
        let ext = match self.kind {
            Kind::WholeFragment => self.whole_fragment(),
            Kind::Extents { base, recsz, count } => {
                self.map_extents(img, la, base, recsz, count)?
            }
            Kind::Full { .. } | Kind::Compact { .. } => {
                if self.advise & zadvise::FRAGMENT_PCLUSTER != 0 && self.tail_headlcn == 0 {
                    self.whole_fragment()
                } else {
                    self.map_lclusters(img, la)?
                }
            }
        };
        if ext.la > la || ext.end() <= la || ext.end() > self.size {
            return Err(self.bad(
                img,
                format!(
                    "offset {la}: extent map gives {}..{} in a {} byte file",
                    ext.la,
                    ext.end(),
                    self.size
                ),
            ));
        }
        Ok(ext)
    }

    fn whole_fragment(&self) -> ZExtent {
        ZExtent {
            la: 0,
            llen: self.size,
            place: Place::Fragment {
                offset: self.fragment_off,
            },
            format: Format::Shifted,
            partial: false,
        }
    }

    /// Full or compact lcluster indexes.
    fn map_lclusters(&self, img: &Image, la: u64) -> Result<ZExtent> {
        let lcb = self.lclusterbits;
        let m = self.load_lcluster(img, la >> lcb, false)?;
        let head = self.head_of(img, m, la)?;
        let start = head.lcn << lcb | head.clusterofs;
        let (end, next_head) = self.extent_end(img, &head)?;
        if end <= start {
            return Err(self.bad(
                img,
                format!("offset {la}: extent at lcluster {} is empty", head.lcn),
            ));
        }
        let llen = end - start;
        let in_tail = head.lcn == self.tail_headlcn;
        let place = if self.idata_size != 0 && in_tail {
            let bs = 1u64 << self.block_bits;
            if self.idata_pos % bs + self.idata_size > bs {
                return Err(self.bad(
                    img,
                    format!(
                        "inline tail pcluster of {} bytes at block offset {} crosses a block",
                        self.idata_size,
                        self.idata_pos % bs
                    ),
                ));
            }
            Place::Inline {
                pos: self.idata_pos,
                plen: self.idata_size,
            }
        } else if self.advise & zadvise::FRAGMENT_PCLUSTER != 0 && in_tail {
            Place::Fragment {
                offset: self.fragment_off,
            }
        } else {
            let blocks = self.compressed_blocks(img, &head)?;
            let pa = head
                .pblk
                .checked_shl(self.block_bits)
                .filter(|p| p >> self.block_bits == head.pblk);
            let pa = pa.ok_or_else(|| {
                self.bad(
                    img,
                    format!("offset {la}: start block {} overflows", head.pblk),
                )
            })?;
            Place::Image {
                pa,
                plen: blocks << self.block_bits,
            }
        };
        if let (lcluster::PLAIN, Place::Image { plen, .. }) = (head.ty, place) {
            // The kernel maps a queried NONHEAD lcluster of a plain extent up to that
            // lcluster's end, which must stay within the plain pcluster.
            let last_nonhead = next_head.map_or(self.lclusters() - 1, |h| h - 1);
            if last_nonhead > head.lcn && ((last_nonhead + 1) << lcb) - start > plen {
                return Err(self.bad(
                    img,
                    format!(
                        "offset {la}: plain extent at {start} runs through lcluster \
                         {last_nonhead}, past its {plen} byte pcluster"
                    ),
                ));
            }
        }
        let format = match head.ty {
            lcluster::PLAIN => {
                if self.advise & zadvise::INTERLACED_PCLUSTER != 0 {
                    Format::Interlaced
                } else {
                    Format::Shifted
                }
            }
            t => {
                let alg = self.algs[(t == lcluster::HEAD2) as usize];
                if self.available_algs & (1 << alg) == 0 {
                    return Err(self.bad(
                        img,
                        format!(
                            "offset {la}: algorithm {} is not enabled in the superblock",
                            crate::format::compr_alg::name(alg)
                        ),
                    ));
                }
                Format::Codec(Algorithm::from_id(alg).expect("checked at load"))
            }
        };
        Ok(ZExtent {
            la: start,
            llen,
            place,
            format,
            partial: head.partial,
        })
    }

    /// The head lcluster of the extent containing `la`, given `m`, the lcluster of `la`.
    fn head_of(&self, img: &Image, m: Lcluster, la: u64) -> Result<Lcluster> {
        let endoff = la & ((1 << self.lclusterbits) - 1);
        if m.ty != lcluster::NONHEAD && endoff >= m.clusterofs {
            return Ok(m);
        }
        let mut distance = if m.ty != lcluster::NONHEAD {
            // `la` is before this head's start: it belongs to the previous extent.
            1
        } else {
            m.delta[0]
        };
        let mut lcn = m.lcn;
        loop {
            if distance == 0 || distance > lcn {
                return Err(self.bad(
                    img,
                    format!("offset {la}: bogus lookback distance {distance} at lcluster {lcn}"),
                ));
            }
            lcn -= distance;
            let m = self.load_lcluster(img, lcn, false)?;
            if m.ty != lcluster::NONHEAD {
                return Ok(m);
            }
            distance = m.delta[0];
        }
    }

    /// Where the extent starting at `head` ends (the next head's start, or EOF), and the
    /// lcluster of that next head if there is one (its start may be at or past EOF: mkfs
    /// ends a plain tail that way).
    fn extent_end(&self, img: &Image, head: &Lcluster) -> Result<(u64, Option<u64>)> {
        let lcb = self.lclusterbits;
        let mut lcn = head.lcn + 1;
        while lcn < self.lclusters() {
            let m = self.load_lcluster(img, lcn, true)?;
            if m.ty != lcluster::NONHEAD {
                return Ok(((lcn << lcb | m.clusterofs).min(self.size), Some(lcn)));
            }
            // delta[1] = 0 was written by pre-1.0 mkfs: step one lcluster.
            lcn += m.delta[1].max(1);
        }
        Ok((self.size, None))
    }

    /// Size in blocks of the pcluster of `head`.
    fn compressed_blocks(&self, img: &Image, head: &Lcluster) -> Result<u64> {
        let big1 = self.advise & zadvise::BIG_PCLUSTER_1 != 0;
        let big2 = self.advise & zadvise::BIG_PCLUSTER_2 != 0;
        let lcn = head.lcn + 1;
        if (head.ty == lcluster::HEAD1 && !big1)
            || (head.ty != lcluster::HEAD1 && !big2)
            || lcn >= self.lclusters()
        {
            return Ok(1);
        }
        let m = self.load_lcluster(img, lcn, false)?;
        if m.ty != lcluster::NONHEAD {
            return Ok(1);
        }
        if m.delta[0] != 1 {
            return Err(self.bad(
                img,
                format!(
                    "bogus CBLKCNT at lcluster {lcn}: lookback distance {} after its head",
                    m.delta[0]
                ),
            ));
        }
        let blocks = m.cblkcnt.unwrap_or(1).max(1);
        if blocks << self.block_bits > MAX_PCLUSTER {
            return Err(self.bad(
                img,
                format!(
                    "pcluster of {blocks} blocks at lcluster {} exceeds the {MAX_PCLUSTER} byte maximum",
                    head.lcn
                ),
            ));
        }
        Ok(blocks)
    }

    fn load_lcluster(&self, img: &Image, lcn: u64, lookahead: bool) -> Result<Lcluster> {
        if lcn >= self.lclusters() {
            return Err(self.bad(
                img,
                format!(
                    "lcluster {lcn} is beyond the {} lclusters of the file",
                    self.lclusters()
                ),
            ));
        }
        match self.kind {
            Kind::Full { base } => self.load_full(img, base, lcn),
            Kind::Compact { ebase } => self.load_compact(img, ebase, lcn, lookahead),
            _ => unreachable!("lcluster lookups only for full and compact indexes"),
        }
    }

    fn load_full(&self, img: &Image, base: u64, lcn: u64) -> Result<Lcluster> {
        let pos = base + lcn * 8;
        let mut di = [0u8; 8];
        img.read_meta(self.space, pos, &mut di)
            .map_err(|e| self.bad(img, format!("index of lcluster {lcn} unreadable: {e}")))?;
        let advise = le16(&di, 0);
        let mut m = Lcluster {
            lcn,
            ty: (advise & lcluster::TYPE_MASK) as u8,
            next_pack: pos + 8,
            ..Lcluster::default()
        };
        if m.ty == lcluster::NONHEAD {
            m.clusterofs = 1 << self.lclusterbits;
            let d0 = le16(&di, 4);
            if d0 & lcluster::D0_CBLKCNT != 0 {
                if self.advise & (zadvise::BIG_PCLUSTER_1 | zadvise::BIG_PCLUSTER_2) == 0 {
                    return Err(self.bad(
                        img,
                        format!("CBLKCNT at lcluster {lcn} without big pclusters"),
                    ));
                }
                m.cblkcnt = Some((d0 & !lcluster::D0_CBLKCNT) as u64);
                m.delta[0] = 1;
            } else {
                m.delta[0] = d0 as u64;
            }
            m.delta[1] = le16(&di, 6) as u64;
        } else {
            m.partial = advise & lcluster::PARTIAL_REF != 0;
            m.clusterofs = le16(&di, 2) as u64;
            if m.clusterofs >= 1 << self.lclusterbits {
                return Err(self.bad(
                    img,
                    format!(
                        "lcluster {lcn}: cluster offset {} beyond the lcluster size {}",
                        m.clusterofs,
                        1u64 << self.lclusterbits
                    ),
                ));
            }
            m.pblk = le32(&di, 4) as u64;
        }
        Ok(m)
    }

    fn load_compact(&self, img: &Image, ebase: u64, lcn: u64, lookahead: bool) -> Result<Lcluster> {
        let lcb = self.lclusterbits;
        // The kernel counts compact indexes per block of the file.
        let totalidx = self.size.div_ceil(1 << self.block_bits);
        if lcn >= totalidx {
            return Err(self.bad(
                img,
                format!("lcluster {lcn} beyond the {totalidx} compact indexes"),
            ));
        }
        // 4B indexes until 32-byte alignment, then 2B packs of 16, then 4B for the rest.
        let initial_4b = ((32 - ebase % 32) / 4) & 7;
        let count_2b = if self.advise & zadvise::COMPACTED_2B != 0 && initial_4b < totalidx {
            (totalidx - initial_4b) / 16 * 16
        } else {
            0
        };
        let (mut pos, mut i, mut shift) = (ebase, lcn, 2u32);
        if i >= initial_4b {
            pos += initial_4b * 4;
            i -= initial_4b;
            if i < count_2b {
                shift = 1;
            } else {
                pos += count_2b * 2;
                i -= count_2b;
            }
        }
        pos += i << shift;
        let vcnt: u64 = match shift {
            2 => 2,
            _ if lcb <= 12 => 16,
            _ => {
                return Err(self.bad(
                    img,
                    format!("2B compact indexes with lcluster size 2^{lcb}"),
                ));
            }
        };
        let pack_bytes = vcnt << shift;
        let pack_start = pos / pack_bytes * pack_bytes;
        let mut pack = [0u8; 32];
        let pack = &mut pack[..pack_bytes as usize];
        img.read_meta(self.space, pack_start, pack).map_err(|e| {
            self.bad(
                img,
                format!("compact index of lcluster {lcn} unreadable: {e}"),
            )
        })?;
        let lobits = lcb.max(12);
        let encodebits = ((pack_bytes - 4) * 8 / vcnt) as u32;
        let decode = |i: u64| -> (u64, u8) {
            let bit = encodebits * i as u32;
            let at = (bit / 8) as usize;
            let mut w = [0u8; 4];
            let n = (pack.len() - at).min(4);
            w[..n].copy_from_slice(&pack[at..at + n]);
            let v = u32::from_le_bytes(w) >> (bit & 7);
            ((v & ((1 << lobits) - 1)) as u64, ((v >> lobits) & 3) as u8)
        };
        let idx = (pos - pack_start) >> shift;
        let (lo, ty) = decode(idx);
        let mut m = Lcluster {
            lcn,
            ty,
            next_pack: pack_start + pack_bytes,
            ..Lcluster::default()
        };
        let big = self.advise & zadvise::BIG_PCLUSTER_1 != 0;
        let cblk = lcluster::D0_CBLKCNT as u64;
        if ty == lcluster::NONHEAD {
            m.clusterofs = 1 << lcb;
            if lookahead {
                // Distance to the next head: NONHEADs to the end of the pack, plus what the
                // pack's last entry (which stores delta[1]) says.
                let mut d1 = 0u64;
                let mut j = idx;
                let mut last = (0, lcluster::NONHEAD);
                while j < vcnt {
                    last = decode(j);
                    if last.1 != lcluster::NONHEAD {
                        break;
                    }
                    d1 += 1;
                    j += 1;
                }
                if j == vcnt && last.0 & cblk == 0 {
                    d1 = (d1 + last.0).saturating_sub(1);
                }
                m.delta[1] = d1;
            }
            if lo & cblk != 0 {
                if !big {
                    return Err(self.bad(
                        img,
                        format!("CBLKCNT at lcluster {lcn} without big pclusters"),
                    ));
                }
                m.cblkcnt = Some(lo & !cblk);
                m.delta[0] = 1;
            } else if idx + 1 != vcnt {
                m.delta[0] = lo;
            } else {
                // The pack's last entry stores delta[1]: derive delta[0] from the previous.
                let (plo, pty) = decode(idx - 1);
                let prev = if pty != lcluster::NONHEAD {
                    0
                } else if plo & cblk != 0 {
                    1
                } else {
                    plo
                };
                m.delta[0] = prev + 1;
            }
            return Ok(m);
        }
        m.clusterofs = lo;
        if lo >= 1 << lcb {
            return Err(self.bad(
                img,
                format!("lcluster {lcn}: cluster offset {lo} beyond the lcluster size"),
            ));
        }
        // The pack stores one start block; count the blocks of earlier pclusters in it.
        let mut nblk: u64 = 0;
        let mut i = idx as i64;
        if !big {
            nblk = 1;
            while i > 0 {
                i -= 1;
                let (lo, ty) = decode(i as u64);
                if ty == lcluster::NONHEAD {
                    i -= lo as i64;
                }
                if i >= 0 {
                    nblk += 1;
                }
            }
        } else {
            while i > 0 {
                i -= 1;
                let (lo, ty) = decode(i as u64);
                if ty == lcluster::NONHEAD {
                    if lo & cblk != 0 {
                        i -= 1;
                        nblk += lo & !cblk;
                        continue;
                    }
                    if lo <= 1 {
                        return Err(self.bad(
                            img,
                            format!("lcluster {lcn}: big pcluster NONHEAD with delta {lo}"),
                        ));
                    }
                    i -= lo as i64 - 2;
                    continue;
                }
                nblk += 1;
            }
        }
        let base = le32(pack, pack.len() - 4) as u64;
        m.pblk = base + nblk;
        Ok(m)
    }

    /// 4-byte extent records: a base address, then one `plen` per lcluster; each pcluster
    /// follows the previous one. Read them all once and keep the running offsets.
    fn load_prefix(&self, img: &Image, base: u64) -> Result<Vec<u64>> {
        let n = self.lclusters();
        let bytes = n
            .checked_mul(4)
            .filter(|&b| b <= img.len())
            .ok_or_else(|| self.bad(img, format!("{n} extent records do not fit the image")))?;
        let mut raw = vec![0u8; 8 + bytes as usize];
        img.read_meta(self.space, base, &mut raw)
            .map_err(|e| self.bad(img, format!("extent records unreadable: {e}")))?;
        let mut pa = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let mut out = Vec::with_capacity(n as usize + 1);
        for rec in raw[8..].chunks_exact(4) {
            out.push(pa);
            pa = pa.saturating_add((le32(rec, 0) & EXTENT_PLEN_MASK) as u64);
        }
        out.push(pa);
        Ok(out)
    }

    fn map_extents(
        &self,
        img: &Image,
        la: u64,
        base: u64,
        recsz: u64,
        count: u64,
    ) -> Result<ZExtent> {
        let lcs = 1u64 << self.lclusterbits;
        let read_rec = |pos: u64, rec: &mut [u8; 32]| -> Result<()> {
            img.read_meta(self.space, pos, &mut rec[..recsz as usize])
                .map_err(|e| self.bad(img, format!("offset {la}: extent record unreadable: {e}")))
        };
        let mut rec = [0u8; 32];
        let (lstart, lend, plen, pa, last);
        if recsz <= 8 {
            let idx = la >> self.lclusterbits;
            lstart = idx * lcs;
            lend = (lstart + lcs).min(self.size);
            last = idx + 1 >= self.lclusters();
            if recsz == 4 {
                read_rec(base + 8 + idx * 4, &mut rec)?;
                pa = self.prefix[idx as usize];
            } else {
                read_rec(base + idx * 8, &mut rec)?;
                pa = le32(&rec, 4) as u64;
            }
            plen = le32(&rec, 0);
        } else {
            // Binary search for the last record starting at or before `la`.
            let (mut l, mut r) = (0u64, count);
            let mut found: Option<(u64, u32, u64)> = None;
            let mut next = self.size;
            while l < r {
                let mid = l + (r - l) / 2;
                read_rec(base + mid * recsz, &mut rec)?;
                let mut start = le32(&rec, 12) as u64;
                if recsz > 16 {
                    start |= (le32(&rec, 16) as u64) << 32;
                }
                let p = le32(&rec, 4) as u64 | (le32(&rec, 8) as u64) << 32;
                if start > la {
                    if start > next {
                        return Err(self.bad(
                            img,
                            format!("offset {la}: extent records out of order at record {mid}"),
                        ));
                    }
                    r = mid;
                    next = start;
                } else {
                    l = mid + 1;
                    if start == la {
                        r = r.min(l + 1);
                    }
                    found = Some((start, le32(&rec, 0), p));
                }
            }
            last = l >= count;
            lend = next;
            match found {
                Some((s, pl, p)) => {
                    lstart = s;
                    plen = pl;
                    pa = p;
                }
                None => {
                    // Before the first record: a hole.
                    return Ok(ZExtent {
                        la,
                        llen: lend.saturating_sub(la),
                        place: Place::Hole,
                        format: Format::Shifted,
                        partial: false,
                    });
                }
            }
        }
        if lstart >= lend {
            return Err(self.bad(img, format!("offset {la}: empty extent {lstart}..{lend}")));
        }
        let mut ext = ZExtent {
            la: lstart,
            llen: lend - lstart,
            place: Place::Hole,
            format: Format::Shifted,
            partial: false,
        };
        if last && self.advise & zadvise::FRAGMENT_PCLUSTER != 0 {
            let mut off = plen as u64;
            if recsz > 4 {
                off |= pa << 32;
            }
            ext.place = Place::Fragment { offset: off };
        } else if plen != 0 {
            let fmt = plen >> EXTENT_PLEN_FMT_BIT;
            let bs = 1u64 << self.block_bits;
            ext.format = if fmt != 0 {
                let alg = (fmt - 1) as u8;
                match Algorithm::from_id(alg) {
                    Some(a) if self.available_algs & (1 << alg) != 0 => Format::Codec(a),
                    _ => {
                        return Err(self.bad(
                            img,
                            format!("offset {la}: extent algorithm {alg} is not enabled"),
                        ));
                    }
                }
            } else if self.advise & zadvise::INTERLACED_PCLUSTER != 0 && pa % bs == 0 {
                Format::Interlaced
            } else {
                Format::Shifted
            };
            ext.partial = plen & EXTENT_PLEN_PARTIAL != 0;
            ext.place = Place::Image {
                pa,
                plen: (plen & EXTENT_PLEN_MASK) as u64,
            };
        }
        Ok(ext)
    }
}

/// Every extent of a compressed inode in file order (for `inspect` and tests): at most
/// `limit`; the bool says whether more exist.
pub fn extents(img: &Image, inode: &Inode, limit: usize) -> Result<(Vec<ZExtent>, bool)> {
    if !inode.is_compressed() {
        return Err(img.corrupt_nid(inode.nid, "not a compressed inode".into()));
    }
    let z = ZMap::load(img, inode)?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < inode.size {
        if out.len() == limit {
            return Ok((out, true));
        }
        let e = z.map(img, pos)?;
        pos = e.end();
        out.push(e);
    }
    Ok((out, false))
}
