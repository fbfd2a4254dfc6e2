//! `erofs-share analyze`: predict what sharing saves for a set of images (no root, no mount).

use erofs::build::Progress;
use erofs_share_measure::{analyze, report, scan};
use std::path::PathBuf;
use std::process::ExitCode;

use super::progress::{Bar, Unit};

/// Arguments of `erofs-share analyze`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The images (read-only; nothing is mounted).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print the analysis as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep this many entries in each list: biggest shared and unshared files, top-level
    /// directories.
    #[arg(long, value_name = "N", default_value_t = analyze::TOP)]
    pub top: usize,
}

/// Scan every image (in parallel) and analyze them together, `top` entries per list.
pub fn analyze_images(images: &[PathBuf], top: usize) -> anyhow::Result<analyze::Analysis> {
    // The reader's errors name the image.
    let opened = images
        .iter()
        .map(erofs::Image::open)
        .collect::<Result<Vec<_>, _>>()?;
    let bar = Bar::new(Unit::Inodes, true);
    bar.set_total(opened.iter().map(|i| i.superblock().inos).sum());
    let scans = std::thread::scope(|s| {
        let handles: Vec<_> = opened
            .iter()
            .zip(images)
            .map(|(img, path)| {
                let bar = &bar;
                s.spawn(move || -> anyhow::Result<analyze::ImageFiles> {
                    let name = path.display().to_string();
                    Ok(scan::scan_with_progress(img, &name, page_size(), bar)?)
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
    });
    bar.finish();
    Ok(analyze::analyze_top(&scans?, page_size(), top))
}

/// The machine's page size (what the page cache counts in).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let a = analyze_images(&args.images, args.top)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", report::analysis_text(&a));
    }
    Ok(ExitCode::SUCCESS)
}
