//! `erofs-share mkfs`: build an image from a directory, a tar stream or an OCI image (layout
//! directory, oci-archive or docker save tar: flattened, or one image per layer).

use anyhow::{Context, bail};
use erofs::build::{self, Options, Pattern, Source};
use erofs::fingerprint::XattrName;
use std::path::{Path, PathBuf};

use super::progress::{Bar, Unit};
use std::process::ExitCode;

/// Arguments of `erofs-share mkfs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image to write (replaced only when the build succeeds); with `--layers`, leave it
    /// out and give only SOURCE.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// A directory, a tar file (plain, gzip or zstd), `-` for a tar on stdin, or an OCI
    /// image: a layout directory, an oci-archive tar or a `docker save` tar (detected by
    /// content; its layers are flattened, whiteouts applied).
    #[arg(value_name = "SOURCE", required_unless_present = "layers")]
    pub source: Option<String>,
    /// OCI input: the image to take, by `org.opencontainers.image.ref.name` (docker save:
    /// a RepoTag), when the input holds more than one.
    #[arg(long = "ref", value_name = "NAME")]
    pub reference: Option<String>,
    /// OCI input: the platform to take from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// OCI input: write one image per layer into DIR instead, named by the layer's diff_id
    /// (`sha256-HEX.erofs`), whiteouts in the overlayfs form; print the stack bottom first.
    #[arg(long, value_name = "DIR")]
    pub layers: Option<PathBuf>,
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
    /// Keep mtimes in compact (32-byte) inodes where they fit: smaller images, but only Linux
    /// 6.15 and later show those mtimes (older kernels show the image's epoch for them).
    #[arg(long)]
    pub compact_mtimes: bool,
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
    /// Compress regular files: `lz4`, `lz4hc[,level=N]` (1-12, default 9),
    /// `zstd[,level=N]` (1-22, default 3), `lzma[,level=N]` (0-9, default 6) or
    /// `deflate[,level=N]` (0-12, default 6). Files that do not shrink stay uncompressed.
    #[arg(short = 'z', long = "compress", value_name = "ALG[,level=N]")]
    pub compress: Option<String>,
    /// Largest physical cluster of compressed data in bytes (a multiple of the block size,
    /// up to 1 MiB; default one block). Bigger clusters compress better and need
    /// Linux 5.13+.
    #[arg(long, value_name = "BYTES", requires = "compress")]
    pub pcluster_size: Option<u32>,
    /// Store files with identical content once: their inodes share the compressed blocks.
    #[arg(long, requires = "compress")]
    pub dedupe: bool,
    /// Put the last extent of every compressed file in one packed inode, where the tails
    /// compress together (smaller images, slower small reads; Linux 6.1+).
    #[arg(long, requires = "compress")]
    pub fragments: bool,
    /// No progress bar and no summary line.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print what was built as JSON on stdout: sizes, counts, features (with `--layers`:
    /// the stack).
    #[arg(long)]
    pub json: bool,
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
    let compression = args
        .compress
        .as_deref()
        .map(|spec| build::Compression::new(spec, args.pcluster_size, args.block_size))
        .transpose()?
        .map(|c| build::Compression {
            dedupe: args.dedupe,
            fragments: args.fragments,
            ..c
        });
    let opts = Options {
        compression,
        block_size: args.block_size,
        fingerprint,
        inline: !args.no_inline,
        build_time,
        uuid,
        exclude,
        uid: args.uid,
        gid: args.gid,
        oci_layer: args.oci_layer,
        long_prefixes: Vec::new(),
        compact_mtimes: args.compact_mtimes,
    };
    // With --layers the one positional is the source.
    let (image, source) = match (&args.layers, &args.source) {
        (Some(_), None) => (None, args.image.to_string_lossy().into_owned()),
        (Some(_), Some(_)) => bail!("with --layers, give only SOURCE (the images go to DIR)"),
        (None, Some(s)) => (Some(args.image.clone()), s.clone()),
        (None, None) => bail!("SOURCE is missing"),
    };
    let kind = if source == "-" {
        None
    } else {
        build::oci::detect(Path::new(&source)).with_context(|| format!("source {source}"))?
    };
    // What the source was taken for: said on stderr for OCI input (a choice made by
    // content), and in --json for every source.
    let source_kind: String;
    let oci_only = args.reference.is_some() || args.platform.is_some() || args.layers.is_some();
    let source = match kind {
        Some(kind) => {
            source_kind = kind.to_string();
            if !args.quiet {
                eprintln!("{source}: {kind}");
            }
            if args.oci_layer {
                bail!("--oci-layer is for a single layer tar; {source} is a whole image ({kind})");
            }
            let select = build::oci::Select {
                reference: args.reference.clone(),
                platform: args
                    .platform
                    .as_deref()
                    .map(build::oci::Platform::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
            };
            let img = build::oci::open(Path::new(&source), kind, &select)
                .with_context(|| format!("reading {source}"))?;
            if !args.quiet {
                eprintln!(
                    "image {}: manifest {}, config {}, {} layers",
                    img.reference.as_deref().unwrap_or("(no ref)"),
                    img.manifest
                        .as_ref()
                        .map_or("(none in a docker save tar)".to_string(), |d| d.to_string()),
                    img.config,
                    img.layers.len()
                );
            }
            if let Some(dir) = &args.layers {
                return build_layers(img, dir, &opts, args.quiet, args.json);
            }
            Source::Oci {
                image: std::sync::Arc::new(img),
                layer: None,
            }
        }
        None if oci_only => {
            bail!("--ref, --platform and --layers are for OCI images; {source} is not one")
        }
        None if source == "-" => {
            source_kind = "tar on stdin".into();
            Source::Tar(Box::new(std::io::stdin()))
        }
        None => {
            let p = PathBuf::from(&source);
            let md = std::fs::metadata(&p).with_context(|| format!("source {}", p.display()))?;
            if md.is_dir() {
                source_kind = "directory".into();
                Source::Dir(p)
            } else {
                source_kind = if args.oci_layer {
                    "tar (an OCI layer)"
                } else {
                    "tar"
                }
                .into();
                let f =
                    std::fs::File::open(&p).with_context(|| format!("source {}", p.display()))?;
                Source::Tar(Box::new(f))
            }
        }
    };
    let image = image.expect("set without --layers");
    // Tar input: the total is unknown, a spinner shows bytes and rate.
    let bar = Bar::new(Unit::Bytes, !args.quiet);
    let summary = build::build(&image, source, &opts, &bar)
        .with_context(|| format!("building {}", image.display()));
    bar.finish();
    let summary = summary?;
    if args.json {
        // The features as the image's superblock states them.
        let img = erofs::Image::open(&image)?;
        let sb = img.superblock();
        let v = serde_json::json!({
            "image": image,
            "source_kind": source_kind,
            "image_bytes": summary.image_bytes,
            "block_size": args.block_size,
            "blocks": summary.blocks,
            "inodes": summary.inodes,
            "content_bytes": summary.content_bytes,
            "fingerprints": summary.fingerprints,
            "shared_xattrs": summary.shared_xattrs,
            "features": sb.feature_names(),
            "fingerprint_xattr": opts.fingerprint.as_ref().map(|n| n.full.clone()),
            "inline": opts.inline,
            "compression": opts.compression.as_ref().map(|c| serde_json::json!({
                "spec": c.spec,
                "pcluster_size": c.pcluster_size,
                "dedupe": c.dedupe,
                "fragments": c.fragments,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !args.quiet {
        eprintln!(
            "{}: {} inodes, {} bytes of content, {} fingerprints, {} shared xattrs, {} blocks of {} bytes ({} bytes)",
            image.display(),
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

#[derive(serde::Serialize)]
struct StackLayer {
    diff_id: String,
    digest: Option<String>,
    image: PathBuf,
}

/// `--layers DIR`: one image per layer, then the stack bottom first. Images this run added
/// are removed again if a later layer fails (so is DIR, if this run made it).
fn build_layers(
    img: build::oci::Image,
    dir: &Path,
    opts: &Options,
    quiet: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let made_dir = !dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written: Vec<PathBuf> = Vec::new();
    let img = std::sync::Arc::new(img);
    let result = (|| -> anyhow::Result<Vec<StackLayer>> {
        let mut stack = Vec::new();
        for (i, l) in img.layers.iter().enumerate() {
            let path = dir.join(format!(
                "{}-{}.erofs",
                l.diff_id.algorithm(),
                l.diff_id.digest()
            ));
            // The same layer twice in one image (empty layers are common): built once.
            if !stack.iter().any(|s: &StackLayer| s.image == path) {
                let existed = path.exists();
                let summary = build::build(
                    &path,
                    Source::Oci {
                        image: img.clone(),
                        layer: Some(i),
                    },
                    opts,
                    &build::NoProgress,
                )
                .with_context(|| format!("building {} ({})", path.display(), img.layer_label(i)))?;
                // An image of this layer from an earlier run is not removed on failure.
                if !existed {
                    written.push(path.clone());
                }
                if !quiet {
                    eprintln!(
                        "{}: {} inodes, {} bytes of content ({} bytes)",
                        path.display(),
                        summary.inodes,
                        summary.content_bytes,
                        summary.image_bytes
                    );
                }
            }
            stack.push(StackLayer {
                diff_id: l.diff_id.to_string(),
                digest: l.digest.as_ref().map(|d| d.to_string()),
                image: path,
            });
        }
        Ok(stack)
    })();
    let stack = match result {
        Ok(s) => s,
        Err(e) => {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            if made_dir {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    if json {
        let v = serde_json::json!({
            "ref": img.reference,
            "manifest": img.manifest.as_ref().map(|d| d.to_string()),
            "config": img.config.to_string(),
            "layers": stack,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("stack, bottom first (overlayfs lowerdir lists the top first):");
        for (i, s) in stack.iter().enumerate() {
            println!("{:>3} {} {}", i + 1, s.diff_id, s.image.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
