//! Handing a running daemon's mounts to its successor (`erofs-share daemon --takeover`).
//!
//! Every overlay-front mount depends on two things the daemon holds: its domain's dedup FUSE
//! connection (page-cache misses) and the inotify watch that tells when the mount has ended.
//! A successor connects to the control socket and sends [`Request::Takeover`]; the running
//! daemon stops taking mount requests and stops reading inotify events, then sends
//! [`State`] (mounts, domains, every dedup object with its inode number and sources, what
//! verification found) followed by the descriptors: each domain's /dev/fuse, each mount's image
//! file (which may have been deleted since), the inotify instance. The successor rebuilds its
//! registry from them, serves the same FUSE connections (the kernel sends `FUSE_INIT` once per
//! connection: see vendor/fuser/PATCHED.md), takes over the control socket and answers
//! `adopted`; the predecessor then exits without unmounting anything.
//!
//! Both processes read the same /dev/fuse open file (the dedup sessions never clone it), so
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
    /// Live mounts (all on the overlay front).
    pub mounts: Vec<MountState>,
    /// The inotify instance that tells mounts' ends, and its watches (descriptor, mount id).
    pub inotify_fd: usize,
    /// See `inotify_fd`.
    pub watches: Vec<(i32, u64)>,
    /// How many descriptors follow.
    pub fds: usize,
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
    /// The domain whose dedup mount serves its data.
    pub data_domain: String,
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
