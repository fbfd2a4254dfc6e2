//! Directories: blocks of sorted 12-byte entries followed by their names; lookup by binary
//! search over blocks, then within the block.

use crate::error::{Error, Result};
use crate::format::{DIRENT_SIZE, Dirent, NAME_LEN};
use crate::image::Image;
use crate::inode::{FileType, Inode};
use std::cmp::Ordering;
use zerocopy::FromBytes;

/// Largest directory we read (4 GiB, the compact-inode limit): a guard against absurd sizes.
const MAX_DIR_SIZE: u64 = 1 << 32;

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub nid: u64,
    pub file_type: FileType,
}

fn not_dir(img: &Image, dir: &Inode) -> Error {
    Error::WrongType {
        image: img.name().into(),
        nid: dir.nid,
        what: "not a directory",
    }
}

fn block_count(img: &Image, dir: &Inode) -> Result<u64> {
    if !dir.is_dir() {
        return Err(not_dir(img, dir));
    }
    if dir.size > MAX_DIR_SIZE {
        return Err(img.corrupt_nid(
            dir.nid,
            format!(
                "directory size {} exceeds the {MAX_DIR_SIZE} byte limit",
                dir.size
            ),
        ));
    }
    Ok(dir.size.div_ceil(img.superblock().dir_block_size()))
}

/// Read the raw bytes of directory block `index` of `dir` into `data`.
fn read_block_raw(img: &Image, dir: &Inode, index: u64, data: &mut Vec<u8>) -> Result<()> {
    let dbs = img.superblock().dir_block_size();
    let start = index * dbs;
    let len = dbs.min(dir.size - start) as usize;
    data.resize(len, 0);
    let n = img.read_at(dir, start, data)?;
    if n != len {
        return Err(img.corrupt_nid(dir.nid, format!("directory block {index} is short")));
    }
    Ok(())
}

/// Read and decode directory block `index` of `dir`.
fn read_block(img: &Image, dir: &Inode, index: u64) -> Result<Vec<DirEntry>> {
    let mut data = Vec::new();
    read_block_raw(img, dir, index, &mut data)?;
    parse_block(&data)
        .map_err(|what| img.corrupt_nid(dir.nid, format!("directory block {index}: {what}")))
}

/// A directory block, entries decoded on demand (lookups touch only log2(n) of them).
struct Block<'a> {
    data: &'a [u8],
    names_start: usize,
    count: usize,
}

impl<'a> Block<'a> {
    fn new(data: &'a [u8]) -> std::result::Result<Block<'a>, String> {
        let len = data.len();
        if len < DIRENT_SIZE {
            return Err(format!("{len} bytes cannot hold a directory entry"));
        }
        let first = Dirent::read_from_prefix(data).expect("sized").0;
        let names_start = first.nameoff.get() as usize;
        if names_start < DIRENT_SIZE
            || !names_start.is_multiple_of(DIRENT_SIZE)
            || names_start >= len
        {
            return Err(format!(
                "first name offset {names_start} is not a multiple of 12 inside the {len} byte block"
            ));
        }
        Ok(Block {
            data,
            names_start,
            count: names_start / DIRENT_SIZE,
        })
    }

    fn dirent(&self, i: usize) -> Dirent {
        Dirent::read_from_prefix(&self.data[i * DIRENT_SIZE..])
            .expect("inside the entry array")
            .0
    }

    /// Entry `i`: its name (validated), nid and raw file type.
    fn entry(&self, i: usize) -> std::result::Result<(&'a [u8], u64, u8), String> {
        let len = self.data.len();
        let d = self.dirent(i);
        let off = d.nameoff.get() as usize;
        let end = if i + 1 < self.count {
            self.dirent(i + 1).nameoff.get() as usize
        } else {
            len
        };
        if off < self.names_start || off >= end || end > len {
            return Err(format!(
                "entry {i}: name offsets {off}..{end} out of order or outside {}..{len}",
                self.names_start
            ));
        }
        let mut name = &self.data[off..end];
        if i + 1 == self.count {
            // The last name runs to the first NUL or the end of the block.
            if let Some(z) = name.iter().position(|&b| b == 0) {
                name = &name[..z];
            }
        }
        if name.is_empty() || name.len() > NAME_LEN {
            return Err(format!(
                "entry {i}: name length {} not in 1..=255",
                name.len()
            ));
        }
        if name.contains(&0) || name.contains(&b'/') {
            return Err(format!(
                "entry {i}: name {:?} contains NUL or '/'",
                String::from_utf8_lossy(name)
            ));
        }
        Ok((name, d.nid.get(), d.file_type))
    }

    fn dir_entry(&self, i: usize) -> std::result::Result<DirEntry, String> {
        let (name, nid, t) = self.entry(i)?;
        let file_type =
            FileType::from_dirent(t).ok_or_else(|| format!("entry {i}: unknown file type {t}"))?;
        Ok(DirEntry {
            name: name.to_vec(),
            nid,
            file_type,
        })
    }
}

/// Decode one directory block: validate name offsets, lengths, types and order.
pub fn parse_block(data: &[u8]) -> std::result::Result<Vec<DirEntry>, String> {
    let b = Block::new(data)?;
    let mut out: Vec<DirEntry> = Vec::with_capacity(b.count);
    for i in 0..b.count {
        let e = b.dir_entry(i)?;
        if let Some(prev) = out.last()
            && prev.name >= e.name
        {
            return Err(format!(
                "entry {i}: name {:?} is not after {:?}",
                String::from_utf8_lossy(&e.name),
                String::from_utf8_lossy(&prev.name)
            ));
        }
        out.push(e);
    }
    Ok(out)
}

/// Every stored entry of `dir`, in on-disk (sorted) order.
pub fn read_dir(img: &Image, dir: &Inode) -> Result<Vec<DirEntry>> {
    let nblocks = block_count(img, dir)?;
    let mut out: Vec<DirEntry> = Vec::new();
    for b in 0..nblocks {
        let entries = read_block(img, dir, b)?;
        if let (Some(prev), Some(first)) = (out.last(), entries.first())
            && prev.name >= first.name
        {
            return Err(img.corrupt_nid(
                dir.nid,
                format!(
                    "directory block {b} starts with {:?}, not after the previous block's {:?}",
                    String::from_utf8_lossy(&first.name),
                    String::from_utf8_lossy(&prev.name)
                ),
            ));
        }
        out.extend(entries);
    }
    Ok(out)
}

/// Find `name` in `dir` by binary search: over blocks by their first name, then within the
/// block. Only the entries compared are decoded.
pub fn lookup(img: &Image, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
    let nblocks = block_count(img, dir)?;
    if name.is_empty() || name.len() > NAME_LEN {
        return Ok(None);
    }
    let bad =
        |b: u64, what: String| img.corrupt_nid(dir.nid, format!("directory block {b}: {what}"));
    let (mut data, mut cand) = (Vec::new(), Vec::new());
    // The last block whose first name is <= name.
    let (mut lo, mut hi) = (0u64, nblocks);
    let mut candidate = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        read_block_raw(img, dir, mid, &mut data)?;
        let block = Block::new(&data).map_err(|w| bad(mid, w))?;
        let (first, _, _) = block.entry(0).map_err(|w| bad(mid, w))?;
        match first.cmp(name) {
            Ordering::Equal => return block.dir_entry(0).map(Some).map_err(|w| bad(mid, w)),
            Ordering::Less => {
                lo = mid + 1;
                candidate = Some(mid);
                std::mem::swap(&mut data, &mut cand);
            }
            Ordering::Greater => hi = mid,
        }
    }
    let Some(b) = candidate else {
        return Ok(None);
    };
    let block = Block::new(&cand).map_err(|w| bad(b, w))?;
    let (mut lo, mut hi) = (1usize, block.count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (n, _, _) = block.entry(mid).map_err(|w| bad(b, w))?;
        match n.cmp(name) {
            Ordering::Equal => return block.dir_entry(mid).map(Some).map_err(|w| bad(b, w)),
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn block(names: &[&str], size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        let mut off = names.len() * DIRENT_SIZE;
        for (i, n) in names.iter().enumerate() {
            let mut d = Dirent::read_from_bytes(&[0u8; 12][..]).unwrap();
            d.nid.set(100 + i as u64);
            d.nameoff.set(off as u16);
            d.file_type = crate::format::file_type::REG;
            v[i * 12..i * 12 + 12].copy_from_slice(d.as_bytes());
            v[off..off + n.len()].copy_from_slice(n.as_bytes());
            off += n.len();
        }
        v
    }

    #[test]
    fn parses_sorted_block_with_padded_last_name() {
        let e = parse_block(&block(&[".", "..", "a", "bb"], 64)).unwrap();
        let names: Vec<&[u8]> = e.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"."[..], b"..", b"a", b"bb"]);
        assert_eq!(e[3].nid, 103);
    }

    #[test]
    fn rejects_bad_blocks() {
        assert!(parse_block(&block(&["b", "a"], 64)).is_err(), "order");
        assert!(parse_block(&block(&["a", "a"], 64)).is_err(), "duplicate");
        assert!(parse_block(&block(&["a/b"], 64)).is_err(), "slash");
        assert!(parse_block(&[0u8; 64]).is_err(), "zero nameoff");
        assert!(parse_block(&[0u8; 4]).is_err(), "tiny");
        let mut b = block(&["a", "b"], 64);
        b[12 + 8] = 200; // second nameoff past the block
        assert!(parse_block(&b).is_err());
        let mut b = block(&["a"], 64);
        b[10] = 9; // unknown file type
        assert!(parse_block(&b).is_err());
    }
}
