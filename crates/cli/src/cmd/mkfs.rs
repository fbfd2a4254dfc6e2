//! `erofs-share mkfs`: build an image from a directory or a tar stream.

use anyhow::{Context, bail};
use erofs::build::{self, Options, Pattern, Progress, Source};
use erofs::fingerprint::XattrName;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `erofs-share mkfs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to write (replaced only when the build succeeds).
    pub image: PathBuf,
    /// A directory, or a tar file (plain, gzip or zstd), or `-` for a tar on stdin.
    pub source: String,
    /// Block size in bytes (512 to 65536, a power of two).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Store fingerprints under this xattr name instead of the hidden `erofs.fingerprint.v1`
    /// (e.g. `trusted.erofs.fingerprint`).
    #[arg(long, value_name = "NAME", conflicts_with = "no_fingerprint")]
    pub fingerprint_xattr: Option<String>,
    /// Write no fingerprints (the image then shares nothing under `inode_share`).
    #[arg(long)]
    pub no_fingerprint: bool,
    /// Do not inline file, directory and symlink tails after their inodes.
    #[arg(long)]
    pub no_inline: bool,
    /// Build time in seconds since 1970 (default: $SOURCE_DATE_EPOCH, else now): the mtime
    /// of directories a tar only implies. File mtimes are kept as they are.
    #[arg(long, value_name = "SECS")]
    pub timestamp: Option<u64>,
    /// Volume uuid (default: derived from $SOURCE_DATE_EPOCH when set, else random).
    #[arg(long)]
    pub uuid: Option<String>,
    /// Leave out paths matching this glob (repeatable). Without a `/` it matches a name at
    /// any depth (`*.o`); with one, the path from the source root (`var/cache/*`).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Owner of every file in the image.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of every file in the image.
    #[arg(long)]
    pub gid: Option<u32>,
    /// The tar is an OCI layer: turn `.wh.NAME` whiteouts into 0/0 character devices and
    /// `.wh..wh..opq` into `trusted.overlay.opaque=y` (the overlayfs form).
    #[arg(long)]
    pub oci_layer: bool,
    /// No progress bar and no summary line.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_uuid(s: &str) -> anyhow::Result<[u8; 16]> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 {
        bail!("uuid {s:?} is not 32 hex digits");
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("uuid {s:?} is not hex"))?;
    }
    Ok(out)
}

fn random_uuid() -> anyhow::Result<[u8; 16]> {
    use std::io::Read;
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .context("reading /dev/urandom for a uuid")?;
    Ok(version4(u))
}

/// Mark 16 bytes as a version 4, RFC 4122 variant uuid.
fn version4(mut u: [u8; 16]) -> [u8; 16] {
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))
        })
        .transpose()?;
    let build_time = match args.timestamp.or(source_date_epoch) {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs(),
    };
    let uuid = match (&args.uuid, source_date_epoch) {
        (Some(u), _) => parse_uuid(u)?,
        (None, Some(t)) => {
            use sha2::Digest;
            let d = sha2::Sha256::digest(format!("erofs-share mkfs {t}"));
            version4(d[..16].try_into().expect("16 bytes"))
        }
        (None, None) => random_uuid()?,
    };
    let fingerprint = if args.no_fingerprint {
        None
    } else {
        Some(match &args.fingerprint_xattr {
            Some(n) => XattrName::new(n).with_context(|| format!("--fingerprint-xattr {n:?}"))?,
            None => XattrName::default(),
        })
    };
    let exclude = args
        .exclude
        .iter()
        .map(|p| Pattern::new(p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = Options {
        block_size: args.block_size,
        fingerprint,
        inline: !args.no_inline,
        build_time,
        uuid,
        exclude,
        uid: args.uid,
        gid: args.gid,
        oci_layer: args.oci_layer,
    };
    let source = if args.source == "-" {
        Source::Tar(Box::new(std::io::stdin()))
    } else {
        let p = PathBuf::from(&args.source);
        let md = std::fs::metadata(&p).with_context(|| format!("source {}", p.display()))?;
        if md.is_dir() {
            Source::Dir(p)
        } else {
            let f = std::fs::File::open(&p).with_context(|| format!("source {}", p.display()))?;
            Source::Tar(Box::new(f))
        }
    };
    let show = !args.quiet && std::io::stderr().is_terminal();
    let bar = Bar(if show {
        let b = indicatif::ProgressBar::new_spinner();
        // Tar input: the total is unknown, show bytes and rate.
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    } else {
        indicatif::ProgressBar::hidden()
    });
    let summary = build::build(&args.image, source, &opts, &bar)
        .with_context(|| format!("building {}", args.image.display()))?;
    bar.0.finish_and_clear();
    if !args.quiet {
        eprintln!(
            "{}: {} inodes, {} bytes of content, {} fingerprints, {} shared xattrs, {} blocks of {} bytes ({} bytes)",
            args.image.display(),
            summary.inodes,
            summary.content_bytes,
            summary.fingerprints,
            summary.shared_xattrs,
            summary.blocks,
            args.block_size,
            summary.image_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
