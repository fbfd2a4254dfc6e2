//! How much page cache reading every file of some trees adds, measured in a memory cgroup of
//! its own (the host is shared: the global `Cached` figure moves with everyone's work).
//!
//! The reader is `find DIR… -type f -exec cat {} +` in a fresh cgroup. It first loads its own
//! programs (`find`, `cat`) and stops itself; the sample taken then is the baseline, so only
//! what reading the trees adds is counted: file pages, and for kernel mounts the image's
//! metadata pages.

use crate::container::{CgroupTree, ContainerError};
use rustix::process::{Pid, Signal, kill_process};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a read of everything may take.
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// Measuring failed.
#[derive(Debug, thiserror::Error)]
pub enum PageCacheError {
    #[error(transparent)]
    Cgroup(#[from] ContainerError),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("reading every file under {dirs}: {why}")]
    Reader { dirs: String, why: String },
    #[error("dropping the mounts' own caches: {0}")]
    OwnCaches(String),
    #[error("interrupted")]
    Interrupted,
}

fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T')))
}

/// How often someone may drop the caches under a measurement before we give up.
const ATTEMPTS: usize = 5;

/// How many times `drop_caches` was written since boot (`/proc/vmstat`): page cache drops
/// and slab drops (evicting an inode frees its page cache too).
pub fn drops() -> Result<u64, PageCacheError> {
    let s = std::fs::read_to_string("/proc/vmstat").map_err(|source| PageCacheError::Io {
        what: "/proc/vmstat".into(),
        cause: source,
    })?;
    Ok(s.lines()
        .filter_map(|l| {
            l.strip_prefix("drop_pagecache ")
                .or_else(|| l.strip_prefix("drop_slab "))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum())
}

/// The page cache growth of [`reading`] `dirs`, in bytes.
pub fn growth_of_reading(dirs: &[&Path]) -> Result<u64, PageCacheError> {
    reading(dirs).map(|r| r.growth)
}

/// One cold read of everything, measured by [`reading`].
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Page cache charged to the reader's cgroup (bytes).
    pub growth: u64,
    /// Growth of the system-wide `Cached:` (/proc/meminfo) meanwhile: the same plus whatever
    /// else the host did.
    pub meminfo_growth: u64,
    /// How long the read took (after the reader loaded its own programs).
    pub elapsed: Duration,
}

/// Drops the page cache, then reads every regular file under `dirs` and measures how many
/// bytes of page cache that charged, how long it took and the system-wide figure (root).
/// Another process dropping caches meanwhile would make the figure too small: such a run is
/// detected ([`drops`]) and repeated.
pub fn reading(dirs: &[&Path]) -> Result<Reading, PageCacheError> {
    reading_after(dirs, &|| Ok(()))
}

/// [`reading`], with `drop_own` dropping what the mounts cache besides the page cache (see
/// [`crate::runtime::Mounted::drop_own_caches`]) each time the page cache is dropped.
pub fn reading_after(
    dirs: &[&Path],
    drop_own: &dyn Fn() -> Result<(), String>,
) -> Result<Reading, PageCacheError> {
    for _ in 0..ATTEMPTS {
        erofs_share_host::drop_caches().map_err(|source| PageCacheError::Io {
            what: "dropping caches".into(),
            cause: source,
        })?;
        drop_own().map_err(PageCacheError::OwnCaches)?;
        let before = drops()?;
        let reading = read_once(dirs)?;
        if drops()? == before {
            return Ok(reading);
        }
    }
    Err(PageCacheError::Reader {
        dirs: format!("{dirs:?}"),
        why: format!("someone else dropped the caches during each of {ATTEMPTS} attempts"),
    })
}

fn read_once(dirs: &[&Path]) -> Result<Reading, PageCacheError> {
    let tree = CgroupTree::create()?;
    let cg = tree.child("reader")?;
    let list = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>();
    let quoted: Vec<String> = list
        .iter()
        .map(|d| format!("'{}'", d.replace('\'', "'\\''")))
        .collect();
    let reader_err = |why: String| PageCacheError::Reader {
        dirs: list.join(" "),
        why,
    };
    let script = format!(
        "echo $$ > '{}' && find /dev/null -exec cat {{}} + && kill -STOP $$ && \
         exec find {} -type f -exec cat {{}} + > /dev/null",
        cg.procs_file().display(),
        quoted.join(" ")
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| PageCacheError::Io {
            what: "starting sh".into(),
            cause: source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopped(child.id()) {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(reader_err(format!("the reader exited early ({st})")));
        }
        if Instant::now() >= deadline || crate::interrupt::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(reader_err("the reader never got ready".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = cg.memory()?.file;
    let meminfo_before = meminfo_cached();
    let start = Instant::now();
    // The pid is our live (stopped, unreaped) child, so it cannot have been reused.
    if let Err(e) = kill_process(Pid::from_child(&child), Signal::CONT) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(PageCacheError::Io {
            what: "resuming the reader (SIGCONT)".into(),
            cause: e.into(),
        });
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(source) => {
                return Err(PageCacheError::Io {
                    what: "waiting for the reader".into(),
                    cause: source,
                });
            }
        }
        if crate::interrupt::interrupted() || Instant::now() >= deadline {
            // Dropping `cg` kills it; reap here.
            let _ = child.kill();
            let _ = child.wait();
            return Err(if crate::interrupt::interrupted() {
                PageCacheError::Interrupted
            } else {
                reader_err(format!("not done after {} s", READ_TIMEOUT.as_secs()))
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = start.elapsed();
    let meminfo_growth = meminfo_cached().saturating_sub(meminfo_before);
    if !status.success() {
        return Err(reader_err(format!("find/cat failed ({status})")));
    }
    Ok(Reading {
        growth: cg.memory()?.file.saturating_sub(before),
        meminfo_growth,
        elapsed,
    })
}

/// `Cached:` of /proc/meminfo, in bytes (0 if unreadable: it is only shown for context).
fn meminfo_cached() -> u64 {
    erofs_share_host::meminfo_cached().unwrap_or(0)
}

/// Mount `images` with `mounter`, read everything (see [`growth_of_reading`]), unmount.
pub fn growth_with(
    mounter: &dyn crate::runtime::Mounter,
    images: &[std::path::PathBuf],
) -> Result<u64, PageCacheError> {
    let mounted = mounter
        .mount(images)
        .map_err(|why| PageCacheError::Reader {
            dirs: mounter.label(),
            why: format!("mounting: {why}"),
        })?;
    let roots = mounted.roots();
    let dirs: Vec<&Path> = roots.iter().map(|r| r.as_path()).collect();
    growth_of_reading(&dirs)
}
