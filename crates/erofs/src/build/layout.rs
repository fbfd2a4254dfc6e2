//! Where things go: the first data block, directory block splits, and the placement of
//! inodes in the metadata area (which fixes their nids).

use crate::fingerprint::XattrName;
use crate::format::{DIRENT_SIZE, ISLOT_BITS, SUPER_OFFSET, SUPERBLOCK_SIZE};
use std::ops::Range;

/// Byte offset of the long xattr prefix table: right after the superblock.
pub const PREFIX_TABLE_OFFSET: u64 = SUPER_OFFSET + SUPERBLOCK_SIZE as u64;

/// First block after the superblock and the prefix table.
pub fn first_data_block(blkszbits: u8, fingerprint: Option<&XattrName>) -> u64 {
    let end = PREFIX_TABLE_OFFSET
        + fingerprint.map_or(0, |n| super::xattrs::prefix_record(n).len() as u64);
    end.div_ceil(1 << blkszbits)
}

/// Split a directory's entries (sorted names, `.` and `..` included) into blocks: each block
/// holds its dirents then their names. Returns each block's entry range and the directory
/// size (full blocks plus the bytes used in the last one).
pub fn dir_blocks(names: &[&[u8]], block_size: u64) -> (Vec<Range<usize>>, u64) {
    let mut blocks = Vec::new();
    let (mut start, mut used) = (0usize, 0u64);
    for (i, name) in names.iter().enumerate() {
        let need = (DIRENT_SIZE + name.len()) as u64;
        if used + need > block_size {
            blocks.push(start..i);
            start = i;
            used = 0;
        }
        used += need;
    }
    blocks.push(start..names.len());
    let size = (blocks.len() as u64 - 1) * block_size + used;
    (blocks, size)
}

/// Places inode records in the metadata area. Records are 32-byte aligned (nid = offset / 32).
/// A record with inline data never crosses a block boundary (the kernel requires the inline
/// tail in one block); when it does not fit at the end, the rest of that block is kept as a
/// hole that later, smaller records fill (first fit).
#[derive(Debug)]
pub struct MetaAllocator {
    block_size: u64,
    cursor: u64,
    holes: Vec<(u64, u64)>,
}

const SLOT: u64 = 1 << ISLOT_BITS;
const MAX_HOLES: usize = 256;

impl MetaAllocator {
    pub fn new(block_size: u64, start: u64) -> MetaAllocator {
        MetaAllocator {
            block_size,
            cursor: start.next_multiple_of(SLOT),
            holes: Vec::new(),
        }
    }

    /// Offset for a record of `size` bytes; `in_one_block` for records with inline data
    /// (their size is at most a block).
    pub fn place(&mut self, size: u64, in_one_block: bool) -> u64 {
        let size = size.max(1).next_multiple_of(SLOT);
        if let Some(i) = self.holes.iter().position(|&(_, len)| len >= size) {
            let (off, len) = self.holes[i];
            if len - size >= SLOT {
                self.holes[i] = (off + size, len - size);
            } else {
                self.holes.remove(i);
            }
            return off;
        }
        let in_block = self.cursor % self.block_size;
        if in_one_block && in_block + size > self.block_size {
            let rest = self.block_size - in_block;
            if rest >= SLOT {
                if self.holes.len() == MAX_HOLES {
                    self.holes.remove(0);
                }
                self.holes.push((self.cursor, rest));
            }
            self.cursor += rest;
        }
        let off = self.cursor;
        self.cursor += size;
        off
    }

    /// End of the used area.
    pub fn end(&self) -> u64 {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_blocks_split_at_block_size() {
        let n = [&b"."[..], b"..", b"a"];
        let (b, size) = dir_blocks(&n, 4096);
        assert_eq!((b.len(), size), (1, 36 + 4));
        let names: Vec<Vec<u8>> = (0..100).map(|i| format!("{i:0>20}").into_bytes()).collect();
        let refs: Vec<&[u8]> = names.iter().map(|v| v.as_slice()).collect();
        let (b, size) = dir_blocks(&refs, 512);
        // 32 bytes per entry: 16 per 512-byte block.
        assert_eq!(b.len(), 7);
        assert_eq!(b[0], 0..16);
        assert_eq!(size, 6 * 512 + 4 * 32);
    }

    #[test]
    fn inline_records_stay_in_one_block_and_holes_get_filled() {
        let mut m = MetaAllocator::new(4096, 0);
        assert_eq!(m.place(4000, true), 0);
        // Does not fit in the rest of block 0: goes to block 1, leaving a 96-byte hole.
        assert_eq!(m.place(200, true), 4096);
        assert_eq!(m.place(32, false), 4000);
        assert_eq!(m.place(64, false), 4032);
        assert_eq!(m.place(32, true), 4096 + 224);
    }
}
