//! `erofs-share fsck`: check an image; a nonzero exit on any problem.

use erofs::Image;
use erofs::fsck::{FsckOptions, fsck_with_progress};
use std::path::PathBuf;
use std::process::ExitCode;

use super::progress::{Bar, Unit};

/// Arguments of `erofs-share fsck`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EROFS image.
    pub image: PathBuf,
    /// Recompute every file's fingerprint from its content and compare.
    #[arg(long)]
    pub verify_fingerprints: bool,
    /// Print at most this many problems.
    #[arg(long, default_value_t = 1000)]
    pub max_problems: usize,
    /// Print the result as JSON on stdout, each problem a record `{"path", "what"}`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let img = Image::open(&args.image)?;
    let opts = FsckOptions {
        verify_fingerprints: args.verify_fingerprints,
        max_problems: args.max_problems,
        data_budget: None,
    };
    let bar = Bar::new(Unit::Inodes, true);
    let r = fsck_with_progress(&img, &opts, &bar);
    bar.finish();
    let code = if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.json {
        let problems: Vec<_> = r
            .problems
            .iter()
            .map(|p| serde_json::json!({ "path": p.path, "what": p.what }))
            .collect();
        let v = serde_json::json!({
            "image": args.image,
            "clean": r.is_clean(),
            "problem_count": r.problem_count,
            "problems": problems,
            "inodes": r.inodes,
            "dirs": r.dirs,
            "files": r.files,
            "bytes_read": r.bytes_read,
            "fingerprints_verified": args.verify_fingerprints.then_some(r.fingerprints_verified),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    let name = args.image.display();
    for p in &r.problems {
        eprintln!("{name}: {p}");
    }
    if r.problem_count > r.problems.len() as u64 {
        eprintln!(
            "{name}: … and {} more problems",
            r.problem_count - r.problems.len() as u64
        );
    }
    let fp = if args.verify_fingerprints {
        format!(", {} fingerprints verified", r.fingerprints_verified)
    } else {
        String::new()
    };
    println!(
        "{name}: {} inodes ({} directories, {} files), {} data bytes read{fp}: {}",
        r.inodes,
        r.dirs,
        r.files,
        r.bytes_read,
        if r.is_clean() {
            "clean".to_string()
        } else {
            format!("{} problems", r.problem_count)
        }
    );
    Ok(code)
}
