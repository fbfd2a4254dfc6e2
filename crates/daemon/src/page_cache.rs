//! How much of a file is in the page cache (`status`, benchmarks and tests).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

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
