//! One module per subcommand: argument struct and `run`.

pub mod analyze;
pub mod bench;
pub mod bench_plot;
pub mod bench_runtime;
pub mod bench_speed;
pub mod completions;
pub mod daemon;
pub mod demo;
pub mod drop_caches;
pub mod extract;
pub mod fsck;
pub mod inspect;
pub mod mkfs;
pub mod mount;
pub mod progress;
pub mod snapshotter;
pub mod status;
pub mod stop;
pub mod umount;

/// True when this process runs as root (what mounting, cgroups and drop_caches need).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
