//! `erofs-share bench memory`: what sharing saves, measured.
//!
//! For a set of images, in one run: drop caches, mount every image (kernel erofs over a
//! `--direct-io=on` loop device / erofs-share `--no-share` / erofs-share in one domain), read
//! every regular file of every mount (cold), read it all again (warm), and record how much
//! the page cache grew. The "ideal" row is the page-rounded size of the distinct file
//! contents. The daemon runs in this process (same code as `erofs-share daemon`), with a
//! private state directory.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::daemon::{Daemon, cached_bytes, detach};

const PAGE: u64 = 4096;

/// One measured setup.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was mounted.
    pub setup: String,
    /// Page cache the setup gained over the cold read, by cachestat(2) on everything it can
    /// cache in: every file and directory of its mounts, plus the loop devices (kernel
    /// metadata) or the dedup files (erofs-share). Exact, and blind to other activity.
    pub cache_growth: u64,
    /// Growth of `Cached:` in /proc/meminfo over the cold read: the same, plus whatever else
    /// the host did meanwhile (noisy on a busy host).
    pub meminfo_growth: u64,
    /// Bytes of file content read per pass.
    pub bytes_read: u64,
    /// First read of everything after dropping caches.
    pub cold: Duration,
    /// Second read of everything.
    pub warm: Duration,
}

/// The whole benchmark.
#[derive(Debug, Clone)]
pub struct Report {
    /// The images, in order.
    pub images: Vec<PathBuf>,
    /// Measured setups.
    pub rows: Vec<Row>,
    /// Page-rounded size of the distinct file contents of all images.
    pub ideal: u64,
    /// Page-rounded size of all file contents (one copy per image).
    pub total_content: u64,
    /// Bytes of each image file left in the page cache after the run.
    pub images_cached_after: Vec<u64>,
}

fn meminfo_cached() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cached:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn drop_caches() -> Result<(), String> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop caches: {e}"))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every regular file under `root` (no symlinks followed); directories too with `dirs`.
fn walk(root: &Path, dirs: bool, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if dirs {
        out.push(root.to_path_buf());
    }
    let rd = fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("{}: {e}", root.display()))?;
        let ft = e.file_type().map_err(|e| format!("{}: {e}", e))?;
        if ft.is_dir() {
            walk(&e.path(), dirs, out)?;
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Reads every regular file under each root; returns the bytes read.
fn read_everything(roots: &[PathBuf]) -> Result<u64, String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for r in roots {
        let mut files = Vec::new();
        walk(r, false, &mut files)?;
        for f in files {
            let mut file = fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| format!("{}: {e}", f.display()))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
    }
    Ok(total)
}

/// Page cache of every file and directory under `roots`, plus the `extra` files.
fn setup_cached(roots: &[PathBuf], extra: &[PathBuf]) -> u64 {
    let mut files = extra.to_vec();
    for r in roots {
        let _ = walk(r, true, &mut files);
    }
    files.iter().map(|f| cached_bytes(f).unwrap_or(0)).sum()
}

/// Page-rounded size of the distinct contents (fingerprint, else SHA-256) and of all
/// contents, over every regular file of `images`.
pub fn content_sizes(images: &[PathBuf]) -> Result<(u64, u64), String> {
    let mut seen: HashSet<(Vec<u8>, u64)> = HashSet::new();
    let (mut unique, mut total) = (0, 0);
    for path in images {
        let img = erofs::Image::open(path).map_err(|e| e.to_string())?;
        let mut err = None;
        let mut nids = HashSet::new();
        erofs::walk::walk(&img, |v| {
            match v {
                erofs::walk::Visit::Inode { inode, .. }
                    if inode.file_type() == erofs::FileType::Reg && nids.insert(inode.nid) =>
                {
                    let rounded = inode.size.div_ceil(PAGE) * PAGE;
                    total += rounded;
                    let key = match img.fingerprint(inode) {
                        Ok(Some(fp)) => fp,
                        _ => {
                            let mut h = Sha256::new();
                            let mut off = 0u64;
                            let mut buf = vec![0u8; 1 << 20];
                            while off < inode.size {
                                match img.read_at(inode, off, &mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        h.update(&buf[..n]);
                                        off += n as u64;
                                    }
                                    Err(e) => {
                                        err = Some(e.to_string());
                                        break;
                                    }
                                }
                            }
                            h.finalize().to_vec()
                        }
                    };
                    if seen.insert((key, inode.size)) {
                        unique += rounded;
                    }
                }
                erofs::walk::Visit::Problem { path, error } => {
                    err = Some(format!("{}: {error}", String::from_utf8_lossy(path)))
                }
                _ => {}
            }
            std::ops::ControlFlow::Continue(())
        });
        if let Some(e) = err {
            return Err(format!("{}: {e}", path.display()));
        }
    }
    Ok((unique, total))
}

/// Measures a setup `runs` times and keeps the most faithful figures: on a shared host other
/// processes only ever add time, and only ever take page cache away (their drop_caches), so
/// the shortest times and the largest cache growth are kept; meminfo's growth is the median.
fn measure(
    setup: &str,
    roots: &[PathBuf],
    extra: impl Fn() -> Vec<PathBuf>,
    runs: usize,
) -> Result<Row, String> {
    let mut all = Vec::new();
    for _ in 0..runs.max(1) {
        all.push(measure_once(setup, roots, &extra)?);
    }
    let mut mem: Vec<u64> = all.iter().map(|r| r.meminfo_growth).collect();
    mem.sort_unstable();
    Ok(Row {
        setup: setup.to_string(),
        cache_growth: all.iter().map(|r| r.cache_growth).max().unwrap_or(0),
        meminfo_growth: mem[mem.len() / 2],
        bytes_read: all[0].bytes_read,
        cold: all.iter().map(|r| r.cold).min().unwrap_or_default(),
        warm: all.iter().map(|r| r.warm).min().unwrap_or_default(),
    })
}

fn measure_once(
    setup: &str,
    roots: &[PathBuf],
    extra: &impl Fn() -> Vec<PathBuf>,
) -> Result<Row, String> {
    drop_caches()?;
    std::thread::sleep(Duration::from_millis(200));
    let cached_before = setup_cached(roots, &extra());
    let before = meminfo_cached();
    let t = Instant::now();
    let bytes_read = read_everything(roots)?;
    let cold = t.elapsed();
    let after = meminfo_cached();
    let cached_after = setup_cached(roots, &extra());
    let t = Instant::now();
    read_everything(roots)?;
    let warm = t.elapsed();
    Ok(Row {
        setup: setup.to_string(),
        cache_growth: cached_after.saturating_sub(cached_before),
        meminfo_growth: after.saturating_sub(before),
        bytes_read,
        cold,
        warm,
    })
}

struct KernelMounts {
    mounts: Vec<(PathBuf, String)>,
}

impl Drop for KernelMounts {
    fn drop(&mut self) {
        for (mp, dev) in self.mounts.drain(..) {
            let _ = run(Command::new("umount").arg(&mp));
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
        }
    }
}

/// Runs the benchmark on `images`, mounting under `work` (an empty scratch directory); each
/// setup is measured `runs` times (see [`measure`]).
pub fn run_memory(images: &[PathBuf], work: &Path, runs: usize) -> Result<Report, String> {
    if images.is_empty() {
        return Err("no images given".into());
    }
    let (ideal, total_content) = content_sizes(images)?;
    let mut rows = Vec::new();
    let mps = |tag: &str| -> Result<Vec<PathBuf>, String> {
        (0..images.len())
            .map(|i| {
                let p = work.join(format!("{tag}-{i}"));
                fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(p)
            })
            .collect()
    };

    // Kernel erofs, one direct-I/O loop device per image, no sharing.
    {
        let roots = mps("kernel")?;
        let mut km = KernelMounts { mounts: Vec::new() };
        for (img, mp) in images.iter().zip(&roots) {
            let dev = run(Command::new("losetup")
                .args(["--direct-io=on", "--read-only", "--find", "--show"])
                .arg(img))?;
            km.mounts.push((mp.clone(), dev.clone()));
            run(Command::new("mount")
                .args(["-t", "erofs", "-o", "ro"])
                .arg(&dev)
                .arg(mp))
            .inspect_err(|_| {
                km.mounts.pop();
                let _ = run(Command::new("losetup").arg("-d").arg(&dev));
            })?;
        }
        let devs: Vec<PathBuf> = km.mounts.iter().map(|(_, d)| PathBuf::from(d)).collect();
        rows.push(measure(
            "kernel erofs, loop --direct-io=on, no sharing",
            &roots,
            || devs.clone(),
            runs,
        )?);
    }

    let state = work.join("state");
    let daemon = Daemon::new(state.clone());
    let result = (|| -> Result<(), String> {
        for (setup, tag, domain, share) in [
            ("erofs-share --no-share", "noshare", None, false),
            ("erofs-share, one domain", "shared", Some("bench"), true),
        ] {
            let roots = mps(tag)?;
            for (img, mp) in images.iter().zip(&roots) {
                let img = img
                    .canonicalize()
                    .map_err(|e| format!("{}: {e}", img.display()))?;
                let m = daemon.mount(&img, mp, domain.map(String::from), share)?;
                if share && let Some(why) = m.unshared_reason {
                    return Err(format!("{}: not shared: {why}", img.display()));
                }
            }
            let d = daemon.clone();
            rows.push(measure(
                setup,
                &roots,
                move || {
                    let mut files = Vec::new();
                    for dom in d.status().domains {
                        let _ = walk(&dom.dedup_mountpoint, false, &mut files);
                    }
                    files
                },
                runs,
            )?);
            for mp in &roots {
                daemon.umount(mp)?;
            }
        }
        Ok(())
    })();
    daemon.shutdown(Duration::from_secs(5));
    result?;

    let images_cached_after = images
        .iter()
        .map(|i| cached_bytes(i).unwrap_or(0))
        .collect();
    Ok(Report {
        images: images.to_vec(),
        rows,
        ideal,
        total_content,
        images_cached_after,
    })
}

/// Leaves nothing mounted under `work` (after a failure).
pub fn cleanup(work: &Path) {
    for m in crate::daemon::our_mounts("") {
        if m.starts_with(work) {
            let _ = detach(&m);
        }
    }
}
