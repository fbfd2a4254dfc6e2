//! The superblock: decoded and validated once when an image is opened.

use crate::error::{Error, Result};
use crate::format::{
    self, EROFS_MAGIC, MAX_BLKSZBITS, MIN_BLKSZBITS, SUPER_OFFSET, SUPERBLOCK_SIZE, SuperBlock,
    SuperBlockExt, compat, incompat,
};
use crate::source::ReadAt;
use zerocopy::FromBytes;

/// Nid bit saying "this inode lives in the metabox inode" (METABOX images).
pub const NID_METABOX_BIT: u32 = 63;

/// Longest superblock (with extension slots) we accept: the kernel's limit for 4 KiB pages.
const MAX_SB_SIZE: usize = 4096 - SUPER_OFFSET as usize;

/// Decoded, validated superblock fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// log2 of the block size (9 … 16).
    pub block_bits: u8,
    /// Stored crc32c (verified when `compat::SB_CHKSUM` is set).
    pub checksum: u32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    /// Superblock extension slots (16 bytes each).
    pub sb_extslots: u8,
    pub root_nid: u64,
    /// Number of inodes.
    pub inos: u64,
    /// Base seconds of compact inodes' mtimes.
    pub epoch: i64,
    /// Nanoseconds of every compact inode's mtime.
    pub fixed_nsec: u32,
    /// Image size in blocks.
    pub blocks: u64,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub uuid: [u8; 16],
    /// Volume name, NUL padding removed.
    pub volume_name: Vec<u8>,
    /// Compression algorithm bitmap (COMPR_CFGS) or LZ4 max distance.
    pub available_compr_algs: u16,
    pub extra_devices: u16,
    pub devt_slotoff: u16,
    /// log2(directory block size / block size).
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    /// Start of the long prefix table in 4-byte units.
    pub xattr_prefix_start: u32,
    /// Nid of the packed inode (0 = none).
    pub packed_nid: u64,
    /// Nonzero when the name filter's on-disk format changed (the filter is then unused).
    pub xattr_filter_reserved: u8,
    /// Long-prefix index of the fingerprint xattr, when ISHARE_XATTRS is set.
    pub ishare_xattr_prefix_id: Option<u8>,
    /// mkfs time in seconds after `epoch` (48-bit layout).
    pub build_time: u32,
    /// Nid of the metabox inode (METABOX).
    pub metabox_nid: Option<u64>,
}

fn corrupt(image: &str, what: String) -> Error {
    Error::Corrupt {
        image: image.to_string(),
        at: "superblock".into(),
        what,
    }
}

fn read(src: &dyn ReadAt, image: &str, buf: &mut [u8], offset: u64) -> Result<()> {
    src.read_exact_at(buf, offset).map_err(|cause| Error::Io {
        image: image.to_string(),
        offset,
        len: buf.len(),
        cause,
    })
}

/// The superblock checksum as mkfs.erofs and the kernel compute it: crc32c seeded with !0
/// and *not* inverted at the end, over `len` bytes from offset 1024 with the checksum
/// field zeroed.
pub fn checksum_of(block: &[u8]) -> u32 {
    !crc32c::crc32c(block)
}

/// How many bytes from offset 1024 the checksum covers for a block size.
pub fn checksum_len(block_bits: u8) -> usize {
    let bs = 1usize << block_bits;
    if bs > SUPER_OFFSET as usize {
        bs - SUPER_OFFSET as usize
    } else {
        bs
    }
}

impl Superblock {
    /// Read and validate the superblock of `src`.
    pub fn read(src: &dyn ReadAt, image: &str) -> Result<Superblock> {
        let len = src.len().map_err(|cause| Error::Open {
            image: image.to_string(),
            cause,
        })?;
        if len < SUPER_OFFSET + SUPERBLOCK_SIZE as u64 {
            return Err(Error::NotErofs {
                image: image.into(),
                what: format!("{len} bytes is too short to hold a superblock"),
            });
        }
        let mut head = [0u8; SUPERBLOCK_SIZE];
        read(src, image, &mut head, SUPER_OFFSET)?;
        let raw = SuperBlock::read_from_bytes(&head).expect("sized");
        if raw.magic.get() != EROFS_MAGIC {
            return Err(Error::NotErofs {
                image: image.into(),
                what: format!(
                    "magic {:#010x} at offset 1024, expected {EROFS_MAGIC:#010x}",
                    raw.magic.get()
                ),
            });
        }
        let block_bits = raw.blkszbits;
        if !(MIN_BLKSZBITS..=MAX_BLKSZBITS).contains(&block_bits) {
            return Err(corrupt(
                image,
                format!(
                    "blkszbits {block_bits}: block size must be 512 B … 64 KiB (bits {MIN_BLKSZBITS} … {MAX_BLKSZBITS})"
                ),
            ));
        }
        let feature_incompat = raw.feature_incompat.get();
        let unknown = feature_incompat & !incompat::ALL_KNOWN;
        if unknown != 0 {
            let bit = 1u32 << unknown.trailing_zeros();
            return Err(Error::UnsupportedFeature {
                image: image.into(),
                bit,
                name: incompat::name(bit),
            });
        }
        let feature_compat = raw.feature_compat.get();
        let sb_size = SUPERBLOCK_SIZE + raw.sb_extslots as usize * 16;
        if sb_size > MAX_SB_SIZE {
            return Err(corrupt(
                image,
                format!(
                    "sb_extslots {} makes a {sb_size} byte superblock (at most {MAX_SB_SIZE})",
                    raw.sb_extslots
                ),
            ));
        }
        if feature_compat & compat::SB_CHKSUM != 0 {
            let n = checksum_len(block_bits);
            if SUPER_OFFSET + n as u64 > len {
                return Err(corrupt(
                    image,
                    format!("checksummed range of {n} bytes runs past the {len} byte image"),
                ));
            }
            let mut block = vec![0u8; n];
            read(src, image, &mut block, SUPER_OFFSET)?;
            block[4..8].fill(0);
            let want = checksum_of(&block);
            if want != raw.checksum.get() {
                return Err(corrupt(
                    image,
                    format!(
                        "checksum {:#010x} does not match the computed crc32c {want:#010x}",
                        raw.checksum.get()
                    ),
                ));
            }
        }
        let dirblkbits = raw.dirblkbits;
        if block_bits as u32 + dirblkbits as u32 > MAX_BLKSZBITS as u32 {
            return Err(corrupt(
                image,
                format!(
                    "dirblkbits {dirblkbits} with block size 2^{block_bits} exceeds 64 KiB directory blocks"
                ),
            ));
        }
        let is_48bit = feature_incompat & incompat::BLOCKS_48BIT != 0;
        let mut blocks = raw.blocks_lo.get() as u64;
        let mut root_nid = raw.rootnid_2b.get() as u64;
        if is_48bit && raw.rootnid_8b.get() != 0 {
            root_nid = raw.rootnid_8b.get();
            blocks |= (raw.rootnid_2b.get() as u64) << 32;
        }
        let xattr_prefix_count = raw.xattr_prefix_count;
        let ishare_xattr_prefix_id = if feature_compat & compat::ISHARE_XATTRS != 0 {
            let id = raw.ishare_xattr_prefix_id;
            if id >= xattr_prefix_count {
                return Err(corrupt(
                    image,
                    format!(
                        "ishare_xattr_prefix_id {id} but only {xattr_prefix_count} long xattr prefixes"
                    ),
                ));
            }
            Some(id)
        } else {
            None
        };
        let metabox_nid = if feature_incompat & incompat::METABOX != 0 {
            if raw.sb_extslots == 0 {
                return Err(corrupt(
                    image,
                    "METABOX set but no superblock extension slot holds the metabox nid".into(),
                ));
            }
            let mut ext = [0u8; 16];
            read(src, image, &mut ext, SUPER_OFFSET + SUPERBLOCK_SIZE as u64)?;
            let nid = SuperBlockExt::read_from_bytes(&ext)
                .expect("sized")
                .metabox_nid
                .get();
            if nid >> NID_METABOX_BIT != 0 {
                return Err(corrupt(
                    image,
                    format!("metabox nid {nid:#x} points into the metabox itself"),
                ));
            }
            Some(nid)
        } else {
            None
        };
        let name_end = raw
            .volume_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.volume_name.len());
        Ok(Superblock {
            block_bits,
            checksum: raw.checksum.get(),
            feature_compat,
            feature_incompat,
            sb_extslots: raw.sb_extslots,
            root_nid,
            inos: raw.inos.get(),
            epoch: raw.epoch.get() as i64,
            fixed_nsec: raw.fixed_nsec.get(),
            blocks,
            meta_blkaddr: raw.meta_blkaddr.get(),
            xattr_blkaddr: raw.xattr_blkaddr.get(),
            uuid: raw.uuid,
            volume_name: raw.volume_name[..name_end].to_vec(),
            available_compr_algs: raw.available_compr_algs.get(),
            extra_devices: raw.extra_devices.get(),
            devt_slotoff: raw.devt_slotoff.get(),
            dirblkbits,
            xattr_prefix_count,
            xattr_prefix_start: raw.xattr_prefix_start.get(),
            packed_nid: raw.packed_nid.get(),
            xattr_filter_reserved: raw.xattr_filter_reserved,
            ishare_xattr_prefix_id,
            build_time: raw.build_time.get(),
            metabox_nid,
        })
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        1 << self.block_bits
    }

    /// Directory block size in bytes.
    pub fn dir_block_size(&self) -> u64 {
        1 << (self.block_bits + self.dirblkbits)
    }

    /// Byte offset of a block.
    pub fn block_offset(&self, block: u64) -> Option<u64> {
        block.checked_mul(self.block_size())
    }

    pub fn has_compat(&self, bit: u32) -> bool {
        self.feature_compat & bit != 0
    }

    pub fn has_incompat(&self, bit: u32) -> bool {
        self.feature_incompat & bit != 0
    }

    /// Whether inodes' xattr name filters may be trusted (as the kernel decides).
    pub fn xattr_filter_active(&self) -> bool {
        self.has_compat(compat::XATTR_FILTER) && self.xattr_filter_reserved == 0
    }

    /// 48-bit block addresses.
    pub fn is_48bit(&self) -> bool {
        self.has_incompat(incompat::BLOCKS_48BIT)
    }

    /// Names of every feature bit set, compat first.
    pub fn feature_names(&self) -> Vec<&'static str> {
        let compat_names = [
            (compat::SB_CHKSUM, "sb_csum"),
            (compat::MTIME, "mtime"),
            (compat::XATTR_FILTER, "xattr_filter"),
            (compat::SHARED_EA_IN_METABOX, "shared_ea_in_metabox"),
            (compat::PLAIN_XATTR_PFX, "plain_xattr_pfx"),
            (compat::ISHARE_XATTRS, "ishare_xattrs"),
        ];
        let mut out: Vec<&'static str> = compat_names
            .iter()
            .filter(|(b, _)| self.has_compat(*b))
            .map(|&(_, n)| n)
            .collect();
        for i in 0..32 {
            let bit = 1u32 << i;
            if self.feature_incompat & bit != 0 {
                out.push(format::incompat::name(bit));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn image(block_bits: u8) -> Vec<u8> {
        let mut v = vec![0u8; 8192];
        let mut sb = SuperBlock::read_from_bytes(&[0u8; SUPERBLOCK_SIZE][..]).unwrap();
        sb.magic.set(EROFS_MAGIC);
        sb.blkszbits = block_bits;
        sb.rootnid_2b.set(36);
        v[1024..1024 + SUPERBLOCK_SIZE].copy_from_slice(sb.as_bytes());
        v
    }

    fn set_checksum(v: &mut [u8]) {
        let bits = v[1024 + 12];
        v[1024 + 8] |= compat::SB_CHKSUM as u8;
        let n = checksum_len(bits);
        v[1028..1032].fill(0);
        let c = checksum_of(&v[1024..1024 + n]);
        v[1028..1032].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn minimal_superblock_decodes() {
        let v = image(12);
        let sb = Superblock::read(&v, "t").unwrap();
        assert_eq!((sb.block_size(), sb.root_nid), (4096, 36));
    }

    #[test]
    fn bad_magic_and_block_size_are_refused() {
        let mut v = image(12);
        v[1024] ^= 1;
        assert!(matches!(
            Superblock::read(&v, "t"),
            Err(Error::NotErofs { .. })
        ));
        for bits in [8u8, 17] {
            let v = image(bits);
            let e = Superblock::read(&v, "t").unwrap_err().to_string();
            assert!(e.contains("blkszbits"), "{e}");
        }
    }

    #[test]
    fn unknown_incompat_bit_is_named() {
        let mut v = image(12);
        v[1024 + 80..1024 + 84].copy_from_slice(&0x0000_0800u32.to_le_bytes());
        let e = Superblock::read(&v, "t").unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedFeature { bit: 0x800, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("0x800"));
    }

    #[test]
    fn checksum_is_verified() {
        for bits in [9u8, 10, 12] {
            let mut v = image(bits);
            set_checksum(&mut v);
            Superblock::read(&v, "t").unwrap();
            v[1024 + 64] ^= 0xff;
            let e = Superblock::read(&v, "t").unwrap_err().to_string();
            assert!(e.contains("checksum"), "{e}");
        }
    }

    #[test]
    fn truncated_image_is_not_erofs() {
        let v = vec![0u8; 1100];
        assert!(matches!(
            Superblock::read(&v, "t"),
            Err(Error::NotErofs { .. })
        ));
    }

    #[test]
    fn fingerprint_prefix_id_must_exist() {
        let mut v = image(12);
        v[1024 + 8] |= compat::ISHARE_XATTRS as u8;
        v[1024 + 105] = 0;
        let e = Superblock::read(&v, "t").unwrap_err().to_string();
        assert!(e.contains("ishare_xattr_prefix_id"), "{e}");
    }
}
