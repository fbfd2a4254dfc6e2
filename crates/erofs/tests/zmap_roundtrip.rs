//! Compressed-file maps (zmap.rs) through a build-then-read round trip: for every codec and
//! layout option (pcluster size, inline tails, dedupe, fragments), every file our reader
//! decodes is byte for byte what went in. Needs neither root nor the test vectors.

use erofs::build::{self, Compression, NoProgress, Options, Source};
use erofs::{FileType, Image};
use std::collections::BTreeMap;
use std::path::Path;

/// Files of many sizes around block and pcluster boundaries, compressible and not, with
/// duplicates (dedupe) and small tails (fragments, ztailpacking).
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let text = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| b"the quick brown fox jumps over the lazy dog\n"[i % 44] ^ (i / 4099) as u8)
            .collect()
    };
    let mut files = BTreeMap::new();
    for n in [1, 100, 4095, 4096, 4097, 12_345, 65_536, 70_001, 300_000] {
        files.insert(format!("text-{n}"), text(n));
        files.insert(format!("noise-{n}"), noise(n));
        let mut mixed = text(n);
        mixed.extend(noise(n / 3));
        files.insert(format!("mixed-{n}"), mixed);
    }
    files.insert("dup-a".into(), text(200_000));
    files.insert("dup-b".into(), text(200_000));
    for (name, data) in &files {
        std::fs::write(root.join(name), data).unwrap();
    }
    files
}

fn read_back(image: &Image, name: &str) -> Vec<u8> {
    let inode = image.resolve(&format!("/{name}")).unwrap();
    assert_eq!(inode.file_type(), FileType::Reg, "{name}");
    let mut out = vec![0u8; inode.size as usize];
    let mut at = 0;
    while at < out.len() {
        let n = image
            .read_at(&inode, at as u64, &mut out[at..])
            .unwrap_or_else(|e| panic!("{name} at {at}: {e}"));
        assert!(n > 0, "{name}: short read at {at}");
        at += n;
    }
    out
}

#[test]
fn every_codec_and_layout_reads_back_what_went_in() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let files = tree(&src);
    let mut compressed_files = 0;
    for spec in ["lz4", "lz4hc", "zstd", "lzma", "deflate"] {
        for pcluster in [None, Some(65536)] {
            for inline in [true, false] {
                for (dedupe, fragments) in [(false, false), (true, false), (true, true)] {
                    let what = format!(
                        "{spec} pcluster {pcluster:?} inline {inline} dedupe {dedupe} \
                         fragments {fragments}"
                    );
                    let mut c = Compression::new(spec, pcluster, 4096).unwrap();
                    c.dedupe = dedupe;
                    c.fragments = fragments;
                    let opts = Options {
                        build_time: 1_700_000_000,
                        inline,
                        compression: Some(c),
                        ..Options::default()
                    };
                    let img = tmp.path().join("img.erofs");
                    build::build(&img, Source::Dir(src.clone()), &opts, &NoProgress)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let image = Image::open(&img).unwrap();
                    for (name, want) in &files {
                        let got = read_back(&image, name);
                        assert!(got == *want, "{what}: {name} differs");
                    }
                    let text = image.resolve("/text-300000").unwrap();
                    if text.layout == erofs::format::layout::COMPRESSED_FULL {
                        compressed_files += 1;
                    }
                }
            }
        }
    }
    // Otherwise the maps were never exercised.
    assert_eq!(
        compressed_files,
        5 * 2 * 2 * 3,
        "text must be stored compressed"
    );
}
