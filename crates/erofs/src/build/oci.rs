//! OCI images as mkfs input: an image layout directory, its tar (`oci-archive`) or a
//! `docker save` tar, detected by content. [`open`] picks one manifest (by ref and platform,
//! through nested indexes), reads and verifies the manifest and config, and lists the layers;
//! [`Image::layer`] streams one layer, checking the blob's digest and size and the
//! uncompressed diff_id as the bytes go by (a mismatch fails the read that reaches the end).
//!
//! Blobs inside a tar archive are read in place: the outer archive's member offsets are
//! indexed once and each blob is a seek plus a bounded read. JSON documents (index, manifest,
//! config, docker's manifest.json) are size-limited; blob names come from parsed digests or
//! from the archive index, never from joined user paths, so a hostile input cannot make us
//! read outside it.

use super::BuildError;
use oci_spec::image::{Digest, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The root xattr recording where an image built from OCI input came from (a JSON object:
/// `ref`, `manifest`, `config`, and for one-layer images `layer` and `diff_id`).
pub const PROVENANCE_XATTR: &str = "trusted.erofs-share.oci";

/// Largest JSON document we read (containerd's manifest limit).
const MAX_JSON: u64 = 4 << 20;
/// Deepest nesting of indexes we follow.
const MAX_DEPTH: usize = 4;
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What kind of OCI input a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    Layout,
    /// A tar of an OCI image layout (`oci-archive`).
    OciArchive,
    /// A `docker save` tar (`manifest.json`).
    DockerSave,
}

impl std::fmt::Display for InputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputKind::Layout => "OCI image layout directory",
            InputKind::OciArchive => "OCI image layout tar (oci-archive)",
            InputKind::DockerSave => "docker save tar",
        })
    }
}

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
            }),
            _ => Err(format!("platform {s:?} is not os/arch[/variant]")),
        }
    }

    /// This machine's platform, in the Go names OCI uses.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            a => a,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: None,
        }
    }

    fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        p.os().to_string() == self.os
            && p.architecture().to_string() == self.arch
            && (self.variant.is_none() || p.variant() == &self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which manifest to take.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// `org.opencontainers.image.ref.name` (OCI) or a RepoTag (docker save).
    pub reference: Option<String>,
    /// Default: [`Platform::host`] (a manifest without a platform matches any).
    pub platform: Option<Platform>,
}

fn err(msg: impl Into<String>) -> BuildError {
    BuildError::Oci(msg.into())
}

/// Where the blobs are.
#[derive(Debug)]
enum Store {
    Dir(PathBuf),
    /// An archive file and its members: normalised path → (data offset, size).
    Tar {
        path: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Store {
    fn open(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), BuildError> {
        match self {
            Store::Dir(root) => {
                let path = root.join(name);
                let f = std::fs::File::open(&path)
                    .map_err(|e| err(format!("blob {name}: {e} (missing from the layout?)")))?;
                let md = f.metadata().map_err(BuildError::io(&path))?;
                if !md.is_file() {
                    return Err(err(format!("blob {name} is not a regular file")));
                }
                Ok((Box::new(std::io::BufReader::new(f)), md.len()))
            }
            Store::Tar { path, members } => {
                let &(offset, size) = members
                    .get(name)
                    .ok_or_else(|| err(format!("{name} is missing from the archive")))?;
                let mut f = std::fs::File::open(path).map_err(BuildError::io(path))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(BuildError::io(path))?;
                Ok((Box::new(std::io::BufReader::new(f).take(size)), size))
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Store::Dir(root) => root.join(name).is_file(),
            Store::Tar { members, .. } => members.contains_key(name),
        }
    }

    /// A whole JSON document, size-limited, checked against `digest` when given.
    fn json(&self, name: &str, digest: Option<&Digest>) -> Result<Vec<u8>, BuildError> {
        let (r, size) = self.open(name)?;
        if size > MAX_JSON {
            return Err(err(format!(
                "{name} is {size} bytes, more than the {MAX_JSON} a JSON document may have"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        let mut r = match digest {
            Some(d) => Box::new(Verify::new(r, d, Some(size), name.to_string())?) as Box<dyn Read>,
            None => r,
        };
        r.by_ref()
            .take(MAX_JSON + 1)
            .read_to_end(&mut data)
            .map_err(|e| err(format!("reading {name}: {e}")))?;
        // Reach the end so a verifying reader checks the digest.
        let mut rest = [0u8; 1];
        r.read(&mut rest)
            .map_err(|e| err(format!("reading {name}: {e}")))?;
        Ok(data)
    }
}

/// The path of a blob in a layout: `blobs/ALG/HEX` (sha256 and sha512 only, so the name is
/// always plain hex).
fn blob_name(d: &Digest) -> Result<String, BuildError> {
    match d.algorithm() {
        DigestAlgorithm::Sha256 | DigestAlgorithm::Sha512 => {
            Ok(format!("blobs/{}/{}", d.algorithm(), d.digest()))
        }
        a => Err(err(format!("{d}: unsupported digest algorithm {a}"))),
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// A reader that checks the size and digest of what passes through when it reaches the end.
struct Verify<R> {
    inner: R,
    hasher: Hasher,
    expected: Digest,
    size: Option<u64>,
    seen: u64,
    what: String,
    checked: bool,
}

impl<R: Read> Verify<R> {
    fn new(
        inner: R,
        expected: &Digest,
        size: Option<u64>,
        what: String,
    ) -> Result<Self, BuildError> {
        let hasher = match expected.algorithm() {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Default::default()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Default::default()),
            a => return Err(err(format!("{what}: unsupported digest algorithm {a}"))),
        };
        Ok(Verify {
            inner,
            hasher,
            expected: expected.clone(),
            size,
            seen: 0,
            what,
            checked: false,
        })
    }
}

impl<R: Read> Read for Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        if n == 0 {
            if !self.checked && !buf.is_empty() {
                self.checked = true;
                if let Some(s) = self.size
                    && s != self.seen
                {
                    return Err(bad(format!(
                        "{} has {} bytes, not the {s} its descriptor says",
                        self.what, self.seen
                    )));
                }
                let got = match &mut self.hasher {
                    Hasher::Sha256(h) => hex(&std::mem::take(h).finalize()),
                    Hasher::Sha512(h) => hex(&std::mem::take(h).finalize()),
                };
                if got != self.expected.digest() {
                    return Err(bad(format!(
                        "{} does not match its digest (expected {}, got {}:{got})",
                        self.what,
                        self.expected,
                        self.expected.algorithm()
                    )));
                }
            }
            return Ok(0);
        }
        self.seen += n as u64;
        if let Some(s) = self.size
            && self.seen > s
        {
            return Err(bad(format!(
                "{} is longer than the {s} bytes its descriptor says",
                self.what
            )));
        }
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(&buf[..n]),
            Hasher::Sha512(h) => h.update(&buf[..n]),
        }
        Ok(n)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_digest(s: &str, what: &str) -> Result<Digest, BuildError> {
    s.parse::<Digest>()
        .map_err(|e| err(format!("{what}: bad digest {s:?}: {e}")))
}

/// One layer of the chosen image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The blob's digest (docker save tars of the old form name layers by path only).
    pub digest: Option<Digest>,
    /// The digest of the uncompressed tar, from the config.
    pub diff_id: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    name: String,
}

/// The chosen image of an OCI input.
#[derive(Debug)]
pub struct Image {
    pub kind: InputKind,
    store: Store,
    /// The ref it was chosen by (or its only one).
    pub reference: Option<String>,
    /// The manifest's digest (unknown for docker save tars without an OCI index).
    pub manifest: Option<Digest>,
    /// The config's digest: the image ID.
    pub config: Digest,
    /// Bottom first.
    pub layers: Vec<Layer>,
}

#[derive(serde::Serialize)]
struct Provenance<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
    config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff_id: Option<String>,
}

impl Image {
    /// The value of [`PROVENANCE_XATTR`] for the flattened image, or for layer `layer`
    /// (0-based). The input kind is left out, so every transport of one image gives the same.
    pub fn provenance(&self, layer: Option<usize>) -> Vec<u8> {
        let p = Provenance {
            reference: self.reference.as_deref(),
            manifest: self.manifest.as_ref().map(|d| d.to_string()),
            config: self.config.to_string(),
            layer,
            diff_id: layer.map(|i| self.layers[i].diff_id.to_string()),
        };
        serde_json::to_vec(&p).expect("plain strings serialise")
    }

    /// Layer `i`'s uncompressed tar, verified as it is read (blob digest and size, diff_id).
    pub fn layer(&self, i: usize) -> Result<Box<dyn Read + Send>, BuildError> {
        let l = &self.layers[i];
        let (r, size) = self.store.open(&l.name)?;
        if size != l.size {
            return Err(err(format!(
                "layer {} ({}) has {size} bytes, not the {} its descriptor says",
                i + 1,
                l.name,
                l.size
            )));
        }
        let blob: Box<dyn Read + Send> = match &l.digest {
            Some(d) => Box::new(Verify::new(r, d, Some(size), format!("layer blob {d}"))?),
            None => r,
        };
        let tar = super::tar::decompress(blob)
            .map_err(|e| err(format!("layer {}: reading: {e}", i + 1)))?;
        Ok(Box::new(Verify::new(
            tar,
            &l.diff_id,
            None,
            format!("layer {} uncompressed (diff_id {})", i + 1, l.diff_id),
        )?))
    }

    /// How errors and listings name layer `i`.
    pub fn layer_label(&self, i: usize) -> String {
        let l = &self.layers[i];
        match &l.digest {
            Some(d) => format!("layer {}/{} ({d})", i + 1, self.layers.len()),
            None => format!("layer {}/{} ({})", i + 1, self.layers.len(), l.name),
        }
    }
}

/// What `source` is, if it is OCI input: a directory with `oci-layout` and `index.json`, or
/// a plain tar holding those (or docker's `manifest.json`). Anything else is `None` (an
/// ordinary directory or tar).
pub fn detect(source: &Path) -> Result<Option<InputKind>, BuildError> {
    let md = std::fs::metadata(source).map_err(BuildError::io(source))?;
    if md.is_dir() {
        let layout = source.join("oci-layout").is_file() && source.join("index.json").is_file();
        return Ok(layout.then_some(InputKind::Layout));
    }
    Ok(index_tar(source, false)?.map(|(k, _)| k))
}

/// What kind of archive a tar is, if it is an OCI archive or a docker save tar, with its
/// regular members when `want_members` (so that detecting an ordinary tar costs no memory).
/// A compressed or non-tar file, or a tar without the marker files, is `None`.
#[allow(clippy::type_complexity)]
fn index_tar(
    path: &Path,
    want_members: bool,
) -> Result<Option<(InputKind, HashMap<String, (u64, u64)>)>, BuildError> {
    let f = std::fs::File::open(path).map_err(BuildError::io(path))?;
    let mut ar = tar::Archive::new(f);
    let Ok(entries) = ar.entries_with_seek() else {
        return Ok(None);
    };
    let mut members = HashMap::new();
    let mut markers = HashSet::new();
    for e in entries {
        // Not a tar (or a corrupt one): the ordinary tar reader reports what is wrong.
        let Ok(e) = e else { return Ok(None) };
        if !e.header().entry_type().is_file() {
            continue;
        }
        let Ok(p) = e.path() else { continue };
        let name = p.to_string_lossy();
        let name = name.trim_start_matches("./").to_string();
        if ["manifest.json", "oci-layout", "index.json"].contains(&name.as_str()) {
            markers.insert(name.clone());
        }
        if want_members {
            members.insert(name, (e.raw_file_position(), e.size()));
        }
    }
    let kind = if markers.contains("manifest.json") {
        InputKind::DockerSave
    } else if markers.contains("oci-layout") && markers.contains("index.json") {
        InputKind::OciArchive
    } else {
        return Ok(None);
    };
    Ok(Some((kind, members)))
}

/// A manifest an index offers.
struct Candidate {
    digest: Digest,
    size: u64,
    reference: Option<String>,
    platform: Option<oci_spec::image::Platform>,
}

impl Candidate {
    fn describe(&self) -> String {
        let p = self
            .platform
            .as_ref()
            .map_or("any platform".to_string(), |p| {
                let mut s = format!("{}/{}", p.os(), p.architecture());
                if let Some(v) = p.variant() {
                    s += &format!("/{v}");
                }
                s
            });
        format!(
            "ref {:?}, {p}, {}",
            self.reference.as_deref().unwrap_or("(none)"),
            self.digest
        )
    }
}

/// Open OCI input of `kind` at `source` and choose the image `select` names.
pub fn open(source: &Path, kind: InputKind, select: &Select) -> Result<Image, BuildError> {
    let store = match kind {
        InputKind::Layout => Store::Dir(source.to_path_buf()),
        _ => {
            let (_, members) = index_tar(source, true)?.ok_or_else(|| {
                err(format!(
                    "{} is not an OCI or docker archive",
                    source.display()
                ))
            })?;
            Store::Tar {
                path: source.to_path_buf(),
                members,
            }
        }
    };
    match kind {
        InputKind::DockerSave => open_docker(store, select),
        _ => open_oci(store, kind, select),
    }
}

fn is_index(mt: &oci_spec::image::MediaType) -> bool {
    let s = mt.to_string();
    s == "application/vnd.oci.image.index.v1+json"
        || s == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn is_manifest(mt: &oci_spec::image::MediaType) -> bool {
    let s = mt.to_string();
    s == "application/vnd.oci.image.manifest.v1+json"
        || s == "application/vnd.docker.distribution.manifest.v2+json"
}

fn collect(
    store: &Store,
    index: &ImageIndex,
    inherited: Option<&str>,
    depth: usize,
    seen: &mut HashSet<Digest>,
    out: &mut Vec<Candidate>,
) -> Result<(), BuildError> {
    for d in index.manifests() {
        let reference = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .map(String::as_str)
            .or(inherited);
        if is_index(d.media_type()) {
            if depth >= MAX_DEPTH || !seen.insert(d.digest().clone()) {
                return Err(err(format!(
                    "index {} is nested too deep or refers to itself",
                    d.digest()
                )));
            }
            let data = store.json(&blob_name(d.digest())?, Some(d.digest()))?;
            let nested = ImageIndex::from_reader(&data[..])
                .map_err(|e| err(format!("index {}: {e}", d.digest())))?;
            collect(store, &nested, reference, depth + 1, seen, out)?;
        } else if is_manifest(d.media_type()) {
            if d.size() > MAX_JSON {
                return Err(err(format!(
                    "manifest {} is {} bytes",
                    d.digest(),
                    d.size()
                )));
            }
            out.push(Candidate {
                digest: d.digest().clone(),
                size: d.size(),
                reference: reference.map(str::to_string),
                platform: d.platform().clone(),
            });
        }
    }
    Ok(())
}

/// The one candidate `select` names, or an error listing what there is.
fn choose(mut cands: Vec<Candidate>, select: &Select) -> Result<Candidate, BuildError> {
    let all: Vec<String> = cands.iter().map(Candidate::describe).collect();
    let host = Platform::host();
    let want = select.platform.as_ref().unwrap_or(&host);
    cands.retain(|c| {
        select
            .reference
            .as_ref()
            .is_none_or(|r| c.reference.as_ref() == Some(r))
            && c.platform.as_ref().is_none_or(|p| want.matches(p))
    });
    // The same manifest named twice is one choice.
    let mut digests = HashSet::new();
    cands.retain(|c| digests.insert(c.digest.clone()));
    let wanted = format!(
        "ref {}, platform {want}",
        select
            .reference
            .as_deref()
            .map_or("(any)".into(), |r| format!("{r:?}"))
    );
    let listing = if all.is_empty() {
        "the input lists no image manifests".to_string()
    } else {
        format!("the input has: {}", all.join("; "))
    };
    match cands.len() {
        1 => Ok(cands.pop().expect("one")),
        0 => Err(err(format!("no image matches {wanted}; {listing}"))),
        _ => Err(err(format!(
            "more than one image matches {wanted} (choose with --ref/--platform); {listing}"
        ))),
    }
}

fn config_of(store: &Store, name: &str, digest: &Digest) -> Result<ImageConfiguration, BuildError> {
    let data = store.json(name, Some(digest))?;
    ImageConfiguration::from_reader(&data[..]).map_err(|e| err(format!("config {digest}: {e}")))
}

fn diff_ids(
    config: &ImageConfiguration,
    digest: &Digest,
    layers: usize,
) -> Result<Vec<Digest>, BuildError> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(err(format!(
            "config {digest} lists {} diff_ids for {layers} layers",
            ids.len()
        )));
    }
    ids.iter()
        .map(|s| parse_digest(s, &format!("config {digest}")))
        .collect()
}

fn open_oci(store: Store, kind: InputKind, select: &Select) -> Result<Image, BuildError> {
    let data = store.json("index.json", None)?;
    let index = ImageIndex::from_reader(&data[..]).map_err(|e| err(format!("index.json: {e}")))?;
    let mut cands = Vec::new();
    collect(&store, &index, None, 0, &mut HashSet::new(), &mut cands)?;
    let chosen = choose(cands, select)?;
    let data = store.json(&blob_name(&chosen.digest)?, Some(&chosen.digest))?;
    if data.len() as u64 != chosen.size {
        return Err(err(format!(
            "manifest {} has {} bytes, not the {} its descriptor says",
            chosen.digest,
            data.len(),
            chosen.size
        )));
    }
    let manifest = ImageManifest::from_reader(&data[..])
        .map_err(|e| err(format!("manifest {}: {e}", chosen.digest)))?;
    let cd = manifest.config();
    let config = config_of(&store, &blob_name(cd.digest())?, cd.digest())?;
    let ids = diff_ids(&config, cd.digest(), manifest.layers().len())?;
    let layers = manifest
        .layers()
        .iter()
        .zip(ids)
        .map(|(d, diff_id)| {
            let mt = d.media_type().to_string();
            if !mt.contains("tar") {
                return Err(err(format!(
                    "layer {} has media type {mt}, not a tar",
                    d.digest()
                )));
            }
            Ok(Layer {
                digest: Some(d.digest().clone()),
                diff_id,
                size: d.size(),
                name: blob_name(d.digest())?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Image {
        kind,
        store,
        reference: chosen.reference,
        manifest: Some(chosen.digest),
        config: cd.digest().clone(),
        layers,
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The digest a docker save member name implies: `blobs/sha256/HEX` or `HEX.json`.
fn digest_of_name(name: &str) -> Option<Digest> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    format!("sha256:{hex}").parse().ok()
}

fn open_docker(store: Store, select: &Select) -> Result<Image, BuildError> {
    let data = store.json("manifest.json", None)?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&data).map_err(|e| err(format!("manifest.json: {e}")))?;
    let all: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} ({})",
                e.repo_tags.clone().unwrap_or_default().join(", "),
                e.config
            )
        })
        .collect();
    let mut matching: Vec<(&DockerEntry, Option<String>)> = entries
        .iter()
        .filter_map(|e| {
            let tags = e.repo_tags.clone().unwrap_or_default();
            match &select.reference {
                Some(r) => tags.contains(r).then(|| (e, Some(r.clone()))),
                None => Some((e, (tags.len() == 1).then(|| tags[0].clone()))),
            }
        })
        .collect();
    let listing = format!("the archive has: {}", all.join("; "));
    let (entry, reference) = match matching.len() {
        1 => matching.pop().expect("one"),
        0 => {
            return Err(err(format!(
                "no image tagged {:?}; {listing}",
                select.reference.as_deref().unwrap_or("")
            )));
        }
        _ => {
            return Err(err(format!(
                "more than one image (choose with --ref); {listing}"
            )));
        }
    };
    let cname = entry.config.trim_start_matches("./");
    let config_digest = match digest_of_name(cname) {
        Some(d) => d,
        None => {
            let data = store.json(cname, None)?;
            parse_digest(
                &format!("sha256:{}", hex(&sha2::Sha256::digest(&data))),
                cname,
            )?
        }
    };
    let config = config_of(&store, cname, &config_digest)?;
    if let Some(p) = &select.platform {
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if os != p.os || arch != p.arch {
            return Err(err(format!("the image is for {os}/{arch}, not {p}")));
        }
    }
    let ids = diff_ids(&config, &config_digest, entry.layers.len())?;
    let layers = entry
        .layers
        .iter()
        .zip(ids)
        .map(|(name, diff_id)| {
            let name = name.trim_start_matches("./").to_string();
            let digest = name
                .starts_with("blobs/")
                .then(|| digest_of_name(&name))
                .flatten();
            let (_, size) = store.open(&name)?;
            Ok(Layer {
                digest,
                diff_id,
                size,
                name,
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    // Docker 25 and later also write an OCI index: the manifest with this config is the one.
    let manifest = if store.has("index.json") && store.has("oci-layout") {
        let data = store.json("index.json", None)?;
        let index =
            ImageIndex::from_reader(&data[..]).map_err(|e| err(format!("index.json: {e}")))?;
        let mut cands = Vec::new();
        collect(&store, &index, None, 0, &mut HashSet::new(), &mut cands)?;
        let mut found = None;
        for c in cands {
            let data = store.json(&blob_name(&c.digest)?, Some(&c.digest))?;
            let m = ImageManifest::from_reader(&data[..])
                .map_err(|e| err(format!("manifest {}: {e}", c.digest)))?;
            if m.config().digest() == &config_digest {
                found = Some(c.digest);
                break;
            }
        }
        found
    } else {
        None
    };
    Ok(Image {
        kind: InputKind::DockerSave,
        store,
        reference,
        manifest,
        config: config_digest,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!((p.os.as_str(), p.arch.as_str()), ("linux", "arm"));
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("/amd64").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn blob_names_are_plain_hex() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(
            blob_name(&d).unwrap(),
            format!("blobs/sha256/{}", "ab".repeat(32))
        );
        // Digests with path characters do not parse at all.
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
        let other: Digest = "md5+x:abc".parse().unwrap();
        assert!(blob_name(&other).is_err());
    }

    #[test]
    fn verify_catches_mismatch_and_size() {
        let data = b"hello";
        let good: Digest = format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
            .parse()
            .unwrap();
        let mut out = Vec::new();
        Verify::new(&data[..], &good, Some(5), "x".into())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert!(
            Verify::new(&data[..], &good, Some(4), "x".into())
                .unwrap()
                .read_to_end(&mut Vec::new())
                .is_err()
        );
        let bad: Digest = format!("sha256:{}", "00".repeat(32)).parse().unwrap();
        assert!(
            Verify::new(&data[..], &bad, None, "x".into())
                .unwrap()
                .read_to_end(&mut Vec::new())
                .is_err()
        );
    }
}
