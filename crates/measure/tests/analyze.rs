//! `analyze` against numbers computed independently: from trees we write ourselves, and from
//! what the kernel shows when it mounts the upstream vectors.

use erofs_share_measure::analyze::{self, Analysis, ImageFiles};
use erofs_share_measure::{page_cache, scan};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{LoopMount, Need};

const PAGE: u64 = 4096;

/// These tests mount and read images, and one measures page-cache growth: run them one at a
/// time, so one test's reads and cache drops never land inside another's measurement.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn scan_all(images: &[PathBuf]) -> Analysis {
    let scans: Vec<ImageFiles> = images
        .iter()
        .map(|p| {
            let img = erofs::Image::open(p).unwrap();
            scan::scan(&img, &p.display().to_string(), PAGE).unwrap()
        })
        .collect();
    analyze::analyze(&scans, PAGE)
}

fn mkfs(dir: &Path, out: &Path) {
    let st = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("-T1700000000")
        .arg(out)
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.erofs {}", out.display());
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[test]
fn images_without_fingerprints_are_hashed_and_counted_exactly() {
    let _serial = serial();
    if !testkit::require(
        "images_without_fingerprints_are_hashed_and_counted_exactly",
        &[testkit::gate::MKFS_EROFS],
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d.join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.join("etc")).unwrap();
    }
    // a: lib (3 pages, also in b), app (1 page, a's version), dup1/dup2 (same 1-page content),
    // a hard link pair (one inode, 2 pages), an empty file.
    std::fs::write(a.join("usr/lib/lib.so"), content(1, 10_000)).unwrap();
    std::fs::write(a.join("usr/app"), content(2, 4096)).unwrap();
    std::fs::write(a.join("etc/dup1"), content(3, 100)).unwrap();
    std::fs::write(a.join("etc/dup2"), content(3, 100)).unwrap();
    std::fs::write(a.join("etc/h1"), content(4, 5000)).unwrap();
    std::fs::hard_link(a.join("etc/h1"), a.join("etc/h2")).unwrap();
    std::fs::write(a.join("empty"), b"").unwrap();
    // b: the same lib, another app (2 pages), one byte.
    std::fs::write(b.join("usr/lib/lib.so"), content(1, 10_000)).unwrap();
    std::fs::write(b.join("usr/app"), content(5, 4097)).unwrap();
    std::fs::write(b.join("etc/one"), b"x").unwrap();
    let (ia, ib) = (t.path().join("a.erofs"), t.path().join("b.erofs"));
    mkfs(&a, &ia);
    mkfs(&b, &ib);

    let r = scan_all(&[ia, ib]);
    let (ra, rb) = (&r.images[0], &r.images[1]);
    assert_eq!((ra.files, rb.files), (6, 3), "hard links are one file");
    assert_eq!(ra.bytes, 10_000 + 4096 + 100 + 100 + 5000);
    assert_eq!((ra.hashed_files, ra.fingerprinted_files), (5, 0));
    assert_eq!(ra.shared_bytes, 10_000);
    assert_eq!(rb.shared_bytes, 10_000);
    assert_eq!(ra.pages, 3 + 1 + 1 + 1 + 2);
    assert_eq!(rb.pages, 3 + 2 + 1);
    assert_eq!(r.file_pages_without, 14);
    // lib 3, app(a) 1, dup 1, h 2, app(b) 2, one 1.
    assert_eq!(r.file_pages_with, 10);
    // FUSE directory listings: a has 4 directories of at most 6 short entries (one page
    // each), b has 4 too.
    assert_eq!(r.fuse_pages_without, 14 + 8);
    assert_eq!(r.fuse_pages_with, 10 + 8);
    // The overlay front: each mount's metadata image instead (at least its directories).
    let metas: u64 = r.images.iter().map(|i| i.overlay_pages).sum();
    assert!(
        r.images.iter().all(|i| i.overlay_pages >= 4),
        "{:?}",
        r.images
    );
    assert_eq!(r.pages_without, 14 + metas);
    assert_eq!(r.top_shared[0].path, "/usr/lib/lib.so");
    assert_eq!(r.top_shared[0].saved_pages, 3);
    assert_eq!(r.top_shared[1].path, "/etc/dup1");
    assert_eq!(r.top_shared.len(), 2);
    let usr = r.by_dir.iter().find(|d| d.dir == "/usr").unwrap();
    assert_eq!((usr.files, usr.pages_without, usr.pages_with), (4, 9, 6));
    // Directories: a has /, /etc, /usr, /usr/lib.
    assert_eq!(ra.dirs, 4);
}

/// Expected figures from the kernel's view of mounted images: files by (dev, ino), content by
/// SHA-256 of what read() returns.
fn kernel_view(mounts: &[&Path]) -> (u64, u64, Vec<u64>) {
    let mut without = 0;
    let mut contents: HashMap<(u64, [u8; 32]), u64> = HashMap::new();
    let mut shared_bytes = Vec::new();
    let mut per_image: Vec<HashSet<(u64, [u8; 32])>> = Vec::new();
    let mut files: Vec<Vec<(u64, [u8; 32])>> = Vec::new();
    for m in mounts {
        let mut seen = HashSet::new();
        let mut keys = HashSet::new();
        let mut list = Vec::new();
        let mut stack = vec![m.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let md = std::fs::symlink_metadata(e.path()).unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else if md.is_file() && seen.insert(md.ino()) {
                    without += md.len().div_ceil(PAGE);
                    if md.len() > 0 {
                        let h: [u8; 32] = Sha256::digest(std::fs::read(e.path()).unwrap()).into();
                        contents.insert((md.len(), h), md.len().div_ceil(PAGE));
                        keys.insert((md.len(), h));
                        list.push((md.len(), h));
                    }
                }
            }
        }
        per_image.push(keys);
        files.push(list);
    }
    for (i, list) in files.iter().enumerate() {
        let shared: u64 = list
            .iter()
            .filter(|k| {
                per_image
                    .iter()
                    .enumerate()
                    .any(|(j, s)| j != i && s.contains(k))
            })
            .map(|k| k.0)
            .sum();
        shared_bytes.push(shared);
    }
    (without, contents.values().sum(), shared_bytes)
}

#[test]
fn vectors_with_and_without_fingerprints_match_the_kernel_view() {
    let _serial = serial();
    if !testkit::require(
        "vectors_with_and_without_fingerprints_match_the_kernel_view",
        &[Need::KernelErofs],
    ) {
        return;
    }
    // Same source tree; one image with stored fingerprints, one without (hashed here).
    let images = [
        testkit::testdata::image("plain-fp"),
        testkit::testdata::image("plain-noinline"),
    ];
    let r = scan_all(&images);
    assert!(r.images[0].fingerprinted_files > 0);
    assert_eq!(r.images[0].hashed_files, 0);
    assert_eq!(r.images[1].fingerprinted_files, 0);
    // Every non-empty file is keyed: stored in the first image, hashed in the second.
    let img = erofs::Image::open(&images[1]).unwrap();
    let nonempty = scan::scan(&img, "x", PAGE)
        .unwrap()
        .files
        .iter()
        .filter(|f| f.size > 0)
        .count() as u64;
    assert!(nonempty > 1000 && nonempty < r.images[1].files);
    assert_eq!(r.images[1].hashed_files, nonempty);
    assert_eq!(r.images[0].fingerprinted_files, nonempty);
    let m0 = LoopMount::new(&images[0]).unwrap();
    let m1 = LoopMount::new(&images[1]).unwrap();
    let (without, with, shared) = kernel_view(&[m0.path(), m1.path()]);
    assert_eq!(r.file_pages_without, without);
    assert_eq!(r.file_pages_with, with);
    assert_eq!(
        vec![r.images[0].shared_bytes, r.images[1].shared_bytes],
        shared
    );
    // Same tree twice (with duplicates inside it): sharing at least halves the page cache.
    assert!(r.file_pages_with * 2 <= r.file_pages_without);
    assert_eq!(r.images[0].shared_bytes, r.images[0].bytes);
}

fn measured_read_all(mounts: &[&Path]) -> u64 {
    page_cache::growth_of_reading(mounts).unwrap()
}

#[test]
fn kernel_prediction_matches_the_measured_page_cache() {
    let _serial = serial();
    if !testkit::require(
        "kernel_prediction_matches_the_measured_page_cache",
        &[Need::KernelErofs],
    ) {
        return;
    }
    for names in [&["plain-fp", "plain-noinline"][..], &["chunked-4k-fp"][..]] {
        let images: Vec<PathBuf> = names.iter().map(|n| testkit::testdata::image(n)).collect();
        let r = scan_all(&images);
        let mounts: Vec<LoopMount> = images.iter().map(|i| LoopMount::new(i).unwrap()).collect();
        let paths: Vec<&Path> = mounts.iter().map(|m| m.path()).collect();
        let measured = measured_read_all(&paths);
        let predicted = r.kernel_pages * PAGE;
        let err = (predicted as f64 - measured as f64).abs() / measured as f64;
        eprintln!("{names:?}: predicted {predicted}, measured {measured}");
        assert!(
            err < 0.05,
            "{names:?}: predicted {predicted} bytes, measured {measured} ({:.1} % off)",
            err * 100.0
        );
    }
}
