//! The registry of mounts and domains: mounting an image on either front and attaching its
//! files to their domain's objects, umount, `status`, and the shutdown (image mounts first,
//! dedup mounts last). The process around it is [`crate::service`].

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fuser::{INodeNo, Notifier, Session, SessionACL};

use crate::control::{DomainStatus, MountStatus, Request, Response, Status};
use crate::dedup::Attach;
use crate::dedup_fs::DedupFs;
use crate::domain::{self, Domain};
use crate::front::fuse::{ImageFs, MountedImage};
use crate::front::{Front, overlay};
use crate::fuse_mount::{session_config, session_on, set_readahead};
use crate::mounts::{detach, is_our_mount};
use crate::page_cache::cached_bytes;

/// Default state directory (control socket, pid file, dedup mounts).
pub const DEFAULT_STATE_DIR: &str = "/run/erofs-share";
/// Cache directory of the daemon on the default state directory (metadata images, computed
/// fingerprints): on disk, so that these pages can be evicted like any file's and a reboot
/// keeps them; the state directory is a tmpfs on most hosts, where they would stay in memory.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/erofs-share";

/// The cache directory of a daemon on `state_dir` unless told otherwise: the default one for
/// the default state directory, else the state directory itself (a private daemon, as tests
/// and `bench` start, keeps everything in one place).
pub fn default_cache_dir(state_dir: &Path) -> PathBuf {
    if state_dir == Path::new(DEFAULT_STATE_DIR) {
        PathBuf::from(DEFAULT_CACHE_DIR)
    } else {
        state_dir.to_path_buf()
    }
}

/// Source ("fsname") prefix of image mounts in /proc/mounts, followed by the image path.
pub const IMAGE_FSNAME: &str = "erofs-share:";
/// Source prefix of the internal dedup mounts, followed by the domain id.
pub const DEDUP_FSNAME: &str = "erofs-share-dedup:";
/// FUSE worker threads per image mount. Warm opens are latency-bound, and every extra thread
/// waiting on the same FUSE queue adds lock contention and cross-CPU wake-ups: on a 2-CPU host
/// reading 14,064 warm files took 0.39 s with 1 thread, 0.40 s with 2 and 0.48 s with 4.
/// Two keep a slow unshared read from stalling the mount's lookups.
const IMAGE_THREADS: usize = 2;
/// FUSE worker threads per dedup mount: page-cache misses, several readahead requests at once.
const DEDUP_THREADS: usize = 4;

/// The id of the internal domain that holds the objects of mounts that share nothing
/// (overlay front): users cannot name it, an empty id is refused.
const UNSHARED_DOMAIN: &str = "";

#[derive(Debug)]
struct MountRecord {
    image: Arc<MountedImage>,
    detached: bool,
    front: Front,
    front_reason: Option<String>,
    /// The overlay front's metadata image (the cached file the mount's own copy was made
    /// from: the copy itself is unlinked once mounted).
    meta_image: Option<PathBuf>,
    /// The domain whose dedup table holds this mount's sources (and counts it as a mount):
    /// the sharing domain, or for the overlay front the unshared one.
    data_domain: Option<Arc<Domain>>,
    /// FUSE front: the connection's /dev/fuse and the filesystem's state, for a successor.
    fuse: Option<(OwnedFd, crate::front::fuse::ImageFsView)>,
}

struct DomainRecord {
    domain: Arc<Domain>,
    notifier: Notifier,
    mounts: usize,
    /// The dedup mount's /dev/fuse (the session reads its own copy): what a successor serves.
    fuse_fd: OwnedFd,
}

impl std::fmt::Debug for DomainRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainRecord")
            .field("domain", &self.domain.id)
            .field("mounts", &self.mounts)
            .finish()
    }
}

/// The daemon's registry of mounts and domains.
#[derive(Debug)]
pub struct Daemon {
    state_dir: PathBuf,
    /// Metadata images (`meta/`, each mount's copy in `front/`) and computed fingerprints.
    cache_dir: PathBuf,
    mounts: Mutex<HashMap<u64, MountRecord>>,
    domains: Mutex<HashMap<String, DomainRecord>>,
    /// Serialises mount and umount requests (not reads: those never take it).
    admin: Mutex<()>,
    next_id: AtomicU64,
    /// Ends of overlay-front mounts (None where inotify is unavailable: no overlay front).
    ends: Option<Arc<overlay::Ends>>,
    /// The thread that runs `ends`, stopped for a takeover.
    ends_thread: Mutex<Option<JoinHandle<()>>>,
    /// When this process started.
    started: SystemTime,
    /// Takeovers before this process.
    takeovers: u64,
    /// systemd's file descriptor store, when the daemon runs under systemd (or a stand-in).
    fd_store: Option<crate::takeover::FdStore>,
    /// Serialises [`Daemon::persist`], so the last write is the latest state; true once a
    /// clean stop has removed the state file, which nothing writes again.
    persisting: Mutex<bool>,
}

impl Daemon {
    /// A daemon with no mounts, keeping its dedup mounts under `state_dir` and its caches
    /// under `cache_dir`.
    pub fn new(state_dir: PathBuf, cache_dir: PathBuf) -> Arc<Self> {
        let daemon = Arc::new(Self {
            state_dir,
            cache_dir,
            mounts: Mutex::new(HashMap::new()),
            domains: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
            next_id: AtomicU64::new(1),
            ends: overlay::Ends::new()
                .inspect_err(|e| tracing::warn!("inotify: {e}: no overlay front"))
                .ok()
                .map(Arc::new),
            ends_thread: Mutex::new(None),
            started: SystemTime::now(),
            takeovers: 0,
            fd_store: crate::takeover::FdStore::from_env(),
            persisting: Mutex::new(false),
        });
        daemon.start_ends();
        daemon
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Writes the state file and brings systemd's descriptor store up to date (see
    /// [`crate::takeover`]): after every change of mounts and domains, so that a daemon
    /// restarted after a crash finds them as they were.
    pub fn persist(&self) {
        // Only a daemon restarted with systemd's descriptors reads the file (a takeover gets
        // the state over the socket): without the store it is work and tmpfs memory for
        // nothing (about 200 bytes per dedup object, rewritten at every change).
        let Some(store) = &self.fd_store else {
            return;
        };
        let stopped = self.persisting.lock().unwrap();
        if *stopped {
            return;
        }
        // The descriptors go to systemd's store; the state file names them.
        let mut names: Vec<String> = Vec::new();
        let mut fds: Vec<OwnedFd> = Vec::new();
        let state = self.snapshot(&mut |fd, name| {
            fds.push(
                fd.try_clone_to_owned()
                    .map_err(|e| format!("{name}: {e}"))?,
            );
            names.push(name);
            Ok(names.len() - 1)
        });
        let mut state = match state {
            Ok(s) => s,
            Err(e) => return tracing::warn!("state not saved: {e}"),
        };
        state.fds = names.len();
        state.fd_names = names.clone();
        if let Err(e) = crate::takeover::write_state(&self.state_dir, &state) {
            tracing::warn!("writing {}: {e}", crate::takeover::STATE_FILE);
        }
        store.sync(&names.into_iter().zip(fds).collect::<Vec<_>>());
    }

    /// Saves the state file again, at most once a second, whenever verification has judged
    /// sources since the last save: a daemon restarted after a crash then trusts what was
    /// checked and never serves what was found forged. Runs until the daemon is dropped.
    pub fn save_verifications(self: &Arc<Self>) {
        if self.fd_store.is_none() {
            return;
        }
        let d = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("state-saver".into())
            .spawn(move || {
                let mut saved = crate::dedup::checks();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(d) = d.upgrade() else { return };
                    let now = crate::dedup::checks();
                    if now != saved {
                        d.persist();
                        saved = now;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no state-saver thread ({e}): verifications are saved at mounts only");
        }
    }

    /// Tells systemd (if it runs us) that the daemon serves.
    pub fn notify_ready(&self) {
        if let Some(store) = &self.fd_store {
            store.ready();
        }
    }

    /// At a clean stop: no state to recover, nothing for systemd to keep.
    fn forget_state(&self) {
        let mut stopped = self.persisting.lock().unwrap();
        *stopped = true;
        let _ = fs::remove_file(self.state_dir.join(crate::takeover::STATE_FILE));
        if let Some(store) = &self.fd_store {
            store.sync(&[]);
        }
    }

    /// Starts the thread that sees overlay mounts end.
    fn start_ends(self: &Arc<Self>) {
        let Some(ends) = self.ends.clone() else {
            return;
        };
        let d = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("overlay-ends".into())
            .spawn(move || {
                let ran = ends.run(|id| {
                    if let Some(d) = d.upgrade() {
                        d.mount_ended(id);
                    }
                });
                if let Err(e) = ran {
                    tracing::error!("watching overlay mounts end: {e}");
                }
            });
        match spawned {
            Ok(t) => *self.ends_thread.lock().unwrap() = Some(t),
            Err(e) => tracing::error!("spawn the overlay-ends thread: {e}"),
        }
    }

    /// Stops the thread that sees overlay mounts end (events wait in the inotify queue).
    fn stop_ends(&self) -> Result<(), String> {
        let Some(ends) = &self.ends else {
            return Ok(());
        };
        ends.stop()
            .map_err(|e| format!("stop watching mount ends: {e}"))?;
        if let Some(t) = self.ends_thread.lock().unwrap().take() {
            let _ = t.join();
        }
        Ok(())
    }

    /// Answers one control request.
    pub fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Mount {
                image,
                mountpoint,
                domain,
                share,
                front,
                trusted,
            } => match self.mount(
                &image,
                &mountpoint,
                domain,
                share,
                front.as_deref(),
                trusted,
            ) {
                Ok(m) => {
                    // The state file follows every change.
                    self.persist();
                    Response {
                        ok: true,
                        mount: Some(m),
                        ..Response::default()
                    }
                }
                Err(e) => Response::error(e),
            },
            Request::Umount { mountpoint } => match self.umount(&mountpoint) {
                Ok(done) => Response {
                    ok: true,
                    detached: Some(done),
                    ..Response::default()
                },
                Err(e) => Response::error(e),
            },
            Request::Status => Response {
                ok: true,
                status: Some(self.status()),
                ..Response::default()
            },
            // Acknowledged here; `handle_conn` starts the shutdown once the answer is out.
            Request::Stop => Response {
                ok: true,
                ..Response::default()
            },
            // Answered on its connection by the service, with descriptors.
            Request::Takeover => Response::error("a takeover needs the control connection"),
            Request::DropCaches => {
                crate::source::drop_block_caches();
                crate::dedup::drop_kept_copies();
                Response {
                    ok: true,
                    ..Response::default()
                }
            }
        }
    }

    /// Mounts `image` at `mountpoint`; `trusted` asks for a trusted domain (fixed by the
    /// domain's first mount).
    pub fn mount(
        self: &Arc<Self>,
        image: &Path,
        mountpoint: &Path,
        domain: Option<String>,
        share: bool,
        front: Option<&str>,
        trusted: bool,
    ) -> Result<MountStatus, String> {
        let wanted = match front {
            None | Some("auto") => None,
            Some("overlay") => Some(Front::Overlay),
            Some("fuse") => Some(Front::Fuse),
            Some(other) => {
                return Err(format!(
                    "unknown front {other:?} (use overlay, fuse or auto)"
                ));
            }
        };
        if !image.is_absolute() || !mountpoint.is_absolute() {
            return Err("image and mountpoint must be absolute paths".into());
        }
        let _admin = self.admin.lock().unwrap();
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?;
        if !mountpoint.is_dir() {
            return Err(format!(
                "mountpoint {} is not a directory",
                mountpoint.display()
            ));
        }
        if self
            .mounts
            .lock()
            .unwrap()
            .values()
            .any(|m| !m.detached && m.image.mountpoint == mountpoint)
        {
            return Err(format!(
                "{} is already an erofs-share mount",
                mountpoint.display()
            ));
        }
        if let Some(d) = &domain
            && d.is_empty()
        {
            return Err("the domain id must not be empty".into());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let unsupported = match &self.ends {
            None => Some("inotify is unavailable"),
            Some(_) => overlay::unsupported(),
        };
        let fuse_reason = match (wanted, unsupported) {
            (Some(Front::Fuse), _) => Some("asked for (--front fuse)".to_string()),
            (Some(Front::Overlay), Some(why)) => {
                return Err(format!("the overlay front is unavailable: {why}"));
            }
            (None, Some(why)) => Some(format!("the overlay front is unavailable: {why}")),
            (_, None) => None,
        };
        if fuse_reason.is_none() {
            match self.mount_overlay(id, image, &mountpoint, domain.as_deref(), share, trusted) {
                Ok(st) => return Ok(st),
                Err(e) if wanted == Some(Front::Overlay) => return Err(e),
                Err(e) => {
                    // Name the image once: most of these errors already do.
                    let name = image.display().to_string();
                    let what = if e.contains(&name) {
                        e.clone()
                    } else {
                        format!("{name}: {e}")
                    };
                    tracing::warn!("overlay front: {what}; using the FUSE front");
                    return self.mount_fuse(
                        id,
                        image,
                        mountpoint,
                        (domain, share, trusted),
                        Some(format!("the overlay front failed: {e}")),
                    );
                }
            }
        }
        self.mount_fuse(id, image, mountpoint, (domain, share, trusted), fuse_reason)
    }

    /// The FUSE front: the daemon serves the image's mount itself.
    fn mount_fuse(
        self: &Arc<Self>,
        id: u64,
        image: &Path,
        mountpoint: PathBuf,
        (domain, share, trusted): (Option<String>, bool, bool),
        front_reason: Option<String>,
    ) -> Result<MountStatus, String> {
        // Passthrough needs CAP_SYS_ADMIN: without it no dedup mount is made at all.
        let can_pass = crate::front::fuse::has_cap_sys_admin();
        let dom = match (&domain, share) {
            (Some(d), true) if can_pass => Some(self.domain_for(d, trusted)?),
            _ => None,
        };
        let mounted = MountedImage::open(id, image.to_path_buf(), mountpoint.clone(), dom.clone())
            .map_err(|e| {
                if let Some(d) = &dom {
                    self.release_domain(&d.id);
                }
                e.to_string()
            });
        let mounted = Arc::new(mounted?);
        if let Some(d) = &dom
            && let Err(e) = self.fingerprint_missing(&mounted)
        {
            self.release_domain(&d.id);
            return Err(e);
        }
        match (&domain, share) {
            (None, _) => mounted.set_unshared("no domain given"),
            (Some(_), false) => mounted.set_unshared("--no-share"),
            (Some(_), true) if !can_pass => {
                mounted.set_unshared("the daemon lacks CAP_SYS_ADMIN, which FUSE passthrough needs")
            }
            _ => {}
        }
        let fs = ImageFs::new(mounted.clone());
        let view = fs.view();
        let fsname = format!("{IMAGE_FSNAME}{}", image.display());
        let session = session_on(
            fs,
            &mountpoint,
            &fsname,
            "default_permissions,allow_other",
            SessionACL::All,
            session_config(IMAGE_THREADS, false),
        )
        .and_then(|s| s.as_fd().try_clone_to_owned().map(|fd| (s, fd)));
        let (session, fuse_fd) = match session {
            Ok(s) => s,
            Err(e) => {
                if let Some(d) = &dom {
                    self.release_domain(&d.id);
                }
                return Err(format!("mount {}: {e}", mountpoint.display()));
            }
        };
        self.mounts.lock().unwrap().insert(
            id,
            MountRecord {
                image: mounted.clone(),
                detached: false,
                front: Front::Fuse,
                front_reason,
                meta_image: None,
                data_domain: dom.clone(),
                fuse: Some((fuse_fd, view)),
            },
        );
        self.serve_image_mount(id, session)?;
        set_readahead(&mountpoint);
        tracing::info!(
            "mounted {} at {} (FUSE front, domain {:?}{})",
            image.display(),
            mountpoint.display(),
            domain,
            mounted
                .unshared()
                .map(|r| format!(", unshared: {r}"))
                .unwrap_or_default()
        );
        Ok(self.status_of(id).expect("just inserted"))
    }

    /// Serves FUSE-front mount `id` on a thread of its own; its end is the mount's end.
    fn serve_image_mount(
        self: &Arc<Self>,
        id: u64,
        session: Session<ImageFs>,
    ) -> Result<(), String> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("mount-{id}"))
            .spawn(move || {
                if let Err(e) = session.run() {
                    tracing::warn!("mount {id}: session ended: {e}");
                }
                me.mount_ended(id);
            })
            .map(drop)
            .map_err(|e| format!("spawn the mount thread: {e}"))
    }

    /// The overlay front: every file with content becomes a dedup object (shared by
    /// fingerprint in the domain, else its own), the image's metadata image redirects to
    /// them, and the kernel mounts the overlay.
    fn mount_overlay(
        self: &Arc<Self>,
        id: u64,
        image: &Path,
        mountpoint: &Path,
        domain: Option<&str>,
        share: bool,
        trusted: bool,
    ) -> Result<MountStatus, String> {
        let ends = self.ends.clone().ok_or("inotify is unavailable")?;
        let shared = match (domain, share) {
            (Some(d), true) => Some(self.domain_for(d, trusted)?),
            _ => None,
        };
        let data = match &shared {
            Some(d) => d.clone(),
            // Own objects only: nothing to verify.
            None => self.domain_for(UNSHARED_DOMAIN, true)?,
        };
        let undo = |meta: Option<&Path>| {
            data.objects.lock().unwrap().detach_mount(id);
            self.release_domain(&data.id);
            if let Some(m) = meta {
                let _ = fs::remove_file(m);
            }
        };
        let mounted = match MountedImage::open(
            id,
            image.to_path_buf(),
            mountpoint.to_path_buf(),
            shared.clone(),
        ) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                undo(None);
                return Err(format!("{}: {e}", image.display()));
            }
        };
        match (domain, share) {
            (None, _) => mounted.set_unshared("no domain given"),
            (Some(_), false) => mounted.set_unshared("--no-share"),
            _ => {}
        }
        let t = Instant::now();
        // The metadata pass (every inode, xattr and directory) reads through the page cache:
        // one O_DIRECT read per inode made a 7,000-file image take over a second. Its pages
        // are dropped again after, so image bytes still stay out of the page cache.
        let scanned = fs::File::open(image)
            .map(Arc::new)
            .map_err(|e| format!("{}: {e}", image.display()))
            .and_then(|f| {
                let img = erofs::Image::from_source(f.clone(), image.display().to_string())
                    .map_err(|e| e.to_string());
                let out = img.and_then(|img| {
                    self.attach_all(&mounted, &img, &data)
                        .and_then(|names| self.meta_image(&mounted, &img, &names))
                });
                let _ = rustix::fs::fadvise(&*f, 0, None, rustix::fs::Advice::DontNeed);
                out
            });
        let (cached_meta, meta) = match scanned {
            Ok(m) => m,
            Err(e) => {
                undo(None);
                return Err(e);
            }
        };
        let built = t.elapsed();
        let source = format!("{IMAGE_FSNAME}{}", image.display());
        if let Err(e) = overlay::mount(&meta, &data.dedup_mountpoint, mountpoint, &source) {
            undo(Some(&meta));
            return Err(format!("mount {}: {e}", mountpoint.display()));
        }
        self.mounts.lock().unwrap().insert(
            id,
            MountRecord {
                image: mounted.clone(),
                detached: false,
                front: Front::Overlay,
                front_reason: None,
                meta_image: Some(cached_meta),
                data_domain: Some(data.clone()),
                fuse: None,
            },
        );
        // Unlinked once watched, the copy is held by the kernel alone: nobody else can open
        // it, and its inode goes (the watched event) exactly when the erofs superblock does.
        let watched = ends.watch(id, &meta).and_then(|()| fs::remove_file(&meta));
        if let Err(e) = watched {
            // Without the watch the end is never seen: take the mount down again.
            tracing::warn!("watching the end of {}: {e}", meta.display());
            let _ = detach(mountpoint);
            let _ = fs::remove_file(&meta);
            self.mount_ended(id);
            return Err(format!("watch {}: {e}", meta.display()));
        }
        tracing::info!(
            "mounted {} at {} (overlay front, domain {:?}{}, metadata image in {} ms)",
            image.display(),
            mountpoint.display(),
            domain,
            mounted
                .unshared()
                .map(|r| format!(", unshared: {r}"))
                .unwrap_or_default(),
            built.as_millis()
        );
        Ok(self.status_of(id).expect("just inserted"))
    }

    /// Attaches every regular file with content of `m` to an object of `data`: the shared one
    /// of its fingerprint when the mount shares, else one of its own. Files without a
    /// fingerprint in a sharing mount get one computed here (see [`crate::fingerprints`]).
    /// Returns each nid's object name.
    fn attach_all(
        &self,
        m: &Arc<MountedImage>,
        image: &erofs::Image,
        data: &Arc<Domain>,
    ) -> Result<HashMap<u64, String>, String> {
        let bs = image.superblock().block_size();
        // The files, once per nid, with their stored fingerprint when the mount shares.
        let mut files: Vec<(erofs::Inode, Option<Vec<u8>>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut unfingerprinted = Vec::new();
        erofs::walk::try_walk(image, |_, inode| {
            if inode.file_type() != erofs::FileType::Reg
                || inode.size == 0
                || !seen.insert(inode.nid)
            {
                return Ok::<(), erofs::walk::Problem>(());
            }
            let mut fp = None;
            if m.domain.is_some() {
                match image.fingerprint(inode) {
                    Ok(Some(v)) => fp = Some(v),
                    Ok(None) => unfingerprinted.push(inode.clone()),
                    // A damaged xattr area: the file keeps an object of its own.
                    Err(e) => tracing::warn!("{}: nid {}: {e}", image.name(), inode.nid),
                }
            }
            files.push((inode.clone(), fp));
            Ok(())
        })
        // The walk's problem names the image and the path.
        .map_err(|e| e.to_string())?;
        let computed = if unfingerprinted.is_empty() {
            HashMap::new()
        } else {
            // Content is hashed through the mount's O_DIRECT reader, not the metadata pass's.
            let (computed, hashed) = crate::fingerprints::of_files(
                &self.cache_dir,
                &m.image_path,
                &m.image,
                &*m.file,
                &unfingerprinted,
            )?;
            m.fingerprints_computed
                .store(hashed as u64, Ordering::Relaxed);
            computed
        };
        let mut names = HashMap::new();
        let mut table = data.objects.lock().unwrap();
        for (inode, stored) in files {
            let own_fp = computed.get(&inode.nid);
            let verified = own_fp.is_some();
            let fp = stored.as_deref().or(own_fp.map(|v| v.as_slice()));
            let source = crate::front::fuse::source_of(m, &inode, verified);
            let sharing = fp.and_then(|fp| data.sharing(fp, bs));
            let own = || {
                let mut k = b"\0own".to_vec();
                k.extend_from_slice(&m.id.to_le_bytes());
                k.extend_from_slice(&inode.nid.to_le_bytes());
                k
            };
            let attached =
                sharing.map(|(k, expect)| table.attach(&k, inode.size, source.clone(), expect));
            let obj = match attached {
                Some(Attach::Shared(obj)) => obj,
                Some(Attach::SizeMismatch { expected }) => {
                    m.size_mismatches.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{}: nid {}: fingerprint matches a file of {expected} bytes in domain \
                         {:?} but this one has {} bytes: not shared",
                        image.name(),
                        inode.nid,
                        data.id,
                        inode.size
                    );
                    match table.attach(&own(), inode.size, source, None) {
                        Attach::Shared(obj) => obj,
                        Attach::SizeMismatch { .. } => unreachable!("own keys are unique"),
                    }
                }
                None => match table.attach(&own(), inode.size, source, None) {
                    Attach::Shared(obj) => obj,
                    Attach::SizeMismatch { .. } => unreachable!("own keys are unique"),
                },
            };
            names.insert(inode.nid, obj.name.clone());
        }
        Ok(names)
    }

    /// The FUSE front's counterpart of [`Self::attach_all`]'s hashing: fingerprints for the
    /// files of `m` that have none, computed before the mount serves, used at first open.
    fn fingerprint_missing(&self, m: &MountedImage) -> Result<(), String> {
        let image = &m.image;
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        erofs::walk::try_walk(image, |_, inode| {
            if inode.file_type() == erofs::FileType::Reg
                && inode.size > 0
                && seen.insert(inode.nid)
                && matches!(image.fingerprint(inode), Ok(None))
            {
                missing.push(inode.clone());
            }
            Ok::<(), erofs::walk::Problem>(())
        })
        .unwrap_or_else(|e| {
            // The FUSE front serves what it can of a damaged tree; files past the problem
            // just keep no fingerprint (unshared).
            tracing::warn!("{e}: files without a fingerprint past it are not shared");
        });
        if missing.is_empty() {
            return Ok(());
        }
        let (computed, hashed) = crate::fingerprints::of_files(
            &self.cache_dir,
            &m.image_path,
            image,
            &*m.file,
            &missing,
        )?;
        m.fingerprints_computed
            .store(hashed as u64, Ordering::Relaxed);
        let _ = m.own_fingerprints.set(computed);
        Ok(())
    }

    /// The image's metadata image, built into the cache (keyed by the image's identity and
    /// the object names) unless already there, and this mount's own copy of it. Each mount
    /// gets its own file: the end of its inode tells when the mount has ended (see
    /// [`overlay::Ends`]). Returns (cached, copy).
    fn meta_image(
        &self,
        m: &MountedImage,
        image: &erofs::Image,
        names: &HashMap<u64, String>,
    ) -> Result<(PathBuf, PathBuf), String> {
        use sha2::Digest;
        let cache = self.cache_dir.join("meta");
        let front = self.cache_dir.join("front");
        for d in [&cache, &front] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let md =
            fs::metadata(&m.image_path).map_err(|e| format!("{}: {e}", m.image_path.display()))?;
        let mut h = sha2::Sha256::new();
        let kernel = crate::front::overlay::kernel_reads();
        h.update(b"erofs-share metadata image v2\0");
        h.update([
            kernel.compact_mtimes as u8,
            kernel.plain_xattr_prefixes as u8,
        ]);
        crate::source::hash_file_identity(&mut h, &md);
        let mut sorted: Vec<(&u64, &String)> = names.iter().collect();
        sorted.sort();
        for (nid, name) in sorted {
            h.update(nid.to_le_bytes());
            h.update(name.as_bytes());
        }
        let key = hex::encode(&h.finalize()[..16]);
        let cached = cache.join(format!("{key}.erofs"));
        if !cached.exists() {
            erofs::build::meta::metadata_image(image, &cached, kernel, &mut |inode| {
                names.get(&inode.nid).cloned()
            })
            .map_err(|e| format!("metadata image of {}: {e}", m.image_path.display()))?;
            prune_meta_cache(&cache);
        }
        no_atime(&cached);
        let own = front.join(format!("{}.erofs", m.id));
        fs::copy(&cached, &own).map_err(|e| format!("copy {}: {e}", cached.display()))?;
        no_atime(&own);
        Ok((cached, own))
    }

    /// The live domain `id`, created (with its dedup mount, trusted or verified) when absent;
    /// counts one more mount. A live domain of the other mode is an error.
    fn domain_for(&self, id: &str, trusted: bool) -> Result<Arc<Domain>, String> {
        let mut domains = self.domains.lock().unwrap();
        if let Some(rec) = domains.get_mut(id) {
            if id != UNSHARED_DOMAIN && rec.domain.trusted != trusted {
                let mode = |t: bool| if t { "trusted" } else { "verified" };
                return Err(format!(
                    "domain {id:?} is {} (fixed by its first mount); this mount asks for a {} \
                     one{}",
                    mode(rec.domain.trusted),
                    mode(trusted),
                    if rec.domain.trusted {
                        ": add --trusted"
                    } else {
                        ": drop --trusted"
                    }
                ));
            }
            rec.mounts += 1;
            return Ok(rec.domain.clone());
        }
        // A path of its own per incarnation of the domain: the previous one's dedup mount may
        // still be being detached and its directory removed (the last mount's end is seen on
        // another thread), which must not take the new mount with it.
        let name = if id == UNSHARED_DOMAIN {
            "unshared".to_string()
        } else {
            domain::dir_name(id)
        };
        let dir = self.state_dir.join("dedup").join(format!(
            "{name}.{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))?;
        let dom = Arc::new(Domain::new(id.to_string(), dir.clone(), trusted));
        let fsname = format!("{DEDUP_FSNAME}{id}");
        let session = session_on(
            DedupFs::new(dom.clone()),
            &dir,
            &fsname,
            "",
            SessionACL::Owner,
            session_config(DEDUP_THREADS, false),
        )
        .map_err(|e| format!("mount the dedup filesystem of domain {id:?}: {e}"))?;
        let (notifier, fuse_fd) = serve_domain(id, session)?;
        set_readahead(&dir);
        domains.insert(
            id.to_string(),
            DomainRecord {
                domain: dom.clone(),
                notifier,
                mounts: 1,
                fuse_fd,
            },
        );
        Ok(dom)
    }

    /// One mount less in domain `id`; the last one takes the dedup mount down.
    fn release_domain(&self, id: &str) {
        let mut domains = self.domains.lock().unwrap();
        let Some(rec) = domains.get_mut(id) else {
            return;
        };
        rec.mounts -= 1;
        if rec.mounts == 0 {
            let rec = domains.remove(id).expect("present");
            drop(domains);
            let _ = detach(&rec.domain.dedup_mountpoint);
            let _ = fs::remove_dir(&rec.domain.dedup_mountpoint);
        }
    }

    /// Called when an image mount's FUSE session ends (unmounted, or its last file closed
    /// after a lazy unmount): its files stop being sources, orphaned objects go.
    fn mount_ended(&self, id: u64) {
        // Held to the end: who sees the mount gone (umount's wait, status) also sees its
        // sources detached and its domain released.
        let mut mounts = self.mounts.lock().unwrap();
        let Some(rec) = mounts.remove(&id) else {
            return;
        };
        tracing::info!("mount {} ({}) ended", id, rec.image.mountpoint.display());
        let Some(dom) = &rec.data_domain else {
            return;
        };
        let dead = dom.objects.lock().unwrap().detach_mount(id);
        let notifier = self
            .domains
            .lock()
            .unwrap()
            .get(&dom.id)
            .map(|r| r.notifier.clone());
        if let Some(n) = notifier {
            for obj in dead {
                // Drop the orphan's pages and name now rather than at memory pressure.
                let _ = n.inval_inode(INodeNo(obj.ino), 0, 0);
                let _ = n.inval_entry(INodeNo::ROOT, std::ffi::OsStr::new(&obj.name));
            }
        }
        self.release_domain(&dom.id);
        drop(mounts);
        self.persist();
    }

    /// Unmounts `mountpoint`: lazily, so open and mapped files keep working; returns true
    /// when the mount's session already ended.
    pub fn umount(&self, mountpoint: &Path) -> Result<bool, String> {
        let admin = self.admin.lock().unwrap();
        let canon = mountpoint.canonicalize().ok();
        let found = {
            let mut mounts = self.mounts.lock().unwrap();
            let found = mounts.iter_mut().find(|(_, m)| {
                !m.detached
                    && (m.image.mountpoint == mountpoint
                        || canon.as_deref() == Some(m.image.mountpoint.as_path()))
            });
            found.map(|(id, m)| {
                m.detached = true;
                (*id, m.image.mountpoint.clone())
            })
        };
        match found {
            Some((id, path)) => {
                if let Err(e) = detach(&path) {
                    tracing::warn!("umount {}: {e}", path.display());
                }
                drop(admin);
                // Give an idle mount's session a moment to end, so the answer (and status)
                // says whether it is gone or still busy.
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(1) {
                    if !self.mounts.lock().unwrap().contains_key(&id) {
                        return Ok(true);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(false)
            }
            None if is_our_mount(mountpoint, IMAGE_FSNAME) => {
                // A mount of a previous (killed) daemon: its connection is dead.
                detach(mountpoint).map_err(|e| format!("umount {}: {e}", mountpoint.display()))?;
                Ok(true)
            }
            None => Err(format!(
                "{} is not an erofs-share mount",
                mountpoint.display()
            )),
        }
    }

    /// A mount shares when it was given a domain it could join (see `mount`) and nothing
    /// since said why not.
    fn mount_status(&self, r: &MountRecord) -> MountStatus {
        let m = &r.image;
        MountStatus {
            id: m.id,
            image: m.image_path.clone(),
            mountpoint: m.mountpoint.clone(),
            domain: m.domain.as_ref().map(|d| d.id.clone()),
            sharing: m.domain.is_some() && m.unshared().is_none(),
            unshared_reason: m.unshared(),
            detached: r.detached,
            shared_opens: m.shared_opens.load(Ordering::Relaxed),
            unshared_opens: m.unshared_opens.load(Ordering::Relaxed),
            size_mismatches: m.size_mismatches.load(Ordering::Relaxed),
            read_errors: m.read_errors.load(Ordering::Relaxed),
            verify_failures: m.verify_failures.load(Ordering::Relaxed),
            fingerprints_computed: m.fingerprints_computed.load(Ordering::Relaxed),
            image_bytes_read: m.file.bytes_read(),
            direct_io: m.file.is_direct(),
            front: r.front.name().to_string(),
            front_reason: r.front_reason.clone(),
            meta_image: r.meta_image.clone(),
        }
    }

    /// The status of mount `id`, if it lives.
    fn status_of(&self, id: u64) -> Option<MountStatus> {
        self.mounts
            .lock()
            .unwrap()
            .get(&id)
            .map(|r| self.mount_status(r))
    }

    /// Mounts, domains and what sharing saves.
    pub fn status(&self) -> Status {
        let mut mounts: Vec<MountStatus> = self
            .mounts
            .lock()
            .unwrap()
            .values()
            .map(|r| self.mount_status(r))
            .collect();
        mounts.sort_by_key(|m| m.id);
        let domains: Vec<(Arc<Domain>, usize)> = self
            .domains
            .lock()
            .unwrap()
            .values()
            .map(|r| (r.domain.clone(), r.mounts))
            .collect();
        let mut out = Vec::new();
        for (dom, nmounts) in domains {
            let (objects, verify_failures) = {
                let t = dom.objects.lock().unwrap();
                (t.objects(), t.verify_failures())
            };
            let mut st = DomainStatus {
                id: dom.id.clone(),
                trusted: dom.trusted,
                verify_failures,
                dedup_mountpoint: dom.dedup_mountpoint.clone(),
                mounts: nmounts as u64,
                objects: objects.len() as u64,
                requests: dom.requests.load(Ordering::Relaxed),
                ..DomainStatus::default()
            };
            for obj in objects {
                let refs = obj.source_count() as u64;
                st.references += refs;
                if refs >= 2 {
                    st.files_shared += 1;
                }
                let (m, b) = obj.misses();
                st.misses += m;
                st.miss_bytes += b;
                let cached = cached_bytes(&dom.object_path(&obj)).unwrap_or(0);
                st.cached_bytes += cached;
                st.saved_bytes += cached * refs.saturating_sub(1);
            }
            out.push(st);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Status {
            pid: std::process::id(),
            state_dir: self.state_dir.clone(),
            started: self
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            takeovers: self.takeovers,
            mounts,
            domains: out,
        }
    }

    /// Unmounts every image mount, then every dedup mount (each lazily).
    pub fn shutdown(&self, grace: Duration) {
        let paths: Vec<PathBuf> = {
            let mut mounts = self.mounts.lock().unwrap();
            mounts
                .values_mut()
                .map(|m| {
                    m.detached = true;
                    m.image.mountpoint.clone()
                })
                .collect()
        };
        for p in &paths {
            if let Err(e) = detach(p) {
                tracing::warn!("umount {}: {e}", p.display());
            }
        }
        let t = Instant::now();
        while t.elapsed() < grace && !self.mounts.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<PathBuf> = self
            .domains
            .lock()
            .unwrap()
            .drain()
            .map(|(_, r)| r.domain.dedup_mountpoint.clone())
            .collect();
        for p in left {
            let _ = detach(&p);
            let _ = fs::remove_dir(&p);
        }
        self.forget_state();
    }
}

/// Metadata images kept in the cache: the newest by modification time (a remount of a recent
/// image reuses its metadata image; the cache stays small).
const META_CACHE_MAX: usize = 64;

/// Serves a domain's dedup mount: `session` runs on threads of its own. Returns the notifier
/// (to drop dead objects' pages) and a copy of the /dev/fuse descriptor (for a successor).
fn serve_domain(id: &str, session: Session<DedupFs>) -> Result<(Notifier, OwnedFd), String> {
    let notifier = session.notifier();
    let fd = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("keep the dedup mount's descriptor: {e}"))?;
    std::thread::Builder::new()
        .name(format!("dedup-{id}"))
        .spawn(move || {
            if let Err(e) = session.run() {
                tracing::warn!("dedup mount session ended: {e}");
            }
        })
        .map_err(|e| format!("spawn the dedup thread: {e}"))?;
    Ok((notifier, fd))
}

/// A hand-over in progress: mount and umount requests wait until the predecessor exits (or
/// the hand-over fails and [`Daemon::resume`] is called).
#[derive(Debug)]
pub struct Handover<'a> {
    _admin: MutexGuard<'a, ()>,
    /// What the successor needs.
    pub state: crate::takeover::State,
    /// The descriptors `state` indexes.
    pub fds: Vec<OwnedFd>,
}

impl Daemon {
    /// Everything a successor needs, consistent at one instant: `fd(descriptor, name)` keeps
    /// each descriptor the state refers to and returns its index.
    fn snapshot(
        &self,
        fd: &mut dyn FnMut(std::os::fd::BorrowedFd<'_>, String) -> Result<usize, String>,
    ) -> Result<crate::takeover::State, String> {
        use crate::takeover::{DomainState, MountState, State};
        let ends = self.ends.as_ref().ok_or("inotify is unavailable")?;
        let inotify_fd = fd(ends.inotify_fd(), "inotify".into())?;
        let mounts = self.mounts.lock().unwrap();
        let domains = self.domains.lock().unwrap();
        let mut ds = Vec::new();
        for rec in domains.values() {
            let d = &rec.domain;
            let dir = d.dedup_mountpoint.file_name().unwrap_or_default();
            ds.push(DomainState {
                id: d.id.clone(),
                trusted: d.trusted,
                dedup_mountpoint: d.dedup_mountpoint.clone(),
                fuse_fd: fd(rec.fuse_fd.as_fd(), format!("dedup-{}", dir.display()))?,
                requests: d.requests.load(Ordering::Relaxed),
                table: d.objects.lock().unwrap().export(),
            });
        }
        let mut ms = Vec::new();
        for (id, rec) in mounts.iter() {
            let m = &rec.image;
            let (fuse_fd, fuse) = match &rec.fuse {
                Some((f, view)) => (
                    Some(fd(f.as_fd(), format!("fuse-{id}"))?),
                    Some(view.export()),
                ),
                None => (None, None),
            };
            ms.push(MountState {
                id: *id,
                image: m.image_path.clone(),
                image_fd: fd(m.file.as_fd(), format!("image-{id}"))?,
                mountpoint: m.mountpoint.clone(),
                domain: m.domain.as_ref().map(|d| d.id.clone()),
                data_domain: rec.data_domain.as_ref().map(|d| d.id.clone()),
                front: rec.front.name().to_string(),
                front_reason: rec.front_reason.clone(),
                fuse_fd,
                fuse,
                unshared_reason: m.unshared(),
                detached: rec.detached,
                meta_image: rec.meta_image.clone(),
                size_mismatches: m.size_mismatches.load(Ordering::Relaxed),
                verify_failures: m.verify_failures.load(Ordering::Relaxed),
                fingerprints_computed: m.fingerprints_computed.load(Ordering::Relaxed),
            });
        }
        ms.sort_by_key(|m| m.id);
        Ok(State {
            pid: std::process::id(),
            takeovers: self.takeovers,
            next_id: self.next_id.load(Ordering::Relaxed),
            domains: ds,
            mounts: ms,
            inotify_fd,
            watches: ends.watches(),
            fds: 0,
            fd_names: Vec::new(),
        })
    }

    /// Prepares a takeover: stops taking mount requests and reading mount ends, and gathers
    /// the state and descriptors a successor needs.
    pub fn hand_over(self: &Arc<Self>) -> Result<Handover<'_>, String> {
        let admin = self.admin.lock().unwrap();
        self.stop_ends()?;
        // From here the FUSE front answers nothing until this process exits (or resumes).
        crate::front::fuse::pause_for_handover();
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut names = Vec::new();
        let gathered = self
            .snapshot(&mut |fd, what| {
                let f = fd
                    .try_clone_to_owned()
                    .map_err(|e| format!("{what}: {e}"))?;
                fds.push(f);
                names.push(what);
                Ok(fds.len() - 1)
            })
            .map(|mut state| {
                state.fd_names = names;
                (state, fds)
            });
        match gathered {
            Ok((mut state, fds)) => {
                state.fds = fds.len();
                Ok(Handover {
                    _admin: admin,
                    state,
                    fds,
                })
            }
            Err(e) => {
                self.resume();
                Err(e)
            }
        }
    }

    /// After a failed hand-over: answer image mounts and watch mount ends again (drop the
    /// [`Handover`] first).
    pub fn resume(self: &Arc<Self>) {
        crate::front::fuse::resume_after_handover();
        self.start_ends();
    }

    /// A daemon serving what its predecessor handed over (see [`crate::takeover`]): the same
    /// mounts, domains, objects (under the same inode numbers) and FUSE connections.
    pub fn adopt(
        state_dir: PathBuf,
        cache_dir: PathBuf,
        state: crate::takeover::State,
        fds: Vec<OwnedFd>,
    ) -> Result<Arc<Self>, String> {
        if fds.len() != state.fds {
            return Err(format!("{} descriptors for {}", fds.len(), state.fds));
        }
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let mut take = |i: usize, what: &str| {
            fds.get_mut(i)
                .and_then(Option::take)
                .ok_or_else(|| format!("{what}: descriptor {i} missing or used twice"))
        };
        let ends = overlay::Ends::adopt(take(state.inotify_fd, "inotify")?, state.watches)
            .map_err(|e| format!("inotify: {e}"))?;
        let mut doms: HashMap<String, (Arc<Domain>, OwnedFd)> = HashMap::new();
        for d in &state.domains {
            let dom = Arc::new(Domain::new(
                d.id.clone(),
                d.dedup_mountpoint.clone(),
                d.trusted,
            ));
            dom.requests.store(d.requests, Ordering::Relaxed);
            doms.insert(d.id.clone(), (dom, take(d.fuse_fd, "dedup /dev/fuse")?));
        }
        let mut mounts = HashMap::new();
        // FUSE-front mounts' connections and filesystem state, served once the daemon exists.
        let mut fuse_sessions = Vec::new();
        for ms in &state.mounts {
            let file = fs::File::from(take(ms.image_fd, "image")?);
            let front = match ms.front.as_str() {
                "fuse" => Front::Fuse,
                _ => Front::Overlay,
            };
            let data = match &ms.data_domain {
                Some(id) => Some(
                    doms.get(id)
                        .map(|(d, _)| d.clone())
                        .ok_or_else(|| format!("mount {}: no domain {id:?}", ms.id))?,
                ),
                None if front == Front::Overlay => {
                    return Err(format!(
                        "mount {}: an overlay mount without a data domain",
                        ms.id
                    ));
                }
                None => None,
            };
            let shared = match &ms.domain {
                Some(d) => Some(
                    doms.get(d)
                        .map(|(d, _)| d.clone())
                        .ok_or_else(|| format!("mount {}: no domain {d:?}", ms.id))?,
                ),
                None => None,
            };
            let m = MountedImage::from_file(
                ms.id,
                ms.image.clone(),
                ms.mountpoint.clone(),
                shared,
                file,
            )
            .map_err(|e| format!("{}: {e}", ms.image.display()))?;
            if let Some(r) = &ms.unshared_reason {
                m.set_unshared(r.clone());
            }
            m.size_mismatches
                .store(ms.size_mismatches, Ordering::Relaxed);
            m.verify_failures
                .store(ms.verify_failures, Ordering::Relaxed);
            m.fingerprints_computed
                .store(ms.fingerprints_computed, Ordering::Relaxed);
            let m = Arc::new(m);
            if front == Front::Fuse {
                let fd = take(
                    ms.fuse_fd.ok_or("a FUSE mount without its /dev/fuse")?,
                    "fuse",
                )?;
                let fs = ms.fuse.clone().unwrap_or_default();
                fuse_sessions.push((ms.id, m.clone(), fd, fs));
            }
            mounts.insert(
                ms.id,
                MountRecord {
                    image: m,
                    detached: ms.detached,
                    front,
                    front_reason: ms.front_reason.clone(),
                    meta_image: ms.meta_image.clone(),
                    data_domain: data,
                    fuse: None,
                },
            );
        }
        for d in &state.domains {
            let (dom, _) = &doms[&d.id];
            let table = crate::dedup::DedupTable::import(&d.table, |mount, nid, verified| {
                let m = &mounts
                    .get(&mount)
                    .ok_or_else(|| format!("an object's source names mount {mount}"))?
                    .image;
                let inode = m
                    .image
                    .inode(nid)
                    .map_err(|e| format!("{}: nid {nid}: {e}", m.image_path.display()))?;
                Ok(crate::front::fuse::source_of(m, &inode, verified))
            })
            .map_err(|e| format!("domain {:?}: {e}", d.id))?;
            *dom.objects.lock().unwrap() = table;
        }
        let mut domains = HashMap::new();
        for (id, (dom, fd)) in doms {
            let n = mounts
                .values()
                .filter(|m| m.data_domain.as_ref().is_some_and(|d| d.id == id))
                .count();
            let session = Session::from_initialized_fd(
                DedupFs::new(dom.clone()),
                fd,
                SessionACL::Owner,
                session_config(DEDUP_THREADS, false),
            );
            let (notifier, fuse_fd) = serve_domain(&id, session)?;
            domains.insert(
                id,
                DomainRecord {
                    domain: dom,
                    notifier,
                    mounts: n,
                    fuse_fd,
                },
            );
        }
        let daemon = Arc::new(Self {
            state_dir,
            cache_dir,
            mounts: Mutex::new(mounts),
            domains: Mutex::new(domains),
            admin: Mutex::new(()),
            next_id: AtomicU64::new(state.next_id),
            ends: Some(Arc::new(ends)),
            ends_thread: Mutex::new(None),
            started: SystemTime::now(),
            takeovers: state.takeovers + 1,
            fd_store: crate::takeover::FdStore::from_env(),
            persisting: Mutex::new(false),
        });
        if let Some(store) = &daemon.fd_store {
            store.already_stored(state.fd_names.iter().cloned());
        }
        for (id, m, fd, from) in fuse_sessions {
            if m.domain.is_some() {
                // From the cache the first mount filled: files without a fingerprint.
                daemon.fingerprint_missing(&m)?;
            }
            let fs = ImageFs::adopt(m, &from);
            let view = fs.view();
            let session = Session::from_initialized_fd(
                fs,
                fd,
                SessionACL::All,
                session_config(IMAGE_THREADS, false),
            );
            let kept = session
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("mount {id}: keep its /dev/fuse: {e}"))?;
            if let Some(rec) = daemon.mounts.lock().unwrap().get_mut(&id) {
                rec.fuse = Some((kept, view));
            }
            daemon.serve_image_mount(id, session)?;
        }
        daemon.start_ends();
        Ok(daemon)
    }

    /// Asks the kernel to queue again what a predecessor read but never answered, on every
    /// dedup connection (call once the predecessor has exited).
    pub fn resend_pending(&self) {
        let resend = |fd: std::os::fd::BorrowedFd<'_>, what: String| {
            if let Err(e) = crate::takeover::resend_pending(fd) {
                tracing::warn!(
                    "{what}: FUSE_NOTIFY_RESEND: {e} (requests the predecessor had read may \
                     wait until their callers give up)"
                );
            }
        };
        for rec in self.domains.lock().unwrap().values() {
            resend(rec.fuse_fd.as_fd(), format!("domain {:?}", rec.domain.id));
        }
        for rec in self.mounts.lock().unwrap().values() {
            if let Some((fd, _)) = &rec.fuse {
                resend(fd.as_fd(), rec.image.mountpoint.display().to_string());
            }
        }
    }
}

/// Marks `path` no-atime (`chattr +A`) where its filesystem can. Reading a container's files
/// reads its metadata image, and the first read after a write (relatime) would update the
/// image's atime: a journal write, and on ext4 32 blocks of inode table read into the
/// reader's page cache. Best effort: without it only that one update happens.
fn no_atime(path: &Path) {
    if let Ok(f) = fs::File::open(path)
        && let Ok(flags) = rustix::fs::ioctl_getflags(&f)
        && !flags.contains(rustix::fs::IFlags::NOATIME)
    {
        let _ = rustix::fs::ioctl_setflags(&f, flags | rustix::fs::IFlags::NOATIME);
    }
}

fn prune_meta_cache(dir: &Path) {
    prune_cache(dir, META_CACHE_MAX);
}

/// Keeps the `max` newest files of the cache directory `dir`.
pub(crate) fn prune_cache(dir: &Path, max: usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= max {
        return;
    }
    files.sort();
    for (_, p) in &files[..files.len() - max] {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_go_to_var_cache_for_the_default_state_directory_only() {
        assert_eq!(
            default_cache_dir(Path::new(DEFAULT_STATE_DIR)),
            Path::new(DEFAULT_CACHE_DIR)
        );
        assert_eq!(
            default_cache_dir(Path::new("/tmp/private")),
            Path::new("/tmp/private")
        );
    }
}
