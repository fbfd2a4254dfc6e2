//! Serialising the laid-out tree: inodes (compact where lossless), xattr bodies, directory
//! blocks, symlink targets, the shared xattr area, the prefix table and the superblock.

use super::layout::{self, CONFIGS_OFFSET};
use super::tree::{Content, Kind, NodeId, Tree};
use super::xattrs::{self, SharedXattrs};
use super::{BuildError, ImageFile, Options, Summary};
use crate::format::{
    self, DIRENT_SIZE, Dirent, EROFS_MAGIC, I_DATALAYOUT_BIT, InodeCompact, InodeExtended,
    NULL_ADDR, SUPER_OFFSET, SuperBlock, compat, incompat,
};
use std::collections::HashMap;
use zerocopy::{FromZeros, IntoBytes};

/// Where the shared xattr area may grow before the inodes move to their own blocks (keeps
/// the root nid within the superblock's 16-bit field).
const SHARED_INLINE_MAX: usize = 1 << 20;

/// One inode ready to serialise.
#[derive(Debug)]
struct Planned {
    node: NodeId,
    parent: NodeId,
    compact: bool,
    xattr: Vec<u8>,
    datalayout: u8,
    /// `i_u`: start block, rdev, or 0.
    i_u: u32,
    size: u64,
    /// Data for the blocks of a directory or symlink (files are already written).
    blocks_at: Option<u64>,
    inline_len: usize,
    offset: u64,
}

impl Planned {
    fn isize(&self) -> usize {
        if self.compact {
            size_of::<InodeCompact>()
        } else {
            size_of::<InodeExtended>()
        }
    }
}

/// The superblock epoch and its nanoseconds. Without `compact_mtimes` it is the most common
/// mtime among the inodes (the earliest of the most common; the build time when no mtime is
/// after 1970), and only inodes with exactly this mtime are compact (`i_mtime = 0`): kernels
/// before compact-inode mtimes (Linux < 6.15) show every compact inode the epoch, so any other
/// choice would lose mtimes there. With it, the nanoseconds are the most common ones and the
/// epoch the earliest mtime with them, so every inode with those nanoseconds within 2^32 s can
/// be compact.
fn epoch(tree: &Tree, order: &[(NodeId, NodeId)], opts: &Options) -> (u64, u32) {
    let mtimes = || {
        order.iter().filter_map(|&(id, _)| {
            let n = &tree.nodes[id];
            u64::try_from(n.mtime).ok().map(|s| (s, n.mtime_nsec))
        })
    };
    if opts.compact_mtimes {
        let mut count: HashMap<u32, u64> = HashMap::new();
        for (_, nsec) in mtimes() {
            *count.entry(nsec).or_default() += 1;
        }
        let nsec = count
            .into_iter()
            .max_by_key(|&(ns, c)| (c, std::cmp::Reverse(ns)))
            .map(|(ns, _)| ns);
        return match nsec {
            Some(ns) => (
                mtimes()
                    .filter(|&(_, n)| n == ns)
                    .map(|(s, _)| s)
                    .min()
                    .unwrap_or(0),
                ns,
            ),
            None => (opts.build_time, 0),
        };
    }
    let mut count: HashMap<(u64, u32), u64> = HashMap::new();
    for t in mtimes() {
        *count.entry(t).or_default() += 1;
    }
    count
        .into_iter()
        .max_by_key(|&(t, c)| (c, std::cmp::Reverse(t)))
        .map_or((opts.build_time, 0), |(t, _)| t)
}

/// A compact inode's `i_mtime`, if `node`'s mtime fits one.
fn compact_mtime(
    n: &super::tree::Node,
    epoch: u64,
    fixed_nsec: u32,
    opts: &Options,
) -> Option<u32> {
    if n.mtime_nsec != fixed_nsec {
        return None;
    }
    let delta = n.mtime.checked_sub(epoch as i64)?;
    match u32::try_from(delta) {
        Ok(0) => Some(0),
        Ok(d) if opts.compact_mtimes => Some(d),
        _ => None,
    }
}

/// Lay out and write everything but the file data (already in the data area).
pub fn image(tree: &Tree, opts: &Options, img: &mut ImageFile) -> Result<Summary, BuildError> {
    let bs = img.block_size();
    let mut order = tree.bfs();
    if let Some(p) = tree.packed {
        order.push((p, 0));
    }
    let ids: Vec<NodeId> = order.iter().map(|&(id, _)| id).collect();
    let shared = SharedXattrs::collect(tree, &ids)?;
    let (epoch, fixed_nsec) = epoch(tree, &order, opts);
    let prefix_table = opts.prefix_table();
    let (fp_prefix, other_prefixes) = match opts.fingerprint {
        Some(_) => (prefix_table.first(), &prefix_table[1..]),
        None => (None, &prefix_table[..]),
    };
    let mut summary = Summary {
        shared_xattrs: shared.len() as u64,
        ..Summary::default()
    };

    // Sizes, inode versions and data blocks of directories and symlinks.
    let mut plans = Vec::with_capacity(order.len());
    let mut ztailpacking = false;
    let mut chunked = false;
    for &(id, parent) in &order {
        let n = &tree.nodes[id];
        let fingerprint = match &n.kind {
            Kind::File {
                content: Content::Stored(s),
                ..
            } => s.fingerprint.as_ref(),
            _ => None,
        };
        let xattr = xattrs::ibody(
            &n.xattrs,
            &shared,
            other_prefixes,
            fp_prefix.zip(fingerprint.map(|v| v.as_slice())),
        )?;
        summary.fingerprints += fingerprint.is_some() as u64;
        let size = match &n.kind {
            Kind::File { size, .. } => *size,
            Kind::Dir(entries) => dir_size(entries.keys(), bs),
            Kind::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        let compact = size <= u32::MAX as u64
            && n.uid <= u16::MAX as u32
            && n.gid <= u16::MAX as u32
            && n.nlink <= u16::MAX as u32
            && compact_mtime(n, epoch, fixed_nsec, opts).is_some();
        let mut p = Planned {
            node: id,
            parent,
            compact,
            xattr,
            datalayout: format::layout::FLAT_PLAIN,
            i_u: 0,
            size,
            blocks_at: None,
            inline_len: 0,
            offset: 0,
        };
        match &n.kind {
            Kind::File { content, .. } => {
                let Content::Stored(s) = content else {
                    return Err(BuildError::Source(format!("file node {id} was never read")));
                };
                summary.content_bytes += size;
                p.i_u = start_addr(s.start_block)?;
                if let Some(z) = &s.compressed {
                    p.datalayout = format::layout::COMPRESSED_FULL;
                    p.i_u = u32::try_from(z.blocks).map_err(|_| BuildError::TooMany("blocks"))?;
                    p.inline_len = map_padding(p.isize() + p.xattr.len()) + z.map.len();
                    ztailpacking |= z.tail_inline;
                } else if let Some(c) = &s.chunks {
                    p.datalayout = format::layout::CHUNK_BASED;
                    p.i_u = c.format as u32;
                    p.inline_len = map_padding_to(p.isize() + p.xattr.len(), 4) + c.map.len();
                    chunked = true;
                } else if let Some(t) = &s.inline_tail {
                    p.datalayout = format::layout::FLAT_INLINE;
                    p.inline_len = t.len();
                }
            }
            Kind::Dir(_) | Kind::Symlink(_) => {
                let tail = (size % bs) as usize;
                let inline =
                    opts.inline && tail > 0 && p.isize() + p.xattr.len() + tail <= bs as usize;
                let blocks = if inline { size / bs } else { size.div_ceil(bs) };
                let start = (blocks > 0).then(|| img.alloc(blocks));
                p.blocks_at = start;
                p.i_u = start_addr(start)?;
                if inline {
                    p.datalayout = format::layout::FLAT_INLINE;
                    p.inline_len = tail;
                }
            }
            Kind::CharDev(rdev) | Kind::BlockDev(rdev) => p.i_u = *rdev,
            Kind::Fifo | Kind::Socket => {}
        }
        plans.push(p);
    }

    // The metadata area: shared xattrs, then the inodes, root first.
    let xattr_blkaddr = img.end_block();
    let (meta_blkaddr, meta_start) = if shared.bytes.len() <= SHARED_INLINE_MAX {
        (xattr_blkaddr, shared.bytes.len() as u64)
    } else {
        (xattr_blkaddr + (shared.bytes.len() as u64).div_ceil(bs), 0)
    };
    let sizes: Vec<u64> = plans
        .iter()
        .map(|p| (p.isize() + p.xattr.len() + p.inline_len) as u64)
        .collect();
    // nid 0 would be inode number 0, which readdir treats as a deleted entry: skip slot 0.
    let (offsets, meta_end) = layout::pack(bs, meta_start.max(1 << format::ISLOT_BITS), &sizes);
    let mut nid_of = vec![u64::MAX; tree.nodes.len()];
    // Records of at most a block (inline tails, ztailpacking) never cross one.
    for (p, off) in plans.iter_mut().zip(offsets) {
        p.offset = off;
        nid_of[p.node] = off >> format::ISLOT_BITS;
    }
    let root_nid = u16::try_from(nid_of[0]).map_err(|_| BuildError::TooMany("shared xattrs"))?;
    let meta_len = meta_end.next_multiple_of(bs);
    let mut meta = vec![0u8; meta_len as usize];
    if meta_blkaddr == xattr_blkaddr {
        meta[..shared.bytes.len()].copy_from_slice(&shared.bytes);
    } else {
        img.write_at(&shared.bytes, xattr_blkaddr * bs)?;
    }

    for (ino, p) in plans.iter().enumerate() {
        let n = &tree.nodes[p.node];
        let off = p.offset as usize;
        let rec = &mut meta[off..off + p.isize() + p.xattr.len() + p.inline_len];
        let i_format = (p.datalayout as u16) << I_DATALAYOUT_BIT | (!p.compact as u16);
        let icount = xattrs::icount(p.xattr.len());
        let ino = u32::try_from(ino + 1).map_err(|_| BuildError::TooMany("inodes"))?;
        if p.compact {
            let c = InodeCompact {
                i_format: i_format.into(),
                i_xattr_icount: icount.into(),
                i_mode: n.mode().into(),
                i_nb: (n.nlink as u16).into(),
                i_size: (p.size as u32).into(),
                i_mtime: compact_mtime(n, epoch, fixed_nsec, opts)
                    .unwrap_or(0)
                    .into(),
                i_u: p.i_u.into(),
                i_ino: ino.into(),
                i_uid: (n.uid as u16).into(),
                i_gid: (n.gid as u16).into(),
                i_reserved: 0.into(),
            };
            rec[..32].copy_from_slice(c.as_bytes());
        } else {
            let mut e = InodeExtended::new_zeroed();
            e.i_format = i_format.into();
            e.i_xattr_icount = icount.into();
            e.i_mode = n.mode().into();
            e.i_size = p.size.into();
            e.i_u = p.i_u.into();
            e.i_ino = ino.into();
            e.i_uid = n.uid.into();
            e.i_gid = n.gid.into();
            e.i_mtime = (n.mtime as u64).into();
            e.i_mtime_nsec = n.mtime_nsec.into();
            e.i_nlink = n.nlink.into();
            rec[..64].copy_from_slice(e.as_bytes());
        }
        let isize = p.isize();
        rec[isize..isize + p.xattr.len()].copy_from_slice(&p.xattr);
        let tail_at = isize + p.xattr.len();
        // Data: the block part goes to the data area, the tail after the inode.
        let data: Option<std::borrow::Cow<[u8]>> = match &n.kind {
            Kind::File {
                content: Content::Stored(s),
                ..
            } => match (&s.compressed, &s.chunks) {
                (Some(z), _) => {
                    let mut v = vec![0u8; map_padding(p.isize() + p.xattr.len())];
                    v.extend_from_slice(&z.map);
                    Some(v.into())
                }
                (None, Some(c)) => {
                    let mut v = vec![0u8; map_padding_to(p.isize() + p.xattr.len(), 4)];
                    v.extend_from_slice(&c.map);
                    Some(v.into())
                }
                (None, None) => s.inline_tail.as_deref().map(Into::into),
            },
            Kind::Dir(entries) => {
                let d = dir_data(entries, p.node, p.parent, tree, &nid_of, bs);
                debug_assert_eq!(d.len() as u64, p.size);
                Some(d.into())
            }
            Kind::Symlink(t) => Some(t.as_slice().into()),
            _ => None,
        };
        if let Some(data) = data {
            let block_part = data.len() - p.inline_len;
            if let Some(start) = p.blocks_at {
                let mut blocks = data[..block_part].to_vec();
                blocks.resize(block_part.next_multiple_of(bs as usize), 0);
                img.write_at(&blocks, start * bs)?;
            }
            if p.inline_len > 0 {
                rec[tail_at..].copy_from_slice(&data[data.len() - p.inline_len..]);
            }
        }
    }
    img.write_at(&meta, meta_blkaddr * bs)?;
    let blocks = meta_blkaddr + meta_len / bs;
    let blocks_lo = u32::try_from(blocks).map_err(|_| BuildError::TooMany("blocks"))?;
    img.file.set_len(blocks * bs).map_err(BuildError::Write)?;

    // Superblock, prefix table, checksum.
    let mut sb = SuperBlock::new_zeroed();
    sb.magic = EROFS_MAGIC.into();
    let mut compat_bits = compat::SB_CHKSUM | compat::MTIME | compat::XATTR_FILTER;
    let mut incompat_bits = 0;
    if let Some(c) = &opts.compression {
        incompat_bits |= c.incompat(bs);
        if ztailpacking {
            incompat_bits |= incompat::ZTAILPACKING;
        }
        if let Some(p) = tree.packed {
            incompat_bits |= incompat::FRAGMENTS;
            sb.packed_nid = nid_of[p].into();
        }
        sb.available_compr_algs = c.algs_field(bs).into();
        img.write_at(&c.configs(bs), CONFIGS_OFFSET)?;
    }
    if chunked {
        incompat_bits |= incompat::CHUNKED_FILE;
    }
    if !prefix_table.is_empty() {
        let table = layout::prefix_table_offset(img.blkszbits, opts);
        compat_bits |= compat::PLAIN_XATTR_PFX;
        incompat_bits |= incompat::XATTR_PREFIXES;
        sb.xattr_prefix_count = prefix_table.len() as u8;
        sb.xattr_prefix_start = ((table / 4) as u32).into();
        let records: Vec<u8> = prefix_table
            .iter()
            .flat_map(|p| xattrs::prefix_record(&p.name))
            .collect();
        img.write_at(&records, table)?;
    }
    if let Some(fp) = fp_prefix {
        compat_bits |= compat::ISHARE_XATTRS;
        sb.ishare_xattr_prefix_id = fp.id;
    }
    sb.feature_compat = compat_bits.into();
    sb.feature_incompat = incompat_bits.into();
    sb.blkszbits = img.blkszbits;
    sb.rootnid_2b = root_nid.into();
    sb.inos = (plans.len() as u64).into();
    sb.epoch = epoch.into();
    sb.fixed_nsec = fixed_nsec.into();
    sb.blocks_lo = blocks_lo.into();
    sb.meta_blkaddr = u32::try_from(meta_blkaddr)
        .map_err(|_| BuildError::TooMany("blocks"))?
        .into();
    sb.xattr_blkaddr = u32::try_from(xattr_blkaddr)
        .map_err(|_| BuildError::TooMany("blocks"))?
        .into();
    sb.uuid = opts.uuid;
    img.write_at(sb.as_bytes(), SUPER_OFFSET)?;
    let checksum = superblock_checksum(img, bs)?;
    img.write_at(&checksum.to_le_bytes(), SUPER_OFFSET + 4)?;

    summary.inodes = plans.len() as u64;
    summary.blocks = blocks;
    summary.image_bytes = blocks * bs;
    Ok(summary)
}

/// Zeros between an inode's xattrs and its compressed map: the map starts 8-byte aligned
/// (records start 32-byte aligned, so the record-relative length decides).
fn map_padding(inode_and_xattrs: usize) -> usize {
    map_padding_to(inode_and_xattrs, 8)
}

/// Zeros after an inode and its xattrs up to a map aligned to `unit` bytes.
fn map_padding_to(inode_and_xattrs: usize, unit: usize) -> usize {
    inode_and_xattrs.next_multiple_of(unit) - inode_and_xattrs
}

fn start_addr(block: Option<u64>) -> Result<u32, BuildError> {
    match block {
        None => Ok(NULL_ADDR),
        Some(b) => u32::try_from(b)
            .ok()
            .filter(|&b| b != NULL_ADDR)
            .ok_or(BuildError::TooMany("blocks")),
    }
}

/// The checksum the kernel verifies: crc32c (seed ~0, no final inversion) over the
/// superblock's block from byte 1024 (the first `block_size` bytes there for blocks of 1 KiB
/// and less), with the checksum field zero.
fn superblock_checksum(img: &ImageFile, bs: u64) -> Result<u32, BuildError> {
    use std::os::unix::fs::FileExt;
    let len = if bs > SUPER_OFFSET {
        bs - SUPER_OFFSET
    } else {
        bs
    };
    let mut buf = vec![0u8; len as usize];
    img.file
        .read_exact_at(&mut buf, SUPER_OFFSET)
        .map_err(BuildError::Write)?;
    buf[4..8].fill(0);
    Ok(!crc32c::crc32c(&buf))
}

/// Directory entries in on-disk order: `.`, `..` and the children, sorted by name bytes.
fn sorted_names<'a>(children: impl Iterator<Item = &'a Vec<u8>>) -> Vec<&'a [u8]> {
    let mut names: Vec<&[u8]> = vec![b".", b".."];
    names.extend(children.map(|n| n.as_slice()));
    names.sort_unstable();
    names
}

fn dir_size<'a>(children: impl Iterator<Item = &'a Vec<u8>>, bs: u64) -> u64 {
    layout::dir_blocks(&sorted_names(children), bs).1
}

/// A directory's content: blocks of dirents and names, the last one cut at the size.
fn dir_data(
    entries: &std::collections::BTreeMap<Vec<u8>, NodeId>,
    me: NodeId,
    parent: NodeId,
    tree: &Tree,
    nid_of: &[u64],
    bs: u64,
) -> Vec<u8> {
    let names = sorted_names(entries.keys());
    let (blocks, size) = layout::dir_blocks(&names, bs);
    let mut out = vec![0u8; blocks.len() * bs as usize];
    for (b, range) in blocks.iter().enumerate() {
        let block = &mut out[b * bs as usize..(b + 1) * bs as usize];
        let mut nameoff = range.len() * DIRENT_SIZE;
        for (slot, name) in names[range.clone()].iter().enumerate() {
            let target = match *name {
                b"." => me,
                b".." => parent,
                n => entries[n],
            };
            let d = Dirent {
                nid: nid_of[target].into(),
                nameoff: (nameoff as u16).into(),
                file_type: tree.nodes[target].file_type(),
                reserved: 0,
            };
            block[slot * DIRENT_SIZE..(slot + 1) * DIRENT_SIZE].copy_from_slice(d.as_bytes());
            block[nameoff..nameoff + name.len()].copy_from_slice(name);
            nameoff += name.len();
        }
    }
    out.truncate(size as usize);
    out
}
