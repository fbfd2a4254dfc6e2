//! The per-image FUSE filesystem: one read-only mount of one EROFS image.
//!
//! Metadata (lookup, getattr, readdir(plus), readlink, xattrs, statfs) comes from the
//! [`erofs::Image`] reader and is cached by the kernel for a long time (images never change).
//! A regular file is opened one of two ways:
//! - shared: its fingerprint names a dedup object of the mount's domain, so the open passes
//!   through (`FOPEN_PASSTHROUGH`) to the object's file on the domain's dedup mount; reads and
//!   mmap then hit that file's page cache with no round trip here. One `BackingId` per inode
//!   is kept from its first open until the kernel forgets the inode: the kernel requires the
//!   same id while any open lives, and reusing it makes a warm open one round trip.
//! - unshared: plain FUSE reads answered from the image, kept in this mount's page cache
//!   (`FOPEN_KEEP_CACHE`).
//!
//! A read error of one file (a corrupt image) is that file's EIO; nothing here panics on image
//! content.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, UNIX_EPOCH};

use erofs::Image;
use erofs::dir::DirEntry;
use erofs::inode::{FileType as ErofsType, Inode};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::dedup::{Attach, Content, DedupObject, Source};
use crate::domain::Domain;
use crate::source::UncachedFile;

/// Images never change: entries and attributes may be cached as long as the kernel likes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Decoded inodes kept for reads and attribute replies; cleared when full.
const INODE_CACHE_MAX: usize = 65_536;
/// Directory listings kept while the kernel reads them in chunks; cleared when full.
const LISTING_CACHE_MAX: usize = 256;

/// One mounted image: the reader, its file, its domain and its counters.
#[derive(Debug)]
pub struct MountedImage {
    /// The daemon's id of this mount.
    pub id: u64,
    /// The image file as given at mount time.
    pub image_path: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The reader.
    pub image: Image,
    /// The image file, read without page-cache copies.
    pub file: Arc<UncachedFile>,
    /// The sharing domain, when the mount shares.
    pub domain: Option<Arc<Domain>>,
    /// Why files of this mount are not shared, when they are not (no domain, `--no-share`,
    /// no passthrough, …).
    pub unshared_reason: Mutex<Option<String>>,
    /// Opens that passed through to a dedup file.
    pub shared_opens: AtomicU64,
    /// Opens served by this mount's own page cache.
    pub unshared_opens: AtomicU64,
    /// Files not shared because their size differed from their dedup object's.
    pub size_mismatches: AtomicU64,
    /// Read errors answered with EIO.
    pub read_errors: AtomicU64,
    /// Files of this mount whose content did not match their fingerprint (verified domains).
    pub verify_failures: Arc<AtomicU64>,
    /// Fingerprints the daemon computed for this mount (files that had none, not cached).
    pub fingerprints_computed: AtomicU64,
    /// Fingerprints of files that have none, computed at mount (FUSE front, sharing mounts).
    pub own_fingerprints: std::sync::OnceLock<HashMap<u64, erofs::fingerprint::Value>>,
}

impl MountedImage {
    /// Opens `image_path` for mounting at `mountpoint`; errors name the image.
    pub fn open(
        id: u64,
        image_path: PathBuf,
        mountpoint: PathBuf,
        domain: Option<Arc<Domain>>,
    ) -> io::Result<Self> {
        let file = UncachedFile::open(&image_path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", image_path.display())))?;
        Self::with_file(id, image_path, mountpoint, domain, file)
    }

    /// [`Self::open`] for an image file already open (a predecessor daemon's).
    pub fn from_file(
        id: u64,
        image_path: PathBuf,
        mountpoint: PathBuf,
        domain: Option<Arc<Domain>>,
        file: std::fs::File,
    ) -> io::Result<Self> {
        Self::with_file(
            id,
            image_path,
            mountpoint,
            domain,
            UncachedFile::from_file(file)?,
        )
    }

    fn with_file(
        id: u64,
        image_path: PathBuf,
        mountpoint: PathBuf,
        domain: Option<Arc<Domain>>,
        file: UncachedFile,
    ) -> io::Result<Self> {
        let file = Arc::new(file);
        let image = Image::from_source(file.clone(), image_path.display().to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        // No front can serve an image without a root directory: refused, not mounted with
        // its mountpoint failing every access.
        image
            .root()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Self {
            id,
            image_path,
            mountpoint,
            image,
            file,
            domain,
            unshared_reason: Mutex::new(None),
            shared_opens: AtomicU64::new(0),
            unshared_opens: AtomicU64::new(0),
            size_mismatches: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            verify_failures: Arc::new(AtomicU64::new(0)),
            fingerprints_computed: AtomicU64::new(0),
            own_fingerprints: std::sync::OnceLock::new(),
        })
    }

    /// Records why this mount does not share (the first reason wins).
    pub fn set_unshared(&self, reason: impl Into<String>) {
        let mut r = self.unshared_reason.lock().unwrap();
        if r.is_none() {
            *r = Some(reason.into());
        }
    }

    /// Why this mount does not share, if it does not.
    pub fn unshared(&self) -> Option<String> {
        self.unshared_reason.lock().unwrap().clone()
    }
}

/// A regular file of a mounted image as a dedup object's source; `verified` when its
/// fingerprint was computed by the daemon from this content.
pub fn source_of(mount: &Arc<MountedImage>, inode: &Inode, verified: bool) -> Source {
    Source {
        mount_id: mount.id,
        nid: inode.nid,
        content: Arc::new(ImageFile {
            mount: mount.clone(),
            inode: inode.clone(),
        }),
        image: Arc::from(mount.image.name()),
        verified,
        verify_failures: mount.verify_failures.clone(),
    }
}

/// A regular file of a mounted image, as a dedup object's source.
#[derive(Debug)]
struct ImageFile {
    mount: Arc<MountedImage>,
    inode: Inode,
}

impl Content for ImageFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let image = &self.mount.image;
        let nid = self.inode.nid;
        let what = || format!("dedup miss at {offset}");
        safely(image, nid, what, || image.read_at(&self.inode, offset, buf))
            .map_err(|e| io::Error::from_raw_os_error(e.code()))
    }
}

/// The kernel's backing id of a shared inode: a reference to its dedup file, kept while the
/// kernel caches the inode (dropped on `forget`), so a warm open is one round trip.
#[derive(Debug)]
struct Backing {
    id: BackingId,
}

#[derive(Debug)]
enum Handle {
    Passthrough(#[allow(dead_code)] Arc<Backing>),
    Data(Arc<Inode>),
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Arc<Inode>>,
    /// The sharing decision per nid: the object, or None for "not shared".
    sharing: HashMap<u64, Option<Arc<DedupObject>>>,
    backings: HashMap<u64, Arc<Backing>>,
    /// Recent directory listings: the kernel asks for a big directory in several chunks.
    listings: HashMap<u64, Arc<Vec<DirEntry>>>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

/// The FUSE filesystem of one image mount.
#[derive(Debug)]
pub struct ImageFs {
    mount: Arc<MountedImage>,
    /// Whether this mount shares: it has a domain, and `init` got passthrough from the kernel.
    share: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    /// Backing ids a predecessor daemon registered, by nid (see [`crate::takeover`]): the
    /// next open of such an inode must use the same id while files of it are open.
    adopted: Mutex<HashMap<u64, u32>>,
}

/// What the daemon keeps of a FUSE-front mount's filesystem, to hand it to a successor.
#[derive(Debug, Clone)]
pub struct ImageFsView {
    share: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
}

/// A FUSE-front mount's filesystem state that a successor takes over.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageFsState {
    /// Whether the mount shares (passthrough was granted at `init`).
    pub share: bool,
    /// File handles already given out: a successor's start after them.
    pub next_fh: u64,
    /// The backing id of each shared inode the kernel may still have open: (nid, id).
    pub backings: Vec<(u64, u32)>,
}

impl ImageFsView {
    /// The state a successor needs.
    pub fn export(&self) -> ImageFsState {
        let st = self.state.lock().unwrap();
        ImageFsState {
            share: self.share.load(Ordering::Relaxed),
            next_fh: st.next_fh,
            backings: st
                .backings
                .iter()
                .map(|(n, b)| (*n, b.id.as_raw()))
                .collect(),
        }
    }
}

/// Runs one reader call on `nid`, `what` naming the operation: an error is logged and becomes
/// EIO; a panic (a reader bug on a hostile image) is caught, logged and becomes EIO too, so
/// one bad file never takes a worker thread down. A reader error already names the image and
/// where it is wrong (the nid), so the operation is added after it, not the names again.
fn safely<T>(
    image: &Image,
    nid: u64,
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> erofs::Result<T>,
) -> Result<T, Errno> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!("{e} ({})", what());
            Err(Errno::EIO)
        }
        Err(_) => {
            tracing::error!(
                "{}: nid {nid}: {}: the reader panicked",
                image.name(),
                what()
            );
            Err(Errno::EIO)
        }
    }
}

impl ImageFs {
    /// A filesystem serving `mount`, sharing through passthrough when the mount has a domain.
    pub fn new(mount: Arc<MountedImage>) -> Self {
        Self {
            share: Arc::new(AtomicBool::new(mount.domain.is_some())),
            mount,
            state: Arc::default(),
            adopted: Mutex::default(),
        }
    }

    /// A filesystem serving `mount` on a connection a predecessor initialized and served.
    pub fn adopt(mount: Arc<MountedImage>, from: &ImageFsState) -> Self {
        let fs = Self::new(mount);
        fs.share.store(from.share, Ordering::Relaxed);
        fs.state.lock().unwrap().next_fh = from.next_fh;
        *fs.adopted.lock().unwrap() = from.backings.iter().copied().collect();
        fs
    }

    /// What the daemon keeps to hand this filesystem over.
    pub fn view(&self) -> ImageFsView {
        ImageFsView {
            share: self.share.clone(),
            state: self.state.clone(),
        }
    }

    fn nid_of(&self, ino: INodeNo) -> u64 {
        if ino == INodeNo::ROOT {
            self.mount.image.root_nid()
        } else {
            ino.0.wrapping_sub(2)
        }
    }

    fn ino_of(&self, nid: u64) -> INodeNo {
        if nid == self.mount.image.root_nid() {
            INodeNo::ROOT
        } else {
            INodeNo(nid.wrapping_add(2))
        }
    }

    fn inode(&self, nid: u64) -> Result<Arc<Inode>, Errno> {
        if let Some(i) = self.state.lock().unwrap().inodes.get(&nid) {
            return Ok(i.clone());
        }
        let image = &self.mount.image;
        let inode = Arc::new(safely(
            image,
            nid,
            || "decoding the inode".into(),
            || image.inode(nid),
        )?);
        let mut st = self.state.lock().unwrap();
        if st.inodes.len() >= INODE_CACHE_MAX {
            st.inodes.clear();
        }
        st.inodes.insert(nid, inode.clone());
        Ok(inode)
    }

    /// The entries of directory `ino`, from the listing cache or the image.
    fn listing(&self, ino: INodeNo) -> Result<Arc<Vec<DirEntry>>, Errno> {
        let nid = self.nid_of(ino);
        if let Some(l) = self.state.lock().unwrap().listings.get(&nid) {
            return Ok(l.clone());
        }
        let dir = self.inode(nid)?;
        if dir.file_type() != ErofsType::Dir {
            return Err(Errno::ENOTDIR);
        }
        let image = &self.mount.image;
        let what = || "listing the directory".into();
        let entries = Arc::new(safely(image, nid, what, || image.read_dir(&dir))?);
        let mut st = self.state.lock().unwrap();
        if st.listings.len() >= LISTING_CACHE_MAX {
            st.listings.clear();
        }
        st.listings.insert(nid, entries.clone());
        Ok(entries)
    }

    /// Counts an EIO answered for corrupt image content (`read_errors` in `status`).
    fn counted(&self, e: Errno) -> Errno {
        if e == Errno::EIO {
            self.mount.read_errors.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    fn attr(&self, inode: &Inode) -> FileAttr {
        let bs = self.mount.image.superblock().block_size();
        let mtime = if inode.mtime >= 0 {
            UNIX_EPOCH + Duration::new(inode.mtime as u64, inode.mtime_nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs(inode.mtime.unsigned_abs())
                + Duration::from_nanos(inode.mtime_nsec as u64)
        };
        FileAttr {
            ino: self.ino_of(inode.nid),
            size: inode.size,
            blocks: inode.size.div_ceil(bs) * (bs / 512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: kind_of(inode.file_type()),
            perm: inode.mode & 0o7777,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: inode.rdev,
            blksize: bs as u32,
            flags: 0,
        }
    }

    /// Attributes for a directory entry whose inode cannot be read: its number and type, as
    /// the directory records them, and nothing else.
    fn unreadable_attr(&self, e: &DirEntry) -> FileAttr {
        FileAttr {
            ino: self.ino_of(e.nid),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: kind_of(e.file_type),
            perm: 0,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: self.mount.image.superblock().block_size() as u32,
            flags: 0,
        }
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let mut st = self.state.lock().unwrap();
        st.next_fh += 1;
        let fh = st.next_fh;
        st.handles.insert(fh, h);
        fh
    }

    /// Decides (once per nid) whether a regular file is shared, attaching it to its dedup
    /// object on the first open.
    fn sharing(&self, inode: &Inode) -> Option<Arc<DedupObject>> {
        if !self.share.load(Ordering::Relaxed) {
            return None;
        }
        let domain = self.mount.domain.as_ref()?;
        if let Some(decided) = self.state.lock().unwrap().sharing.get(&inode.nid) {
            return decided.clone();
        }
        let decision = self.decide(domain, inode);
        self.state
            .lock()
            .unwrap()
            .sharing
            .entry(inode.nid)
            .or_insert(decision)
            .clone()
    }

    fn decide(&self, domain: &Arc<Domain>, inode: &Inode) -> Option<Arc<DedupObject>> {
        let image = &self.mount.image;
        let what = || "reading the fingerprint".into();
        let stored = safely(image, inode.nid, what, || image.fingerprint(inode)).ok()?;
        let computed = self
            .mount
            .own_fingerprints
            .get()
            .and_then(|m| m.get(&inode.nid));
        let verified = stored.is_none() && computed.is_some();
        let fp = stored.or_else(|| computed.map(|v| v.to_vec()))?;
        let (key, expect) = domain.sharing(&fp, image.superblock().block_size())?;
        let source = source_of(&self.mount, inode, verified);
        match domain
            .objects
            .lock()
            .unwrap()
            .attach(&key, inode.size, source, expect)
        {
            Attach::Shared(obj) => Some(obj),
            Attach::SizeMismatch { expected } => {
                self.mount.size_mismatches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "{}: nid {}: fingerprint matches a file of {expected} bytes in domain {:?} \
                     but this one has {} bytes: not shared",
                    image.name(),
                    inode.nid,
                    domain.id,
                    inode.size
                );
                None
            }
        }
    }

    /// The backing id of a shared nid: the live one, or a new one on the dedup file.
    fn backing(&self, nid: u64, obj: &DedupObject, reply: &ReplyOpen) -> io::Result<Arc<Backing>> {
        if let Some(b) = self.state.lock().unwrap().backings.get(&nid) {
            return Ok(b.clone());
        }
        if let Some(raw) = self.adopted.lock().unwrap().remove(&nid) {
            // SAFETY: `raw` is a backing id the predecessor registered on this very
            // connection for this inode and handed over; nothing else in this process owns it,
            // and it is wrapped once (removed from `adopted`), so its close happens once.
            let id = unsafe { reply.wrap_backing(raw) };
            let b = Arc::new(Backing { id });
            let mut st = self.state.lock().unwrap();
            return Ok(st.backings.entry(nid).or_insert(b).clone());
        }
        // Opened without the state lock: the dedup open waits on the dedup mount's threads.
        let domain = self
            .mount
            .domain
            .as_ref()
            .expect("shared files have a domain");
        let file = domain.object_file(obj)?;
        // The kernel takes its own reference to the file.
        let id = reply.open_backing(&file)?;
        let b = Arc::new(Backing { id });
        // Two first opens may race: the kernel needs one id per inode, keep the first.
        let mut st = self.state.lock().unwrap();
        Ok(st.backings.entry(nid).or_insert(b).clone())
    }
}

fn kind_of(t: ErofsType) -> FileType {
    match t {
        ErofsType::Reg => FileType::RegularFile,
        ErofsType::Dir => FileType::Directory,
        ErofsType::Symlink => FileType::Symlink,
        ErofsType::CharDev => FileType::CharDevice,
        ErofsType::BlockDev => FileType::BlockDevice,
        ErofsType::Fifo => FileType::NamedPipe,
        ErofsType::Socket => FileType::Socket,
    }
}

/// True when this process holds CAP_SYS_ADMIN, which `FUSE_DEV_IOC_BACKING_OPEN` requires.
pub fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Set while a takeover is prepared (see [`crate::takeover`]): image mounts' requests are left
/// unanswered, so that nothing here changes after the successor's snapshot (no backing id
/// opened or closed behind its back); the kernel queues them again for the successor.
static HANDOVER: RwLock<bool> = RwLock::new(false);

/// Stops answering image mounts' requests (waits for those being answered).
pub fn pause_for_handover() {
    *HANDOVER.write().unwrap_or_else(|e| e.into_inner()) = true;
}

/// Answers image mounts' requests again (a takeover failed).
pub fn resume_after_handover() {
    *HANDOVER.write().unwrap_or_else(|e| e.into_inner()) = false;
}

fn paused() -> bool {
    *HANDOVER.read().unwrap_or_else(|e| e.into_inner())
}

/// `reply`, with the guard that keeps a takeover from starting while it is answered; None
/// (and the request left unanswered: no reply is sent, not even an error) during one.
fn serving<R>(reply: R) -> Option<(RwLockReadGuard<'static, bool>, R)> {
    let g = HANDOVER.read().unwrap_or_else(|e| e.into_inner());
    if *g {
        std::mem::forget(reply);
        return None;
    }
    Some((g, reply))
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        if !self.share.load(Ordering::Relaxed) {
            return Ok(());
        }
        // (Without CAP_SYS_ADMIN the daemon gives the mount no domain, so `share` is false.)
        if std::env::var_os("EROFS_SHARE_NO_PASSTHROUGH").is_some() {
            self.share.store(false, Ordering::Relaxed);
            self.mount
                .set_unshared("passthrough disabled by EROFS_SHARE_NO_PASSTHROUGH");
        } else if config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .is_err()
        {
            self.share.store(false, Ordering::Relaxed);
            self.mount.set_unshared(
                "the kernel does not offer FUSE passthrough (Linux 6.9 or later is needed)",
            );
        } else if let Err(e) = config.set_max_stack_depth(1) {
            self.share.store(false, Ordering::Relaxed);
            self.mount
                .set_unshared(format!("the kernel refused max_stack_depth 1 ({e})"));
        }
        Ok(())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        if paused() {
            return;
        }
        // The kernel evicted the inode, so none of its files is open: its backing id can go,
        // unless a racing new open already holds it.
        let nid = self.nid_of(ino);
        let mut st = self.state.lock().unwrap();
        if st
            .backings
            .get(&nid)
            .is_some_and(|b| Arc::strong_count(b) == 1)
        {
            st.backings.remove(&nid);
        }
        st.inodes.remove(&nid);
        st.listings.remove(&nid);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let dir = match self.inode(self.nid_of(parent)) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        if dir.file_type() != ErofsType::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        let image = &self.mount.image;
        let what = || format!("looking up {:?}", name);
        let entry = match safely(image, dir.nid, what, || image.lookup(&dir, name.as_bytes())) {
            Ok(Some(e)) => e,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match self.inode(entry.nid) {
            Ok(i) => reply.entry(&TTL, &self.attr(&i), Generation(0)),
            Err(e) => reply.error(self.counted(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        match self.inode(self.nid_of(ino)) {
            Ok(i) => reply.attr(&TTL, &self.attr(&i)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let inode = match self.inode(self.nid_of(ino)) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let image = &self.mount.image;
        let what = || "reading the link".into();
        match safely(image, inode.nid, what, || image.read_link(&inode)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let inode = match self.inode(self.nid_of(ino)) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if let Some(obj) = self.sharing(&inode) {
            if flags.0 & libc::O_DIRECT != 0 {
                // As the kernel: a shared file has no direct I/O path of its own.
                return reply.error(Errno::EINVAL);
            }
            match self.backing(inode.nid, &obj, &reply) {
                Ok(b) => {
                    let fh = self.new_handle(Handle::Passthrough(b.clone()));
                    self.mount.shared_opens.fetch_add(1, Ordering::Relaxed);
                    return reply.opened_passthrough(
                        FileHandle(fh),
                        FopenFlags::FOPEN_NOFLUSH,
                        &b.id,
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        "{}: nid {}: passthrough to dedup object {:#x} failed ({e}); \
                         serving unshared",
                        self.mount.image.name(),
                        inode.nid,
                        obj.ino
                    );
                    if e.raw_os_error() == Some(libc::EPERM) {
                        self.mount
                            .set_unshared(format!("FUSE passthrough was refused: {e}"));
                    }
                    self.state.lock().unwrap().sharing.insert(inode.nid, None);
                }
            }
        }
        let fh = self.new_handle(Handle::Data(inode));
        self.mount.unshared_opens.fetch_add(1, Ordering::Relaxed);
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let known = match self.state.lock().unwrap().handles.get(&fh.0) {
            Some(Handle::Data(i)) => Some(i.clone()),
            Some(Handle::Passthrough(_)) => return reply.error(Errno::EBADF),
            None => None,
        };
        // A file opened under a predecessor daemon: its inode number says which file.
        let inode = match known {
            Some(i) => i,
            None => match self.inode(self.nid_of(ino)) {
                Ok(i) if i.file_type() == ErofsType::Reg => i,
                Ok(_) => return reply.error(Errno::EBADF),
                Err(e) => return reply.error(e),
            },
        };
        let want = (size as u64).min(inode.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let image = &self.mount.image;
        let what = || format!("read at {offset}");
        match safely(image, inode.nid, what, || {
            image.read_at(&inode, offset, &mut buf)
        }) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => {
                self.mount.read_errors.fetch_add(1, Ordering::Relaxed);
                reply.error(e)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let h = self.state.lock().unwrap().handles.remove(&fh.0);
        drop(h);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        // Nothing is ever dirty on a read-only image.
        reply.ok();
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        // ENOSYS switches the kernel to "no opendir" mode: directory opens cost no round trip
        // and get FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, so a listing is read from the image
        // once and then served from the kernel's cache.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let Some((_serving, mut reply)) = serving(reply) else {
            return;
        };
        let entries = match self.listing(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(self.counted(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let name = OsStr::from_bytes(&e.name);
            if reply.add(self.ino_of(e.nid), i as u64 + 1, kind_of(e.file_type), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let Some((_serving, mut reply)) = serving(reply) else {
            return;
        };
        let entries = match self.listing(ino) {
            Ok(e) => e,
            Err(e) => return reply.error(self.counted(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let name = OsStr::from_bytes(&e.name);
            // An entry whose inode cannot be decoded (logged by `inode`) is still listed, with
            // the directory's file type and attributes valid for no time: `ls` shows the name
            // and its stat or lookup answers EIO, rather than the name silently missing.
            let (attr, ttl) = match self.inode(e.nid) {
                Ok(inode) => (self.attr(&inode), TTL),
                Err(err) => {
                    self.counted(err);
                    (self.unreadable_attr(e), Duration::ZERO)
                }
            };
            if reply.add(
                self.ino_of(e.nid),
                i as u64 + 1,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let sb = self.mount.image.superblock();
        let bs = sb.block_size() as u32;
        reply.statfs(sb.blocks, 0, 0, sb.inos, 0, bs, 255, bs);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let inode = match self.inode(self.nid_of(ino)) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let image = &self.mount.image;
        let what = || format!("getxattr {:?}", name);
        match safely(image, inode.nid, what, || {
            image.get_xattr(&inode, name.as_bytes())
        }) {
            Ok(Some(v)) => xattr_reply(reply, size, &v),
            Ok(None) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some((_serving, reply)) = serving(reply) else {
            return;
        };
        let inode = match self.inode(self.nid_of(ino)) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let image = &self.mount.image;
        let what = || "listxattr".into();
        match safely(image, inode.nid, what, || image.listed_xattrs(&inode)) {
            Ok(list) => {
                let mut names = Vec::new();
                for x in list {
                    names.extend_from_slice(&x.name);
                    names.push(0);
                }
                xattr_reply(reply, size, &names)
            }
            Err(e) => reply.error(e),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}
