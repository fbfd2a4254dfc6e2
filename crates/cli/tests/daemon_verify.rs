//! Verified and trusted domains, and images without fingerprints, end to end: a forged
//! fingerprint never supplies another image's bytes in a verified domain; files without
//! fingerprints share with fingerprinted ones and are hashed once per image. Root and
//! /dev/fuse required.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use erofs_share_daemon::control::{DomainStatus, MountStatus};
use testkit::{Need, require};

fn gate(name: &str) -> bool {
    require(name, &[Need::Fuse])
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

/// Builds `dir/NAME.erofs` from `files` with our mkfs and `extra` arguments.
fn mk(dir: &Path, name: &str, files: &[(&str, &[u8])], extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("src-{name}"));
    for (rel, data) in files {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    mkfs(dir, name, &src, extra)
}

fn mkfs(dir: &Path, name: &str, src: &Path, extra: &[&str]) -> PathBuf {
    let img = dir.join(format!("{name}.erofs"));
    let out = std::process::Command::new(BIN)
        .args(["mkfs", "-q"])
        .args(extra)
        .arg(&img)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

fn mount_status(d: &Daemon, mp: &Path) -> MountStatus {
    d.status()
        .mounts
        .into_iter()
        .find(|m| m.mountpoint == mp)
        .unwrap()
}

fn domain(d: &Daemon, id: &str) -> DomainStatus {
    d.status().domains.into_iter().find(|x| x.id == id).unwrap()
}

/// The whole file, or the errno reading it failed with.
fn read_or_errno(p: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(p).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// The file's bytes through a shared mapping.
fn mapped(p: &Path) -> Vec<u8> {
    let f = std::fs::File::open(p).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    Mapped::new(&f, len).unwrap().bytes().to_vec()
}

const X: &str = "lib/x.so";

#[test]
fn a_forged_fingerprint_never_supplies_another_images_bytes_in_a_verified_domain() {
    if !gate("a_forged_fingerprint_never_supplies_another_images_bytes_in_a_verified_domain") {
        return;
    }
    let _cache = cache_lock();
    for front in [None, Some("fuse")] {
        forged_on(front);
    }
}

fn forged_on(front: Option<&str>) {
    let mut d = Daemon::start();
    d.front = front.map(String::from);
    let dir = d.dir.path();
    let (xa, xb) = (noise(1, 200_000), noise(2, 200_000));
    let a = mk(dir, "a", &[(X, &xa), ("etc/a", b"only a")], &[]);
    let honest_b = mk(dir, "b0", &[(X, &xb), ("etc/b", b"only b")], &[]);
    // B claims A's fingerprint for its own (other, same-size) lib/x.so.
    let (fa, fb) = (
        erofs::fingerprint::of_bytes(&xa),
        erofs::fingerprint::of_bytes(&xb),
    );
    let b = patched_copy(&honest_b, dir, "b.erofs", |bytes| {
        let at: Vec<usize> = bytes
            .windows(fb.len())
            .enumerate()
            .filter(|(_, w)| *w == fb)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at.len(), 1, "B's fingerprint is stored once");
        bytes[at[0]..at[0] + fa.len()].copy_from_slice(&fa);
    });
    assert_eq!(
        erofs::Image::open(&b)
            .unwrap()
            .fingerprint(&erofs::Image::open(&b).unwrap().resolve(X).unwrap())
            .unwrap()
            .unwrap(),
        fa.to_vec(),
        "the forgery took"
    );

    // Order 1: A, then B; B's file read first, cold.
    let ma = d.mount(&a, "a1", Some("v1"));
    let mb = d.mount(&b, "b1", Some("v1"));
    testkit::drop_caches().unwrap();
    let from_b = read_or_errno(&mb.join(X));
    assert!(
        from_b != Ok(xb.clone()),
        "B's forged bytes are never shared"
    );
    assert!(read_all(&ma.join(X)) == xa, "A's file is A's bytes");
    assert!(mapped(&ma.join(X)) == xa, "and mapped too");
    assert_eq!(read_all(&mb.join("etc/b")), b"only b");

    // Order 2: B alone first: its forged file is EIO, and stays so; then A joins.
    let mb2 = d.mount(&b, "b2", Some("v2"));
    assert_eq!(read_or_errno(&mb2.join(X)), Err(libc::EIO));
    assert_eq!(read_or_errno(&mb2.join(X)), Err(libc::EIO));
    let st = mount_status(&d, &mb2);
    assert_eq!(st.verify_failures, 1, "counted once: {st:?}");
    assert_eq!(domain(&d, "v2").verify_failures, 1);
    assert!(
        d.log().contains("does not match its fingerprint"),
        "logged: {}",
        d.log()
    );
    let ma2 = d.mount(&a, "a2", Some("v2"));
    assert!(read_all(&ma2.join(X)) == xa);
    testkit::drop_caches().unwrap();
    assert!(mapped(&ma2.join(X)) == xa, "after drop_caches, mapped");
    assert_eq!(
        mount_status(&d, &mb2).verify_failures,
        1,
        "a failed source is never hashed again"
    );

    // Order 3: A unmounted in between: B's file has no honest source left, so it reads as
    // EIO, or as the verified bytes while pages of them are still cached (drop_caches may
    // leave a few), never as B's own.
    assert!(d.umount(&ma2));
    testkit::drop_caches().unwrap();
    let left = read_or_errno(&mb2.join(X));
    assert!(
        left == Err(libc::EIO) || left == Ok(xa.clone()),
        "{:?}",
        left.map(|v| v.len())
    );
    let ma3 = d.mount(&a, "a3", Some("v2"));
    testkit::drop_caches().unwrap();
    assert!(read_all(&ma3.join(X)) == xa, "A back: A's bytes");

    // A domain's mode is fixed by its first mount.
    let e = d
        .try_mount_with(&a, "a4", Some("v1"), true, true)
        .unwrap_err();
    assert!(e.contains("verified"), "{e}");

    // Trusted domain, B first: as the kernel, the first source supplies the bytes, so A's
    // readers see B's forged bytes. This is why domains are verified by default.
    let mb5 = d
        .try_mount_with(&b, "b5", Some("t"), true, true)
        .unwrap()
        .mountpoint;
    let ma5 = d
        .try_mount_with(&a, "a5", Some("t"), true, true)
        .unwrap()
        .mountpoint;
    testkit::drop_caches().unwrap();
    assert!(read_all(&mb5.join(X)) == xb);
    assert!(
        read_all(&ma5.join(X)) == xb,
        "trusted: A's file shows B's forged bytes"
    );
    let t = domain(&d, "t");
    assert!(t.trusted && t.verify_failures == 0, "{t:?}");
    assert!(
        d.try_mount(&a, "a6", Some("t"), true)
            .unwrap_err()
            .contains("trusted")
    );
}

#[test]
fn an_image_without_fingerprints_shares_and_is_hashed_once() {
    if !gate("an_image_without_fingerprints_shares_and_is_hashed_once") {
        return;
    }
    let _cache = cache_lock();
    for front in [None, Some("fuse")] {
        unfingerprinted_on(front);
    }
}

fn unfingerprinted_on(front: Option<&str>) {
    let mut d = Daemon::start();
    d.front = front.map(String::from);
    let dir = d.dir.path();
    let fp = built_image(dir, "fp", 4096);
    let plain = mkfs(dir, "plain", &dir.join("tree"), &["--no-fingerprint"]);
    let ma = d.mount(&fp, "a", Some("d"));
    let mb = d.mount(&plain, "b", Some("d"));
    let st = mount_status(&d, &mb);
    assert!(st.fingerprints_computed > 10, "{st:?}");
    assert_eq!(mount_status(&d, &ma).fingerprints_computed, 0);
    let tree = regular_files(&dir.join("tree"));
    for m in [&ma, &mb] {
        let files = regular_files(m);
        assert_eq!(files.len(), tree.len());
        for (rel, p) in &files {
            assert!(read_all(p) == read_all(&tree[rel]), "{rel} differs");
        }
    }
    // After every file was opened (the FUSE front attaches at first open).
    let dom = domain(&d, "d");
    assert!(dom.objects > 10, "{dom:?}");
    assert_eq!(
        dom.objects, dom.files_shared,
        "every content shared: {dom:?}"
    );
    let unique = unique_content(&[&ma]);
    retry(|| {
        testkit::drop_caches().unwrap();
        let _maps = map_all(&[&ma, &mb]);
        let total = cache_of(&[&ma, &mb], &d.status());
        check(
            total as f64 <= 1.05 * unique as f64,
            format!("page cache {total} > 1.05 × distinct content {unique}"),
        )
    });
    // The next mount of the same image finds its fingerprints in the cache.
    assert!(d.umount(&mb));
    let mb = d.mount(&plain, "b2", Some("d"));
    let st = mount_status(&d, &mb);
    assert_eq!(st.fingerprints_computed, 0, "hashed again: {st:?}");
    assert_eq!(domain(&d, "d").objects, dom.objects);
    assert!(read_all(&mb.join(BIG_TEXT)) == read_all(&ma.join(BIG_TEXT)));
}

#[test]
fn mount_trusted_from_the_cli_fixes_the_domains_mode() {
    if !gate("mount_trusted_from_the_cli_fixes_the_domains_mode") {
        return;
    }
    let d = Daemon::start();
    let img = built_image(d.dir.path(), "img", 4096);
    let cli = |name: &str, trusted: bool| {
        let mut c = std::process::Command::new(BIN);
        c.arg("mount").arg("--state-dir").arg(&d.state);
        c.args(["--domain", "t"]);
        if trusted {
            c.arg("--trusted");
        }
        c.arg(&img).arg(d.mountpoint(name));
        c.output().unwrap()
    };
    let first = cli("a", true);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(domain(&d, "t").trusted);
    let second = cli("b", false);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("domain \"t\" is trusted") && err.contains("add --trusted"),
        "{err}"
    );
    assert!(cli("c", true).status.success());
}
