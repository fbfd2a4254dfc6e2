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
use erofs_share_daemon::control::MountStatus;
use testkit::{Need, Rng, require};

/// Relative path → content.
type Files = BTreeMap<String, Vec<u8>>;

/// A tree of files of many sizes: the shared part of two images and a part of each its own.
fn tree(dir: &Path, own: u64) -> Files {
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

/// A daemon with one image of [`tree`] mounted in domain `one` (on `front`, else the
/// default): the daemon, the files and the mount.
fn one_mount(front: Option<&str>) -> (Daemon, Files, MountStatus) {
    let mut d = Daemon::start();
    let src = d.dir.path().join("a");
    let files = tree(&src, 1);
    let img = d.dir.path().join("a.erofs");
    mkfs(&img, &src);
    d.front = front.map(String::from);
    let st = d.try_mount(&img, "a", Some("one"), true).unwrap();
    (d, files, st)
}

/// Descriptors open in process `pid`, by what they are: /dev/fuse, inotify, eventfd, image
/// files, and everything else (sockets, the log, kept dedup files).
fn fds_of(pid: u32) -> BTreeMap<&'static str, usize> {
    let mut kinds = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        let kind = if t == "/dev/fuse" {
            "fuse"
        } else if t.contains("inotify") {
            "inotify"
        } else if t.contains("eventfd") {
            "eventfd"
        } else if t.ends_with(".erofs") {
            "image"
        } else {
            "other"
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
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

/// Polls the daemon on `state` until its status satisfies `ok`; None after `limit`.
fn status_when(
    state: &Path,
    limit: Duration,
    mut ok: impl FnMut(&erofs_share_daemon::control::Status) -> bool,
) -> Option<erofs_share_daemon::control::Status> {
    let t = Instant::now();
    while t.elapsed() < limit {
        let asked = erofs_share_daemon::control::request(
            state,
            &erofs_share_daemon::control::Request::Status,
        );
        if let Some(st) = asked.ok().and_then(|r| r.status)
            && ok(&st)
        {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
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
    let id = child.id();
    let st = status_when(state, Duration::from_secs(30), |st| {
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("daemon --takeover exited: {exit}");
        }
        st.pid == id
    });
    let Some(st) = st else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no takeover in 30 s");
    };
    assert_eq!(st.takeovers, seen + 1, "{st:?}");
    child
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
    // Four mounts in two domains, every image in both; one of them on the FUSE front.
    let mut mounts: Vec<(PathBuf, Arc<Files>)> = Vec::new();
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
        d.front = (i == 3).then(|| "fuse".to_string());
        let st = d.try_mount(img, &format!("m{i}"), Some(dom), true).unwrap();
        assert_eq!(st.front, if i == 3 { "fuse" } else { "overlay" }, "{st:?}");
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
    // What each takeover passes on must not pile up: as many FUSE connections, images and
    // inotify instances as the first daemon had.
    let fds_after = fds_of(st.pid);
    for kind in ["fuse", "inotify", "eventfd", "image"] {
        assert_eq!(
            fds_after.get(kind),
            fds_before.get(kind),
            "{kind} descriptors: {fds_before:?} in the first daemon, {fds_after:?} in the last"
        );
    }
    let shown = cli_ok([
        "status".as_ref(),
        "--state-dir".as_ref(),
        d.state.as_os_str(),
    ]);
    assert!(shown.contains(", 20 takeovers"), "{shown}");
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

/// A stand-in for systemd's file descriptor store: receives the daemon's notifications on a
/// datagram socket (`NOTIFY_SOCKET`) and keeps what `FDSTORE=1` sends, by `FDNAME`.
struct FdStoreHarness {
    path: PathBuf,
    fds: Arc<Mutex<Vec<(String, std::os::fd::OwnedFd)>>>,
    ready: Arc<AtomicU64>,
}

impl FdStoreHarness {
    fn new(dir: &Path) -> FdStoreHarness {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let fds: Arc<Mutex<Vec<(String, std::os::fd::OwnedFd)>>> = Arc::default();
        let ready = Arc::new(AtomicU64::new(0));
        let (f, r) = (fds.clone(), ready.clone());
        std::thread::spawn(move || {
            use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
            loop {
                let mut buf = [0u8; 4096];
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let Ok(msg) = recvmsg(
                    &sock,
                    &mut [std::io::IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                ) else {
                    return;
                };
                let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
                let name = text
                    .lines()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                let got: Vec<_> = control
                    .drain()
                    .filter_map(|m| match m {
                        RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                let mut store = f.lock().unwrap();
                if text.lines().any(|l| l == "FDSTORE=1") {
                    store.extend(got.into_iter().map(|fd| (name.clone(), fd)));
                } else if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                    store.retain(|(n, _)| *n != name);
                } else if text.lines().any(|l| l == "READY=1") {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        FdStoreHarness { path, fds, ready }
    }

    /// The names held, sorted.
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .fds
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Starts a daemon as systemd restarts one: the stored descriptors from 3 on, named in
    /// `LISTEN_FDNAMES`.
    fn restart(&self, state: &Path, log: &Path) -> Child {
        use command_fds::{CommandFdExt, FdMapping};
        let store = self.fds.lock().unwrap();
        let mappings: Vec<FdMapping> = store
            .iter()
            .enumerate()
            .map(|(i, (_, fd))| FdMapping {
                parent_fd: fd.try_clone().unwrap(),
                child_fd: 3 + i as i32,
            })
            .collect();
        let names: Vec<&str> = store.iter().map(|(n, _)| n.as_str()).collect();
        let log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["daemon", "--state-dir"])
            .arg(state)
            .env("EROFS_SHARE_LOG", "info")
            .env("NOTIFY_SOCKET", &self.path)
            .env("LISTEN_FDS", store.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd.fd_mappings(mappings).unwrap();
        cmd.spawn().unwrap()
    }
}

#[test]
fn a_killed_daemon_restarted_with_its_stored_descriptors_keeps_every_mount() {
    if !require(
        "a_killed_daemon_restarted_with_its_stored_descriptors_keeps_every_mount",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    let _cache = cache_lock();
    let dir = tempfile::Builder::new()
        .prefix("erofs-share-fdstore-")
        .tempdir_in("/tmp")
        .unwrap();
    let store = FdStoreHarness::new(dir.path());
    let notify = store.path.display().to_string();
    let mut d = Daemon::start_with_env(&[("NOTIFY_SOCKET", notify.as_str())]);
    let (a_src, b_src) = (d.dir.path().join("a"), d.dir.path().join("b"));
    let a = Arc::new(tree(&a_src, 1));
    let b = Arc::new(tree(&b_src, 2));
    let (a_img, b_img) = (d.dir.path().join("a.erofs"), d.dir.path().join("b.erofs"));
    mkfs(&a_img, &a_src);
    mkfs(&b_img, &b_src);
    let ma = d.mount(&a_img, "a", Some("one"));
    d.front = Some("fuse".into());
    let mb = d.mount(&b_img, "b", Some("one"));
    // The mounts' descriptors reach the store as the mounts are made: the inotify instance,
    // the domain's dedup connection, both images, the FUSE-front mount's connection.
    let t = Instant::now();
    while store.names().len() < 5 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(store.names().len(), 5, "{:?}", store.names());
    assert!(store.ready.load(Ordering::Relaxed) >= 1, "no READY=1");

    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for (i, (root, files)) in [(ma.clone(), a.clone()), (mb.clone(), b.clone())]
        .into_iter()
        .enumerate()
    {
        let (stop, errors, reads) = (stop.clone(), errors.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (name, want) in files.iter() {
                    match read_cold(&root.join(name), i == 1) {
                        Ok(got) if got == *want => {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => errors.lock().unwrap().push(format!("{name}: wrong bytes")),
                        Err(e) => errors.lock().unwrap().push(format!("{name}: {e}")),
                    }
                }
            }
        }));
    }
    // Long enough for the first misses' verifications to reach the state file (saved within a
    // second of being found).
    std::thread::sleep(Duration::from_millis(1500));
    let saved = erofs_share_daemon::takeover::read_state(&d.state)
        .unwrap()
        .expect("a state file");
    let judged: usize = (saved.domains.iter())
        .flat_map(|dom| &dom.table.objects)
        .map(|o| o.good.len())
        .sum();
    assert!(judged > 0, "no verification saved");
    d.kill();
    // Dead: misses wait on connections systemd keeps open, nothing fails.
    std::thread::sleep(Duration::from_millis(500));
    let before = reads.load(Ordering::Relaxed);
    let log = d.dir.path().join("daemon.log");
    let child = store.restart(&d.state, &log);
    d.child = Some(child);
    let st = status_when(&d.state, Duration::from_secs(20), |_| true)
        .expect("no daemon after the restart");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{errors:?}\n{}", d.log());
    assert!(
        reads.load(Ordering::Relaxed) > before,
        "no read after the restart"
    );
    assert_eq!(st.mounts.len(), 2, "{st:?}");
    assert_eq!(st.mounts[1].front, "fuse", "{st:?}");
    let st = d.status();
    assert!(
        st.domains.iter().map(|d| d.misses).sum::<u64>() > 0,
        "{st:?}"
    );
    assert!(d.log().contains("recovered the mounts"), "{}", d.log());

    // A clean stop leaves the store empty and no mount behind.
    d.umount(&ma);
    d.umount(&mb);
    assert!(d.stop(Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(store.names(), Vec::<String>::new());
    assert!(mounts_under(d.dir.path()).is_empty());
}

#[test]
fn fuse_front_mounts_are_handed_over_with_their_open_files() {
    if !require(
        "fuse_front_mounts_are_handed_over_with_their_open_files",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    // A sharing FUSE-front mount (shared files pass through to dedup files: the kernel holds
    // backing ids) and an unsharing one (the daemon answers reads on its file handles).
    let (mut d, files, shared) = one_mount(Some("fuse"));
    assert_eq!(shared.front, "fuse");
    let own = d.try_mount(&shared.image, "own", None, false).unwrap();
    let big = files
        .iter()
        .find(|(_, b)| b.len() > 1_000_000)
        .map(|(n, _)| n.clone())
        .unwrap();
    let want = &files[&big];
    let open_shared = std::fs::File::open(shared.mountpoint.join(&big)).unwrap();
    let mapped = Mapped::new(&open_shared, want.len()).unwrap();
    let open_own = std::fs::File::open(own.mountpoint.join(&big)).unwrap();
    // Without systemd's store nobody could recover from a state file: none is written (a
    // takeover gets the state over the socket).
    assert!(
        !d.state
            .join(erofs_share_daemon::takeover::STATE_FILE)
            .exists(),
        "a state file without systemd"
    );
    let before = d.status();
    assert!(
        before.mounts.iter().any(|m| m.shared_opens > 0),
        "{before:?}"
    );

    let log = d.dir.path().join("daemon.log");
    for n in 0..3 {
        let mut old = d.child.take().unwrap();
        d.child = Some(take_over(&d.state, &log, n));
        assert!(old.wait().unwrap().success());
        for f in [&open_shared, &open_own] {
            rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let mut got = vec![0u8; want.len()];
            std::os::unix::fs::FileExt::read_exact_at(f, &mut got, 0).unwrap();
            assert!(got == *want, "a file opened before takeover {n}");
        }
        assert!(
            mapped.bytes() == &want[..],
            "a mapping made before takeover {n}"
        );
        // New opens of the same inodes, which the kernel still has open.
        for mp in [&shared.mountpoint, &own.mountpoint] {
            for (name, body) in &files {
                assert_eq!(
                    read_cold(&mp.join(name), n % 2 == 0).unwrap(),
                    *body,
                    "{name}"
                );
            }
        }
    }
    let after = d.status();
    assert_eq!(after.takeovers, 3);
    assert_eq!(after.mounts.len(), 2, "{after:?}");
    assert!(after.mounts.iter().all(|m| m.front == "fuse"));
    drop(mapped);
    drop((open_shared, open_own));
    d.umount(&shared.mountpoint);
    d.umount(&own.mountpoint);
    assert!(d.stop(Duration::from_secs(20)));
    assert!(mounts_under(d.dir.path()).is_empty());
}

#[test]
fn a_successor_that_dies_mid_takeover_leaves_the_daemon_serving() {
    if !require(
        "a_successor_that_dies_mid_takeover_leaves_the_daemon_serving",
        &[Need::Root, Need::Fuse, Need::KernelErofs],
    ) {
        return;
    }
    let (mut d, files, st) = one_mount(None);
    let mp = st.mountpoint;
    let pid = d.pid() as u32;
    // It has bound the socket and served the connections when it dies.
    let out = Command::new(BIN)
        .args(["daemon", "--takeover", "--state-dir"])
        .arg(&d.state)
        .env("EROFS_SHARE_TEST_ABORT_TAKEOVER", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status_when(&d.state, Duration::from_secs(40), |s| s.pid == pid).is_some(),
        "the daemon did not take its socket back"
    );
    for (name, want) in &files {
        assert_eq!(read_cold(&mp.join(name), false).unwrap(), *want, "{name}");
    }
    let pidfile = std::fs::read_to_string(d.state.join("daemon.pid")).unwrap();
    assert_eq!(pidfile.trim(), pid.to_string());
    // A sound successor still can.
    let log = d.dir.path().join("daemon.log");
    let mut old = d.child.take().unwrap();
    d.child = Some(take_over(&d.state, &log, 0));
    assert!(old.wait().unwrap().success());
    for (name, want) in &files {
        assert_eq!(read_cold(&mp.join(name), true).unwrap(), *want, "{name}");
    }
    d.umount(&mp);
}
