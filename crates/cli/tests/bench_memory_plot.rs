//! `bench memory --plot`: a PNG chart of the measured rows beside analyze's predictions.

use std::process::Command;
use testkit::Need;

#[test]
fn bench_memory_draws_its_plot() {
    if !testkit::require(
        "bench_memory_draws_its_plot",
        &[Need::Testdata, Need::KernelErofs, Need::Fuse],
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let png = t.path().join("memory.png");
    let out = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .args(["bench", "memory", "--runs", "1", "--json", "--plot"])
        .arg(&png)
        .arg(testkit::testdata::image("plain-fp"))
        .arg(testkit::testdata::image("tar-full-fp"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, right after the chunk header.
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1000, 560));
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
}
