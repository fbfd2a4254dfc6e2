//! Tree manifests in the JSON form of the test vectors' `manifests/*.json`:
//! `{ "path": { "type", "mode", "uid", "gid", "mtime_ns", "nlink", "size", "sha256",
//! "target", "rdev_major", "rdev_minor", "xattrs": { name: hex } } }`, paths relative to the
//! root ("." for the root itself), mode without the file type bits.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Path → entry object.
pub type Manifest = BTreeMap<String, Value>;

/// Load a manifest JSON file.
pub fn load(path: &Path) -> Manifest {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifest of the tree under `root` as the running kernel shows it.
pub fn of_tree(root: &Path) -> std::io::Result<Manifest> {
    let mut out = Manifest::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn rel_name(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(p) if p.as_os_str().is_empty() => ".".to_string(),
        Ok(p) => String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned(),
        Err(_) => unreachable!("walk stays under root"),
    }
}

fn walk(root: &Path, path: &Path, out: &mut Manifest) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(path)?;
    out.insert(rel_name(root, path), entry(path, &md)?);
    if md.is_dir() {
        for child in std::fs::read_dir(path)? {
            walk(root, &child?.path(), out)?;
        }
    }
    Ok(())
}

fn entry(path: &Path, md: &std::fs::Metadata) -> std::io::Result<Value> {
    let ft = md.file_type();
    let mut e = Map::new();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_block_device() {
        "blk"
    } else if ft.is_char_device() {
        "chr"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "sock"
    };
    e.insert("type".into(), kind.into());
    e.insert("mode".into(), (md.mode() & 0o7777).into());
    e.insert("uid".into(), md.uid().into());
    e.insert("gid".into(), md.gid().into());
    let mtime_ns = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
    e.insert("mtime_ns".into(), (mtime_ns as i64).into());
    e.insert("nlink".into(), md.nlink().into());
    if ft.is_file() {
        e.insert("size".into(), md.len().into());
        e.insert("sha256".into(), sha256_file(path)?.into());
    }
    if ft.is_symlink() {
        let t = std::fs::read_link(path)?;
        e.insert(
            "target".into(),
            String::from_utf8_lossy(t.as_os_str().as_bytes()).into(),
        );
    }
    if ft.is_block_device() || ft.is_char_device() {
        let rdev = md.rdev();
        e.insert("rdev_major".into(), rustix::fs::major(rdev).into());
        e.insert("rdev_minor".into(), rustix::fs::minor(rdev).into());
    }
    let mut xattrs = Map::new();
    for (name, value) in xattrs_of(path)? {
        xattrs.insert(name, hex::encode(value).into());
    }
    e.insert("xattrs".into(), Value::Object(xattrs));
    Ok(Value::Object(e))
}

/// SHA-256 of a file's content, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Every xattr of `path` (not following symlinks), sorted by name.
pub fn xattrs_of(path: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.insert(name.to_string_lossy().into_owned(), value);
        }
    }
    Ok(out)
}

/// Differences between `expected` and `actual`, one line each (at most `limit` lines).
pub fn diff(expected: &Manifest, actual: &Manifest, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in expected {
        match actual.get(path) {
            None => out.push(format!("{path}: missing")),
            Some(a) if a != e => {
                let (eo, ao) = (e.as_object(), a.as_object());
                if let (Some(eo), Some(ao)) = (eo, ao) {
                    let mut keys: Vec<&String> = eo.keys().chain(ao.keys()).collect();
                    keys.sort();
                    keys.dedup();
                    for k in keys {
                        if eo.get(k) != ao.get(k) {
                            out.push(format!(
                                "{path}: {k}: expected {:?}, got {:?}",
                                eo.get(k),
                                ao.get(k)
                            ));
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|p| !expected.contains_key(*p)) {
        out.push(format!("{path}: unexpected"));
    }
    out.truncate(limit);
    out
}

/// Panic with the first differences when the manifests differ.
pub fn assert_same(expected: &Manifest, actual: &Manifest, what: &str) {
    let d = diff(expected, actual, 30);
    assert!(d.is_empty(), "{what}: manifest differs:\n{}", d.join("\n"));
}
