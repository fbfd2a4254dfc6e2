//! The property test of mkfs: seeded random trees (depth, fan-out, names up to 255 bytes,
//! directories from empty to multi-block, 0–40 xattrs per inode in every namespace with
//! values up to 3 KiB, shared and unshared, ACLs, sparse and dense files around block
//! boundaries, hardlinks, symlinks of every length, devices, fifos, sockets), each built at
//! block sizes 512/1024/4096, plain and compressed, with and without inline data; every image
//! checked by our fsck, mounted by the kernel and compared with the source tree entry by entry.
//!
//! `EROFS_SHARE_PROPTEST_TREES` sets the number of trees (default [`DEFAULT_TREES`]),
//! `EROFS_SHARE_PROPTEST_SEED` the first tree's seed (tree i has seed + i). A failing tree
//! prints the command that replays it alone.

use erofs::build::{self, Compression, NoProgress, Options, Source};
use rayon::prelude::*;
use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;
use testkit::{LoopMount, Need, Rng, manifest, require};

/// Trees per run in CI: 80 took 105 s on this project's two cores with a load average of
/// 10 (a corruption run and other builds beside it).
const DEFAULT_TREES: u64 = 80;
const DEFAULT_SEED: u64 = 0x7EE5_0009;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(r: libc::c_int, what: &str, p: &Path) {
    assert!(
        r == 0,
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; value is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(r, &format!("setxattr {name}"), p);
}

/// Held around every mount, unmount and read of a mount. Trees run in parallel, and a child
/// forked by one thread (mount, losetup) holds copies of the other thread's open files until
/// it execs: an unmount then would find its filesystem busy.
static MOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn mounts() -> std::sync::MutexGuard<'static, ()> {
    MOUNTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A private tmpfs (any xattr namespace, any size of xattrs, holes), unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new() -> Tmpfs {
        let _m = mounts();
        let d = tempfile::Builder::new()
            .prefix("erofs-proptest-")
            .tempdir()
            .unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512m,mode=755", "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _m = mounts();
        if !Command::new("umount")
            .arg(self.0.path())
            .status()
            .is_ok_and(|s| s.success())
        {
            // Still busy: detach it; the kernel frees it with its last user.
            let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
        }
    }
}

/// A POSIX ACL in the kernel's xattr form: user/group owner, named entries, mask, other.
fn acl(r: &mut Rng) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    let mut entry = |tag: u16, perm: u16, id: u32| {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    };
    let perm = |r: &mut Rng| r.below(8) as u16;
    entry(0x01, perm(r), u32::MAX);
    let users = r.below(3) as u32;
    for i in 0..users {
        entry(0x02, perm(r), 1000 + i * 7);
    }
    entry(0x04, perm(r), u32::MAX);
    let groups = r.below(3) as u32;
    for i in 0..groups {
        entry(0x08, perm(r), 2000 + i * 5);
    }
    if users + groups > 0 {
        entry(0x10, perm(r), u32::MAX);
    }
    entry(0x20, perm(r), u32::MAX);
    v
}

/// Builds one random tree on disk.
struct Gen {
    r: Rng,
    inodes: usize,
    max_inodes: usize,
    /// Regular files made so far (hardlink targets).
    files: Vec<PathBuf>,
    /// Every path in creation order (mtimes are set in reverse).
    made: Vec<PathBuf>,
    /// xattrs several inodes carry (the shared xattr area).
    pool: Vec<(String, Vec<u8>)>,
    common_mtime: (i64, i64),
}

#[derive(Clone, Copy, PartialEq)]
enum What {
    File,
    Dir,
    Symlink,
    Special,
}

impl Gen {
    fn name(&mut self, taken: &mut HashSet<Vec<u8>>) -> Vec<u8> {
        const CHARS: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+ ~";
        loop {
            let len = match self.r.below(20) {
                0..=11 => self.r.range(1, 8),
                12..=16 => self.r.range(9, 64),
                _ => self.r.range(200, 255),
            } as usize;
            let mut n = Vec::with_capacity(len);
            while n.len() < len {
                if self.r.percent(3) && n.len() + 2 <= len {
                    n.extend_from_slice("é".as_bytes());
                } else {
                    n.push(CHARS[self.r.below(CHARS.len() as u64) as usize]);
                }
            }
            if n != b"." && n != b".." && taken.insert(n.clone()) {
                return n;
            }
        }
    }

    fn xattr_value(&mut self) -> Vec<u8> {
        let len = match self.r.below(10) {
            0..=5 => self.r.below(24),
            6..=8 => self.r.below(300),
            _ => self.r.range(1000, 3072),
        } as usize;
        self.r.bytes(len)
    }

    fn xattrs(&mut self, p: &Path, what: What) {
        // user.* only on files and directories (the kernel's rule).
        let namespaces: &[&str] = if matches!(what, What::File | What::Dir) {
            &["user.", "trusted.", "security."]
        } else {
            &["trusted.", "security."]
        };
        let n = match self.r.below(10) {
            0..=4 => 0,
            5..=8 => self.r.range(1, 6),
            _ => self.r.range(7, 40),
        };
        let mut total = 0usize;
        for i in 0..n {
            let (name, value) = if self.r.percent(30) {
                self.pool[self.r.below(self.pool.len() as u64) as usize].clone()
            } else {
                let ns = namespaces[self.r.below(namespaces.len() as u64) as usize];
                let len = self.r.range(1, 40) as usize;
                let suffix: String = (0..len)
                    .map(|_| (b'a' + self.r.below(26) as u8) as char)
                    .collect();
                (format!("{ns}{suffix}{i}"), self.xattr_value())
            };
            if !namespaces.iter().any(|ns| name.starts_with(ns)) {
                continue;
            }
            // Keep an inode's xattrs within what getxattr/listxattr can show.
            total += name.len() + value.len();
            if total > 48 * 1024 {
                break;
            }
            setxattr(p, &name, &value);
        }
        if matches!(what, What::File | What::Dir) && self.r.percent(10) {
            let a = acl(&mut self.r);
            setxattr(p, "system.posix_acl_access", &a);
        }
        if what == What::Dir && self.r.percent(10) {
            let a = acl(&mut self.r);
            setxattr(p, "system.posix_acl_default", &a);
        }
    }

    fn owner_and_mode(&mut self, p: &Path, what: What) {
        let ids = [0u32, 1, 1000, 65534, 65535, 70000, 1 << 31];
        let uid = ids[self.r.below(ids.len() as u64) as usize];
        let gid = ids[self.r.below(ids.len() as u64) as usize];
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
        if what != What::Symlink {
            let mode = if self.r.percent(50) {
                [0o644, 0o755, 0o600, 0o700][self.r.below(4) as usize]
            } else {
                self.r.below(0o10000) as u32
            };
            // SAFETY: the path is NUL-terminated.
            let r = unsafe { libc::chmod(cstr(p).as_ptr(), mode) };
            check(r, "chmod", p);
        }
    }

    /// Sizes around block boundaries of every block size, or anything up to 200 KiB.
    fn size(&mut self) -> u64 {
        match self.r.below(10) {
            0 => 0,
            1..=5 => {
                let bs = [512u64, 1024, 4096][self.r.below(3) as usize];
                (self.r.below(5) * bs + self.r.range(0, 2)).saturating_sub(1)
            }
            6..=8 => self.r.range(1, 5000),
            _ => self.r.range(5000, 200 * 1024),
        }
    }

    fn content(&mut self, len: usize) -> Vec<u8> {
        if self.r.percent(50) {
            self.r.bytes(len)
        } else {
            // Compressible: a short pattern repeated.
            let n = self.r.range(1, 64) as usize;
            let pat = self.r.bytes(n);
            pat.iter().copied().cycle().take(len).collect()
        }
    }

    fn file(&mut self, p: &Path) {
        let f = std::fs::File::create(p).unwrap();
        if self.r.percent(25) {
            // Sparse: holes with a few runs of data, around block boundaries.
            let size = self.r.range(1, 3 << 20);
            f.set_len(size).unwrap();
            for _ in 0..self.r.below(4) {
                let at = self.r.below(size) / 512 * 512 + [0, 1, 511][self.r.below(3) as usize];
                let at = at.min(size - 1);
                let len = self.r.range(1, 9000).min(size - at);
                f.write_all_at(&self.content(len as usize), at).unwrap();
            }
        } else {
            let size = self.size() as usize;
            f.write_all_at(&self.content(size), 0).unwrap();
        }
        self.files.push(p.to_path_buf());
    }

    fn symlink(&mut self, p: &Path) {
        let len = match self.r.below(4) {
            0 => self.r.range(1, 60),
            1 => {
                let bs = [512u64, 1024, 4096][self.r.below(3) as usize];
                self.r.range(bs - 70, bs + 5).min(4095)
            }
            _ => self.r.range(1, 4095),
        } as usize;
        let t: Vec<u8> = (0..len)
            .map(|_| b"abc/._xyz0123456789"[self.r.below(19) as usize])
            .collect();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), p).unwrap();
    }

    fn special(&mut self, p: &Path) {
        let kind =
            [libc::S_IFCHR, libc::S_IFBLK, libc::S_IFIFO, libc::S_IFSOCK][self.r.below(4) as usize];
        let dev = libc::makedev(self.r.below(4096) as u32, self.r.below(1 << 20) as u32);
        // SAFETY: the path is NUL-terminated.
        let r = unsafe { libc::mknod(cstr(p).as_ptr(), kind | 0o644, dev) };
        check(r, "mknod", p);
    }

    fn dir(&mut self, dir: &Path, depth: u32) {
        let mut taken = HashSet::new();
        let big = self.r.percent(8);
        let entries = if big {
            self.r.range(40, 160)
        } else {
            self.r.below(7)
        };
        for _ in 0..entries {
            if self.inodes >= self.max_inodes && !big {
                break;
            }
            let name = self.name(&mut taken);
            let p = dir.join(std::ffi::OsStr::from_bytes(&name));
            let roll = self.r.below(100);
            // Entries of big directories are mostly cheap: empty files and short symlinks.
            if big && roll < 70 {
                std::fs::File::create(&p).unwrap();
                self.files.push(p.clone());
                self.made.push(p);
                continue;
            }
            if (60..68).contains(&roll) && !self.files.is_empty() {
                let target = self.files[self.r.below(self.files.len() as u64) as usize].clone();
                std::fs::hard_link(&target, &p).unwrap();
                continue;
            }
            self.inodes += 1;
            let what = match roll {
                0..=44 => What::File,
                45..=59 if depth < 6 => What::Dir,
                68..=81 => What::Symlink,
                82..=91 => What::Special,
                _ => What::File,
            };
            match what {
                What::File => self.file(&p),
                What::Dir => std::fs::create_dir(&p).unwrap(),
                What::Symlink => self.symlink(&p),
                What::Special => self.special(&p),
            }
            self.owner_and_mode(&p, what);
            self.xattrs(&p, what);
            self.made.push(p.clone());
            if what == What::Dir {
                self.dir(&p, depth + 1);
            }
        }
    }

    fn mtime(&mut self) -> (i64, i64) {
        match self.r.below(10) {
            0..=4 => self.common_mtime,
            5 => (
                -(self.r.below(1 << 31) as i64),
                self.r.below(1_000_000_000) as i64,
            ),
            _ => (
                self.r.below(1 << 33) as i64,
                self.r.below(1_000_000_000) as i64,
            ),
        }
    }
}

fn set_mtime(p: &Path, (sec, nsec): (i64, i64)) {
    let ts = [libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }; 2];
    // SAFETY: the path is NUL-terminated and ts points to two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(r, "utimensat", p);
}

/// Write the tree of `seed` under `root`.
fn make_tree(seed: u64, root: &Path) {
    let mut r = Rng(seed);
    let max_inodes = r.range(5, 80) as usize;
    // Up to 60 xattrs on several inodes: a shared xattr area of up to a few blocks, so the
    // root and other records start anywhere in a block after it.
    let pool_len = r.range(1, 60);
    let pool = (0..pool_len)
        .map(|i| {
            let ns = ["user.", "trusted.", "security."][r.below(3) as usize];
            let max = [40, 300][r.below(2) as usize];
            let len = r.range(0, max) as usize;
            (format!("{ns}shared{i}"), r.bytes(len))
        })
        .collect::<Vec<_>>();
    let common_mtime = (r.below(1 << 32) as i64, 0);
    let mut g = Gen {
        r,
        inodes: 0,
        max_inodes,
        files: Vec::new(),
        made: Vec::new(),
        pool,
        common_mtime,
    };
    g.xattrs(root, What::Dir);
    g.dir(root, 0);
    let made = std::mem::take(&mut g.made);
    for p in made.iter().rev() {
        let t = g.mtime();
        set_mtime(p, t);
    }
    let t = g.mtime();
    set_mtime(root, t);
}

/// Every image of one tree: block sizes × plain/compressed × inline or not. Returns the
/// tree's entries and xattrs.
fn check_tree(seed: u64, work: &Path) -> (usize, usize) {
    let src = work.join("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(seed, &src);
    let expected = manifest::of_tree(&src).unwrap();
    let out = tempfile::Builder::new()
        .prefix("erofs-proptest-image-")
        .tempdir()
        .unwrap();
    let mut r = Rng(seed ^ 0xC0FFEE);
    for bs in [512u32, 1024, 4096] {
        for compressed in [false, true] {
            for inline in [true, false] {
                let compression = compressed.then(|| {
                    let spec = ["lz4", "lz4hc", "zstd", "deflate"][r.below(4) as usize];
                    let pcluster = [None, Some(4 * bs)][r.below(2) as usize];
                    let mut c = Compression::new(spec, pcluster, bs).unwrap();
                    c.dedupe = r.percent(50);
                    c.fragments = r.percent(50);
                    c
                });
                let what = format!(
                    "tree {seed:#x}: {bs}-byte blocks, compression {:?}, inline {inline}",
                    compression
                        .as_ref()
                        .map(|c| (&c.spec, c.pcluster_size, c.dedupe, c.fragments))
                );
                let opts = Options {
                    block_size: bs,
                    inline,
                    compression,
                    ..Options::default()
                };
                // Outside the tmpfs: a detached loop device may hold its image a while longer.
                let image = out.path().join("image.erofs");
                build::build(&image, Source::Dir(src.clone()), &opts, &NoProgress)
                    .unwrap_or_else(|e| panic!("{what}: mkfs: {e}"));
                let img = erofs::Image::open(&image).unwrap();
                let report = erofs::fsck::fsck(
                    &img,
                    &erofs::fsck::FsckOptions {
                        verify_fingerprints: true,
                        ..Default::default()
                    },
                );
                let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
                assert!(report.is_clean(), "{what}: fsck: {}", problems.join("\n"));
                let got = {
                    let _m = mounts();
                    let m = LoopMount::new(&image).unwrap_or_else(|e| panic!("{what}: mount: {e}"));
                    manifest::of_tree(m.path())
                        .unwrap_or_else(|e| panic!("{what}: reading the mount: {e}"))
                };
                manifest::assert_same(&expected, &got, &what);
            }
        }
    }
    let xattrs = expected
        .values()
        .map(|e| e["xattrs"].as_object().map_or(0, |x| x.len()))
        .sum();
    (expected.len(), xattrs)
}

/// Prints how to replay a tree when its check panics.
struct ReplayOnPanic(u64);

impl Drop for ReplayOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "FAILED tree seed {0}; replay it alone with: EROFS_SHARE_PROPTEST_SEED={0} \
                 EROFS_SHARE_PROPTEST_TREES=1 cargo test --release -p erofs --test random_trees",
                self.0
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn random_trees_show_exactly_through_the_kernel() {
    if !require(
        "random_trees_show_exactly_through_the_kernel",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let trees = env_u64("EROFS_SHARE_PROPTEST_TREES").unwrap_or(DEFAULT_TREES);
    let seed = env_u64("EROFS_SHARE_PROPTEST_SEED").unwrap_or(DEFAULT_SEED);
    let started = Instant::now();
    let (done, entries, xattrs) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    (0..trees).into_par_iter().for_each(|i| {
        let s = seed.wrapping_add(i);
        let _replay = ReplayOnPanic(s);
        let fs = Tmpfs::new();
        let (e, x) = check_tree(s, fs.0.path());
        entries.fetch_add(e as u64, Relaxed);
        xattrs.fetch_add(x as u64, Relaxed);
        let n = done.fetch_add(1, Relaxed) + 1;
        if n.is_multiple_of(100) {
            eprintln!("{n}/{trees} trees in {:?}", started.elapsed());
        }
    });
    eprintln!(
        "{trees} random trees from seed {seed} ({} entries, {} xattrs; 12 images each) in {:?}",
        entries.into_inner(),
        xattrs.into_inner(),
        started.elapsed()
    );
}
