//! `fsck` passes every vector (compressed ones included), verifies fingerprints, and finds (and names)
//! damage planted in a copy.

use erofs::Image;
use erofs::data::{self, Phys};
use erofs::fsck::{FsckOptions, fsck};
use std::sync::Arc;
use testkit::testdata;

/// Recompute the superblock checksum after planting damage, as an attacker would.
fn reseal(img: &mut [u8]) {
    let n = erofs::superblock::checksum_len(img[1024 + 12]);
    img[1028..1032].fill(0);
    let c = erofs::superblock::checksum_of(&img[1024..1024 + n]);
    img[1028..1032].copy_from_slice(&c.to_le_bytes());
}

fn verify() -> FsckOptions {
    FsckOptions {
        verify_fingerprints: true,
        ..FsckOptions::default()
    }
}

#[test]
fn every_vector_is_clean() {
    for name in testdata::image_names() {
        let img = Image::open(testdata::image(&name)).unwrap();
        let r = fsck(&img, &verify());
        assert!(r.is_clean(), "{name}: {:#?}", r.problems);
        assert!(r.files > 100 && r.dirs > 10, "{name}: {r:?}");
        if name.contains("fp") {
            assert!(r.fingerprints_verified > 100, "{name}: {r:?}");
        }
        // A structure-only check reads each stored block once: never more than the image,
        // or than its decoded form (at most 12 MiB per 4 KiB pcluster) when compressed.
        let compressed =
            !(name.starts_with("plain-") || name.starts_with("chunked-") || name == "tar-full-fp");
        let bound = img.len() * if compressed { 3072 } else { 1 };
        let r = fsck(&img, &FsckOptions::default());
        assert!(r.is_clean(), "{name}: {:#?}", r.problems);
        assert!(
            r.bytes_read > 0 && r.bytes_read <= bound,
            "{name}: read {} of {}",
            r.bytes_read,
            img.len()
        );
    }
}

#[test]
fn a_changed_content_byte_breaks_its_fingerprint_at_its_path() {
    let bytes = std::fs::read(testdata::image("plain-fp")).unwrap();
    let img = Image::open(testdata::image("plain-fp")).unwrap();
    let f = img.resolve("/big/mixed.bin").unwrap();
    let e = data::map(&img, &f, 1000).unwrap();
    let Phys::Image(pos) = e.phys else {
        panic!("{e:?}")
    };
    let mut bad = bytes.clone();
    bad[(pos + 1000 - e.logical) as usize] ^= 0x55;
    let img = Image::from_source(Arc::new(bad), "bad").unwrap();
    // Without fingerprints the structure is fine.
    assert!(fsck(&img, &FsckOptions::default()).is_clean());
    let r = fsck(&img, &verify());
    assert_eq!(r.problem_count, 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].path, "/big/mixed.bin");
    assert!(r.problems[0].what.contains("fingerprint does not match"));
}

#[test]
fn structural_damage_is_collected_with_paths() {
    let bytes = std::fs::read(testdata::image("plain-b1024")).unwrap();
    let img = Image::open(testdata::image("plain-b1024")).unwrap();
    // Give two files an impossible inode mode.
    let mut bad = bytes.clone();
    let mut paths = Vec::new();
    for p in ["/big/mixed.bin", "/big"] {
        let i = img.resolve(p).unwrap();
        let off = i.image_offset().unwrap() as usize;
        bad[off + 4..off + 6].copy_from_slice(&0o170777u16.to_le_bytes());
        paths.push(p);
    }
    reseal(&mut bad);
    let img = Image::from_source(Arc::new(bad), "bad").unwrap();
    let r = fsck(&img, &FsckOptions::default());
    assert!(!r.is_clean());
    // "/big" is broken, so "/big/mixed.bin" is never reached; other trees still are.
    assert!(
        r.problems
            .iter()
            .any(|p| p.path == "/big" && p.what.contains("no valid file type")),
        "{:?}",
        r.problems
    );
    assert!(r.files > 100);
}
