//! Host operations the benchmarks and the tests share: mounting an image with the kernel's
//! erofs driver (the baseline every benchmark compares against) and dropping caches.

pub mod loop_mount;

pub use loop_mount::{LoopMount, LoopMountError};

/// Writes back dirty data, then drops clean page cache, dentries and inodes (root only).
pub fn drop_caches() -> std::io::Result<()> {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
}
