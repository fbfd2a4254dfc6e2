//! Error messages say each thing once: the exact stderr of the cases that used to repeat a
//! name or a cause, and the rule for error types that keeps them from coming back; what
//! `mount` says when it starts a daemon. No root, but for that last one (a real mount).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_erofs-share");

/// Runs the CLI in `cwd` (so messages carry the short relative paths a user types).
fn run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("EROFS_SHARE_LOG")
        .output()
        .expect("run erofs-share")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/a"), b"a\n").unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".erofs-share-mkfs-"))
        .collect()
}

#[test]
fn mkfs_onto_a_directory_names_it_and_the_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("src"));
    std::fs::create_dir(tmp.path().join("m2")).unwrap();
    let out = run(tmp.path(), &["mkfs", "m2", "src"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "erofs-share: building m2: writing the image: Is a directory (os error 21)\n"
    );
    assert!(leftovers(tmp.path()).is_empty(), "temporary image left");
}

#[test]
fn mkfs_into_a_directory_it_cannot_write_gives_the_os_error() {
    // /proc exists, and no one creates files in it: the OS error's words, not the kind's
    // ("entity not found"), and no temporary path.
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("src"));
    let out = run(tmp.path(), &["mkfs", "/proc/x.erofs", "src"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("erofs-share: building /proc/x.erofs: /proc: ")
            && err.contains("(os error "),
        "{err}"
    );
    assert!(
        !err.contains(" at path ") && !err.contains("entity"),
        "{err}"
    );
}

#[test]
fn mkfs_into_a_missing_directory_names_the_directory_once_and_no_temporary_path() {
    let tmp = tempfile::tempdir().unwrap();
    tree(&tmp.path().join("src"));
    let out = run(tmp.path(), &["mkfs", "missing/dir/x.erofs", "src"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "erofs-share: building missing/dir/x.erofs: missing/dir: No such file or directory (os error 2)\n"
    );
}

#[test]
fn a_file_that_is_not_an_image_is_named_once_by_every_reader() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("doc.tar"), b"hello\n").unwrap();
    let want =
        "erofs-share: doc.tar: not an EROFS image: 6 bytes is too short to hold a superblock\n";
    for args in [
        &["inspect", "doc.tar"][..],
        &["fsck", "doc.tar"],
        &["extract", "doc.tar", "out"],
        &["analyze", "doc.tar"],
    ] {
        let out = run(tmp.path(), args);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr(&out), want, "{args:?}");
    }
}

/// Stops the daemon a test's `mount` started, whatever the test's outcome.
struct StopDaemon(PathBuf);

impl Drop for StopDaemon {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["stop", "--timeout", "20", "--state-dir"])
            .arg(&self.0)
            .output();
    }
}

/// What the daemon would refuse, `mount` refuses before starting one for nothing, in one line.
#[test]
fn mount_refuses_what_the_daemon_would_before_starting_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::write(dir.join("img"), b"hello\n").unwrap();
    std::fs::write(dir.join("file"), b"").unwrap();
    std::fs::create_dir(dir.join("mnt")).unwrap();
    let state = dir.join("state");
    let _stop = StopDaemon(state.clone());
    let cases: [(&[&str], String); 3] = [
        (
            &["img", "file"],
            format!(
                "erofs-share: mountpoint {} is not a directory\n",
                dir.join("file").display()
            ),
        ),
        (
            &["img", "mnt"],
            format!(
                "erofs-share: {}: not an EROFS image: 6 bytes is too short to hold a superblock\n",
                dir.join("img").display()
            ),
        ),
        (
            &["--domain", "", "img", "mnt"],
            "error: a value is required for '--domain <DOMAIN>' but none was supplied".into(),
        ),
    ];
    for (args, want) in cases {
        let out = run(
            &dir,
            &[&["mount", "--state-dir", "state"][..], args].concat(),
        );
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        if want.ends_with('\n') {
            assert_eq!(err, want, "{args:?}");
        } else {
            assert!(err.starts_with(&want), "{args:?}: {err}");
        }
        assert!(
            !state.exists(),
            "{args:?}: a daemon was started for nothing"
        );
    }
}

#[test]
fn mount_says_it_started_a_daemon_and_stop_waits_for_it() {
    if !testkit::require(
        "mount_says_it_started_a_daemon_and_stop_waits_for_it",
        &[
            testkit::Need::Root,
            testkit::Need::Fuse,
            testkit::Need::KernelErofs,
        ],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    std::os::unix::fs::symlink(testkit::testdata::image("plain-fp"), dir.join("img")).unwrap();
    std::fs::create_dir(dir.join("mnt")).unwrap();
    let state = dir.join("state");
    let _stop = StopDaemon(state.clone());
    let out = run(&dir, &["mount", "--state-dir", "state", "img", "mnt"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // `mount` says it started a daemon, with its pid and log, once.
    let pid = std::fs::read_to_string(state.join("daemon.pid")).unwrap();
    assert_eq!(
        err,
        format!(
            "started the erofs-share daemon (pid {}); its log is state/daemon.log\n",
            pid.trim()
        )
    );
    // `stop` unmounts, and waits until the daemon has gone.
    let t = Instant::now();
    let out = run(&dir, &["stop", "--state-dir", "state"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(!state.join("daemon.pid").exists());
    assert!(!Path::new(&format!("/proc/{}", pid.trim())).exists() || zombie(pid.trim()));
    assert!(
        !erofs_share_daemon::mounts::mountpoints().contains(&dir.join("mnt")),
        "still mounted"
    );
}

/// True when the process is a zombie (exited, not yet reaped by its new parent).
fn zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// The rule behind "each thing once": an error type's `Display` carries its cause and its
/// `source()` returns nothing, because anyhow's `{:#}` prints both. So no `#[source]`, no
/// field named `source`, and `#[from]` only in `#[error(transparent)]` variants, in every
/// `thiserror` type of the workspace.
#[test]
fn error_types_do_not_return_a_cause_their_message_already_has() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    let mut stack = vec![crates.canonicalize().unwrap()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && p.file_name().is_some_and(|n| n != "target") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut bad = Vec::new();
    let mut types = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut in_type = false;
        let mut last_error_attr = String::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with("#[derive(") && t.contains("thiserror::Error") {
                in_type = true;
                types += 1;
                continue;
            }
            if !in_type {
                continue;
            }
            if line == "}" {
                in_type = false;
                continue;
            }
            if t.starts_with("#[error(") {
                last_error_attr = t.to_string();
            }
            let at = || format!("{}:{}: {t}", f.display(), n + 1);
            if t.contains("#[source]")
                || t.starts_with("source:")
                || t.starts_with("pub source:")
                || (t.contains("#[from]") && last_error_attr != "#[error(transparent)]")
            {
                bad.push(at());
            }
        }
    }
    assert!(
        types >= 10,
        "found only {types} error types: is the scan looking in the crates?"
    );
    assert!(
        bad.is_empty(),
        "error types returning a cause as source():\n{}",
        bad.join("\n")
    );
}

#[test]
fn snapshotter_without_a_daemon_says_so_once_and_serves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        tmp.path(),
        &[
            "snapshotter",
            "--state-dir",
            "none",
            "--root",
            "root",
            "--address",
            "s.sock",
        ],
    );
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        format!(
            "erofs-share: erofs-share daemon at {}: not reachable (No such file or directory \
             (os error 2)); is `erofs-share daemon` running?\n",
            tmp.path().join("none").display()
        )
    );
    assert!(!tmp.path().join("s.sock").exists(), "socket served");
}
