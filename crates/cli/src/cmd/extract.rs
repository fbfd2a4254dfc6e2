//! `erofs-share extract`: restore an image's tree into a directory.

use erofs::Image;
use erofs::extract::extract_with_progress;
use std::path::PathBuf;
use std::process::ExitCode;

use super::progress::{Bar, Unit};

/// Arguments of `erofs-share extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EROFS image.
    pub image: PathBuf,
    /// Destination directory: created if missing; an existing one must be empty.
    pub dir: PathBuf,
    /// Print what was restored as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let img = Image::open(&args.image)?;
    let bar = Bar::new(Unit::Inodes, true);
    let s = extract_with_progress(&img, &args.dir, &bar);
    bar.finish();
    let s = s?;
    if args.json {
        let v = serde_json::json!({
            "image": args.image,
            "dir": args.dir,
            "dirs": s.dirs,
            "files": s.files,
            "bytes": s.bytes,
            "hardlinks": s.hardlinks,
            "symlinks": s.symlinks,
            "specials": s.specials,
            "xattrs": s.xattrs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
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
