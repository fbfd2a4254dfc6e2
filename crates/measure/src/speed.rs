//! Speed benchmarks against the reference tools, each side measured in the same run:
//! [`mkfs`] times `erofs-share mkfs` against Debian's `mkfs.erofs` on one directory
//! (alternating runs, page cache warm), and [`read`] times reading every file of an image
//! through this crate's reader against the kernel reading it from a direct-I/O loop mount,
//! caches dropped before each run.

use erofs::Image;
use erofs::inode::FileType;
use erofs::walk::{Problem, try_walk};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// A benchmark that could not run.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{0}")]
    Tool(String),
    #[error("mounting {image} with the kernel: {cause}")]
    KernelMount {
        image: String,
        cause: erofs_share_host::LoopMountError,
    },
    #[error("{cause}")]
    Image { image: String, cause: erofs::Error },
}

impl From<Problem> for SpeedError {
    fn from(p: Problem) -> Self {
        SpeedError::Image {
            image: String::from_utf8_lossy(&p.path).into_owned(),
            cause: p.error,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpeedError {
    let what = what.into();
    move |source| SpeedError::Io {
        what,
        cause: source,
    }
}

/// Median of a sample (seconds); 0 for none.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One tool's runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolRuns {
    pub tool: String,
    pub seconds: Vec<f64>,
    pub median_s: f64,
    pub image_bytes: u64,
}

/// `bench mkfs` result: ours, and the reference when it could build the same image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MkfsReport {
    pub source: PathBuf,
    pub compression: Option<String>,
    pub ours: ToolRuns,
    pub reference: Option<ToolRuns>,
    /// Why the reference is missing, when it is.
    pub reference_note: Option<String>,
}

fn timed(cmd: &mut Command) -> Result<f64, SpeedError> {
    // Write back what the previous run left dirty, so no run pays for another's image.
    rustix::fs::sync();
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(io(format!("run {:?}", cmd.get_program())))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(SpeedError::Tool(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(secs)
}

/// Debian `mkfs.erofs` spelling of our `-z ALG[,level=N]`.
fn reference_compression(spec: &str) -> String {
    let mut parts = spec.split(',');
    let alg = parts.next().unwrap_or_default();
    match parts.find_map(|p| p.strip_prefix("level=")) {
        Some(level) => format!("-z{alg},{level}"),
        None => format!("-z{alg}"),
    }
}

/// Reads every file once so both tools start from a warm page cache.
fn warm(dir: &Path) -> Result<(), SpeedError> {
    read_all_tree(dir).map(drop)
}

/// Time `ours mkfs [-z SPEC] IMG DIR` and `mkfs.erofs [-zALG] IMG DIR`, alternating, `runs`
/// times each, with scratch images in `work`.
pub fn mkfs(
    ours: &Path,
    dir: &Path,
    compression: Option<&str>,
    runs: usize,
    work: &Path,
) -> Result<MkfsReport, SpeedError> {
    warm(dir)?;
    let our_img = work.join("ours.erofs");
    let their_img = work.join("reference.erofs");
    let mut our_times = Vec::new();
    let mut their_times = Vec::new();
    let mut reference_note = None;
    let have_reference = Command::new("mkfs.erofs").arg("--help").output().is_ok();
    if !have_reference {
        reference_note = Some("mkfs.erofs is not installed (Debian: erofs-utils)".to_string());
    }
    for _ in 0..runs.max(1) {
        let mut c = Command::new(ours);
        c.args(["mkfs", "-q"]);
        if let Some(z) = compression {
            c.args(["-z", z]);
        }
        our_times.push(timed(c.arg(&our_img).arg(dir))?);
        if reference_note.is_none() {
            let mut c = Command::new("mkfs.erofs");
            c.arg("--quiet");
            if let Some(z) = compression {
                c.arg(reference_compression(z));
            }
            match timed(c.arg(&their_img).arg(dir)) {
                Ok(t) => their_times.push(t),
                Err(e) => reference_note = Some(format!("mkfs.erofs could not build it: {e}")),
            }
        }
    }
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(io(p.display().to_string()))
    };
    let ours_runs = ToolRuns {
        tool: "erofs-share mkfs".into(),
        median_s: median(&our_times),
        seconds: our_times,
        image_bytes: size(&our_img)?,
    };
    let reference = if reference_note.is_none() {
        Some(ToolRuns {
            tool: "mkfs.erofs".into(),
            median_s: median(&their_times),
            seconds: their_times,
            image_bytes: size(&their_img)?,
        })
    } else {
        None
    };
    Ok(MkfsReport {
        source: dir.to_path_buf(),
        compression: compression.map(str::to_string),
        ours: ours_runs,
        reference,
        reference_note,
    })
}

/// `bench read` result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadReport {
    pub image: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// This crate's reader, every regular file, cold cache.
    pub library_s: Vec<f64>,
    /// The kernel erofs driver over `losetup --direct-io=on`, cold cache.
    pub kernel_s: Vec<f64>,
    pub library_median_s: f64,
    pub kernel_median_s: f64,
}

/// Read every regular file of `img` through the library; returns (files, bytes). A damaged
/// tree or file is an error: timing a partial read would mislead.
pub fn read_all_library(img: &Image) -> Result<(u64, u64), SpeedError> {
    let (mut files, mut bytes) = (0u64, 0u64);
    // One 1 MiB buffer for every file: requests as a reader of big files makes them, and no
    // allocation per file in the timed loop.
    let mut buf = vec![0u8; 1 << 20];
    try_walk::<SpeedError>(img, |path, inode| {
        if inode.file_type() != FileType::Reg {
            return Ok(());
        }
        let mut content = img.content(inode);
        loop {
            match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(source) => {
                    return Err(SpeedError::Io {
                        what: format!("{}: {}", img.name(), String::from_utf8_lossy(path)),
                        cause: source,
                    });
                }
            }
        }
        files += 1;
        Ok(())
    })?;
    Ok((files, bytes))
}

/// Reads every regular file under `root`; returns the bytes read.
fn read_all_tree(root: &Path) -> Result<u64, SpeedError> {
    let mut buf = vec![0u8; 1 << 20];
    crate::read_tree::read_tree(root, &mut buf, &mut Vec::new()).map_err(|(p, source)| {
        SpeedError::Io {
            what: p.display().to_string(),
            cause: source,
        }
    })
}

/// Time reading every file of `image` through the library and through the kernel, caches
/// dropped before each run, `runs` times each, alternating. Root only.
pub fn read(image: &Path, runs: usize) -> Result<ReadReport, SpeedError> {
    let name = image.display().to_string();
    let mount =
        erofs_share_host::LoopMount::new(image).map_err(|source| SpeedError::KernelMount {
            image: image.display().to_string(),
            cause: source,
        })?;
    let (mut lib, mut kern) = (Vec::new(), Vec::new());
    let (mut files, mut bytes) = (0, 0);
    for _ in 0..runs.max(1) {
        erofs_share_host::drop_caches().map_err(io("drop caches"))?;
        let start = Instant::now();
        let img = Image::open(image).map_err(|source| SpeedError::Image {
            image: name.clone(),
            cause: source,
        })?;
        (files, bytes) = read_all_library(&img)?;
        lib.push(start.elapsed().as_secs_f64());
        drop(img);

        erofs_share_host::drop_caches().map_err(io("drop caches"))?;
        let start = Instant::now();
        let kernel_bytes = read_all_tree(mount.path())?;
        kern.push(start.elapsed().as_secs_f64());
        if kernel_bytes != bytes {
            return Err(SpeedError::Tool(format!(
                "{name}: the kernel read {kernel_bytes} bytes of file data, the library {bytes}"
            )));
        }
    }
    Ok(ReadReport {
        image: image.to_path_buf(),
        files,
        bytes,
        library_median_s: median(&lib),
        kernel_median_s: median(&kern),
        library_s: lib,
        kernel_s: kern,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn compression_spelled_for_mkfs_erofs() {
        assert_eq!(reference_compression("lz4hc"), "-zlz4hc");
        assert_eq!(reference_compression("lz4hc,level=9"), "-zlz4hc,9");
    }
}
