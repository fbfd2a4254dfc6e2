//! Host operations the benchmarks and the tests share: mounting an image with the kernel's
//! erofs driver (the baseline every benchmark compares against) and dropping caches.

pub mod loop_mount;

pub use loop_mount::{LoopMount, LoopMountError};

/// `Cached:` of /proc/meminfo, in bytes: the page cache of the whole host.
pub fn meminfo_cached() -> std::io::Result<u64> {
    let m = std::fs::read_to_string("/proc/meminfo")?;
    m.lines()
        .find_map(|l| l.strip_prefix("Cached:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other("/proc/meminfo has no Cached: line"))
}

/// Writes back dirty data, then drops clean page cache, dentries and inodes (root only).
pub fn drop_caches() -> std::io::Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}
