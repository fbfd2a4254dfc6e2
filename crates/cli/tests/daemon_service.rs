//! The daemon as a service: the shipped systemd unit's commands start, serve and stop it; a
//! corrupt directory entry is listed, logged once and counted; an image without a root
//! directory is refused; the log has no colour codes.
//! Root and /dev/fuse required. Images are built by our mkfs from trees made here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use erofs_share_daemon::control;
use testkit::{Need, require};

fn gate(name: &str) -> bool {
    require(name, &[Need::Fuse])
}

fn is_mounted(p: &Path) -> bool {
    erofs_share_daemon::mounts::mountpoints()
        .iter()
        .any(|m| m == p)
}

/// An image of a small tree: `d/a`, `d/b`, `d/c`, `top`.
fn image(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for n in ["a", "b", "c"] {
        std::fs::write(src.join("d").join(n), format!("file {n}\n").repeat(100)).unwrap();
    }
    std::fs::write(src.join("top"), b"top\n").unwrap();
    let img = dir.join("img.erofs");
    let out = Command::new(BIN)
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
}

/// The unit's `KEY=` command line, split into words.
fn unit_command(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("the unit has no {key}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The unit's command with our binary and a private state directory.
fn localised(words: &[String], state: &Path) -> Command {
    assert_eq!(words[0], "/usr/local/bin/erofs-share", "{words:?}");
    let mut c = Command::new(BIN);
    for w in &words[1..] {
        if w == erofs_share_daemon::DEFAULT_STATE_DIR {
            c.arg(state);
        } else {
            c.arg(w);
        }
    }
    c
}

/// Kills the unit's daemon and detaches what it left if the test fails half-way.
struct Cleanup {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in mounts_under(&self.dir) {
            let _ = erofs_share_daemon::mounts::detach(&m);
        }
    }
}

#[test]
fn the_systemd_unit_starts_serves_and_stops_the_daemon() {
    if !gate("the_systemd_unit_starts_serves_and_stops_the_daemon") {
        return;
    }
    let unit_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd/erofs-share.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("erofs-share-unit-")
        .tempdir_in("/tmp")
        .unwrap();
    let state = tmp.path().join("state");
    // systemd itself accepts the unit (when it is installed), pointed at this build.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let copy = tmp.path().join("erofs-share.service");
        std::fs::write(&copy, unit.replace("/usr/local/bin/erofs-share", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log_path = tmp.path().join("journal");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut start = localised(&unit_command(&unit, "ExecStart="), &state);
    start
        .env("EROFS_SHARE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut cleanup = Cleanup {
        child: Some(start.spawn().unwrap()),
        dir: tmp.path().to_path_buf(),
    };
    control::wait_ready(
        &state,
        cleanup.child.as_mut().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    let img = image(tmp.path());
    let mp = tmp.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let out = Command::new(BIN)
        .args(["mount", "--domain", "svc", "--state-dir"])
        .arg(&state)
        .arg(&img)
        .arg(&mp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The unit's daemon already answered: `mount` starts none.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held = std::fs::File::open(mp.join("d/a")).unwrap();
    assert_eq!(read_all(&mp.join("top")), b"top\n");
    let dedup = control::request(&state, &control::Request::Status)
        .unwrap()
        .status
        .unwrap()
        .domains[0]
        .dedup_mountpoint
        .clone();
    // ExecStop returns once the daemon has unmounted everything (a busy mount too) and gone.
    let out = localised(&unit_command(&unit, "ExecStop="), &state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mp) && !is_mounted(&dedup), "mounts left");
    let child = cleanup.child.as_mut().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Exit 0: `Restart=on-failure` leaves a stopped service stopped.
    assert!(status.success(), "{status}");
    cleanup.child = None;
    drop(held);
    let out = Command::new(BIN)
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!({"running": false})
    );
    let journal = std::fs::read_to_string(&log_path).unwrap();
    assert!(journal.contains("mounted"), "{journal}");
    assert!(
        !journal.contains('\x1b'),
        "colour codes in the log: {journal:?}"
    );
}

#[test]
fn an_image_without_a_root_directory_is_refused_not_mounted() {
    if !gate("an_image_without_a_root_directory_is_refused_not_mounted") {
        return;
    }
    let d = Daemon::start();
    let img = image(d.dir.path());
    // The root inode's mode made a regular file's: no front can serve the tree. (It used to
    // fall back to the FUSE front, whose mountpoint then failed every access with EIO.)
    let (off, _) = inode_offset(&img, "/");
    let bad = patched_copy(&img, d.dir.path(), "rootless.erofs", |v| {
        v[off as usize + 4..off as usize + 6].copy_from_slice(&0o100644u16.to_le_bytes());
    })
    .canonicalize()
    .unwrap();
    for domain in [None, Some("x")] {
        let err = d.try_mount(&bad, "m", domain, true).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}: nid {}: corrupt: the root inode is not a directory",
                bad.display(),
                erofs::Image::open(&bad).unwrap().root_nid()
            )
        );
    }
    let st = d.status();
    assert!(st.mounts.is_empty(), "{:?}", st.mounts);
    assert!(!is_mounted(&d.dir.path().join("m")));
    // `mount` refuses it too, before asking (or starting) a daemon.
    let state = d.dir.path().join("other-state");
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .arg("mount")
        .arg("--state-dir")
        .arg(&state)
        .arg(&bad)
        .arg(d.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the root inode is not a directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!state.exists(), "a daemon was started for nothing");
}

#[test]
fn a_corrupt_directory_entry_is_listed_logged_once_and_counted() {
    if !gate("a_corrupt_directory_entry_is_listed_logged_once_and_counted") {
        return;
    }
    let d = Daemon::start();
    let img = image(d.dir.path());
    // Unknown i_format bits in d/b's inode: the directory still names it.
    let (off, inode) = inode_offset(&img, "/d/b");
    let bad = patched_copy(&img, d.dir.path(), "bad.erofs", |v| {
        v[off as usize..off as usize + 2].copy_from_slice(&[0xff, 0xff]);
    })
    .canonicalize()
    .unwrap();
    let mp = d.mount(&bad, "m", None);
    let mut names: Vec<String> = std::fs::read_dir(mp.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"], "the corrupt entry must stay listed");
    let e = std::fs::metadata(mp.join("d/b")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(read_all(&mp.join("d/c")), b"file c\n".repeat(100));
    let st = d.status();
    assert!(st.mounts[0].read_errors >= 1, "{:?}", st.mounts[0]);
    // The log names the image, the nid and the problem once, then the operation.
    let reader = erofs::Image::open(&bad)
        .unwrap()
        .inode(inode.nid)
        .unwrap_err();
    let want = format!(
        "WARN erofs_share_daemon::front::fuse: {}: nid {}: corrupt: i_format 0xffff has unknown bits (known: 0x1f) (decoding the inode)",
        bad.display(),
        inode.nid
    );
    assert!(want.contains(&reader.to_string()), "{want} / {reader}");
    let log = d.log();
    // The overlay front cannot build the metadata image of a tree it cannot read whole: the
    // mount falls back to the FUSE front, saying why once, naming the image once.
    let fallback: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("using the FUSE front"))
        .collect();
    assert_eq!(fallback.len(), 1, "{log}");
    let name = bad.display().to_string();
    assert_eq!(fallback[0].matches(name.as_str()).count(), 1, "{log}");
    assert_eq!(st.mounts[0].front, "fuse", "{:?}", st.mounts[0]);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("nid ") && !l.contains("using the FUSE front"))
        .collect();
    assert!(!lines.is_empty(), "nothing logged: {log}");
    for l in &lines {
        assert!(l.ends_with(&want), "{l:?}\nwant …{want:?}");
    }
    assert!(!log.contains('\x1b'), "colour codes in the log: {log:?}");
}
