//! Mounting our FUSE filesystems (the FUSE front's image mounts and the domains' dedup
//! mounts): mount(2) with /dev/fuse ourselves, or the setuid `fusermount3` for a daemon without
//! CAP_SYS_ADMIN, and the fuser session that serves the mount.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use fuser::{Config, Filesystem, Session, SessionACL};

use crate::mounts::detach;

/// Mounts a read-only FUSE filesystem at `mountpoint` ourselves and starts its session.
///
/// Not `fuser::Session::new`: a fuser session unmounts its mountpoint path when it ends, and
/// a lazily detached mount's session ends whenever its last file closes, by which time a new
/// mount may sit at the same path. Here nobody but the daemon's `detach` ever unmounts.
pub(crate) fn session_on<FS: Filesystem>(
    fs: FS,
    mountpoint: &Path,
    fsname: &str,
    options: &str,
    acl: SessionACL,
    config: Config,
) -> io::Result<Session<FS>> {
    match mount_fuse(mountpoint, fsname, options) {
        Ok(dev) => Session::from_fd(fs, dev, acl, config).inspect_err(|_| {
            let _ = detach(mountpoint);
        }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            // Not privileged: the setuid fusermount3 mounts for us, accessible to this user
            // only (allow_other needs user_allow_other in /etc/fuse.conf).
            let dev = fusermount(mountpoint, fsname)?;
            Session::from_fd(fs, dev, SessionACL::Owner, config).inspect_err(|_| {
                let _ = detach(mountpoint);
            })
        }
        Err(e) => Err(e),
    }
}

/// A session's configuration: `threads` workers, each on a clone of the /dev/fuse descriptor
/// when `clone_fd` (less contention), or all on the one open file, which is what a successor
/// daemon can take over with the requests still on it (see [`crate::takeover`]).
pub(crate) fn session_config(threads: usize, clone_fd: bool) -> Config {
    let mut config = Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = clone_fd;
    config
}

/// Mounts through the setuid `fusermount3` (for a daemon without CAP_SYS_ADMIN): it mounts
/// and hands the /dev/fuse fd back over a socket named by `_FUSE_COMMFD`.
fn fusermount(mountpoint: &Path, fsname: &str) -> io::Result<std::os::fd::OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let opts = format!(
        "ro,nosuid,nodev,noatime,default_permissions,fsname={}",
        fsname.replace(',', "_")
    );
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o").arg(opts).arg("--").arg(mountpoint);
    let out = inherit_fd(&mut cmd, theirs.as_fd(), "_FUSE_COMMFD").output()?;
    drop(theirs);
    if !out.status.success() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "fusermount3: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    recv_fd(&ours).inspect_err(|_| {
        let _ = detach(mountpoint);
    })
}

/// Lets `cmd`'s child inherit `fd` (named to it by the environment variable `env`).
///
/// The fd keeps close-on-exec in this (multi-threaded) process, so children other threads
/// spawn meanwhile do not inherit it; only the forked child clears the flag, between fork and
/// exec. std has no stable way to pass an fd to a child, hence `pre_exec`.
fn inherit_fd<'a>(
    cmd: &'a mut std::process::Command,
    fd: std::os::fd::BorrowedFd<'_>,
    env: &str,
) -> &'a mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    cmd.env(env, raw.to_string());
    let clear = move || {
        // SAFETY: `raw` is open in the forked child (the parent holds it across the spawn,
        // which the borrow of `fd` guarantees for the caller's statement).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(io::Error::from)
    };
    // SAFETY: the closure only makes one fcntl system call (async-signal-safe: no allocation,
    // no locks), as required between fork and exec.
    unsafe { cmd.pre_exec(clear) }
}

/// Receives one fd sent with SCM_RIGHTS on `sock`: close-on-exec from the start
/// (MSG_CMSG_CLOEXEC), and an error when the control data was truncated or carries no fd.
fn recv_fd(sock: &UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Any fds that did fit are closed when `control` drops.
        return Err(io::Error::other(
            "fusermount3 sent more control data than one descriptor",
        ));
    }
    let mut fds = control.drain().filter_map(|m| match m {
        RecvAncillaryMessage::ScmRights(fds) => Some(fds),
        _ => None,
    });
    let fd = fds.next().and_then(|mut f| f.next());
    fd.ok_or_else(|| io::Error::other("fusermount3 sent no /dev/fuse descriptor"))
}

/// mount(2) of a read-only, nosuid, nodev FUSE filesystem; returns its /dev/fuse fd.
fn mount_fuse(mountpoint: &Path, fsname: &str, options: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let rootmode = fs::metadata(mountpoint)?.mode();
    let dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let mut data = format!(
        "fd={},rootmode={rootmode:o},user_id=0,group_id=0",
        dev.as_raw_fd()
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    use rustix::mount::MountFlags;
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME;
    let data =
        std::ffi::CString::new(data).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount(fsname, mountpoint, "fuse", flags, data.as_c_str())?;
    Ok(dev.into())
}

/// Readahead of our FUSE mounts, KiB. A miss costs a round trip and an O_DIRECT read of the
/// image, so fewer, larger requests (up to FUSE's 1 MiB) read images faster than the 128 KiB
/// default.
const READAHEAD_KB: u32 = 1024;

/// Raises the readahead of the FUSE mount at `mountpoint` (its bdi is named after its device
/// number). Best effort: a failure only costs cold-read speed. Call once the session serves
/// requests: the stat goes to it.
pub(crate) fn set_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = fs::metadata(mountpoint) else {
        return;
    };
    let (major, minor) = (rustix::fs::major(md.dev()), rustix::fs::minor(md.dev()));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = fs::write(&knob, READAHEAD_KB.to_string()) {
        tracing::debug!("{knob}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsFd;
    use std::os::fd::BorrowedFd;

    fn send_fds(sock: &UnixStream, fds: &[BorrowedFd<'_>]) {
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        rustix::net::sendmsg(
            sock,
            &[io::IoSlice::new(b"x")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        rustix::io::fcntl_getfd(fd)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    #[test]
    fn received_fd_is_close_on_exec_and_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        send_fds(&a, &[file.as_fd()]);
        let got = fs::File::from(recv_fd(&b).unwrap());
        assert!(cloexec(got.as_fd()), "received fd lacks close-on-exec");
        assert_eq!(got.metadata().unwrap().len(), 4096);
    }

    #[test]
    fn receive_without_fd_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        send_fds(&a, &[]);
        let e = recv_fd(&b).unwrap_err();
        assert!(e.to_string().contains("no /dev/fuse descriptor"), "{e}");
    }

    #[test]
    fn receive_of_truncated_control_data_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        // Eight fds: more than the receive buffer's rounding and alignment slack leave room for.
        let files: Vec<_> = (0..8).map(|_| tempfile::tempfile().unwrap()).collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        send_fds(&a, &fds);
        let e = recv_fd(&b).unwrap_err();
        assert!(e.to_string().contains("more control data"), "{e}");
    }

    #[test]
    fn child_inherits_fd_that_stays_close_on_exec_here() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        assert!(cloexec(theirs.as_fd()));
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo hi >&$FD"]);
        let status = inherit_fd(&mut cmd, theirs.as_fd(), "FD").status().unwrap();
        assert!(status.success());
        assert!(
            cloexec(theirs.as_fd()),
            "the parent's fd lost close-on-exec"
        );
        drop(theirs);
        let mut s = String::new();
        io::Read::read_to_string(&mut &ours, &mut s).unwrap();
        assert_eq!(s, "hi\n");
    }
}
