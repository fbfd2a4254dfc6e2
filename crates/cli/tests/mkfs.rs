//! `erofs-share mkfs` through the built binary: sources (directory, tar file, gzip on stdin),
//! options reaching the image, reproducibility, and clear failures that keep the destination.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use testkit::{LoopMount, Need, manifest, require};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_erofs-share"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run erofs-share")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn small_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), b"hello\n").unwrap();
    std::fs::write(root.join("sub/big.bin"), vec![3u8; 10_000]).unwrap();
    std::fs::write(root.join("sub/scratch.tmp"), b"leave me out").unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).unwrap();
}

#[test]
fn builds_from_a_directory_and_the_kernel_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let img = tmp.path().join("img.erofs");
    let out = run(bin().arg("mkfs").arg(&img).arg(&src));
    ok(&out, "mkfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 fingerprints"), "summary: {stderr}");
    if !require(
        "builds_from_a_directory_and_the_kernel_shows_it",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let m = LoopMount::new(&img).unwrap();
    // No inode may be number 0 (readdir hides such entries, here the root's `.` and `..`).
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        std::fs::metadata(m.path()).unwrap().ino(),
        0,
        "root inode number"
    );
    let ls = Command::new("ls").arg("-a").arg(m.path()).output().unwrap();
    let names = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        names.lines().any(|l| l == ".") && names.lines().any(|l| l == ".."),
        "{names}"
    );
    manifest::assert_same(
        &manifest::of_tree(&src).unwrap(),
        &manifest::of_tree(m.path()).unwrap(),
        "mkfs of a directory",
    );
}

#[test]
fn options_reach_the_image() {
    if !require("options_reach_the_image", &[Need::KernelErofs]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let img = tmp.path().join("img.erofs");
    let out = run(bin()
        .args([
            "mkfs",
            "--block-size",
            "1024",
            "--no-inline",
            "--uid",
            "7",
            "--gid",
            "8",
        ])
        .args(["--exclude", "*.tmp", "--fingerprint-xattr", "user.fp"])
        .arg(&img)
        .arg(&src));
    ok(&out, "mkfs with options");
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes[1024 + 12], 10, "blkszbits");
    let m = LoopMount::new(&img).unwrap();
    let got = manifest::of_tree(m.path()).unwrap();
    assert!(!got.contains_key("sub/scratch.tmp"));
    assert!(got.values().all(|e| e["uid"] == 7 && e["gid"] == 8));
    let fp = &got["sub/big.bin"]["xattrs"]["user.fp"];
    assert_eq!(
        fp.as_str().unwrap(),
        format!(
            "{}{}",
            hex::encode("sha256:"),
            got["sub/big.bin"]["sha256"].as_str().unwrap()
        )
    );
}

#[test]
fn gzip_tar_on_stdin_with_source_date_epoch_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let tgz = tmp.path().join("src.tgz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let build = |name: &str| {
        let img = tmp.path().join(name);
        let out = bin()
            .arg("mkfs")
            .arg(&img)
            .arg("-")
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdin(Stdio::from(std::fs::File::open(&tgz).unwrap()))
            .output()
            .unwrap();
        ok(&out, name);
        std::fs::read(img).unwrap()
    };
    let (a, b) = (build("a.erofs"), build("b.erofs"));
    assert!(a == b, "two builds of the same input differ");
    // The uuid comes from SOURCE_DATE_EPOCH, and is a version 4 uuid.
    assert_eq!(a[1024 + 48 + 6] >> 4, 4);
}

#[test]
fn failures_are_clear_and_keep_the_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img.erofs");
    std::fs::write(&img, b"old image").unwrap();
    let bad_tar = tmp.path().join("bad.tar");
    std::fs::write(&bad_tar, vec![0x41u8; 2048]).unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--block-size", "3000"], "block size 3000"),
        (vec!["--uuid", "xyz"], "uuid"),
        (vec!["--exclude", ""], "exclude pattern"),
        (
            vec!["--fingerprint-xattr", "user."],
            "nothing after its prefix",
        ),
    ];
    for (args, want) in cases {
        let out = run(bin().arg("mkfs").args(&args).arg(&img).arg(&src));
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = run(bin().arg("mkfs").arg(&img).arg(&bad_tar));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum") && err.contains("tar input at byte 0"),
        "{err}"
    );
    let out = run(bin().arg("mkfs").arg(&img).arg(tmp.path().join("missing")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    let out = bin()
        .arg("mkfs")
        .arg(&img)
        .arg(&src)
        .env("SOURCE_DATE_EPOCH", "soon")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOURCE_DATE_EPOCH"));
    assert_eq!(std::fs::read(&img).unwrap(), b"old image");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        3,
        "temp files left"
    );
}

#[test]
fn an_image_written_inside_its_source_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let img = src.join("img.erofs");
    let out = run(bin().arg("mkfs").arg(&img).arg(&src));
    ok(&out, "mkfs into its own source");
    let again = run(bin().arg("mkfs").arg(&img).arg(&src));
    ok(&again, "mkfs over an image inside its source");
    // The first build leaves out its own temporary file; the second one includes the first
    // image (an ordinary file by then) but again not its own temporary file.
    let count = |o: &Output| {
        let s = String::from_utf8_lossy(&o.stderr).into_owned();
        let summary = s.lines().find(|l| l.contains(" inodes")).unwrap();
        summary
            .split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    // small_tree has 7 inodes (root, sub, sub/deeper, a.txt, big.bin, scratch.tmp, link):
    // absolute counts, since a relative one would also hold if every build packed its own
    // temporary file.
    assert_eq!(count(&out), 7, "first build");
    assert_eq!(
        count(&again),
        8,
        "second build: the tree and the first image"
    );
}

#[test]
fn the_image_mode_follows_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    for (umask, mode) in [("022", 0o644), ("027", 0o640), ("077", 0o600)] {
        let img = tmp.path().join(format!("img-{umask}.erofs"));
        // The umask is set in a shell that execs the binary: tests share one process.
        let out = run(Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" mkfs \"$1\" \"$2\""))
            .arg(env!("CARGO_BIN_EXE_erofs-share"))
            .arg(&img)
            .arg(&src));
        ok(&out, "mkfs");
        let got = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode, "umask {umask}: mode {got:o}");
    }
}

#[test]
fn compact_mtimes_make_inodes_compact_and_the_kernel_shows_every_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    // Whole seconds, each path its own mtime, directories last (writing in them moves theirs).
    let mut paths: Vec<_> = [
        "a.txt",
        "sub/big.bin",
        "sub/scratch.tmp",
        "sub/deeper",
        "sub",
        "",
    ]
    .iter()
    .map(|p| src.join(p))
    .collect();
    for (i, p) in paths.drain(..).enumerate() {
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(1_600_000_000 + 86_400 * i as u64);
        std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
    }
    let build = |name: &str, extra: &[&str]| {
        let img = tmp.path().join(name);
        ok(
            &run(bin().arg("mkfs").args(extra).arg(&img).arg(&src)),
            name,
        );
        img
    };
    let plain = build("plain.erofs", &[]);
    let compact = build("compact.erofs", &["--compact-mtimes"]);
    let extended = |img: &Path| {
        let image = erofs::Image::open(img).unwrap();
        let mut n = 0;
        erofs::walk::try_walk::<erofs::walk::Problem>(&image, |_, inode| {
            n += inode.extended as usize;
            Ok(())
        })
        .unwrap();
        n
    };
    assert!(
        extended(&plain) >= 5,
        "different mtimes need extended inodes"
    );
    // The symlink's mtime is the time of the test: far from the others, maybe not at 0 ns.
    assert!(extended(&compact) <= 1, "{} extended", extended(&compact));
    if !require(
        "compact_mtimes_make_inodes_compact_and_the_kernel_shows_every_mtime",
        &[Need::KernelErofs],
    ) {
        return;
    }
    if !erofs_share_daemon::front::overlay::kernel_reads().compact_mtimes {
        eprintln!("kernel before 6.15: compact-inode mtimes are not shown; sizes checked only");
        return;
    }
    let m = LoopMount::new(&compact).unwrap();
    manifest::assert_same(
        &manifest::of_tree(&src).unwrap(),
        &manifest::of_tree(m.path()).unwrap(),
        "mkfs --compact-mtimes",
    );
}
