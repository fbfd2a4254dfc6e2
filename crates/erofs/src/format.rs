//! EROFS on-disk structures, declared once, little-endian, with zerocopy.
//!
//! Field offsets follow `include/erofs_fs.h` (erofs-utils 1.9) and the Linux 6.18+
//! `fs/erofs/erofs_fs.h`. Raw structs only: meaning (enums, ranges) is decoded by the
//! modules named after each concept (`superblock`, `inode`, `dir`, `xattr`, `zmap`).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic number at the start of the superblock.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Byte offset of the superblock in the image.
pub const SUPER_OFFSET: u64 = 1024;
/// Inode slots are 32 bytes: nid × 32 is an inode's offset in the metadata area.
pub const ISLOT_BITS: u32 = 5;
/// "No block": a hole in a chunk map, or a flat inode with no data blocks.
pub const NULL_ADDR: u32 = 0xFFFF_FFFF;
/// Smallest and largest block size we accept (512 B … 64 KiB).
pub const MIN_BLKSZBITS: u8 = 9;
pub const MAX_BLKSZBITS: u8 = 16;
/// Longest file name in a directory entry.
pub const NAME_LEN: usize = 255;

/// `feature_compat` bits: an older reader may ignore them.
pub mod compat {
    /// Superblock carries a crc32c checksum.
    pub const SB_CHKSUM: u32 = 0x0000_0001;
    /// Compact inodes carry their own mtime (relative to the superblock epoch).
    pub const MTIME: u32 = 0x0000_0002;
    /// Inodes carry a 32-bit xattr name bloom filter.
    pub const XATTR_FILTER: u32 = 0x0000_0004;
    /// Shared xattrs live in the metabox inode.
    pub const SHARED_EA_IN_METABOX: u32 = 0x0000_0008;
    /// Long xattr prefixes are stored plainly in the metadata area.
    pub const PLAIN_XATTR_PFX: u32 = 0x0000_0010;
    /// Regular files carry a content fingerprint xattr (`inode_share`).
    pub const ISHARE_XATTRS: u32 = 0x0000_0020;
}

/// `feature_incompat` bits: a reader must understand every bit set.
pub mod incompat {
    /// Compressed data starts at the end of the physical cluster (LZ4 0padding).
    pub const ZERO_PADDING: u32 = 0x0000_0001;
    /// Per-algorithm configs follow the superblock (`available_compr_algs`).
    pub const COMPR_CFGS: u32 = 0x0000_0002;
    /// Physical clusters larger than one block.
    pub const BIG_PCLUSTER: u32 = 0x0000_0002;
    /// Chunk-based files.
    pub const CHUNKED_FILE: u32 = 0x0000_0004;
    /// Extra devices table.
    pub const DEVICE_TABLE: u32 = 0x0000_0008;
    /// A second head lcluster type (HEAD2) for multi-algorithm images.
    pub const COMPR_HEAD2: u32 = 0x0000_0008;
    /// Compressed tail packed inline after the inode.
    pub const ZTAILPACKING: u32 = 0x0000_0010;
    /// Fragments: tails (or whole files) packed into the packed inode.
    pub const FRAGMENTS: u32 = 0x0000_0020;
    /// Deduplicated (partially referenced) physical clusters.
    pub const DEDUPE: u32 = 0x0000_0020;
    /// Long xattr name prefixes.
    pub const XATTR_PREFIXES: u32 = 0x0000_0040;
    /// 48-bit block addresses and the `epoch`-relative mtime layout.
    pub const BLOCKS_48BIT: u32 = 0x0000_0080;
    /// Metadata box inode.
    pub const METABOX: u32 = 0x0000_0100;
    /// Every incompat bit this crate understands.
    pub const ALL_KNOWN: u32 = ZERO_PADDING
        | COMPR_CFGS
        | CHUNKED_FILE
        | DEVICE_TABLE
        | ZTAILPACKING
        | FRAGMENTS
        | XATTR_PREFIXES
        | BLOCKS_48BIT
        | METABOX;

    /// Human name of one incompat bit, for error messages.
    pub fn name(bit: u32) -> &'static str {
        match bit {
            ZERO_PADDING => "zero_padding",
            COMPR_CFGS => "compr_cfgs/big_pcluster",
            CHUNKED_FILE => "chunked_file",
            DEVICE_TABLE => "device_table/compr_head2",
            ZTAILPACKING => "ztailpacking",
            FRAGMENTS => "fragments/dedupe",
            XATTR_PREFIXES => "xattr_prefixes",
            BLOCKS_48BIT => "48bit",
            METABOX => "metabox",
            _ => "unknown",
        }
    }
}

/// The superblock, 128 bytes at offset 1024 (plus `sb_extslots` × 16 extension bytes).
///
/// The 48-bit layout (Linux 6.15+) reuses fields of the older one: `epoch`/`fixed_nsec` were
/// `build_time`/`build_time_nsec`, and `rootnid_2b` is `blocks_hi` when 48BIT is set.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlock {
    /// 0: [`EROFS_MAGIC`].
    pub magic: U32,
    /// 4: crc32c of the superblock block (from offset 1024), this field zeroed.
    pub checksum: U32,
    /// 8: [`compat`] bits.
    pub feature_compat: U32,
    /// 12: log2 of the block size.
    pub blkszbits: u8,
    /// 13: superblock extension slots (16 bytes each).
    pub sb_extslots: u8,
    /// 14: root directory nid (16-bit), or high 16 bits of `blocks` with 48BIT.
    pub rootnid_2b: U16,
    /// 16: number of inodes.
    pub inos: U64,
    /// 24: base time in seconds: compact inode mtimes are relative to it.
    pub epoch: U64,
    /// 32: nanoseconds of every compact inode's mtime.
    pub fixed_nsec: U32,
    /// 36: image size in blocks (low 32 bits).
    pub blocks_lo: U32,
    /// 40: first block of the metadata (inode) area.
    pub meta_blkaddr: U32,
    /// 44: first block of the shared xattr area.
    pub xattr_blkaddr: U32,
    /// 48: volume uuid.
    pub uuid: [u8; 16],
    /// 64: volume name, NUL padded.
    pub volume_name: [u8; 16],
    /// 80: [`incompat`] bits.
    pub feature_incompat: U32,
    /// 84: bitmap of compression algorithms (with COMPR_CFGS), else LZ4 max distance.
    pub available_compr_algs: U16,
    /// 86: number of extra devices.
    pub extra_devices: U16,
    /// 88: device table offset in 128-byte slots.
    pub devt_slotoff: U16,
    /// 90: log2 of directory block size relative to the block size (0 = one block).
    pub dirblkbits: u8,
    /// 91: number of long xattr name prefixes.
    pub xattr_prefix_count: u8,
    /// 92: start of the long prefix table, in 4-byte units.
    pub xattr_prefix_start: U32,
    /// 96: nid of the packed inode (fragments, long prefixes).
    pub packed_nid: U64,
    /// 104: reserved for the xattr name filter.
    pub xattr_filter_reserved: u8,
    /// 105: long-prefix index of the fingerprint xattr name (ISHARE_XATTRS).
    pub ishare_xattr_prefix_id: u8,
    /// 106: reserved.
    pub reserved: [u8; 2],
    /// 108: mkfs time in seconds after `epoch` (48-bit layout).
    pub build_time: U32,
    /// 112: 64-bit root nid (48-bit layout).
    pub rootnid_8b: U64,
    /// 120: reserved.
    pub reserved2: U64,
}

/// Size of [`SuperBlock`] on disk.
pub const SUPERBLOCK_SIZE: usize = 128;
const _: () = assert!(size_of::<SuperBlock>() == SUPERBLOCK_SIZE);

/// Superblock extension slot 0 (when `sb_extslots` ≥ 1 … the 48-bit layout stores the
/// metabox nid at absolute superblock offset 128).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SuperBlockExt {
    /// 128: nid of the metabox inode (METABOX).
    pub metabox_nid: U64,
    /// 136: reserved.
    pub reserved: U64,
}

/// `i_format` bit 0: 0 = compact (32-byte) inode, 1 = extended (64-byte) inode.
pub const I_VERSION_MASK: u16 = 0x1;
/// `i_format` bits 1–3: the data layout.
pub const I_DATALAYOUT_BIT: u16 = 1;
pub const I_DATALAYOUT_MASK: u16 = 0x7;
/// `i_format` bit 4 (compact inodes, 48-bit layout): nlink is 1 and `i_nb` is `startblk_hi`.
pub const I_NLINK_1_BIT: u16 = 4;
/// All `i_format` bits a reader understands.
pub const I_ALL_BITS: u16 = 0x1f;

/// Data layouts (`i_format` bits 1–3).
pub mod layout {
    pub const FLAT_PLAIN: u8 = 0;
    pub const COMPRESSED_FULL: u8 = 1;
    pub const FLAT_INLINE: u8 = 2;
    pub const COMPRESSED_COMPACT: u8 = 3;
    pub const CHUNK_BASED: u8 = 4;
}

/// Compact inode, 32 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeCompact {
    /// 0: version and data layout.
    pub i_format: U16,
    /// 2: xattr ibody size: 0, or 12 + (icount − 1) × 4 bytes.
    pub i_xattr_icount: U16,
    /// 4: file type and permissions.
    pub i_mode: U16,
    /// 6: nlink, or `startblk_hi` when `I_NLINK_1_BIT` is set.
    pub i_nb: U16,
    /// 8: file size.
    pub i_size: U32,
    /// 12: mtime in seconds after the superblock epoch (0 on images without COMPAT_MTIME).
    pub i_mtime: U32,
    /// 16: layout-dependent union, see [`InodeUnion`].
    pub i_u: U32,
    /// 20: inode number for 32-bit stat.
    pub i_ino: U32,
    /// 24
    pub i_uid: U16,
    /// 26
    pub i_gid: U16,
    /// 28
    pub i_reserved: U32,
}
const _: () = assert!(size_of::<InodeCompact>() == 32);

/// Extended inode, 64 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InodeExtended {
    /// 0: version and data layout.
    pub i_format: U16,
    /// 2: xattr ibody size, as in the compact inode.
    pub i_xattr_icount: U16,
    /// 4: file type and permissions.
    pub i_mode: U16,
    /// 6: `startblk_hi` (48-bit layout), else reserved.
    pub i_nb: U16,
    /// 8: file size.
    pub i_size: U64,
    /// 16: layout-dependent union, see [`InodeUnion`].
    pub i_u: U32,
    /// 20: inode number for 32-bit stat.
    pub i_ino: U32,
    /// 24
    pub i_uid: U32,
    /// 28
    pub i_gid: U32,
    /// 32: mtime seconds.
    pub i_mtime: U64,
    /// 40: mtime nanoseconds.
    pub i_mtime_nsec: U32,
    /// 44
    pub i_nlink: U32,
    /// 48
    pub i_reserved2: [u8; 16],
}
const _: () = assert!(size_of::<InodeExtended>() == 64);

/// Meanings of the 32-bit `i_u` field, by data layout and file type:
/// - FLAT_PLAIN / FLAT_INLINE: `startblk_lo` (first data block; [`NULL_ADDR`] = none).
/// - COMPRESSED_*: `compressed_blocks`.
/// - CHUNK_BASED: low 16 bits = chunk format ([`chunk`]).
/// - char/block devices: `rdev` (Linux new_encode_dev form).
#[derive(Debug)]
pub enum InodeUnion {}

/// Chunk format bits (`i_u` low 16 bits of CHUNK_BASED inodes).
pub mod chunk {
    /// log2(chunk size / block size).
    pub const BLKBITS_MASK: u16 = 0x001f;
    /// Chunk indexes (8 bytes each) instead of a 4-byte block map.
    pub const INDEXES: u16 = 0x0020;
    /// 48-bit start blocks in chunk indexes.
    pub const BLOCKS_48BIT: u16 = 0x0040;
    pub const ALL: u16 = BLKBITS_MASK | INDEXES | BLOCKS_48BIT;
}

/// A chunk index (8 bytes), used when [`chunk::INDEXES`] is set.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChunkIndex {
    /// 0: high 16 bits of the start block (48-bit layout), else 0.
    pub startblk_hi: U16,
    /// 2: device id (0 = primary device).
    pub device_id: U16,
    /// 4: start block, low 32 bits; [`NULL_ADDR`] = hole.
    pub startblk_lo: U32,
}

/// Header of the inline xattr area that follows an inode when `i_xattr_icount` ≠ 0.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrIbodyHeader {
    /// 0: name bloom filter, stored inverted (a set bit: no xattr name hashes there).
    pub h_name_filter: U32,
    /// 4: number of shared xattr ids following this header.
    pub h_shared_count: u8,
    /// 5
    pub h_reserved2: [u8; 7],
    // followed by h_shared_count × le32 shared xattr ids, then inline entries
}
pub const XATTR_IBODY_HEADER_SIZE: usize = 12;
const _: () = assert!(size_of::<XattrIbodyHeader>() == XATTR_IBODY_HEADER_SIZE);

/// One xattr entry header; name and value follow, the whole padded to 4 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct XattrEntry {
    /// 0: length of the name suffix.
    pub e_name_len: u8,
    /// 1: name index ([`xattr_index`]), or 0x80 | long prefix id.
    pub e_name_index: u8,
    /// 2: value length.
    pub e_value_size: U16,
}
pub const XATTR_ENTRY_SIZE: usize = 4;

/// Size in bytes of the inline xattr area for an `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + (icount as usize - 1) * 4
    }
}

/// Built-in xattr name indexes.
pub mod xattr_index {
    pub const USER: u8 = 1;
    pub const POSIX_ACL_ACCESS: u8 = 2;
    pub const POSIX_ACL_DEFAULT: u8 = 3;
    pub const TRUSTED: u8 = 4;
    pub const LUSTRE: u8 = 5;
    pub const SECURITY: u8 = 6;
    /// Set on `e_name_index` when the rest is a long prefix id.
    pub const LONG_PREFIX: u8 = 0x80;
    pub const LONG_PREFIX_MASK: u8 = 0x7f;

    /// The name prefix of a built-in index ("" for index 0 and unknown ones).
    pub fn prefix(index: u8) -> Option<&'static [u8]> {
        Some(match index {
            0 => b"",
            USER => b"user.",
            POSIX_ACL_ACCESS => b"system.posix_acl_access",
            POSIX_ACL_DEFAULT => b"system.posix_acl_default",
            TRUSTED => b"trusted.",
            LUSTRE => b"lustre.",
            SECURITY => b"security.",
            _ => return None,
        })
    }
}

/// Seed of the xattr name filter hash: xxh32(name suffix, FILTER_SEED + index) & 31.
pub const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;
/// Number of bits in the name filter.
pub const XATTR_FILTER_BITS: u32 = 32;

/// A directory entry, 12 bytes; names follow the entry array in the same directory block.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Dirent {
    /// 0: target nid.
    pub nid: U64,
    /// 8: offset of the name within the directory block.
    pub nameoff: U16,
    /// 10: file type ([`file_type`]).
    pub file_type: u8,
    /// 11
    pub reserved: u8,
}
pub const DIRENT_SIZE: usize = 12;

/// Directory entry file types (as in `fs_types.h`).
pub mod file_type {
    pub const UNKNOWN: u8 = 0;
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHRDEV: u8 = 3;
    pub const BLKDEV: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SOCK: u8 = 6;
    pub const SYMLINK: u8 = 7;
}

/// Compression algorithm ids (`h_algorithmtype` nibbles, `available_compr_algs` bits).
pub mod compr_alg {
    pub const LZ4: u8 = 0;
    pub const LZMA: u8 = 1;
    pub const DEFLATE: u8 = 2;
    pub const ZSTD: u8 = 3;
    pub const MAX: u8 = 4;

    pub fn name(alg: u8) -> &'static str {
        match alg {
            LZ4 => "lz4",
            LZMA => "lzma",
            DEFLATE => "deflate",
            ZSTD => "zstd",
            _ => "unknown",
        }
    }
}

/// The map header of a compressed inode (8 bytes, after the xattrs, 8-byte aligned).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ZMapHeader {
    /// 0: fragment offset in the packed inode (all-fragments), or
    /// `h_reserved1: u16` + `h_idata_size: u16` (ztailpacking inline size).
    pub h_fragmentoff_or_idata: U32,
    /// 4: advise bits ([`zadvise`]).
    pub h_advise: U16,
    /// 6: algorithm of HEAD1 (bits 0–3) and HEAD2 (bits 4–7) lclusters.
    pub h_algorithmtype: u8,
    /// 7: bits 0–3: lcluster size log2 − block size log2; bit 7: the whole file is a fragment.
    pub h_clusterbits: u8,
}
pub const ZMAP_HEADER_SIZE: usize = 8;

/// `h_advise` bits of a compressed inode.
pub mod zadvise {
    pub const COMPACTED_2B: u16 = 0x0001;
    pub const BIG_PCLUSTER_1: u16 = 0x0002;
    pub const BIG_PCLUSTER_2: u16 = 0x0004;
    pub const INLINE_PCLUSTER: u16 = 0x0008;
    pub const INTERLACED_PCLUSTER: u16 = 0x0010;
    pub const FRAGMENT_PCLUSTER: u16 = 0x0020;
    /// COMPRESSED_FULL only (same bit as COMPACTED_2B): extent records instead of lcluster
    /// indexes (the 48-bit layout); bits 1–2 then give the record size, 4 << n bytes, and
    /// the map header's first 4 and last 2 bytes the record count.
    pub const EXTENTS: u16 = 0x0001;
}

/// A full (non-compact) lcluster index, 8 bytes (COMPRESSED_FULL layout).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LclusterIndex {
    /// 0: type (bits 0–1) and flags.
    pub di_advise: U16,
    /// 2: offset of the decompressed data start within this lcluster (HEAD/PLAIN).
    pub di_clusterofs: U16,
    /// 4: start block (HEAD/PLAIN) or delta[0], delta[1] (NONHEAD).
    pub di_u: U32,
}

/// lcluster types (low 2 bits of `di_advise`).
pub mod lcluster {
    pub const PLAIN: u8 = 0;
    pub const HEAD1: u8 = 1;
    pub const NONHEAD: u8 = 2;
    pub const HEAD2: u8 = 3;
    pub const TYPE_MASK: u16 = 0x3;
    /// `di_advise` bit 15: partially referenced pcluster (dedupe).
    pub const PARTIAL_REF: u16 = 0x8000;
    /// NONHEAD delta[0] bit 11: the count of blocks of a big pcluster (CBLKCNT).
    pub const D0_CBLKCNT: u16 = 0x0800;
}

/// Per-algorithm config after the superblock: `le16 size` then the payload.
pub mod compr_cfg {
    /// LZ4: `le16 max_distance; le16 max_pclusterblks; u8 reserved[10]`.
    pub const LZ4_SIZE: usize = 14;
    /// LZMA: `le32 dict_size; le16 format; u8 reserved[8]`.
    pub const LZMA_SIZE: usize = 14;
    /// DEFLATE: `u8 windowbits; u8 reserved[5]`.
    pub const DEFLATE_SIZE: usize = 6;
    /// ZSTD: `u8 format; u8 windowlog; u8 reserved[4]`.
    pub const ZSTD_SIZE: usize = 6;
}

/// Fingerprint xattr defaults (see ISHARE.md).
pub mod fingerprint {
    /// Default name written by `mkfs.erofs --xattr-inode-digest`: hidden (base index 0).
    pub const DEFAULT_NAME: &str = "erofs.fingerprint.v1";
    /// Value prefix before the raw digest.
    pub const SHA256_TAG: &[u8] = b"sha256:";
    /// Full value length: tag + 32 digest bytes.
    pub const VALUE_LEN: usize = 39;
}

/// POSIX file type bits of `i_mode`.
pub mod mode {
    pub const S_IFMT: u16 = 0o170000;
    pub const S_IFSOCK: u16 = 0o140000;
    pub const S_IFLNK: u16 = 0o120000;
    pub const S_IFREG: u16 = 0o100000;
    pub const S_IFBLK: u16 = 0o060000;
    pub const S_IFDIR: u16 = 0o040000;
    pub const S_IFCHR: u16 = 0o020000;
    pub const S_IFIFO: u16 = 0o010000;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn superblock_field_offsets_match_the_format() {
        assert_eq!(offset_of!(SuperBlock, feature_incompat), 80);
        assert_eq!(offset_of!(SuperBlock, packed_nid), 96);
        assert_eq!(offset_of!(SuperBlock, ishare_xattr_prefix_id), 105);
        assert_eq!(offset_of!(SuperBlock, build_time), 108);
        assert_eq!(offset_of!(SuperBlock, rootnid_8b), 112);
    }

    #[test]
    fn inode_field_offsets_match_the_format() {
        assert_eq!(offset_of!(InodeCompact, i_u), 16);
        assert_eq!(offset_of!(InodeExtended, i_mtime), 32);
        assert_eq!(offset_of!(InodeExtended, i_nlink), 44);
    }

    #[test]
    fn xattr_ibody_size_counts_header_and_slots() {
        assert_eq!(xattr_ibody_size(0), 0);
        assert_eq!(xattr_ibody_size(1), 12);
        assert_eq!(xattr_ibody_size(3), 20);
    }
}
