//! `erofs-share analyze` predicts what reading every file costs in page cache, checked
//! against a memory cgroup's growth while every file is read from real mounts: kernel erofs,
//! erofs-share `--no-share` and erofs-share in one domain.

use erofs_share_measure::page_cache::growth_with;
use erofs_share_measure::runtime::{KernelLoop, Mounter};
use erofs_share_measure::share::ErofsShare;
use std::path::PathBuf;
use std::process::Command;
use testkit::Need;

#[test]
fn analyze_matches_the_page_cache_of_every_setup() {
    if !testkit::require(
        "analyze_matches_the_page_cache_of_every_setup",
        &[Need::KernelErofs, Need::Fuse],
    ) {
        return;
    }
    let images: Vec<PathBuf> = ["plain-fp", "tar-full-fp", "plain-b512-fp", "plain-b1024"]
        .iter()
        .map(|n| testkit::testdata::image(n))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("analyze")
        .arg("--json")
        .args(&images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let page = a["page_size"].as_u64().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_erofs-share"));
    let setups: [(Box<dyn Mounter>, &str); 4] = [
        (Box::new(KernelLoop), "kernel_pages"),
        (
            Box::new(ErofsShare {
                exe: exe.clone(),
                share: false,
                front: None,
                trusted: false,
            }),
            "pages_without",
        ),
        (
            Box::new(ErofsShare {
                exe: exe.clone(),
                share: true,
                front: None,
                trusted: false,
            }),
            "pages_with",
        ),
        (
            Box::new(ErofsShare {
                exe,
                share: true,
                front: Some("fuse"),
                trusted: false,
            }),
            "fuse_pages_with",
        ),
    ];
    for (mounter, key) in setups {
        let predicted = a[key].as_u64().unwrap() * page;
        let measured = growth_with(mounter.as_ref(), &images).unwrap();
        let err = (predicted as f64 - measured as f64).abs() / measured as f64;
        eprintln!(
            "{}: predicted {predicted}, measured {measured}",
            mounter.label()
        );
        assert!(
            err < 0.02,
            "{}: predicted {predicted} bytes, measured {measured} ({:.2} % off)",
            mounter.label(),
            err * 100.0
        );
    }
}

#[test]
fn analyze_names_a_bad_image() {
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("not-erofs.img");
    std::fs::write(&bad, vec![0x42u8; 8192]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("analyze")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-erofs.img") && err.contains("not an EROFS image"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("analyze")
        .output()
        .unwrap();
    assert!(!out.status.success(), "no image is a usage error");
}
