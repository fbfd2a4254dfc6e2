//! Checking an image: walk every inode, check its structure (inode fields, directory
//! entries, "." and "..", link counts, xattrs and their name filter), read all its data,
//! and optionally recompute fingerprints. Every problem is collected with the path it was
//! found at; memory is bounded (at most `max_problems` kept, data streamed) and so is time
//! when a data budget is given.

use crate::build::Progress;
use crate::data::{self, Phys};
use crate::error::Error;
use crate::format::fingerprint as fpfmt;
use crate::image::Image;
use crate::inode::{FileType, Inode};
use crate::walk::{Visit, walk};
use crate::xattr;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

/// What to check.
#[derive(Debug, Clone)]
pub struct FsckOptions {
    /// Recompute every fingerprint from the content and compare.
    pub verify_fingerprints: bool,
    /// Keep at most this many problems (the rest are only counted).
    pub max_problems: usize,
    /// Stop reading file data after this many bytes (None: read everything).
    pub data_budget: Option<u64>,
}

impl Default for FsckOptions {
    fn default() -> Self {
        FsckOptions {
            verify_fingerprints: false,
            max_problems: 1000,
            data_budget: None,
        }
    }
}

/// One problem: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.what)
    }
}

/// The outcome of a check.
#[derive(Debug, Default, Clone)]
pub struct FsckReport {
    /// Problems found (at most `max_problems`).
    pub problems: Vec<Problem>,
    /// Problems found in all, kept or not.
    pub problem_count: u64,
    /// Distinct inodes checked.
    pub inodes: u64,
    pub dirs: u64,
    pub files: u64,
    pub bytes_read: u64,
    pub fingerprints_verified: u64,
    /// The data budget ran out: not all data was read.
    pub budget_exhausted: bool,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }

    fn add(&mut self, max: usize, path: &[u8], what: String) {
        self.problem_count += 1;
        if self.problems.len() < max {
            self.problems.push(Problem {
                path: String::from_utf8_lossy(path).into_owned(),
                what,
            });
        }
    }
}

/// A reader error without its image name: the report is about one image and names it once.
fn describe(e: &Error) -> String {
    e.detail()
}

struct Checker<'a> {
    img: &'a Image,
    opts: &'a FsckOptions,
    report: FsckReport,
    /// nid → (links found, nlink stored, first path) for non-directories.
    links: HashMap<u64, (u32, u32, Vec<u8>)>,
    /// dir nid → (subdirectories found, nlink stored, path).
    dirs: HashMap<u64, (u32, u32, Vec<u8>)>,
    budget: Option<u64>,
    buf: Vec<u8>,
    /// Image blocks already read, and extents already checked.
    blocks_read: Bitmap,
    extents_read: HashSet<(u64, u64)>,
}

/// One bit per image block.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap(vec![0; bits.div_ceil(64) as usize])
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
}

/// Check `img`.
pub fn fsck(img: &Image, opts: &FsckOptions) -> FsckReport {
    fsck_with_progress(img, opts, &crate::build::NoProgress)
}

/// Check `img`, advancing `progress` by one per inode visited (of the superblock's count).
pub fn fsck_with_progress(img: &Image, opts: &FsckOptions, progress: &dyn Progress) -> FsckReport {
    progress.set_total(img.superblock().inos);
    let mut c = Checker {
        img,
        opts,
        report: FsckReport::default(),
        links: HashMap::new(),
        dirs: HashMap::new(),
        budget: opts.data_budget,
        buf: vec![0u8; 1 << 20],
        blocks_read: Bitmap::new(img.len().div_ceil(img.superblock().block_size())),
        extents_read: HashSet::new(),
    };
    walk(img, |v| {
        match v {
            Visit::Problem { path, error } => {
                let what = describe(&error);
                c.report.add(opts.max_problems, path, what);
            }
            Visit::Inode {
                path,
                inode,
                parent,
                entry,
            } => {
                progress.advance(1);
                c.visit(path, inode, entry.is_some(), parent)
            }
        }
        ControlFlow::Continue(())
    });
    c.finish()
}

impl Checker<'_> {
    fn problem(&mut self, path: &[u8], what: String) {
        self.report.add(self.opts.max_problems, path, what);
    }

    fn visit(&mut self, path: &[u8], inode: &Inode, has_parent: bool, parent: u64) {
        if inode.is_dir() {
            if has_parent && let Some(d) = self.dirs.get_mut(&parent) {
                d.0 += 1;
            }
            if self.dirs.contains_key(&inode.nid) {
                return; // reported by the walk
            }
            self.dirs.insert(inode.nid, (0, inode.nlink, path.to_vec()));
            self.report.dirs += 1;
        } else {
            let e = self
                .links
                .entry(inode.nid)
                .or_insert((0, inode.nlink, path.to_vec()));
            e.0 += 1;
            if e.0 > 1 {
                return; // a hardlink: checked at its first path
            }
        }
        self.report.inodes += 1;
        self.check_xattrs(path, inode);
        match inode.file_type() {
            FileType::Reg => {
                self.report.files += 1;
                self.check_file(path, inode);
            }
            FileType::Symlink => {
                if let Err(e) = self.img.read_link(inode) {
                    self.problem(path, describe(&e));
                }
            }
            FileType::CharDev | FileType::BlockDev | FileType::Fifo | FileType::Socket => {
                if inode.size != 0 {
                    self.problem(
                        path,
                        format!("special file has size {} (expected 0)", inode.size),
                    );
                }
            }
            FileType::Dir => {} // read by the walk
        }
    }

    fn check_xattrs(&mut self, path: &[u8], inode: &Inode) {
        if inode.xattr_icount == 1 {
            self.problem(
                path,
                "xattr area holds only its header (the kernel refuses such inodes)".into(),
            );
        }
        let ibody = match xattr::ibody(self.img, inode) {
            Ok(b) => b,
            Err(e) => return self.problem(path, describe(&e)),
        };
        if self.img.superblock().xattr_filter_active()
            && let Some((h, raw)) = &ibody
        {
            let present = !xattr::expected_filter(raw);
            if h.name_filter & present != 0 {
                self.problem(
                    path,
                    format!(
                        "xattr name filter {:#010x} hides names present (bits {:#010x})",
                        h.name_filter,
                        h.name_filter & present
                    ),
                );
            }
        }
        if let Err(e) = self.img.listed_xattrs(inode) {
            self.problem(path, describe(&e));
        }
    }

    /// Take up to `n` bytes from the data budget; false when it is spent.
    fn spend(&mut self, n: u64) -> bool {
        match &mut self.budget {
            None => true,
            Some(b) if *b >= n => {
                *b -= n;
                true
            }
            Some(_) => {
                self.report.budget_exhausted = true;
                false
            }
        }
    }

    fn check_file(&mut self, path: &[u8], inode: &Inode) {
        let fp = match self.img.fingerprint(inode) {
            Ok(f) => f,
            Err(e) => return self.problem(path, describe(&e)),
        };
        let verify =
            self.opts.verify_fingerprints && self.img.superblock().ishare_xattr_prefix_id.is_some();
        if verify && fp.is_none() && inode.size > 0 {
            self.problem(path, "regular file has no fingerprint".into());
        }
        if let Some(v) = &fp
            && (v.len() != fpfmt::VALUE_LEN || !v.starts_with(fpfmt::SHA256_TAG))
        {
            self.problem(
                path,
                format!(
                    "fingerprint of {} bytes is not \"sha256:\" + 32 bytes",
                    v.len()
                ),
            );
        }
        let mut hasher = (verify && fp.is_some()).then(Sha256::new);
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.read_all(inode, &mut buf, hasher.as_mut());
        self.buf = buf;
        match r {
            Err(e) => self.problem(path, describe(&e)),
            Ok(false) => {} // budget spent: nothing to compare
            Ok(true) => {
                if let (Some(h), Some(v)) = (hasher, fp) {
                    let want = crate::fingerprint::value_of_digest(&h.finalize().into());
                    if v != want {
                        self.problem(
                            path,
                            "fingerprint does not match the content's SHA-256".into(),
                        );
                    } else {
                        self.report.fingerprints_verified += 1;
                    }
                }
            }
        }
    }

    /// Read every byte of a file: each stored block once (holes and blocks already read for
    /// another file or chunk are skipped), or, when hashing, the whole content in order.
    /// Ok(false) when the data budget ran out.
    fn read_all(
        &mut self,
        inode: &Inode,
        buf: &mut [u8],
        hasher: Option<&mut Sha256>,
    ) -> Result<bool, Error> {
        if hasher.is_none() && !inode.is_compressed() {
            return self.read_stored_blocks(inode, buf);
        }
        let mut hasher = hasher;
        let mut off = 0u64;
        while off < inode.size {
            let n = (buf.len() as u64).min(inode.size - off);
            if !self.spend(n) {
                return Ok(false);
            }
            let got = self.img.read_at(inode, off, &mut buf[..n as usize])?;
            if got as u64 != n {
                return Err(self.img.corrupt_nid(
                    inode.nid,
                    format!(
                        "data ends at {} before its size {}",
                        off + got as u64,
                        inode.size
                    ),
                ));
            }
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&buf[..got]);
            }
            self.report.bytes_read += n;
            off += n;
        }
        Ok(true)
    }

    /// Check that every extent of an uncompressed file is readable, reading each image
    /// block at most once per check: however many files or chunks share blocks, the total
    /// read stays below the image size.
    fn read_stored_blocks(&mut self, inode: &Inode, buf: &mut [u8]) -> Result<bool, Error> {
        let bs = self.img.superblock().block_size();
        let mut off = 0u64;
        while off < inode.size {
            let e = data::map(self.img, inode, off)?;
            off = e.logical + e.len;
            match e.phys {
                Phys::Hole => {}
                Phys::Inline { .. } => {
                    if !self.spend(e.len) {
                        return Ok(false);
                    }
                    let n = self
                        .img
                        .read_at(inode, e.logical, &mut buf[..e.len as usize])?;
                    self.report.bytes_read += n as u64;
                }
                Phys::Image(p) => {
                    if !self.extents_read.insert((p, e.len)) {
                        continue;
                    }
                    let (first, end) = (p / bs, (p + e.len).div_ceil(bs));
                    let run_max = (buf.len() as u64 / bs).max(1);
                    let mut b = first;
                    while b < end {
                        if self.blocks_read.get(b) {
                            b += 1;
                            continue;
                        }
                        let mut stop = b + 1;
                        while stop < end && stop - b < run_max && !self.blocks_read.get(stop) {
                            stop += 1;
                        }
                        let from = (b * bs).max(p);
                        let to = (stop * bs).min(p + e.len);
                        if !self.spend(to - from) {
                            return Ok(false);
                        }
                        self.img.read_raw(from, &mut buf[..(to - from) as usize])?;
                        self.report.bytes_read += to - from;
                        for x in b..stop {
                            self.blocks_read.set(x);
                        }
                        b = stop;
                    }
                }
            }
        }
        Ok(true)
    }

    fn finish(mut self) -> FsckReport {
        // Link counts only mean something when the whole tree could be walked.
        if self.report.problem_count > 0 {
            return self.report;
        }
        let mut bad: Vec<(Vec<u8>, String)> = Vec::new();
        for (found, nlink, path) in self.links.values() {
            if found != nlink {
                bad.push((
                    path.clone(),
                    format!("nlink is {nlink} but {found} directory entries link to it"),
                ));
            }
        }
        for (subdirs, nlink, path) in self.dirs.values() {
            if *nlink != subdirs + 2 {
                bad.push((
                    path.clone(),
                    format!(
                        "directory nlink is {nlink}, expected {} (2 + {subdirs} subdirectories)",
                        subdirs + 2
                    ),
                ));
            }
        }
        bad.sort();
        for (p, w) in bad {
            self.problem(&p, w);
        }
        self.report
    }
}
