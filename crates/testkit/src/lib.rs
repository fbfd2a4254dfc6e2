//! Test support shared by every crate of the workspace.
//!
//! - [`gate`]: the one place that decides whether a privileged test (root, loop devices,
//!   FUSE, the shared test vectors) runs, skips with a printed reason, or fails because
//!   `EROFS_SHARE_REQUIRE_PRIVILEGED=1` says it must run.
//! - [`testdata`]: the upstream mkfs.erofs 1.9.3 vectors in `../shared`.
//! - [`LoopMount`] and [`drop_caches`]: the host operations of `erofs-share-host`, which the
//!   benchmarks use too, re-exported.
//! - [`manifest`]: what a tree looks like (the JSON form of the vectors' manifests), and diffs.

pub mod gate;
pub mod manifest;
pub mod testdata;

pub use erofs_share_host::{LoopMount, drop_caches};
pub use gate::{Need, require};
