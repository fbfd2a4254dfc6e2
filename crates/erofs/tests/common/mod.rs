//! Test support: a deliberately tiny, independent walk of an uncompressed image held in
//! memory (superblock, inodes, xattr bodies, directories), written from the format structs
//! only, to compare our images with upstream's field by field. Not the crate's reader.

#![allow(dead_code)]

use erofs::format::{
    DIRENT_SIZE, Dirent, InodeCompact, InodeExtended, SUPER_OFFSET, SuperBlock, XATTR_ENTRY_SIZE,
    XattrEntry, XattrIbodyHeader, layout, mode, xattr_ibody_size,
};
use std::collections::BTreeMap;
use zerocopy::FromBytes;

/// One xattr entry as stored inline: (e_name_index, name suffix, value).
pub type RawXattr = (u8, Vec<u8>, Vec<u8>);

#[derive(Debug, Clone)]
pub struct RawInode {
    pub nid: u64,
    pub i_format: u16,
    pub mode: u16,
    pub size: u64,
    pub nlink: u32,
    /// `h_name_filter`, shared ids and inline entries, when the inode has xattrs.
    pub filter: Option<u32>,
    pub shared: Vec<u32>,
    pub inline: Vec<RawXattr>,
}

pub struct Image<'a> {
    pub bytes: &'a [u8],
    pub sb: SuperBlock,
    pub bs: u64,
}

impl<'a> Image<'a> {
    pub fn new(bytes: &'a [u8]) -> Image<'a> {
        let sb = SuperBlock::read_from_prefix(&bytes[SUPER_OFFSET as usize..])
            .unwrap()
            .0;
        let bs = 1u64 << sb.blkszbits;
        Image { bytes, sb, bs }
    }

    fn iloc(&self, nid: u64) -> usize {
        (self.sb.meta_blkaddr.get() as u64 * self.bs + nid * 32) as usize
    }

    /// The inode at `nid` and the byte offset right after its xattr body.
    pub fn inode(&self, nid: u64) -> (RawInode, usize, u32) {
        let at = self.iloc(nid);
        let c = InodeCompact::read_from_prefix(&self.bytes[at..]).unwrap().0;
        let ifmt = c.i_format.get();
        let (isize, mode, size, nlink, icount, i_u) = if ifmt & 1 == 0 {
            (
                32,
                c.i_mode.get(),
                c.i_size.get() as u64,
                c.i_nb.get() as u32,
                c.i_xattr_icount.get(),
                c.i_u.get(),
            )
        } else {
            let e = InodeExtended::read_from_prefix(&self.bytes[at..])
                .unwrap()
                .0;
            (
                64,
                e.i_mode.get(),
                e.i_size.get(),
                e.i_nlink.get(),
                e.i_xattr_icount.get(),
                e.i_u.get(),
            )
        };
        let xat = at + isize;
        let xlen = xattr_ibody_size(icount);
        let mut ino = RawInode {
            nid,
            i_format: ifmt,
            mode,
            size,
            nlink,
            filter: None,
            shared: vec![],
            inline: vec![],
        };
        if xlen > 0 {
            let h = XattrIbodyHeader::read_from_prefix(&self.bytes[xat..])
                .unwrap()
                .0;
            ino.filter = Some(h.h_name_filter.get());
            let mut p = xat + 12;
            for _ in 0..h.h_shared_count {
                ino.shared
                    .push(u32::from_le_bytes(self.bytes[p..p + 4].try_into().unwrap()));
                p += 4;
            }
            while p < xat + xlen {
                let e = XattrEntry::read_from_prefix(&self.bytes[p..]).unwrap().0;
                let n = e.e_name_len as usize;
                let v = e.e_value_size.get() as usize;
                let name = self.bytes[p + 4..p + 4 + n].to_vec();
                let value = self.bytes[p + 4 + n..p + 4 + n + v].to_vec();
                ino.inline.push((e.e_name_index, name, value));
                p += (XATTR_ENTRY_SIZE + n + v).next_multiple_of(4);
            }
        }
        (ino, xat + xlen, i_u)
    }

    /// A flat (plain or inline) inode's content.
    pub fn data(&self, nid: u64) -> Vec<u8> {
        let (ino, tail_at, i_u) = self.inode(nid);
        let dl = ((ino.i_format >> 1) & 7) as u8;
        let bs = self.bs;
        let (blocks, tail) = match dl {
            layout::FLAT_PLAIN => (ino.size.div_ceil(bs), 0),
            layout::FLAT_INLINE => (ino.size / bs, ino.size % bs),
            other => panic!("nid {nid}: layout {other} not handled by the test walker"),
        };
        let mut out = Vec::new();
        if blocks > 0 {
            let s = (i_u as u64 * bs) as usize;
            out.extend_from_slice(&self.bytes[s..s + (blocks * bs) as usize]);
        }
        out.truncate(ino.size.min(blocks * bs) as usize);
        out.extend_from_slice(&self.bytes[tail_at..tail_at + tail as usize]);
        out
    }

    /// (name, nid) of a directory's entries, `.` and `..` included.
    pub fn dirents(&self, nid: u64) -> Vec<(Vec<u8>, u64)> {
        let d = self.data(nid);
        let mut out = Vec::new();
        for block in d.chunks(self.bs as usize) {
            let first = Dirent::read_from_prefix(block).unwrap().0;
            let n = first.nameoff.get() as usize / DIRENT_SIZE;
            for i in 0..n {
                let e = Dirent::read_from_prefix(&block[i * DIRENT_SIZE..])
                    .unwrap()
                    .0;
                let start = e.nameoff.get() as usize;
                let end = if i + 1 < n {
                    Dirent::read_from_prefix(&block[(i + 1) * DIRENT_SIZE..])
                        .unwrap()
                        .0
                        .nameoff
                        .get() as usize
                } else {
                    block[start..]
                        .iter()
                        .position(|&b| b == 0)
                        .map_or(block.len(), |z| start + z)
                };
                out.push((block[start..end].to_vec(), e.nid.get()));
            }
        }
        out
    }

    /// Every path ("." for the root) with its inode.
    pub fn walk(&self) -> BTreeMap<String, RawInode> {
        let mut out = BTreeMap::new();
        let root = self.sb.rootnid_2b.get() as u64;
        let mut stack = vec![(String::from("."), root)];
        while let Some((path, nid)) = stack.pop() {
            let (ino, _, _) = self.inode(nid);
            if ino.mode & mode::S_IFMT == mode::S_IFDIR {
                for (name, child) in self.dirents(nid) {
                    if name == b"." || name == b".." {
                        continue;
                    }
                    let name = String::from_utf8_lossy(&name).into_owned();
                    let p = if path == "." {
                        name
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((p, child));
                }
            }
            out.insert(path, ino);
        }
        out
    }
}
