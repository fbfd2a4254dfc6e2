//! `erofs-share inspect`: the superblock and features, or one path's inode, data layout,
//! xattrs and fingerprint; as text or `--json`.

use anyhow::Context;
use erofs::data::{self, Phys};
use erofs::format::xattr_index;
use erofs::{FileType, Image, Inode};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Most extents or directory entries listed for one path.
const LIST_LIMIT: usize = 10_000;

/// Arguments of `erofs-share inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EROFS image.
    pub image: PathBuf,
    /// A path inside the image ("/" for the root); without it, the superblock is shown.
    pub path: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let img = Image::open(&args.image)?;
    let v = match &args.path {
        None => superblock(&img)?,
        Some(p) => {
            let inode = img.resolve(p)?;
            inode_details(&img, &inode).with_context(|| format!("inspecting {p}"))?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut out = String::new();
        render(&v, 0, &mut out);
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes as text when printable UTF-8, else hex.
fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => json!(s),
        _ => json!(format!("0x{}", hex(b))),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn uuid(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn superblock(img: &Image) -> anyhow::Result<Value> {
    let sb = img.superblock();
    let prefixes: Vec<Value> = img
        .long_prefixes()?
        .iter()
        .map(|p| {
            let base = xattr_index::prefix(p.base_index).unwrap_or(b"");
            json!({"base_index": p.base_index, "name": bytes(&[base, &p.infix[..]].concat())})
        })
        .collect();
    // Images built from OCI input record where they came from on the root.
    let oci_source = img
        .get_xattr(&img.root()?, erofs::build::oci::PROVENANCE_XATTR.as_bytes())?
        .map(|v| serde_json::from_slice::<Value>(&v).unwrap_or_else(|_| bytes(&v)));
    let fingerprint_name = sb
        .ishare_xattr_prefix_id
        .and_then(|id| prefixes.get(id as usize))
        .map(|p| p["name"].clone());
    Ok(json!({
        "image": img.name(),
        "size": img.len(),
        "block_size": sb.block_size(),
        "blocks": sb.blocks,
        "features": sb.feature_names(),
        "feature_compat": format!("{:#x}", sb.feature_compat),
        "feature_incompat": format!("{:#x}", sb.feature_incompat),
        "checksum": format!("{:#010x}", sb.checksum),
        "uuid": uuid(&sb.uuid),
        "volume_name": bytes(&sb.volume_name),
        "root_nid": sb.root_nid,
        "inodes": sb.inos,
        "epoch": sb.epoch,
        "fixed_nsec": sb.fixed_nsec,
        "build_time": sb.build_time,
        "meta_blkaddr": sb.meta_blkaddr,
        "xattr_blkaddr": sb.xattr_blkaddr,
        "dir_block_size": sb.dir_block_size(),
        "packed_nid": sb.packed_nid,
        "metabox_nid": sb.metabox_nid,
        "extra_devices": sb.extra_devices,
        "available_compr_algs": format!("{:#x}", sb.available_compr_algs),
        "long_xattr_prefixes": prefixes,
        "fingerprint_xattr": fingerprint_name,
        "oci_source": oci_source,
    }))
}

fn layout(img: &Image, inode: &Inode) -> anyhow::Result<Value> {
    let mut m = Map::new();
    m.insert("format".into(), json!(inode.layout_name()));
    if inode.is_compressed() {
        m.insert(
            "algorithm".into(),
            json!(data::compression_algorithm(img, inode)?),
        );
        // Each extent: its logical range, where its pcluster is and how it is encoded.
        let (extents, more) = erofs::zmap::extents(img, inode, LIST_LIMIT)?;
        let list: Vec<Value> = extents
            .iter()
            .map(|e| {
                use erofs::zmap::{Format, Place};
                let (kind, at, stored) = match e.place {
                    Place::Hole => ("hole", None, None),
                    Place::Image { pa, plen } => ("pcluster", Some(pa), Some(plen)),
                    Place::Inline { pos, plen } => ("inline", Some(pos), Some(plen)),
                    Place::Fragment { offset } => ("fragment", Some(offset), None),
                };
                let encoding = match e.format {
                    Format::Codec(a) => a.name(),
                    Format::Shifted => "plain",
                    Format::Interlaced => "interlaced",
                };
                json!({"offset": e.la, "length": e.llen, "kind": kind, "at": at,
                       "stored_length": stored, "encoding": encoding, "partial": e.partial})
            })
            .collect();
        m.insert("extents".into(), Value::Array(list));
        if more {
            m.insert("extents_truncated".into(), json!(true));
        }
        return Ok(Value::Object(m));
    }
    if inode.layout == erofs::format::layout::CHUNK_BASED {
        let bits = img.superblock().block_bits as u32
            + (inode.chunk_format & erofs::format::chunk::BLKBITS_MASK) as u32;
        m.insert("chunk_size".into(), json!(1u64 << bits));
        m.insert(
            "chunk_indexes".into(),
            json!(inode.chunk_format & erofs::format::chunk::INDEXES != 0),
        );
    } else if let Some(b) = inode.start_block {
        m.insert("start_block".into(), json!(b));
    }
    let ft = inode.file_type();
    if matches!(ft, FileType::Reg | FileType::Dir | FileType::Symlink) {
        let (extents, more) = data::extents(img, inode, LIST_LIMIT)?;
        let list: Vec<Value> = extents
            .iter()
            .map(|e| {
                let (kind, at) = match e.phys {
                    Phys::Hole => ("hole", None),
                    Phys::Image(p) => ("blocks", Some(p)),
                    Phys::Inline { offset, .. } => ("inline", Some(offset)),
                };
                json!({"offset": e.logical, "length": e.len, "kind": kind, "at": at})
            })
            .collect();
        m.insert("extents".into(), Value::Array(list));
        if more {
            m.insert("extents_truncated".into(), json!(true));
        }
    }
    Ok(Value::Object(m))
}

fn inode_details(img: &Image, inode: &Inode) -> anyhow::Result<Value> {
    let ft = inode.file_type();
    let mut m = Map::new();
    m.insert("nid".into(), json!(inode.nid));
    m.insert("ino".into(), json!(inode.ino));
    m.insert("type".into(), json!(ft.name()));
    m.insert("mode".into(), json!(format!("{:04o}", inode.permissions())));
    m.insert("uid".into(), json!(inode.uid));
    m.insert("gid".into(), json!(inode.gid));
    m.insert("nlink".into(), json!(inode.nlink));
    m.insert("size".into(), json!(inode.size));
    m.insert(
        "mtime".into(),
        json!(format!("{}.{:09}", inode.mtime, inode.mtime_nsec)),
    );
    m.insert(
        "inode_format".into(),
        json!(if inode.extended {
            "extended"
        } else {
            "compact"
        }),
    );
    if matches!(ft, FileType::CharDev | FileType::BlockDev) {
        m.insert(
            "rdev".into(),
            json!(format!("{}:{}", inode.rdev_major(), inode.rdev_minor())),
        );
    }
    if ft == FileType::Symlink {
        m.insert("target".into(), bytes(&img.read_link(inode)?));
    }
    m.insert("layout".into(), layout(img, inode)?);
    let xattrs: Vec<Value> = erofs::xattr::raw(img, inode)?
        .iter()
        .map(|x| {
            json!({
                "name": bytes(&x.name),
                "value": bytes(&x.value),
                "shared": x.shared_id.is_some(),
            })
        })
        .collect();
    m.insert("xattrs".into(), Value::Array(xattrs));
    if let Some(f) = img.fingerprint(inode)? {
        let text = match f.strip_prefix(erofs::format::fingerprint::SHA256_TAG) {
            Some(d) => format!("sha256:{}", hex(d)),
            None => format!("0x{}", hex(&f)),
        };
        m.insert("fingerprint".into(), json!(text));
    }
    if ft == FileType::Dir {
        let entries: Vec<Value> = img
            .read_dir(inode)?
            .iter()
            .take(LIST_LIMIT)
            .map(|e| json!({"name": bytes(&e.name), "nid": e.nid, "type": e.file_type.name()}))
            .collect();
        m.insert("entries".into(), Value::Array(entries));
    }
    Ok(Value::Object(m))
}

/// Indented "key: value" text.
fn render(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Null => continue,
                    Value::Object(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render(v, indent + 1, out);
                    }
                    Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                        out.push_str(&format!("{pad}{k}: ({})\n", a.len()));
                        for x in a {
                            let line: Vec<String> = x
                                .as_object()
                                .map(|o| {
                                    o.iter()
                                        .filter(|(_, v)| !v.is_null())
                                        .map(|(k, v)| format!("{k}={}", scalar(v)))
                                        .collect()
                                })
                                .unwrap_or_else(|| vec![scalar(x)]);
                            out.push_str(&format!("{pad}  - {}\n", line.join(" ")));
                        }
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "(none)".into(),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}
