//! `erofs-share bench`: one subcommand per benchmark.

use std::process::ExitCode;

/// Arguments of `erofs-share bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run each image's application as a container and measure its memory.
    Runtime(super::bench_runtime::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Runtime(a) => super::bench_runtime::run(a),
    }
}
