//! The control socket: how `erofs-share mount|umount|status` talk to the daemon.
//!
//! # Protocol
//! A unix stream socket at `<state-dir>/control.sock`, mode 0600 inside a 0700 directory, and
//! the daemon also checks the peer's credentials (root or the daemon's own uid). One request
//! per connection: the client writes one JSON object and a newline, the daemon answers with
//! one JSON object and a newline, then closes.
//!
//! Requests (`op` selects the operation):
//! ```json
//! {"op":"mount","image":"/abs/a.erofs","mountpoint":"/abs/mnt","domain":"web","share":true}
//! {"op":"umount","mountpoint":"/abs/mnt"}
//! {"op":"status"}
//! {"op":"stop"}
//! ```
//! `domain` may be null (no sharing); `share` defaults to true; `trusted` (default false) asks
//! for a trusted rather than a verified domain. Paths must be absolute.
//!
//! Answers: `{"ok":true, …}` or `{"ok":false,"error":"what went wrong"}`. A `mount` answer
//! carries `"mount"`: a [`MountStatus`] (its `unshared_reason` says why the mount does not
//! share, e.g. no FUSE passthrough); `umount` carries `"detached": true|false` (false: files
//! are still open, the mount is detached lazily and its session ends with the last close);
//! `status` carries `"status"`: a [`Status`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// File name of the control socket inside the state directory.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest request or answer line accepted (status of thousands of mounts fits easily).
pub const MAX_LINE: u64 = 16 << 20;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Mount `image` at `mountpoint`, sharing in `domain` unless `share` is false.
    Mount {
        /// Absolute path of the image file.
        image: PathBuf,
        /// Absolute path of an existing directory.
        mountpoint: PathBuf,
        /// The sharing domain; none shares nothing.
        #[serde(default)]
        domain: Option<String>,
        /// False for `--no-share`.
        #[serde(default = "yes")]
        share: bool,
        /// `overlay`, `fuse`, or none for the best this kernel has.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        front: Option<String>,
        /// Ask for a trusted domain (fingerprints believed, as the kernel does) rather than a
        /// verified one; the domain's first mount decides.
        #[serde(default)]
        trusted: bool,
    },
    /// Unmount (lazily when busy).
    Umount {
        /// Absolute path of the mountpoint.
        mountpoint: PathBuf,
    },
    /// Report mounts, domains and what sharing saves.
    Status,
    /// Forget the daemon's own short-lived copies of image bytes (metadata blocks, hashed
    /// contents of verified objects), as `drop_caches` does the kernel's: the next read is
    /// as cold as after a restart. For measurements; the page cache is not touched.
    DropCaches,
    /// Unmount everything and exit.
    Stop,
    /// From a successor daemon (`daemon --takeover`): stop taking requests and hand over every
    /// mount (see [`crate::takeover`]); answered with the state and descriptors, not a line.
    Takeover,
}

fn yes() -> bool {
    true
}

/// The daemon's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    /// True on success.
    pub ok: bool,
    /// What went wrong, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The new mount (answer to `mount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<MountStatus>,
    /// Whether the unmount completed at once (answer to `umount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<bool>,
    /// The daemon's state (answer to `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    /// A failure answer.
    pub fn error(e: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(e.to_string()),
            ..Self::default()
        }
    }
}

/// One image mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountStatus {
    /// The daemon's id of the mount.
    pub id: u64,
    /// The image file.
    pub image: PathBuf,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Its sharing domain, if any.
    pub domain: Option<String>,
    /// True when shared files of this mount pass through to the domain's dedup mount.
    pub sharing: bool,
    /// Why this mount does not share, when it does not.
    pub unshared_reason: Option<String>,
    /// True once unmounted while files were still open (lazy detach).
    pub detached: bool,
    /// Opens served by passthrough to a dedup file.
    pub shared_opens: u64,
    /// Opens served by the mount's own page cache.
    pub unshared_opens: u64,
    /// Files not shared because their size differed from their dedup object's.
    pub size_mismatches: u64,
    /// Requests answered with EIO for corrupt image content: file reads, directory listings,
    /// entries whose inode cannot be decoded.
    pub read_errors: u64,
    /// Files of this mount whose content did not match their fingerprint (verified domains):
    /// never used as sources of their object again.
    #[serde(default)]
    pub verify_failures: u64,
    /// Fingerprints the daemon computed for files without one (0 when cached from an earlier
    /// mount of the same image).
    #[serde(default)]
    pub fingerprints_computed: u64,
    /// Bytes read from the image file (by this mount and by dedup misses it served).
    pub image_bytes_read: u64,
    /// True when the image file is read with O_DIRECT (else buffered + drop-behind).
    pub direct_io: bool,
    /// `overlay` or `fuse` (see DESIGN.md, "the overlay front").
    #[serde(default)]
    pub front: String,
    /// Why this front and not the other.
    #[serde(default)]
    pub front_reason: Option<String>,
    /// The overlay front's metadata-only image.
    #[serde(default)]
    pub meta_image: Option<PathBuf>,
}

/// One sharing domain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainStatus {
    /// The domain id.
    pub id: String,
    /// Where its internal dedup mount is.
    pub dedup_mountpoint: PathBuf,
    /// True for a trusted domain (fingerprints believed), false for a verified one.
    #[serde(default)]
    pub trusted: bool,
    /// Sources whose content did not match their fingerprint.
    #[serde(default)]
    pub verify_failures: u64,
    /// Image mounts in the domain.
    pub mounts: u64,
    /// Live dedup objects.
    pub objects: u64,
    /// Objects referenced by two or more mounted files (really shared).
    pub files_shared: u64,
    /// Total (mount, file) references over all objects.
    pub references: u64,
    /// Bytes of the dedup files now in the page cache (cachestat(2)).
    pub cached_bytes: u64,
    /// Page-cache misses the daemon served for the dedup files.
    pub misses: u64,
    /// Bytes those misses delivered.
    pub miss_bytes: u64,
    /// Page cache saved against one copy per mount: Σ cached × (references − 1).
    pub saved_bytes: u64,
    /// Requests the dedup mount served (lookups, getattrs, reads).
    #[serde(default)]
    pub requests: u64,
}

/// The daemon's state, answer to `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The daemon's pid.
    pub pid: u32,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// When this process started (seconds since the Unix epoch).
    #[serde(default)]
    pub started: u64,
    /// Takeovers the daemon's mounts have seen (`daemon --takeover`).
    #[serde(default)]
    pub takeovers: u64,
    /// Image mounts.
    pub mounts: Vec<MountStatus>,
    /// Live domains.
    pub domains: Vec<DomainStatus>,
}

/// Path of the control socket of the daemon using `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Sends one request to the daemon at `state_dir` and returns its answer.
pub fn request(state_dir: &Path, req: &Request) -> io::Result<Response> {
    let stream = UnixStream::connect(socket_path(state_dir))?;
    // A mount may wait for the kernel; status reads every dedup file's cache state.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    send_all(&stream, &line)?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_LINE)).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without answering",
        ));
    }
    serde_json::from_str(&answer).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad answer from the daemon: {e}"),
        )
    })
}

/// Writes all of `buf` to the socket `sock` without SIGPIPE (the CLI's printing commands take
/// SIGPIPE's default action): a peer gone mid-request is an error of the request, never the
/// end of the process. Control requests use it, and `bench runtime`'s load generator.
pub fn send_all(sock: impl std::os::fd::AsFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::net::send(&sock, buf, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Why a daemon just started did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The daemon process ended before answering.
    #[error("the daemon exited at start ({0})")]
    Exited(ExitStatus),
    /// It did not answer in time.
    #[error("the daemon did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// Its status could not be polled.
    #[error("waiting for the daemon: {0}")]
    Wait(io::Error),
}

/// Waits until `child`, a daemon started on `state_dir`, answers a status request.
pub fn wait_ready(
    state_dir: &Path,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), StartError> {
    let t = Instant::now();
    loop {
        if request(state_dir, &Request::Status).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait().map_err(StartError::Wait)? {
            return Err(StartError::Exited(st));
        }
        if t.elapsed() >= timeout {
            return Err(StartError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one request line from a client connection.
pub fn read_request(stream: &UnixStream) -> io::Result<Request> {
    let mut line = String::new();
    BufReader::new(stream.take(MAX_LINE)).read_line(&mut line)?;
    serde_json::from_str(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad request: {e}")))
}

/// Writes one answer line to a client connection.
pub fn write_response(mut stream: &UnixStream, resp: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// The uid of the process at the other end of `stream` (SO_PEERCRED).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_form() {
        let r: Request = serde_json::from_str(
            r#"{"op":"mount","image":"/a.erofs","mountpoint":"/m","domain":"web"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Mount {
                image: "/a.erofs".into(),
                mountpoint: "/m".into(),
                domain: Some("web".into()),
                share: true,
                front: None,
                trusted: false,
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Umount {
                mountpoint: "/m".into()
            })
            .unwrap(),
            r#"{"op":"umount","mountpoint":"/m"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format"}"#).is_err());
        let e = serde_json::to_string(&Response::error("no")).unwrap();
        assert_eq!(e, r#"{"ok":false,"error":"no"}"#);
    }
}
