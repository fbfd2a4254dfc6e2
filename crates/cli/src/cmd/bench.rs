//! `erofs-share bench`: measure what sharing saves.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use erofs_share_measure::memory;
use erofs_share_measure::report::mb;

/// Arguments of `erofs-share bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Page cache and read times: kernel erofs vs erofs-share unshared vs one domain (root).
    Memory(MemoryArgs),
    /// Run each image's application as a container and measure its memory (root).
    Runtime(super::bench_runtime::Args),
    /// Time `mkfs` against Debian's `mkfs.erofs` on one directory.
    Mkfs(super::bench_speed::MkfsArgs),
    /// Time reading every file through the library against the kernel (root).
    Read(super::bench_speed::ReadArgs),
}

/// Arguments of `erofs-share bench memory`.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw the figures, beside `analyze`'s predictions, as a PNG bar chart.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Measure each setup this many times; the shortest times and the largest page-cache
    /// growth are kept (other activity on the host only adds time and drops cache).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The images, read all together in every setup.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let a = match args.what {
        What::Memory(a) => a,
        What::Runtime(a) => return super::bench_runtime::run(a),
        What::Mkfs(a) => return super::bench_speed::run_mkfs(a),
        What::Read(a) => return super::bench_speed::run_read(a),
    };
    for i in &a.images {
        if !i.is_file() {
            bail!("{}: not an image file", i.display());
        }
    }
    let exe = std::env::current_exe().context("finding the erofs-share executable")?;
    let spin = super::progress::spinner("bench memory");
    let r = memory::run(&exe, &a.images, a.runs);
    spin.finish_and_clear();
    let r = r?;
    // What the overlay front's figure is made of, as `analyze` models it (it matches the
    // measurement to the page): the floor any kernel erofs metadata mount has is the
    // distinct content plus the directories' pages.
    let predicted = super::analyze::analyze_images(&a.images, erofs_share_measure::analyze::TOP)
        .context("predicting with analyze")?;
    let parts = predicted.overlay_parts();
    let page = predicted.page_size;
    if let Some(path) = &a.plot {
        let measured: Vec<(String, u64)> = r
            .rows
            .iter()
            .map(|x| (x.setup.clone(), x.cache_growth))
            .chain([(erofs_share_measure::report::IDEAL.to_string(), r.ideal)])
            .collect();
        super::bench_plot::write(path, &a.images, &measured, &predicted)?;
    }
    if a.json {
        let rows: Vec<_> = r
            .rows
            .iter()
            .map(|x| {
                serde_json::json!({
                    "setup": x.setup,
                    "page_cache_growth_bytes": x.cache_growth,
                    "meminfo_cached_growth_bytes": x.meminfo_growth,
                    "bytes_read": x.bytes_read,
                    "cold_s": x.cold.as_secs_f64(),
                    "warm_s": x.warm.as_secs_f64(),
                    "files": x.files,
                    "open_close_us": x.open_close.as_secs_f64() * 1e6,
                })
            })
            .collect();
        let out = serde_json::json!({
            "images": r.images,
            "rows": rows,
            "ideal_bytes": r.ideal,
            "total_content_bytes": r.total_content,
            "images_cached_after_bytes": r.images_cached_after,
            "one_domain_predicted_bytes": {
                "distinct_content": parts.distinct_content * page,
                "directories": parts.directories * page,
                "metadata_images": parts.metadata_images * page,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<String> = r.images.iter().map(|i| i.display().to_string()).collect();
    println!("images: {}", names.join(" "));
    println!(
        "file content: {} MiB in all, {} MiB distinct (page-rounded); best of {} runs",
        mb(r.total_content),
        mb(r.ideal),
        a.runs
    );
    println!();
    println!(
        "| setup | page cache growth MiB | meminfo Cached growth MiB | cold read s | warm read s \
         | open+close µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for x in &r.rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} |",
            x.setup,
            mb(x.cache_growth),
            mb(x.meminfo_growth),
            x.cold.as_secs_f64(),
            x.warm.as_secs_f64(),
            x.open_close.as_secs_f64() * 1e6
        );
    }
    println!(
        "| ideal: unique file content | {} | – | – | – | – |",
        mb(r.ideal)
    );
    println!();
    println!(
        "page cache growth: charged to the reader's memory cgroup (file pages, kernel metadata, \
         FUSE directory listings, dedup files); meminfo: system-wide, includes other activity"
    );
    println!();
    let kernel = &r.rows[0];
    let shared = &r.rows[2];
    // Rows: kernel, --no-share, one domain (verified), FUSE front, one trusted domain.
    let trusted = &r.rows[4];
    // Three decimals: at two, 1.0547 would read as meeting a target of 1.05.
    println!(
        "one domain vs ideal: {:.3}× (overlay front target ≤ 1.05); kernel vs ideal: {:.2}×",
        shared.cache_growth as f64 / r.ideal as f64,
        kernel.cache_growth as f64 / r.ideal as f64
    );
    let floor = (parts.distinct_content + parts.directories) * page;
    println!(
        "one domain, where it goes (analyze): distinct content {} + one page per directory per \
         mount {} + metadata images {} = {} MiB; no erofs metadata mount goes below distinct \
         content + directories = {} MiB ({:.3}×); one domain vs that floor: {:.3}×",
        mb(parts.distinct_content * page),
        mb(parts.directories * page),
        mb(parts.metadata_images * page),
        mb(predicted.pages_with * page),
        mb(floor),
        floor as f64 / (parts.distinct_content * page).max(1) as f64,
        shared.cache_growth as f64 / floor.max(1) as f64
    );
    println!(
        "one domain vs kernel: cold {:.2}×, warm {:.2}× (target ≤ 1.5), open+close {:.2}× \
         (target ≤ 3); one trusted domain: cold {:.2}× (target ≤ 1.1)",
        shared.cold.as_secs_f64() / kernel.cold.as_secs_f64(),
        shared.warm.as_secs_f64() / kernel.warm.as_secs_f64(),
        shared.open_close.as_secs_f64() / kernel.open_close.as_secs_f64(),
        trusted.cold.as_secs_f64() / kernel.cold.as_secs_f64()
    );
    println!(
        "verified vs trusted domain: cold {:.2}× (target ≤ 1.3)",
        shared.cold.as_secs_f64() / trusted.cold.as_secs_f64()
    );
    // A warm read of many small files is mostly opens; say what each one costs.
    let files = shared.files.max(1) as f64;
    println!(
        "warm read per file: kernel {:.1} µs, one domain {:.1} µs, of which open+close {:.1} µs \
         against the kernel's {:.1} µs ({} files)",
        kernel.warm.as_secs_f64() * 1e6 / files,
        shared.warm.as_secs_f64() * 1e6 / files,
        shared.open_close.as_secs_f64() * 1e6,
        kernel.open_close.as_secs_f64() * 1e6,
        shared.files
    );
    for (i, c) in r.images.iter().zip(&r.images_cached_after) {
        println!(
            "after the run {} has {} MiB in the page cache",
            i.display(),
            mb(*c)
        );
    }
    Ok(ExitCode::SUCCESS)
}
