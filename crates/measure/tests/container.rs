//! Containers from a mounted image: chroot, namespaced mounts, cgroup memory, and that
//! nothing (process, cgroup, mount) is left behind, also when the program fails.

use erofs_share_measure::container::{CgroupTree, Container, ContainerError, Spec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{LoopMount, Need};

/// A tiny root filesystem image: /bin/{sh,sleep,cat} from this host with their libraries,
/// and the directories a container needs.
fn rootfs_image(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for d in ["proc", "dev", "tmp", "run", "bin"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    for prog in ["sh", "sleep", "cat"] {
        let host = std::fs::canonicalize(format!("/bin/{prog}")).unwrap();
        std::fs::copy(&host, tree.join("bin").join(prog)).unwrap();
        let ldd = Command::new("ldd").arg(&host).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux… (0x…)"
            let lib = line
                .split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(lib) = lib {
                let dst = tree.join(&lib[1..]);
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(std::fs::canonicalize(lib).unwrap(), dst).unwrap();
            }
        }
    }
    let img = dir.join("rootfs.erofs");
    let st = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&img)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    img
}

fn spec(name: &str, root: &Path, log: &Path, script: &str) -> Spec {
    Spec {
        name: name.into(),
        root: root.to_path_buf(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        files: vec![("/tmp/hello".into(), b"hello from the host\n".to_vec())],
        log: log.to_path_buf(),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: i32) -> bool {
    // Killed grandchildren are reparented to init and may stay zombies until it reaps
    // them: a zombie holds no memory, mounts or cgroup, so it counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

fn host_mounts_under(dir: &Path) -> Vec<PathBuf> {
    erofs_share_daemon::mounts::mountpoints()
        .into_iter()
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect()
}

#[test]
fn container_runs_chrooted_in_its_cgroup_and_leaves_nothing() {
    if !testkit::require(
        "container_runs_chrooted_in_its_cgroup_and_leaves_nothing",
        &[Need::KernelErofs],
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mount = LoopMount::new(&rootfs_image(t.path())).unwrap();
    let tree = CgroupTree::create().unwrap();
    let tree_path = tree.path().to_path_buf();
    let log = t.path().join("c0.log");
    let script = "cat /tmp/hello; cat /proc/self/mountinfo; echo READY; \
                  sleep 100 & sleep 100 & exec sleep 100";
    let c = Container::start(
        &spec("c0", mount.path(), &log, script),
        tree.child("c0").unwrap(),
    )
    .unwrap();
    let cgroup_path = c.cgroup().path().to_path_buf();
    wait_for("the script", || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("READY"))
            && c.cgroup().pids().unwrap().len() == 3
    });
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains("hello from the host"), "{out}");
    // Inside, / is the image and /proc, /dev, /tmp, /run are mounted on it.
    for (mnt, fs) in [("/proc", "proc"), ("/tmp", "tmpfs"), ("/run", "tmpfs")] {
        assert!(
            out.lines()
                .any(|l| l.split(' ').nth(4) == Some(mnt) && l.contains(&format!(" - {fs} "))),
            "{mnt} ({fs}) not in:\n{out}"
        );
    }
    assert!(out.lines().any(|l| l.split(' ').nth(4) == Some("/dev")));
    // ... and none of that is visible on the host.
    assert_eq!(host_mounts_under(mount.path()), Vec::<PathBuf>::new());
    let m = c.memory().unwrap();
    assert!(m.current > 0 && m.file > 0, "{m:?}");
    let pids = c.cgroup().pids().unwrap();
    drop(c);
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} survived");
    }
    assert!(!cgroup_path.exists());
    drop(tree);
    assert!(!tree_path.exists());
    let mnt = mount.path().to_path_buf();
    drop(mount);
    assert!(
        !erofs_share_daemon::mounts::mountpoints().contains(&mnt),
        "image still mounted"
    );
}

#[test]
fn failures_are_reported_and_cleaned_up() {
    if !testkit::require("failures_are_reported_and_cleaned_up", &[Need::KernelErofs]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mount = LoopMount::new(&rootfs_image(t.path())).unwrap();
    let tree = CgroupTree::create().unwrap();
    let tree_path = tree.path().to_path_buf();
    let log = t.path().join("bad.log");
    let mut c = Container::start(
        &spec("bad", mount.path(), &log, "echo boom >&2; exit 3"),
        tree.child("bad").unwrap(),
    )
    .unwrap();
    match c.wait_success(Duration::from_secs(10), &|| false) {
        Err(ContainerError::Exited { log, status, .. }) => {
            assert!(log.contains("boom"), "{log}");
            assert!(status.contains('3'), "{status}");
        }
        other => panic!("expected Exited, got {other:?}"),
    }
    drop(c);
    // A program the image does not have: named in the error, nothing started.
    let mut s = spec("none", mount.path(), &log, "");
    s.argv = vec!["/usr/bin/redis-server".into()];
    let e = Container::start(&s, tree.child("none").unwrap()).unwrap_err();
    assert!(e.to_string().contains("/usr/bin/redis-server"), "{e}");
    // A hung program is stopped at its time limit.
    let mut slow = Container::start(
        &spec("slow", mount.path(), &log, "exec sleep 100"),
        tree.child("slow").unwrap(),
    )
    .unwrap();
    let e = slow
        .wait_success(Duration::from_millis(200), &|| false)
        .unwrap_err();
    assert!(matches!(e, ContainerError::Timeout { .. }), "{e}");
    let pid = slow.pid() as i32;
    drop(slow);
    assert!(!alive(pid));
    drop(tree);
    assert!(!tree_path.exists(), "cgroups left behind");
}

#[test]
fn trees_of_killed_runs_are_removed() {
    if !testkit::require("trees_of_killed_runs_are_removed", &[Need::Root]) {
        return;
    }
    let (base, _) = erofs_share_measure::container::memory_hierarchy().unwrap();
    // A pid that has just exited stands for a run killed with SIGKILL.
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let stale = base.join(format!(
        "{}{pid}-0",
        erofs_share_measure::container::CGROUP_PREFIX
    ));
    std::fs::create_dir(&stale).unwrap();
    std::fs::create_dir(stale.join("redis-0")).unwrap();
    let tree = CgroupTree::create().unwrap();
    assert!(!stale.exists(), "stale tree left");
    drop(tree);
}
