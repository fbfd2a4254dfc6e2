//! mkfs with compression: for every codec our image of the source tree, mounted by the
//! kernel, shows exactly the source manifest; our fsck verifies its fingerprints; builds do
//! not depend on the thread count; Debian's fsck.erofs accepts what it supports.

use erofs::build::{self, Compression, NoProgress, Options, Source};
use erofs::fsck::{FsckOptions, fsck};
use erofs::{FileType, Image, format::layout};
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{LoopMount, Need, manifest, require, testdata};

fn opts(spec: &str, pcluster: Option<u32>) -> Options {
    Options {
        build_time: 1_700_000_000,
        uuid: [7; 16],
        compression: Some(Compression::new(spec, pcluster, 4096).unwrap()),
        ..Options::default()
    }
}

fn tar_source() -> Source {
    Source::Tar(Box::new(
        std::fs::File::open(testdata::source_tar()).unwrap(),
    ))
}

fn build_to(dir: &Path, name: &str, opts: &Options) -> PathBuf {
    let dst = dir.join(name);
    build::build(&dst, tar_source(), opts, &NoProgress).unwrap_or_else(|e| panic!("{name}: {e}"));
    dst
}

/// (codec spec, pcluster size) combinations the kernel test covers.
const CASES: &[(&str, Option<u32>)] = &[
    ("lz4", None),
    ("lz4hc", None),
    ("lz4hc,level=12", Some(65536)),
    ("zstd", None),
    ("zstd,level=9", Some(16384)),
    ("lzma", None),
    ("lzma,level=9", Some(65536)),
    ("deflate", None),
    ("deflate,level=9", Some(32768)),
];

#[test]
fn kernel_shows_the_source_tree_for_every_codec() {
    if !require(
        "kernel_shows_the_source_tree_for_every_codec",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let expected = manifest::load(&testdata::source_manifest());
    let plain = std::fs::metadata(build_to(
        tmp.path(),
        "plain.erofs",
        &Options {
            compression: None,
            ..opts("lz4", None)
        },
    ))
    .unwrap()
    .len();
    for &(spec, pcluster) in CASES {
        let what = format!("{spec} pcluster {pcluster:?}");
        let img = build_to(
            tmp.path(),
            &format!("{spec}-{pcluster:?}.erofs"),
            &opts(spec, pcluster),
        );
        let size = std::fs::metadata(&img).unwrap().len();
        assert!(
            size * 3 < plain,
            "{what}: {size} bytes vs {plain} uncompressed"
        );
        {
            let m = LoopMount::new(&img).unwrap_or_else(|e| panic!("{what}: mount: {e}"));
            let got = manifest::of_tree(m.path()).unwrap();
            manifest::assert_same(&expected, &got, &what);
        }
        let image = Image::open(&img).unwrap();
        let r = fsck(
            &image,
            &FsckOptions {
                verify_fingerprints: true,
                ..FsckOptions::default()
            },
        );
        assert!(r.is_clean(), "{what}: {:#?}", r.problems);
        assert!(r.fingerprints_verified > 1000, "{what}: {r:?}");
        // Compressible files are compressed, random data is not.
        let text = image.resolve("/big/text-800k.txt").unwrap();
        assert_eq!(text.layout, layout::COMPRESSED_FULL, "{what}");
        // Small compressed tails are inline after their maps (ztailpacking); with big
        // pclusters few tails are small enough.
        assert!(
            pcluster.is_some()
                || image
                    .superblock()
                    .has_incompat(erofs::format::incompat::ZTAILPACKING),
            "{what}"
        );
        let random = image.resolve("/big/random-300k.bin").unwrap();
        assert_ne!(random.layout, layout::COMPRESSED_FULL, "{what}");
        assert_eq!(random.file_type(), FileType::Reg);
    }
}

#[test]
fn without_inline_there_is_no_ztailpacking_and_the_kernel_still_agrees() {
    if !require(
        "without_inline_there_is_no_ztailpacking_and_the_kernel_still_agrees",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        inline: false,
        ..opts("lz4hc", None)
    };
    let img = build_to(tmp.path(), "noinline.erofs", &o);
    let image = Image::open(&img).unwrap();
    assert!(
        !image
            .superblock()
            .has_incompat(erofs::format::incompat::ZTAILPACKING)
    );
    let m = LoopMount::new(&img).unwrap();
    let got = manifest::of_tree(m.path()).unwrap();
    manifest::assert_same(
        &manifest::load(&testdata::source_manifest()),
        &got,
        "lz4hc without inline tails",
    );
}

#[test]
fn dedupe_shares_identical_files_and_the_kernel_agrees() {
    if !require(
        "dedupe_shares_identical_files_and_the_kernel_agrees",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = build_to(tmp.path(), "nodedupe.erofs", &opts("lz4hc", None));
    let mut o = opts("lz4hc", None);
    o.compression.as_mut().unwrap().dedupe = true;
    let img = build_to(tmp.path(), "dedupe.erofs", &o);
    let (a, b) = (
        std::fs::metadata(&plain).unwrap().len(),
        std::fs::metadata(&img).unwrap().len(),
    );
    assert!(b < a, "dedupe {b} bytes, without {a}");
    let image = Image::open(&img).unwrap();
    // The copies (random data, so stored uncompressed) share their blocks.
    let blocks = |p: &str| {
        let i = image.resolve(p).unwrap();
        assert!(i.start_block.is_some(), "{p}: {i:?}");
        (i.layout, i.start_block)
    };
    let first = blocks("/dup/a/same.bin");
    assert_eq!(first, blocks("/dup/b/same.bin"));
    assert_eq!(first, blocks("/dup/c/deep/same.bin"));
    let m = LoopMount::new(&img).unwrap();
    let got = manifest::of_tree(m.path()).unwrap();
    manifest::assert_same(
        &manifest::load(&testdata::source_manifest()),
        &got,
        "lz4hc with dedupe",
    );
    drop(m);
    let r = fsck(
        &image,
        &FsckOptions {
            verify_fingerprints: true,
            ..FsckOptions::default()
        },
    );
    assert!(r.is_clean(), "{:#?}", r.problems);
}

#[test]
fn fragments_go_to_the_packed_inode_and_the_kernel_agrees() {
    if !require(
        "fragments_go_to_the_packed_inode_and_the_kernel_agrees",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (spec, pcluster) in [("lz4hc", None), ("lzma", Some(16384)), ("deflate", None)] {
        let mut o = opts(spec, pcluster);
        o.compression.as_mut().unwrap().fragments = true;
        o.compression.as_mut().unwrap().dedupe = true;
        let img = build_to(tmp.path(), &format!("frag-{spec}.erofs"), &o);
        let image = Image::open(&img).unwrap();
        let sb = image.superblock();
        assert!(
            sb.has_incompat(erofs::format::incompat::FRAGMENTS),
            "{spec}"
        );
        let packed = image.inode(sb.packed_nid).unwrap();
        assert!(packed.size > 10_000, "{spec}: packed inode {packed:?}");
        let text = image.resolve("/big/text-800k.txt").unwrap();
        let (ext, _) = erofs::zmap::extents(&image, &text, 1000).unwrap();
        assert!(
            matches!(
                ext.last().unwrap().place,
                erofs::zmap::Place::Fragment { .. }
            ),
            "{spec}: {ext:?}"
        );
        {
            let m = LoopMount::new(&img).unwrap();
            let got = manifest::of_tree(m.path()).unwrap();
            manifest::assert_same(
                &manifest::load(&testdata::source_manifest()),
                &got,
                &format!("{spec} with fragments"),
            );
        }
        let r = fsck(
            &image,
            &FsckOptions {
                verify_fingerprints: true,
                ..FsckOptions::default()
            },
        );
        assert!(r.is_clean(), "{spec}: {:#?}", r.problems);
    }
}

#[test]
fn compressed_images_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    for (spec, pcluster, fragments) in [
        ("lz4hc", Some(65536), false),
        ("zstd", None, false),
        ("lz4", None, true),
    ] {
        let mut images = Vec::new();
        for threads in [1, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut o = opts(spec, pcluster);
            o.compression.as_mut().unwrap().fragments = fragments;
            let img = pool.install(|| build_to(tmp.path(), &format!("{spec}-{threads}.erofs"), &o));
            images.push(std::fs::read(img).unwrap());
        }
        assert!(images[0] == images[1], "{spec}: 1 and 4 threads differ");
    }
}

#[test]
fn debian_fsck_accepts_the_compressed_images_it_supports() {
    if !require(
        "debian_fsck_accepts_the_compressed_images_it_supports",
        &[testkit::gate::FSCK_EROFS],
    ) {
        return;
    }
    let expected = manifest::load(&testdata::source_manifest());
    let tmp = tempfile::tempdir().unwrap();
    // erofs-utils 1.5 knows no long xattr prefixes (fingerprints) and no zstd or deflate;
    // Debian builds it without liblzma, so LZMA images get the structural check only.
    for (spec, pcluster, extract) in [
        ("lz4", None, true),
        ("lz4hc", None, true),
        ("lz4hc", Some(65536), true),
        ("lzma", None, false),
    ] {
        let o = Options {
            fingerprint: None,
            ..opts(spec, pcluster)
        };
        let img = build_to(tmp.path(), &format!("deb-{spec}-{pcluster:?}.erofs"), &o);
        let out_dir = tmp.path().join(format!("x-{spec}-{pcluster:?}"));
        let mut cmd = Command::new("fsck.erofs");
        if extract {
            cmd.arg(format!("--extract={}", out_dir.display()));
        }
        let out = cmd.arg(&img).output().unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !log.contains("<E>"),
            "fsck.erofs rejects our {spec} image: {log}"
        );
        if extract {
            // Content as fsck.erofs decompressed it.
            for (path, entry) in &expected {
                if let Some(sha) = entry.get("sha256").and_then(|v| v.as_str()) {
                    let got = manifest::sha256_file(&out_dir.join(path)).unwrap();
                    assert_eq!(got, sha, "{spec}: {path} as fsck.erofs extracted it");
                }
            }
        }
    }
}

#[test]
fn bad_compression_options_are_refused() {
    for (spec, pcluster) in [
        ("lz5", None),
        ("lz4hc,level=13", None),
        ("zstd,level=0", None),
        ("lzma,level=10", None),
        ("deflate,lvl=3", None),
        ("lz4", Some(6000)),
        ("lz4", Some(2048)),
        ("lz4", Some(2 << 20)),
    ] {
        assert!(
            Compression::new(spec, pcluster, 4096).is_err(),
            "{spec} {pcluster:?} accepted"
        );
    }
}
