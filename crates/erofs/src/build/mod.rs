//! mkfs: build an uncompressed EROFS image from a directory or a tar stream.
//!
//! The image is written in one pass over the content, in this order:
//! ```text
//! block 0..  superblock at byte 1024, then the long xattr prefix table (fingerprints)
//! data area  regular file blocks (streamed as files are read), then directory and
//!            symlink blocks that are not inlined
//! metadata   meta_blkaddr = xattr_blkaddr: shared xattrs, then the inodes (root first),
//!            each with its xattrs and inline tail; nids count from meta_blkaddr
//! ```
//! File data goes through one function, [`file_data::store`]: the place to add compression.
//! The output is written to a temporary file beside the destination and renamed over it only
//! when the image is complete, so a failed build never clobbers an existing image.

pub mod acl;
pub(crate) mod chunks;
pub mod compress;
pub mod exclude;
pub(crate) mod file_data;
pub(crate) mod from_dir;
pub(crate) mod from_tar;
pub(crate) mod layout;
pub mod meta;
pub mod oci;
pub(crate) mod tar;
pub(crate) mod tree;
pub(crate) mod write;
pub(crate) mod xattrs;

use crate::fingerprint::XattrName;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use compress::Compression;
pub use exclude::Pattern;

/// What a build failed on.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("writing the image: {0}")]
    Write(std::io::Error),
    #[error("tar input at byte {offset}: {msg}")]
    Tar { offset: u64, msg: String },
    #[error("source: {0}")]
    Source(String),
    #[error("OCI input: {0}")]
    Oci(String),
    #[error("invalid option: {0}")]
    Option(String),
    #[error("too many {0} for the EROFS format")]
    TooMany(&'static str),
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |cause| BuildError::Io { path, cause }
    }
}

/// How to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Block size in bytes: a power of two from 512 to 65536.
    pub block_size: u32,
    /// The fingerprint xattr name, or `None` for no fingerprints.
    pub fingerprint: Option<XattrName>,
    /// Inline the tails of files, directories and symlinks after their inodes.
    pub inline: bool,
    /// Build time in seconds since 1970: the mtime of directories a tar implies without a
    /// header of their own (file mtimes are kept as they are).
    pub build_time: u64,
    /// Volume uuid.
    pub uuid: [u8; 16],
    /// Paths to leave out (see [`Pattern`]).
    pub exclude: Vec<Pattern>,
    /// Owner for every inode, if set.
    pub uid: Option<u32>,
    /// Group for every inode, if set.
    pub gid: Option<u32>,
    /// Tar input is an OCI layer: convert `.wh.NAME` and `.wh..wh..opq` whiteouts to the
    /// overlayfs form.
    pub oci_layer: bool,
    /// Compress regular files, if set.
    pub compression: Option<Compression>,
    /// Long xattr name prefixes besides the fingerprint's: an xattr whose name starts with one
    /// is stored as the rest of its name (e.g. `trusted.overlay.redirect` on every file of a
    /// metadata image costs its value alone).
    pub long_prefixes: Vec<XattrName>,
    /// The kernel that reads the image shows compact inodes' own mtimes (Linux 6.15+), so any
    /// inode whose mtime is within 2^32 s after the epoch (at its nanoseconds) can be compact.
    /// Older kernels show the epoch for every compact inode: leave this off for them.
    pub compact_mtimes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_size: 4096,
            fingerprint: Some(XattrName::default()),
            inline: true,
            build_time: 0,
            uuid: [0; 16],
            exclude: Vec::new(),
            uid: None,
            gid: None,
            oci_layer: false,
            compression: None,
            long_prefixes: Vec::new(),
            compact_mtimes: false,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<u8, BuildError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(BuildError::Option(format!(
                "block size {bs} is not a power of two from 512 to 65536"
            )));
        }
        if let Some(fp) = &self.fingerprint
            && fp.infix.is_empty()
        {
            return Err(BuildError::Option(format!(
                "fingerprint xattr name {:?} has nothing after its prefix",
                fp.full
            )));
        }
        if let Some(p) = self.long_prefixes.iter().find(|p| p.infix.is_empty()) {
            return Err(BuildError::Option(format!(
                "long xattr prefix {:?} has nothing after its built-in prefix",
                p.full
            )));
        }
        if self.long_prefixes.len() + 1 > 0x7f {
            return Err(BuildError::TooMany("long xattr prefixes"));
        }
        Ok(bs.trailing_zeros() as u8)
    }

    /// Every long xattr prefix with its table id: the fingerprint's first, then
    /// [`Options::long_prefixes`].
    pub(crate) fn prefix_table(&self) -> Vec<xattrs::LongPrefix> {
        self.fingerprint
            .iter()
            .chain(&self.long_prefixes)
            .enumerate()
            .map(|(id, name)| xattrs::LongPrefix {
                id: id as u8,
                name: name.clone(),
            })
            .collect()
    }
}

/// Where the tree comes from.
pub enum Source {
    /// A directory on a local filesystem.
    Dir(PathBuf),
    /// A tar stream (plain, gzip or zstd; detected by magic).
    Tar(Box<dyn Read + Send>),
    /// An OCI image: all its layers flattened (`layer: None`), whiteouts applied, or one
    /// layer with its whiteouts in the overlayfs form. The root records the image's
    /// provenance in [`oci::PROVENANCE_XATTR`].
    Oci {
        image: std::sync::Arc<oci::Image>,
        layer: Option<usize>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(p) => write!(f, "Dir({})", p.display()),
            Source::Tar(_) => f.write_str("Tar(..)"),
            Source::Oci { image, layer } => write!(f, "Oci({:?}, layer {layer:?})", image.kind),
        }
    }
}

/// How a long job reports how far it got: a build counts content bytes, a check, an
/// extraction or a scan counts inodes (out of the superblock's count). No-ops by default.
pub trait Progress: Sync {
    /// Total units, when known in advance (directory input, an image's inode count).
    fn set_total(&self, _units: u64) {}
    /// Units done since the last call.
    fn advance(&self, _units: u64) {}
}

/// Progress that reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// What a build produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub inodes: u64,
    pub blocks: u64,
    pub image_bytes: u64,
    pub content_bytes: u64,
    pub fingerprints: u64,
    pub shared_xattrs: u64,
}

/// The image file while it is written: the data area grows block by block.
#[derive(Debug)]
pub struct ImageFile {
    pub(crate) file: File,
    pub(crate) blkszbits: u8,
    /// Whole-file dedupe (compressed builds): content digest and size → where it went.
    pub(crate) dedupe: Option<std::sync::Mutex<compress::Seen>>,
    /// Fragments (compressed builds): the packed inode's content so far.
    pub(crate) packed: Option<std::sync::Mutex<Vec<u8>>>,
    /// Compressed builds: big files' compressed blocks until their turn.
    pub(crate) spool: compress::Spool,
    /// Next free block of the data area. Atomic so that readers storing content in parallel
    /// can share the image while one thread reserves blocks in a fixed order.
    pub(crate) next_block: AtomicU64,
}

impl ImageFile {
    pub(crate) fn block_size(&self) -> u64 {
        1 << self.blkszbits
    }

    /// Reserve `n` consecutive blocks of the data area.
    pub(crate) fn alloc(&self, n: u64) -> u64 {
        self.next_block.fetch_add(n, Ordering::Relaxed)
    }

    /// The first block not reserved yet.
    pub(crate) fn end_block(&self) -> u64 {
        self.next_block.load(Ordering::Relaxed)
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BuildError> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(buf, offset)
            .map_err(BuildError::Write)
    }
}

/// Build `dst` from `source`. The image appears at `dst` only when complete.
pub fn build(
    dst: &Path,
    source: Source,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary, BuildError> {
    build_with(dst, opts, |img| match source {
        Source::Dir(path) => from_dir::read(&path, opts, img, progress),
        Source::Tar(reader) => from_tar::read(reader, opts, img, progress),
        Source::Oci { image, layer } => {
            let (range, mode) = match layer {
                Some(i) if i < image.layers.len() => (i..i + 1, from_tar::Whiteouts::Overlay),
                Some(i) => {
                    return Err(BuildError::Option(format!(
                        "layer {} of an image with {}",
                        i + 1,
                        image.layers.len()
                    )));
                }
                None => (0..image.layers.len(), from_tar::Whiteouts::Apply),
            };
            let open = |i: usize| {
                Ok(from_tar::Layer {
                    label: Some(image.layer_label(i)),
                    input: image.layer(i)?,
                })
            };
            let mut tree = if mode == from_tar::Whiteouts::Apply {
                from_tar::flatten(image.layers.len(), &open, opts, img, progress)?
            } else {
                let pass = from_tar::Pass::Store;
                from_tar::read_layers(range.map(open), mode, pass, opts, img, progress)?.0
            };
            tree.nodes[0].xattrs.insert(
                oci::PROVENANCE_XATTR.as_bytes().to_vec(),
                image.provenance(layer),
            );
            Ok(tree)
        }
    })
}

/// Build `dst` from the tree `make_tree` reads (storing file content into the image it is
/// given as it goes). The image appears at `dst` only when complete.
pub(crate) fn build_with(
    dst: &Path,
    opts: &Options,
    make_tree: impl FnOnce(&ImageFile) -> Result<tree::Tree, BuildError>,
) -> Result<Summary, BuildError> {
    let blkszbits = opts.validate()?;
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Created 0666 less the umask, applied by the kernel (tempfile's default is 0600): an
    // image is as readable as any file the user creates. Reading the umask instead would mean
    // setting it, a process-wide race inside a library call.
    let tmp = tempfile::Builder::new()
        .prefix(".erofs-share-mkfs-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(&parent)
        .map_err(|e| BuildError::io(&parent)(without_temp_path(e, &parent)))?;
    let file = tmp.as_file().try_clone().map_err(BuildError::Write)?;
    let first_data_block = layout::first_data_block(blkszbits, opts);
    let mut img = ImageFile {
        file,
        blkszbits,
        dedupe: opts
            .compression
            .as_ref()
            .filter(|c| c.dedupe)
            .map(|_| Default::default()),
        packed: opts
            .compression
            .as_ref()
            .filter(|c| c.fragments)
            .map(|_| Default::default()),
        spool: compress::Spool::new(parent.clone()),
        next_block: AtomicU64::new(first_data_block),
    };
    let mut tree = make_tree(&img)?;
    if opts.uid.is_some() || opts.gid.is_some() {
        for n in &mut tree.nodes {
            n.uid = opts.uid.unwrap_or(n.uid);
            n.gid = opts.gid.unwrap_or(n.gid);
        }
    }
    if let Some(c) = &opts.compression {
        compress::store_packed(&mut tree, opts, c, &img)?;
    }
    tree.count_links()?;
    let summary = write::image(&tree, opts, &mut img)?;
    tracing::debug!("wrote the metadata");
    // No fsync, like mkfs.erofs: the rename protects the destination from failed builds;
    // callers that need durability sync the image themselves.
    // The caller names `dst` (its context says what is built): not named again here.
    tmp.persist(dst).map_err(|e| BuildError::Write(e.error))?;
    Ok(summary)
}

/// tempfile's errors end in "at path <the temporary file>" and hide the OS error inside: the
/// build names the directory, so the error is the directory's own (or, failing that, its kind).
fn without_temp_path(e: std::io::Error, dir: &Path) -> std::io::Error {
    match std::fs::metadata(dir) {
        Err(direct) => direct,
        // The OS error's own words ("Read-only file system (os error 30)"), not the kind's:
        // tempfile only has them in its message, before " at path <temporary file>".
        Ok(_) => {
            let msg = e.to_string();
            match msg.rsplit_once(" at path ") {
                Some((os, _)) => std::io::Error::new(e.kind(), os.to_string()),
                None => e.kind().into(),
            }
        }
    }
}
