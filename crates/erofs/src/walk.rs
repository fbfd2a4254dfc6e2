//! Walking the whole tree, depth first in name order, with guards: each directory is
//! entered once (cycles and hardlinked directories are reported, not followed), depth is
//! bounded, and "." / ".." must point where they should. Problems are reported to the
//! visitor and the walk goes on, so a checker can list them all.

use crate::dir::DirEntry;
use crate::error::Error;
use crate::image::Image;
use crate::inode::{FileType, Inode};
use std::collections::HashSet;
use std::ops::ControlFlow;

/// Deepest directory nesting walked (PATH_MAX / 2: "a/" per level).
pub const MAX_DEPTH: usize = 2048;

/// What the walk reports.
#[derive(Debug)]
pub enum Visit<'a> {
    /// An inode reached by `path` ("/" for the root, else "/a/b"). `entry` is the directory
    /// entry it was found through (None for the root).
    Inode {
        path: &'a [u8],
        inode: &'a Inode,
        entry: Option<&'a DirEntry>,
        /// Directory nid the entry was found in.
        parent: u64,
    },
    /// Something wrong at `path`; the subtree below it is skipped.
    Problem { path: &'a [u8], error: Error },
}

struct Pending {
    path: Vec<u8>,
    entry: Option<DirEntry>,
    parent: u64,
    depth: usize,
}

/// A problem [`walk`] met at `path` ("/" or "/a/b"), as [`try_walk`] hands it on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}: {}", error.image(), String::from_utf8_lossy(path), error.detail())]
pub struct Problem {
    pub path: Vec<u8>,
    pub error: Error,
}

/// Walk like [`walk`], visiting each inode with its path, until the first error: a problem
/// the walk meets (converted with `From`) or the visitor's own. For readers that cannot use
/// a partly readable tree (extract, scans); checkers that list every problem use [`walk`].
pub fn try_walk<E: From<Problem>>(
    img: &Image,
    mut visit: impl FnMut(&[u8], &Inode) -> Result<(), E>,
) -> Result<(), E> {
    let mut failure = None;
    walk(img, |v| {
        let step = match v {
            Visit::Problem { path, error } => Err(E::from(Problem {
                path: path.to_vec(),
                error,
            })),
            Visit::Inode { path, inode, .. } => visit(path, inode),
        };
        match step {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    failure.map_or(Ok(()), Err)
}

/// Walk every inode reachable from the root; the visitor may stop the walk early.
pub fn walk(img: &Image, mut visit: impl FnMut(Visit<'_>) -> ControlFlow<()>) {
    let root_nid = img.root_nid();
    let mut seen_dirs: HashSet<u64> = HashSet::new();
    let mut stack = vec![Pending {
        path: b"/".to_vec(),
        entry: None,
        parent: root_nid,
        depth: 0,
    }];
    while let Some(p) = stack.pop() {
        let nid = p.entry.as_ref().map_or(root_nid, |e| e.nid);
        let inode = match img.inode(nid) {
            Ok(i) => i,
            Err(error) => {
                if visit(Visit::Problem {
                    path: &p.path,
                    error,
                })
                .is_break()
                {
                    return;
                }
                continue;
            }
        };
        if let Some(e) = &p.entry
            && e.file_type != inode.file_type()
        {
            if visit(Visit::Problem {
                path: &p.path,
                error: img.corrupt_nid(
                    nid,
                    format!(
                        "directory entry says {} but the inode is a {}",
                        e.file_type.name(),
                        inode.file_type().name()
                    ),
                ),
            })
            .is_break()
            {
                return;
            }
            continue;
        }
        if p.entry.is_none() && !inode.is_dir() {
            if visit(Visit::Problem {
                path: &p.path,
                error: img.corrupt_nid(nid, "the root inode is not a directory".into()),
            })
            .is_break()
            {
                return;
            }
            continue;
        }
        if visit(Visit::Inode {
            path: &p.path,
            inode: &inode,
            entry: p.entry.as_ref(),
            parent: p.parent,
        })
        .is_break()
        {
            return;
        }
        if !inode.is_dir() {
            continue;
        }
        if !seen_dirs.insert(nid) {
            if visit(Visit::Problem {
                path: &p.path,
                error: img.corrupt_nid(
                    nid,
                    "directory reached twice (a cycle or a hardlinked directory)".into(),
                ),
            })
            .is_break()
            {
                return;
            }
            continue;
        }
        if p.depth >= MAX_DEPTH {
            if visit(Visit::Problem {
                path: &p.path,
                error: img.corrupt_nid(nid, format!("directories nested deeper than {MAX_DEPTH}")),
            })
            .is_break()
            {
                return;
            }
            continue;
        }
        let entries = match img.read_dir(&inode) {
            Ok(e) => e,
            Err(error) => {
                if visit(Visit::Problem {
                    path: &p.path,
                    error,
                })
                .is_break()
                {
                    return;
                }
                continue;
            }
        };
        let mut children = Vec::new();
        for e in entries {
            let expect = match e.name.as_slice() {
                b"." => Some(nid),
                b".." => Some(p.parent),
                _ => None,
            };
            if let Some(want) = expect {
                if (e.nid != want || e.file_type != FileType::Dir)
                    && visit(Visit::Problem {
                        path: &p.path,
                        error: img.corrupt_nid(
                            nid,
                            format!(
                                "entry {:?} points to nid {} ({}), expected directory nid {want}",
                                String::from_utf8_lossy(&e.name),
                                e.nid,
                                e.file_type.name()
                            ),
                        ),
                    })
                    .is_break()
                {
                    return;
                }
                continue;
            }
            let mut path = p.path.clone();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            children.push(Pending {
                path,
                entry: Some(e),
                parent: nid,
                depth: p.depth + 1,
            });
        }
        stack.extend(children.into_iter().rev());
    }
}
