//! A containerd proxy snapshotter (snapshots v1 gRPC API) whose committed layers are
//! fingerprinted EROFS images mounted through the erofs-share daemon in one sharing domain,
//! so identical files of different images share one page cache.
//!
//! # Layout under the root directory
//! - `metadata.json`: every snapshot (key, id, kind, parent, labels, times), replaced
//!   atomically on each change, so it survives restarts of the snapshotter and containerd.
//! - `snapshots/<id>/fs`, `work`: an active snapshot's upper and work directories.
//! - `snapshots/<id>/layer.erofs`, `layer/`: a committed snapshot's image and its daemon mount.
//!
//! # Why each committed image holds its whole chain
//! A layer image keeps its whiteouts in overlay form, but served through the daemon's overlay
//! front those whiteouts would be consumed by that inner overlay and never reach a
//! container's overlay. So Commit builds the image from the merged view of the new upper
//! directory over its parent's mount: the chain flattened, whiteouts applied. A container's
//! stack is then FUSE (dedup) → image overlay → container overlay: the kernel's depth of 2.
//! Files unchanged between layers keep their fingerprints and share one dedup object.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Kind as ApiKind, Usage, tonic};
use erofs_share_daemon::control::{self, Request};
use serde::{Deserialize, Serialize};

/// Name of the metadata file under the root.
pub const METADATA: &str = "metadata.json";

/// What went wrong; each maps to the gRPC code containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot with this key.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// The key is taken.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The operation does not fit the snapshot's state.
    #[error("{0}")]
    Precondition(String),
    /// A file operation failed.
    #[error("{path}: {cause}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Building a layer image failed.
    #[error("building {path}: {cause}")]
    Build {
        /// The image being built.
        path: PathBuf,
        /// The cause.
        cause: erofs::build::BuildError,
    },
    /// The daemon refused or could not be reached.
    #[error("erofs-share daemon at {state_dir}: {message}")]
    Daemon {
        /// The daemon's state directory.
        state_dir: PathBuf,
        /// What it said, or why it could not be asked.
        message: String,
    },
    /// The metadata file cannot be read.
    #[error("{path}: bad snapshot metadata: {message}")]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::Precondition(_) => tonic::Status::failed_precondition(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// A snapshot's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only view of a committed snapshot.
    View,
    /// Writable (unpacking a layer, or a container's root).
    Active,
    /// A layer image mounted through the daemon.
    Committed,
}

/// One snapshot as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Directory name under `snapshots/`.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Key of the parent (a committed snapshot), empty for none.
    pub parent: String,
    /// containerd's labels (gc references among them).
    pub labels: HashMap<String, String>,
    /// Creation time.
    pub created_at: SystemTime,
    /// Last change.
    pub updated_at: SystemTime,
}

/// Everything persisted in `metadata.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// The next snapshot id.
    pub next_id: u64,
    /// Snapshots by key.
    pub snapshots: BTreeMap<String, Snapshot>,
}

/// Configuration of a snapshotter.
#[derive(Debug, Clone)]
pub struct Config {
    /// Absolute directory for metadata, upper directories and layer images.
    pub root: PathBuf,
    /// The erofs-share daemon's state directory.
    pub daemon_state_dir: PathBuf,
    /// Sharing domain of every layer mount.
    pub domain: String,
}

/// The snapshotter: state behind one lock (containerd serialises per key anyway; commits are
/// rare and short for layers).
#[derive(Debug)]
pub struct ErofsSnapshotter {
    cfg: Config,
    meta: Mutex<Metadata>,
}

impl ErofsSnapshotter {
    /// Opens (or creates) the root, loads the metadata and mounts every committed layer the
    /// daemon is not serving already (after a restart of the daemon or of the machine).
    pub fn open(cfg: Config) -> Result<Self, Error> {
        std::fs::create_dir_all(cfg.root.join("snapshots")).map_err(io(&cfg.root))?;
        let path = cfg.root.join(METADATA);
        let meta = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Metadata {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metadata::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        let s = ErofsSnapshotter {
            cfg,
            meta: Mutex::new(meta),
        };
        let mounted = s.daemon_mountpoints()?;
        let committed: Vec<u64> = s
            .lock()
            .snapshots
            .values()
            .filter(|sn| sn.kind == Kind::Committed)
            .map(|sn| sn.id)
            .collect();
        for id in committed {
            if !mounted.contains(&s.layer_dir(id)) {
                s.mount_layer(id)?;
            }
        }
        Ok(s)
    }

    fn lock(&self) -> MutexGuard<'_, Metadata> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.cfg.root.join("snapshots").join(id.to_string())
    }
    fn upper(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }
    fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }
    fn image(&self, id: u64) -> PathBuf {
        self.dir(id).join("layer.erofs")
    }
    fn layer_dir(&self, id: u64) -> PathBuf {
        self.dir(id).join("layer")
    }

    fn save(&self, meta: &Metadata) -> Result<(), Error> {
        let path = self.cfg.root.join(METADATA);
        let tmp = self.cfg.root.join(format!("{METADATA}.tmp"));
        let bytes = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        std::io::Write::write_all(&mut &f, &bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn daemon(&self, req: &Request) -> Result<control::Response, Error> {
        let err = |message: String| Error::Daemon {
            state_dir: self.cfg.daemon_state_dir.clone(),
            message,
        };
        let resp = control::request(&self.cfg.daemon_state_dir, req).map_err(|e| {
            err(format!(
                "not reachable ({e}); is `erofs-share daemon` running?"
            ))
        })?;
        if !resp.ok {
            return Err(err(resp.error.unwrap_or_default()));
        }
        Ok(resp)
    }

    fn daemon_mountpoints(&self) -> Result<Vec<PathBuf>, Error> {
        let status = self.daemon(&Request::Status)?.status.unwrap_or_default();
        Ok(status.mounts.into_iter().map(|m| m.mountpoint).collect())
    }

    fn mount_layer(&self, id: u64) -> Result<(), Error> {
        let mnt = self.layer_dir(id);
        std::fs::create_dir_all(&mnt).map_err(io(&mnt))?;
        self.daemon(&Request::Mount {
            image: self.image(id),
            mountpoint: mnt,
            domain: Some(self.cfg.domain.clone()),
            share: true,
            front: None,
            // Images from many publishers: a verified domain.
            trusted: false,
        })?;
        Ok(())
    }

    fn umount_layer(&self, id: u64) -> Result<(), Error> {
        self.daemon(&Request::Umount {
            mountpoint: self.layer_dir(id),
        })?;
        Ok(())
    }

    fn committed<'a>(&self, meta: &'a Metadata, key: &str) -> Result<&'a Snapshot, Error> {
        match meta.snapshots.get(key) {
            Some(s) if s.kind == Kind::Committed => Ok(s),
            Some(_) => Err(Error::Precondition(format!(
                "parent {key:?} is not a committed snapshot"
            ))),
            None => Err(Error::NotFound(key.to_string())),
        }
    }

    fn mounts_of(&self, meta: &Metadata, sn: &Snapshot) -> Vec<Mount> {
        let parent = (!sn.parent.is_empty())
            .then(|| meta.snapshots.get(&sn.parent).map(|p| self.layer_dir(p.id)))
            .flatten();
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let bind = |source: PathBuf, mode: &str| Mount {
            r#type: "bind".into(),
            source: path(source),
            target: String::new(),
            options: vec!["rbind".into(), mode.into()],
        };
        match (sn.kind, parent) {
            (Kind::Active, None) => vec![bind(self.upper(sn.id), "rw")],
            (Kind::Active, Some(lower)) => vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    format!("workdir={}", path(self.work(sn.id))),
                    format!("upperdir={}", path(self.upper(sn.id))),
                    format!("lowerdir={}", path(lower)),
                ],
            }],
            (Kind::View, Some(lower)) => vec![bind(lower, "ro")],
            (Kind::View, None) => vec![bind(self.upper(sn.id), "ro")],
            (Kind::Committed, _) => vec![bind(self.layer_dir(sn.id), "ro")],
        }
    }

    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let mut meta = self.lock();
        if meta.snapshots.contains_key(&key) {
            return Err(Error::AlreadyExists(key));
        }
        if !parent.is_empty() {
            self.committed(&meta, &parent)?;
        }
        let id = meta.next_id;
        meta.next_id += 1;
        for d in [self.upper(id), self.work(id)] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let now = SystemTime::now();
        let sn = Snapshot {
            id,
            kind,
            parent,
            labels,
            created_at: now,
            updated_at: now,
        };
        let mounts = self.mounts_of(&meta, &sn);
        meta.snapshots.insert(key, sn);
        self.save(&meta)?;
        Ok(mounts)
    }

    /// Commit: build the flattened image of `key`'s chain, mount it, drop the upper files.
    fn commit_sync(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let mut meta = self.lock();
        if meta.snapshots.contains_key(&name) {
            return Err(Error::AlreadyExists(name));
        }
        let sn = match meta.snapshots.get(&key) {
            Some(s) if s.kind == Kind::Active => s.clone(),
            Some(_) => {
                return Err(Error::Precondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            None => return Err(Error::NotFound(key)),
        };
        let parent = (!sn.parent.is_empty())
            .then(|| meta.snapshots.get(&sn.parent).map(|p| self.layer_dir(p.id)))
            .flatten();
        let image = self.image(sn.id);
        let built = match parent {
            None => build(&image, &self.upper(sn.id)),
            Some(lower) => {
                // The merged view applies the upper's whiteouts and opaque directories.
                let merged = self.dir(sn.id).join("merged");
                std::fs::create_dir_all(&merged).map_err(io(&merged))?;
                let opts = format!(
                    "lowerdir={}:{}",
                    self.upper(sn.id).display(),
                    lower.display()
                );
                mount_overlay_ro(&merged, &opts)?;
                let r = build(&image, &merged);
                let _ = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty());
                let _ = std::fs::remove_dir(&merged);
                r
            }
        };
        built?;
        self.mount_layer(sn.id)?;
        let id = sn.id;
        let mut committed = sn;
        committed.kind = Kind::Committed;
        committed.labels.extend(labels);
        committed.updated_at = SystemTime::now();
        meta.snapshots.remove(&key);
        meta.snapshots.insert(name, committed);
        // Saved before the unpacked files go: a crash in between leaves only waste.
        self.save(&meta)?;
        for d in [self.upper(id), self.work(id)] {
            std::fs::remove_dir_all(&d).map_err(io(&d))?;
        }
        Ok(())
    }

    fn remove_sync(&self, key: &str) -> Result<(), Error> {
        let mut meta = self.lock();
        let sn = meta
            .snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?
            .clone();
        if meta.snapshots.values().any(|s| s.parent == key) {
            return Err(Error::Precondition(format!(
                "snapshot {key:?} has children"
            )));
        }
        meta.snapshots.remove(key);
        self.save(&meta)?;
        drop(meta);
        self.discard(sn.id, sn.kind == Kind::Committed)
    }

    /// Unmounts (if a layer) and deletes snapshot `id`'s directory.
    fn discard(&self, id: u64, mounted: bool) -> Result<(), Error> {
        if mounted {
            self.umount_layer(id)?;
        }
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Cleanup: unmount and delete what no snapshot in the metadata refers to (left by a
    /// crash between the metadata change and the removal).
    fn cleanup_sync(&self) -> Result<(), Error> {
        let meta = self.lock();
        let live: Vec<u64> = meta.snapshots.values().map(|s| s.id).collect();
        let mounted = self.daemon_mountpoints()?;
        let snaps = self.cfg.root.join("snapshots");
        for e in std::fs::read_dir(&snaps).map_err(io(&snaps))? {
            let e = e.map_err(io(&snaps))?;
            let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if !live.contains(&id) {
                self.discard(id, mounted.contains(&self.layer_dir(id)))?;
            }
        }
        Ok(())
    }

    fn usage_sync(&self, key: &str) -> Result<Usage, Error> {
        let meta = self.lock();
        let sn = meta
            .snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        match sn.kind {
            Kind::Committed => {
                let image = self.image(sn.id);
                let len = std::fs::metadata(&image).map_err(io(&image))?.len();
                Ok(Usage {
                    inodes: 1,
                    size: len as i64,
                })
            }
            _ => du(&self.upper(sn.id)),
        }
    }
}

fn build(image: &Path, src: &Path) -> Result<(), Error> {
    erofs::build::build(
        image,
        erofs::build::Source::Dir(src.to_path_buf()),
        &erofs::build::Options::default(),
        &erofs::build::NoProgress,
    )
    .map(drop)
    .map_err(|cause| Error::Build {
        path: image.to_path_buf(),
        cause,
    })
}

fn mount_overlay_ro(target: &Path, opts: &str) -> Result<(), Error> {
    let data = std::ffi::CString::new(opts)
        .map_err(|_| Error::Precondition(format!("overlay options {opts:?} contain a NUL byte")))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        data.as_c_str(),
    )
    .map_err(|e| io(target)(e.into()))
}

/// Bytes and inodes under `dir` (an active snapshot's upper directory).
fn du(dir: &Path) -> Result<Usage, Error> {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let m = e.metadata().map_err(io(&e.path()))?;
            u.inodes += 1;
            u.size += (m.blocks() * 512) as i64;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(u)
}

fn info(key: &str, sn: &Snapshot) -> Info {
    Info {
        kind: match sn.kind {
            Kind::View => ApiKind::View,
            Kind::Active => ApiKind::Active,
            Kind::Committed => ApiKind::Committed,
        },
        name: key.to_string(),
        parent: sn.parent.clone(),
        labels: sn.labels.clone(),
        created_at: sn.created_at,
        updated_at: sn.updated_at,
    }
}

/// Runs blocking snapshot work off the async executor's core threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for ErofsSnapshotter {
    type Error = Error;

    async fn stat(&self, key: String) -> Result<Info, Error> {
        let meta = self.lock();
        let sn = meta
            .snapshots
            .get(&key)
            .ok_or(Error::NotFound(key.clone()))?;
        Ok(info(&key, sn))
    }

    async fn update(&self, new: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Error> {
        let mut meta = self.lock();
        let sn = meta
            .snapshots
            .get_mut(&new.name)
            .ok_or_else(|| Error::NotFound(new.name.clone()))?;
        // Only labels are mutable; no paths means all of them.
        match fieldpaths.filter(|p| !p.is_empty()) {
            None => sn.labels = new.labels,
            Some(paths) => {
                for p in paths {
                    if p == "labels" {
                        sn.labels = new.labels.clone();
                    } else if let Some(l) = p.strip_prefix("labels.") {
                        match new.labels.get(l) {
                            Some(v) => sn.labels.insert(l.to_string(), v.clone()),
                            None => sn.labels.remove(l),
                        };
                    } else {
                        return Err(Error::Precondition(format!(
                            "cannot update field {p:?} of snapshot {:?}",
                            new.name
                        )));
                    }
                }
            }
        }
        sn.updated_at = SystemTime::now();
        let out = info(&new.name, sn);
        self.save(&meta)?;
        Ok(out)
    }

    async fn usage(&self, key: String) -> Result<Usage, Error> {
        blocking(|| self.usage_sync(&key))
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Error> {
        let meta = self.lock();
        let sn = meta
            .snapshots
            .get(&key)
            .ok_or(Error::NotFound(key.clone()))?;
        Ok(self.mounts_of(&meta, sn))
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        blocking(|| self.create(Kind::Active, key, parent, labels))
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        blocking(|| self.create(Kind::View, key, parent, labels))
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        blocking(|| self.commit_sync(name, key, labels))
    }

    async fn remove(&self, key: String) -> Result<(), Error> {
        blocking(|| self.remove_sync(&key))
    }

    async fn clear(&self) -> Result<(), Error> {
        blocking(|| self.cleanup_sync())
    }

    type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<Info, Error>>>;

    async fn list(
        &self,
        _snapshotter: String,
        _filters: Vec<String>,
    ) -> Result<Self::InfoStream, Error> {
        // containerd's metadata store filters; the proxy lists everything.
        let meta = self.lock();
        let all: Vec<_> = meta.snapshots.iter().map(|(k, s)| Ok(info(k, s))).collect();
        Ok(futures::stream::iter(all))
    }
}

/// Serves `snapshotter` on the unix socket `address` until SIGINT or SIGTERM.
pub async fn serve(snapshotter: Arc<ErofsSnapshotter>, address: &Path) -> Result<(), Error> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    match std::fs::remove_file(address) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(address)(e)),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(address).map_err(io(address))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let r = tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(snapshotter))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(address);
    r.map_err(|e| Error::Io {
        path: address.to_path_buf(),
        cause: std::io::Error::other(e),
    })
}
