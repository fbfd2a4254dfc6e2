//! `erofs-share snapshotter` under a private containerd: two OCI images built here are
//! imported and run with `--snapshotter erofs-share`; identical files of both share dedup
//! objects in the snapshotter's domain, so both containers' page cache is that of their
//! distinct content (against about twice that with containerd's overlayfs snapshotter, measured
//! in the same run); containers' writes stay out of the layers; metadata survives restarts of
//! the snapshotter and of containerd; removing the images leaves no snapshot, layer image or
//! mount behind. Root, /dev/fuse, containerd and runc required.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::Digest;
use testkit::{Need, require};

const DOMAIN: &str = "ctr";
const NS: &str = "erofs-share-test";

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// A tar of `(path, mode, content)` regular files and `.wh.` whiteout entries.
fn layer(files: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The programs a container runs (dash as /bin/sh, cat) and the libraries they load.
fn runtime_files() -> Vec<(String, u32, Vec<u8>)> {
    let mut out = vec![
        (
            "bin/sh".to_string(),
            0o755,
            std::fs::read("/bin/dash").unwrap(),
        ),
        (
            "bin/cat".to_string(),
            0o755,
            std::fs::read("/bin/cat").unwrap(),
        ),
    ];
    let ldd = Command::new("ldd")
        .args(["/bin/dash", "/bin/cat"])
        .output()
        .unwrap();
    let mut libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/') && !w.ends_with(':'))
        .map(String::from)
        .collect();
    libs.sort();
    libs.dedup();
    for l in libs {
        out.push((
            l.trim_start_matches('/').to_string(),
            0o755,
            std::fs::read(&l).unwrap(),
        ));
    }
    out
}

/// Writes an OCI archive of `layers` named `name` for `ctr images import`.
fn oci_archive(dir: &Path, name: &str, layers: &[Vec<u8>]) -> PathBuf {
    let root = dir.join(format!("{}-layout", name.replace([':', '/'], "_")));
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |b: &[u8]| {
        let d = sha(b);
        std::fs::write(blobs.join(&d), b).unwrap();
        serde_json::json!({"digest": format!("sha256:{d}"), "size": b.len()})
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let mut d = blob(l);
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        descs.push(d);
        diff_ids.push(format!("sha256:{}", sha(l)));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let mut config = blob(&serde_json::to_vec(&config).unwrap());
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": descs,
    });
    let mut m = blob(&serde_json::to_vec(&manifest).unwrap());
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    m["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    m["annotations"] = serde_json::json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": "latest",
    });
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [m]});
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = root.with_extension("tar");
    let mut t = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    t.append_dir_all(".", &root).unwrap();
    t.finish().unwrap();
    archive
}

/// Processes this test started, killed (by pid) when it ends however it ends.
struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill on the pid of a child we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path, what: &str, log: &Path) {
    let t = Instant::now();
    // A socket file left by a process that just exited refuses connections: wait for one.
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what} did not come up: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

fn spawn_snapshotter(d: &Daemon, root: &Path, sock: &Path) -> Child {
    let log = d.dir.path().join("snapshotter.log");
    let c = spawn_logged(
        Command::new(BIN)
            .arg("snapshotter")
            .arg("--address")
            .arg(sock)
            .arg("--root")
            .arg(root)
            .arg("--domain")
            .arg(DOMAIN)
            .arg("--state-dir")
            .arg(&d.state)
            .env("EROFS_SHARE_LOG", "info"),
        &log,
    );
    wait_for(sock, "the snapshotter", &log);
    c
}

fn ctr(sock: &Path, args: &[&str]) -> Output {
    Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .arg("-n")
        .arg(NS)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn domain_shared(d: &Daemon) -> u64 {
    d.status()
        .domains
        .iter()
        .find(|x| x.id == DOMAIN)
        .map_or(0, |x| x.files_shared)
}

#[test]
fn containerd_runs_images_from_shared_layers() {
    let needs = [
        Need::Fuse,
        Need::Program {
            name: "containerd",
            package: "containerd",
        },
        Need::Program {
            name: "runc",
            package: "runc",
        },
    ];
    if !require("containerd_runs_images_from_shared_layers", &needs) {
        return;
    }
    let d = Daemon::start();
    let tmp = d.dir.path();
    let snap_root = tmp.join("snapshotter");
    let snap_sock = tmp.join("snapshotter.sock");
    let ctr_sock = tmp.join("containerd.sock");
    let config = tmp.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{0}/containerd-root\"\nstate = \"{0}/containerd-state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n\
             [proxy_plugins]\n  [proxy_plugins.erofs-share]\n    type = \"snapshot\"\n    address = \"{2}\"\n",
            tmp.display(),
            ctr_sock.display(),
            snap_sock.display()
        ),
    )
    .unwrap();
    let mut procs = Procs(vec![spawn_snapshotter(&d, &snap_root, &snap_sock)]);
    let clog = tmp.join("containerd.log");
    procs.0.push(spawn_logged(
        Command::new("containerd").arg("--config").arg(&config),
        &clog,
    ));
    wait_for(&ctr_sock, "containerd", &clog);

    // Two images: different base layers that hold the same big file and programs, then a
    // second layer that deletes a base file (a whiteout) and adds its own message.
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut images = Vec::new();
    let mut archives = Vec::new();
    let mut distinct = 0u64; // bytes (in pages) of the content both containers read
    for name in ["a", "b"] {
        let mut base: Vec<(&str, u32, Vec<u8>)> = vec![
            ("share/big.bin", 0o644, big.clone()),
            ("share/gone", 0o644, b"deleted by layer 2".to_vec()),
            ("etc/base", 0o644, format!("base {name}\n").into_bytes()),
        ];
        let rt = runtime_files();
        if name == "a" {
            let pages = |n: usize| (n as u64).div_ceil(4096) * 4096;
            distinct = pages(big.len()) + rt.iter().map(|f| pages(f.2.len())).sum::<u64>();
        }
        base.extend(rt.iter().map(|(p, m, c)| (p.as_str(), *m, c.clone())));
        let top = layer(&[
            ("share/.wh.gone", 0o644, Vec::new()),
            ("etc/msg", 0o644, format!("image {name}\n").into_bytes()),
        ]);
        let image = format!("docker.io/library/esa-{name}:latest");
        let archive = oci_archive(tmp, &image, &[layer(&base), top]);
        ok(
            ctr(
                &ctr_sock,
                &[
                    "images",
                    "import",
                    "--snapshotter",
                    "erofs-share",
                    archive.to_str().unwrap(),
                ],
            ),
            "ctr images import",
        );
        images.push(image);
        archives.push(archive);
    }

    let script = "cat /etc/msg /etc/base; test -e /share/gone && echo whiteout-lost; \
                  cat /share/big.bin > /big.copy && echo wrote";
    let run_on = |snapshotter: &str, image: &str, id: &str, script: &str| {
        let out = ctr(
            &ctr_sock,
            &[
                "run",
                "--rm",
                "--snapshotter",
                snapshotter,
                image,
                id,
                "/bin/sh",
                "-c",
                script,
            ],
        );
        ok(out, &format!("ctr run {image} on {snapshotter}"))
    };
    let run = |image: &str, id: &str| run_on("erofs-share", image, id, script);
    assert_eq!(run(&images[0], "ca"), "image a\nbase a\nwrote\n");
    assert_eq!(run(&images[1], "cb"), "image b\nbase b\nwrote\n");
    // The big file and the programs are in every layer image of both chains: one object each.
    assert!(
        domain_shared(&d) > 0,
        "no file shared in the domain: {:?}",
        d.status()
    );
    // The container's write went to its upper directory, gone with it: the layers hold none.
    let layer_mounts: Vec<_> = d
        .status()
        .mounts
        .iter()
        .map(|m| m.mountpoint.clone())
        .collect();
    assert_eq!(layer_mounts.len(), 4, "one layer image per chain step");
    for m in &layer_mounts {
        assert!(!m.join("big.copy").exists(), "{}", m.display());
        // The top of each chain applied layer 2's whiteout.
        if m.join("etc/msg").exists() {
            assert!(!m.join("share/gone").exists(), "{}", m.display());
        }
    }

    // Page cache of both containers reading their files, against containerd's overlayfs
    // snapshotter (same images, unpacked again there): the shared files are cached once.
    for a in &archives {
        let a = a.to_str().unwrap();
        let out = ctr(
            &ctr_sock,
            &["images", "import", "--snapshotter", "overlayfs", a],
        );
        ok(out, "ctr images import (overlayfs)");
    }
    let read = "cat /bin/sh /bin/cat /share/big.bin /etc/msg > /dev/null";
    let _cache = cache_lock();
    let domain_cached = || {
        d.status()
            .domains
            .iter()
            .find(|x| x.id == DOMAIN)
            .map_or(0, |x| x.cached_bytes)
    };
    let mut timing = Vec::new();
    let mut ours = 0;
    for sn in ["erofs-share", "overlayfs"] {
        testkit::drop_caches().unwrap();
        let t = Instant::now();
        run_on(sn, &images[0], "pa", read);
        run_on(sn, &images[1], "pb", read);
        timing.push((sn, t.elapsed() / 2));
        if sn == "erofs-share" {
            // What the domain's dedup files hold in the page cache.
            ours = domain_cached();
        }
    }
    let overlay_root = tmp.join("containerd-root/io.containerd.snapshotter.v1.overlayfs");
    let mut theirs = 0;
    let mut big_cached = 0;
    let mut copies = 0;
    for (_, f) in regular_files(&overlay_root) {
        let cached = erofs_share_daemon::page_cache::cached_bytes(&f).unwrap();
        theirs += cached;
        if f.file_name() == Some("big.bin".as_ref()) {
            copies += 1;
            big_cached += cached;
        }
    }
    eprintln!(
        "page cache: erofs-share {ours} B, overlayfs {theirs} B (big.bin: {copies} copies, {big_cached} B); \
         distinct content {distinct} B; ctr run to exit: {timing:?}"
    );
    assert_eq!(copies, 2, "overlayfs unpacked big.bin once per image");
    assert!(
        big_cached >= 2 * big.len() as u64,
        "overlayfs caches each copy"
    );
    assert!(
        ours > big.len() as u64 && ours <= distinct * 105 / 100,
        "erofs-share cached {ours} B for {distinct} B of distinct content"
    );
    // Restart the snapshotter: the metadata persists and the images still run.
    let before = ok(
        ctr(
            &ctr_sock,
            &["snapshots", "--snapshotter", "erofs-share", "ls"],
        ),
        &format!(
            "ls, snapshotter log: {}",
            std::fs::read_to_string(tmp.join("snapshotter.log")).unwrap_or_default()
        ),
    );
    let mut old = procs.0.remove(0);
    // SAFETY: kill on the pid of a child we started.
    unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
    old.wait().unwrap();
    procs
        .0
        .insert(0, spawn_snapshotter(&d, &snap_root, &snap_sock));
    // containerd redials the proxy socket with gRPC's backoff (up to seconds).
    let t = Instant::now();
    let after = loop {
        let out = ctr(
            &ctr_sock,
            &["snapshots", "--snapshotter", "erofs-share", "ls"],
        );
        if out.status.success() || t.elapsed() > Duration::from_secs(30) {
            break ok(out, "ls after restart");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(before, after, "snapshots after a restart");
    assert_eq!(
        before.lines().count(),
        5,
        "header and four committed layers:\n{before}"
    );
    assert_eq!(run(&images[1], "cb2"), "image b\nbase b\nwrote\n");

    // And a restart of containerd: its images stay runnable from the same layers.
    let mut old = procs.0.remove(1);
    // SAFETY: kill on the pid of a child we started.
    unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
    old.wait().unwrap();
    procs.0.push(spawn_logged(
        Command::new("containerd").arg("--config").arg(&config),
        &clog,
    ));
    wait_for(&ctr_sock, "containerd", &clog);
    assert_eq!(run(&images[0], "ca2"), "image a\nbase a\nwrote\n");
    assert_eq!(d.status().mounts.len(), 4, "the same four layer mounts");

    // Removing the images lets containerd's gc remove every snapshot: no layer left.
    for i in &images {
        ok(
            ctr(&ctr_sock, &["images", "rm", "--sync", i]),
            "ctr images rm",
        );
    }
    let t = Instant::now();
    while !d.status().mounts.is_empty() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.status().mounts.is_empty(),
        "layer mounts left: {:?}",
        d.status().mounts
    );
    let left: Vec<_> = std::fs::read_dir(snap_root.join("snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "snapshot directories left: {left:?}");
    drop(procs);
    for m in mounts_under(tmp) {
        let _ = erofs_share_daemon::mounts::detach(&m);
    }
}
