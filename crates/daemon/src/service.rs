//! The daemon as a process: the state directory and its lock, the control socket and its
//! request threads, the stop signals, and the clean-up of what a killed daemon left behind.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::control::{self, Request, Response};
use crate::daemon::{DEDUP_FSNAME, Daemon, IMAGE_FSNAME};
use crate::mounts::{detach, is_dead, our_mounts, our_mounts_with};

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a named object failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The OS error.
        cause: io::Error,
    },
    /// Another daemon owns the state directory.
    #[error("another erofs-share daemon already runs with state directory {0}")]
    AlreadyRunning(PathBuf),
    /// Taking over from the running daemon failed (it keeps running).
    #[error("taking over from the daemon at {state_dir}: {why}")]
    Takeover {
        /// Its state directory.
        state_dir: PathBuf,
        /// What went wrong.
        why: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |cause| Error::Io { what, cause }
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT or a `stop` request, with its
/// caches in `cache_dir` (see [`crate::default_cache_dir`]).
pub fn run(state_dir: &Path, cache_dir: &Path) -> Result<(), Error> {
    run_with(state_dir, cache_dir, false)
}

/// Takes over the mounts of the daemon running on `state_dir` (see [`crate::takeover`]), then
/// runs as [`run`] does. The predecessor exits once this one serves; if anything fails before,
/// it keeps running and this returns the error.
pub fn run_takeover(state_dir: &Path, cache_dir: &Path) -> Result<(), Error> {
    run_with(state_dir, cache_dir, true)
}

fn run_with(state_dir: &Path, cache_dir: &Path, takeover: bool) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err(format!("create {}", state_dir.display())))?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", state_dir.display())))?;
    let lock_path = state_dir.join("daemon.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("open {}", lock_path.display())))?;
    if !takeover && lock.try_lock().is_err() {
        return Err(Error::AlreadyRunning(state_dir.to_path_buf()));
    }
    raise_fd_limit();
    // Block the stop signals in every thread; this one waits for them.
    let set = stop_signals()?;
    let sock = control::socket_path(state_dir);
    let (daemon, predecessor) = if takeover {
        let failed = |why: String| Error::Takeover {
            state_dir: state_dir.to_path_buf(),
            why,
        };
        let (daemon, stream, pid) = adopt(state_dir, cache_dir).map_err(failed)?;
        (daemon, Some((stream, pid)))
    } else if let Some(daemon) = recover(state_dir, cache_dir) {
        (daemon, None)
    } else {
        clean_stale_mounts(state_dir, cache_dir);
        (
            Daemon::new(state_dir.to_path_buf(), cache_dir.to_path_buf()),
            None,
        )
    };
    if predecessor.is_none() {
        // Before the socket answers: whoever waits for the daemon finds it done.
        move_old_caches(state_dir, cache_dir);
    }
    listen(&daemon)?;
    let pid_path = state_dir.join("daemon.pid");
    if let Some((stream, pid)) = predecessor {
        if std::env::var_os("EROFS_SHARE_TEST_ABORT_TAKEOVER").is_some() {
            // Tests: a successor that dies after it has begun to serve, before `adopted`.
            tracing::error!("EROFS_SHARE_TEST_ABORT_TAKEOVER: exiting mid-takeover");
            std::process::exit(3);
        }
        // The predecessor exits on this line; what it read and did not answer is queued again.
        (&stream)
            .write_all(b"adopted\n")
            .map_err(io_err("tell the predecessor it may exit"))?;
        wait_exit(pid, &daemon);
        lock.lock()
            .map_err(io_err(format!("lock {}", lock_path.display())))?;
        tracing::info!("took over from daemon {pid}");
        move_old_caches(state_dir, cache_dir);
    }
    daemon.persist();
    daemon.save_verifications();
    daemon.notify_ready();
    tracing::info!(
        "erofs-share daemon {} serving {}",
        std::process::id(),
        sock.display()
    );

    // sigwait fails only on an invalid set (it does not return EINTR): no retry, but the
    // mounts are still unmounted before the error is reported.
    let waited = set.wait();
    match &waited {
        Ok(sig) => tracing::info!("{sig}: unmounting everything"),
        Err(e) => tracing::error!("sigwait: {e}: unmounting everything"),
    }
    let _ = fs::remove_file(&sock);
    daemon.shutdown(Duration::from_secs(3));
    let _ = fs::remove_file(&pid_path);
    drop(lock);
    waited.map(drop).map_err(|e| Error::Io {
        what: "wait for SIGTERM/SIGINT".into(),
        cause: e.into(),
    })
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it spawns later;
/// returns the set for `wait`.
fn stop_signals() -> Result<nix::sys::signal::SigSet, Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(|e| Error::Io {
        what: "block SIGTERM/SIGINT".into(),
        cause: e.into(),
    })?;
    Ok(set)
}

/// Each mount holds a few /dev/fuse clones and its image, and each dedup object its dedup
/// file: lift the soft fd limit to the hard one, and as root the hard one to the kernel's
/// per-process maximum (`fs.nr_open`).
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let lim = getrlimit(Resource::Nofile);
    // None is unlimited: nothing to raise.
    let Some(hard) = lim.maximum else { return };
    if let Some(max) = nr_open.filter(|&m| m > hard) {
        let raised = Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        // Needs CAP_SYS_RESOURCE; without it the soft limit is raised below.
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return;
        }
    }
    if lim.current.is_some_and(|cur| cur < hard) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("raise RLIMIT_NOFILE to {hard}: {e}");
        }
    }
}

/// After a crash under systemd: the descriptors it kept (`LISTEN_FDS`) and the state file
/// give back every mount, whose requests waited meanwhile; what the dead daemon had read and
/// not answered is queued again. None when there is nothing to recover, or it cannot be
/// (then the descriptors are let go and stale mounts cleaned as after any crash).
fn recover(state_dir: &Path, cache_dir: &Path) -> Option<Arc<Daemon>> {
    let listened = crate::takeover::listened();
    if listened.is_empty() {
        return None;
    }
    let names: Vec<String> = listened.iter().map(|(n, _)| n.clone()).collect();
    let adopted = (|| {
        let state = crate::takeover::read_state(state_dir)
            .map_err(|e| e.to_string())?
            .ok_or("no state file")?;
        let mut by_name: std::collections::HashMap<String, std::os::fd::OwnedFd> =
            listened.into_iter().collect();
        let fds = (state.fd_names.iter())
            .map(|n| {
                by_name
                    .remove(n)
                    .ok_or(format!("systemd kept no descriptor {n:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let daemon = Daemon::adopt(state_dir.to_path_buf(), cache_dir.to_path_buf(), state, fds)?;
        daemon.resend_pending();
        // Mounts the state file did not have (made after its last write) died with it.
        for (m, _) in our_mounts_with(IMAGE_FSNAME) {
            if is_dead(&m) {
                tracing::info!("detaching dead image mount {}", m.display());
                let _ = detach(&m);
            }
        }
        Ok::<_, String>(daemon)
    })();
    match adopted {
        Ok(d) => {
            tracing::info!(
                "recovered the mounts of a daemon that died, from {} descriptors systemd kept",
                names.len()
            );
            Some(d)
        }
        Err(e) => {
            tracing::warn!("cannot recover the previous daemon's mounts: {e}");
            // Let systemd drop what it kept: those connections end, their mounts are stale.
            if let Some(store) = crate::takeover::FdStore::from_env() {
                store.already_stored(names);
                store.sync(&[]);
            }
            None
        }
    }
}

/// Asks the daemon at `state_dir` for its mounts and serves them; returns the connection (on
/// which the predecessor waits for `adopted`) and its pid.
fn adopt(state_dir: &Path, cache_dir: &Path) -> Result<(Arc<Daemon>, UnixStream, u32), String> {
    let sock = control::socket_path(state_dir);
    let stream = UnixStream::connect(&sock)
        .map_err(|e| format!("{}: {e} (is a daemon running?)", sock.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&Request::Takeover).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| format!("send the request: {e}"))?;
    // An answer line first: a refusal, or ok and the state after it.
    let answer = read_line(&stream).map_err(|e| format!("read its answer: {e}"))?;
    let answer: Response =
        serde_json::from_slice(&answer).map_err(|e| format!("bad answer: {e}"))?;
    if !answer.ok {
        return Err(answer.error.unwrap_or_else(|| "refused".into()));
    }
    let (state, fds) =
        crate::takeover::receive(&stream).map_err(|e| format!("receive its state: {e}"))?;
    let pid = state.pid;
    let daemon = Daemon::adopt(state_dir.to_path_buf(), cache_dir.to_path_buf(), state, fds)?;
    Ok((daemon, stream, pid))
}

/// One line, read a byte at a time: what follows it carries descriptors and must not be
/// read ahead.
fn read_line(stream: &UnixStream) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 1 << 20 {
        (&*stream).read_exact(&mut b)?;
        if b[0] == b'\n' {
            return Ok(line);
        }
        line.push(b[0]);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "answer line too long",
    ))
}

/// Waits until process `pid` (the predecessor) is gone. Once it has begun to exit its FUSE
/// threads are gone, but a thread of it may still wait on a request one of them had read
/// (its own `status` reading a dedup file, say), which keeps it from finishing: what it read
/// is queued again each time round until it has gone, then once more. A predecessor that has
/// not begun to exit after 30 s is killed.
fn wait_exit(pid: u32, daemon: &Daemon) {
    let stat = format!("/proc/{pid}/stat");
    let t = std::time::Instant::now();
    let mut killed = false;
    while let Ok(s) = fs::read_to_string(&stat) {
        let exiting = s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'));
        if exiting {
            daemon.resend_pending();
        } else if !killed && t.elapsed() > Duration::from_secs(30) {
            tracing::warn!("the predecessor {pid} did not exit: killing it");
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.resend_pending();
}

fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let me = rustix::process::geteuid().as_raw();
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let d = daemon.clone();
        let _ = std::thread::Builder::new()
            .name("request".into())
            .spawn(move || handle_conn(stream, d, me));
    }
}

fn handle_conn(stream: UnixStream, daemon: Arc<Daemon>, me: u32) {
    let mut stop = false;
    let resp = match control::peer_uid(&stream) {
        Ok(uid) if uid == 0 || uid == me => match control::read_request(&stream) {
            Ok(Request::Takeover) => match hand_over(&stream, &daemon) {
                Ok(()) => return,
                Err(e) => Response::error(e),
            },
            Ok(req) => {
                stop = req == Request::Stop;
                daemon.handle(req)
            }
            Err(e) => Response::error(e),
        },
        Ok(uid) => Response::error(format!("uid {uid} may not control the daemon")),
        Err(e) => Response::error(format!("peer credentials: {e}")),
    };
    let _ = control::write_response(&stream, &resp);
    if stop {
        // After the answer: the shutdown may end the process at once.
        // To the process, not this thread (which blocks it): the signal thread performs the
        // shutdown.
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
    }
}

/// Sends everything to a successor; exits the process once it has adopted. An error when the
/// hand-over could not start (nothing was sent) or the successor failed (this daemon goes on).
fn hand_over(stream: &UnixStream, daemon: &Arc<Daemon>) -> Result<(), String> {
    use std::io::Read;
    let h = daemon.hand_over()?;
    let fds: Vec<_> = h.fds.iter().map(|f| std::os::fd::AsFd::as_fd(f)).collect();
    let ok = Response {
        ok: true,
        ..Response::default()
    };
    let sent = control::write_response(stream, &ok)
        .and_then(|()| crate::takeover::send(stream, &h.state, &fds));
    let mut answer = [0u8; 8];
    let adopted = sent.is_ok()
        && stream
            .set_read_timeout(Some(Duration::from_secs(300)))
            .is_ok()
        && (&*stream).read_exact(&mut answer).is_ok()
        && &answer == b"adopted\n";
    if adopted {
        tracing::info!("handed every mount over; exiting without unmounting");
        // No destructor, no clean-up: the mounts, the socket path and the pid file are the
        // successor's now.
        std::process::exit(0);
    }
    drop(h);
    // The successor may have served our connections and taken the socket path already: once
    // it is gone (stopped after 30 s if need be), what it read is queued again, and the
    // socket and pid file are ours again.
    tracing::warn!("a takeover failed; this daemon goes on serving");
    if let Ok(cred) = rustix::net::sockopt::socket_peercred(stream) {
        wait_exit(cred.pid.as_raw_nonzero().get() as u32, daemon);
    }
    daemon.resume();
    // What the FUSE front left unanswered while paused.
    daemon.resend_pending();
    if let Err(e) = listen(daemon) {
        tracing::error!("after a failed takeover: {e}");
    }
    // The connection is past the point where an answer line can be read.
    Ok(())
}

/// Binds the control socket (replacing any), writes the pid file and serves requests on a
/// thread of their own.
fn listen(daemon: &Arc<Daemon>) -> Result<(), Error> {
    let state_dir = daemon.state_dir();
    let sock = control::socket_path(state_dir);
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(io_err(format!("bind {}", sock.display())))?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", sock.display())))?;
    let pid_path = state_dir.join("daemon.pid");
    fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(io_err(format!("write {}", pid_path.display())))?;
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(listener, d))
        .map_err(io_err("spawn the control thread"))?;
    Ok(())
}

/// Caches an earlier version kept in the state directory, now that they have a directory of
/// their own: computed fingerprints move there (hashing them again costs a read of every
/// such file), metadata images go (rebuilt in a fraction of a second). On a tmpfs they would
/// otherwise hold memory until the next reboot. Only this daemon uses them by now: it holds
/// the lock, and a predecessor it took over from has exited.
fn move_old_caches(state_dir: &Path, cache_dir: &Path) {
    if state_dir == cache_dir {
        return;
    }
    let old_fps = state_dir.join("fingerprints");
    let new_fps = cache_dir.join("fingerprints");
    // (A cache directory under it is not an old one.)
    if !cache_dir.starts_with(&old_fps)
        && let Ok(rd) = fs::read_dir(&old_fps)
    {
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&new_fps);
        for e in rd.flatten() {
            let to = new_fps.join(e.file_name());
            if !to.exists() && fs::rename(e.path(), &to).is_err() {
                // Another filesystem: copy (a partial copy is not JSON, and is hashed again).
                let _ = fs::copy(e.path(), &to);
            }
        }
    }
    for sub in ["fingerprints", "meta", "front"] {
        let dir = state_dir.join(sub);
        // Never the cache directory itself (`--cache-dir <state-dir>/meta`).
        if dir.exists() && !cache_dir.starts_with(&dir) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(
                    "moved the caches of {} to {}",
                    dir.display(),
                    cache_dir.display()
                ),
                Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
            }
        }
    }
}

/// Detaches what a killed daemon left: its dedup mounts under `state_dir`, and image mounts
/// whose FUSE connection is dead (ENOTCONN).
fn clean_stale_mounts(state_dir: &Path, cache_dir: &Path) {
    let dedup_root = state_dir.join("dedup");
    for m in our_mounts(DEDUP_FSNAME) {
        if m.starts_with(&dedup_root) {
            tracing::info!("detaching stale dedup mount {}", m.display());
            let _ = detach(&m);
            let _ = fs::remove_dir(&m);
        }
    }
    for (m, options) in our_mounts_with(IMAGE_FSNAME) {
        // An overlay front over one of our (now detached) dedup mounts is stale too: its
        // metadata still shows but every page-cache miss fails.
        let ours = options.split(',').any(|o| {
            o.strip_prefix("datadir+=")
                .is_some_and(|d| Path::new(d).starts_with(&dedup_root))
        }) || options.contains(&format!("::{}", dedup_root.display()));
        if ours || is_dead(&m) {
            tracing::info!("detaching stale image mount {}", m.display());
            let _ = detach(&m);
        }
    }
    // Metadata images of mounts that are gone.
    if let Ok(rd) = fs::read_dir(cache_dir.join("front")) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
}
