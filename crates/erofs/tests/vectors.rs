//! The reader against the upstream vectors: what it shows equals what the kernel showed
//! (the manifests), fingerprints equal the content's, the name filters are the hash's, and
//! compressed images fail with a clear error.

use erofs::walk::{Visit, walk};
use erofs::{FileType, Image, Inode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use testkit::manifest::{Manifest, assert_same};
use testkit::{Need, require, testdata};

/// Images with uncompressed data.
fn uncompressed() -> Vec<String> {
    testdata::image_names()
        .into_iter()
        .filter(|n| n.starts_with("plain-") || n.starts_with("chunked-") || n == "tar-full-fp")
        .collect()
}

fn compressed() -> Vec<String> {
    let plain = uncompressed();
    testdata::image_names()
        .into_iter()
        .filter(|n| !plain.contains(n))
        .collect()
}

/// A file's content; None when it is compressed and the codecs cannot read it yet.
fn content(img: &Image, inode: &Inode) -> Option<Vec<u8>> {
    let mut out = vec![0u8; inode.size as usize];
    // Odd-sized reads exercise extent boundaries.
    let mut off = 0;
    while off < out.len() {
        let end = (off + 7777).min(out.len());
        match img.read_at(inode, off as u64, &mut out[off..end]) {
            Ok(n) => assert_eq!(n, end - off),
            Err(erofs::Error::CompressedUnsupported { .. }) => return None,
            Err(e) => panic!("nid {}: {e}", inode.nid),
        }
        off = end;
    }
    let mut extra = [0u8; 4];
    assert_eq!(img.read_at(inode, inode.size, &mut extra).unwrap(), 0);
    Some(out)
}

/// The manifest of an image as this reader sees it.
fn reader_manifest(img: &Image) -> Manifest {
    let mut m = Manifest::new();
    walk(img, |v| {
        match v {
            Visit::Problem { path, error } => {
                panic!("{}: {error}", String::from_utf8_lossy(path))
            }
            Visit::Inode { path, inode, .. } => {
                let rel = if path == b"/" {
                    ".".to_string()
                } else {
                    String::from_utf8_lossy(&path[1..]).into_owned()
                };
                let mut e = Map::new();
                let ft = inode.file_type();
                e.insert("type".into(), ft.name().into());
                e.insert("mode".into(), (inode.permissions() as u32).into());
                e.insert("uid".into(), inode.uid.into());
                e.insert("gid".into(), inode.gid.into());
                e.insert(
                    "mtime_ns".into(),
                    (inode.mtime * 1_000_000_000 + inode.mtime_nsec as i64).into(),
                );
                e.insert("nlink".into(), inode.nlink.into());
                match ft {
                    FileType::Reg => {
                        e.insert("size".into(), inode.size.into());
                        // Compressed contents are compared once the codecs can read them.
                        if let Some(c) = content(img, inode) {
                            e.insert("sha256".into(), hex::encode(Sha256::digest(&c)).into());
                        }
                    }
                    FileType::Symlink => match img.read_link(inode) {
                        Ok(t) => {
                            e.insert("target".into(), String::from_utf8_lossy(&t).into());
                        }
                        Err(erofs::Error::CompressedUnsupported { .. }) => {}
                        Err(e) => panic!("{rel}: {e}"),
                    },
                    FileType::CharDev | FileType::BlockDev => {
                        e.insert("rdev_major".into(), inode.rdev_major().into());
                        e.insert("rdev_minor".into(), inode.rdev_minor().into());
                    }
                    _ => {}
                }
                let mut x = Map::new();
                for a in img.listed_xattrs(inode).unwrap() {
                    let name = String::from_utf8(a.name.clone()).unwrap();
                    assert_eq!(
                        img.get_xattr(inode, &a.name).unwrap().as_deref(),
                        Some(a.value.as_slice()),
                        "{rel}: getxattr {name}"
                    );
                    x.insert(name, hex::encode(&a.value).into());
                }
                e.insert("xattrs".into(), Value::Object(x));
                m.insert(rel, Value::Object(e));
            }
        }
        ControlFlow::Continue(())
    });
    m
}

#[test]
fn reader_shows_what_the_kernel_showed() {
    if !require("reader_shows_what_the_kernel_showed", &[Need::Testdata]) {
        return;
    }
    let names = uncompressed();
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        let img = Image::open(testdata::image(&name)).unwrap();
        let got = reader_manifest(&img);
        let want = testkit::manifest::load(&testdata::manifest(&name));
        assert_same(&want, &got, &name);
    }
}

#[test]
fn fingerprints_are_sha256_of_content_and_filters_match_the_hash() {
    if !require(
        "fingerprints_are_sha256_of_content_and_filters_match_the_hash",
        &[Need::Testdata],
    ) {
        return;
    }
    for name in uncompressed() {
        let img = Image::open(testdata::image(&name)).unwrap();
        let has_fp = name.contains("fp");
        let sb = img.superblock();
        assert_eq!(sb.ishare_xattr_prefix_id.is_some(), has_fp, "{name}");
        let mut files = 0;
        let mut filters = 0;
        walk(&img, |v| {
            let Visit::Inode { path, inode, .. } = v else {
                panic!("{name}: {v:?}");
            };
            let raw = erofs::xattr::raw(&img, inode).unwrap();
            if let Some(h) = erofs::xattr::ibody_header(&img, inode).unwrap()
                && sb.has_compat(erofs::format::compat::XATTR_FILTER)
            {
                assert_eq!(
                    h.name_filter,
                    erofs::xattr::expected_filter(&raw),
                    "{name}: {}: stored name filter",
                    String::from_utf8_lossy(path)
                );
                filters += 1;
            }
            let fp = img.fingerprint(inode).unwrap();
            if inode.file_type() == FileType::Reg && inode.size > 0 && has_fp {
                let want = erofs::fingerprint::of_bytes(&content(&img, inode).unwrap());
                assert_eq!(fp.as_deref(), Some(&want[..]), "{name}: {path:?}");
                files += 1;
            } else {
                assert_eq!(fp, None, "{name}: {path:?}");
            }
            ControlFlow::Continue(())
        });
        if has_fp {
            assert!(files > 100, "{name}: only {files} fingerprinted files");
        }
        assert!(
            filters > 0,
            "{name}: no inode with xattrs checked its filter"
        );
    }
}

#[test]
fn fingerprint_names_are_hidden_or_trusted() {
    if !require("fingerprint_names_are_hidden_or_trusted", &[Need::Testdata]) {
        return;
    }
    let hidden = Image::open(testdata::image("plain-fp")).unwrap();
    let p = &hidden.long_prefixes().unwrap()[0];
    assert_eq!(
        (p.base_index, &p.infix[..]),
        (0, &b"erofs.fingerprint.v1"[..])
    );
    let f = hidden.resolve("/big/mixed.bin").unwrap();
    assert!(hidden.fingerprint(&f).unwrap().is_some());
    assert!(hidden.listed_xattrs(&f).unwrap().is_empty());
    assert_eq!(hidden.get_xattr(&f, b"erofs.fingerprint.v1").unwrap(), None);
    let all = hidden.xattrs(&f).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, b"erofs.fingerprint.v1");

    let trusted = Image::open(testdata::image("plain-fp-trusted")).unwrap();
    let f = trusted.resolve("big/mixed.bin").unwrap();
    let v = trusted.fingerprint(&f).unwrap().unwrap();
    assert_eq!(
        trusted.get_xattr(&f, b"trusted.erofs.fingerprint").unwrap(),
        Some(v)
    );
}

#[test]
fn compressed_images_fail_with_a_clear_error() {
    if !require(
        "compressed_images_fail_with_a_clear_error",
        &[Need::Testdata],
    ) {
        return;
    }
    let names = compressed();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let img = Image::open(testdata::image(&name)).unwrap();
        let mut errors = 0;
        walk(&img, |v| {
            match v {
                Visit::Problem { error, .. } => {
                    // Compressed directories cannot be listed yet.
                    assert!(
                        matches!(error, erofs::Error::CompressedUnsupported { .. }),
                        "{name}: {error}"
                    );
                    errors += 1;
                }
                Visit::Inode { inode, .. } => {
                    if inode.file_type() == FileType::Reg && inode.is_compressed() {
                        let e = img.read_at(inode, 0, &mut [0u8; 16]).unwrap_err();
                        let msg = e.to_string();
                        assert!(
                            msg.contains("compressed data (")
                                && msg.contains(") is not supported yet"),
                            "{name}: {msg}"
                        );
                        errors += 1;
                    }
                }
            }
            ControlFlow::Continue(())
        });
        assert!(errors > 0, "{name}: no compressed inode met");
    }
}

#[test]
fn lookup_finds_every_entry_and_nothing_else() {
    if !require(
        "lookup_finds_every_entry_and_nothing_else",
        &[Need::Testdata],
    ) {
        return;
    }
    for name in ["plain-b512-fp", "plain-fp", "chunked-4k-fp"] {
        let img = Image::open(testdata::image(name)).unwrap();
        let mut dirs = 0;
        walk(&img, |v| {
            if let Visit::Inode { inode, .. } = v
                && inode.is_dir()
            {
                dirs += 1;
                let entries = img.read_dir(inode).unwrap();
                for e in &entries {
                    assert_eq!(img.lookup(inode, &e.name).unwrap().as_ref(), Some(e));
                    let mut after = e.name.clone();
                    after.push(0x01);
                    assert_eq!(img.lookup(inode, &after).unwrap(), None);
                }
                for missing in [&b"\x01"[..], b"~~~~", b"-", &[0xffu8; 255][..]] {
                    assert_eq!(img.lookup(inode, missing).unwrap(), None);
                }
            }
            ControlFlow::Continue(())
        });
        assert!(dirs > 10);
        // Resolve goes through lookups, ".." included.
        let a = img.resolve("/big/mixed.bin").unwrap();
        let b = img.resolve("big/../big/./mixed.bin").unwrap();
        assert_eq!(a, b);
        assert!(matches!(
            img.resolve("/big/mixed.bin/x"),
            Err(erofs::Error::NotFound { .. })
        ));
    }
}

#[test]
fn metadata_of_compressed_images_is_what_the_kernel_showed() {
    if !require(
        "metadata_of_compressed_images_is_what_the_kernel_showed",
        &[Need::Testdata],
    ) {
        return;
    }
    // Everything but compressed contents: inodes (48-bit ones too), directories, xattrs.
    // Images whose directories are compressed wait for the codecs.
    let mut checked = 0;
    for name in compressed()
        .into_iter()
        .filter(|n| !n.contains("compressed-dirs"))
    {
        let img = Image::open(testdata::image(&name)).unwrap();
        let got = reader_manifest(&img);
        let mut want = testkit::manifest::load(&testdata::manifest(&name));
        for (path, e) in want.iter_mut() {
            let g = &got[path];
            let obj = e.as_object_mut().unwrap();
            for key in ["sha256", "target"] {
                if g.get(key).is_none() {
                    obj.remove(key);
                }
            }
        }
        assert_same(&want, &got, &name);
        checked += 1;
    }
    assert!(checked >= 10);
}
