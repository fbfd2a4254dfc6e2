//! The kernel, through `LoopMount`, shows each plain vector exactly as its manifest says: this
//! pins the manifest code every other test relies on.

use testkit::{LoopMount, Need, manifest, require, testdata};

#[test]
fn kernel_mount_of_plain_fp_matches_its_manifest() {
    if !require(
        "kernel_mount_of_plain_fp_matches_its_manifest",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let m = LoopMount::new(&testdata::image("plain-fp")).expect("mount");
    let got = manifest::of_tree(m.path()).expect("walk");
    manifest::assert_same(
        &manifest::load(&testdata::manifest("plain-fp")),
        &got,
        "plain-fp",
    );
}
