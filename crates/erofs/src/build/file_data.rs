//! Regular file content: the one place file bytes go into the image.
//!
//! A file's size and xattrs are known before its bytes are read (stat, tar header), so its
//! blocks are reserved first ([`place`]) and then filled while its bytes stream through
//! [`store`], which also hashes them for the fingerprint. Memory per file is one buffer plus
//! the inline tail (less than a block). Compression plugs in here: [`store`] is the function
//! that turns content into stored blocks.

use super::tree::Stored;
use super::{BuildError, ImageFile, Progress};
use crate::format::InodeExtended;
use sha2::{Digest, Sha256};
use std::io::{ErrorKind, Read};

/// Blocks reserved for one file before its content is read.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub start_block: Option<u64>,
    /// The last `size % block_size` bytes go after the inode instead of a block.
    pub inline_tail: bool,
}

/// Whether a file's tail can be inlined: inlining must be on and the largest possible inode
/// (extended), its xattrs (all inline, an upper bound) and the tail must fit in one block.
pub fn can_inline(inline: bool, block_size: u64, size: u64, max_xattr_ibody: usize) -> bool {
    let tail = size % block_size;
    inline
        && tail > 0
        && size_of::<InodeExtended>() as u64 + max_xattr_ibody as u64 + tail <= block_size
}

/// Reserve the blocks of a file of `size` bytes.
pub fn place(img: &ImageFile, size: u64, inline_tail: bool) -> Placement {
    let bs = img.block_size();
    let blocks = if inline_tail {
        size / bs
    } else {
        size.div_ceil(bs)
    };
    let start_block = (blocks > 0).then(|| img.alloc(blocks));
    Placement {
        start_block,
        inline_tail,
    }
}

/// Read exactly `size` bytes of content from `r`, write them to the reserved blocks (the
/// last block zero-padded), keep the inline tail, and compute the fingerprint when `hash`.
/// `read_err` names the source in read errors; a source shorter than `size` is an error.
pub fn store(
    img: &ImageFile,
    at: &Placement,
    size: u64,
    r: &mut dyn Read,
    hash: bool,
    progress: &dyn Progress,
    read_err: &dyn Fn(std::io::Error) -> BuildError,
) -> Result<Stored, BuildError> {
    let bs = img.block_size();
    let block_bytes = if at.inline_tail {
        size - size % bs
    } else {
        size
    };
    let mut hasher = hash.then(Sha256::new);
    // One buffer per thread, reused for every file: no allocation and no fresh pages to
    // fault in per file.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHUNK]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut offset = at.start_block.map_or(0, |b| b * bs);
        let mut done = 0u64;
        while done < block_bytes {
            let want = (block_bytes - done).min(buf.len() as u64) as usize;
            read_exact(r, &mut buf[..want], read_err)?;
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..want]);
            }
            // Pad the last partial block so the image has no unwritten gap.
            let padded = want.next_multiple_of(bs as usize);
            buf[want..padded].fill(0);
            img.write_at(&buf[..padded], offset)?;
            offset += padded as u64;
            done += want as u64;
            progress.advance(want as u64);
        }
        Ok::<(), BuildError>(())
    })?;
    let inline_tail = if at.inline_tail {
        let mut tail = vec![0u8; (size - block_bytes) as usize];
        read_exact(r, &mut tail, read_err)?;
        if let Some(h) = hasher.as_mut() {
            h.update(&tail);
        }
        progress.advance(tail.len() as u64);
        Some(tail)
    } else {
        None
    };
    let fingerprint = hasher
        .filter(|_| size > 0)
        .map(|h| crate::fingerprint::value_of_digest(&h.finalize().into()));
    Ok(Stored {
        start_block: at.start_block,
        inline_tail,
        fingerprint,
        compressed: None,
        hole: false,
    })
}

/// Bytes read and written at a time (a multiple of every block size).
const CHUNK: usize = 1 << 20;

/// `r.read_exact(buf)`, with a short read reported as the file having changed under us.
pub(super) fn read_exact(
    r: &mut dyn Read,
    buf: &mut [u8],
    read_err: &dyn Fn(std::io::Error) -> BuildError,
) -> Result<(), BuildError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            read_err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "content ends before its recorded size (file truncated or changed while reading)",
            ))
        } else {
            read_err(e)
        }
    })
}
