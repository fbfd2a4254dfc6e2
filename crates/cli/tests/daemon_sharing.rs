//! The sharing daemon end to end: what image mounts show, one page-cache copy per domain,
//! mmap, O_DIRECT, size mismatches and corrupt images. Root and /dev/fuse required.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::*;
use testkit::{Need, require, testdata};

const PLAIN: &str = "plain-fp";
const PLAIN_B512: &str = "plain-b512-fp";

fn gate(name: &str) -> bool {
    require(name, &[Need::Fuse])
}

/// Whether our reader reads every file of `image` (compressed images need the codecs).
fn reader_reads_all(image: &Path) -> Result<(), String> {
    let img = erofs::Image::open(image).map_err(|e| e.to_string())?;
    erofs_share_measure::speed::read_all_library(&img)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn image_mounts_show_what_the_kernel_shows() {
    if !gate("image_mounts_show_what_the_kernel_shows") {
        return;
    }
    let mut d = Daemon::start();
    // Both fronts, each every vector the reader reads.
    for front in ["overlay", "fuse"] {
        d.front = Some(front.into());
        let mut checked = 0;
        for name in testdata::image_names() {
            let image = testdata::image(&name);
            if let Err(e) = reader_reads_all(&image) {
                eprintln!("not checked over {front}, the reader cannot read {name}: {e}");
                continue;
            }
            let st = d
                .try_mount(&image, &format!("{front}-{name}"), Some("vectors"), true)
                .unwrap_or_else(|e| panic!("{name} over the {front} front: {e}\n{}", d.log()));
            assert_eq!(st.front, front, "{name}: {st:?}");
            let mp = st.mountpoint;
            let expected = testkit::manifest::load(&testdata::manifest(&name));
            let actual = testkit::manifest::of_tree(&mp).unwrap();
            testkit::manifest::assert_same(
                &expected,
                &actual,
                &format!("{name} over the {front} front"),
            );
            // statfs answers from the superblock (FUSE) or the metadata image (overlay).
            assert!(statfs_blocks(&mp) > 0, "{name}: statfs blocks");
            d.umount(&mp);
            checked += 1;
        }
        assert!(
            checked >= 19,
            "only {checked} images checked over the {front} front"
        );
    }
}

#[test]
fn image_mounts_are_read_only_and_cache_unshared_files() {
    if !gate("image_mounts_are_read_only_and_cache_unshared_files") {
        return;
    }
    let _cache = cache_lock();
    let d = Daemon::start();
    let m = d.mount(&testdata::image(PLAIN), "m", None);
    let f = m.join("big/text-800k.txt");
    let rofs = |r: std::io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
    assert!(rofs(
        std::fs::OpenOptions::new().write(true).open(&f).map(drop)
    ));
    assert!(rofs(std::fs::create_dir(m.join("new"))));
    assert!(rofs(std::fs::remove_file(&f)));
    assert!(rofs(std::fs::write(m.join("new-file"), b"x")));
    // Unshared files live in the mount's own page cache: a second read costs no image read.
    let all: Vec<_> = regular_files(&m).into_values().collect();
    for p in &all {
        read_all(p);
    }
    retry(|| {
        let _maps = map_all(&[&m]);
        let before = d.status().mounts[0].image_bytes_read;
        for p in &all {
            read_all(p);
        }
        let after = d.status().mounts[0].image_bytes_read;
        check(
            after == before,
            format!("warm reads read {} image bytes", after - before),
        )
    });
}

fn statfs_blocks(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().to_str().unwrap()).unwrap();
    // SAFETY: statvfs writes into a zeroed struct of the right type.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid path, s is a valid out-pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_blocks
}

/// Reads every regular file of `mounts`.
fn read_everything(mounts: &[&Path]) {
    for m in mounts {
        for p in regular_files(m).values() {
            read_all(p);
        }
    }
}

#[test]
fn one_domain_holds_one_copy_and_fetches_each_page_once() {
    if !gate("one_domain_holds_one_copy_and_fetches_each_page_once") {
        return;
    }
    let _cache = cache_lock();
    let d = Daemon::start();
    // Two different images (4 KiB and 512-byte blocks) of the same tree.
    let a = d.mount(&testdata::image(PLAIN), "a", Some("d"));
    let b = d.mount(&testdata::image(PLAIN_B512), "b", Some("d"));
    let unique = unique_content(&[&a]);
    assert_eq!(unique, unique_content(&[&a, &b]), "same tree");
    // Other processes on a shared host may drop caches mid-measure; that can only make an
    // attempt fail, never pass, so a few attempts are allowed.
    retry(|| {
        testkit::drop_caches().unwrap();
        let m0 = d.status().domains[0].miss_bytes;
        let _maps = map_all(&[&a, &b]);
        let st = d.status();
        let total = cache_of(&[&a, &b], &st);
        eprintln!("page cache {total} bytes, unique content {unique} bytes");
        check(
            total as f64 <= 1.10 * unique as f64,
            format!("one domain: page cache {total} > 1.10 × unique {unique}"),
        )?;
        check(
            total as f64 >= 0.9 * unique as f64,
            format!("measure: {total}"),
        )?;
        let dom = &st.domains[0];
        check(dom.files_shared > 10, format!("{dom:?}"))?;
        check(dom.saved_bytes > 0, format!("{dom:?}"))?;
        // Each page of a dedup file came from the daemon once: misses delivered no more
        // than the objects' page-rounded sizes.
        let object_bytes: u64 = std::fs::read_dir(&dom.dedup_mountpoint)
            .unwrap()
            .map(|e| page_round(e.unwrap().metadata().unwrap().len()))
            .sum();
        let missed = dom.miss_bytes - m0;
        check(
            missed > 0 && missed <= object_bytes,
            format!("misses delivered {missed} bytes for {object_bytes} bytes of objects"),
        )?;
        // Reading it all again costs the daemon nothing: on the overlay front not even a
        // request (lookups, opens and getattrs stay in the kernel).
        read_everything(&[&a, &b]);
        let after = &d.status().domains[0];
        check(
            after.miss_bytes == dom.miss_bytes,
            format!(
                "warm reads reached the daemon: {} bytes",
                after.miss_bytes - dom.miss_bytes
            ),
        )?;
        check(
            st.mounts[0].front != "overlay" || after.requests == dom.requests,
            format!(
                "a warm read sent the daemon {} requests",
                after.requests - dom.requests
            ),
        )
    });
    let st = d.status();
    for m in &st.mounts {
        assert!(m.sharing, "{m:?}");
        assert!(m.front != "fuse" || m.shared_opens > 0, "{m:?}");
        assert!(m.direct_io, "{m:?}");
    }
}

#[test]
fn two_domains_hold_two_copies() {
    if !gate("two_domains_hold_two_copies") {
        return;
    }
    let _cache = cache_lock();
    let d = Daemon::start();
    let a = d.mount(&testdata::image(PLAIN), "a", Some("d1"));
    let b = d.mount(&testdata::image(PLAIN_B512), "b", Some("d2"));
    let unique = unique_content(&[&a]);
    retry(|| {
        testkit::drop_caches().unwrap();
        let _maps = map_all(&[&a, &b]);
        let st = d.status();
        let total = cache_of(&[&a, &b], &st);
        check(st.domains.len() == 2, format!("{st:?}"))?;
        for dom in &st.domains {
            check(dom.mounts == 1, format!("{dom:?}"))?;
        }
        check(
            total as f64 >= 1.8 * unique as f64,
            format!("two domains must not share: {total} vs unique {unique}"),
        )
    });
}

#[test]
fn mmap_from_two_mounts_is_one_copy_and_maps_show_the_user_path() {
    if !gate("mmap_from_two_mounts_is_one_copy_and_maps_show_the_user_path") {
        return;
    }
    let _cache = cache_lock();
    let d = Daemon::start();
    let a = d.mount(&testdata::image(PLAIN), "a", Some("d"));
    let b = d.mount(&testdata::image(PLAIN_B512), "b", Some("d"));
    let rel = "big/text-800k.txt";
    let expected = std::fs::read(a.join(rel)).unwrap();
    let size = expected.len();
    let fa = std::fs::File::open(a.join(rel)).unwrap();
    let fb = std::fs::File::open(b.join(rel)).unwrap();
    let ma = Mapped::new(&fa, size).unwrap();
    let mb = Mapped::new(&fb, size).unwrap();
    assert!(
        ma.bytes() == &expected[..] && mb.bytes() == &expected[..],
        "mapped bytes differ"
    );
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for p in [a.join(rel), b.join(rel)] {
        assert!(
            maps.contains(p.to_str().unwrap()),
            "/proc/self/maps does not show {}",
            p.display()
        );
    }
    // One copy: in the dedup file; none in either mount's own inode.
    let st = d.status();
    let dedup = &st.domains[0].dedup_mountpoint;
    let cached_dedup: u64 = std::fs::read_dir(dedup)
        .unwrap()
        .map(|e| cached(&e.unwrap().path()))
        .sum();
    assert_eq!(cached(&a.join(rel)), 0);
    assert_eq!(cached(&b.join(rel)), 0);
    assert!(
        cached_dedup >= page_round(size as u64) && cached_dedup < 2 * page_round(size as u64),
        "dedup cache {cached_dedup} for one {size}-byte file"
    );
    drop((ma, mb));
}

/// O_DIRECT on a shared file: the FUSE front refuses it (EINVAL: passthrough files keep one
/// page cache); the overlay front serves it from the daemon, uncached, with the right bytes.
#[test]
fn o_direct_on_a_shared_file() {
    if !gate("o_direct_on_a_shared_file") {
        return;
    }
    let mut d = Daemon::start();
    let rel = "big/text-800k.txt";
    let direct = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
    };
    let a = d.mount(&testdata::image(PLAIN), "a", Some("d"));
    let expected = read_all(&a.join(rel));
    let mut f = direct(&a.join(rel)).expect("O_DIRECT open on the overlay front");
    // O_DIRECT wants an aligned buffer: a page-aligned window of a larger vector.
    let len = expected.len().next_multiple_of(4096);
    let mut raw = vec![0u8; len + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + len];
    let n = read_fully(&mut f, buf);
    assert!(buf[..n] == expected[..], "O_DIRECT bytes differ");
    d.front = Some("fuse".into());
    let fa = d.mount(&testdata::image(PLAIN), "fa", Some("f"));
    let n = d.mount(&testdata::image(PLAIN), "n", Some("f2"));
    let e = direct(&fa.join(rel)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    // Shared through another domain too; a --no-share mount serves O_DIRECT normally.
    let ns = d
        .try_mount(&testdata::image(PLAIN), "ns", Some("f"), false)
        .unwrap();
    assert!(ns.unshared_reason.is_some());
    let f = direct(&ns.mountpoint.join(rel)).unwrap();
    drop(f);
    let e = direct(&n.join(rel)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "shared in domain f2");
}

fn read_fully(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    use std::io::Read;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).expect("O_DIRECT read") {
            0 => break,
            n => got += n,
        }
    }
    got
}

#[test]
fn same_fingerprint_other_size_is_served_correctly_and_unshared() {
    if !gate("same_fingerprint_other_size_is_served_correctly_and_unshared") {
        return;
    }
    let d = Daemon::start();
    let image = testdata::image(PLAIN);
    let rel = flat_plain_file(&image);
    let rel = rel.as_str();
    let (off, inode) = inode_offset(&image, rel);
    let new_size = inode.size - 5000;
    let crafted = patched_copy(&image, d.dir.path(), "crafted.erofs", |b| {
        let at = off as usize + 8;
        if inode.extended {
            b[at..at + 8].copy_from_slice(&new_size.to_le_bytes());
        } else {
            b[at..at + 4].copy_from_slice(&(new_size as u32).to_le_bytes());
        }
    });
    let a = d.mount(&image, "a", Some("d"));
    let c = d.mount(&crafted, "c", Some("d"));
    let full = std::fs::read(a.join(rel)).unwrap();
    let short = std::fs::read(c.join(rel)).unwrap();
    assert_eq!(short.len() as u64, new_size);
    assert!(
        short[..] == full[..new_size as usize],
        "shortened content differs"
    );
    let st = d.status();
    let cm = st.mounts.iter().find(|m| m.mountpoint == c).unwrap();
    assert_eq!(cm.size_mismatches, 1, "{cm:?}");
    if cm.front == "fuse" {
        assert_eq!(cm.shared_opens, 0);
        assert_eq!(cm.unshared_opens, 1);
    }
}

#[test]
fn a_corrupt_file_is_eio_and_the_rest_of_its_image_works() {
    if !gate("a_corrupt_file_is_eio_and_the_rest_of_its_image_works") {
        return;
    }
    let d = Daemon::start();
    let image = testdata::image(PLAIN);
    let rel = flat_plain_file(&image);
    let rel = rel.as_str();
    let (off, inode) = inode_offset(&image, rel);
    assert_eq!(inode.layout, 0, "a flat plain file is expected here");
    // Point the file's data far past the end of the image.
    let bad = patched_copy(&image, d.dir.path(), "bad.erofs", |b| {
        let at = off as usize + 16;
        b[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    });
    let good = d.mount(&image, "good", None);
    for (name, domain) in [("alone", Some("bad-only")), ("nodomain", None)] {
        let m = d.mount(&bad, name, domain);
        let e = std::fs::read(m.join(rel)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}");
        for (r, p) in regular_files(&m) {
            if r != rel {
                assert!(
                    read_all(&p) == read_all(&good.join(&r)),
                    "{name}: {r} differs"
                );
            }
        }
    }
    // In a domain with a good image, a miss falls back to the good source whichever
    // mount opened first.
    let b1 = d.mount(&bad, "b1", Some("mixed"));
    let g1 = d.mount(&image, "g1", Some("mixed"));
    let f = std::fs::File::open(b1.join(rel)).unwrap();
    let _g = std::fs::File::open(g1.join(rel)).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut got).unwrap();
    assert!(
        got == read_all(&good.join(rel)),
        "fallback to the good source"
    );
    assert!(d.status().mounts.len() >= 5, "the daemon is alive");
}

#[test]
fn hostile_images_never_crash_the_daemon() {
    if !gate("hostile_images_never_crash_the_daemon") {
        return;
    }
    let d = Daemon::start();
    let image = testdata::image(PLAIN);
    let meta_end = 64 * 1024;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut mounted, mut entries) = (0, 0);
    for i in 0..12 {
        let img = patched_copy(&image, d.dir.path(), &format!("h{i}.erofs"), |b| {
            for _ in 0..64 {
                let at = 1024 + 128 + (next() as usize % (meta_end - 1152));
                b[at] ^= 1 << (next() % 8);
            }
        });
        let domain = if i % 2 == 0 { Some("h") } else { None };
        // A refused image is a fine outcome, with a reason.
        let m = match d.try_mount(&img, &format!("h{i}"), domain, true) {
            Ok(m) => m.mountpoint,
            Err(e) => {
                assert!(!e.trim().is_empty(), "h{i}: refused without a reason");
                continue;
            }
        };
        mounted += 1;
        let mut w = Walk::default();
        walk(&m, 0, &mut w);
        // Damaged metadata may fail any call, but only as the image's error: a dead
        // connection (ENOTCONN) means the daemon crashed, a hang would never get here.
        assert!(
            !w.errors.contains(&libc::ENOTCONN),
            "h{i}: the daemon died during the walk: {:?}\n{}",
            w.errors,
            d.log()
        );
        entries += w.entries;
        d.umount(&m);
    }
    // Otherwise nothing above was exercised.
    assert!(mounted > 0, "no damaged image mounted");
    assert!(entries > 0, "no damaged image showed a single entry");
    let m = d.mount(&image, "after", Some("h"));
    let good = d.mount(&image, "good", None);
    let rel = "big/text-800k.txt";
    assert!(
        read_all(&m.join(rel)) == read_all(&good.join(rel)),
        "daemon still serves"
    );
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// What a walk of a damaged mount saw: entries, and the errno of every failed call.
#[derive(Default)]
struct Walk {
    entries: usize,
    errors: Vec<i32>,
}

fn walk(p: &Path, depth: usize, w: &mut Walk) {
    if depth > 50 {
        return;
    }
    let rd = match std::fs::read_dir(p) {
        Ok(rd) => rd,
        Err(e) => return w.errors.push(errno(&e)),
    };
    let mut dirs = Vec::new();
    for e in rd {
        let path = match e {
            Ok(e) => e.path(),
            Err(e) => {
                w.errors.push(errno(&e));
                continue;
            }
        };
        w.entries += 1;
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                w.errors.push(errno(&e));
                continue;
            }
        };
        if let Err(e) = xattr::list(&path) {
            w.errors.push(errno(&e));
        }
        let r = if md.is_dir() {
            dirs.push(path);
            Ok(())
        } else if md.is_file() {
            std::fs::read(&path).map(drop)
        } else if md.file_type().is_symlink() {
            std::fs::read_link(&path).map(drop)
        } else {
            Ok(())
        };
        if let Err(e) = r {
            w.errors.push(errno(&e));
        }
    }
    for d in dirs {
        walk(&d, depth + 1, w);
    }
}

#[test]
fn images_from_our_mkfs_share_their_common_files() {
    if !gate("images_from_our_mkfs_share_their_common_files") {
        return;
    }
    let d = Daemon::start();
    let mut seed = 7u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect()
    };
    let common = bytes(300_000);
    let (only_a, only_b) = (bytes(50_000), bytes(70_000));
    let mk = |name: &str, files: &[(&str, &[u8])]| {
        let src = d.dir.path().join(format!("src-{name}"));
        for (rel, data) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        let img = d.dir.path().join(format!("{name}.erofs"));
        let out = std::process::Command::new(BIN)
            .args(["mkfs", "-q"])
            .arg(&img)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        img
    };
    let a = mk("a", &[("lib/libcommon.so", &common), ("bin/a", &only_a)]);
    let b = mk(
        "b",
        &[("usr/lib/libcommon.so.1", &common), ("bin/b", &only_b)],
    );
    let ma = d.mount(&a, "a", Some("d"));
    let mb = d.mount(&b, "b", Some("d"));
    assert!(read_all(&ma.join("lib/libcommon.so")) == common);
    assert!(read_all(&mb.join("usr/lib/libcommon.so.1")) == common);
    assert!(read_all(&ma.join("bin/a")) == only_a);
    assert!(read_all(&mb.join("bin/b")) == only_b);
    let dom = &d.status().domains[0];
    assert_eq!(
        (dom.objects, dom.files_shared, dom.references),
        (3, 1, 4),
        "{dom:?}"
    );
}
