//! Metadata-only images for the overlay front (DESIGN.md, "the overlay front"): the whole tree
//! of an image (modes, owners, nanosecond times, xattrs, links, devices) in which every regular
//! file with content is a hole of its size carrying overlayfs's `metacopy` and `redirect`
//! xattrs. An overlay whose only lower layer is this image reads each file's data from a
//! data-only layer, under the name the redirect gives.
//!
//! What overlayfs would interpret is escaped as composefs does: the image's own
//! `trusted.overlay.*` xattrs become `trusted.overlay.overlay.*` (shown unescaped through the
//! overlay, Linux 6.7+), and its 0/0 character devices (overlay whiteouts) become empty
//! regular files marked as escaped xattr whiteouts in a directory marked as holding them, so
//! that a container overlay stacked on the mount still takes them as whiteouts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use super::tree::{ChunkMap, Content, Kind, Node, NodeId, Stored, Tree};
use super::{BuildError, Options, Summary};
use crate::fingerprint::XattrName;
use crate::format::{fingerprint::VALUE_LEN, xattr_index};
use crate::image::Image;
use crate::inode::{FileType, Inode};
use crate::walk::{self, Visit};

/// Every overlayfs xattr starts with this.
pub const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
/// The data of this file is elsewhere (empty value).
pub const METACOPY: &[u8] = b"trusted.overlay.metacopy";
/// Where, as an absolute path in the data-only layers.
pub const REDIRECT: &[u8] = REDIRECT_NAME.as_bytes();
const REDIRECT_NAME: &str = "trusted.overlay.redirect";
/// Escaped xattr whiteout: a container overlay stacked on the mount sees
/// `trusted.overlay.whiteout` on an empty regular file.
pub const ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";
/// Escaped "this directory holds xattr whiteouts" mark (`opaque` = `x`, Linux 6.8+).
pub const ESCAPED_OPAQUE: &[u8] = b"trusted.overlay.overlay.opaque";

/// The name under which an image's own xattr is stored in the metadata image.
pub fn escape_xattr_name(name: &[u8]) -> Cow<'_, [u8]> {
    match name.strip_prefix(OVERLAY_PREFIX) {
        Some(rest) => {
            let mut v = b"trusted.overlay.overlay.".to_vec();
            v.extend_from_slice(rest);
            Cow::Owned(v)
        }
        None => Cow::Borrowed(name),
    }
}

/// Block size of metadata images: every kernel that mounts erofs file-backed reads it.
const BLOCK_SIZE: u32 = 4096;

/// What the kernel that mounts a metadata image reads, beyond what every kernel with
/// file-backed erofs mounts (6.12) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelReads {
    /// Compact inodes' own mtimes (Linux 6.15+; see [`Options::compact_mtimes`]): most inodes
    /// take 32 bytes instead of 64.
    pub compact_mtimes: bool,
    /// A long xattr prefix table outside any packed inode (`PLAIN_XATTR_PFX`, Linux 6.17+).
    /// With it, redirects are stored under a long prefix (each costs its value alone) and the
    /// fingerprint as the image stores it. Without it there is no prefix table: a fingerprint
    /// whose name has a built-in prefix is an ordinary xattr, a hidden one (which no kernel
    /// shows anyway) is left out.
    pub plain_xattr_prefixes: bool,
}

/// Write the metadata-only image of `src` to `dst` (atomically), for a kernel that reads
/// `kernel`. `data_name` names the data of each regular file with content: the redirect is
/// `/<name>`. Fingerprints are kept under the image's own fingerprint name.
pub fn metadata_image(
    src: &Image,
    dst: &Path,
    kernel: KernelReads,
    data_name: &mut dyn FnMut(&Inode) -> Option<String>,
) -> Result<Summary, BuildError> {
    let fp_name = fingerprint_name(src)?;
    let (fingerprint, long_prefixes, fp_to) = if kernel.plain_xattr_prefixes {
        let redirect =
            XattrName::new(REDIRECT_NAME).map_err(|e| BuildError::Source(e.to_string()))?;
        (
            fp_name.as_ref().map(|(n, _)| n.clone()),
            vec![redirect],
            FpTo::Fingerprint,
        )
    } else {
        let to = match &fp_name {
            Some((n, _)) if n.base_index != 0 => FpTo::Xattr(n.full.clone().into_bytes()),
            _ => FpTo::Drop,
        };
        (None, Vec::new(), to)
    };
    let opts = Options {
        block_size: BLOCK_SIZE,
        fingerprint,
        inline: true,
        long_prefixes,
        compact_mtimes: kernel.compact_mtimes,
        ..Options::default()
    };
    let fp = fp_name.map(|(_, index)| FpSource { index, to: fp_to });
    super::build_with(dst, &opts, |_| tree_of(src, fp.as_ref(), data_name))
}

/// The image's fingerprint xattr name and its on-disk entry index, if it has fingerprints.
fn fingerprint_name(src: &Image) -> Result<Option<(XattrName, u8)>, BuildError> {
    let Some(id) = src.superblock().ishare_xattr_prefix_id else {
        return Ok(None);
    };
    let source = |e: crate::Error| BuildError::Source(e.to_string());
    let prefixes = src.long_prefixes().map_err(source)?;
    let p = prefixes
        .get(id as usize)
        .ok_or_else(|| BuildError::Source(format!("fingerprint prefix {id} is missing")))?;
    let mut full = xattr_index::prefix(p.base_index).unwrap_or(b"").to_vec();
    full.extend_from_slice(&p.infix);
    let full = String::from_utf8(full)
        .map_err(|_| BuildError::Source("the fingerprint xattr name is not UTF-8".into()))?;
    let name = XattrName::new(&full).map_err(|e| BuildError::Source(e.to_string()))?;
    Ok(Some((name, xattr_index::LONG_PREFIX | id)))
}

/// Where the source image keeps fingerprints, and where the metadata image puts them.
struct FpSource {
    /// The on-disk entry index of the source's fingerprint entries.
    index: u8,
    to: FpTo,
}

/// What a metadata image makes of a source's fingerprint.
enum FpTo {
    /// A fingerprint under the same long prefix.
    Fingerprint,
    /// An ordinary xattr of this name (no prefix table).
    Xattr(Vec<u8>),
    /// Nothing: a hidden name without a prefix table.
    Drop,
}

fn tree_of(
    src: &Image,
    fp: Option<&FpSource>,
    data_name: &mut dyn FnMut(&Inode) -> Option<String>,
) -> Result<Tree, BuildError> {
    let mut tree = Tree::new();
    let mut node_of: HashMap<u64, NodeId> = HashMap::new();
    let mut failure = None;
    walk::walk(src, |v| {
        let step = match v {
            Visit::Problem { path, error } => Err(BuildError::Source(format!(
                "{}: {error}",
                String::from_utf8_lossy(path)
            ))),
            Visit::Inode {
                inode,
                entry,
                parent,
                ..
            } => add(
                &mut tree,
                &mut node_of,
                src,
                fp,
                data_name,
                inode,
                entry.map(|e| (parent, e.name.as_slice())),
            ),
        };
        match step {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(tree)
}

/// Add `inode`, found as `name` in directory `parent` (None for the root), to the tree.
fn add(
    tree: &mut Tree,
    node_of: &mut HashMap<u64, NodeId>,
    src: &Image,
    fp: Option<&FpSource>,
    data_name: &mut dyn FnMut(&Inode) -> Option<String>,
    inode: &Inode,
    at: Option<(u64, &[u8])>,
) -> Result<(), BuildError> {
    let source = |e: crate::Error| BuildError::Source(e.to_string());
    let parent = match at {
        Some((parent_nid, _)) => Some(*node_of.get(&parent_nid).ok_or_else(|| {
            BuildError::Source(format!(
                "nid {}: parent nid {parent_nid} not seen",
                inode.nid
            ))
        })?),
        None => None,
    };
    let link = |tree: &mut Tree, id: NodeId| {
        if let (Some(p), Some((_, name))) = (parent, at)
            && let Some(entries) = tree.entries_mut(p)
        {
            entries.insert(name.to_vec(), id);
        }
    };
    if inode.file_type() != FileType::Dir
        && let Some(&id) = node_of.get(&inode.nid)
    {
        // Another name of a file already added: a hardlink.
        link(tree, id);
        return Ok(());
    }
    let mut fingerprint = None;
    let mut xattrs = std::collections::BTreeMap::new();
    for x in crate::xattr::raw(src, inode).map_err(source)? {
        if let Some(fp) = fp
            && x.index == fp.index
            && x.suffix.is_empty()
        {
            match &fp.to {
                FpTo::Fingerprint => {
                    fingerprint = <[u8; VALUE_LEN]>::try_from(x.value.as_slice()).ok();
                }
                FpTo::Xattr(name) => {
                    xattrs.insert(name.clone(), x.value);
                }
                FpTo::Drop => {}
            }
            continue;
        }
        xattrs.insert(escape_xattr_name(&x.name).into_owned(), x.value);
    }
    let kind = match inode.file_type() {
        FileType::Dir => Kind::Dir(Default::default()),
        FileType::Reg if inode.size > 0 => {
            let name = data_name(inode)
                .ok_or_else(|| BuildError::Source(format!("nid {}: no data object", inode.nid)))?;
            xattrs.insert(METACOPY.to_vec(), Vec::new());
            xattrs.insert(REDIRECT.to_vec(), format!("/{name}").into_bytes());
            Kind::File {
                size: inode.size,
                content: Content::Stored(Stored {
                    fingerprint,
                    chunks: Some(ChunkMap::hole(
                        inode.size,
                        BLOCK_SIZE.trailing_zeros() as u8,
                    )),
                    ..Stored::default()
                }),
            }
        }
        FileType::Reg => Kind::File {
            size: 0,
            content: Content::Stored(Stored::default()),
        },
        FileType::Symlink => Kind::Symlink(src.read_link(inode).map_err(source)?),
        FileType::CharDev if inode.rdev == 0 => {
            // An overlay whiteout of the image: keep it visible (see the module's docs).
            xattrs.insert(ESCAPED_WHITEOUT.to_vec(), Vec::new());
            if let Some(p) = parent {
                tree.nodes[p]
                    .xattrs
                    .entry(ESCAPED_OPAQUE.to_vec())
                    .or_insert_with(|| b"x".to_vec());
            }
            Kind::File {
                size: 0,
                content: Content::Stored(Stored::default()),
            }
        }
        FileType::CharDev => Kind::CharDev(inode.rdev),
        FileType::BlockDev => Kind::BlockDev(inode.rdev),
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
    };
    let mut node = Node::new(kind, inode.mode & 0o7777);
    node.uid = inode.uid;
    node.gid = inode.gid;
    node.mtime = inode.mtime;
    node.mtime_nsec = inode.mtime_nsec;
    node.xattrs = xattrs;
    let id = if parent.is_none() {
        // The root: keep the xattr whiteout mark a child may already have put there.
        let root = &mut tree.nodes[0];
        let mut keep = std::mem::take(&mut root.xattrs);
        keep.append(&mut node.xattrs);
        node.xattrs = keep;
        *root = node;
        0
    } else {
        let id = tree.add(node);
        link(tree, id);
        id
    };
    node_of.insert(inode.nid, id);
    Ok(())
}
