//! Test support shared by every crate of the workspace.
//!
//! - [`gate`]: the one place that decides whether a test that needs something of the machine
//!   (root, loop devices, FUSE, a program) runs, skips with a reported reason, or fails because
//!   `EROFS_SHARE_REQUIRE_PRIVILEGED=1` says it must run.
//! - [`testdata`]: the upstream mkfs.erofs 1.9.3 vectors, checked in under `testdata/` and
//!   unpacked on first use.
//! - [`LoopMount`], [`drop_caches`] and [`meminfo_cached`]: the host operations of
//!   `erofs-share-host`, which the benchmarks use too, re-exported.
//! - [`manifest`]: what a tree looks like (the JSON form of the vectors' manifests), and diffs.
//! - [`Rng`]: seeded pseudo-random numbers for generated cases.

pub mod gate;
pub mod manifest;
pub mod rng;
pub mod testdata;

pub use erofs_share_host::{LoopMount, drop_caches, meminfo_cached};
pub use gate::{Need, require};
pub use rng::Rng;
