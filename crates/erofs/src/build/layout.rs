//! Where things go: the first data block, directory block splits, and the placement of
//! inodes in the metadata area (which fixes their nids).

use crate::fingerprint::XattrName;
use crate::format::{DIRENT_SIZE, ISLOT_BITS, SUPER_OFFSET, SUPERBLOCK_SIZE};
use std::collections::BTreeSet;
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

/// Place inode records in the metadata area, which starts `start` bytes into its first block
/// (after the shared xattrs). Records are 32-byte aligned (nid = offset / 32). `sizes[0]`, the
/// root, goes first so its nid stays small. Every record of at most a block stays inside one
/// block (the kernel needs an inline tail in one block), packed best-fit decreasing to waste
/// little; larger ones (no inline data, huge xattr bodies) follow at the end. Returns each
/// record's offset and the end of the area.
pub fn pack(block_size: u64, start: u64, sizes: &[u64]) -> (Vec<u64>, u64) {
    let slot = |s: u64| s.max(1).next_multiple_of(SLOT);
    let mut offsets = vec![0u64; sizes.len()];
    let Some(&root) = sizes.first() else {
        return (offsets, start);
    };
    let first = start.next_multiple_of(SLOT);
    offsets[0] = first;
    let mut end = first + slot(root);
    // Blocks' used bytes, and free space → blocks with that much room.
    let mut used: Vec<u64> = Vec::new();
    let mut by_free: BTreeSet<(u64, usize)> = BTreeSet::new();
    let base = end.next_multiple_of(block_size);
    if base > end && base - end >= SLOT {
        // The rest of the root's block is usable too.
        used.push(end % block_size);
        by_free.insert((base - end, 0));
    }
    let first_block = if used.is_empty() {
        base
    } else {
        base - block_size
    };
    let mut order: Vec<usize> = (1..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(slot(sizes[i])), i));
    let mut large = Vec::new();
    for i in order {
        let size = slot(sizes[i]);
        if size > block_size {
            large.push(i);
            continue;
        }
        let b = match by_free.range((size, 0)..).next().copied() {
            Some(key) => {
                by_free.remove(&key);
                key.1
            }
            None => {
                used.push(0);
                used.len() - 1
            }
        };
        offsets[i] = first_block + b as u64 * block_size + used[b];
        used[b] += size;
        let free = block_size - used[b];
        if free >= SLOT {
            by_free.insert((free, b));
        }
    }
    end = end.max(first_block + used.len() as u64 * block_size);
    for i in large {
        offsets[i] = end;
        end += slot(sizes[i]);
    }
    (offsets, end)
}

const SLOT: u64 = 1 << ISLOT_BITS;

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
    fn records_stay_in_one_block_and_pack_tightly() {
        let sizes = [64, 4000, 3000, 1000, 96, 64, 32, 5000];
        let (off, end) = pack(4096, 1152, &sizes);
        assert_eq!(off[0], 1152);
        for (i, (&o, &s)) in off.iter().zip(&sizes).enumerate() {
            assert_eq!(o % 32, 0);
            if s <= 4096 {
                assert_eq!(o / 4096, (o + s - 1) / 4096, "record {i} crosses a block");
            }
        }
        let mut spans: Vec<(u64, u64)> =
            off.iter().zip(&sizes).map(|(&o, &s)| (o, o + s)).collect();
        spans.sort();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "overlap: {spans:?}"
        );
        // Best fit: the small records fill the ends of the 4000 and 3000 + 1000 blocks.
        assert_eq!(off[4] / 4096, 1);
        assert_eq!((off[5] / 4096, off[6] / 4096), (2, 0));
        assert_eq!(end, 3 * 4096 + 5024);
    }
}
