//! Handing a running daemon's mounts to its successor (`erofs-share daemon --takeover`).
//!
//! Every overlay-front mount depends on two things the daemon holds: its domain's dedup FUSE
//! connection (page-cache misses) and the inotify watch that tells when the mount has ended; a
//! FUSE-front mount on its own FUSE connection, whose open shared files use passthrough backing
//! ids the successor must go on using. A successor connects to the control socket and sends [`Request::Takeover`]; the running
//! daemon stops taking mount requests and stops reading inotify events, then sends
//! [`State`] (mounts, domains, every dedup object with its inode number and sources, what
//! verification found, FUSE-front file handle counters and backing ids) followed by the
//! descriptors: each domain's and each FUSE-front mount's /dev/fuse, each mount's image file
//! (which may have been deleted since), the inotify instance. The successor rebuilds its
//! registry from them, serves the same FUSE connections (the kernel sends `FUSE_INIT` once per
//! connection: see vendor/fuser/PATCHED.md), takes over the control socket and answers
//! `adopted`; the predecessor then exits without unmounting anything.
//!
//! Both processes read the same /dev/fuse open file (sessions never clone it), so
//! until the predecessor exits either may answer a request, and a request it had read but not
//! answered stays on that file's processing list: the successor asks the kernel to queue those
//! again ([`resend_pending`], `FUSE_NOTIFY_RESEND`, Linux 6.9) once the predecessor is gone.
//!
//! [`Request::Takeover`]: crate::control::Request::Takeover

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dedup::TableState;

/// Largest state accepted from a predecessor.
const MAX_STATE: u64 = 1 << 30;

/// What a successor needs to serve a predecessor's mounts. Descriptors are indexes into the
/// list sent after it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The predecessor's pid: the successor waits for it to exit.
    pub pid: u32,
    /// Takeovers the line of daemons has seen before this one.
    pub takeovers: u64,
    /// The next mount (and dedup directory) id.
    pub next_id: u64,
    /// Live domains.
    pub domains: Vec<DomainState>,
    /// Live mounts.
    pub mounts: Vec<MountState>,
    /// The inotify instance that tells mounts' ends, and its watches (descriptor, mount id).
    pub inotify_fd: usize,
    /// See `inotify_fd`.
    pub watches: Vec<(i32, u64)>,
    /// How many descriptors follow.
    pub fds: usize,
    /// In the state file (crash recovery): the name each descriptor is stored under in
    /// systemd's file descriptor store, by index.
    #[serde(default)]
    pub fd_names: Vec<String>,
}

/// One live domain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DomainState {
    /// Its id ("" for the internal domain of mounts that share nothing).
    pub id: String,
    /// Trusted or verified.
    pub trusted: bool,
    /// Where its dedup mount is (new mounts of the domain name it as their data layer).
    pub dedup_mountpoint: PathBuf,
    /// Its dedup mount's /dev/fuse.
    pub fuse_fd: usize,
    /// Requests its dedup mount has served.
    pub requests: u64,
    /// Its objects.
    pub table: TableState,
}

/// One live mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MountState {
    /// The daemon's id of it.
    pub id: u64,
    /// The image as given at mount time.
    pub image: PathBuf,
    /// The image file, open.
    pub image_fd: usize,
    /// Where it is (or was, when detached) mounted.
    pub mountpoint: PathBuf,
    /// The sharing domain, when the mount shares.
    pub domain: Option<String>,
    /// The domain whose dedup mount serves its data (overlay front: always; FUSE front: the
    /// sharing domain, if any).
    pub data_domain: Option<String>,
    /// `overlay` or `fuse`.
    pub front: String,
    /// Why this front.
    pub front_reason: Option<String>,
    /// FUSE front: its /dev/fuse.
    pub fuse_fd: Option<usize>,
    /// FUSE front: its filesystem's state.
    pub fuse: Option<crate::front::fuse::ImageFsState>,
    /// Why it does not share, if it does not.
    pub unshared_reason: Option<String>,
    /// Unmounted (lazily), still in use.
    pub detached: bool,
    /// Its metadata image in the cache.
    pub meta_image: Option<PathBuf>,
    /// Files not shared for a size mismatch.
    pub size_mismatches: u64,
    /// Sources that failed verification.
    pub verify_failures: u64,
    /// Fingerprints computed at mount.
    pub fingerprints_computed: u64,
}

/// Sends `state` and then `fds` (one per message, so that none is ever cut off) on `stream`.
pub fn send(stream: &UnixStream, state: &State, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let body = serde_json::to_vec(state).map_err(io::Error::other)?;
    let mut w = stream;
    w.write_all(&(body.len() as u64).to_le_bytes())?;
    w.write_all(&body)?;
    for fd in fds {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let one = [fd.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&one)) {
            return Err(io::Error::other("no room for a descriptor"));
        }
        sendmsg(
            stream,
            &[io::IoSlice::new(b"F")],
            &mut control,
            SendFlags::empty(),
        )?;
    }
    Ok(())
}

/// Receives what [`send`] sent: the state and its descriptors (close-on-exec).
pub fn receive(stream: &UnixStream) -> io::Result<(State, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, recvmsg};
    let mut r = stream;
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_STATE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the daemon's state is {len} bytes (at most {MAX_STATE})"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    let state: State = serde_json::from_slice(&body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the daemon's state: {e}"),
        )
    })?;
    let mut fds = Vec::with_capacity(state.fds);
    for i in 0..state.fds {
        let mut byte = [0u8; 1];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = recvmsg(
            stream,
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if msg.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the daemon sent {i} of {} descriptors", state.fds),
            ));
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(io::Error::other(format!(
                "descriptor {i}: control data cut off"
            )));
        }
        let fd = control
            .drain()
            .find_map(|m| match m {
                RecvAncillaryMessage::ScmRights(mut f) => f.next(),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("message {i} carried no descriptor")))?;
        fds.push(fd);
    }
    Ok((state, fds))
}

/// `FUSE_NOTIFY_RESEND`: the kernel queues again every request of this connection that was
/// read but not answered (by a predecessor that has exited, or was killed).
pub fn resend_pending(fuse: BorrowedFd<'_>) -> io::Result<()> {
    /// `enum fuse_notify_code`: FUSE_NOTIFY_RESEND.
    const FUSE_NOTIFY_RESEND: i32 = 7;
    // struct fuse_out_header: len, error (the notify code), unique (0 for notifications).
    let mut msg = [0u8; 16];
    msg[..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    let n = rustix::io::write(fuse, &msg)?;
    if n != msg.len() {
        return Err(io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}

/// The state file in the state directory: what a daemon restarted after a crash adopts, with
/// the descriptors systemd kept for it (see [`FdStore`]).
pub const STATE_FILE: &str = "daemon.state";

/// Writes `state` to the state file atomically (a new file renamed over the old). Not synced
/// to disk: it serves a daemon that crashed, never a machine that rebooted (its mounts are
/// gone then), and it is rewritten every second while verification finds sources.
pub fn write_state(state_dir: &std::path::Path, state: &State) -> io::Result<()> {
    let path = state_dir.join(STATE_FILE);
    let tmp = state_dir.join(format!("{STATE_FILE}.new"));
    let body = serde_json::to_vec(state).map_err(io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &path)
}

/// The state file, if there is one.
pub fn read_state(state_dir: &std::path::Path) -> io::Result<Option<State>> {
    match std::fs::read(state_dir.join(STATE_FILE)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{STATE_FILE}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// systemd's file descriptor store (`FDSTORE=1`, `sd_notify(3)`): the daemon keeps its
/// /dev/fuse, image and inotify descriptors there under stable names, so that if it is killed,
/// systemd still holds every FUSE connection open (the mounts keep their state; reads wait)
/// and hands the descriptors to the restarted daemon (`LISTEN_FDS`, [`listened`]).
#[derive(Debug)]
pub struct FdStore {
    sock: std::os::unix::net::UnixDatagram,
    stored: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl FdStore {
    /// The store of the service manager named by `NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Option<Self> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        };
        let sock = UnixDatagram::unbound()
            .and_then(|s| addr.and_then(|a| s.connect_addr(&a)).map(|()| s))
            .inspect_err(|e| tracing::warn!("NOTIFY_SOCKET {}: {e}", path.display()))
            .ok()?;
        Some(Self {
            sock,
            stored: Default::default(),
        })
    }

    /// One notification, with `fds` attached.
    fn notify(&self, text: &str, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("no room for a descriptor"));
        }
        sendmsg(
            &self.sock,
            &[io::IoSlice::new(text.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )?;
        Ok(())
    }

    /// Tells the service manager the daemon is ready (`READY=1`).
    pub fn ready(&self) {
        if let Err(e) = self.notify("READY=1", &[]) {
            tracing::warn!("sd_notify READY=1: {e}");
        }
    }

    /// Makes the store hold exactly `named`: stores the names it does not have, removes the
    /// names no longer there.
    pub fn sync(&self, named: &[(String, OwnedFd)]) {
        let mut stored = self.stored.lock().unwrap();
        for (name, fd) in named {
            if stored.contains(name) {
                continue;
            }
            match self.notify(&format!("FDSTORE=1\nFDNAME={name}"), &[fd.as_fd()]) {
                Ok(()) => {
                    stored.insert(name.clone());
                }
                Err(e) => tracing::warn!("FDSTORE {name}: {e}"),
            }
        }
        let gone: Vec<String> = (stored.iter())
            .filter(|s| !named.iter().any(|(n, _)| n == *s))
            .cloned()
            .collect();
        for name in gone {
            match self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]) {
                Ok(()) => {
                    stored.remove(&name);
                }
                Err(e) => tracing::warn!("FDSTOREREMOVE {name}: {e}"),
            }
        }
    }

    /// Records descriptors the store already holds (handed to this process at start).
    pub fn already_stored(&self, names: impl IntoIterator<Item = String>) {
        self.stored.lock().unwrap().extend(names);
    }
}

/// The descriptors the service manager passed at start (`LISTEN_FDS`, `LISTEN_FDNAMES`, fds
/// from 3 on; `LISTEN_PID`, when set, must be this process), by name. The descriptors become
/// close-on-exec, so children never get them.
pub fn listened() -> Vec<(String, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let Some(n) = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Vec::new();
    };
    if let Ok(pid) = std::env::var("LISTEN_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return Vec::new();
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':').map(str::to_string);
    (0..n.clamp(0, 1 << 16))
        .map(|i| {
            let raw = 3 + i;
            // SAFETY: the service manager passed descriptors 3 .. 3 + LISTEN_FDS to this
            // process for it to own; nothing else here refers to them, and each is taken once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // Close-on-exec from now on, as every other descriptor of the daemon.
            let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
            (names.next().unwrap_or_else(|| format!("fd{i}")), fd)
        })
        .collect()
}
