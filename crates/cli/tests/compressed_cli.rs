//! Compression through the binary: `mkfs -z` for every codec gives images `fsck
//! --verify-fingerprints` passes and `extract` restores; bad specs are refused by name; the
//! known-bad upstream image gets a verdict in seconds.

use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testkit::{Need, manifest, require, testdata};

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .args(args)
        .output()
        .expect("run erofs-share")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn mkfs_z_images_pass_fsck_with_fingerprints() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = testdata::source_tar();
    for (spec, pcluster) in [
        ("lz4", None),
        ("lz4hc,level=12", Some("65536")),
        ("zstd,level=5", None),
        ("lzma,level=3", None),
        ("deflate", Some("16384")),
    ] {
        let img = tmp.path().join(format!("{spec}.erofs"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "mkfs".as_ref(),
            "-q".as_ref(),
            "-z".as_ref(),
            spec.as_ref(),
            img.as_os_str(),
            tar.as_os_str(),
        ];
        if let Some(p) = pcluster {
            args.extend([std::ffi::OsStr::new("--pcluster-size"), p.as_ref()]);
        }
        let o = run(&args);
        assert!(o.status.success(), "mkfs -z {spec}: {}", text(&o));
        let o = run(&[
            "fsck".as_ref(),
            "--verify-fingerprints".as_ref(),
            img.as_os_str(),
        ]);
        assert!(o.status.success(), "fsck of {spec}: {}", text(&o));
    }
}

#[test]
fn extract_of_a_compressed_image_restores_the_source() {
    if !require(
        "extract_of_a_compressed_image_restores_the_source",
        &[Need::Root],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("zstd.erofs");
    let o = run(&[
        "mkfs".as_ref(),
        "-q".as_ref(),
        "-z".as_ref(),
        "zstd".as_ref(),
        img.as_os_str(),
        testdata::source_tar().as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("out");
    let o = run(&["extract".as_ref(), img.as_os_str(), out.as_os_str()]);
    assert!(o.status.success(), "{}", text(&o));
    manifest::assert_same(
        &manifest::load(&testdata::source_manifest()),
        &manifest::of_tree(&out).unwrap(),
        "extract of our zstd image",
    );
}

#[test]
fn bad_compression_options_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.erofs");
    for (args, expect) in [
        (vec!["-z", "lz5"], "unknown compressor"),
        (vec!["-z", "zstd,level=99"], "zstd level 99"),
        (
            vec!["-z", "lz4", "--pcluster-size", "5000"],
            "pcluster size 5000",
        ),
    ] {
        let mut a: Vec<&std::ffi::OsStr> = vec!["mkfs".as_ref()];
        a.extend(args.iter().map(std::ffi::OsStr::new));
        a.extend([img.as_os_str(), tmp.path().as_os_str()]);
        let o = run(&a);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(text(&o).contains(expect), "{args:?}: {}", text(&o));
    }
    assert!(!img.exists());
}

#[test]
fn fsck_gives_the_known_bad_image_a_verdict_in_seconds() {
    let t = Instant::now();
    let img = testdata::known_bad("lz4hc-all-fragments-ztailpacking");
    let o = run(&["fsck".as_ref(), img.as_os_str()]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("34 problems"), "{out}");
    assert!(out.contains("INTERLACED"), "{out}");
}
