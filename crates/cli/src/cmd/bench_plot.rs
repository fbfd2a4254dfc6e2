//! `bench memory --plot`: the measured rows beside `analyze`'s prediction, as a PNG.

use erofs_share_measure::analyze::Analysis;
use std::path::{Path, PathBuf};

/// Draw `measured` (setup, bytes) for `images` into `path`, beside `predicted`.
pub fn write(
    path: &Path,
    images: &[PathBuf],
    measured: &[(String, u64)],
    predicted: &Analysis,
) -> anyhow::Result<()> {
    let names: Vec<String> = images
        .iter()
        .map(|i| {
            i.file_name()
                .map_or_else(|| i.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    let title = format!("Page cache: {}", names.join(" + "));
    erofs_share_measure::report::memory_chart(&title, measured, predicted)
        .write_png(path, 1000, 560)?;
    eprintln!("plot written to {}", path.display());
    Ok(())
}
