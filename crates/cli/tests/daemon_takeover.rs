//! Taking over a running daemon (`erofs-share daemon --takeover`): readers keep reading,
//! through `read` and through mappings, cold pages included, while the daemon is replaced 20
//! times; nothing fails, no byte is wrong, and no mount, descriptor or process is left.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use testkit::{Need, Rng, require};

/// A tree of files of many sizes: the shared part of two images and a part of each its own.
fn tree(dir: &Path, own: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng(7);
    let mut files = BTreeMap::new();
    for i in 0..48u64 {
        let seed = if i % 4 == 0 { 1000 * own + i } else { i };
        let mut r = Rng(seed);
        let size = match i % 6 {
            0 => 0,
            1 => 1 + r.next_u64() % 4000,
            2 => 4096 * (1 + r.next_u64() % 8),
            3 => 100_000 + r.next_u64() % 300_000,
            4 => 1_500_000 + r.next_u64() % 1_000_000,
            _ => 1 + r.next_u64() % 60_000,
        } as usize;
        let body: Vec<u8> = (0..size).map(|_| r.next_u64() as u8).collect();
        let name = format!("d{}/f{i:02}", rng.next_u64() % 4);
        std::fs::create_dir_all(dir.join(&name).parent().unwrap()).unwrap();
        std::fs::write(dir.join(&name), &body).unwrap();
        files.insert(name, body);
    }
    files
}

fn mkfs(out: &Path, src: &Path) {
    let o = Command::new(BIN)
        .args(["mkfs", "-q"])
        .arg(out)
        .arg(src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Descriptors open in process `pid`.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Evicts `p`'s pages (so the next read is a page-cache miss) and reads it whole, through
/// `read` or through a mapping.
fn read_cold(p: &Path, mapped: bool) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(p)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    let len = f.metadata()?.len() as usize;
    if mapped && len > 0 {
        let m = Mapped::new(&f, len)?;
        return Ok(m.bytes().to_vec());
    }
    let mut v = Vec::with_capacity(len);
    std::io::Read::read_to_end(&mut &f, &mut v)?;
    Ok(v)
}

/// Starts `daemon --takeover` on `state`; returns it once the status shows it serving.
fn take_over(state: &Path, log: &Path, seen: u64) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["daemon", "--takeover", "--state-dir"])
        .arg(state)
        .env("EROFS_SHARE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Ok(r) = erofs_share_daemon::control::request(
            state,
            &erofs_share_daemon::control::Request::Status,
        ) && let Some(st) = r.status
            && st.pid == child.id()
        {
            assert_eq!(st.takeovers, seen + 1, "{st:?}");
            return child;
        }
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("daemon --takeover exited: {exit}");
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no takeover in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn readers_never_notice_twenty_takeovers() {
    if !require(
        "readers_never_notice_twenty_takeovers",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    let _cache = cache_lock();
    let mut d = Daemon::start();
    let (a_src, b_src) = (d.dir.path().join("a"), d.dir.path().join("b"));
    let a = tree(&a_src, 1);
    let b = tree(&b_src, 2);
    let (a_img, b_img) = (d.dir.path().join("a.erofs"), d.dir.path().join("b.erofs"));
    mkfs(&a_img, &a_src);
    mkfs(&b_img, &b_src);
    // Four mounts in two domains, every image in both.
    let mut mounts: Vec<(PathBuf, Arc<BTreeMap<String, Vec<u8>>>)> = Vec::new();
    let (a, b) = (Arc::new(a), Arc::new(b));
    for (i, (img, files, dom)) in [
        (&a_img, &a, "one"),
        (&b_img, &b, "one"),
        (&a_img, &a, "two"),
        (&b_img, &b, "two"),
    ]
    .into_iter()
    .enumerate()
    {
        let st = d.try_mount(img, &format!("m{i}"), Some(dom), true).unwrap();
        assert_eq!(st.front, "overlay", "{st:?}");
        mounts.push((st.mountpoint, files.clone()));
    }
    let first = d.child.as_ref().unwrap().id();
    let fds_before = fds_of(first);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut readers = Vec::new();
    for r in 0..8 {
        let (root, files) = mounts[r % 4].clone();
        let (stop, reads, errors) = (stop.clone(), reads.clone(), errors.clone());
        readers.push(std::thread::spawn(move || {
            let mapped = r >= 4;
            while !stop.load(Ordering::Relaxed) {
                for (name, want) in files.iter() {
                    match read_cold(&root.join(name), mapped) {
                        Ok(got) if got == *want => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(got) => errors.lock().unwrap().push(format!(
                            "{}/{name}: {} bytes, not the {} expected",
                            root.display(),
                            got.len(),
                            want.len()
                        )),
                        Err(e) => errors
                            .lock()
                            .unwrap()
                            .push(format!("{}/{name}: {e}", root.display())),
                    }
                }
            }
        }));
    }
    // Everyone's cold pages too, not only the readers' own evictions.
    let dropper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };

    let log = d.dir.path().join("daemon.log");
    let mut reads_seen = Vec::new();
    for n in 0..20u64 {
        std::thread::sleep(Duration::from_millis(150));
        let before = reads.load(Ordering::Relaxed);
        let mut old = d.child.take().unwrap();
        let new = take_over(&d.state, &log, n);
        let exit = old.wait().unwrap();
        assert!(exit.success(), "the predecessor exited with {exit}");
        d.child = Some(new);
        reads_seen.push(reads.load(Ordering::Relaxed) - before);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    dropper.join().unwrap();

    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failed reads, first: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        d.log()
    );
    let total = reads.load(Ordering::Relaxed);
    assert!(total > 0, "no read at all");
    eprintln!(
        "{total} whole-file cold reads checked over 20 takeovers (per takeover: {reads_seen:?})"
    );
    let st = d.status();
    assert_eq!(st.takeovers, 20);
    assert_eq!(st.mounts.len(), 4, "{st:?}");
    assert_eq!(st.domains.len(), 2, "{st:?}");
    let misses: u64 = st.domains.iter().map(|d| d.misses).sum();
    assert!(misses > 0, "the last daemon served no miss: {st:?}");
    let fds_after = fds_of(st.pid);
    assert!(
        fds_after <= fds_before + 2,
        "descriptors: {fds_before} in the first daemon, {fds_after} in the last"
    );

    for (m, _) in &mounts {
        d.umount(m);
    }
    assert!(
        d.stop(Duration::from_secs(20)),
        "the last daemon did not stop"
    );
    let left = mounts_under(d.dir.path());
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert!(
        erofs_share_daemon::mounts::mountpoints()
            .iter()
            .all(|m| !m.starts_with(&d.state)),
        "a dedup mount was left"
    );
}
