//! The erofs-share daemon: images mounted so that, inside a domain, identical files share one
//! page cache through the domain's internal dedup mount (see DESIGN.md).
//!
//! - [`front`]: how an image is mounted: the overlay front ([`front::overlay`]: kernel
//!   overlayfs over a metadata image, data from the dedup mount) and the FUSE front
//!   ([`front::fuse`]: the daemon serves every request).
//! - [`domain`]: sharing domains and the length-prefixed sharing key.
//! - [`dedup`]: dedup objects, one per (domain, fingerprint), and their sources.
//! - [`dedup_fs`]: a domain's internal dedup mount, where shared page cache lives.
//! - [`fingerprints`]: fingerprints computed for files that have none, cached per image.
//! - [`source`]: image files read with `O_DIRECT`, never cached twice.
//! - [`daemon`]: the registry of mounts and domains.
//! - [`service`]: the daemon as a process: state directory, control socket, signals.
//! - [`control`]: the control socket's JSON protocol.
//! - [`takeover`]: handing the mounts to a successor daemon.
//! - [`fuse_mount`], [`mounts`], [`page_cache`]: mounting FUSE filesystems, the mount table,
//!   page-cache residency.

pub mod control;
pub mod daemon;
pub mod dedup;
pub mod dedup_fs;
pub mod domain;
pub mod fingerprints;
pub mod front;
pub mod fuse_mount;
pub mod mounts;
pub mod page_cache;
pub mod service;
pub mod source;
pub mod takeover;

pub use daemon::{DEFAULT_CACHE_DIR, DEFAULT_STATE_DIR, default_cache_dir};
pub use service::run;
