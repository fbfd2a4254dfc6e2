//! Named hostile-input cases planted in copies of a vector (checksum re-sealed, as an
//! attacker would): each gives a clear error naming where, never a panic or a hang.

use erofs::data::{self, Phys};
use erofs::fsck::{FsckOptions, fsck};
use erofs::{Error, Image};
use std::sync::Arc;
use testkit::testdata;

fn reseal(img: &mut [u8]) {
    let n = erofs::superblock::checksum_len(img[1024 + 12]);
    img[1028..1032].fill(0);
    let c = erofs::superblock::checksum_of(&img[1024..1024 + n]);
    img[1028..1032].copy_from_slice(&c.to_le_bytes());
}

fn vector() -> (Vec<u8>, Image) {
    let path = testdata::image("plain-fp");
    (std::fs::read(&path).unwrap(), Image::open(&path).unwrap())
}

fn open(mut bytes: Vec<u8>) -> Result<Image, Error> {
    reseal(&mut bytes);
    Image::from_source(Arc::new(bytes), "hostile")
}

/// Image offset of the directory entry `name` in the root directory.
fn root_dirent_offset(img: &Image, name: &[u8]) -> usize {
    let root = img.root().unwrap();
    let bs = img.superblock().block_size();
    let nblocks = root.size.div_ceil(bs);
    for b in 0..nblocks {
        let e = data::map(img, &root, b * bs).unwrap();
        let base = match e.phys {
            Phys::Image(p) => p + (b * bs - e.logical),
            Phys::Inline { offset, .. } => offset + (b * bs - e.logical),
            Phys::Hole => unreachable!(),
        };
        let mut block = vec![0u8; bs.min(root.size - b * bs) as usize];
        img.read_at(&root, b * bs, &mut block).unwrap();
        let entries = erofs::dir::parse_block(&block).unwrap();
        if let Some(i) = entries.iter().position(|e| e.name == name) {
            return base as usize + i * 12;
        }
    }
    panic!("no entry {name:?}")
}

#[test]
fn a_directory_cycle_is_reported_not_followed() {
    let (mut bytes, img) = vector();
    let at = root_dirent_offset(&img, b"big");
    bytes[at..at + 8].copy_from_slice(&img.root_nid().to_le_bytes());
    let img = open(bytes).unwrap();
    let r = fsck(&img, &FsckOptions::default());
    assert!(
        r.problems
            .iter()
            .any(|p| p.path == "/big" && p.what.contains("reached twice")),
        "{:?}",
        r.problems
    );
}

#[test]
fn an_absurd_file_size_is_an_error_naming_the_inode() {
    let (mut bytes, img) = vector();
    let f = img.resolve("/big/mixed.bin").unwrap();
    assert!(f.extended);
    let at = f.image_offset().unwrap() as usize + 8;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    let img = open(bytes).unwrap();
    let f = img.resolve("/big/mixed.bin").unwrap();
    let e = img
        .read_at(&f, 1 << 40, &mut [0u8; 16])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("nid {}", f.nid)) && e.contains("past the end"),
        "{e}"
    );
    let r = fsck(&img, &FsckOptions::default());
    assert!(
        r.problems.iter().any(|p| p.path == "/big/mixed.bin"),
        "{:?}",
        r.problems
    );
}

#[test]
fn truncated_images_fail_cleanly() {
    let (bytes, _) = vector();
    let e = Image::from_source(Arc::new(bytes[..1100].to_vec()), "short").unwrap_err();
    assert!(matches!(e, Error::NotErofs { .. }), "{e}");
    let half = Image::from_source(Arc::new(bytes[..bytes.len() / 2].to_vec()), "half").unwrap();
    let r = fsck(&half, &FsckOptions::default());
    assert!(!r.is_clean());
    assert!(
        r.problems
            .iter()
            .all(|p| p.what.contains("beyond") || p.what.contains("past the end")),
        "{:?}",
        r.problems
    );
}

#[test]
fn an_oversized_shared_xattr_count_is_refused() {
    let (mut bytes, img) = vector();
    let f = img.resolve("/big/mixed.bin").unwrap();
    assert!(f.xattr_icount > 0);
    let at = f.image_offset().unwrap() as usize + 64 + 4;
    bytes[at] = 255;
    let img = open(bytes).unwrap();
    let f = img.resolve("/big/mixed.bin").unwrap();
    let e = img.xattrs(&f).unwrap_err().to_string();
    assert!(e.contains("shared xattr ids do not fit"), "{e}");
}

#[test]
fn unknown_incompat_features_are_named() {
    let (mut bytes, _) = vector();
    bytes[1024 + 80 + 1] |= 0x40; // bit 0x4000
    let e = open(bytes).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedFeature { bit: 0x4000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0x4000"), "{e}");
}

#[test]
fn a_broken_name_offset_names_the_directory_block() {
    let (mut bytes, img) = vector();
    let root = img.root_nid();
    let at = root_dirent_offset(&img, b"big");
    bytes[at + 8..at + 10].copy_from_slice(&0xfff0u16.to_le_bytes());
    let img = open(bytes).unwrap();
    let e = img.resolve("/big").unwrap_err().to_string();
    assert!(
        e.contains(&format!("nid {root}")) && e.contains("directory block"),
        "{e}"
    );
}

#[test]
fn the_known_bad_image_does_not_crash_the_reader() {
    let img = Image::open(testdata::known_bad("lz4hc-all-fragments-ztailpacking")).unwrap();
    let r = fsck(&img, &FsckOptions::default());
    // mkfs.erofs 1.9.3 marks the packed inode INTERLACED while storing its tail plain: the
    // files whose fragments sit in that pcluster are reported for exactly that, nothing else
    // (every other file decodes), and the whole tree is still walked.
    assert!(!r.problems.is_empty(), "the known defect went unnoticed");
    assert!(
        r.problems
            .iter()
            .all(|p| p.what.contains("marked INTERLACED")),
        "{:?}",
        r.problems
    );
    assert_eq!(r.problems.len(), 34, "{:?}", r.problems);
    assert_eq!(r.dirs, 59, "{r:?}");
}
