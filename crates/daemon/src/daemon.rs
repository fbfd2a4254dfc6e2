//! The daemon: owns the image mounts and the domains, serves the control socket, and on
//! SIGTERM/SIGINT unmounts image mounts first, dedup mounts last.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::{Config, Filesystem, INodeNo, Notifier, Session, SessionACL};

use crate::control::{self, DomainStatus, MountStatus, Request, Response, Status};
use crate::dedup::Attach;
use crate::dedup_fs::DedupFs;
use crate::domain::{self, Domain};
use crate::image_fs::{ImageFs, MountedImage};
use crate::overlay;

/// Default state directory (control socket, pid file, dedup mounts).
pub const DEFAULT_STATE_DIR: &str = "/run/erofs-share";
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

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a named object failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The OS error.
        cause: io::Error,
    },
    /// Another daemon owns the state directory.
    #[error("another erofs-share daemon already runs with state directory {0}")]
    AlreadyRunning(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |cause| Error::Io { what, cause }
}

/// How an image is mounted (DESIGN.md): the overlay front (kernel overlayfs over a metadata
/// image, data from the dedup mount) or the FUSE front (the daemon serves every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Overlay,
    Fuse,
}

impl Front {
    fn name(self) -> &'static str {
        match self {
            Front::Overlay => "overlay",
            Front::Fuse => "fuse",
        }
    }
}

/// The id of the internal domain that holds the objects of mounts that share nothing
/// (overlay front): users cannot name it, an empty id is refused.
const UNSHARED_DOMAIN: &str = "";

#[derive(Debug)]
struct MountRecord {
    image: Arc<MountedImage>,
    detached: bool,
    front: Front,
    front_reason: Option<String>,
    /// The overlay front's per-mount metadata image.
    meta_image: Option<PathBuf>,
    /// The domain whose dedup table holds this mount's sources (and counts it as a mount):
    /// the sharing domain, or for the overlay front the unshared one.
    data_domain: Option<Arc<Domain>>,
}

struct DomainRecord {
    domain: Arc<Domain>,
    notifier: Notifier,
    mounts: usize,
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
    mounts: Mutex<HashMap<u64, MountRecord>>,
    domains: Mutex<HashMap<String, DomainRecord>>,
    /// Serialises mount and umount requests (not reads: those never take it).
    admin: Mutex<()>,
    next_id: AtomicU64,
    /// Ends of overlay-front mounts (None where inotify is unavailable: no overlay front).
    ends: Option<Arc<overlay::Ends>>,
}

impl Daemon {
    /// A daemon with no mounts, keeping its dedup mounts under `state_dir`.
    pub fn new(state_dir: PathBuf) -> Arc<Self> {
        let daemon = Arc::new(Self {
            state_dir,
            mounts: Mutex::new(HashMap::new()),
            domains: Mutex::new(HashMap::new()),
            admin: Mutex::new(()),
            next_id: AtomicU64::new(1),
            ends: overlay::Ends::new()
                .inspect_err(|e| tracing::warn!("inotify: {e}: no overlay front"))
                .ok()
                .map(Arc::new),
        });
        if let Some(ends) = daemon.ends.clone() {
            let d = Arc::downgrade(&daemon);
            let _ = std::thread::Builder::new()
                .name("overlay-ends".into())
                .spawn(move || {
                    let e = ends.run(|id| {
                        if let Some(d) = d.upgrade() {
                            d.mount_ended(id);
                        }
                    });
                    tracing::error!("watching overlay mounts ended: {e}");
                });
        }
        daemon
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
                Ok(m) => Response {
                    ok: true,
                    mount: Some(m),
                    ..Response::default()
                },
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
        let can_pass = crate::image_fs::has_cap_sys_admin();
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
        let fsname = format!("{IMAGE_FSNAME}{}", image.display());
        let session = match session_on(
            fs,
            &mountpoint,
            &fsname,
            "default_permissions,allow_other",
            SessionACL::All,
            IMAGE_THREADS,
        ) {
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
            },
        );
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("mount-{id}"))
            .spawn(move || {
                if let Err(e) = session.run() {
                    tracing::warn!("mount {id}: session ended: {e}");
                }
                me.mount_ended(id);
            })
            .map_err(|e| format!("spawn the mount thread: {e}"))?;
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
        let meta = match scanned {
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
                meta_image: Some(meta.clone()),
                data_domain: Some(data.clone()),
            },
        );
        if let Err(e) = ends.watch(id, &meta) {
            // Without the watch the end is never seen: take the mount down again.
            tracing::warn!("inotify watch of {}: {e}", meta.display());
            let _ = detach(mountpoint);
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
                &self.state_dir,
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
            let source = crate::image_fs::source_of(m, &inode, verified);
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
            &self.state_dir,
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

    /// This mount's copy of the image's metadata image, built into the cache (keyed by the
    /// image's identity and the object names) unless already there. Each mount gets its own
    /// file: its close tells when the mount has ended (see [`overlay::Ends`]).
    fn meta_image(
        &self,
        m: &MountedImage,
        image: &erofs::Image,
        names: &HashMap<u64, String>,
    ) -> Result<PathBuf, String> {
        use sha2::Digest;
        let cache = self.state_dir.join("meta");
        let front = self.state_dir.join("front");
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
        h.update(b"erofs-share metadata image v1\0");
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
            erofs::build::meta::metadata_image(image, &cached, &mut |inode| {
                names.get(&inode.nid).cloned()
            })
            .map_err(|e| format!("metadata image of {}: {e}", m.image_path.display()))?;
            prune_meta_cache(&cache);
        }
        let own = front.join(format!("{}.erofs", m.id));
        fs::copy(&cached, &own).map_err(|e| format!("copy {}: {e}", cached.display()))?;
        Ok(own)
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
            DEDUP_THREADS,
        )
        .map_err(|e| format!("mount the dedup filesystem of domain {id:?}: {e}"))?;
        let notifier = session.notifier();
        let name = format!("dedup-{id}");
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Err(e) = session.run() {
                    tracing::warn!("dedup mount session ended: {e}");
                }
            })
            .map_err(|e| format!("spawn the dedup thread: {e}"))?;
        set_readahead(&dir);
        domains.insert(
            id.to_string(),
            DomainRecord {
                domain: dom.clone(),
                notifier,
                mounts: 1,
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
        if let Some(meta) = &rec.meta_image {
            let _ = fs::remove_file(meta);
        }
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
    }
}

/// Metadata images kept in the cache: the newest by modification time (a remount of a recent
/// image reuses its metadata image; the cache stays small).
const META_CACHE_MAX: usize = 64;

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

/// Mounts a read-only FUSE filesystem at `mountpoint` ourselves and starts its session.
///
/// Not `fuser::Session::new`: a fuser session unmounts its mountpoint path when it ends, and
/// a lazily detached mount's session ends whenever its last file closes, by which time a new
/// mount may sit at the same path. Here nobody but the daemon's `detach` ever unmounts.
fn session_on<FS: Filesystem>(
    fs: FS,
    mountpoint: &Path,
    fsname: &str,
    options: &str,
    acl: SessionACL,
    threads: usize,
) -> io::Result<Session<FS>> {
    let mut config = Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = true;
    match mount_fuse(mountpoint, fsname, options) {
        Ok(dev) => Session::from_fd(fs, dev, acl, config).inspect_err(|_| {
            let _ = detach(mountpoint);
        }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            // Not privileged: the setuid fusermount3 mounts for us, accessible to this user
            // only (allow_other needs user_allow_other in /etc/fuse.conf).
            let dev = fusermount(mountpoint, fsname)?;
            Session::from_fd(fs, dev, SessionACL::Owner, config).inspect_err(|_| {
                let _ = detach(mountpoint);
            })
        }
        Err(e) => Err(e),
    }
}

/// Mounts through the setuid `fusermount3` (for a daemon without CAP_SYS_ADMIN): it mounts
/// and hands the /dev/fuse fd back over a socket named by `_FUSE_COMMFD`.
fn fusermount(mountpoint: &Path, fsname: &str) -> io::Result<std::os::fd::OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let opts = format!(
        "ro,nosuid,nodev,noatime,default_permissions,fsname={}",
        fsname.replace(',', "_")
    );
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o").arg(opts).arg("--").arg(mountpoint);
    let out = inherit_fd(&mut cmd, theirs.as_fd(), "_FUSE_COMMFD").output()?;
    drop(theirs);
    if !out.status.success() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "fusermount3: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    recv_fd(&ours).inspect_err(|_| {
        let _ = detach(mountpoint);
    })
}

/// Lets `cmd`'s child inherit `fd` (named to it by the environment variable `env`).
///
/// The fd keeps close-on-exec in this (multi-threaded) process, so children other threads
/// spawn meanwhile do not inherit it; only the forked child clears the flag, between fork and
/// exec. std has no stable way to pass an fd to a child, hence `pre_exec`.
fn inherit_fd<'a>(
    cmd: &'a mut std::process::Command,
    fd: std::os::fd::BorrowedFd<'_>,
    env: &str,
) -> &'a mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    cmd.env(env, raw.to_string());
    let clear = move || {
        // SAFETY: `raw` is open in the forked child (the parent holds it across the spawn,
        // which the borrow of `fd` guarantees for the caller's statement).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(io::Error::from)
    };
    // SAFETY: the closure only makes one fcntl system call (async-signal-safe: no allocation,
    // no locks), as required between fork and exec.
    unsafe { cmd.pre_exec(clear) }
}

/// Receives one fd sent with SCM_RIGHTS on `sock`: close-on-exec from the start
/// (MSG_CMSG_CLOEXEC), and an error when the control data was truncated or carries no fd.
fn recv_fd(sock: &UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Any fds that did fit are closed when `control` drops.
        return Err(io::Error::other(
            "fusermount3 sent more control data than one descriptor",
        ));
    }
    let mut fds = control.drain().filter_map(|m| match m {
        RecvAncillaryMessage::ScmRights(fds) => Some(fds),
        _ => None,
    });
    let fd = fds.next().and_then(|mut f| f.next());
    fd.ok_or_else(|| io::Error::other("fusermount3 sent no /dev/fuse descriptor"))
}

/// mount(2) of a read-only, nosuid, nodev FUSE filesystem; returns its /dev/fuse fd.
fn mount_fuse(mountpoint: &Path, fsname: &str, options: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let rootmode = fs::metadata(mountpoint)?.mode();
    let dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id=0,group_id=0",
        dev.as_raw_fd()
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    use rustix::mount::MountFlags;
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME;
    let data =
        std::ffi::CString::new(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount(fsname, mountpoint, "fuse", flags, data.as_c_str())?;
    Ok(dev.into())
}

/// Readahead of our FUSE mounts, KiB. A miss costs a round trip and an O_DIRECT read of the
/// image, so fewer, larger requests (up to FUSE's 1 MiB) read images faster than the 128 KiB
/// default.
const READAHEAD_KB: u32 = 1024;

/// Raises the readahead of the FUSE mount at `mountpoint` (its bdi is named after its device
/// number). Best effort: a failure only costs cold-read speed. Call once the session serves
/// requests: the stat goes to it.
fn set_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::metadata(mountpoint) else {
        return;
    };
    let (major, minor) = (rustix::fs::major(md.dev()), rustix::fs::minor(md.dev()));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = fs::write(&knob, READAHEAD_KB.to_string()) {
        tracing::debug!("{knob}: {e}");
    }
}

/// Lazy unmount (`umount -l`): the mount leaves the namespace now, open files keep working.
pub fn detach(path: &Path) -> io::Result<()> {
    if let Err(e) = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        if e != rustix::io::Errno::PERM {
            return Err(e.into());
        }
        // An unprivileged daemon's mounts go through the setuid helper.
        let out = std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(path)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "fusermount3 -u -z {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// FUSE and overlay mountpoints in /proc/self/mountinfo whose source starts with
/// `fsname_prefix`.
pub fn our_mounts(fsname_prefix: &str) -> Vec<PathBuf> {
    our_mounts_with(fsname_prefix)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// [`our_mounts`] with each mount's super options (an overlay's layers are there).
fn our_mounts_with(fsname_prefix: &str) -> Vec<(PathBuf, String)> {
    mount_table()
        .into_iter()
        .filter(|m| {
            (m.fstype.starts_with("fuse") || m.fstype == "overlay")
                && m.source.starts_with(fsname_prefix)
        })
        .map(|m| (m.mountpoint, m.options))
        .collect()
}

/// One line of /proc/self/mountinfo, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Filesystem type (`fuse.…`, `overlay`, `erofs`, …).
    pub fstype: String,
    /// Mount source ("fsname").
    pub source: String,
    /// Super options.
    pub options: String,
}

/// The calling process's mounts, in /proc/self/mountinfo order (empty if unreadable).
pub fn mount_table() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|info| parse_mountinfo(&info))
        .unwrap_or_default()
}

/// Every mountpoint of the calling process (tests check what is left mounted with it).
pub fn mountpoints() -> Vec<PathBuf> {
    mount_table().into_iter().map(|m| m.mountpoint).collect()
}

fn parse_mountinfo(info: &str) -> Vec<MountEntry> {
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut fields = right.split(' ');
            let fstype = fields.next()?.to_string();
            let source = unescape_mountinfo(fields.next()?);
            let options = unescape_mountinfo(fields.next().unwrap_or(""));
            let mountpoint = PathBuf::from(unescape_mountinfo(left.split(' ').nth(4)?));
            Some(MountEntry {
                mountpoint,
                fstype,
                source,
                options,
            })
        })
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (three octal digits).
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when the FUSE mount at `path` has lost its daemon. Looks up a name that cannot exist:
/// the root's attributes are cached for long, a failed lookup is not.
pub fn is_dead(path: &Path) -> bool {
    fs::symlink_metadata(path.join(".erofs-share-liveness-probe"))
        .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// True when `path` is a FUSE or overlay mountpoint whose source starts with `fsname_prefix`.
pub fn is_our_mount(path: &Path, fsname_prefix: &str) -> bool {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    our_mounts(fsname_prefix)
        .iter()
        .any(|m| m == path || *m == canon)
}

/// Bytes of `path` in the page cache, by cachestat(2) (Linux 6.5+).
pub fn cached_bytes(path: &Path) -> io::Result<u64> {
    let f = fs::File::open(path)?;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // No crate wraps cachestat(2) (rustix, nix, libc have no function for it, and libc has
    // no SYS_cachestat on x86_64): a raw syscall, number 451 on every architecture but alpha.
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: 0, len: 0 };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both live, correctly laid out structs.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let page = rustix::param::page_size() as u64;
    Ok(st.nr_cache * page)
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT or a `stop` request.
pub fn run(state_dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err(format!("create {}", state_dir.display())))?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", state_dir.display())))?;
    let lock_path = state_dir.join("daemon.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("open {}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(Error::AlreadyRunning(state_dir.to_path_buf()));
    }
    raise_fd_limit();
    clean_stale_mounts(state_dir);
    let sock = control::socket_path(state_dir);
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(io_err(format!("bind {}", sock.display())))?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", sock.display())))?;
    let pid_path = state_dir.join("daemon.pid");
    fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(io_err(format!("write {}", pid_path.display())))?;

    // Block the stop signals in every thread; this one waits for them.
    let set = stop_signals()?;

    let daemon = Daemon::new(state_dir.to_path_buf());
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(listener, d))
        .map_err(io_err("spawn the control thread"))?;
    tracing::info!(
        "erofs-share daemon {} serving {}",
        std::process::id(),
        sock.display()
    );

    // sigwait fails only on an invalid set (it does not return EINTR): no retry, but the
    // mounts are still unmounted before the error is reported.
    let waited = set.wait();
    match &waited {
        Ok(sig) => tracing::info!("{sig}: unmounting everything"),
        Err(e) => tracing::error!("sigwait: {e}: unmounting everything"),
    }
    let _ = fs::remove_file(&sock);
    daemon.shutdown(Duration::from_secs(3));
    let _ = fs::remove_file(&pid_path);
    drop(lock);
    waited.map(drop).map_err(|e| Error::Io {
        what: "wait for SIGTERM/SIGINT".into(),
        cause: e.into(),
    })
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it spawns later;
/// returns the set for `wait`.
fn stop_signals() -> Result<nix::sys::signal::SigSet, Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(|e| Error::Io {
        what: "block SIGTERM/SIGINT".into(),
        cause: e.into(),
    })?;
    Ok(set)
}

/// Each mount holds a few /dev/fuse clones and its image, and each dedup object its dedup
/// file: lift the soft fd limit to the hard one, and as root the hard one to the kernel's
/// per-process maximum (`fs.nr_open`).
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let lim = getrlimit(Resource::Nofile);
    // None is unlimited: nothing to raise.
    let Some(hard) = lim.maximum else { return };
    if let Some(max) = nr_open.filter(|&m| m > hard) {
        let raised = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        // Needs CAP_SYS_RESOURCE; without it the soft limit is raised below.
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return;
        }
    }
    if lim.current.is_some_and(|cur| cur < hard) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("raise RLIMIT_NOFILE to {hard}: {e}");
        }
    }
}

fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let me = rustix::process::geteuid().as_raw();
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let d = daemon.clone();
        let _ = std::thread::Builder::new()
            .name("request".into())
            .spawn(move || handle_conn(stream, d, me));
    }
}

fn handle_conn(stream: UnixStream, daemon: Arc<Daemon>, me: u32) {
    let mut stop = false;
    let resp = match control::peer_uid(&stream) {
        Ok(uid) if uid == 0 || uid == me => match control::read_request(&stream) {
            Ok(req) => {
                stop = req == Request::Stop;
                daemon.handle(req)
            }
            Err(e) => Response::error(e),
        },
        Ok(uid) => Response::error(format!("uid {uid} may not control the daemon")),
        Err(e) => Response::error(format!("peer credentials: {e}")),
    };
    let _ = control::write_response(&stream, &resp);
    if stop {
        // After the answer: the shutdown may end the process at once.
        // To the process, not this thread (which blocks it): the signal thread performs the
        // shutdown.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
    }
}

/// Detaches what a killed daemon left: its dedup mounts under `state_dir`, and image mounts
/// whose FUSE connection is dead (ENOTCONN).
fn clean_stale_mounts(state_dir: &Path) {
    let dedup_root = state_dir.join("dedup");
    for m in our_mounts(DEDUP_FSNAME) {
        if m.starts_with(&dedup_root) {
            tracing::info!("detaching stale dedup mount {}", m.display());
            let _ = detach(&m);
            let _ = fs::remove_dir(&m);
        }
    }
    for (m, options) in our_mounts_with(IMAGE_FSNAME) {
        // An overlay front over one of our (now detached) dedup mounts is stale too: its
        // metadata still shows but every page-cache miss fails.
        let ours = options.split(',').any(|o| {
            o.strip_prefix("datadir+=")
                .is_some_and(|d| Path::new(d).starts_with(&dedup_root))
        }) || options.contains(&format!("::{}", dedup_root.display()));
        if ours || is_dead(&m) {
            tracing::info!("detaching stale image mount {}", m.display());
            let _ = detach(&m);
        }
    }
    // Metadata images of mounts that are gone.
    if let Ok(rd) = fs::read_dir(state_dir.join("front")) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::BorrowedFd;

    fn send_fds(sock: &UnixStream, fds: &[BorrowedFd<'_>]) {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            sock,
            &[io::IoSlice::new(b"x")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        rustix::io::fcntl_getfd(fd)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let info = "36 35 98:0 / /mnt/a\\040b\\134c rw,noatime master:1 - fuse.erofs-share \
                    erofs-share:/img\\040x ro,user_id=0\n\
                    37 35 98:0 / /plain rw - overlay overlay lowerdir=/l\n";
        let m = parse_mountinfo(info);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, Path::new("/mnt/a b\\c"));
        assert_eq!(m[0].source, "erofs-share:/img x");
        assert_eq!(m[0].fstype, "fuse.erofs-share");
        assert_eq!(m[0].options, "ro,user_id=0");
        assert_eq!(m[1].mountpoint, Path::new("/plain"));
    }

    #[test]
    fn received_fd_is_close_on_exec_and_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        send_fds(&a, &[file.as_fd()]);
        let got = fs::File::from(recv_fd(&b).unwrap());
        assert!(cloexec(got.as_fd()), "received fd lacks close-on-exec");
        assert_eq!(got.metadata().unwrap().len(), 4096);
    }

    #[test]
    fn receive_without_fd_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        send_fds(&a, &[]);
        let e = recv_fd(&b).unwrap_err();
        assert!(e.to_string().contains("no /dev/fuse descriptor"), "{e}");
    }

    #[test]
    fn receive_of_truncated_control_data_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        // Eight fds: more than the receive buffer's rounding and alignment slack leave room for.
        let files: Vec<_> = (0..8).map(|_| tempfile::tempfile().unwrap()).collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        send_fds(&a, &fds);
        let e = recv_fd(&b).unwrap_err();
        assert!(e.to_string().contains("more control data"), "{e}");
    }

    #[test]
    fn child_inherits_fd_that_stays_close_on_exec_here() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        assert!(cloexec(theirs.as_fd()));
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo hi >&$FD"]);
        let status = inherit_fd(&mut cmd, theirs.as_fd(), "FD").status().unwrap();
        assert!(status.success());
        assert!(
            cloexec(theirs.as_fd()),
            "the parent's fd lost close-on-exec"
        );
        drop(theirs);
        let mut s = String::new();
        io::Read::read_to_string(&mut &ours, &mut s).unwrap();
        assert_eq!(s, "hi\n");
    }
}
