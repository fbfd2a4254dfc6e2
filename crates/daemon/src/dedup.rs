//! Dedup objects: one per (domain, fingerprint), the user-space twin of the kernel's shared
//! inode.
//!
//! An object's size is fixed by the first file that arrives; a later file with the same key
//! and another size is not shared (warned and counted). Its sources are the (image, nid)
//! pairs of every mounted file with that key; a page-cache miss on the object's dedup file is
//! served from the first source that reads cleanly, so a corrupt or vanished image only costs
//! a retry on the next one. The object lives while any source references it.
//!
//! In a verified domain an object knows the SHA-256 its fingerprint promises: before its first
//! miss is answered from a source, that source's whole content is hashed (O_DIRECT reads) and
//! compared. A source that does not match is never used again for the object; one that
//! matches stays verified for the object's life. Sources whose fingerprint the daemon computed
//! itself from the same image are verified from the start.
//!
//! The content hashed for a check is kept for a moment (within a memory budget) to answer the
//! misses that follow on the same object, so a verified object is read from its image once,
//! not twice.
//!
//! An object keeps its dedup file open once it has been opened (within a descriptor budget):
//! each mount's first open of a shared file then registers that file for passthrough with no
//! path lookup on the dedup mount, a round trip otherwise, again after the kernel forgets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Dedup files kept open by objects, over all domains.
static KEPT_FILES: AtomicUsize = AtomicUsize::new(0);

/// How many dedup files objects may keep open: half the descriptor limit, so mounts, images,
/// sockets and the fallback opens always have room.
fn kept_files_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        // None is unlimited.
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        soft.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX))
    })
}

/// Bytes of hashed content kept over all objects: enough for the files a cold start reads at
/// once, small beside the page cache the same bytes are about to fill.
const COPY_BUDGET: usize = 64 << 20;
/// Larger objects are read twice (hashed, then served) rather than crowding the budget.
const COPY_MAX: u64 = 16 << 20;
/// A copy not used up by then is dropped at the next check of any object.
const COPY_TTL: Duration = Duration::from_secs(5);
static COPY_BYTES: AtomicUsize = AtomicUsize::new(0);

/// An object's content as its check hashed it, until every byte has been served once.
#[derive(Debug)]
struct HashedCopy {
    bytes: Vec<u8>,
    unserved: u64,
}

impl Drop for HashedCopy {
    fn drop(&mut self) {
        COPY_BYTES.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

type CopySlot = Arc<Mutex<Option<HashedCopy>>>;
/// Kept copies, oldest first, each with when it was kept.
type KeptCopies = VecDeque<(Instant, Weak<Mutex<Option<HashedCopy>>>)>;

/// Every kept copy: what the budget and the time limit are enforced on.
fn kept_copies() -> &'static Mutex<KeptCopies> {
    static KEPT: OnceLock<Mutex<KeptCopies>> = OnceLock::new();
    KEPT.get_or_init(Default::default)
}

/// Sources verified (good or bad) since the daemon started: the state file is saved again
/// when this moves (see [`crate::daemon::Daemon::save_verifications`]).
static CHECKS: AtomicU64 = AtomicU64::new(0);

/// How many sources verification has judged so far.
pub fn checks() -> u64 {
    CHECKS.load(Ordering::Relaxed)
}

/// Drops every kept copy (see [`crate::control::Request::DropCaches`]).
pub fn drop_kept_copies() {
    let mut kept = kept_copies().lock().unwrap();
    for (_, slot) in kept.drain(..) {
        if let Some(slot) = slot.upgrade() {
            slot.lock().unwrap().take();
        }
    }
}

/// Keep `bytes` in `slot`, dropping expired copies and, past the budget, the oldest ones.
/// `served`: the range the check already answered.
fn keep_copy(slot: &CopySlot, bytes: Vec<u8>, served: u64) {
    let unserved = (bytes.len() as u64).saturating_sub(served);
    if unserved == 0 {
        return;
    }
    let mut kept = kept_copies().lock().unwrap();
    let now = Instant::now();
    while let Some((at, old)) = kept.front() {
        let expired = now.duration_since(*at) >= COPY_TTL;
        let over = COPY_BYTES.load(Ordering::Relaxed) + bytes.len() > COPY_BUDGET;
        if !(expired || over || old.strong_count() == 0) {
            break;
        }
        if let Some(old) = old.upgrade() {
            old.lock().unwrap().take();
        }
        kept.pop_front();
    }
    if COPY_BYTES.load(Ordering::Relaxed) + bytes.len() > COPY_BUDGET {
        return;
    }
    COPY_BYTES.fetch_add(bytes.len(), Ordering::Relaxed);
    *slot.lock().unwrap() = Some(HashedCopy { bytes, unserved });
    kept.push_back((now, Arc::downgrade(slot)));
}

/// An object's dedup file: kept by the object, or opened for this use only.
#[derive(Debug)]
pub enum DedupFile<'a> {
    /// Kept open while the object lives.
    Kept(&'a File),
    /// Over the descriptor budget: closed when dropped.
    Once(File),
}

impl AsFd for DedupFile<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DedupFile::Kept(f) => f.as_fd(),
            DedupFile::Once(f) => f.as_fd(),
        }
    }
}

/// A file's content as one source image stores it.
pub trait Content: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; short only at the end of the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// One (image, nid) that holds an object's content.
#[derive(Debug, Clone)]
pub struct Source {
    /// The daemon's id of the image mount.
    pub mount_id: u64,
    /// The file's nid in that image.
    pub nid: u64,
    /// How to read it.
    pub content: Arc<dyn Content>,
    /// The image, for logs.
    pub image: Arc<str>,
    /// True when the daemon computed the fingerprint from this very content: no check needed.
    pub verified: bool,
    /// The mount's count of sources that failed verification.
    pub verify_failures: Arc<AtomicU64>,
}

/// What verification has found out about an object's sources, by (mount, nid).
#[derive(Debug, Default)]
struct Checked {
    good: HashSet<(u64, u64)>,
    bad: HashSet<(u64, u64)>,
}

/// A shared file: its dedup inode, fixed size and the sources that can fill it.
#[derive(Debug)]
pub struct DedupObject {
    /// Inode number inside the domain's dedup mount (never reused).
    pub ino: u64,
    /// File name inside the dedup mount: derived from the sharing key, so it is the same
    /// whenever the same content is attached again (metadata images redirect to it).
    pub name: String,
    /// Size fixed by the first source.
    pub size: u64,
    sources: Mutex<Vec<Source>>,
    /// The SHA-256 every source's content must have (verified domains), else None.
    expect: Option<[u8; 32]>,
    /// Held while a source is hashed, so concurrent misses verify it once.
    checked: Mutex<Checked>,
    /// The domain's count of sources that failed verification.
    domain_failures: Arc<AtomicU64>,
    misses: AtomicU64,
    miss_bytes: AtomicU64,
    file: OnceLock<File>,
    /// The content the last check hashed, for the misses that follow.
    copy: CopySlot,
}

impl Drop for DedupObject {
    fn drop(&mut self) {
        if self.file.get().is_some() {
            KEPT_FILES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl DedupObject {
    /// The object's dedup file: the kept one, or one opened with `open`, which is kept if
    /// the descriptor budget allows.
    pub fn file(&self, open: impl FnOnce() -> io::Result<File>) -> io::Result<DedupFile<'_>> {
        self.file_within(kept_files_budget(), open)
    }

    /// [`Self::file`] with at most `budget` files kept over all objects.
    fn file_within(
        &self,
        budget: usize,
        open: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<DedupFile<'_>> {
        if let Some(f) = self.file.get() {
            return Ok(DedupFile::Kept(f));
        }
        let f = open()?;
        let reserved = KEPT_FILES
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < budget).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return Ok(DedupFile::Once(f));
        }
        if self.file.set(f).is_err() {
            // Another thread kept one first; ours closes here.
            KEPT_FILES.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(DedupFile::Kept(self.file.get().expect("set above")))
    }

    /// Serves a page-cache miss: reads `buf.len()` bytes at `offset` (clamped to the size)
    /// from the first source that succeeds.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.size - offset) as usize;
        let buf = &mut buf[..want];
        if self.read_copy(offset, buf) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.miss_bytes.fetch_add(want as u64, Ordering::Relaxed);
            return Ok(want);
        }
        let sources: Vec<Source> = self.sources.lock().unwrap().clone();
        let mut last_err = None;
        for s in &sources {
            let filled = match self.check(s, offset, buf) {
                Ok(filled) => filled,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let got = if filled {
                Ok(want)
            } else {
                read_full(&*s.content, offset, buf)
            };
            match got {
                Ok(n) if n == want => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    self.miss_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Ok(n) => {
                    tracing::warn!(
                        "dedup object {:#x}: source mount {} nid {} ended at {} (expected {})",
                        self.ino,
                        s.mount_id,
                        s.nid,
                        offset + n as u64,
                        offset + want as u64
                    );
                    last_err = Some(io::Error::from_raw_os_error(libc::EIO));
                }
                Err(e) => {
                    tracing::warn!(
                        "dedup object {:#x}: source mount {} nid {} failed at {offset}: {e}",
                        self.ino,
                        s.mount_id,
                        s.nid
                    );
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no live source holds this content")
        }))
    }

    /// Fills `buf` (within the size) from the hashed copy, if one is kept; the copy goes once
    /// every byte has been served.
    fn read_copy(&self, offset: u64, buf: &mut [u8]) -> bool {
        let mut slot = self.copy.lock().unwrap();
        let Some(copy) = slot.as_mut() else {
            return false;
        };
        let at = offset as usize;
        buf.copy_from_slice(&copy.bytes[at..at + buf.len()]);
        copy.unserved = copy.unserved.saturating_sub(buf.len() as u64);
        if copy.unserved == 0 {
            slot.take();
        }
        true
    }

    /// Ok when `s` may serve this object: trusted, verified before, or verified now by hashing
    /// its whole content; in the last case `buf` is filled from `offset` on the way (Ok(true)),
    /// so the miss costs no second read. A mismatch is logged, counted and remembered.
    fn check(&self, s: &Source, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let Some(expect) = self.expect else {
            return Ok(false);
        };
        if s.verified {
            return Ok(false);
        }
        let id = (s.mount_id, s.nid);
        let mut checked = self.checked.lock().unwrap();
        if checked.good.contains(&id) {
            return Ok(false);
        }
        let forged = || io::Error::from_raw_os_error(libc::EIO);
        if checked.bad.contains(&id) {
            return Err(forged());
        }
        // An I/O error is not remembered: the next miss tries this source again.
        let mut copy = (self.size <= COPY_MAX).then(|| Vec::with_capacity(self.size as usize));
        let digest = content_sha256(&*s.content, self.size, offset, buf, copy.as_mut())?;
        if digest == expect {
            checked.good.insert(id);
            CHECKS.fetch_add(1, Ordering::Relaxed);
            if let Some(bytes) = copy {
                keep_copy(&self.copy, bytes, buf.len() as u64);
            }
            return Ok(true);
        }
        checked.bad.insert(id);
        CHECKS.fetch_add(1, Ordering::Relaxed);
        s.verify_failures.fetch_add(1, Ordering::Relaxed);
        self.domain_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{}: nid {}: content does not match its fingerprint: never used for dedup object \
             {} again",
            s.image,
            s.nid,
            self.name
        );
        Err(forged())
    }

    /// Number of sources (mounted files) referencing this object.
    pub fn source_count(&self) -> usize {
        self.sources.lock().unwrap().len()
    }

    /// Mount ids of the sources.
    pub fn source_mounts(&self) -> Vec<u64> {
        self.sources
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.mount_id)
            .collect()
    }

    /// Misses served (read requests answered) and bytes delivered to the page cache.
    pub fn misses(&self) -> (u64, u64) {
        (
            self.misses.load(Ordering::Relaxed),
            self.miss_bytes.load(Ordering::Relaxed),
        )
    }
}

fn read_full(c: &dyn Content, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = c.read_at(offset + got as u64, &mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// SHA-256 of the first `size` bytes of `c`, streamed; an error when the content is shorter.
/// The bytes from `offset` on are copied into `out` as they pass (`out` must end by `size`),
/// and all of them into `all` if given.
fn content_sha256(
    c: &dyn Content,
    size: u64,
    offset: u64,
    out: &mut [u8],
    mut all: Option<&mut Vec<u8>>,
) -> io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    // Most files are small: a buffer of their size, not of the largest read.
    let mut buf = vec![0u8; size.min(1 << 20) as usize];
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(buf.len() as u64) as usize;
        let n = read_full(c, at, &mut buf[..want])?;
        if n < want {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        h.update(&buf[..n]);
        if let Some(all) = all.as_deref_mut() {
            all.extend_from_slice(&buf[..n]);
        }
        // The overlap of [at, at + n) with [offset, offset + out.len()).
        let from = at.max(offset);
        let to = (at + n as u64).min(offset + out.len() as u64);
        if from < to {
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&buf[(from - at) as usize..(to - at) as usize]);
        }
        at += n as u64;
    }
    Ok(h.finalize().into())
}

/// The dedup file name of the object with sharing key `key`: 128 bits of its SHA-256 in
/// unpadded URL-safe base64, 22 characters (keys hold domain ids and fingerprints of any
/// bytes; names must be path components). Every file of a metadata image carries `/<name>` as
/// its redirect: 128 bits keep collisions out of reach, 22 characters keep a fingerprinted
/// file's inode record in four 32-byte slots.
pub fn object_name(key: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&sha2::Sha256::digest(key)[..16])
}

/// What attaching a file to its domain gave.
#[derive(Debug)]
pub enum Attach {
    /// The file shares this object.
    Shared(Arc<DedupObject>),
    /// The key exists with another size: the file stays unshared.
    SizeMismatch {
        /// The object's size.
        expected: u64,
    },
}

/// The dedup objects of one domain.
#[derive(Debug, Default)]
pub struct DedupTable {
    by_key: HashMap<Vec<u8>, Arc<DedupObject>>,
    by_ino: HashMap<u64, Arc<DedupObject>>,
    by_name: HashMap<String, Arc<DedupObject>>,
    /// Next dedup inode number; 1 is the dedup mount's root.
    next_ino: u64,
    size_mismatches: u64,
    verify_failures: Arc<AtomicU64>,
}

impl DedupTable {
    /// Adds `source` (a file of `size` bytes with sharing key `key`) to the object of that key,
    /// creating it when absent, whose sources must hash to `expect` when given (the key's
    /// fingerprint decides it, so every source of a key brings the same). Idempotent for the
    /// same (mount, nid).
    pub fn attach(
        &mut self,
        key: &[u8],
        size: u64,
        source: Source,
        expect: Option<[u8; 32]>,
    ) -> Attach {
        if let Some(obj) = self.by_key.get(key) {
            if obj.size != size {
                self.size_mismatches += 1;
                return Attach::SizeMismatch { expected: obj.size };
            }
            let mut sources = obj.sources.lock().unwrap();
            if !sources
                .iter()
                .any(|s| s.mount_id == source.mount_id && s.nid == source.nid)
            {
                sources.push(source);
            }
            drop(sources);
            return Attach::Shared(obj.clone());
        }
        if self.next_ino < 2 {
            self.next_ino = 2;
        }
        let obj = Arc::new(DedupObject {
            ino: self.next_ino,
            name: object_name(key),
            size,
            sources: Mutex::new(vec![source]),
            expect,
            checked: Mutex::new(Checked::default()),
            domain_failures: self.verify_failures.clone(),
            misses: AtomicU64::new(0),
            miss_bytes: AtomicU64::new(0),
            file: OnceLock::new(),
            copy: CopySlot::default(),
        });
        self.next_ino += 1;
        self.by_key.insert(key.to_vec(), obj.clone());
        self.by_ino.insert(obj.ino, obj.clone());
        self.by_name.insert(obj.name.clone(), obj.clone());
        Attach::Shared(obj)
    }

    /// Removes every source of mount `mount_id`; returns the objects left without a source
    /// (now removed from the table), whose cached pages the caller should drop.
    pub fn detach_mount(&mut self, mount_id: u64) -> Vec<Arc<DedupObject>> {
        let mut dead = Vec::new();
        self.by_key.retain(|_, obj| {
            let mut sources = obj.sources.lock().unwrap();
            sources.retain(|s| s.mount_id != mount_id);
            if sources.is_empty() {
                dead.push(obj.clone());
                false
            } else {
                true
            }
        });
        for obj in &dead {
            self.by_ino.remove(&obj.ino);
            self.by_name.remove(&obj.name);
        }
        dead
    }

    /// The object named `name` in the dedup mount.
    pub fn by_name(&self, name: &str) -> Option<Arc<DedupObject>> {
        self.by_name.get(name).cloned()
    }

    /// The object with dedup inode number `ino`.
    pub fn get(&self, ino: u64) -> Option<Arc<DedupObject>> {
        self.by_ino.get(&ino).cloned()
    }

    /// All live objects, by inode number.
    pub fn objects(&self) -> Vec<Arc<DedupObject>> {
        let mut v: Vec<_> = self.by_ino.values().cloned().collect();
        v.sort_by_key(|o| o.ino);
        v
    }

    /// Files that were not shared because their size differed from their object's.
    pub fn size_mismatches(&self) -> u64 {
        self.size_mismatches
    }

    /// Sources whose content did not match their fingerprint, over the domain's life.
    pub fn verify_failures(&self) -> u64 {
        self.verify_failures.load(Ordering::Relaxed)
    }
}

/// One object as a successor daemon rebuilds it (see [`crate::takeover`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ObjectState {
    /// The sharing key, hex (the object's name derives from it).
    pub key: String,
    /// Its dedup inode number, which the kernel knows it by.
    pub ino: u64,
    /// Its size.
    pub size: u64,
    /// The SHA-256 its sources must have (verified domains), hex.
    pub expect: Option<String>,
    /// Its sources: (mount id, nid, fingerprint computed from this content).
    pub sources: Vec<(u64, u64, bool)>,
    /// Sources verification found good, and bad: (mount id, nid).
    pub good: Vec<(u64, u64)>,
    /// See `good`.
    pub bad: Vec<(u64, u64)>,
}

/// A domain's table, as a successor daemon rebuilds it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TableState {
    /// Every live object.
    pub objects: Vec<ObjectState>,
    /// The next inode number (numbers are never reused while the dedup mount lives).
    pub next_ino: u64,
    /// Counters carried over.
    pub size_mismatches: u64,
    /// See `size_mismatches`.
    pub verify_failures: u64,
}

impl DedupTable {
    /// Everything a successor needs to serve the same objects under the same inode numbers.
    pub fn export(&self) -> TableState {
        let mut objects: Vec<ObjectState> = self
            .by_key
            .iter()
            .map(|(key, o)| {
                let checked = o.checked.lock().unwrap();
                ObjectState {
                    key: hex::encode(key),
                    ino: o.ino,
                    size: o.size,
                    expect: o.expect.map(hex::encode),
                    sources: (o.sources.lock().unwrap().iter())
                        .map(|s| (s.mount_id, s.nid, s.verified))
                        .collect(),
                    good: checked.good.iter().copied().collect(),
                    bad: checked.bad.iter().copied().collect(),
                }
            })
            .collect();
        objects.sort_by_key(|o| o.ino);
        TableState {
            objects,
            next_ino: self.next_ino,
            size_mismatches: self.size_mismatches,
            verify_failures: self.verify_failures.load(Ordering::Relaxed),
        }
    }

    /// The table `state` describes; `source(mount, nid, verified)` rebuilds each source.
    pub fn import(
        state: &TableState,
        mut source: impl FnMut(u64, u64, bool) -> Result<Source, String>,
    ) -> Result<Self, String> {
        let mut table = DedupTable {
            next_ino: state.next_ino,
            size_mismatches: state.size_mismatches,
            verify_failures: Arc::new(AtomicU64::new(state.verify_failures)),
            ..DedupTable::default()
        };
        let unhex =
            |what: &str, v: &str| hex::decode(v).map_err(|e| format!("object {what} {v:?}: {e}"));
        for o in &state.objects {
            let key = unhex("key", &o.key)?;
            let expect = match &o.expect {
                Some(e) => Some(
                    <[u8; 32]>::try_from(unhex("digest", e)?)
                        .map_err(|_| format!("object digest {e:?}: not 32 bytes"))?,
                ),
                None => None,
            };
            let sources = (o.sources.iter())
                .map(|&(m, nid, verified)| source(m, nid, verified))
                .collect::<Result<Vec<_>, _>>()?;
            if o.ino < 2 || o.ino >= table.next_ino || table.by_ino.contains_key(&o.ino) {
                return Err(format!("object inode {} out of place", o.ino));
            }
            let obj = Arc::new(DedupObject {
                ino: o.ino,
                name: object_name(&key),
                size: o.size,
                sources: Mutex::new(sources),
                expect,
                checked: Mutex::new(Checked {
                    good: o.good.iter().copied().collect(),
                    bad: o.bad.iter().copied().collect(),
                }),
                domain_failures: table.verify_failures.clone(),
                misses: AtomicU64::new(0),
                miss_bytes: AtomicU64::new(0),
                file: OnceLock::new(),
                copy: CopySlot::default(),
            });
            table.by_ino.insert(obj.ino, obj.clone());
            table.by_name.insert(obj.name.clone(), obj.clone());
            table.by_key.insert(key, obj);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Bytes(Vec<u8>);
    impl Content for Bytes {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let off = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - off);
            buf[..n].copy_from_slice(&self.0[off..off + n]);
            Ok(n)
        }
    }
    #[derive(Debug)]
    struct Broken;
    impl Content for Broken {
        fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }

    fn src(mount_id: u64, c: impl Content + 'static) -> Source {
        Source {
            mount_id,
            nid: 7,
            content: Arc::new(c),
            image: Arc::from(format!("img{mount_id}")),
            verified: false,
            verify_failures: Arc::new(AtomicU64::new(0)),
        }
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(b).into()
    }

    #[test]
    fn a_table_exported_and_imported_serves_the_same_objects_and_remembers_checks() {
        let mut t = DedupTable::default();
        // The forged source first: the read checks it (bad), then the good one.
        let Attach::Shared(a) = t.attach(
            b"ka",
            5,
            src(2, Bytes(b"evil!".to_vec())),
            Some(sha(b"hello")),
        ) else {
            panic!()
        };
        t.attach(
            b"ka",
            5,
            src(1, Bytes(b"hello".to_vec())),
            Some(sha(b"hello")),
        );
        t.attach(b"kb", 3, src(1, Bytes(b"abc".to_vec())), None);
        let mut buf = [0u8; 5];
        assert_eq!(a.read(0, &mut buf).unwrap(), 5);
        let state = t.export();
        let json = serde_json::to_string(&state).unwrap();
        let back: TableState = serde_json::from_str(&json).unwrap();
        let mut forged_again = 0;
        let u = DedupTable::import(&back, |mount, nid, verified| {
            assert_eq!(nid, 7);
            assert!(!verified);
            let body: &[u8] = if mount == 2 {
                forged_again += 1;
                b"evil!"
            } else {
                b""
            };
            Ok(Source {
                mount_id: mount,
                ..src(mount, Bytes(body.to_vec()))
            })
        })
        .unwrap();
        assert_eq!(forged_again, 1);
        for o in t.objects() {
            let n = u.get(o.ino).expect("same inode number");
            assert_eq!((n.name.clone(), n.size), (o.name.clone(), o.size));
            assert_eq!(u.by_name(&o.name).unwrap().ino, o.ino);
            assert_eq!(n.source_mounts(), o.source_mounts());
        }
        // Known good and known bad sources stay known: mount 1's source (empty here) is not
        // hashed again, mount 2's forged one is never used.
        let b = u.by_name(&object_name(b"ka")).unwrap();
        let checked = b.checked.lock().unwrap();
        assert!(checked.good.contains(&(1, 7)) && checked.bad.contains(&(2, 7)));
        drop(checked);
        // New objects do not reuse inode numbers.
        let mut u = u;
        let Attach::Shared(c) = u.attach(b"kc", 1, src(3, Bytes(b"z".to_vec())), None) else {
            panic!()
        };
        assert!(t.objects().iter().all(|o| o.ino < c.ino));
        assert!(DedupTable::import(&back, |_, _, _| Err("gone".into())).is_err());
    }

    #[test]
    fn verified_objects_never_serve_a_forged_source() {
        let mut t = DedupTable::default();
        let forged = src(1, Bytes(b"evil!".to_vec()));
        let forged_count = forged.verify_failures.clone();
        let Attach::Shared(o) = t.attach(b"k", 5, forged, Some(sha(b"hello"))) else {
            panic!()
        };
        let mut buf = [0u8; 5];
        assert!(o.read(0, &mut buf).is_err(), "only a forged source: EIO");
        assert_eq!(forged_count.load(Ordering::Relaxed), 1);
        t.attach(
            b"k",
            5,
            src(2, Bytes(b"hello".to_vec())),
            Some(sha(b"hello")),
        );
        assert_eq!(o.read(0, &mut buf).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(o.read(2, &mut buf).unwrap(), 3);
        // The forged source was checked once and is never hashed or used again.
        assert_eq!(forged_count.load(Ordering::Relaxed), 1);
        assert_eq!(t.verify_failures(), 1);
        // The verifying miss is answered from the bytes it hashed, at any offset.
        let Attach::Shared(m) = t.attach(
            b"m",
            5,
            src(5, Bytes(b"hello".to_vec())),
            Some(sha(b"hello")),
        ) else {
            panic!()
        };
        let mut four = [0u8; 4];
        assert_eq!(m.read(1, &mut four).unwrap(), 4);
        assert_eq!(&four, b"ello");
        // A self-fingerprinted source is trusted as is; a trusted object checks nothing.
        let mut own = src(3, Bytes(b"abc".to_vec()));
        own.verified = true;
        let Attach::Shared(v) = t.attach(b"j", 3, own, Some(sha(b"xyz"))) else {
            panic!()
        };
        assert_eq!(v.read(0, &mut buf).unwrap(), 3);
        let Attach::Shared(u) = t.attach(b"u", 3, src(4, Bytes(b"abc".to_vec())), None) else {
            panic!()
        };
        assert_eq!(u.read(0, &mut buf).unwrap(), 3);
    }

    #[test]
    fn first_size_wins_and_mismatch_is_counted() {
        let mut t = DedupTable::default();
        let Attach::Shared(a) = t.attach(b"k", 3, src(1, Bytes(b"abc".to_vec())), None) else {
            panic!()
        };
        let Attach::Shared(b) = t.attach(b"k", 3, src(2, Bytes(b"abc".to_vec())), None) else {
            panic!()
        };
        assert_eq!(a.ino, b.ino);
        assert_eq!(a.source_count(), 2);
        assert!(matches!(
            t.attach(b"k", 4, src(3, Bytes(b"abcd".to_vec())), None),
            Attach::SizeMismatch { expected: 3 }
        ));
        assert_eq!(t.size_mismatches(), 1);
        assert_eq!(a.source_count(), 2);
    }

    #[test]
    fn misses_fall_back_to_a_working_source_and_objects_die_with_their_sources() {
        let mut t = DedupTable::default();
        let Attach::Shared(o) = t.attach(b"k", 5, src(1, Broken), None) else {
            panic!()
        };
        t.attach(b"k", 5, src(2, Bytes(b"hello".to_vec())), None);
        let mut buf = [0u8; 16];
        assert_eq!(o.read(1, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ello");
        assert_eq!(o.misses(), (1, 4));
        assert!(t.detach_mount(2).is_empty());
        assert!(
            o.read(0, &mut buf).is_err(),
            "only the broken source is left"
        );
        let dead = t.detach_mount(1);
        assert_eq!(dead.len(), 1);
        assert!(t.get(o.ino).is_none());
        // A new object never reuses an inode number.
        let Attach::Shared(n) = t.attach(b"k", 5, src(3, Bytes(b"hello".to_vec())), None) else {
            panic!()
        };
        assert_ne!(n.ino, o.ino);
    }

    #[test]
    fn an_object_keeps_its_file_until_it_dies() {
        let mut t = DedupTable::default();
        let Attach::Shared(a) = t.attach(b"k", 3, src(1, Bytes(b"abc".to_vec())), None) else {
            panic!()
        };
        let before = KEPT_FILES.load(Ordering::Relaxed);
        let opened = std::cell::Cell::new(0);
        let open = || {
            opened.set(opened.get() + 1);
            File::open("/dev/null")
        };
        assert!(matches!(a.file(open).unwrap(), DedupFile::Kept(_)));
        assert!(matches!(a.file(open).unwrap(), DedupFile::Kept(_)));
        assert_eq!(opened.get(), 1, "the kept file is reused");
        assert_eq!(KEPT_FILES.load(Ordering::Relaxed), before + 1);
        // A failed open keeps nothing.
        let Attach::Shared(b) = t.attach(b"j", 1, src(1, Bytes(b"x".to_vec())), None) else {
            panic!()
        };
        assert!(b.file(|| File::open("/nonexistent/erofs-share")).is_err());
        assert_eq!(KEPT_FILES.load(Ordering::Relaxed), before + 1);
        // Over the budget the file is lent for one use and nothing is kept.
        let once = b.file_within(0, || File::open("/dev/null")).unwrap();
        assert!(matches!(once, DedupFile::Once(_)));
        drop(once);
        assert!(b.file.get().is_none());
        assert_eq!(KEPT_FILES.load(Ordering::Relaxed), before + 1);
        drop(b);
        t.detach_mount(1);
        drop(a);
        assert_eq!(KEPT_FILES.load(Ordering::Relaxed), before);
    }

    /// Counts the bytes read from it.
    #[derive(Debug)]
    struct Counted(Vec<u8>, Arc<AtomicU64>);
    impl Content for Counted {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let n = Bytes(self.0.clone()).read_at(offset, buf)?;
            self.1.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    #[test]
    fn a_verified_object_is_read_from_its_image_once() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let read = Arc::new(AtomicU64::new(0));
        let mut t = DedupTable::default();
        let source = src(1, Counted(data.clone(), read.clone()));
        let Attach::Shared(o) = t.attach(b"big", data.len() as u64, source, Some(sha(&data)))
        else {
            panic!()
        };
        // Misses as readahead sends them, the first one in the middle.
        let mut chunk = vec![0u8; 128 << 10];
        let mut offsets: Vec<usize> = (0..data.len()).step_by(chunk.len()).collect();
        offsets.rotate_left(5);
        for &at in &offsets {
            let n = o.read(at as u64, &mut chunk).unwrap();
            assert_eq!(&chunk[..n], &data[at..at + n], "at {at}");
        }
        assert_eq!(
            read.load(Ordering::Relaxed),
            data.len() as u64,
            "hashed, then served"
        );
        assert!(
            o.copy.lock().unwrap().is_none(),
            "the copy goes once used up"
        );
        // Later misses read the image again.
        o.read(0, &mut chunk).unwrap();
        assert_eq!(
            read.load(Ordering::Relaxed),
            (data.len() + chunk.len()) as u64
        );
    }
}
