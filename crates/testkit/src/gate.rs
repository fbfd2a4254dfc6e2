//! The privilege gate: run, skip with a reason, or fail under `EROFS_SHARE_REQUIRE_PRIVILEGED=1`.
//!
//! The test harness swallows a passing test's output and counts a skipped test as passed, so
//! each skip is also appended, as `binary::test: reason`, to the file `EROFS_SHARE_SKIP_LOG`
//! names; `scripts/test.sh` sets it and lists the skips at the end
//! (`scripts/skip-summary.sh`).

use std::io::Write;
use std::path::Path;

/// What a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root (mount, loop devices, drop_caches).
    Root,
    /// Root and `/dev/fuse`.
    Fuse,
    /// Root and loop devices with the kernel erofs driver.
    KernelErofs,
    /// A program on `PATH`, from the named Debian package (which `scripts/test.sh` installs
    /// when run as root).
    Program {
        name: &'static str,
        package: &'static str,
    },
}

/// Debian's `fsck.erofs` (erofs-utils 1.5), a second opinion on our images.
pub const FSCK_EROFS: Need = Need::Program {
    name: "fsck.erofs",
    package: "erofs-utils",
};
/// Debian's `mkfs.erofs`, images from another writer.
pub const MKFS_EROFS: Need = Need::Program {
    name: "mkfs.erofs",
    package: "erofs-utils",
};

/// True when the environment demands that privileged tests run rather than skip.
pub fn required() -> bool {
    std::env::var("EROFS_SHARE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

fn missing(need: Need) -> Option<String> {
    let root = rustix::process::geteuid().is_root();
    let not_root = || Some("not running as root".to_string());
    match need {
        Need::Root => (!root).then(|| "not running as root".to_string()),
        Need::Fuse => {
            if !root {
                not_root()
            } else if !Path::new("/dev/fuse").exists() {
                Some("/dev/fuse is missing".into())
            } else {
                None
            }
        }
        Need::KernelErofs => {
            if !root {
                not_root()
            } else if !Path::new("/dev/loop-control").exists() {
                Some("/dev/loop-control is missing (no loop devices)".into())
            } else if !erofs_in_kernel() {
                Some("the kernel has no erofs filesystem (see /proc/filesystems)".into())
            } else {
                None
            }
        }
        Need::Program { name, package } => {
            (!on_path(name)).then(|| format!("{name} is not installed (Debian package {package})"))
        }
    }
}

fn on_path(name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(name)).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
    })
}

fn erofs_in_kernel() -> bool {
    if std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("erofs")) {
        return true;
    }
    // The module may simply not be loaded yet.
    let _ = std::process::Command::new("modprobe").arg("erofs").status();
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("erofs"))
}

/// Decide whether `test` may run with `needs`. Returns false (after reporting why, see
/// [`cannot_run`]) when it must skip; panics when it cannot run but
/// `EROFS_SHARE_REQUIRE_PRIVILEGED=1`.
pub fn require(test: &str, needs: &[Need]) -> bool {
    for &need in needs {
        if let Some(reason) = missing(need) {
            cannot_run(test, &reason);
            return false;
        }
    }
    true
}

/// `test` cannot run for `reason` (a condition [`Need`] does not cover): panic under
/// `EROFS_SHARE_REQUIRE_PRIVILEGED=1`, else print the skip and append it to
/// `EROFS_SHARE_SKIP_LOG`. The caller returns right after.
pub fn cannot_run(test: &str, reason: &str) {
    if required() {
        panic!("{test}: cannot run ({reason}) but EROFS_SHARE_REQUIRE_PRIVILEGED=1");
    }
    let line = format!("{}::{test}: {reason}", binary_name());
    eprintln!("SKIP {line}");
    if let Some(log) = std::env::var_os(SKIP_LOG)
        && let Err(e) = append_line(Path::new(&log), &line)
    {
        panic!(
            "{test}: cannot record its skip in {}: {e}",
            Path::new(&log).display()
        );
    }
}

/// The environment variable naming the file skips are appended to.
pub const SKIP_LOG: &str = "EROFS_SHARE_SKIP_LOG";

/// One `write` of the whole line with `O_APPEND`: lines from test binaries and threads
/// running at once do not interleave.
fn append_line(log: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// The running test binary's name without cargo's `-<hash>` suffix (`daemon_sharing`).
fn binary_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            base.to_string()
        }
        _ => name,
    }
}
