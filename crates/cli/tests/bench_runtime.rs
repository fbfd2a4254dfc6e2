//! `erofs-share bench runtime` end to end on a redis and nginx container root this test
//! builds (Debian bookworm's packages, extracted by mmdebstrap, into two images with our
//! mkfs): a short bounded run per app, and a run stopped by Ctrl-C, each leaving no process,
//! cgroup or mount behind.

use erofs_share_measure::container::{CGROUP_PREFIX, memory_hierarchy};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::Need;

const MMDEBSTRAP: Need = Need::Program {
    name: "mmdebstrap",
    package: "mmdebstrap",
};

/// A container root holding redis-server, redis-benchmark and nginx: the packages and their
/// dependencies from Debian's archive, unpacked without running their scripts (about 40 MB
/// to download, 120 MB unpacked), plus what the scripts and a container runtime would add.
fn container_root(root: &Path) -> Result<(), String> {
    let out = Command::new("mmdebstrap")
        .args(["--quiet", "--variant=extract"])
        .arg("--include=redis-server,redis-tools,nginx")
        .arg("bookworm")
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mmdebstrap: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "mmdebstrap could not fetch redis and nginx from the Debian archive: {last}"
        ));
    }
    let add = |e: std::io::Result<()>, what: &str| e.map_err(|e| format!("{what}: {e}"));
    for d in ["proc", "dev", "tmp", "run", "var/www/html"] {
        add(std::fs::create_dir_all(root.join(d)), d)?;
    }
    // nginx runs as www-data; the default site's page is copied by nginx-common's postinst.
    add(
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n",
        ),
        "etc/passwd",
    )?;
    add(
        std::fs::write(root.join("etc/group"), "root:x:0:\nwww-data:x:33:\n"),
        "etc/group",
    )?;
    add(
        std::fs::copy(
            root.join("usr/share/nginx/html/index.html"),
            root.join("var/www/html/index.nginx-debian.html"),
        )
        .map(drop),
        "index.nginx-debian.html",
    )
}

/// Gate, then the container root's two images (`a`, and `b` with one file changed, as a
/// minor release of the same image), or None after reporting why the test cannot run.
fn setup(test: &str, dir: &Path) -> Option<Vec<PathBuf>> {
    if !testkit::require(test, &[Need::KernelErofs, MMDEBSTRAP]) {
        return None;
    }
    let root = dir.join("root");
    if let Err(reason) = container_root(&root) {
        testkit::gate::cannot_run(test, &reason);
        return None;
    }
    let images = ["a", "b"]
        .iter()
        .map(|v| {
            std::fs::write(root.join("etc/hostname"), format!("{v}\n")).unwrap();
            let img = dir.join(format!("{v}.erofs"));
            let st = bin()
                .args(["mkfs", "--quiet"])
                .arg(&img)
                .arg(&root)
                .status()
                .unwrap();
            assert!(st.success(), "mkfs {v}");
            img
        })
        .collect();
    std::fs::remove_dir_all(&root).unwrap();
    Some(images)
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_erofs-share"))
}

fn our_cgroups(pid: u32) -> Vec<PathBuf> {
    let (base, _) = memory_hierarchy().unwrap();
    let prefix = format!("{CGROUP_PREFIX}{pid}-");
    std::fs::read_dir(&base)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn loops_of(image: &Path) -> String {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

fn assert_nothing_left(pid: u32, images: &[PathBuf], pids: &[i32]) {
    assert_eq!(our_cgroups(pid), Vec::<PathBuf>::new(), "cgroups left");
    // The private daemon's state directory and the mount points carry these prefixes
    // (crates/measure/src/share.rs).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains("erofs-share-bench-mnt-") || l.contains("erofs-share-bench-state-"))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    let daemons = processes_with("erofs-share-bench-state-");
    assert!(daemons.is_empty(), "daemons left: {daemons:#?}");
    for img in images {
        assert_eq!(loops_of(img), "", "loop device left for {}", img.display());
    }
    for p in pids {
        let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            state.is_empty()
                || state
                    .rsplit_once(") ")
                    .is_some_and(|(_, r)| r.starts_with('Z')),
            "process {p} left: {state}"
        );
    }
}

/// One test, run in sequence: the leftover checks look for anything with our prefixes.
#[test]
fn runs_pairs_then_stops_on_ctrl_c_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let Some(images) = setup(
        "runs_pairs_then_stops_on_ctrl_c_and_leaves_nothing",
        t.path(),
    ) else {
        return;
    };
    for app in ["redis", "nginx"] {
        let setups = "kernel,no-share,share";
        let png = t.path().join(format!("{app}.png"));
        let child = bin()
            .args(["bench", "runtime", "--app", app, "--requests", "500"])
            .args(["--json", "--setups", setups, "--plot"])
            .arg(&png)
            .args(&images)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{app}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), setups.split(',').count());
        for row in rows {
            let containers = row["containers"].as_array().unwrap();
            assert_eq!(containers.len(), 2);
            for c in containers {
                let m = &c["memory"];
                for k in ["current", "file", "anon"] {
                    assert!(m[k].as_u64().unwrap() > 0, "{app}: {k} in {c}");
                }
                assert!(c["load"]["requests"].as_u64().unwrap() >= 500);
            }
        }
        {
            // Libraries both containers map are charged once with sharing.
            let file = |row: &serde_json::Value| -> u64 {
                row["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["memory"]["file"].as_u64().unwrap())
                    .sum()
            };
            assert!(
                file(&rows[2]) < file(&rows[1]),
                "one domain {} vs no-share {}",
                file(&rows[2]),
                file(&rows[1])
            );
        }
        assert_nothing_left(pid, &images, &[]);
    }
    ctrl_c(&images);
}

/// Interrupt a run (erofs-share mounts in one domain) once both servers are up.
fn ctrl_c(images: &[PathBuf]) {
    let mut child = bin()
        .args([
            "bench",
            "runtime",
            "--app",
            "redis",
            "--requests",
            "100000000",
        ])
        .args(["--setups", "share"])
        .args(images)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until both servers run (a cgroup each, with processes), then interrupt.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "servers never started");
        seen = our_cgroups(pid)
            .iter()
            .flat_map(|tree| std::fs::read_dir(tree).into_iter().flatten().flatten())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| std::fs::read_to_string(e.path().join("cgroup.procs")).ok())
            .filter(|procs| !procs.trim().is_empty())
            .collect();
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids: Vec<i32> = seen
        .iter()
        .flat_map(|s| s.lines().map(|l| l.trim().parse().unwrap()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory preconditions; pid is our live child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "bench did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(pid, images, &pids);
}
