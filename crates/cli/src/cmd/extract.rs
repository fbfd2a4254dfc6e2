//! `erofs-share extract`: restore an image's tree into a directory.

use erofs::Image;
use erofs::extract::extract;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `erofs-share extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EROFS image.
    pub image: PathBuf,
    /// Destination directory: created if missing; an existing one must be empty.
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let img = Image::open(&args.image)?;
    let s = extract(&img, &args.dir)?;
    println!(
        "{} → {}: {} directories, {} files ({} bytes), {} hardlinks, {} symlinks, {} special files, {} xattrs",
        args.image.display(),
        args.dir.display(),
        s.dirs,
        s.files,
        s.bytes,
        s.hardlinks,
        s.symlinks,
        s.specials,
        s.xattrs
    );
    Ok(ExitCode::SUCCESS)
}
