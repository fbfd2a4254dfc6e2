//! Where things go: the first data block, directory block splits, and the placement of
//! inodes in the metadata area (which fixes their nids).

use super::Options;
use crate::format::{DIRENT_SIZE, ISLOT_BITS, SUPER_OFFSET, SUPERBLOCK_SIZE};
use std::collections::BTreeSet;
use std::ops::Range;

/// Byte offset of the compression configs: right after the superblock (the kernel reads
/// them there).
pub const CONFIGS_OFFSET: u64 = SUPER_OFFSET + SUPERBLOCK_SIZE as u64;

/// Byte offset of the long xattr prefix table: after the superblock and the compression
/// configs.
pub fn prefix_table_offset(blkszbits: u8, opts: &Options) -> u64 {
    let configs = opts
        .compression
        .as_ref()
        .map_or(0, |c| c.configs(1 << blkszbits).len() as u64);
    CONFIGS_OFFSET + configs
}

/// First block after the superblock, the compression configs and the prefix table.
pub fn first_data_block(blkszbits: u8, opts: &Options) -> u64 {
    let end = prefix_table_offset(blkszbits, opts)
        + opts
            .prefix_table()
            .iter()
            .map(|p| super::xattrs::prefix_record(&p.name).len() as u64)
            .sum::<u64>();
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
/// root, goes first so its nid stays small. Every record of at most a block, the root included,
/// stays inside one block (the kernel needs an inline tail in one block), packed best-fit
/// decreasing to waste little; larger ones (no inline data, huge xattr bodies) follow at the
/// end. Returns each record's offset and the end of the area.
pub fn pack(block_size: u64, start: u64, sizes: &[u64]) -> (Vec<u64>, u64) {
    let slot = |s: u64| s.max(1).next_multiple_of(SLOT);
    let mut offsets = vec![0u64; sizes.len()];
    let Some(&root) = sizes.first() else {
        return (offsets, start);
    };
    let first = start.next_multiple_of(SLOT);
    let first_block = first - first % block_size;
    // Blocks' used bytes (block 0 is the one the area starts in), and free space → blocks
    // with that much room.
    let mut used: Vec<u64> = vec![first % block_size];
    let mut by_free: BTreeSet<(u64, usize)> = BTreeSet::new();
    let mut end = first;
    let root = slot(root);
    if root > block_size {
        // No inline tail: the root may span blocks; the rest of its last block is usable.
        offsets[0] = first;
        end = first + root;
        used = vec![block_size; (end - first_block).div_ceil(block_size) as usize];
        *used.last_mut().expect("the root spans a block") =
            (end - first_block - 1) % block_size + 1;
    } else {
        // The root's record must not cross a block: start a new block when the shared
        // xattrs leave too little room in the first one.
        if used[0] + root > block_size {
            used.push(0);
        }
        let b = used.len() - 1;
        offsets[0] = first_block + b as u64 * block_size + used[b];
        used[b] += root;
        end = end.max(offsets[0] + root);
    }
    for (b, &u) in used.iter().enumerate() {
        if block_size - u >= SLOT {
            by_free.insert((block_size - u, b));
        }
    }
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
        end = end.max(offsets[i] + size);
        let free = block_size - used[b];
        if free >= SLOT {
            by_free.insert((free, b));
        }
    }
    end = end.max(first_block + (used.len() as u64 - 1) * block_size + used[used.len() - 1]);
    if !large.is_empty() {
        // Large records after every packed block (they may span blocks).
        end = end.max(first_block + used.len() as u64 * block_size);
    }
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

    #[test]
    fn a_root_that_does_not_fit_after_the_shared_xattrs_starts_a_block() {
        // Shared xattrs end at 3872: a 352-byte root (inline tail) would cross into block 1.
        for (start, root) in [
            (3872u64, 352u64),
            (4000, 128),
            (100, 4096),
            (0, 9000),
            (3872, 5000),
        ] {
            let sizes = [root, 200, 3900, 64, 32, 6000];
            let (off, end) = pack(4096, start, &sizes);
            let mut spans: Vec<(u64, u64)> = off
                .iter()
                .zip(&sizes)
                .map(|(&o, &s)| (o, o + s.next_multiple_of(32)))
                .collect();
            for (i, (&o, &s)) in off.iter().zip(&sizes).enumerate() {
                assert!(o >= start && o % 32 == 0, "record {i} at {o}");
                assert!(o + s <= end, "record {i} past the end");
                if s <= 4096 {
                    assert_eq!(o / 4096, (o + s - 1) / 4096, "record {i} crosses a block");
                }
            }
            spans.sort();
            assert!(
                spans.windows(2).all(|w| w[0].1 <= w[1].0),
                "overlap: {spans:?}"
            );
            assert!(
                off[0] < start.next_multiple_of(4096) + 4096,
                "root nid stays small"
            );
        }
    }
}
