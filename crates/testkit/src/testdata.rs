//! The upstream test vectors: `../shared/testdata/erofs-utils-1.9.3` beside the checkout,
//! or wherever `EROFS_SHARE_TESTDATA` points.

use std::path::{Path, PathBuf};

/// Directory of the vectors, if present.
pub fn dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EROFS_SHARE_TESTDATA") {
        let p = PathBuf::from(p);
        return p.is_dir().then_some(p);
    }
    // crates/testkit → workspace root → its parent holds `shared/`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("../shared/testdata/erofs-utils-1.9.3");
    p.is_dir().then(|| p.canonicalize().unwrap_or(p))
}

pub(crate) fn missing_reason() -> Option<String> {
    dir().is_none().then(|| {
        "the shared test vectors (../shared/testdata/erofs-utils-1.9.3) are not beside this checkout"
            .to_string()
    })
}

fn vectors() -> PathBuf {
    dir().expect("test vectors present: call gate::require(.., &[Need::Testdata]) first")
}

/// Names (without `.erofs`) of every image in `images/`, sorted.
pub fn image_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vectors().join("images"))
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
    vectors().join("images").join(format!("{name}.erofs"))
}

/// Path of `manifests/NAME.json`.
pub fn manifest(name: &str) -> PathBuf {
    vectors().join("manifests").join(format!("{name}.json"))
}

/// Path of `source-tree.tar`.
pub fn source_tar() -> PathBuf {
    vectors().join("source-tree.tar")
}

/// Path of `source-tree.manifest.json`.
pub fn source_manifest() -> PathBuf {
    vectors().join("source-tree.manifest.json")
}

/// Path of `known-bad/NAME.erofs`.
pub fn known_bad(name: &str) -> PathBuf {
    vectors().join("known-bad").join(format!("{name}.erofs"))
}
