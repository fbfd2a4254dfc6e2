//! The privilege gate: run, skip with a reason, or fail under `EROFS_SHARE_REQUIRE_PRIVILEGED=1`.

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
    /// The shared upstream test vectors (`../shared/testdata`).
    Testdata,
}

/// True when the environment demands that privileged tests run rather than skip.
pub fn required() -> bool {
    std::env::var("EROFS_SHARE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

fn missing(need: Need) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
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
        Need::Testdata => crate::testdata::missing_reason(),
    }
}

fn erofs_in_kernel() -> bool {
    if std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("erofs")) {
        return true;
    }
    // The module may simply not be loaded yet.
    let _ = std::process::Command::new("modprobe").arg("erofs").status();
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("erofs"))
}

/// Decide whether `test` may run with `needs`. Returns false (after printing why) when it
/// must skip; panics when it cannot run but `EROFS_SHARE_REQUIRE_PRIVILEGED=1`.
pub fn require(test: &str, needs: &[Need]) -> bool {
    for &need in needs {
        if let Some(reason) = missing(need) {
            if required() {
                panic!("{test}: cannot run ({reason}) but EROFS_SHARE_REQUIRE_PRIVILEGED=1");
            }
            eprintln!("SKIP {test}: {reason}");
            return false;
        }
    }
    true
}
