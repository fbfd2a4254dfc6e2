//! Lifecycle and faults: busy unmounts, deleted images, daemon stop and SIGKILL, no
//! passthrough, and the CLI driving a background daemon. Root and /dev/fuse required.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::{Need, require};

const REL: &str = BIG_TEXT;

fn gate(name: &str) -> bool {
    require(name, &[Need::Fuse])
}

fn is_mounted(p: &Path) -> bool {
    erofs_share_daemon::mounts::mountpoints()
        .iter()
        .any(|m| m == p)
}

/// Runs `f` on another thread; None if it did not finish within `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn umount_while_open_and_mapped_keeps_serving() {
    if !gate("umount_while_open_and_mapped_keeps_serving") {
        return;
    }
    let _cache = cache_lock();
    let d = Daemon::start();
    let a = d.mount(&built_image(d.dir.path(), "plain", 4096), "a", Some("d"));
    let b = d.mount(&built_image(d.dir.path(), "b512", 512), "b", Some("d"));
    let expected = read_all(&a.join(REL));
    let f = std::fs::File::open(a.join(REL)).unwrap();
    let m = Mapped::new(&f, expected.len()).unwrap();
    assert!(!d.umount(&a), "busy: detached lazily");
    assert!(!is_mounted(&a), "gone from the namespace");
    assert!(m.bytes() == &expected[..], "mapped bytes after umount");
    testkit::drop_caches().unwrap();
    assert!(
        read_all(&b.join(REL)) == expected,
        "other mount after umount"
    );
    let mut again = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut again).unwrap();
    assert!(again == expected, "open fd after umount");
    drop(m);
    drop(f);
    // The detached mount's session ends with its last file; its sources go, b's remain.
    let t = std::time::Instant::now();
    while d.status().mounts.len() > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "detached mount never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    testkit::drop_caches().unwrap();
    let before = d.status().domains[0].miss_bytes;
    assert!(
        read_all(&b.join(REL)) == expected,
        "served from the remaining source"
    );
    assert!(
        d.status().domains[0].miss_bytes > before,
        "the miss reached the daemon"
    );
}

#[test]
fn image_file_deleted_after_mount_keeps_working() {
    if !gate("image_file_deleted_after_mount_keeps_working") {
        return;
    }
    let _cache = cache_lock();
    let d = Daemon::start();
    let copy = d.dir.path().join("gone.erofs");
    std::fs::copy(built_image(d.dir.path(), "plain", 4096), &copy).unwrap();
    let m = d.mount(&copy, "m", Some("d"));
    let reference = d.mount(&built_image(d.dir.path(), "plain", 4096), "ref", None);
    std::fs::remove_file(&copy).unwrap();
    testkit::drop_caches().unwrap();
    for (rel, p) in regular_files(&reference) {
        assert!(read_all(&m.join(&rel)) == read_all(&p), "{rel}");
    }
}

#[test]
fn daemon_stop_with_open_files_unmounts_and_exits() {
    if !gate("daemon_stop_with_open_files_unmounts_and_exits") {
        return;
    }
    let mut d = Daemon::start();
    let a = d.mount(&built_image(d.dir.path(), "plain", 4096), "a", Some("d"));
    let n = d.mount(&built_image(d.dir.path(), "plain", 4096), "n", None);
    let f = std::fs::File::open(a.join(REL)).unwrap();
    let g = std::fs::File::open(n.join(REL)).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let m = Mapped::new(&f, len).unwrap();
    let dedup = d.status().domains[0].dedup_mountpoint.clone();
    assert!(
        d.stop(Duration::from_secs(10)),
        "daemon did not exit on SIGTERM"
    );
    assert!(!is_mounted(&a) && !is_mounted(&n) && !is_mounted(&dedup));
    assert!(!d.state.join("control.sock").exists());
    // Open files now fail or answer with the file's own bytes, but never hang.
    let want = std::fs::read(d.dir.path().join("tree").join(REL)).unwrap();
    let r = within(Duration::from_secs(10), move || {
        [&g, &f].map(|file| {
            let mut buf = vec![0; 4096];
            std::os::unix::fs::FileExt::read_at(file, &mut buf, 0).map(|n| {
                buf.truncate(n);
                buf
            })
        })
    });
    let reads = r.expect("a read after daemon stop hung");
    for (name, read) in ["unshared", "shared"].iter().zip(reads) {
        if let Ok(got) = read {
            assert!(
                got[..] == want[..got.len().min(want.len())] && !got.is_empty(),
                "{name} file answered {} wrong bytes after daemon stop",
                got.len()
            );
        }
    }
    drop(m);
}

#[test]
fn sigkilled_daemon_leaves_mounts_that_umount_cleans_and_a_new_daemon_starts() {
    if !gate("sigkilled_daemon_leaves_mounts_that_umount_cleans_and_a_new_daemon_starts") {
        return;
    }
    let mut d = Daemon::start();
    let a = d.mount(&built_image(d.dir.path(), "plain", 4096), "a", Some("d"));
    let b = d.mount(&built_image(d.dir.path(), "plain", 4096), "b", Some("d"));
    read_all(&a.join(REL));
    let st = d.status();
    let dedup = st.domains[0].dedup_mountpoint.clone();
    let front = st.mounts[0].front.clone();
    d.kill();
    if front == "fuse" {
        let e = std::fs::metadata(a.join("never-looked-up")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
        assert!(erofs_share_daemon::mounts::is_dead(&b));
    } else {
        // The overlay front: the kernel still shows the tree, but a page-cache miss fails
        // (never hangs).
        let (rel, _) = regular_files(&b)
            .into_iter()
            .find(|(rel, p)| rel.as_str() != REL && std::fs::metadata(p).unwrap().len() > 0)
            .expect("a second file");
        let p = b.join(rel);
        let r = within(Duration::from_secs(10), move || std::fs::read(p).is_err());
        assert_eq!(
            r,
            Some(true),
            "a miss after the daemon died must fail, not hang"
        );
    }
    // `umount` without a daemon cleans the dead mount.
    let out = Command::new(BIN)
        .args(["umount", "--state-dir"])
        .arg(&d.state)
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&a));
    // A new daemon detaches what is left (the dead image mount b and the dedup mount).
    d.spawn();
    assert!(!is_mounted(&dedup), "stale dedup mount left");
    assert!(!is_mounted(&b), "stale image mount left");
    let a2 = d.mount(&built_image(d.dir.path(), "plain", 4096), "a", Some("d"));
    let b2 = d.mount(&built_image(d.dir.path(), "plain", 4096), "b", Some("d"));
    assert!(read_all(&a2.join(REL)) == read_all(&b2.join(REL)));
    // Two mounts of one image: every object has both as sources.
    let dom = &d.status().domains[0];
    assert!(
        dom.objects > 0 && dom.files_shared == dom.objects,
        "{dom:?}"
    );
}

#[test]
fn without_passthrough_mounts_work_unshared_and_say_why() {
    if !gate("without_passthrough_mounts_work_unshared_and_say_why") {
        return;
    }
    let mut d = Daemon::start();
    d.stop(Duration::from_secs(10));
    d.spawn_with_env(&[("EROFS_SHARE_NO_PASSTHROUGH", "1")]);
    // Passthrough is the FUSE front's sharing.
    d.front = Some("fuse".into());
    let m = d
        .try_mount(
            &built_image(d.dir.path(), "plain", 4096),
            "a",
            Some("d"),
            true,
        )
        .unwrap();
    let why = m.unshared_reason.clone().expect("a reason");
    assert!(why.contains("passthrough"), "{why}");
    assert!(!m.sharing);
    let reference = d.mount(&built_image(d.dir.path(), "plain", 4096), "ref", None);
    for (rel, p) in regular_files(&reference) {
        assert!(read_all(&m.mountpoint.join(&rel)) == read_all(&p), "{rel}");
    }
    let st = d.status();
    assert_eq!(st.mounts[0].shared_opens, 0);
    assert!(st.mounts[0].unshared_opens > 0);
}

#[test]
fn cli_mount_starts_a_daemon_and_status_umount_work() {
    if !gate("cli_mount_starts_a_daemon_and_status_umount_work") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("erofs-share-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    let state = dir.path().join("state");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let img = built_image(dir.path(), "plain", 4096);
    let (ok, out, err) = run(&[
        "mount",
        "--domain",
        "web",
        img.to_str().unwrap(),
        mp.to_str().unwrap(),
    ]);
    let pid: i32 = std::fs::read_to_string(state.join("daemon.pid"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    let cleanup = Cleanup {
        pid,
        dir: dir.path().to_path_buf(),
    };
    assert!(ok, "{err}");
    assert!(out.contains("sharing in domain \"web\""), "{out}");
    assert!(out.contains("overlay front"), "{out}");
    // Dedup mounts, where misses go, read ahead 1 MiB (fewer, larger misses).
    {
        use std::os::unix::fs::MetadataExt;
        let dedup = std::fs::read_dir(state.join("dedup"))
            .unwrap()
            .next()
            .expect("a dedup mount")
            .unwrap()
            .path();
        let dev = std::fs::metadata(&dedup).unwrap().dev();
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        assert_eq!(std::fs::read_to_string(knob).unwrap().trim(), "1024");
    }
    let mode = std::fs::metadata(state.join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    read_all(&mp.join(REL));
    let (ok, out, err) = run(&["status", "--json"]);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["mounts"][0]["domain"], "web");
    assert_eq!(st["mounts"][0]["front"], "overlay");
    // The overlay front attaches every file with content at mount time.
    assert!(st["domains"][0]["objects"].as_u64().unwrap() > 1, "{st}");
    assert!(st["domains"][0]["cached_bytes"].as_u64().unwrap() > 0);
    let (ok, out, _) = run(&["status"]);
    assert!(ok && out.contains("dedup objects"), "{out}");
    // Bad input is refused with a reason naming it.
    let mp2 = dir.path().join("mnt2");
    std::fs::create_dir(&mp2).unwrap();
    let (ok, _, err) = run(&["mount", "/etc/passwd", mp2.to_str().unwrap()]);
    assert!(!ok && err.contains("/etc/passwd"), "{err}");
    let (ok, _, err) = run(&["mount", img.to_str().unwrap(), "/nonexistent-mountpoint"]);
    assert!(!ok && err.contains("/nonexistent-mountpoint"), "{err}");
    // A second mount on the same mountpoint is refused with a reason.
    let (ok, _, err) = run(&["mount", img.to_str().unwrap(), mp.to_str().unwrap()]);
    assert!(!ok && err.contains("already"), "{err}");
    let (ok, _, err) = run(&["umount", mp.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!is_mounted(&mp));
    let (ok, _, err) = run(&["umount", mp.to_str().unwrap()]);
    assert!(!ok && err.contains("not an erofs-share mount"), "{err}");
    drop(cleanup);
}

/// Stops a daemon the CLI started in the background, and unmounts what it left.
struct Cleanup {
    pid: i32,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: kill on the pid the daemon wrote; the test started it.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let t = std::time::Instant::now();
            // SAFETY: kill with signal 0 only probes for existence.
            while unsafe { libc::kill(self.pid, 0) } == 0 && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for m in mounts_under(&self.dir) {
            let _ = erofs_share_daemon::mounts::detach(&m);
        }
    }
}

#[test]
fn a_detached_mount_ending_leaves_a_new_mount_at_its_path_alone() {
    if !gate("a_detached_mount_ending_leaves_a_new_mount_at_its_path_alone") {
        return;
    }
    let d = Daemon::start();
    let image = built_image(d.dir.path(), "plain", 4096);
    let m = d.mount(&image, "m", Some("d"));
    let held = std::fs::File::open(m.join(REL)).unwrap();
    assert!(!d.umount(&m), "busy");
    let m2 = d.mount(&image, "m", Some("d"));
    assert_eq!(m, m2);
    drop(held);
    // The old session ends now; the new mount must stay.
    let t = std::time::Instant::now();
    while d.status().mounts.len() > 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "old session never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        is_mounted(&m2),
        "the new mount was unmounted by the old session"
    );
    assert!(!read_all(&m2.join(REL)).is_empty());
}
