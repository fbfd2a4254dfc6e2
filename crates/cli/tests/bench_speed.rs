//! `bench mkfs` and `bench read` run end to end on a small tree and report what they measured.

use std::path::Path;
use std::process::Command;
use testkit::Need;

const BIN: &str = env!("CARGO_BIN_EXE_erofs-share");

/// A small tree: 40 files of mixed sizes, compressible and not, in two directories.
fn tree(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    for d in ["a", "b/c"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        for i in 0..20u64 {
            let len = (i * 7919) % 70_000 + 1;
            let data: Vec<u8> = (0..len).map(|j| ((j * (i + 3)) % 251) as u8).collect();
            std::fs::write(dir.join(d).join(format!("f{i}")), &data).unwrap();
            files += 1;
            bytes += len;
        }
    }
    (files, bytes)
}

fn json(args: &[&str], path: &Path) -> serde_json::Value {
    let out = Command::new(BIN).args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_mkfs_times_both_tools_on_the_same_tree() {
    if !testkit::require(
        "bench_mkfs_times_both_tools_on_the_same_tree",
        &[Need::Root],
    ) {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    tree(src.path());
    let r = json(
        &["bench", "mkfs", "--runs", "2", "-z", "lz4hc", "--json"],
        src.path(),
    );
    assert_eq!(r["ours"]["seconds"].as_array().unwrap().len(), 2);
    assert!(r["ours"]["median_s"].as_f64().unwrap() > 0.0);
    assert!(r["ours"]["image_bytes"].as_u64().unwrap() >= 4096);
    // Debian's erofs-utils is installed by scripts/test.sh: the reference must have run.
    let reference = &r["reference"];
    assert!(
        reference.is_object(),
        "no reference: {}",
        r["reference_note"]
    );
    assert_eq!(reference["seconds"].as_array().unwrap().len(), 2);
    assert!(reference["image_bytes"].as_u64().unwrap() >= 4096);
}

#[test]
fn bench_read_reads_every_file_both_ways() {
    if !testkit::require(
        "bench_read_reads_every_file_both_ways",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let (files, bytes) = tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("t.erofs");
    let st = Command::new(BIN)
        .args(["mkfs", "-q", "-z", "lz4"])
        .arg(&img)
        .arg(src.path())
        .status()
        .unwrap();
    assert!(st.success());
    let r = json(&["bench", "read", "--runs", "1", "--json"], &img);
    assert_eq!(r["files"].as_u64(), Some(files));
    assert_eq!(r["bytes"].as_u64(), Some(bytes));
    assert!(r["library_median_s"].as_f64().unwrap() > 0.0);
    assert!(r["kernel_median_s"].as_f64().unwrap() > 0.0);
}
