//! mkfs end to end: our images of the test vectors' source tree, mounted by the kernel, show
//! exactly its manifest; fingerprints match upstream's field by field; builds are
//! reproducible; Debian's fsck.erofs accepts them; hostile tars fail cleanly.

mod common;

use erofs::build::{self, BuildError, NoProgress, Options, Source};
use erofs::fingerprint::XattrName;
use erofs::format::{SUPER_OFFSET, compat, incompat};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{LoopMount, Need, manifest, require, testdata};

/// The vectors were built with `-T1700000000 --mkfs-time -U<this>`.
const VECTOR_TIME: u64 = 1_700_000_000;
const VECTOR_UUID: [u8; 16] = [
    0x6e, 0xbb, 0x2a, 0x1e, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1,
];

fn opts() -> Options {
    Options {
        build_time: VECTOR_TIME,
        uuid: VECTOR_UUID,
        ..Options::default()
    }
}

fn tar_source() -> Source {
    Source::Tar(Box::new(
        std::fs::File::open(testdata::source_tar()).unwrap(),
    ))
}

fn build_to(dir: &Path, name: &str, source: Source, opts: &Options) -> PathBuf {
    let dst = dir.join(name);
    build::build(&dst, source, opts, &NoProgress).unwrap_or_else(|e| panic!("{name}: {e}"));
    our_fsck_accepts(&dst);
    dst
}

/// The crate's own reader checks every inode, all data and every fingerprint.
fn our_fsck_accepts(image: &Path) {
    let img = erofs::Image::open(image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    let opts = erofs::fsck::FsckOptions {
        verify_fingerprints: true,
        ..Default::default()
    };
    let report = erofs::fsck::fsck(&img, &opts);
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        report.is_clean(),
        "{}: {}",
        image.display(),
        problems.join("\n")
    );
}

/// The source tree extracted with owners, xattrs and ACLs (needs root).
fn extract_source(into: &Path) -> PathBuf {
    let dst = into.join("src");
    std::fs::create_dir(&dst).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--acls", "-xpf"])
        .arg(testdata::source_tar())
        .arg("-C")
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success(), "tar -x of the source tree failed");
    dst
}

fn assert_kernel_shows(image: &Path, expected: &manifest::Manifest, what: &str) {
    let m = LoopMount::new(image).unwrap_or_else(|e| panic!("{what}: mount: {e}"));
    let got = manifest::of_tree(m.path()).unwrap();
    manifest::assert_same(expected, &got, what);
}

#[test]
fn kernel_shows_the_source_tree_from_dir_and_tar() {
    if !require(
        "kernel_shows_the_source_tree_from_dir_and_tar",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let expected = manifest::load(&testdata::source_manifest());
    let src = extract_source(tmp.path());
    let img = build_to(tmp.path(), "dir.erofs", Source::Dir(src.clone()), &opts());
    assert_kernel_shows(&img, &expected, "from the extracted directory");
    let img = build_to(tmp.path(), "tar.erofs", tar_source(), &opts());
    assert_kernel_shows(&img, &expected, "from source-tree.tar");

    // Small blocks: directories span many blocks, tails inline next to big xattr bodies.
    for (bs, inline) in [(512, true), (1024, true), (512, false), (4096, false)] {
        let o = Options {
            block_size: bs,
            inline,
            ..opts()
        };
        let img = build_to(
            tmp.path(),
            &format!("b{bs}-{inline}.erofs"),
            tar_source(),
            &o,
        );
        assert_kernel_shows(
            &img,
            &expected,
            &format!("block size {bs}, inline {inline}"),
        );
    }
}

#[test]
fn a_visible_fingerprint_name_shows_the_content_digest() {
    if !require(
        "a_visible_fingerprint_name_shows_the_content_digest",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        fingerprint: Some(XattrName::new("trusted.erofs.fingerprint").unwrap()),
        ..opts()
    };
    let src = extract_source(tmp.path());
    for (what, source) in [("tar", tar_source()), ("dir", Source::Dir(src.clone()))] {
        let img = build_to(tmp.path(), &format!("trusted-{what}.erofs"), source, &o);
        let m = LoopMount::new(&img).unwrap();
        let mut got = manifest::of_tree(m.path()).unwrap();
        let mut seen = 0;
        for (path, e) in got.iter_mut() {
            let xattrs = e["xattrs"].as_object_mut().unwrap();
            let fp = xattrs.remove("trusted.erofs.fingerprint");
            if e["type"] == "file" && e["size"].as_u64().unwrap() > 0 {
                let want = format!(
                    "{}{}",
                    hex::encode("sha256:"),
                    e["sha256"].as_str().unwrap()
                );
                let fp = fp.and_then(|v| v.as_str().map(String::from));
                assert_eq!(fp, Some(want), "{what}: {path}");
                seen += 1;
            } else {
                assert!(
                    fp.is_none(),
                    "{what}: {path}: fingerprint on an empty or non-regular file"
                );
            }
        }
        assert!(seen > 1000);
        manifest::assert_same(&manifest::load(&testdata::source_manifest()), &got, what);
    }
}

/// Our image and upstream's `name` vector, built from the same tree with the same time and
/// uuid: the fingerprint superblock fields, prefix table, and every inode's name filter and
/// fingerprint entry are the same.
fn compare_fingerprints_with(vector: &str, name: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let o = Options {
        fingerprint: Some(name.map_or_else(XattrName::default, |n| XattrName::new(n).unwrap())),
        ..opts()
    };
    let ours_path = build_to(tmp.path(), "ours.erofs", tar_source(), &o);
    let ours_bytes = std::fs::read(&ours_path).unwrap();
    let theirs_bytes = std::fs::read(testdata::image(vector)).unwrap();
    let (ours, theirs) = (
        common::Image::new(&ours_bytes),
        common::Image::new(&theirs_bytes),
    );
    let (a, b) = (&ours.sb, &theirs.sb);
    let fp_bits = compat::ISHARE_XATTRS | compat::PLAIN_XATTR_PFX | compat::XATTR_FILTER;
    assert_eq!(a.feature_compat.get() & fp_bits, fp_bits);
    assert_eq!(
        a.feature_compat.get(),
        b.feature_compat.get(),
        "feature_compat"
    );
    assert_eq!(
        a.feature_incompat.get(),
        b.feature_incompat.get(),
        "feature_incompat"
    );
    assert_eq!(a.feature_incompat.get(), incompat::XATTR_PREFIXES);
    assert_eq!(
        a.xattr_prefix_count, b.xattr_prefix_count,
        "xattr_prefix_count"
    );
    assert_eq!(
        a.ishare_xattr_prefix_id, b.ishare_xattr_prefix_id,
        "byte 105"
    );
    assert_eq!(a.epoch.get(), b.epoch.get(), "epoch");
    assert_eq!(a.uuid, b.uuid, "uuid");
    assert_eq!(a.inos.get(), b.inos.get(), "inos");
    let record = |img: &common::Image| {
        let at = img.sb.xattr_prefix_start.get() as usize * 4;
        let len = u16::from_le_bytes([img.bytes[at], img.bytes[at + 1]]) as usize;
        img.bytes[at..at + 2 + len].to_vec()
    };
    assert_eq!(record(&ours), record(&theirs), "long prefix record");
    let prefix_is_plain =
        |img: &common::Image| img.sb.xattr_prefix_start.get() as u64 * 4 >= SUPER_OFFSET;
    assert!(prefix_is_plain(&ours) && prefix_is_plain(&theirs));

    let (wa, wb) = (ours.walk(), theirs.walk());
    // tiny.txt carries only the fingerprint: its filter in upstream's image is exactly our
    // hash of the fingerprint name.
    let fp_name = o.fingerprint.as_ref().unwrap();
    let bit = erofs::xattr_name::filter_bit(fp_name.base_index, &fp_name.infix);
    assert_eq!(
        wb["tiny.txt"].filter,
        Some(!(1u32 << bit)),
        "upstream filter of tiny.txt"
    );
    assert_eq!(
        wa.keys().collect::<Vec<_>>(),
        wb.keys().collect::<Vec<_>>(),
        "paths"
    );
    let fp_index = 0x80 | a.ishare_xattr_prefix_id;
    let mut compared = 0;
    for (path, ia) in &wa {
        let ib = &wb[path];
        assert_eq!(ia.filter, ib.filter, "{path}: h_name_filter");
        let fp = |i: &common::RawInode| i.inline.iter().find(|e| e.0 == fp_index).cloned();
        let (fa, fb) = (fp(ia), fp(ib));
        assert_eq!(fa, fb, "{path}: fingerprint entry");
        if let Some((_, suffix, value)) = fa {
            assert!(suffix.is_empty());
            let data = ours.data(ia.nid);
            let mut want = b"sha256:".to_vec();
            want.extend_from_slice(&Sha256::digest(&data));
            assert_eq!(value, want, "{path}: fingerprint value");
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} fingerprints compared");
}

#[test]
fn fingerprints_match_upstream_plain_fp() {
    compare_fingerprints_with("plain-fp", None);
}

#[test]
fn fingerprints_match_upstream_plain_fp_trusted() {
    compare_fingerprints_with("plain-fp-trusted", Some("trusted.erofs.fingerprint"));
}

#[test]
fn superblock_checksum_follows_the_kernel_convention() {
    // The convention, pinned on upstream's vectors: !crc32c over the superblock block from
    // byte 1024 (the first block-size bytes there for 512 and 1024-byte blocks), field zeroed.
    let check = |bytes: &[u8], what: &str| {
        let bs = 1usize << bytes[SUPER_OFFSET as usize + 12];
        let len = if bs > 1024 { bs - 1024 } else { bs };
        let mut sb = bytes[1024..1024 + len].to_vec();
        let stored = u32::from_le_bytes(sb[4..8].try_into().unwrap());
        sb[4..8].fill(0);
        assert_eq!(stored, !crc32c::crc32c(&sb), "{what}");
    };
    for v in ["plain-fp", "plain-b512-fp", "plain-b1024"] {
        check(&std::fs::read(testdata::image(v)).unwrap(), v);
    }
    let tmp = tempfile::tempdir().unwrap();
    for bs in [512, 1024, 4096, 65536] {
        let o = Options {
            block_size: bs,
            ..opts()
        };
        let img = build_to(tmp.path(), &format!("{bs}.erofs"), tar_source(), &o);
        let bytes = std::fs::read(img).unwrap();
        assert_eq!(
            bytes[SUPER_OFFSET as usize + 8] as u32 & 1,
            1,
            "SB_CHKSUM set"
        );
        check(&bytes, &format!("ours, block size {bs}"));
    }
}

#[test]
fn same_input_gives_byte_identical_images() {
    let tmp = tempfile::tempdir().unwrap();
    let a = build_to(tmp.path(), "a.erofs", tar_source(), &opts());
    let b = build_to(tmp.path(), "b.erofs", tar_source(), &opts());
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "tar builds differ"
    );
    if require(
        "same_input_gives_byte_identical_images (directory)",
        &[Need::Root],
    ) {
        let src = extract_source(tmp.path());
        let a = build_to(tmp.path(), "da.erofs", Source::Dir(src.clone()), &opts());
        let b = build_to(tmp.path(), "db.erofs", Source::Dir(src), &opts());
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "directory builds differ"
        );
    }
}

#[test]
fn debian_fsck_accepts_our_images() {
    if !require(
        "debian_fsck_accepts_our_images",
        &[testkit::gate::FSCK_EROFS],
    ) {
        return;
    }
    // erofs-utils 1.5 knows neither long xattr prefixes (incompat 0x40, which fingerprints
    // need) nor block sizes other than 4096: it is given the images it can read.
    let tmp = tempfile::tempdir().unwrap();
    for inline in [true, false] {
        let o = Options {
            fingerprint: None,
            inline,
            ..opts()
        };
        let img = build_to(tmp.path(), &format!("{inline}.erofs"), tar_source(), &o);
        let out = Command::new("fsck.erofs")
            .arg("--extract")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fsck.erofs rejects our image (inline {inline}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- synthetic tars ----

/// One ustar member (with a PAX header first when `pax` is not empty).
fn member(
    out: &mut Vec<u8>,
    name: &str,
    typeflag: u8,
    data: &[u8],
    link: &str,
    pax: &[(&str, &[u8])],
) {
    if !pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in pax {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        member(out, "PaxHeader", b'x', &body, "", &[]);
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"14524470400\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    set_checksum(&mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

fn set_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 1024]);
}

fn build_tar(dir: &Path, tar: Vec<u8>, o: &Options) -> Result<PathBuf, BuildError> {
    let dst = dir.join("t.erofs");
    build::build(
        &dst,
        Source::Tar(Box::new(std::io::Cursor::new(tar))),
        o,
        &NoProgress,
    )?;
    our_fsck_accepts(&dst);
    Ok(dst)
}

#[test]
fn hostile_tars_fail_with_clear_errors_and_keep_the_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("t.erofs");
    std::fs::write(&dst, b"precious").unwrap();
    let good = {
        let mut t = Vec::new();
        member(&mut t, "a", b'0', &[7u8; 5000], "", &[]);
        end(&mut t);
        t
    };
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push((
        "truncated data",
        good[..1500].to_vec(),
        "\"a\": archive is truncated (in this entry's data)",
    ));
    cases.push(("truncated header", good[..300].to_vec(), "truncated"));
    cases.push((
        "no end marker",
        good[..512 + 5120].to_vec(),
        "end-of-archive",
    ));
    let mut bad_sum = good.clone();
    bad_sum[0] ^= 1;
    cases.push(("bad checksum", bad_sum, "checksum"));
    let mut t = Vec::new();
    member(&mut t, "../escape", b'0', b"x", "", &[]);
    end(&mut t);
    cases.push(("dotdot", t, "leaves the archive root"));
    let mut t = Vec::new();
    member(&mut t, "/etc/passwd", b'0', b"x", "", &[]);
    end(&mut t);
    cases.push(("absolute", t, "absolute path"));
    let mut t = Vec::new();
    member(&mut t, "x", b'0', b"", "", &[("path", b"a/../../b")]);
    end(&mut t);
    cases.push(("pax dotdot", t, "leaves the archive root"));
    let mut t = Vec::new();
    member(
        &mut t,
        "big",
        b'0',
        b"",
        "",
        &[("size", b"99999999999999999")],
    );
    end(&mut t);
    cases.push(("huge size", t, "too large"));
    let mut t = Vec::new();
    member(&mut t, "big", b'0', b"", "", &[("size", b"1000000000")]);
    end(&mut t);
    cases.push(("size beyond the data", t, "truncated"));
    let mut t = Vec::new();
    member(&mut t, "l", b'1', b"", "missing", &[]);
    end(&mut t);
    cases.push(("hardlink to nothing", t, "not in the archive before it"));
    let mut t = Vec::new();
    member(&mut t, "s", b'S', b"", "", &[]);
    end(&mut t);
    cases.push(("sparse", t, "sparse"));
    let mut t = Vec::new();
    member(&mut t, "x", b'0', b"", "", &[]);
    let n = t.len();
    t[n - 512 + 124..n - 512 + 136].copy_from_slice(b"77777777777\0");
    let mut h: [u8; 512] = t[n - 512..].try_into().unwrap();
    set_checksum(&mut h);
    t[n - 512..].copy_from_slice(&h);
    cases.push(("declared 8 GiB, nothing there", t, "truncated"));
    let mut t = Vec::new();
    let long = format!("user.{}", "n".repeat(300));
    member(
        &mut t,
        "x",
        b'0',
        b"",
        "",
        &[(&format!("SCHILY.xattr.{long}"), b"v")],
    );
    end(&mut t);
    cases.push(("xattr name too long", t, "longer than 255 bytes"));
    let mut t = Vec::new();
    member(
        &mut t,
        "x",
        b'0',
        b"",
        "",
        &[("SCHILY.acl.access", b"user:bob:rwx")],
    );
    end(&mut t);
    cases.push(("ACL with a user name", t, "not a numeric"));
    let mut t = Vec::new();
    member(
        &mut t,
        "s",
        b'2',
        b"",
        "",
        &[("linkpath", "x".repeat(5000).as_bytes())],
    );
    end(&mut t);
    cases.push(("symlink target too long", t, "1 to 4095"));
    cases.push(("garbage", vec![0x55; 4096], "checksum"));
    cases.push(("empty", Vec::new(), "end-of-archive"));
    for (what, tar, want) in cases {
        let err = build_tar(tmp.path(), tar, &opts())
            .expect_err(what)
            .to_string();
        assert!(
            err.contains(want),
            "{what}: error {err:?} does not mention {want:?}"
        );
        assert!(
            err.contains("tar input at byte"),
            "{what}: {err:?} has no offset"
        );
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            b"precious",
            "{what}: destination clobbered"
        );
    }
    // Compressed, small members are read whole and big ones spooled: the same words.
    let mut big = Vec::new();
    // Over the 4 MiB segment: spooled to a temporary file first.
    member(&mut big, "a", b'0', &vec![7u8; (4 << 20) + 1000], "", &[]);
    end(&mut big);
    let mut o = opts();
    o.compression = Some(erofs::build::Compression::new("lz4", None, 4096).unwrap());
    for (data, cut) in [(&good, 1500), (&big, 512 + 300_000)] {
        let err = build_tar(tmp.path(), data[..cut].to_vec(), &o)
            .expect_err("truncated, compressed")
            .to_string();
        assert!(
            err.contains("\"a\": archive is truncated (in this entry's data)"),
            "{err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary files left behind");
    build_tar(tmp.path(), good, &opts()).unwrap();
    assert_ne!(std::fs::read(&dst).unwrap(), b"precious");
}

#[test]
fn oci_whiteouts_become_overlayfs_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Vec::new();
    member(&mut t, "d/", b'5', b"", "", &[]);
    member(&mut t, "d/.wh..wh..opq", b'0', b"", "", &[]);
    member(&mut t, "d/.wh.gone", b'0', b"", "", &[]);
    member(&mut t, "d/kept", b'0', b"data", "", &[]);
    end(&mut t);
    let o = Options {
        oci_layer: true,
        ..opts()
    };
    let img = build_tar(tmp.path(), t.clone(), &o).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    let image = common::Image::new(&bytes);
    let w = image.walk();
    assert_eq!(
        w.keys().collect::<Vec<_>>(),
        vec![".", "d", "d/gone", "d/kept"]
    );
    let gone = &w["d/gone"];
    assert_eq!(gone.mode & 0o170000, 0o020000, "a character device");
    let (_, _, rdev) = image.inode(gone.nid);
    assert_eq!(rdev, 0, "device 0/0");
    assert!(
        w["d"]
            .inline
            .contains(&(4, b"overlay.opaque".to_vec(), b"y".to_vec())),
        "{:?}",
        w["d"].inline
    );
    // Without --oci-layer the names are kept as they are.
    let img = build_tar(tmp.path(), t, &opts()).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    let w = common::Image::new(&bytes).walk();
    assert!(w.contains_key("d/.wh.gone") && w.contains_key("d/.wh..wh..opq"));
}

#[test]
fn gzip_and_zstd_tars_give_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = std::fs::read(testdata::source_tar()).unwrap();
    let plain = build_to(tmp.path(), "plain.erofs", tar_source(), &opts());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&raw[..], 1).unwrap();
    for (name, data) in [("gz", gz), ("zst", zst)] {
        let img = build_to(
            tmp.path(),
            name,
            Source::Tar(Box::new(std::io::Cursor::new(data))),
            &opts(),
        );
        assert!(
            std::fs::read(&img).unwrap() == std::fs::read(&plain).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn bad_options_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for bs in [0, 256, 3000, 131072] {
        let o = Options {
            block_size: bs,
            ..opts()
        };
        let err = build_tar(tmp.path(), vec![0; 1024], &o)
            .unwrap_err()
            .to_string();
        assert!(err.contains("block size"), "{err}");
    }
}

// ---- a directory tree with the format's edge cases ----

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: c is NUL-terminated and ts points to two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; value is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}", path.display());
}

/// A tree of edge cases: 40-deep nesting, a 1500-entry directory, 255-byte names, sizes
/// around block boundaries, a tail that cannot be inlined beside a 3000-byte xattr, large
/// ids, nanosecond and pre-1970 mtimes, hardlinks, a long symlink, special files.
fn edge_tree(root: &Path) {
    use std::fs;
    let mut d = root.join("deep");
    for i in 0..40 {
        d = d.join(format!("d{i:02}"));
    }
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("bottom"), b"bottom\n").unwrap();
    let many = root.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..1500 {
        let len = 1 + (i * 37) % 255;
        let name: String = format!("{i:04}")
            .chars()
            .chain(std::iter::repeat('n'))
            .take(len.max(4))
            .collect();
        fs::write(many.join(name), []).unwrap();
    }
    fs::write(many.join("x".repeat(255)), b"long name").unwrap();
    let sizes = root.join("sizes");
    fs::create_dir(&sizes).unwrap();
    for s in [
        1usize, 511, 512, 513, 4031, 4032, 4033, 4095, 4096, 4097, 8191, 12288, 70000,
    ] {
        let data: Vec<u8> = (0..s).map(|i| (i * 7 + s) as u8).collect();
        fs::write(sizes.join(format!("s{s}")), data).unwrap();
    }
    let x = sizes.join("xattr-heavy");
    fs::write(&x, vec![b'x'; 4000]).unwrap();
    setxattr(&x, "user.big", &[b'v'; 3000]);
    setxattr(&x, "trusted.t", b"1");
    let ids = root.join("ids");
    fs::create_dir(&ids).unwrap();
    let big = ids.join("big-ids");
    fs::write(&big, b"ids").unwrap();
    lchown(&big, 100_000, 4_000_000_000);
    let small = ids.join("small-ids");
    fs::write(&small, b"ids").unwrap();
    lchown(&small, 1000, 1000);
    let links = root.join("links");
    fs::create_dir(&links).unwrap();
    fs::write(links.join("a"), b"linked").unwrap();
    fs::hard_link(links.join("a"), links.join("b")).unwrap();
    fs::hard_link(links.join("a"), root.join("c")).unwrap();
    std::os::unix::fs::symlink("t".repeat(4000), links.join("long-symlink")).unwrap();
    std::os::unix::fs::symlink("a", links.join("short-symlink")).unwrap();
    let special = root.join("special");
    fs::create_dir(&special).unwrap();
    let c = std::ffi::CString::new(special.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    let c = std::ffi::CString::new(special.join("chr").to_str().unwrap()).unwrap();
    let dev = libc::makedev(300, 70000);
    // SAFETY: c is NUL-terminated.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) };
    assert_eq!(r, 0);
    let _sock = std::os::unix::net::UnixListener::bind(special.join("sock")).unwrap();
    fs::write(root.join("skip.o"), b"excluded").unwrap();
    // mtimes last, deepest first, so creating children does not change them again.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() && !p.is_symlink() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        all.push(p);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        let (sec, nsec) = match i % 4 {
            0 => (1_600_000_000 + i as i64, 0),
            1 => (1_650_000_000 + i as i64, 123_456_789),
            2 => (-86_400 - i as i64, 500),
            _ => (1_700_000_000, 0),
        };
        set_mtime(p, sec, nsec);
    }
}

#[test]
fn kernel_shows_an_edge_case_directory_exactly() {
    if !require(
        "kernel_shows_an_edge_case_directory_exactly",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    edge_tree(&src);
    let mut expected = manifest::of_tree(&src).unwrap();
    expected.remove("skip.o");
    let o = Options {
        exclude: vec![build::Pattern::new("*.o").unwrap()],
        ..opts()
    };
    for (bs, inline) in [(4096, true), (512, true), (1024, false)] {
        let o = Options {
            block_size: bs,
            inline,
            ..o.clone()
        };
        let img = build_to(
            tmp.path(),
            &format!("edge-{bs}.erofs"),
            Source::Dir(src.clone()),
            &o,
        );
        assert_kernel_shows(
            &img,
            &expected,
            &format!("edge tree, block size {bs}, inline {inline}"),
        );
    }
    // Owner overrides apply to every inode.
    let o = Options {
        uid: Some(5),
        gid: Some(70_000),
        ..o
    };
    let img = build_to(tmp.path(), "edge-ids.erofs", Source::Dir(src.clone()), &o);
    for e in expected.values_mut() {
        e["uid"] = 5.into();
        e["gid"] = 70_000.into();
    }
    assert_kernel_shows(&img, &expected, "edge tree with --uid/--gid");
}

#[test]
fn tar_excludes_cover_whole_subtrees_and_their_hardlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Vec::new();
    member(&mut t, "keep/a", b'0', b"a", "", &[]);
    member(&mut t, "cache/x", b'0', b"x", "", &[]);
    member(&mut t, "cache/sub/y", b'0', b"y", "", &[]);
    member(&mut t, "keep/l", b'1', b"", "cache/x", &[]);
    member(&mut t, "keep/b.o", b'0', b"o", "", &[]);
    end(&mut t);
    let o = Options {
        exclude: vec![
            build::Pattern::new("cache").unwrap(),
            build::Pattern::new("*.o").unwrap(),
        ],
        ..opts()
    };
    let img = build_tar(tmp.path(), t, &o).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    let w = common::Image::new(&bytes).walk();
    assert_eq!(w.keys().collect::<Vec<_>>(), vec![".", "keep", "keep/a"]);
    assert_eq!(common::Image::new(&bytes).data(w["keep/a"].nid), b"a");
}

#[test]
fn gnu_ustar_and_pax_tars_of_one_tree_show_it() {
    if !require(
        "gnu_ustar_and_pax_tars_of_one_tree_show_it",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Paths over 100 bytes (GNU long names, ustar prefix), a long symlink target (GNU long
    // link), a hardlink, a device.
    let long_dir = src.join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::write(long_dir.join("f".repeat(90)), b"deep").unwrap();
    std::os::unix::fs::symlink("t".repeat(300), src.join("longlink")).unwrap();
    std::fs::hard_link(long_dir.join("f".repeat(90)), src.join("hard")).unwrap();
    let c = std::ffi::CString::new(src.join("blk").to_str().unwrap()).unwrap();
    let dev = libc::makedev(8, 3);
    // SAFETY: c is NUL-terminated.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o660, dev) };
    assert_eq!(r, 0);
    set_mtime(&src, 1_700_000_000, 0);
    let expected = manifest::of_tree(&src).unwrap();
    for (format, owner) in [
        ("gnu", "4000000000"),
        ("ustar", "1000"),
        ("posix", "4000000000"),
    ] {
        let tar = tmp.path().join(format!("{format}.tar"));
        // ustar holds no link target over 100 bytes: leave out the long symlink and the
        // hardlink to the long path.
        let skip: &[&str] = if format == "ustar" {
            &["--exclude=./longlink", "--exclude=./hard"]
        } else {
            &[]
        };
        let st = Command::new("tar")
            .args(skip)
            .arg(format!("--format={format}"))
            .arg(format!("--owner=:{owner}"))
            .arg(format!("--group=:{owner}"))
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar --format={format}");
        let img = build_to(
            tmp.path(),
            &format!("{format}.erofs"),
            Source::Tar(Box::new(std::fs::File::open(&tar).unwrap())),
            &opts(),
        );
        let mut want = expected.clone();
        if format == "ustar" {
            want.remove("longlink");
            want.remove("hard");
            let deep = format!("{}/{}/{}", "d".repeat(60), "e".repeat(60), "f".repeat(90));
            want.get_mut(&deep).unwrap()["nlink"] = 1.into();
        }
        for e in want.values_mut() {
            e["uid"] = owner.parse::<u64>().unwrap().into();
            e["gid"] = owner.parse::<u64>().unwrap().into();
            if format != "posix" {
                // Only PAX headers carry nanoseconds.
                let ns = e["mtime_ns"].as_i64().unwrap();
                e["mtime_ns"] = (ns - ns.rem_euclid(1_000_000_000)).into();
            }
        }
        assert_kernel_shows(&img, &want, &format!("tar --format={format}"));
    }
}

#[test]
fn mangled_tars_never_panic_or_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Vec::new();
    member(&mut t, "d/", b'5', b"", "", &[("mtime", b"1700000000.5")]);
    member(
        &mut t,
        "d/f",
        b'0',
        &[9u8; 3000],
        "",
        &[("SCHILY.xattr.user.a", b"v")],
    );
    member(&mut t, "d/l", b'1', b"", "d/f", &[]);
    member(&mut t, "d/s", b'2', b"", "f", &[]);
    member(
        &mut t,
        "d/g",
        b'0',
        &[1u8; 700],
        "",
        &[("SCHILY.acl.access", b"user::rw-,group::r--,other::r--")],
    );
    end(&mut t);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let start = std::time::Instant::now();
    let (mut ok, mut failed) = (0, 0);
    for i in 0..400 {
        let mut m = t.clone();
        match i % 3 {
            0 => m.truncate((next() % t.len() as u64) as usize),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let at = (next() % m.len() as u64) as usize;
                    m[at] = next() as u8;
                }
            }
            _ => {
                // Byte flips inside headers, checksums fixed up so the parser goes deeper.
                let hdr = 512 * (next() % (m.len() as u64 / 512)) as usize;
                let at = hdr + (next() % 512) as usize;
                m[at] = next() as u8;
                let mut h: [u8; 512] = m[hdr..hdr + 512].try_into().unwrap();
                set_checksum(&mut h);
                m[hdr..hdr + 512].copy_from_slice(&h);
            }
        }
        match build_tar(tmp.path(), m, &opts()) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                failed += 1;
            }
        }
    }
    assert!(failed > 100 && ok > 10, "ok {ok}, failed {failed}");
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

/// Sparse files: (name, apparent size, data ranges written with a pattern).
#[allow(clippy::type_complexity)]
const SPARSE: &[(&str, u64, &[(u64, u64)])] = &[
    ("all-hole", (3 << 20) + 5, &[]),
    ("hole-data-hole", 3 << 20, &[((1 << 20) + 100, 5000)]),
    ("data-at-end", (2 << 20) + 7, &[((2 << 20) - 10, 17)]),
    ("tiny-hole", 100, &[]),
    (
        "over-4g",
        (4 << 30) + (3 << 20),
        &[(4096, 10), ((4 << 30) + (1 << 20), 8192)],
    ),
    ("dense", 50_000, &[(0, 50_000)]),
];

/// The files of [`SPARSE`] of at most `max` bytes.
fn sparse_files(
    max: u64,
) -> impl Iterator<Item = &'static (&'static str, u64, &'static [(u64, u64)])> {
    SPARSE.iter().filter(move |s| s.1 <= max)
}

fn sparse_tree(root: &Path, max: u64) {
    use std::os::unix::fs::FileExt;
    for &(name, size, data) in sparse_files(max) {
        let p = root.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for &(at, len) in data {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            f.write_all_at(&bytes, at).unwrap();
        }
        setxattr(&p, "user.overlay.redirect", format!("/{name}").as_bytes());
        setxattr(&p, "user.overlay.metacopy", b"");
    }
}

/// The SHA-256 of `len` bytes of `read` (called with an offset and a buffer).
fn sha256_of(len: u64, mut read: impl FnMut(u64, &mut [u8]) -> usize) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = read(off, &mut buf);
        assert!(n > 0, "short read at {off} of {len}");
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex::encode(h.finalize())
}

#[test]
fn sparse_files_store_only_their_data() {
    let tmp = tempfile::tempdir().unwrap();
    // The file of over 4 GiB only with 4 KiB blocks: reading it back takes seconds.
    for (bs, max) in [(512u32, 1 << 30), (4096, u64::MAX)] {
        let src = tmp.path().join(format!("src-{bs}"));
        std::fs::create_dir(&src).unwrap();
        sparse_tree(&src, max);
        let data: u64 = sparse_files(max)
            .flat_map(|s| s.2.iter().map(|r| r.1))
            .sum();
        // Fingerprints (of holes as zeros, checked by fsck) with 512-byte blocks; without them
        // for the big file, which would be hashed twice more.
        let o = Options {
            block_size: bs,
            fingerprint: opts().fingerprint.filter(|_| bs == 512),
            ..opts()
        };
        let image = build_to(
            tmp.path(),
            &format!("sparse-{bs}.erofs"),
            Source::Dir(src.clone()),
            &o,
        );
        let img = erofs::Image::open(&image).unwrap();
        // 4 GiB of holes cost at most a block map (with 512-byte blocks, 64 KiB chunks: 256
        // KiB of map and two chunks of data is the cheapest).
        assert!(
            img.len() < data + (1 << 20),
            "{bs}: a {} byte image for {data} bytes of data",
            img.len()
        );
        assert_ne!(
            img.superblock().feature_incompat & incompat::CHUNKED_FILE,
            0,
            "{bs}: chunked_file feature"
        );
        for &(name, size, ranges) in sparse_files(max) {
            let inode = img.resolve(&format!("/{name}")).unwrap();
            assert_eq!(inode.size, size, "{bs} {name}");
            let chunked = inode.layout == erofs::format::layout::CHUNK_BASED;
            assert_eq!(chunked, name != "dense", "{bs} {name}: layout");
            // Our reader gives the full logical content: data where written, zeros elsewhere.
            let mut expected = Sha256::new();
            let mut at = 0;
            let zeros = vec![0u8; 1 << 20];
            let zero_to = |h: &mut Sha256, to: u64, at: &mut u64| {
                while *at < to {
                    let n = (to - *at).min(zeros.len() as u64) as usize;
                    h.update(&zeros[..n]);
                    *at += n as u64;
                }
            };
            for &(start, len) in ranges {
                zero_to(&mut expected, start, &mut at);
                expected.update((0..len).map(|i| (i % 251) as u8 + 1).collect::<Vec<u8>>());
                at += len;
            }
            zero_to(&mut expected, size, &mut at);
            let digest: [u8; 32] = expected.finalize().into();
            let got = sha256_of(size, |off, buf| img.read_at(&inode, off, buf).unwrap());
            assert_eq!(got, hex::encode(digest), "{bs} {name}: content");
            if o.fingerprint.is_some() {
                assert_eq!(
                    img.fingerprint(&inode).unwrap(),
                    Some(erofs::fingerprint::value_of_digest(&digest).to_vec()),
                    "{bs} {name}: the fingerprint is of the full content"
                );
            }
            assert_eq!(
                img.get_xattr(&inode, b"user.overlay.redirect").unwrap(),
                Some(format!("/{name}").into_bytes()),
                "{bs} {name}: xattr"
            );
        }
        if require("sparse_files_store_only_their_data", &[Need::KernelErofs]) {
            let expected = manifest::of_tree(&src).unwrap();
            assert_kernel_shows(&image, &expected, &format!("sparse, {bs}-byte blocks"));
        }
    }
}
