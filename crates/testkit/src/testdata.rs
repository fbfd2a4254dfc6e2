//! The upstream test vectors (mkfs.erofs 1.9.3), carried in the repository as
//! `crates/testkit/testdata/erofs-utils-1.9.3.tar.zst` (see the README beside it).
//!
//! The first use in a process unpacks the archive into `erofs-share-testdata/` beside the test
//! binary (`target/<profile>/`), unless an earlier process did: it unpacks into a temporary
//! directory, checks every file against the checked-in `SHA256SUMS` and renames the directory
//! into place, so test binaries running in parallel never see a partial tree.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NAME: &str = "erofs-utils-1.9.3";

fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Directory of the unpacked vectors (unpacking them on first use).
pub fn dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| unpacked().unwrap_or_else(|e| panic!("test vectors: {e}")))
        .clone()
}

/// `SHA256SUMS`: relative path → hex digest.
fn sums(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.lines()
        .map(|l| {
            l.split_once("  ")
                .map(|(h, p)| (p.to_string(), h.to_string()))
                .ok_or_else(|| format!("SHA256SUMS: bad line {l:?}"))
        })
        .collect()
}

fn unpacked() -> Result<PathBuf, String> {
    let sums_path = testdata_dir().join("SHA256SUMS");
    let sums_text =
        std::fs::read_to_string(&sums_path).map_err(|e| format!("{}: {e}", sums_path.display()))?;
    // Keyed by the checksums, so a changed archive unpacks afresh beside an old tree.
    let key = &hex::encode(Sha256::digest(sums_text.as_bytes()))[..12];
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let base = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test binary has no parent directory")?
        .join("erofs-share-testdata");
    let dest = base.join(format!("{NAME}-{key}"));
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&base)
        .map_err(|e| format!("{}: {e}", base.display()))?;
    let archive = testdata_dir().join(format!("{NAME}.tar.zst"));
    let file = std::fs::File::open(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut zstd = zstd::stream::read::Decoder::new(file).map_err(|e| e.to_string())?;
    // Packed with `zstd --long=26` (README.md beside the archive).
    zstd.window_log_max(26).map_err(|e| e.to_string())?;
    tar::Archive::new(zstd)
        .unpack(tmp.path())
        .map_err(|e| format!("{}: {e}", archive.display()))?;
    let tree = tmp.path().join(NAME);
    verify(&tree, &sums(&sums_text)?)?;
    match std::fs::rename(&tree, &dest) {
        Ok(()) => Ok(dest),
        // Another process renamed its verified copy first.
        Err(_) if dest.is_dir() => Ok(dest),
        Err(e) => Err(format!("rename to {}: {e}", dest.display())),
    }
}

/// Every file under `tree` is listed in `sums` with its digest, and every listed file exists.
fn verify(tree: &Path, sums: &BTreeMap<String, String>) -> Result<(), String> {
    let mut found = 0;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(tree).expect("under tree").to_string_lossy();
            let want = sums
                .get(rel.as_ref())
                .ok_or_else(|| format!("{rel}: not in SHA256SUMS"))?;
            let got = crate::manifest::sha256_file(&p).map_err(|e| format!("{rel}: {e}"))?;
            if &got != want {
                return Err(format!("{rel}: sha256 {got}, SHA256SUMS says {want}"));
            }
            found += 1;
        }
    }
    if found != sums.len() {
        return Err(format!(
            "{found} files unpacked, SHA256SUMS lists {}",
            sums.len()
        ));
    }
    Ok(())
}

/// Names (without `.erofs`) of every image in `images/`, sorted.
pub fn image_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir().join("images"))
        .expect("read images/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".erofs").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Path of `images/NAME.erofs`.
pub fn image(name: &str) -> PathBuf {
    dir().join("images").join(format!("{name}.erofs"))
}

/// Path of `manifests/NAME.json`.
pub fn manifest(name: &str) -> PathBuf {
    dir().join("manifests").join(format!("{name}.json"))
}

/// Path of `source-tree.tar`.
pub fn source_tar() -> PathBuf {
    dir().join("source-tree.tar")
}

/// Path of `source-tree.manifest.json`.
pub fn source_manifest() -> PathBuf {
    dir().join("source-tree.manifest.json")
}

/// Path of `known-bad/NAME.erofs`.
pub fn known_bad(name: &str) -> PathBuf {
    dir().join("known-bad").join(format!("{name}.erofs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_or_missing_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"x").unwrap();
        let digest = hex::encode(Sha256::digest(b"x"));
        let ok = sums(&format!("{digest}  a\n")).unwrap();
        verify(t.path(), &ok).unwrap();
        let wrong = sums(&format!("{}  a\n", "0".repeat(64))).unwrap();
        assert!(verify(t.path(), &wrong).unwrap_err().contains("a: sha256"));
        let more = sums(&format!("{digest}  a\n{digest}  b\n")).unwrap();
        assert!(verify(t.path(), &more).unwrap_err().contains("lists 2"));
        std::fs::write(t.path().join("c"), b"x").unwrap();
        assert!(verify(t.path(), &ok).unwrap_err().contains("c: not in"));
    }

    #[test]
    fn vectors_unpack_and_hold_every_image() {
        assert_eq!(image_names().len(), 20);
        assert!(source_tar().is_file() && known_bad("lz4hc-all-fragments-ztailpacking").is_file());
    }
}
