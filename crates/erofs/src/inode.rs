//! Inodes: compact (32 bytes) and extended (64 bytes), decoded into one [`Inode`].

use crate::format::{
    I_ALL_BITS, I_DATALAYOUT_BIT, I_DATALAYOUT_MASK, I_NLINK_1_BIT, I_VERSION_MASK, InodeCompact,
    InodeExtended, NULL_ADDR, chunk, layout, mode, xattr_ibody_size,
};
use crate::superblock::Superblock;
use zerocopy::FromBytes;

/// `i_format` bit 4 on directories: the "." entry is not stored.
pub const I_DOT_OMITTED_BIT: u16 = 4;

/// The kind of file an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Reg,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileType {
    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(m: u16) -> Option<FileType> {
        Some(match m & mode::S_IFMT {
            mode::S_IFREG => FileType::Reg,
            mode::S_IFDIR => FileType::Dir,
            mode::S_IFLNK => FileType::Symlink,
            mode::S_IFCHR => FileType::CharDev,
            mode::S_IFBLK => FileType::BlockDev,
            mode::S_IFIFO => FileType::Fifo,
            mode::S_IFSOCK => FileType::Socket,
            _ => return None,
        })
    }

    /// From a directory entry's `file_type` byte.
    pub fn from_dirent(t: u8) -> Option<FileType> {
        use crate::format::file_type as ft;
        Some(match t {
            ft::REG => FileType::Reg,
            ft::DIR => FileType::Dir,
            ft::SYMLINK => FileType::Symlink,
            ft::CHRDEV => FileType::CharDev,
            ft::BLKDEV => FileType::BlockDev,
            ft::FIFO => FileType::Fifo,
            ft::SOCK => FileType::Socket,
            _ => return None,
        })
    }

    /// Short name used in listings ("file", "dir", … as in the manifests).
    pub fn name(self) -> &'static str {
        match self {
            FileType::Reg => "file",
            FileType::Dir => "dir",
            FileType::Symlink => "symlink",
            FileType::CharDev => "chr",
            FileType::BlockDev => "blk",
            FileType::Fifo => "fifo",
            FileType::Socket => "sock",
        }
    }
}

/// Which address space an inode's metadata lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// Plain image offsets.
    Image,
    /// Offsets inside the metabox inode's data (METABOX images, nid bit 63).
    Metabox,
}

/// A decoded inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub nid: u64,
    /// 32-bit inode number stored on disk (for stat on 32-bit systems).
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Device number in the on-disk (Linux `new_encode_dev`) form; 0 for non-devices.
    pub rdev: u32,
    /// Data layout ([`crate::format::layout`]).
    pub layout: u8,
    /// Extended (64-byte) rather than compact (32-byte) inode.
    pub extended: bool,
    /// Directory without a stored "." entry.
    pub dot_omitted: bool,
    /// Raw `i_xattr_icount`.
    pub xattr_icount: u16,
    /// Raw `i_u` (start block, chunk format, compressed block count or rdev).
    pub raw_u: u32,
    /// First data block of flat layouts (48-bit aware); `None` when there is none.
    pub start_block: Option<u64>,
    /// Chunk format bits (CHUNK_BASED only).
    pub chunk_format: u16,
    pub(crate) space: Space,
    /// Where the inode starts in its space.
    pub(crate) pos: u64,
}

impl Inode {
    /// Decode the inode `nid` from its bytes (32 bytes, or 64 if it is extended).
    /// Returns `Err(Some(what))` when corrupt, `Err(None)` when 64 bytes are needed.
    pub(crate) fn decode(
        nid: u64,
        space: Space,
        pos: u64,
        bytes: &[u8],
        sb: &Superblock,
    ) -> Result<Inode, Option<String>> {
        let c = InodeCompact::read_from_prefix(bytes)
            .map_err(|_| Some("inode shorter than 32 bytes".to_string()))?
            .0;
        let ifmt = c.i_format.get();
        if ifmt & !I_ALL_BITS != 0 {
            return Err(Some(format!(
                "i_format {ifmt:#x} has unknown bits (known: {I_ALL_BITS:#x})"
            )));
        }
        let layout = ((ifmt >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK) as u8;
        if layout > layout::CHUNK_BASED {
            return Err(Some(format!("unknown data layout {layout}")));
        }
        let m = c.i_mode.get();
        let ft = FileType::from_mode(m)
            .ok_or_else(|| Some(format!("mode {m:#o} has no valid file type")))?;
        let is_dir = ft == FileType::Dir;
        let bit4 = (ifmt >> I_NLINK_1_BIT) & 1 != 0;
        let extended = ifmt & I_VERSION_MASK != 0;
        let mut inode = Inode {
            nid,
            ino: c.i_ino.get(),
            mode: m,
            uid: c.i_uid.get() as u32,
            gid: c.i_gid.get() as u32,
            nlink: 0,
            size: c.i_size.get() as u64,
            mtime: sb.epoch.wrapping_add(c.i_mtime.get() as i64),
            mtime_nsec: sb.fixed_nsec,
            rdev: 0,
            layout,
            extended,
            dot_omitted: is_dir && bit4,
            xattr_icount: c.i_xattr_icount.get(),
            raw_u: c.i_u.get(),
            start_block: None,
            chunk_format: 0,
            space,
            pos,
        };
        // High bits of the start block: compact inodes have them only with NLINK_1.
        let (start_hi, addr_bits) = if extended {
            let e = InodeExtended::read_from_prefix(bytes).map_err(|_| None)?.0;
            inode.size = e.i_size.get();
            inode.uid = e.i_uid.get();
            inode.gid = e.i_gid.get();
            inode.mtime = e.i_mtime.get() as i64;
            inode.mtime_nsec = e.i_mtime_nsec.get();
            inode.nlink = e.i_nlink.get();
            inode.ino = e.i_ino.get();
            (e.i_nb.get() as u64, 48)
        } else if !is_dir && bit4 {
            inode.nlink = 1;
            (c.i_nb.get() as u64, 48)
        } else {
            inode.nlink = c.i_nb.get() as u32;
            (0, 32)
        };
        if inode.size > i64::MAX as u64 {
            return Err(Some(format!("size {} is negative as i64", inode.size)));
        }
        if inode.mtime_nsec >= 1_000_000_000 {
            return Err(Some(format!(
                "mtime nanoseconds {} is not below 1e9",
                inode.mtime_nsec
            )));
        }
        match ft {
            FileType::Reg | FileType::Dir | FileType::Symlink => {
                let start = inode.raw_u as u64 | (start_hi << 32);
                let mask = (1u64 << addr_bits) - 1;
                let null = (start ^ NULL_ADDR as u64) & mask == 0;
                let flat = layout == layout::FLAT_PLAIN || layout == layout::FLAT_INLINE;
                inode.start_block = (flat && !null).then_some(start);
            }
            FileType::CharDev | FileType::BlockDev => inode.rdev = inode.raw_u,
            FileType::Fifo | FileType::Socket => {}
        }
        if layout == layout::CHUNK_BASED {
            let f = inode.raw_u as u16;
            if f & !chunk::ALL != 0 {
                return Err(Some(format!(
                    "chunk format {f:#x} has unknown bits (known: {:#x})",
                    chunk::ALL
                )));
            }
            inode.chunk_format = f;
        }
        Ok(inode)
    }

    pub fn file_type(&self) -> FileType {
        FileType::from_mode(self.mode).expect("validated at decode")
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Dir
    }

    /// Permission bits (incl. setuid, setgid, sticky).
    pub fn permissions(&self) -> u16 {
        self.mode & 0o7777
    }

    /// Major device number (Linux `new_decode_dev`).
    pub fn rdev_major(&self) -> u32 {
        (self.rdev & 0xfff00) >> 8
    }

    /// Minor device number (Linux `new_decode_dev`).
    pub fn rdev_minor(&self) -> u32 {
        (self.rdev & 0xff) | ((self.rdev >> 12) & 0xfff00)
    }

    /// Size of the on-disk inode (32 or 64).
    pub fn inode_size(&self) -> u64 {
        if self.extended { 64 } else { 32 }
    }

    /// Size of the inline xattr area after the inode.
    pub fn xattr_size(&self) -> u64 {
        xattr_ibody_size(self.xattr_icount) as u64
    }

    /// Compressed data layouts.
    pub fn is_compressed(&self) -> bool {
        self.layout == layout::COMPRESSED_FULL || self.layout == layout::COMPRESSED_COMPACT
    }

    /// Where the inode's metadata ends (inode + inline xattrs), in its space.
    pub(crate) fn meta_end(&self) -> Option<u64> {
        self.pos
            .checked_add(self.inode_size())?
            .checked_add(self.xattr_size())
    }

    /// Name of the data layout, for listings.
    pub fn layout_name(&self) -> &'static str {
        match self.layout {
            layout::FLAT_PLAIN => "flat_plain",
            layout::COMPRESSED_FULL => "compressed_full",
            layout::FLAT_INLINE => "flat_inline",
            layout::COMPRESSED_COMPACT => "compressed_compact",
            layout::CHUNK_BASED => "chunk_based",
            _ => "unknown",
        }
    }

    /// Where the inode lives: plain image offset, or `None` if it is inside the metabox.
    pub fn image_offset(&self) -> Option<u64> {
        (self.space == Space::Image).then_some(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn sb() -> Superblock {
        let mut v = vec![0u8; 4096];
        v[1024..1028].copy_from_slice(&crate::format::EROFS_MAGIC.to_le_bytes());
        v[1024 + 12] = 12;
        v[1024 + 24..1024 + 32].copy_from_slice(&1_700_000_000u64.to_le_bytes());
        v[1024 + 32..1024 + 36].copy_from_slice(&123u32.to_le_bytes());
        Superblock::read(&v, "t").unwrap()
    }

    fn compact(format: u16, mode: u16, nb: u16, u: u32) -> InodeCompact {
        let mut c = InodeCompact::read_from_bytes(&[0u8; 32][..]).unwrap();
        c.i_format.set(format);
        c.i_mode.set(mode);
        c.i_nb.set(nb);
        c.i_u.set(u);
        c.i_mtime.set(5);
        c.i_size.set(10);
        c
    }

    #[test]
    fn compact_inode_uses_epoch_and_fixed_nsec() {
        let c = compact(0, 0o100644, 3, 7);
        let i = Inode::decode(1, Space::Image, 32, c.as_bytes(), &sb()).unwrap();
        assert_eq!((i.mtime, i.mtime_nsec), (1_700_000_005, 123));
        assert_eq!((i.nlink, i.start_block, i.size), (3, Some(7), 10));
    }

    #[test]
    fn nlink_1_bit_carries_start_block_high_bits() {
        let c = compact(1 << I_NLINK_1_BIT, 0o100644, 2, 7);
        let i = Inode::decode(1, Space::Image, 32, c.as_bytes(), &sb()).unwrap();
        assert_eq!((i.nlink, i.start_block), (1, Some((2 << 32) | 7)));
        // On a directory the same bit means "dot omitted".
        let c = compact(1 << I_NLINK_1_BIT, 0o040755, 2, 7);
        let i = Inode::decode(1, Space::Image, 32, c.as_bytes(), &sb()).unwrap();
        assert_eq!((i.nlink, i.dot_omitted, i.start_block), (2, true, Some(7)));
    }

    #[test]
    fn null_start_block_means_none() {
        let c = compact(0, 0o100644, 1, NULL_ADDR);
        let i = Inode::decode(1, Space::Image, 32, c.as_bytes(), &sb()).unwrap();
        assert_eq!(i.start_block, None);
    }

    #[test]
    fn device_numbers_decode() {
        // new_encode_dev(makedev(259, 70000)).
        let (ma, mi) = (259u32, 70000u32);
        let raw = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
        let c = compact(0, 0o020600, 1, raw);
        let i = Inode::decode(1, Space::Image, 32, c.as_bytes(), &sb()).unwrap();
        assert_eq!((i.rdev_major(), i.rdev_minor()), (ma, mi));
    }

    #[test]
    fn bad_fields_are_refused() {
        let s = sb();
        for (f, m) in [(0x20u16, 0o100644u16), (5 << 1, 0o100644), (0, 0o170644)] {
            let c = compact(f, m, 1, 0);
            let e = Inode::decode(1, Space::Image, 32, c.as_bytes(), &s).unwrap_err();
            assert!(e.is_some());
        }
        // An extended inode needs its 64 bytes.
        let c = compact(1, 0o100644, 1, 0);
        assert_eq!(
            Inode::decode(1, Space::Image, 32, c.as_bytes(), &s),
            Err(None)
        );
    }
}
