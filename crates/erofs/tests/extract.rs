//! `extract` restores exactly what the kernel shows: for every vector (every codec and
//! compressed layout included), the extracted tree's manifest equals the kernel manifest
//! beside the image.

use erofs::Image;
use erofs::extract::{ExtractError, extract};
use testkit::{Need, manifest, require, testdata};

#[test]
fn extract_of_every_vector_matches_the_kernel_manifest() {
    if !require(
        "extract_of_every_vector_matches_the_kernel_manifest",
        &[Need::Root],
    ) {
        return;
    }
    let names = testdata::image_names();
    assert_eq!(names.len(), 20, "{names:?}");
    for name in names {
        let tmp = tempfile::tempdir().unwrap();
        // A missing destination is created.
        let dest = tmp.path().join("out");
        let img = Image::open(testdata::image(&name)).unwrap();
        let stats = extract(&img, &dest).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            stats.files > 100 && stats.hardlinks > 0 && stats.specials > 0,
            "{stats:?}"
        );
        let got = manifest::of_tree(&dest).unwrap();
        manifest::assert_same(
            &manifest::load(&testdata::manifest(&name)),
            &got,
            &format!("extract of {name}"),
        );
    }
}

#[test]
fn extract_refuses_a_non_empty_destination_and_accepts_an_empty_one() {
    if !require(
        "extract_refuses_a_non_empty_destination_and_accepts_an_empty_one",
        &[Need::Root],
    ) {
        return;
    }
    let img = Image::open(testdata::image("plain-b1024")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("x"), b"keep").unwrap();
    let e = extract(&img, tmp.path()).unwrap_err();
    assert!(matches!(e, ExtractError::NotEmpty(_)), "{e}");
    assert_eq!(std::fs::read(tmp.path().join("x")).unwrap(), b"keep");
    let e = extract(&img, &tmp.path().join("x")).unwrap_err();
    assert!(matches!(e, ExtractError::NotEmpty(_)), "{e}");
    let empty = tempfile::tempdir().unwrap();
    extract(&img, empty.path()).unwrap();
}
