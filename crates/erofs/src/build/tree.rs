//! The in-memory tree mkfs builds before laying it out: one [`Node`] per inode (hardlinks are
//! several directory entries naming one node), file contents already stored in the image's
//! data area or still to be read from a source path.

use super::BuildError;
use crate::format::mode;
use std::collections::BTreeMap;

/// Index of a node in [`Tree::nodes`]; the root is 0.
pub type NodeId = usize;

/// Where a regular file's content is, before and after it went into the image.
#[derive(Debug, Clone)]
pub enum Content {
    /// Not read yet (directory source: its reader is on the way).
    Pending,
    /// Written: see [`Stored`].
    Stored(Stored),
}

/// A regular file's content as stored in the image.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// First data block of the block-aligned part (none when it has no blocks).
    pub start_block: Option<u64>,
    /// The tail bytes to inline after the inode (FLAT_INLINE), if inlined.
    pub inline_tail: Option<Vec<u8>>,
    /// The fingerprint xattr value, when fingerprints are on and the file is not empty.
    pub fingerprint: Option<crate::fingerprint::Value>,
    /// Compressed content: its blocks are in the data area, its map goes after the inode.
    pub compressed: Option<CompressedMap>,
    /// The whole file is one hole (metadata-only images): a chunk-based inode whose one
    /// chunk is null, so the size costs no block.
    pub hole: bool,
}

/// The extent map of a compressed file (COMPRESSED_FULL), written after its inode and xattrs
/// at the next 8-byte boundary.
#[derive(Debug, Clone, Default)]
pub struct CompressedMap {
    /// Blocks of compressed data (`i_u`).
    pub blocks: u64,
    /// Map header, reserved bytes, lcluster indexes and the inline tail pcluster.
    pub map: Vec<u8>,
    /// The last pcluster is inline after the indexes: the inode gets the ZTAILPACKING advise
    /// (the layout keeps any record of at most a block within one block anyway).
    pub tail_inline: bool,
}

/// What kind of inode a node is, with its type-specific payload.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Entries by name (without `.` and `..`), sorted by bytes.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File {
        size: u64,
        content: Content,
    },
    Symlink(Vec<u8>),
    /// Device number in Linux `new_encode_dev` form.
    CharDev(u32),
    BlockDev(u32),
    Fifo,
    Socket,
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (07777); the type bits come from `kind`.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Full xattr names and values, sorted by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Directory entries naming this node (set by [`Tree::count_links`]).
    pub nlink: u32,
}

impl Node {
    pub fn new(kind: Kind, perm: u16) -> Node {
        Node {
            kind,
            perm: perm & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
            nlink: 0,
        }
    }

    /// `i_mode`: type bits and permissions.
    pub fn mode(&self) -> u16 {
        let t = match self.kind {
            Kind::Dir(_) => mode::S_IFDIR,
            Kind::File { .. } => mode::S_IFREG,
            Kind::Symlink(_) => mode::S_IFLNK,
            Kind::CharDev(_) => mode::S_IFCHR,
            Kind::BlockDev(_) => mode::S_IFBLK,
            Kind::Fifo => mode::S_IFIFO,
            Kind::Socket => mode::S_IFSOCK,
        };
        t | self.perm
    }

    /// Directory entry file type.
    pub fn file_type(&self) -> u8 {
        use crate::format::file_type as ft;
        match self.kind {
            Kind::Dir(_) => ft::DIR,
            Kind::File { .. } => ft::REG,
            Kind::Symlink(_) => ft::SYMLINK,
            Kind::CharDev(_) => ft::CHRDEV,
            Kind::BlockDev(_) => ft::BLKDEV,
            Kind::Fifo => ft::FIFO,
            Kind::Socket => ft::SOCK,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }
}

/// Linux `new_encode_dev`: the form `i_u.rdev` stores.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The whole tree. `nodes[0]` is the root directory.
#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<Node>,
    /// The packed inode (fragments): in no directory, named by the superblock.
    pub packed: Option<NodeId>,
}

impl Tree {
    /// A tree holding only an empty root directory with mode 0755.
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node::new(Kind::Dir(BTreeMap::new()), 0o755)],
            packed: None,
        }
    }

    pub fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn entries(&self, dir: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes[dir].kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }

    pub fn entries_mut(&mut self, dir: NodeId) -> Option<&mut BTreeMap<Vec<u8>, NodeId>> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(e) => Some(e),
            _ => None,
        }
    }

    /// Set every node's `nlink`: directories 2 + subdirectories, others the number of
    /// entries naming them, the packed inode 1. Other nodes no entry reaches get 0 (the layout
    /// skips them).
    pub fn count_links(&mut self) -> Result<(), BuildError> {
        let mut links = vec![0u64; self.nodes.len()];
        links[0] = 2;
        // The packed inode is in no directory; the superblock's reference counts as one.
        if let Some(p) = self.packed {
            links[p] = 1;
        }
        for id in 0..self.nodes.len() {
            if let Kind::Dir(entries) = &self.nodes[id].kind {
                for &child in entries.values() {
                    if self.nodes[child].is_dir() {
                        links[child] += 2;
                        links[id] += 1;
                    } else {
                        links[child] += 1;
                    }
                }
            }
        }
        for (node, n) in self.nodes.iter_mut().zip(links) {
            node.nlink = u32::try_from(n).map_err(|_| BuildError::TooMany("links to one inode"))?;
        }
        // A directory reached twice would be a cycle or a directory hardlink.
        for (id, node) in self.nodes.iter().enumerate() {
            if node.is_dir() && id != 0 && node.nlink > 0 {
                let subdirs = self.entries(id).map_or(0, |e| {
                    e.values().filter(|&&c| self.nodes[c].is_dir()).count()
                });
                if node.nlink as usize != 2 + subdirs {
                    return Err(BuildError::Source(format!(
                        "directory node {id} is named by more than one entry"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Nodes in breadth-first order from the root, each once (hardlinks at their first name),
    /// with the parent directory of each node's first name.
    pub fn bfs(&self) -> Vec<(NodeId, NodeId)> {
        let mut seen = vec![false; self.nodes.len()];
        let mut order = vec![(0, 0)];
        seen[0] = true;
        let mut i = 0;
        while i < order.len() {
            let (id, _) = order[i];
            if let Kind::Dir(entries) = &self.nodes[id].kind {
                for &child in entries.values() {
                    if !seen[child] {
                        seen[child] = true;
                        order.push((child, id));
                    }
                }
            }
            i += 1;
        }
        order
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_count_subdirs_and_hardlinks() {
        let mut t = Tree::new();
        let d = t.add(Node::new(Kind::Dir(BTreeMap::new()), 0o755));
        let f = t.add(Node::new(
            Kind::File {
                size: 0,
                content: Content::Stored(Stored::default()),
            },
            0o644,
        ));
        t.entries_mut(0).unwrap().insert(b"d".to_vec(), d);
        t.entries_mut(0).unwrap().insert(b"f".to_vec(), f);
        t.entries_mut(d).unwrap().insert(b"g".to_vec(), f);
        t.count_links().unwrap();
        assert_eq!(
            (t.nodes[0].nlink, t.nodes[d].nlink, t.nodes[f].nlink),
            (3, 2, 2)
        );
        assert_eq!(t.bfs().len(), 3);
    }

    #[test]
    fn dev_encoding_matches_linux() {
        assert_eq!(encode_dev(8, 1), 0x801);
        assert_eq!(encode_dev(1, 0x12345), 0x1230_0145);
    }
}
