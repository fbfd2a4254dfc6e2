//! `erofs-share completions SHELL` and `erofs-share man DIR`: shell completions and man pages,
//! generated from the argument definitions so they never drift from them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `erofs-share completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Arguments of `erofs-share man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages to (`erofs-share.1`, `erofs-share-mkfs.1`, …); created if
    /// missing.
    pub dir: PathBuf,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes one man page per command and subcommand into `args.dir`.
pub fn man(args: ManArgs, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    clap_mangen::generate_to(cmd, &args.dir)
        .with_context(|| format!("write man pages to {}", args.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
