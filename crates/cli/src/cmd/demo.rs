//! `erofs-share demo`: what sharing saves, on two versions of a tree from this machine, with
//! nothing downloaded. As root it measures; otherwise it says why and predicts (analyze).

use anyhow::Context;
use erofs_share_measure::demo::{self, CHANGE_EVERY, REMOVE_EVERY};
use erofs_share_measure::page_cache;
use erofs_share_measure::report::{self, IDEAL, KERNEL, NO_SHARE, ONE_DOMAIN, Table, mb};
use erofs_share_measure::runtime::{KernelLoop, Mounter};
use erofs_share_measure::share::ErofsShare;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `erofs-share demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tree both versions are made from.
    #[arg(long, default_value = "/usr/lib")]
    pub source: PathBuf,
    /// How much file content to take from it, in MiB (files in name order).
    #[arg(long, default_value_t = 160)]
    pub budget: u64,
    /// Leave out files bigger than this, in MiB.
    #[arg(long, default_value_t = 16)]
    pub max_file: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("erofs-share-demo-")
        .tempdir()
        .context("creating a work directory")?;
    let sel = demo::select(&args.source, args.budget << 20, args.max_file << 20)?;
    println!(
        "Two versions of {}: {} files, {} MiB (the first {} MiB in name order); version 2 \
         changes 1 in {CHANGE_EVERY} files and drops 1 in {REMOVE_EVERY}, as a minor release would.",
        args.source.display(),
        sel.files,
        mb(sel.bytes),
        args.budget
    );
    let images = [dir.path().join("v1.erofs"), dir.path().join("v2.erofs")];
    std::thread::scope(|s| {
        let jobs: Vec<_> = images
            .iter()
            .zip([1u8, 2])
            .map(|(img, v)| {
                let sel = &sel;
                s.spawn(move || demo::build_version(sel, v, img))
            })
            .collect();
        jobs.into_iter().try_for_each(|j| match j.join() {
            Ok(built) => built.map_err(anyhow::Error::from),
            Err(_) => anyhow::bail!("a build thread panicked"),
        })
    })?;
    println!(
        "Built both images with fingerprints in {:.1} s.\n",
        start.elapsed().as_secs_f64()
    );
    let a = super::analyze::analyze_images(&images, erofs_share_measure::analyze::TOP)?;

    if !super::is_root() {
        println!(
            "Measuring needs root (it mounts both images, reads them in a memory cgroup and \
             drops the page cache between runs). Here is what `erofs-share analyze` predicts \
             instead; run `sudo erofs-share demo` to measure.\n"
        );
        print!("{}", report::analysis_text(&a));
        return Ok(ExitCode::SUCCESS);
    }
    erofs_share_measure::interrupt::install().context("installing the Ctrl-C handler")?;
    let exe = std::env::current_exe().context("finding the erofs-share executable")?;
    let setups: [(Box<dyn Mounter>, &str, u64); 3] = [
        (Box::new(KernelLoop), KERNEL, a.kernel_pages),
        (
            Box::new(ErofsShare {
                exe: exe.clone(),
                share: false,
                front: None,
                trusted: false,
            }),
            NO_SHARE,
            a.pages_without,
        ),
        (
            Box::new(ErofsShare {
                exe,
                share: true,
                front: None,
                trusted: false,
            }),
            ONE_DOMAIN,
            a.pages_with,
        ),
    ];
    let ps = a.page_size;
    let mut t = Table::new(&["setup", "page cache MiB", "predicted MiB", "change"]);
    let mut base = None;
    for (mounter, label, predicted) in &setups {
        let measured = page_cache::growth_with(mounter.as_ref(), &images)
            .with_context(|| format!("measuring {label}"))?;
        let b = *base.get_or_insert(measured);
        t.row(vec![
            label.to_string(),
            mb(measured),
            mb(predicted * ps),
            report::change(b, measured),
        ]);
    }
    t.row(vec![
        IDEAL.into(),
        "–".into(),
        mb(a.file_pages_with * ps),
        "–".into(),
    ]);
    println!("Page cache after reading every file of both images (measured in a memory cgroup):");
    print!("{}", t.render());
    println!("\nTook {:.0} s.", start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
