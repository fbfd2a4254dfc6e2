//! Fingerprints the daemon computes for files that have none (images from `mkfs.erofs`
//! without `--xattr-inode-digest`, containerd's snapshotter, `mkfs --no-fingerprint`): the
//! `sha256:` value upstream would store, hashed from the content through the mount's O_DIRECT
//! reader, in parallel, at mount time before the mount serves (the overlay front when it
//! attaches the files, the FUSE front before its session starts). Because
//! the daemon computed the value from this very content, such sources count as verified.
//!
//! Values are remembered per image identity in `<state-dir>/fingerprints/<key>.json` (nid →
//! hex value), so the next mount of the same image hashes nothing. The key covers the image
//! file's device, inode, size, mtime and ctime, a digest of its first 4 KiB (superblock) and
//! the nids and sizes of the files hashed: a rewritten image gets a new key.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use erofs::fingerprint::Value;
use erofs::source::ReadAt;
use erofs::{Image, Inode};
use rayon::prelude::*;

/// Cached fingerprint files kept: the newest by modification time.
const CACHE_MAX: usize = 256;

/// The fingerprints of `files` (nid → value), from the cache or hashed now; also how many
/// were hashed now. A file whose content cannot be read is left out (it stays unshared).
pub fn of_files(
    cache_dir: &Path,
    image_path: &Path,
    image: &Image,
    file: &dyn ReadAt,
    files: &[Inode],
) -> Result<(HashMap<u64, Value>, usize), String> {
    let dir = cache_dir.join("fingerprints");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.json", identity(image_path, file, files)?));
    if let Some(known) = load(&path) {
        return Ok((known, 0));
    }
    let hashed: Vec<(u64, Value)> = files
        .par_iter()
        .filter_map(|inode| {
            erofs::fingerprint::of_reader(image.content(inode))
                .inspect_err(|e| {
                    tracing::warn!(
                        "{}: nid {}: hashing the content: {e}: not shared",
                        image.name(),
                        inode.nid
                    )
                })
                .ok()
                .map(|v| (inode.nid, v))
        })
        .collect();
    let n = hashed.len();
    let map: HashMap<u64, Value> = hashed.into_iter().collect();
    if n == files.len() {
        // Only a complete set is remembered: a read error is retried at the next mount.
        if let Err(e) = store(&path, &map) {
            tracing::warn!("{}: {e}", path.display());
        }
        crate::daemon::prune_cache(&dir, CACHE_MAX);
    }
    tracing::info!("{}: computed {n} fingerprints", image.name());
    Ok((map, n))
}

/// The cache key of an image's fingerprints (see the module doc).
fn identity(image_path: &Path, file: &dyn ReadAt, files: &[Inode]) -> Result<String, String> {
    use sha2::Digest;
    let md = fs::metadata(image_path).map_err(|e| format!("{}: {e}", image_path.display()))?;
    let mut h = sha2::Sha256::new();
    h.update(b"erofs-share fingerprints v1\0");
    crate::source::hash_file_identity(&mut h, &md);
    let mut head = vec![0u8; md.size().min(4096) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("{}: superblock: {e}", image_path.display()))?;
    h.update(&head);
    for i in files {
        h.update(i.nid.to_le_bytes());
        h.update(i.size.to_le_bytes());
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// The cached values, if the file is there and well formed (anything else is recomputed).
fn load(path: &Path) -> Option<HashMap<u64, Value>> {
    let text = fs::read_to_string(path).ok()?;
    let raw: BTreeMap<u64, String> = serde_json::from_str(&text).ok()?;
    raw.into_iter()
        .map(|(nid, v)| Some((nid, hex::decode(&v).ok()?.try_into().ok()?)))
        .collect()
}

fn store(path: &Path, map: &HashMap<u64, Value>) -> std::io::Result<()> {
    let raw: BTreeMap<u64, String> = map.iter().map(|(n, v)| (*n, hex::encode(v))).collect();
    let tmp: PathBuf = path.with_extension("tmp");
    fs::write(
        &tmp,
        serde_json::to_vec(&raw).map_err(std::io::Error::other)?,
    )?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_load_back_and_bad_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.json");
        let map = HashMap::from([(7u64, erofs::fingerprint::of_bytes(b"x"))]);
        store(&p, &map).unwrap();
        assert_eq!(load(&p).unwrap(), map);
        fs::write(&p, r#"{"7":"zz"}"#).unwrap();
        assert!(load(&p).is_none());
    }
}
