//! The overlay front against the kernel's view of the same image: an OCI-layer image (an
//! overlay whiteout and an opaque directory of its own, an overlay xattr) shows through the
//! front exactly as a kernel erofs mount shows it, but for the documented whiteout form; a
//! container overlay stacked on the mount (depth 2) applies the whiteout and the opaque
//! directory to the layer below; umount ends the mount and the daemon forgets its files.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use testkit::{Need, manifest, require};

fn tar_entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    data: &[u8],
    xattr: Option<(&str, &[u8])>,
) {
    if let Some((name, value)) = xattr {
        b.append_pax_extensions([(format!("SCHILY.xattr.{name}").as_str(), value)])
            .unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

/// A layer: `a/keep`, a whiteout of `a/gone`, an opaque `o/` holding `o/new`, and a file
/// with a `trusted.overlay.` xattr of its own.
fn layer_tar(dir: &Path) -> std::path::PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    tar_entry(&mut b, "a/", tar::EntryType::Directory, b"", None);
    tar_entry(&mut b, "a/keep", tar::EntryType::Regular, b"kept\n", None);
    tar_entry(&mut b, "a/.wh.gone", tar::EntryType::Regular, b"", None);
    tar_entry(&mut b, "o/", tar::EntryType::Directory, b"", None);
    tar_entry(&mut b, "o/.wh..wh..opq", tar::EntryType::Regular, b"", None);
    tar_entry(&mut b, "o/new", tar::EntryType::Regular, b"new\n", None);
    tar_entry(
        &mut b,
        "x",
        tar::EntryType::Regular,
        &vec![7u8; 10_000],
        Some(("trusted.overlay.origin", b"mine")),
    );
    let p = dir.join("layer.tar");
    std::fs::write(&p, b.into_inner().unwrap()).unwrap();
    p
}

/// [`layer_tar`] made into an OCI-layer image in `d`'s directory.
fn layer_image(d: &Daemon) -> std::path::PathBuf {
    let tar = layer_tar(d.dir.path());
    let image = d.dir.path().join("layer.erofs");
    mkfs(&["-q", "--oci-layer"], &image, &tar);
    image
}

fn mkfs(args: &[&str], out: &Path, src: &Path) {
    let o = Command::new(BIN)
        .arg("mkfs")
        .args(args)
        .arg(out)
        .arg(src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_oci_layer_through_the_overlay_front_is_the_kernels_view_and_stacks_as_a_layer() {
    if !require(
        "an_oci_layer_through_the_overlay_front_is_the_kernels_view_and_stacks_as_a_layer",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    let d = Daemon::start();
    let image = layer_image(&d);

    let kernel = testkit::LoopMount::new(&image).unwrap();
    let expected = manifest::of_tree(kernel.path()).unwrap();
    let st = d.try_mount(&image, "front", Some("l"), true).unwrap();
    assert_eq!(st.front, "overlay", "{st:?}");
    let front = st.mountpoint.clone();
    let got = manifest::of_tree(&front).unwrap();

    // The kernel shows the whiteout as a 0/0 character device; the front as an empty file
    // marked as an xattr whiteout, in a directory marked as holding such whiteouts.
    let mut want = expected.clone();
    let gone = want
        .get_mut("a/gone")
        .expect("the kernel shows the whiteout");
    assert_eq!(gone["type"], "chr");
    assert_eq!(
        (gone["rdev_major"].as_u64(), gone["rdev_minor"].as_u64()),
        (Some(0), Some(0))
    );
    let g = gone.as_object_mut().unwrap();
    g.insert("type".into(), "file".into());
    g.remove("rdev_major");
    g.remove("rdev_minor");
    g.insert("size".into(), 0.into());
    g.insert(
        "sha256".into(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
    );
    g.entry("xattrs")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .unwrap()
        .insert("trusted.overlay.whiteout".into(), "".into());
    want.get_mut("a")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .entry("xattrs")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .unwrap()
        .insert("trusted.overlay.opaque".into(), hex::encode("x").into());
    manifest::assert_same(&want, &got, "overlay front vs kernel");
    // The image's own overlay xattrs (opaque dir, origin) are shown as the kernel shows them.
    assert!(
        got["o"]["xattrs"]["trusted.overlay.opaque"].is_string(),
        "{:?}",
        got["o"]
    );
    assert!(
        got["x"]["xattrs"]["trusted.overlay.origin"].is_string(),
        "{:?}",
        got["x"]
    );

    // A container overlay with the front as its upper lower layer: the whiteout hides the
    // base's a/gone, the opaque o/ hides the base's o/old.
    let base = d.dir.path().join("base");
    for (rel, data) in [
        ("a/gone", "base\n"),
        ("a/base", "base\n"),
        ("o/old", "old\n"),
    ] {
        let p = base.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let merged = d.mountpoint("container");
    let opts = format!("lowerdir={}:{}", front.display(), base.display());
    let o = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = |rel: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(merged.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let (a, o_dir) = (names("a"), names("o"));
    let x = std::fs::read(merged.join("x"));
    let _ = Command::new("umount").arg(&merged).status();
    assert_eq!(
        a,
        ["base", "keep"],
        "the whiteout applies to the layer below"
    );
    assert_eq!(o_dir, ["new"], "the opaque directory hides the layer below");
    assert_eq!(x.unwrap(), vec![7u8; 10_000]);

    // umount: the daemon sees the overlay go and forgets its files.
    assert!(d.umount(&front));
    let st = d.status();
    assert!(st.mounts.is_empty(), "{st:?}");
    assert!(
        st.domains.is_empty(),
        "the domain went with its last mount: {st:?}"
    );
    drop(kernel);
}

/// Loop devices whose backing file is (or was, before its unlink) under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let o = Command::new("losetup")
        .args([
            "--list",
            "--noheadings",
            "--raw",
            "--output",
            "NAME,BACK-FILE",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, back)| Path::new(back).starts_with(dir))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn before_file_backed_erofs_the_metadata_image_is_on_a_loop_device_that_goes_with_the_mount() {
    if !require(
        "before_file_backed_erofs_the_metadata_image_is_on_a_loop_device_that_goes_with_the_mount",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    // What a kernel before 6.12 gets (erofs there mounts block devices only).
    let d = Daemon::start_with_env(&[("EROFS_SHARE_META_LOOP", "1")]);
    let image = layer_image(&d);
    let st = d.try_mount(&image, "front", Some("l"), true).unwrap();
    assert_eq!(st.front, "overlay", "{st:?}");
    assert!(st.meta_image.is_some(), "{st:?}");
    let front = d.state.join("front");
    let attached = loops_under(&front);
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(
        std::fs::read(st.mountpoint.join("x")).unwrap(),
        vec![7u8; 10_000]
    );
    assert_eq!(
        std::fs::read(st.mountpoint.join("a/keep")).unwrap(),
        b"kept\n"
    );

    assert!(d.umount(&st.mountpoint));
    let t = std::time::Instant::now();
    while !loops_under(&front).is_empty() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        loops_under(&front),
        Vec::<String>::new(),
        "the loop device outlived its mount"
    );
    assert!(d.status().mounts.is_empty());
}

/// Every file under `dir`, recursively (mountpoints' contents aside: `skip`).
fn files_under(dir: &Path, skip: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.starts_with(skip) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, skip, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

#[test]
fn other_processes_opening_the_daemons_files_do_not_end_a_mount() {
    if !require(
        "other_processes_opening_the_daemons_files_do_not_end_a_mount",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    // A backup, an indexer or an operator's fincore opens and closes whatever it finds in the
    // state directory; the end of a mount must not be read from that.
    let d = Daemon::start();
    let image = layer_image(&d);
    let st = d.try_mount(&image, "front", Some("l"), true).unwrap();
    assert_eq!(st.front, "overlay", "{st:?}");
    let meta = st.meta_image.clone().expect("a metadata image");
    assert!(
        meta.is_file(),
        "status names a metadata image that exists: {meta:?}"
    );
    let dedup = d.state.join("dedup");
    let mut files = Vec::new();
    files_under(&d.state, &dedup, &mut files);
    assert!(files.contains(&meta), "{files:?}");
    for f in &files {
        for _ in 0..3 {
            drop(std::fs::File::open(f));
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(d.status().mounts.len(), 1, "the mount was taken for ended");
    assert_eq!(
        std::fs::read(st.mountpoint.join("x")).unwrap(),
        vec![7u8; 10_000]
    );
    assert!(d.umount(&st.mountpoint));
    assert!(d.status().mounts.is_empty());
}

/// Bytes the daemon has read from the image of the mount at `mp`.
fn image_bytes_read(d: &Daemon, mp: &Path) -> u64 {
    let st = d.status();
    st.mounts
        .iter()
        .find(|m| m.mountpoint == mp)
        .map(|m| m.image_bytes_read)
        .expect("the mount is listed")
}

/// Reads every file under `root` after evicting its pages: a cold read of the mount's data
/// that leaves every other page cache on the host alone.
fn read_cold(root: &Path) {
    for (_, p) in regular_files(root) {
        let f = std::fs::File::open(&p).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        drop(f);
        read_all(&p);
    }
}

#[test]
fn small_files_blocks_are_read_once_until_drop_caches() {
    if !require(
        "small_files_blocks_are_read_once_until_drop_caches",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    // Forty small files: their contents are inline tails beside their inodes, several to a
    // block of the image.
    let d = Daemon::start();
    let src = d.dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..40u32 {
        let body: Vec<u8> = (0..100 + i * 37).map(|j| (i * 31 + j) as u8).collect();
        std::fs::write(src.join(format!("f{i:02}")), body).unwrap();
    }
    let image = d.dir.path().join("small.erofs");
    mkfs(&["-q"], &image, &src);
    let st = d.try_mount(&image, "small", Some("s"), true).unwrap();
    assert_eq!(st.front, "overlay", "{st:?}");
    let mp = st.mountpoint.clone();
    let drop_caches = || {
        cli_ok([
            "drop-caches".as_ref(),
            "--state-dir".as_ref(),
            d.state.as_os_str(),
        ])
    };
    // Mounting read the root inode's block: the first read starts as cold as the last.
    drop_caches();

    let start = image_bytes_read(&d, &mp);
    read_cold(&mp);
    let first = image_bytes_read(&d, &mp) - start;
    assert!(first > 0, "the first read came from the image");
    read_cold(&mp);
    let again = image_bytes_read(&d, &mp) - start - first;
    assert_eq!(
        again, 0,
        "the second cold read found its blocks in the daemon's cache"
    );
    drop_caches();
    read_cold(&mp);
    let after_drop = image_bytes_read(&d, &mp) - start - first;
    assert_eq!(
        after_drop, first,
        "after drop-caches the read is as cold as the first"
    );
    for (name, p) in regular_files(&mp) {
        assert_eq!(
            read_all(&p),
            std::fs::read(src.join(&name)).unwrap(),
            "{name}"
        );
    }
    assert!(d.umount(&mp));
}

/// Modification time of `p`.
fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn metadata_images_and_computed_fingerprints_are_kept_in_the_cache_directory() {
    if !require(
        "metadata_images_and_computed_fingerprints_are_kept_in_the_cache_directory",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    // The state directory is a tmpfs on most hosts: what is only a cache goes elsewhere, where
    // its pages can be evicted and a reboot (here: a new daemon) keeps it.
    let cache = tempfile::Builder::new()
        .prefix("erofs-share-cache-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let args = [
        std::ffi::OsStr::new("--cache-dir"),
        cache.path().as_os_str(),
    ];
    let mut d = Daemon::start_with(&args, &[]);
    // No fingerprints: the daemon computes them, and keeps them in the cache too.
    let image = testkit::testdata::image("plain-noinline");
    let mount = |d: &Daemon, name: &str| {
        let st = d.try_mount(&image, name, Some("c"), true).unwrap();
        assert_eq!(st.front, "overlay", "{st:?}");
        st
    };
    let first = mount(&d, "a");
    let meta = first.meta_image.clone().expect("a metadata image");
    assert!(meta.starts_with(cache.path().join("meta")), "{meta:?}");
    assert!(first.fingerprints_computed > 0, "{first:?}");
    let listed = |sub: &str| -> Vec<_> {
        std::fs::read_dir(cache.path().join(sub))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    assert_eq!(listed("meta"), vec![meta.clone()]);
    // Reading never writes to the host's disk: no atime updates of the metadata image (where
    // the cache's filesystem has the flag).
    let probe = cache.path().join("probe");
    let probe_file = std::fs::File::create(&probe).unwrap();
    if rustix::fs::ioctl_setflags(&probe_file, rustix::fs::IFlags::NOATIME).is_ok() {
        let f = std::fs::File::open(&meta).unwrap();
        let flags = rustix::fs::ioctl_getflags(&f).unwrap();
        assert!(flags.contains(rustix::fs::IFlags::NOATIME), "{flags:?}");
    } else {
        eprintln!(
            "{}: no FS_NOATIME_FL here, not checked",
            cache.path().display()
        );
    }
    drop(probe_file);
    std::fs::remove_file(probe).unwrap();
    assert_eq!(listed("fingerprints").len(), 1);
    // Each mount's copy is unlinked once mounted.
    assert!(listed("front").is_empty(), "{:?}", listed("front"));
    for sub in ["meta", "front", "fingerprints"] {
        assert!(!d.state.join(sub).exists(), "{sub} in the state directory");
    }
    let files = regular_files(&first.mountpoint);
    assert!(files.len() > 10, "{files:?}");
    let contents: Vec<Vec<u8>> = files.values().map(|p| read_all(p)).collect();
    let built = mtime(&meta);
    assert!(d.umount(&first.mountpoint));
    assert!(d.stop(std::time::Duration::from_secs(30)));

    // What an earlier version left in the state directory: its fingerprints move to the
    // cache directory, its metadata images go.
    for (sub, name) in [
        ("meta", "old.erofs"),
        ("front", "1.erofs"),
        ("fingerprints", "old.json"),
    ] {
        std::fs::create_dir_all(d.state.join(sub)).unwrap();
        std::fs::write(d.state.join(sub).join(name), b"{}").unwrap();
    }
    // A new daemon on the same cache builds and hashes nothing.
    d.spawn();
    for sub in ["meta", "front", "fingerprints"] {
        assert!(
            !d.state.join(sub).exists(),
            "{sub} left in the state directory"
        );
    }
    let moved = cache.path().join("fingerprints/old.json");
    assert_eq!(std::fs::read(&moved).unwrap(), b"{}");
    std::fs::remove_file(moved).unwrap();
    let again = mount(&d, "b");
    assert_eq!(again.meta_image.as_ref(), Some(&meta));
    assert_eq!(mtime(&meta), built, "the metadata image was built again");
    assert_eq!(again.fingerprints_computed, 0, "hashed again: {again:?}");
    let reread: Vec<Vec<u8>> = regular_files(&again.mountpoint)
        .values()
        .map(|p| read_all(p))
        .collect();
    assert!(reread == contents, "the second mount reads other bytes");
    assert!(d.umount(&again.mountpoint));
}
