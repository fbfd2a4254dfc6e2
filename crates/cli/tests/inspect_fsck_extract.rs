//! The `inspect`, `fsck` and `extract` subcommands, run as the built binary.

use std::process::{Command, Output};
use testkit::{Need, manifest, require, testdata};

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .args(args)
        .output()
        .expect("run erofs-share")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn inspect_shows_superblock_and_paths_as_text_and_json() {
    let img = testdata::image("plain-fp");
    let o = run(&["inspect".as_ref(), img.as_os_str(), "--json".as_ref()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["block_size"], 4096);
    assert_eq!(v["fingerprint_xattr"], "erofs.fingerprint.v1");
    assert!(
        v["features"]
            .as_array()
            .unwrap()
            .contains(&"ishare_xattrs".into())
    );

    let o = run(&[
        "inspect".as_ref(),
        img.as_os_str(),
        "/big/mixed.bin".as_ref(),
        "--json".as_ref(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["type"], "file");
    assert_eq!(v["size"], 535000);
    assert_eq!(
        v["fingerprint"],
        "sha256:970f78557751197f3860df910d8a8bc9da55c3833f872f30dc39b40fb204c780"
    );
    let extents = v["layout"]["extents"].as_array().unwrap();
    let total: u64 = extents.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(total, 535000);

    // Chunked images list their chunk size; text output is line based.
    let o = run(&[
        "inspect".as_ref(),
        testdata::image("chunked-64k").as_os_str(),
        "/big/mixed.bin".as_ref(),
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("chunk_size: 65536"), "{out}");
    assert!(out.contains("format: chunk_based"), "{out}");

    // A missing path is an error naming it.
    let o = run(&["inspect".as_ref(), img.as_os_str(), "/no/such".as_ref()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("/no/such"), "{}", text(&o.stderr));
}

#[test]
fn fsck_passes_good_images_and_fails_damaged_ones() {
    let img = testdata::image("plain-fp");
    let o = run(&[
        "fsck".as_ref(),
        "--verify-fingerprints".as_ref(),
        img.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("clean"), "{}", text(&o.stdout));

    // Damage the content of one file (outside checksummed metadata): its path is named.
    let mut bytes = std::fs::read(&img).unwrap();
    let v: serde_json::Value = serde_json::from_slice(
        &run(&[
            "inspect".as_ref(),
            img.as_os_str(),
            "/big/mixed.bin".as_ref(),
            "--json".as_ref(),
        ])
        .stdout,
    )
    .unwrap();
    let at = v["layout"]["extents"][0]["at"].as_u64().unwrap() as usize;
    bytes[at + 10] ^= 1;
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.erofs");
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&["fsck".as_ref(), bad.as_os_str()]);
    assert!(o.status.success(), "structure is still fine");
    let o = run(&[
        "fsck".as_ref(),
        "--verify-fingerprints".as_ref(),
        bad.as_os_str(),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("/big/mixed.bin: fingerprint does not match"),
        "{err}"
    );

    // A broken superblock is a clear error, not a panic.
    bytes[1024 + 40] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let o = run(&["fsck".as_ref(), bad.as_os_str()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("checksum"), "{}", text(&o.stderr));
}

#[test]
fn extract_restores_the_kernel_view() {
    if !require("extract_restores_the_kernel_view", &[Need::Root]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("tree");
    let o = run(&[
        "extract".as_ref(),
        testdata::image("plain-fp-trusted").as_os_str(),
        dest.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    manifest::assert_same(
        &manifest::load(&testdata::manifest("plain-fp-trusted")),
        &manifest::of_tree(&dest).unwrap(),
        "extract plain-fp-trusted",
    );
    // A second extract into the now non-empty directory is refused.
    let o = run(&[
        "extract".as_ref(),
        testdata::image("plain-fp-trusted").as_os_str(),
        dest.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not an empty directory"),
        "{}",
        text(&o.stderr)
    );
}
