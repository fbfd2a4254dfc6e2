//! An opened image: the superblock, the long xattr prefixes, and every read operation
//! (inodes, directories, data, symlinks, xattrs), all by positioned reads.

use crate::data;
use crate::dir::{self, DirEntry};
use crate::error::{Error, Result};
use crate::inode::{FileType, Inode, Space};
use crate::source::ReadAt;
use crate::superblock::{NID_METABOX_BIT, Superblock};
use crate::xattr::{self, LongPrefix, Xattr};
use std::path::Path;
use std::sync::Arc;

/// Longest symlink target we read (PATH_MAX).
const MAX_SYMLINK: u64 = 4096;

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Image>();
};

/// An EROFS image opened for reading. `Send + Sync`: share it with `Arc`.
#[derive(Debug)]
pub struct Image {
    src: Arc<dyn ReadAt>,
    name: String,
    sb: Superblock,
    len: u64,
    metabox: Option<Inode>,
    /// The long xattr prefix table, or why it could not be read.
    prefixes: std::result::Result<Vec<LongPrefix>, String>,
    /// Decoders, extent maps and decoded pclusters of compressed inodes.
    zcache: crate::decompress::Cache,
}

impl Image {
    /// Open an image file.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|cause| Error::Open {
            image: name.clone(),
            cause,
        })?;
        Image::from_source(Arc::new(f), name)
    }

    /// Open an image from any byte source; `name` is used in error messages.
    pub fn from_source(src: Arc<dyn ReadAt>, name: impl Into<String>) -> Result<Image> {
        let name = name.into();
        let sb = Superblock::read(src.as_ref(), &name)?;
        let len = src.len().map_err(|cause| Error::Open {
            image: name.clone(),
            cause,
        })?;
        let mut img = Image {
            src,
            name,
            sb,
            len,
            metabox: None,
            prefixes: Ok(Vec::new()),
            zcache: Default::default(),
        };
        if let Some(nid) = img.sb.metabox_nid {
            let mb = img.inode(nid)?;
            if mb.file_type() != FileType::Reg {
                return Err(img.corrupt_nid(nid, "the metabox inode is not a regular file".into()));
            }
            img.metabox = Some(mb);
        }
        img.prefixes = xattr::load_prefixes(&img).map_err(|e| e.to_string());
        Ok(img)
    }

    /// The name used in error messages (the path for [`Image::open`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn root_nid(&self) -> u64 {
        self.sb.root_nid
    }

    /// Length of the image in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length image (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The long xattr name prefixes (base index + infix).
    pub fn long_prefixes(&self) -> Result<&[LongPrefix]> {
        self.prefixes.as_deref().map_err(|e| Error::Corrupt {
            image: self.name.clone(),
            at: "long xattr prefixes".into(),
            what: e.clone(),
        })
    }

    pub(crate) fn zcache(&self) -> &crate::decompress::Cache {
        &self.zcache
    }

    /// How many compressed pclusters were decoded since the image was opened (each cache
    /// miss decodes one).
    pub fn pclusters_decoded(&self) -> u64 {
        self.zcache.pclusters_decoded()
    }

    pub(crate) fn corrupt_nid(&self, nid: u64, what: String) -> Error {
        Error::Corrupt {
            image: self.name.clone(),
            at: format!("nid {nid}"),
            what,
        }
    }

    pub(crate) fn corrupt_at(&self, at: &str, what: String) -> Error {
        Error::Corrupt {
            image: self.name.clone(),
            at: at.to_string(),
            what,
        }
    }

    /// Read raw image bytes.
    pub(crate) fn read_raw(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.src
            .read_exact_at(buf, offset)
            .map_err(|cause| Error::Io {
                image: self.name.clone(),
                offset,
                len: buf.len(),
                cause,
            })
    }

    /// Read metadata bytes from the image or from the metabox inode's data.
    pub(crate) fn read_meta(&self, space: Space, pos: u64, buf: &mut [u8]) -> Result<()> {
        match space {
            Space::Image => self.read_raw(pos, buf),
            Space::Metabox => {
                let mb = self.metabox.as_ref().ok_or_else(|| {
                    self.corrupt_at("metabox", "metadata in a metabox the image lacks".into())
                })?;
                if self.read_at(mb, pos, buf)? != buf.len() {
                    return Err(self.corrupt_nid(
                        mb.nid,
                        format!(
                            "metabox read of {} bytes at {pos} runs past its {} bytes",
                            buf.len(),
                            mb.size
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Where the inode `nid` starts.
    fn inode_location(&self, nid: u64) -> Result<(Space, u64)> {
        let overflow = || self.corrupt_nid(nid, "inode offset overflows".into());
        if nid >> NID_METABOX_BIT != 0 {
            if self.metabox.is_none() {
                return Err(
                    self.corrupt_nid(nid, "metabox nid in an image without a metabox".into())
                );
            }
            let local = nid & !(1u64 << NID_METABOX_BIT);
            return Ok((Space::Metabox, local.checked_mul(32).ok_or_else(overflow)?));
        }
        let base = self
            .sb
            .block_offset(self.sb.meta_blkaddr as u64)
            .ok_or_else(overflow)?;
        let pos = nid
            .checked_mul(32)
            .and_then(|o| o.checked_add(base))
            .ok_or_else(overflow)?;
        Ok((Space::Image, pos))
    }

    /// Read and decode the inode `nid`.
    pub fn inode(&self, nid: u64) -> Result<Inode> {
        let (space, pos) = self.inode_location(nid)?;
        let mut raw = [0u8; 64];
        let unreadable = |e: Error| self.corrupt_nid(nid, format!("inode unreadable: {e}"));
        // One read covers an extended inode too, unless that would run past the image.
        let first = if space == Space::Image && pos.saturating_add(64) <= self.len {
            64
        } else {
            32
        };
        self.read_meta(space, pos, &mut raw[..first])
            .map_err(unreadable)?;
        match Inode::decode(nid, space, pos, &raw[..first], &self.sb) {
            Ok(i) => Ok(i),
            Err(Some(what)) => Err(self.corrupt_nid(nid, what)),
            Err(None) => {
                self.read_meta(space, pos + 32, &mut raw[32..])
                    .map_err(unreadable)?;
                Inode::decode(nid, space, pos, &raw, &self.sb)
                    .map_err(|what| self.corrupt_nid(nid, what.unwrap_or_default()))
            }
        }
    }

    /// The root directory's inode.
    pub fn root(&self) -> Result<Inode> {
        let root = self.inode(self.root_nid())?;
        if !root.is_dir() {
            return Err(self.corrupt_nid(root.nid, "the root inode is not a directory".into()));
        }
        Ok(root)
    }

    /// Find `name` in the directory `dir` (binary search).
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        dir::lookup(self, dir, name)
    }

    /// The inode at `path` ("/a/b" or "a/b"; "" or "/" is the root). Symlinks are not
    /// followed; "." and ".." are looked up as the stored entries they are.
    pub fn resolve(&self, path: &str) -> Result<Inode> {
        let mut cur = self.root()?;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            if !cur.is_dir() {
                return Err(Error::NotFound {
                    image: self.name.clone(),
                    path: path.to_string(),
                });
            }
            match self.lookup(&cur, comp.as_bytes())? {
                Some(e) => cur = self.inode(e.nid)?,
                None => {
                    return Err(Error::NotFound {
                        image: self.name.clone(),
                        path: path.to_string(),
                    });
                }
            }
        }
        Ok(cur)
    }

    /// Every stored entry of `dir`, "." and ".." included, in on-disk (sorted) order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        dir::read_dir(self, dir)
    }

    /// Read file data; returns the bytes read, short only at end of file.
    pub fn read_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        data::read_at(self, inode, offset, buf)
    }

    /// The content of `inode` as a stream (e.g. for [`crate::fingerprint::of_reader`]); a
    /// content that ends before `inode.size` is an `UnexpectedEof` error, not a short read.
    pub fn content<'a>(&'a self, inode: &'a Inode) -> Content<'a> {
        Content {
            image: self,
            inode,
            offset: 0,
        }
    }

    /// A symlink's target.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        if inode.file_type() != FileType::Symlink {
            return Err(Error::WrongType {
                image: self.name.clone(),
                nid: inode.nid,
                what: "not a symlink",
            });
        }
        if inode.size == 0 || inode.size > MAX_SYMLINK {
            return Err(self.corrupt_nid(
                inode.nid,
                format!("symlink target size {} not in 1..=4096", inode.size),
            ));
        }
        let mut buf = vec![0u8; inode.size as usize];
        let n = self.read_at(inode, 0, &mut buf)?;
        if n != buf.len() {
            return Err(self.corrupt_nid(inode.nid, "symlink target is short".into()));
        }
        Ok(buf)
    }

    /// Every xattr, full names: shared ones first, then inline ones.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>> {
        xattr::all(self, inode)
    }

    /// Exactly what the kernel's listxattr shows to a process with CAP_SYS_ADMIN (so
    /// `trusted.*` is included; names without a listable prefix are not).
    pub fn listed_xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>> {
        xattr::listed(self, inode)
    }

    /// One xattr by full name, as the kernel's getxattr finds it.
    pub fn get_xattr(&self, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
        xattr::get(self, inode, name)
    }

    /// The value of the file's ISHARE fingerprint xattr, if the image has them and this
    /// inode carries one.
    pub fn fingerprint(&self, inode: &Inode) -> Result<Option<Vec<u8>>> {
        xattr::fingerprint(self, inode)
    }
}

/// [`Image::content`]: a file's content as a [`std::io::Read`].
#[derive(Debug)]
pub struct Content<'a> {
    image: &'a Image,
    inode: &'a Inode,
    offset: u64,
}

impl std::io::Read for Content<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.inode.size.saturating_sub(self.offset);
        let want = left.min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .image
            .read_at(self.inode, self.offset, &mut buf[..want])
            .map_err(std::io::Error::other)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "nid {}: content ends at {} of {} bytes",
                    self.inode.nid, self.offset, self.inode.size
                ),
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}
