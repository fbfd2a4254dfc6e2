//! `erofs-share bench mkfs` and `bench read`: speed against the reference tools, measured
//! side by side in one run.

use anyhow::{Context, bail};
use erofs_share_measure::speed;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `erofs-share bench mkfs`.
#[derive(Debug, clap::Args)]
pub struct MkfsArgs {
    /// Runs of each tool (alternating).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Compression, as `mkfs -z` takes it (lz4, lz4hc[,level=N], …); the reference gets the
    /// same algorithm and level.
    #[arg(short = 'z', long)]
    pub compress: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The source directory (an extracted image tree).
    pub dir: PathBuf,
}

/// Arguments of `erofs-share bench read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Runs of each reader (alternating; caches dropped before each).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The image.
    pub image: PathBuf,
}

fn secs(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run_mkfs(a: MkfsArgs) -> anyhow::Result<ExitCode> {
    if !a.dir.is_dir() {
        bail!("{}: not a directory", a.dir.display());
    }
    let ours = std::env::current_exe().context("locate the erofs-share binary")?;
    let work = tempfile::Builder::new()
        .prefix("erofs-share-bench-mkfs-")
        .tempdir_in("/var/tmp")
        .context("scratch directory in /var/tmp")?;
    let spin = super::progress::spinner("bench mkfs");
    let r = speed::mkfs(&ours, &a.dir, a.compress.as_deref(), a.runs, work.path());
    spin.finish_and_clear();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let z = r.compression.as_deref().unwrap_or("none");
    println!(
        "mkfs of {} (compression: {z}), page cache warm, {} runs each, alternating",
        r.source.display(),
        a.runs
    );
    println!("| tool | median s | runs s | image bytes |");
    println!("|---|---:|---|---:|");
    for t in std::iter::once(&r.ours).chain(r.reference.as_ref()) {
        println!(
            "| {} | {:.2} | {} | {} |",
            t.tool,
            t.median_s,
            secs(&t.seconds),
            t.image_bytes
        );
    }
    match (&r.reference, &r.reference_note) {
        (Some(t), _) => println!(
            "ours vs mkfs.erofs: time {:.2}× (target < 1), size {:+.2} % (target ≤ +1 %)",
            r.ours.median_s / t.median_s,
            (r.ours.image_bytes as f64 / t.image_bytes as f64 - 1.0) * 100.0
        ),
        (None, Some(why)) => println!("no reference: {why}"),
        (None, None) => {}
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_read(a: ReadArgs) -> anyhow::Result<ExitCode> {
    if !super::is_root() {
        bail!("bench read drops caches and mounts the image: run it as root");
    }
    let spin = super::progress::spinner("bench read");
    let r = speed::read(&a.image, a.runs);
    spin.finish_and_clear();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "reading every file of {} ({} files, {:.1} MiB), caches dropped before each of {} runs",
        r.image.display(),
        r.files,
        r.bytes as f64 / (1024.0 * 1024.0),
        a.runs
    );
    println!("| reader | median s | runs s |");
    println!("|---|---:|---|");
    println!(
        "| erofs-share library | {:.2} | {} |",
        r.library_median_s,
        secs(&r.library_s)
    );
    println!(
        "| kernel erofs, loop --direct-io=on | {:.2} | {} |",
        r.kernel_median_s,
        secs(&r.kernel_s)
    );
    println!(
        "library vs kernel: {:.2}× (target ≤ 1)",
        r.library_median_s / r.kernel_median_s
    );
    Ok(ExitCode::SUCCESS)
}
