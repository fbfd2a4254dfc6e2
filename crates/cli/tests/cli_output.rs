//! What the CLI prints for people and for machines: progress only on a terminal, `--json` on
//! mkfs, fsck, extract and `status` (also without a daemon), `analyze --top`, completions and
//! man pages. No root.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_erofs-share");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("EROFS_SHARE_LOG")
        .output()
        .expect("run erofs-share")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).expect("stdout is one JSON document")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tree with `dirs` top-level directories, each holding one file shared with `other`.
fn tree(root: &Path, dirs: usize) {
    for i in 0..dirs {
        let d = root.join(format!("d{i:02}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("same"), vec![i as u8; 5000 + i]).unwrap();
        std::fs::write(d.join("own"), format!("{root:?} {i}")).unwrap();
    }
    std::os::unix::fs::symlink("d00/same", root.join("link")).unwrap();
}

fn image(dir: &Path, name: &str, dirs: usize) -> std::path::PathBuf {
    let src = dir.join(format!("{name}-src"));
    tree(&src, dirs);
    let img = dir.join(format!("{name}.erofs"));
    ok(&run(&["mkfs", "-q", s(&img), s(&src)]));
    img
}

#[test]
fn mkfs_json_says_what_was_built() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src, 3);
    let img = tmp.path().join("a.erofs");
    let out = run(&["mkfs", "--json", "--block-size", "1024", s(&img), s(&src)]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["image"], s(&img));
    assert_eq!(
        v["image_bytes"].as_u64().unwrap(),
        std::fs::metadata(&img).unwrap().len()
    );
    assert_eq!(v["block_size"], 1024);
    assert_eq!(
        v["blocks"].as_u64().unwrap() * 1024,
        v["image_bytes"].as_u64().unwrap()
    );
    // Root, 3 directories with 2 files each, the symlink.
    assert_eq!(v["inodes"], 11);
    assert_eq!(v["fingerprints"], 6);
    assert_eq!(v["fingerprint_xattr"], "erofs.fingerprint.v1");
    assert!(v["compression"].is_null());
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(features.contains(&"sb_csum"), "{features:?}");
    let v = json(&run(&[
        "mkfs",
        "--json",
        "-z",
        "lz4hc",
        "--no-fingerprint",
        s(&tmp.path().join("z.erofs")),
        s(&src),
    ]));
    assert_eq!(v["compression"]["spec"], "lz4hc");
    assert!(v["fingerprint_xattr"].is_null());
    assert_eq!(v["fingerprints"], 0);
}

#[test]
fn fsck_json_lists_problems_as_records() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "a", 2);
    let v = json(&run(&["fsck", "--json", s(&img)]));
    assert_eq!(v["clean"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["inodes"], 8);
    // Break the inode of /d01/own: fsck exits 1 and names it in a record.
    let nid = erofs::Image::open(&img)
        .unwrap()
        .resolve("/d01/own")
        .unwrap()
        .nid;
    let mut bytes = std::fs::read(&img).unwrap();
    let sb = erofs::Image::open(&img).unwrap().superblock().clone();
    let off = (sb.meta_blkaddr as u64 * sb.block_size() + nid * 32) as usize;
    bytes[off..off + 2].copy_from_slice(&[0xff, 0xff]);
    let bad = tmp.path().join("bad.erofs");
    std::fs::write(&bad, bytes).unwrap();
    // extract stops at it, naming the image, the path and the problem once.
    let out = run(&["extract", s(&bad), s(&tmp.path().join("out"))]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "erofs-share: {}: /d01/own: nid {nid}: corrupt: i_format 0xffff has unknown bits (known: 0x1f)\n",
            bad.display()
        )
    );
    let out = run(&["fsck", "--json", s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert_eq!(v["problem_count"], 1);
    assert_eq!(v["problems"][0]["path"], "/d01/own");
    assert_eq!(
        v["problems"][0]["what"],
        format!("nid {nid}: corrupt: i_format 0xffff has unknown bits (known: 0x1f)")
    );
}

#[test]
fn extract_json_counts_what_was_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "a", 2);
    let dest = tmp.path().join("out");
    let v = json(&run(&["extract", "--json", s(&img), s(&dest)]));
    assert_eq!(v["dirs"], 3);
    assert_eq!(v["files"], 4);
    assert_eq!(v["symlinks"], 1);
    let on_disk: u64 = ["d00/same", "d00/own", "d01/same", "d01/own"]
        .iter()
        .map(|p| std::fs::metadata(dest.join(p)).unwrap().len())
        .sum();
    assert_eq!(v["bytes"].as_u64().unwrap(), on_disk);
}

#[test]
fn analyze_top_bounds_every_list() {
    let tmp = tempfile::tempdir().unwrap();
    let a = image(tmp.path(), "a", 12);
    let b = image(tmp.path(), "b", 12);
    let v = json(&run(&["analyze", "--json", "--top", "3", s(&a), s(&b)]));
    assert_eq!(v["by_dir"].as_array().unwrap().len(), 3);
    assert_eq!(v["dirs_left_out"], 9); // of d00..d11
    assert_eq!(v["top_shared"].as_array().unwrap().len(), 3);
    assert_eq!(v["top_unshared"].as_array().unwrap().len(), 3);
    let text = ok(&run(&["analyze", "--top", "2", s(&a), s(&b)]));
    assert!(text.contains("… and 10 more directories"), "{text}");
    // Shared contents and directories start with their path, unshared files with the image.
    let rows = text.lines().filter(|l| l.starts_with("| /d")).count();
    let unshared = text.lines().filter(|l| l.contains(".erofs | /d")).count();
    assert_eq!((rows, unshared), (2 + 2, 2), "{text}");
    // The default keeps ten.
    let v = json(&run(&["analyze", "--json", s(&a), s(&b)]));
    assert_eq!(v["by_dir"].as_array().unwrap().len(), 10);
}

/// Long jobs draw progress only on a terminal: through a pipe stderr stays empty, under a
/// pseudo-terminal (`script`) the bar is drawn and cleared.
#[test]
fn progress_only_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), "a", 2);
    let dest = tmp.path().join("out");
    for args in [
        vec!["fsck", s(&img)],
        vec!["extract", s(&img), s(&dest)],
        vec!["analyze", s(&img)],
    ] {
        let out = run(&args);
        ok(&out);
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if Command::new("script").arg("--version").output().is_err() {
        // util-linux's script is part of every Debian; without it the terminal half can't run.
        panic!("script(1) from util-linux is needed for this test");
    }
    let cmd = format!("{BIN} fsck {}", s(&img));
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("inodes"), "no progress drawn: {tty:?}");
    assert!(tty.contains("\x1b[2K"), "progress not cleared: {tty:?}");
}

#[test]
fn status_json_answers_without_a_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = run(&["status", "--json", "--state-dir", s(&state)]);
    assert_eq!(json(&out), serde_json::json!({ "running": false }));
    let out = run(&["status", "--state-dir", s(&state)]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("erofs-share: no daemon runs at {}\n", state.display())
    );
    let out = run(&["stop", "--state-dir", s(&state)]);
    assert_eq!(ok(&out), format!("no daemon runs at {}\n", state.display()));
}

#[test]
fn completions_and_man_pages_come_from_the_arguments() {
    let bash = ok(&run(&["completions", "bash"]));
    assert!(bash.contains("complete -F _erofs__share"), "{bash}");
    for word in ["mkfs", "--verify-fingerprints", "--top", "stop"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish"] {
        assert!(
            ok(&run(&["completions", shell])).contains("block-size"),
            "{shell}"
        );
    }
    assert!(!run(&["completions", "tcsh"]).status.success());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    ok(&run(&["man", s(&dir)]));
    let top = std::fs::read_to_string(dir.join("erofs-share.1")).unwrap();
    assert!(
        top.starts_with(".ie"),
        "not roff: {}",
        &top[..40.min(top.len())]
    );
    assert!(top.contains("erofs\\-share\\-stop(1)"), "{top}");
    let mkfs = std::fs::read_to_string(dir.join("erofs-share-mkfs.1")).unwrap();
    assert!(mkfs.contains("\\-\\-block\\-size"), "{mkfs}");
    assert!(dir.join("erofs-share-bench-memory.1").exists());
}

/// `erofs-share … | head`: a reader that has gone ends the command quietly, as SIGPIPE ends
/// any Unix tool, never with a panic about printing.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), "x", 3);
    for args in [
        vec!["inspect", s(&img)],
        vec!["completions", "bash"],
        vec!["analyze", "--json", s(&img)],
    ] {
        // The reading end is closed before the command writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?}: {err}",
            out.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
