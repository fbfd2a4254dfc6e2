//! The demo's input: two versions of one real tree from this machine, with nothing
//! downloaded. Version 1 is a bounded, deterministic selection of a directory (files in name
//! order up to a byte budget); version 2 is the same selection with a share of the files
//! changed and a few removed, as a minor release would. Both are fed to the builder as tar
//! streams generated on the fly, so nothing is copied to disk but the images.

use erofs::build::{self, BuildError, NoProgress, Options, Source};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One in `CHANGE_EVERY` files differs in version 2; one in `REMOVE_EVERY` is gone.
pub const CHANGE_EVERY: u8 = 5;
pub const REMOVE_EVERY: u8 = 100;

/// Building the demo images failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("building {image}: {cause}")]
    Build { image: String, cause: BuildError },
    #[error("{dir}: no regular file could be selected")]
    Empty { dir: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.display().to_string(),
        cause: source,
    }
}

/// What goes into the images, relative to the source directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Dir(PathBuf),
    File(PathBuf, u64),
    Symlink(PathBuf),
}

/// The selection: directories, files (up to `budget` bytes in name order, none over
/// `max_file`) and symlinks under `source`. Unreadable entries are left out.
#[derive(Debug, Clone)]
pub struct Selection {
    pub source: PathBuf,
    pub items: Vec<Item>,
    pub files: u64,
    pub bytes: u64,
}

/// Walk `source` in name order and select what fits in `budget`.
pub fn select(source: &Path, budget: u64, max_file: u64) -> Result<Selection, DemoError> {
    let mut sel = Selection {
        source: source.to_path_buf(),
        items: Vec::new(),
        files: 0,
        bytes: 0,
    };
    std::fs::read_dir(source).map_err(io_err(source))?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        if sel.bytes >= budget {
            break;
        }
        let dir = source.join(&rel);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        if !rel.as_os_str().is_empty() {
            sel.items.push(Item::Dir(rel.clone()));
        }
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let r = rel.join(&name);
            let Ok(md) = std::fs::symlink_metadata(source.join(&r)) else {
                continue;
            };
            if md.is_dir() {
                subdirs.push(r);
            } else if md.file_type().is_symlink() {
                sel.items.push(Item::Symlink(r));
            } else if md.is_file()
                && md.len() <= max_file
                && sel.bytes < budget
                && std::fs::File::open(source.join(&r)).is_ok()
            {
                sel.bytes += md.len();
                sel.files += 1;
                sel.items.push(Item::File(r, md.len()));
            }
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    if sel.files == 0 {
        return Err(DemoError::Empty {
            dir: source.display().to_string(),
        });
    }
    Ok(sel)
}

/// Deterministic per-path dice: the first byte of SHA-256 of the relative path.
fn dice(rel: &Path) -> u8 {
    Sha256::digest(rel.as_os_str().as_encoded_bytes())[0]
}

/// Whether version 2 changes this file.
pub fn changed(rel: &Path) -> bool {
    dice(rel).is_multiple_of(CHANGE_EVERY)
}

/// Whether version 2 drops this file.
pub fn removed(rel: &Path) -> bool {
    dice(rel) % REMOVE_EVERY == 1
}

/// The changed content: every 4 KiB page gets a different byte, as a rebuild of a binary
/// changes its code throughout; the size stays.
pub fn change(mut data: Vec<u8>) -> Vec<u8> {
    for i in (0..data.len()).step_by(4096) {
        data[i] ^= 0x5a;
    }
    if data.is_empty() {
        data.push(b'\n');
    }
    data
}

/// Write version `v` (1 or 2) of `sel` as a tar stream.
fn write_tar(sel: &Selection, version: u8, out: impl Write) -> std::io::Result<()> {
    let mut t = tar::Builder::new(out);
    t.follow_symlinks(false);
    for item in &sel.items {
        match item {
            Item::Dir(rel) | Item::Symlink(rel) => {
                t.append_path_with_name(sel.source.join(rel), rel)?;
            }
            Item::File(rel, _) if version == 2 && removed(rel) => {}
            Item::File(rel, _) if version == 2 && changed(rel) => {
                let path = sel.source.join(rel);
                let md = std::fs::metadata(&path)?;
                let data = change(std::fs::read(&path)?);
                let mut h = tar::Header::new_gnu();
                h.set_metadata(&md);
                h.set_size(data.len() as u64);
                t.append_data(&mut h, rel, data.as_slice())?;
            }
            Item::File(rel, _) => {
                t.append_path_with_name(sel.source.join(rel), rel)?;
            }
        }
    }
    t.into_inner()?.flush()
}

/// Build version `version` of `sel` into `image` (fingerprints on, as mkfs does by default).
pub fn build_version(sel: &Selection, version: u8, image: &Path) -> Result<(), DemoError> {
    let (reader, writer) = std::io::pipe().map_err(io_err(image))?;
    let producer = {
        let sel = sel.clone();
        std::thread::spawn(move || write_tar(&sel, version, writer))
    };
    let opts = Options {
        build_time: 1_700_000_000,
        ..Options::default()
    };
    let reader: Box<dyn Read + Send> = Box::new(reader);
    let built = build::build(image, Source::Tar(reader), &opts, &NoProgress);
    let produced = producer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the tar producer thread panicked")));
    built.map_err(|source| DemoError::Build {
        image: image.display().to_string(),
        cause: source,
    })?;
    produced.map_err(io_err(&sel.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_bounded_and_in_name_order() {
        let t = tempfile::tempdir().unwrap();
        for (p, n) in [
            ("b/2", 10),
            ("a/1", 10),
            ("a/0", 10),
            ("c", 5),
            ("big", 1000),
        ] {
            let path = t.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![7u8; n]).unwrap();
        }
        std::os::unix::fs::symlink("c", t.path().join("l")).unwrap();
        let s = select(t.path(), 25, 100).unwrap();
        let files: Vec<_> = s
            .items
            .iter()
            .filter_map(|i| match i {
                Item::File(p, _) => Some(p.display().to_string()),
                _ => None,
            })
            .collect();
        // Root files first (c; big is over max_file), then a/0, a/1 reach the budget.
        assert_eq!(files, ["c", "a/0", "a/1"]);
        assert_eq!((s.files, s.bytes), (3, 25));
        assert!(s.items.contains(&Item::Symlink("l".into())));
    }

    #[test]
    fn changes_are_deterministic_and_keep_the_size() {
        let d = change(vec![0u8; 10_000]);
        assert_eq!(d.len(), 10_000);
        assert_eq!((d[0], d[4096], d[8192], d[1]), (0x5a, 0x5a, 0x5a, 0));
        let p = Path::new("x86_64-linux-gnu/libc.so.6");
        assert_eq!(changed(p), changed(p));
        // About a fifth of names change.
        let n = (0..1000)
            .filter(|i| changed(Path::new(&format!("f{i}"))))
            .count();
        assert!((150..250).contains(&n), "{n}");
    }

    #[test]
    fn both_versions_build_and_differ_as_chosen() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..40 {
            std::fs::write(
                src.join(format!("d/f{i}")),
                format!("content {i}\n").repeat(500),
            )
            .unwrap();
        }
        let sel = select(&src, u64::MAX, u64::MAX).unwrap();
        let (a, b) = (t.path().join("a.erofs"), t.path().join("b.erofs"));
        build_version(&sel, 1, &a).unwrap();
        build_version(&sel, 2, &b).unwrap();
        let (ia, ib) = (
            erofs::Image::open(&a).unwrap(),
            erofs::Image::open(&b).unwrap(),
        );
        for i in 0..40 {
            let rel = PathBuf::from(format!("d/f{i}"));
            let fa = ia.resolve(&format!("/d/f{i}")).unwrap();
            let fpa = ia.fingerprint(&fa).unwrap().unwrap();
            match ib.resolve(&format!("/d/f{i}")) {
                Err(_) => assert!(removed(&rel), "{rel:?} missing"),
                Ok(fb) => {
                    let fpb = ib.fingerprint(&fb).unwrap().unwrap();
                    assert_eq!(fpa != fpb, changed(&rel), "{rel:?}");
                }
            }
        }
    }
}
