//! `erofs-share`: one binary, one subcommand per task. This file only parses arguments and
//! dispatches; each subcommand lives in `cmd/<name>.rs`.

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;

#[derive(Debug, Parser)]
#[command(
    name = "erofs-share",
    version,
    about = "Share the page cache of identical files across EROFS images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an EROFS image from a directory, a tar file or an OCI layer.
    Mkfs(cmd::mkfs::Args),
    /// Show an image's superblock, or one path's inode, layout and xattrs.
    Inspect(cmd::inspect::Args),
    /// Check an image: structure, every inode, all data, optionally fingerprints.
    Fsck(cmd::fsck::Args),
    /// Restore an image's tree into a directory.
    Extract(cmd::extract::Args),
    /// Mount an image through the sharing daemon.
    Mount(cmd::mount::Args),
    /// Unmount an image mounted by the daemon.
    Umount(cmd::umount::Args),
    /// Show the daemon's mounts, domains and what sharing saves.
    Status(cmd::status::Args),
    /// Stop the daemon: it unmounts everything and exits.
    Stop(cmd::stop::Args),
    /// Make the daemon forget its short-lived copies of image bytes (metadata blocks, hashed
    /// contents), as `drop_caches` does the kernel's: for cold-read measurements.
    DropCaches(cmd::drop_caches::Args),
    /// Run the sharing daemon in the foreground.
    Daemon(cmd::daemon::Args),
    /// Serve containerd as a proxy snapshotter: layers as shared EROFS images.
    Snapshotter(cmd::snapshotter::Args),
    /// Predict what sharing saves for a set of images (no root, no mount).
    Analyze(cmd::analyze::Args),
    /// Measure what sharing saves.
    Bench(cmd::bench::Args),
    /// Show what sharing saves on two versions of a tree from this machine (measured as root,
    /// predicted otherwise).
    Demo(cmd::demo::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::CompletionsArgs),
    /// Write the man pages into a directory.
    Man(cmd::completions::ManArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EROFS_SHARE_LOG")
                // fuser logs every reply to a connection that went away (lazy unmounts).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=off")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person: the daemon's log is a file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // `status | head` and the like: a reader that stops early ends this process quietly, as it
    // ends any Unix tool, instead of making the next print panic. The servers keep SIGPIPE
    // ignored: a client that goes away must never end them. So do `bench` and `demo`, which
    // hold mounts and private daemons while they print: a signal would leave those behind.
    // (The control socket is written with MSG_NOSIGNAL.)
    let keeps_ignoring = matches!(
        cli.command,
        Command::Daemon(_) | Command::Snapshotter(_) | Command::Bench(_) | Command::Demo(_)
    );
    if !keeps_ignoring {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: sets SIGPIPE to its default action (no handler of ours) before this process
        // starts a thread; processes it spawns reset it at their own start.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
    let result = match cli.command {
        Command::Mkfs(a) => cmd::mkfs::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Fsck(a) => cmd::fsck::run(a),
        Command::Extract(a) => cmd::extract::run(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Umount(a) => cmd::umount::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Stop(a) => cmd::stop::run(a),
        Command::DropCaches(a) => cmd::drop_caches::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Snapshotter(a) => cmd::snapshotter::run(a),
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Completions(a) => cmd::completions::completions(a, Cli::command()),
        Command::Man(a) => cmd::completions::man(a, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("erofs-share: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
