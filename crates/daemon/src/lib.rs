//! The erofs-share daemon: per-image FUSE mounts whose identical files share one page cache
//! per domain through an internal dedup mount (see DESIGN.md, "Data flow").
//!
//! - [`domain`]: sharing domains and the length-prefixed sharing key.
//! - [`dedup`]: dedup objects, one per (domain, fingerprint), and their sources.
//! - [`dedup_fs`]: a domain's internal dedup mount, where shared page cache lives.
//! - [`fingerprints`]: fingerprints computed for files that have none, cached per image.
//! - [`image_fs`]: the per-image mount; shared files pass through to the dedup mount.
//! - [`source`]: image files read with `O_DIRECT`, never cached twice.
//! - [`control`]: the control socket and its JSON protocol.
//! - [`daemon`]: the registry of mounts and domains and the foreground main loop.

pub mod control;
pub mod daemon;
pub mod dedup;
pub mod dedup_fs;
pub mod domain;
pub mod fingerprints;
pub mod image_fs;
pub mod overlay;
pub mod source;

pub use daemon::{DEFAULT_STATE_DIR, run};
