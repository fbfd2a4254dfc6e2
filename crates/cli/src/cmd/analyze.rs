//! `erofs-share analyze`: predict what sharing saves for a set of images (no root, no mount).

use erofs_share_measure::{analyze, report, scan};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `erofs-share analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The images (read-only; nothing is mounted).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print the analysis as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Scan every image (in parallel) and analyze them together.
pub fn analyze_images(images: &[PathBuf]) -> anyhow::Result<analyze::Analysis> {
    let scans = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|path| {
                s.spawn(move || -> anyhow::Result<analyze::ImageFiles> {
                    // The reader's errors name the image.
                    let img = erofs::Image::open(path)?;
                    Ok(scan::scan(&img, &path.display().to_string(), page_size())?)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| anyhow::bail!("a scan thread panicked"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(analyze::analyze(&scans, page_size()))
}

/// The machine's page size (what the page cache counts in).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let a = analyze_images(&args.images)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", report::analysis_text(&a));
    }
    Ok(ExitCode::SUCCESS)
}
