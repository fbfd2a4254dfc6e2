//! `erofs-share demo`: measured as root (predictions within 5 %), explained and predicted
//! otherwise.

use std::process::Command;
use testkit::Need;

fn demo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_erofs-share"));
    c.args(["demo", "--source", "/usr/lib", "--budget", "8"]);
    c
}

/// (measured, predicted) MiB of a row of the demo's table.
fn row(out: &str, label: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("| {label} ")))
        .unwrap_or_else(|| panic!("no row {label:?} in:\n{out}"));
    let cells: Vec<f64> = line
        .split('|')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    (cells[0], cells[1])
}

#[test]
fn demo_measures_what_it_predicts() {
    if !testkit::require(
        "demo_measures_what_it_predicts",
        &[Need::KernelErofs, Need::Fuse],
    ) {
        return;
    }
    let out = demo().output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in [
        "kernel erofs, loop --direct-io=on, no sharing",
        "erofs-share --no-share",
        "erofs-share, one domain",
    ] {
        let (measured, predicted) = row(&text, label);
        assert!(
            (measured - predicted).abs() <= 0.05 * measured,
            "{label}: measured {measured}, predicted {predicted}\n{text}"
        );
    }
    // Sharing saves page cache.
    assert!(row(&text, "erofs-share, one domain").0 < row(&text, "erofs-share --no-share").0);
}

#[test]
fn demo_without_root_explains_and_predicts() {
    // As root, drop to nobody; otherwise we already are unprivileged.
    // SAFETY: geteuid has no preconditions.
    let out = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_erofs-share"))
            .args(["demo", "--source", "/usr/lib", "--budget", "8"])
            .env("TMPDIR", std::env::temp_dir());
        c.output().unwrap()
    } else {
        demo().output().unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Measuring needs root"), "{text}");
    assert!(text.contains("erofs-share, one domain"), "{text}");
}
