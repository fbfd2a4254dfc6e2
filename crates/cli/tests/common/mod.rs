//! A private daemon per test: its own state directory and mountpoints under /tmp, stopped
//! with SIGTERM (SIGKILL and lazy unmounts if it does not go) when the harness is dropped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use erofs_share_daemon::control::{self, MountStatus, Request, Response, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_erofs-share");

static CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serialises the tests of one binary that drop caches or measure the page cache: a
/// drop_caches in one test would empty the cache another is measuring.
pub fn cache_lock() -> std::sync::MutexGuard<'static, ()> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    /// The front mounts ask for (None: the daemon's default, the overlay front here).
    pub front: Option<String>,
    /// More arguments of `erofs-share daemon`.
    pub args: Vec<std::ffi::OsString>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with_env(&[])
    }

    /// A daemon with these extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        Self::start_with(&[], env)
    }

    /// A daemon with these extra arguments and environment variables.
    pub fn start_with(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("erofs-share-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let state = dir.path().join("state");
        let mut d = Daemon {
            child: None,
            dir,
            state,
            front: None,
            args: args.iter().map(|a| a.to_os_string()).collect(),
        };
        d.spawn_with_env(env);
        d
    }

    /// Starts (again) a daemon on this state directory.
    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("daemon")
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.args)
            .env("EROFS_SHARE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = self.child.insert(cmd.spawn().unwrap());
        if let Err(e) = control::wait_ready(&self.state, child, Duration::from_secs(10)) {
            panic!("daemon did not start: {e}: {}", self.log());
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn request(&self, req: &Request) -> Response {
        control::request(&self.state, req).unwrap()
    }

    /// A new empty directory to mount on.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn try_mount(
        &self,
        image: &Path,
        name: &str,
        domain: Option<&str>,
        share: bool,
    ) -> Result<MountStatus, String> {
        self.try_mount_with(image, name, domain, share, false)
    }

    /// [`Self::try_mount`] asking for a trusted (else verified) domain.
    pub fn try_mount_with(
        &self,
        image: &Path,
        name: &str,
        domain: Option<&str>,
        share: bool,
        trusted: bool,
    ) -> Result<MountStatus, String> {
        let mp = self.mountpoint(name);
        let r = self.request(&Request::Mount {
            image: image.canonicalize().unwrap(),
            mountpoint: mp,
            domain: domain.map(String::from),
            share,
            front: self.front.clone(),
            trusted,
        });
        if r.ok {
            Ok(r.mount.unwrap())
        } else {
            Err(r.error.unwrap())
        }
    }

    pub fn mount(&self, image: &Path, name: &str, domain: Option<&str>) -> PathBuf {
        self.try_mount(image, name, domain, true)
            .unwrap_or_else(|e| panic!("mount {}: {e}\n{}", image.display(), self.log()))
            .mountpoint
    }

    pub fn umount(&self, mp: &Path) -> bool {
        let r = self.request(&Request::Umount {
            mountpoint: mp.to_path_buf(),
        });
        assert!(r.ok, "umount {}: {:?}", mp.display(), r.error);
        r.detached.unwrap()
    }

    pub fn status(&self) -> Status {
        self.request(&Request::Status).status.unwrap()
    }

    /// SIGTERM and wait; true when it exited within `limit`.
    pub fn stop(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill on the pid of a child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL, leaving its mounts behind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
        // Whatever is left under our directory (a killed daemon's mounts) goes too.
        for m in mounts_under(self.dir.path()) {
            let _ = erofs_share_daemon::mounts::detach(&m);
        }
    }
}

/// Mountpoints under `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = erofs_share_daemon::mounts::mountpoints()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v
}

/// Every regular file under `root`, relative path → absolute path.
pub fn regular_files(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.file_type().is_file() {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, p);
            }
        }
    }
    out
}

/// Runs `erofs-share ARGS` and returns its stdout, failing the test (with its stderr) unless
/// it succeeds.
pub fn cli_ok<I: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = I>) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a whole file, returning its bytes.
pub fn read_all(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn page_round(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// Bytes of `p` in the page cache.
pub fn cached(p: &Path) -> u64 {
    erofs_share_daemon::page_cache::cached_bytes(p).unwrap_or(0)
}

/// Page cache held by an image mount's own files plus the dedup files of every domain:
/// everything the daemon's mounts put in the page cache.
pub fn cache_of(mounts: &[&Path], status: &Status) -> u64 {
    let mut total = 0;
    for m in mounts {
        for p in regular_files(m).values() {
            total += cached(p);
        }
    }
    for d in &status.domains {
        for e in std::fs::read_dir(&d.dedup_mountpoint).unwrap() {
            total += cached(&e.unwrap().path());
        }
    }
    total
}

/// Page-rounded size of the distinct contents, by (sha256, size), of the regular files under
/// `roots`.
pub fn unique_content(roots: &[&Path]) -> u64 {
    use sha2::Digest;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for r in roots {
        for p in regular_files(r).values() {
            let data = read_all(p);
            let key = (sha2::Sha256::digest(&data).to_vec(), data.len());
            if seen.insert(key) {
                total += page_round(data.len() as u64);
            }
        }
    }
    total
}

/// A copy of `image` in `dir` with `patch(bytes)` applied.
pub fn patched_copy(
    image: &Path,
    dir: &Path,
    name: &str,
    patch: impl FnOnce(&mut Vec<u8>),
) -> PathBuf {
    let mut bytes = std::fs::read(image).unwrap();
    patch(&mut bytes);
    reseal_superblock(&mut bytes);
    let out = dir.join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Byte offset of the on-disk inode of `path` in `image`, and whether it is extended.
pub fn inode_offset(image: &Path, path: &str) -> (u64, erofs::inode::Inode) {
    let img = erofs::Image::open(image).unwrap();
    let inode = img.resolve(path).unwrap();
    let sb = img.superblock();
    let off = sb.meta_blkaddr as u64 * sb.block_size() + inode.nid * 32;
    (off, inode)
}

/// Path (relative, "/"-separated) of the largest flat-plain (layout 0) regular file of
/// `image` — a file whose data is one contiguous run of blocks, easy to corrupt or shorten.
pub fn flat_plain_file(image: &Path) -> String {
    let img = erofs::Image::open(image).unwrap();
    let mut best: Option<(u64, String)> = None;
    erofs::walk::try_walk::<erofs::walk::Problem>(&img, |path, inode| {
        if inode.file_type() == erofs::inode::FileType::Reg
            && inode.layout == 0
            && inode.size > 16384
            && best.as_ref().is_none_or(|(s, _)| inode.size > *s)
        {
            best = Some((inode.size, String::from_utf8_lossy(path).into_owned()));
        }
        Ok(())
    })
    .unwrap();
    best.expect("a flat plain file")
        .1
        .trim_start_matches('/')
        .to_string()
}

/// Recomputes the superblock checksum (when the image has one) after a patch, so the
/// patched image is "valid but lying" rather than rejected at mount.
pub fn reseal_superblock(v: &mut [u8]) {
    if v[1024 + 8] & erofs::format::compat::SB_CHKSUM as u8 == 0 {
        return;
    }
    let n = erofs::superblock::checksum_len(v[1024 + 12]);
    v[1028..1032].fill(0);
    let c = erofs::superblock::checksum_of(&v[1024..1024 + n]);
    v[1028..1032].copy_from_slice(&c.to_le_bytes());
}

/// Runs `attempt` up to three times; panics with the last failure if none passes. For
/// page-cache measurements on a shared host, where another process's drop_caches can only
/// make an attempt fail.
pub fn retry(mut attempt: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    for _ in 0..3 {
        match attempt() {
            Ok(()) => return,
            Err(e) => {
                eprintln!("attempt failed: {e}");
                last = e;
            }
        }
    }
    panic!("{last}");
}

/// `Err(msg)` unless `ok`.
pub fn check(ok: bool, msg: String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(msg) }
}

/// A read-only shared mapping of a whole file, unmapped on drop.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps the first `len` (> 0) bytes of `f`.
    pub fn new(f: &std::fs::File, len: usize) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only shared mapping of an open file, owned by Mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is len bytes long and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping made in new().
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Maps every non-empty regular file under `roots` and touches every page. Mapped pages
/// survive anyone's drop_caches, so a page-cache measurement taken while the mappings live
/// is not disturbed by other processes on the host.
pub fn map_all(roots: &[&Path]) -> Vec<Mapped> {
    let mut out = Vec::new();
    for r in roots {
        for p in regular_files(r).values() {
            let f = std::fs::File::open(p).unwrap();
            let len = f.metadata().unwrap().len() as usize;
            if len == 0 {
                continue;
            }
            let m = Mapped::new(&f, len).unwrap_or_else(|e| panic!("mmap {}: {e}", p.display()));
            let mut sum = 0u8;
            for i in (0..len).step_by(4096) {
                sum = sum.wrapping_add(m.bytes()[i]);
            }
            std::hint::black_box(sum);
            out.push(m);
        }
    }
    out
}

/// Relative path of the 800 KiB text file in [`built_image`]'s tree.
pub const BIG_TEXT: &str = "big/text-800k.txt";

/// An image of a tree generated here (text, pseudo-random binaries, sizes around block
/// boundaries, a 600-entry directory, deep nesting, symlinks), built by our mkfs with
/// fingerprints and `block_size` into `dir/NAME.erofs`: what the daemon tests mount when
/// which mkfs wrote the image is not the point. Every block size holds the same contents, so
/// such images share in a domain. Built once per `dir` and name.
pub fn built_image(dir: &Path, name: &str, block_size: u32) -> PathBuf {
    let img = dir.join(format!("{name}.erofs"));
    if img.exists() {
        return img;
    }
    let tree = dir.join("tree");
    if !tree.exists() {
        write_tree(&tree);
    }
    let out = Command::new(BIN)
        .args(["mkfs", "-q", "--block-size", &block_size.to_string()])
        .arg(&img)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

fn write_tree(tree: &Path) {
    let file = |rel: &str, data: &[u8]| {
        let p = tree.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    let mut text = String::new();
    for i in 0.. {
        if text.len() >= 800 << 10 {
            break;
        }
        text.push_str(&format!(
            "line {i}: the quick brown fox jumps over the lazy dog\n"
        ));
    }
    text.truncate(800 << 10);
    file(BIG_TEXT, text.as_bytes());
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for (i, len) in [1, 511, 512, 513, 4095, 4096, 4097, 8191, 65537, 300_000]
        .into_iter()
        .enumerate()
    {
        file(&format!("sizes/{len}.bin"), &noise(len));
        file(&format!("lib/lib{i}.so.1"), &noise(len * 3 + 100));
    }
    for i in 0..600 {
        file(
            &format!("many/entry-{i:04}"),
            format!("{i}\n").repeat(i % 50 + 1).as_bytes(),
        );
    }
    let deep: String = (0..20).map(|i| format!("d{i}/")).collect();
    file(&format!("{deep}leaf.txt"), b"deep\n");
    std::os::unix::fs::symlink("../big/text-800k.txt", tree.join("lib/text-link")).unwrap();
    std::os::unix::fs::symlink("lib0.so.1", tree.join("lib/lib0.so")).unwrap();
}
