//! `erofs-share bench runtime`: start each image's application concurrently from its mount,
//! as a container would, under a bounded loopback load, and compare container memory
//! without and with sharing.

use anyhow::Context;
use erofs_share_measure::report::{self, Table, mb};
use erofs_share_measure::runtime::{self, App, Config, KernelLoop, Mounter, SetupResult};
use erofs_share_measure::share::ErofsShare;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `erofs-share bench runtime`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The images (each must hold the application), e.g. two versions of one image.
    #[arg(required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// The application to run: redis or nginx.
    #[arg(long)]
    pub app: App,
    /// Requests per container (redis-benchmark runs this many per test).
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Longest a load (or a server's start) may take, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Setups to run, in order: kernel, no-share, share.
    #[arg(long, value_delimiter = ',', default_value = "kernel,share")]
    pub setups: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw the containers' memory per setup as a PNG bar chart.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

fn mounter(name: &str) -> anyhow::Result<Box<dyn Mounter>> {
    match name {
        "kernel" => Ok(Box::new(KernelLoop)),
        "no-share" | "share" | "share-fuse" => Ok(Box::new(ErofsShare {
            exe: std::env::current_exe().context("finding the erofs-share executable")?,
            share: name != "no-share",
            front: (name == "share-fuse").then_some("fuse"),
            trusted: false,
        })),
        other => {
            anyhow::bail!("unknown setup {other:?}: expected kernel, no-share, share or share-fuse")
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !super::is_root() {
        anyhow::bail!(
            "bench runtime needs root: it mounts images, creates cgroups and chroots into them"
        );
    }
    erofs_share_measure::interrupt::install().context("installing the Ctrl-C handler")?;
    let mounters = args
        .setups
        .iter()
        .map(|s| mounter(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = Config {
        app: args.app,
        images: args.images.clone(),
        requests: args.requests,
        timeout: Duration::from_secs(args.timeout),
        settle: Duration::from_secs(5),
        drop_caches: true,
    };
    let mut results = Vec::new();
    let spin = super::progress::spinner("bench runtime");
    for m in &mounters {
        let what = format!("bench runtime: {} ({})", args.app, m.label());
        spin.suspend(|| eprintln!("{what}"));
        spin.set_message(what);
        let r = runtime::run_setup(&config, m.as_ref());
        if r.is_err() {
            spin.finish_and_clear();
        }
        results.push(r?);
    }
    spin.finish_and_clear();
    if let Some(path) = &args.plot {
        chart(args.app, &results).write_png(path, 1000, 560)?;
        eprintln!("plot written to {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", text(args.app, &results));
    }
    Ok(ExitCode::SUCCESS)
}

/// One group per setup; a bar per container and one for their total (memory.current, MiB).
fn chart(app: App, results: &[SetupResult]) -> report::BarChart {
    let n = results.first().map_or(0, |r| r.containers.len());
    let mut series: Vec<(String, Vec<f64>)> = (0..n)
        .map(|i| (format!("{app} #{}", i + 1), Vec::new()))
        .collect();
    series.push(("total".into(), Vec::new()));
    for r in results {
        for (i, c) in r.containers.iter().enumerate().take(n) {
            series[i].1.push(c.memory.current as f64 / report::MB);
        }
        series[n].1.push(r.total().current as f64 / report::MB);
    }
    report::BarChart {
        title: format!("{app}: container memory under load"),
        y_label: "memory.current (MiB)".into(),
        groups: results.iter().map(|r| r.setup.clone()).collect(),
        series,
    }
}

/// The table in the upstream form: container memory MB per setup, one column per container
/// and the total, plus the change against the first setup.
fn text(app: App, results: &[SetupResult]) -> String {
    let n = results.first().map_or(0, |r| r.containers.len());
    let mut headers = vec!["setup".to_string()];
    for i in 0..n {
        headers.push(format!("{app} #{} MiB (file, anon)", i + 1));
    }
    headers.push("total MiB".into());
    headers.push("change".into());
    let mut t = Table {
        headers,
        rows: Vec::new(),
    };
    let base = results.first().map(|r| r.total().current);
    for r in results {
        let mut row = vec![r.setup.clone()];
        for c in &r.containers {
            row.push(format!(
                "{} ({}, {})",
                mb(c.memory.current),
                mb(c.memory.file),
                mb(c.memory.anon)
            ));
        }
        let total = r.total().current;
        row.push(mb(total));
        row.push(base.map_or("–".into(), |b| report::change(b, total)));
        t.row(row);
    }
    format!(
        "Container memory at steady state under load ({app}, memory.current per cgroup):\n{}",
        t.render()
    )
}
