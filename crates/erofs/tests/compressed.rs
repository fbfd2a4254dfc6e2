//! Compressed images: random ranges of every file of every vector equal the same ranges of
//! the source tree; sequential reads decode each pcluster once; damaged compressed images
//! give errors naming the inode and offset (never a panic or a hang); the known-bad image
//! gets a clear verdict.

use erofs::fsck::{FsckOptions, fsck};
use erofs::walk::{Visit, walk};
use erofs::zmap::{self, Place};
use erofs::{FileType, Image, Inode};
use std::collections::HashMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{Rng, testdata};

/// The regular files of `source-tree.tar`, by path without a leading "./" or "/".
fn source_files() -> HashMap<String, Arc<Vec<u8>>> {
    let f = std::fs::File::open(testdata::source_tar()).unwrap();
    let mut ar = tar::Archive::new(f);
    let mut files: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
    let mut links = Vec::new();
    let norm = |p: &std::path::Path| {
        p.to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string()
    };
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path().unwrap());
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                files.insert(path, Arc::new(v));
            }
            tar::EntryType::Link => {
                let target = norm(&e.link_name().unwrap().unwrap());
                links.push((path, target));
            }
            _ => {}
        }
    }
    for (path, target) in links {
        let data = files[&target].clone();
        files.insert(path, data);
    }
    files
}

/// (path, inode) of every regular file of an image.
fn regular_files(img: &Image) -> Vec<(String, Inode)> {
    let mut out = Vec::new();
    walk(img, |v| {
        match v {
            Visit::Inode { path, inode, .. } if inode.file_type() == FileType::Reg => {
                let p = String::from_utf8_lossy(path)
                    .trim_start_matches('/')
                    .to_string();
                out.push((p, inode.clone()));
            }
            Visit::Problem { path, error } => {
                panic!("{}: {}: {error}", img.name(), String::from_utf8_lossy(path))
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    out
}

#[test]
fn random_ranges_of_every_file_of_every_vector_match_the_source() {
    let source = source_files();
    assert!(source.len() > 1000, "{} source files", source.len());
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut checked = 0u64;
    for name in testdata::image_names() {
        let img = Image::open(testdata::image(&name)).unwrap();
        let mut files = regular_files(&img);
        assert!(files.len() > 1000, "{name}: {} files", files.len());
        // Visit files in a shuffled order so the caches see interleaved inodes.
        for i in (1..files.len()).rev() {
            files.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (path, inode) in &files {
            let want = source
                .get(path)
                .unwrap_or_else(|| panic!("{name}: {path} not in the source tree"));
            assert_eq!(inode.size, want.len() as u64, "{name}: {path}: size");
            let size = inode.size;
            for round in 0..4 {
                let off = match round {
                    0 => 0,
                    1 => size.saturating_sub(rng.below(9000)),
                    _ => rng.below(size + 1),
                };
                let len = rng.below(size.min(150_000) + 2) as usize;
                let mut buf = vec![0xa5u8; len];
                let n = img
                    .read_at(inode, off, &mut buf)
                    .unwrap_or_else(|e| panic!("{name}: {path} at {off}+{len}: {e}"));
                let end = (off as usize + len).min(want.len());
                let expect = &want[(off as usize).min(end)..end];
                assert_eq!(n, expect.len(), "{name}: {path} at {off}+{len}: length");
                assert!(
                    buf[..n] == *expect,
                    "{name}: {path}: bytes {off}..{} differ from the source",
                    off as usize + n
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100_000, "{checked} ranges");
}

#[test]
fn sequential_small_reads_decode_each_pcluster_once() {
    for name in ["lz4", "lz4hc-bigpcluster", "lzma", "zstd", "deflate"] {
        let img = Image::open(testdata::image(name)).unwrap();
        let f = img.resolve("/big/text-800k.txt").unwrap();
        let (extents, more) = zmap::extents(&img, &f, 10_000).unwrap();
        assert!(!more);
        let stored = extents
            .iter()
            .filter(|e| matches!(e.place, Place::Image { .. } | Place::Inline { .. }))
            .count() as u64;
        assert!(stored > 0, "{name}: {extents:?}");
        let before = img.pclusters_decoded();
        let mut buf = vec![0u8; 4096];
        let mut off = 0;
        while off < f.size {
            off += img.read_at(&f, off, &mut buf).unwrap() as u64;
        }
        assert_eq!(
            img.pclusters_decoded() - before,
            stored,
            "{name}: {} pclusters, decoded {} times",
            stored,
            img.pclusters_decoded() - before
        );
    }
}

/// Read every file of `img` fully, collecting errors; panics are test failures.
fn read_everything(img: &Image, errors: &mut Vec<String>) {
    walk(img, |v| {
        match v {
            Visit::Problem { error, .. } => errors.push(error.to_string()),
            Visit::Inode { inode, .. } if inode.file_type() == FileType::Reg => {
                let mut buf = vec![0u8; 65536];
                let mut off = 0;
                while off < inode.size {
                    match img.read_at(inode, off, &mut buf) {
                        Ok(0) => {
                            errors.push(format!("nid {}: short read at {off}", inode.nid));
                            break;
                        }
                        Ok(n) => off += n as u64,
                        Err(e) => {
                            errors.push(e.to_string());
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
}

#[test]
fn damaged_compressed_maps_and_pclusters_give_errors_not_panics() {
    let mut rng = Rng(0xdead_beef_0bad_f00d);
    let mut named = 0;
    for name in [
        "lz4",
        "lz4-legacy",
        "lz4hc-48bit",
        "lz4hc-bigpcluster",
        "lz4hc-ztail-frag-dedupe",
        "lz4hc-all-fragments",
        "lz4hc-compressed-dirs",
        "lzma",
        "deflate",
        "zstd",
        "multi-algo",
    ] {
        let pristine = std::fs::read(testdata::image(name)).unwrap();
        let img = Image::open(testdata::image(name)).unwrap();
        // Targets: the map (header + indexes) and the first stored pcluster of a few big
        // compressed files, and of the packed inode.
        let mut targets: Vec<(u64, u64)> = Vec::new();
        let mut inodes: Vec<Inode> = ["/big/text-800k.txt", "/big/mixed.bin", "/sizes/8192.bin"]
            .iter()
            .map(|p| img.resolve(p).unwrap())
            .collect();
        if img.superblock().packed_nid != 0 {
            inodes.push(img.inode(img.superblock().packed_nid).unwrap());
        }
        for inode in inodes.iter().filter(|i| i.is_compressed()) {
            let meta = inode.image_offset().unwrap() + inode.inode_size() + inode.xattr_size();
            targets.push((meta, 64));
            let (ext, _) = zmap::extents(&img, inode, 4).unwrap();
            for e in ext {
                match e.place {
                    Place::Image { pa, plen } => targets.push((pa, plen)),
                    Place::Inline { pos, plen } => targets.push((pos, plen)),
                    _ => {}
                }
            }
        }
        assert!(!targets.is_empty(), "{name}");
        for round in 0..24 {
            let mut bad = pristine.clone();
            let (start, len) = targets[round % targets.len()];
            for _ in 0..1 + rng.below(4) {
                let at = (start + rng.below(len)) as usize;
                bad[at] = match rng.below(3) {
                    0 => bad[at] ^ (1 << rng.below(8)),
                    1 => 0xff,
                    _ => 0,
                };
            }
            let t = Instant::now();
            let Ok(img) = Image::from_source(Arc::new(bad), format!("{name}#{round}")) else {
                continue;
            };
            let mut errors = Vec::new();
            read_everything(&img, &mut errors);
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{name}#{round}: took {:?}",
                t.elapsed()
            );
            for e in &errors {
                assert!(e.contains(&format!("{name}#{round}")), "{e}");
                if e.contains("extent at offset") || e.contains("offset ") {
                    named += 1;
                }
            }
        }
    }
    assert!(named > 10, "only {named} errors named an offset");
}

#[test]
fn truncated_and_garbage_pclusters_are_errors() {
    for name in ["lz4", "lzma", "deflate", "zstd"] {
        let pristine = std::fs::read(testdata::image(name)).unwrap();
        let img = Image::open(testdata::image(name)).unwrap();
        let f = img.resolve("/big/text-800k.txt").unwrap();
        let (ext, _) = zmap::extents(&img, &f, 100).unwrap();
        let e = ext
            .iter()
            .find(|e| matches!(e.format, zmap::Format::Codec(_)))
            .unwrap();
        let Place::Image { pa, plen } = e.place else {
            panic!("{e:?}")
        };
        // Garbage over the whole pcluster.
        let mut bad = pristine.clone();
        let mut rng = Rng(pa | 1);
        for b in &mut bad[pa as usize..(pa + plen) as usize] {
            *b = rng.next_u64() as u8 | 1;
        }
        let img = Image::from_source(Arc::new(bad), name).unwrap();
        let f = img.resolve("/big/text-800k.txt").unwrap();
        let mut buf = vec![0u8; 4096];
        let err = img.read_at(&f, e.la, &mut buf).unwrap_err().to_string();
        assert!(
            err.contains(&format!("nid {}", f.nid))
                && err.contains(&format!("extent at offset {}", e.la)),
            "{name}: {err}"
        );
    }
}

#[test]
fn known_bad_image_gets_a_clear_verdict_in_seconds() {
    let t = Instant::now();
    let img = Image::open(testdata::known_bad("lz4hc-all-fragments-ztailpacking")).unwrap();
    let r = fsck(&img, &FsckOptions::default());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!r.is_clean());
    // The packed inode's inline tail is a plain pcluster shorter than a block in an inode
    // marked INTERLACED: no rotation of it can be right. Exactly the files whose fragments
    // lie in that tail are affected (the kernel reads 34 wrong files); every other file
    // reads back the source content.
    let packed = img.superblock().packed_nid;
    assert_eq!(r.problem_count, 34, "{:#?}", r.problems);
    for p in &r.problems {
        assert!(
            p.what.contains(&format!("nid {packed}"))
                && p.what.contains("extent at offset")
                && p.what.contains("INTERLACED"),
            "{p}"
        );
    }
    let source = source_files();
    let mut good = 0;
    for (path, inode) in regular_files(&img) {
        let mut buf = vec![0u8; inode.size as usize];
        if img.read_at(&inode, 0, &mut buf).is_ok() {
            assert!(
                buf == *source[&path],
                "{path} reads other bytes than the source"
            );
            good += 1;
        } else {
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.path.trim_start_matches('/') == path)
            );
        }
    }
    assert!(good > 1000, "{good}");
}
