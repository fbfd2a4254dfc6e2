//! The reader against the upstream vectors: what it shows equals what the kernel showed
//! (the manifests), fingerprints equal the content's, the name filters are the hash's, and
//! compressed images (every codec and layout) read back what the kernel showed.

use erofs::walk::{Visit, walk};
use erofs::{FileType, Image, Inode};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use testkit::manifest::{Manifest, assert_same};
use testkit::testdata;

fn content(img: &Image, inode: &Inode) -> Vec<u8> {
    let mut out = vec![0u8; inode.size as usize];
    // Odd-sized reads exercise extent boundaries.
    let mut off = 0;
    while off < out.len() {
        let end = (off + 7777).min(out.len());
        let n = img.read_at(inode, off as u64, &mut out[off..end]).unwrap();
        assert_eq!(n, end - off);
        off = end;
    }
    let mut extra = [0u8; 4];
    assert_eq!(img.read_at(inode, inode.size, &mut extra).unwrap(), 0);
    out
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
                        let c = content(img, inode);
                        e.insert("sha256".into(), hex::encode(Sha256::digest(&c)).into());
                    }
                    FileType::Symlink => {
                        let t = img.read_link(inode).unwrap();
                        e.insert("target".into(), String::from_utf8_lossy(&t).into());
                    }
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
    let names = testdata::image_names();
    assert_eq!(names.len(), 20, "{names:?}");
    for name in names {
        let img = Image::open(testdata::image(&name)).unwrap();
        let got = reader_manifest(&img);
        let want = testkit::manifest::load(&testdata::manifest(&name));
        assert_same(&want, &got, &name);
    }
}

#[test]
fn fingerprints_are_sha256_of_content_and_filters_match_the_hash() {
    for name in testdata::image_names() {
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
            if let Some((h, raw)) = erofs::xattr::ibody(&img, inode).unwrap()
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
                let want = erofs::fingerprint::of_bytes(&content(&img, inode));
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
fn lookup_finds_every_entry_and_nothing_else() {
    for name in [
        "plain-b512-fp",
        "plain-fp",
        "chunked-4k-fp",
        "lz4hc-compressed-dirs",
    ] {
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

#[derive(Debug)]
enum Stop {
    Visitor(usize),
    Walk(erofs::walk::Problem),
}

impl From<erofs::walk::Problem> for Stop {
    fn from(p: erofs::walk::Problem) -> Self {
        Stop::Walk(p)
    }
}

#[test]
fn try_walk_visits_what_walk_does_and_stops_at_the_first_error() {
    let img = Image::open(testdata::image("plain-fp")).unwrap();
    let mut all = Vec::new();
    walk(&img, |v| {
        if let Visit::Inode { path, .. } = v {
            all.push(path.to_vec());
        }
        ControlFlow::Continue(())
    });
    let mut seen = Vec::new();
    erofs::walk::try_walk(&img, |path, _| {
        seen.push(path.to_vec());
        Ok::<(), Stop>(())
    })
    .unwrap_or_else(|e| match e {
        Stop::Walk(p) => panic!("plain-fp: {p}"),
        Stop::Visitor(n) => panic!("visitor stopped at {n}"),
    });
    assert_eq!(seen, all);
    assert!(all.len() > 20);
    // The visitor's error ends the walk and comes back as is.
    let mut n = 0;
    let r = erofs::walk::try_walk(&img, |_, _| {
        n += 1;
        if n == 10 {
            Err(Stop::Visitor(n))
        } else {
            Ok(())
        }
    });
    assert!(matches!(r, Err(Stop::Visitor(10))), "{r:?}");
    assert_eq!(n, 10);
}
