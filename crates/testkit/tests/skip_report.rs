//! A test that cannot run is reported by name and reason, not counted silently as passed:
//! the gate appends it to `EROFS_SHARE_SKIP_LOG` and `scripts/skip-summary.sh` (what
//! `scripts/test.sh` prints at the end) lists it; under `EROFS_SHARE_REQUIRE_PRIVILEGED=1` it
//! fails instead.

use std::path::Path;
use std::process::Command;

const TEST: &str = "a_skip_is_logged_listed_and_fails_when_required";
/// Set in the copy of this test binary that plays a test which cannot run.
const CHILD: &str = "EROFS_SHARE_SKIP_REPORT_CHILD";

fn child(log: &Path, required: bool) -> std::process::Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", TEST, "--test-threads", "1"])
        .env(CHILD, "1")
        .env(testkit::gate::SKIP_LOG, log)
        .env_remove("EROFS_SHARE_REQUIRE_PRIVILEGED");
    if required {
        c.env("EROFS_SHARE_REQUIRE_PRIVILEGED", "1");
    }
    c.output().unwrap()
}

fn summary(log: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/skip-summary.sh");
    let out = Command::new("bash").arg(script).arg(log).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_skip_is_logged_listed_and_fails_when_required() {
    if std::env::var_os(CHILD).is_some() {
        testkit::gate::cannot_run("probe", "the probe's reason");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("skips");
    assert_eq!(summary(&log), "skipped: none (every test ran)\n");

    for _ in 0..2 {
        let out = child(&log, false);
        assert!(out.status.success(), "{out:?}");
    }
    let line = "skip_report::probe: the probe's reason";
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{line}\n{line}\n")
    );
    assert_eq!(
        summary(&log),
        format!("skipped: 2 test(s) could not run on this machine:\n  {line}\n  {line}\n")
    );

    let out = child(&log, true);
    assert!(!out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "probe: cannot run (the probe's reason) but EROFS_SHARE_REQUIRE_PRIVILEGED=1"
        ),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
}
