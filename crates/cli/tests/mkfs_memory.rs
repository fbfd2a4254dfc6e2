//! `mkfs -z` memory does not grow with file size: big files stream through compression a
//! few segments at a time. Its own test binary, so the children's peak RSS is mkfs's alone.

use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

const SIZE: u64 = 1 << 30;

/// Peak RSS in bytes of the largest child waited for so far.
fn children_max_rss() -> u64 {
    // SAFETY: getrusage only fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024
}

/// Some bytes that do not compress (plain pclusters) and some that do.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            if i % 8192 < 4096 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            } else {
                (i / 64) as u8
            }
        })
        .collect()
}

fn sha_of(r: &mut dyn FnMut(u64, &mut [u8]) -> usize, size: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = r(off, &mut buf);
        assert!(n > 0, "short read at {off}");
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finalize().into()
}

#[test]
fn mkfs_z_memory_is_bounded_by_segments_not_file_size() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 1 GiB, mostly a hole, with patterned stretches at the start, middle and end.
    let big = src.join("big");
    let mut f = std::fs::File::create(&big).unwrap();
    f.set_len(SIZE).unwrap();
    for (i, at) in [0, SIZE / 2 + 12345, SIZE - (3 << 20) - 77]
        .into_iter()
        .enumerate()
    {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&pattern(3 << 20, i as u64 + 7)).unwrap();
    }
    drop(f);
    let mut want = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&big).unwrap(), &mut want).unwrap();
    let want: [u8; 32] = want.finalize().into();

    let img = tmp.path().join("big.erofs");
    let before = children_max_rss();
    let o = Command::new(env!("CARGO_BIN_EXE_erofs-share"))
        .args(["mkfs", "-q", "-z", "lz4", "--fragments"])
        .arg(&img)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rss = children_max_rss();
    assert!(rss > before.max(1 << 20), "no child RSS recorded");
    // Segments in flight (4 MiB × threads, ≤ 8), their output, the map: far below 1 GiB.
    assert!(
        rss < 256 << 20,
        "mkfs of a 1 GiB file peaked at {} MiB RSS",
        rss >> 20
    );

    let image = erofs::Image::open(&img).unwrap();
    let inode = image.resolve("/big").unwrap();
    assert_eq!(inode.size, SIZE);
    let got = sha_of(
        &mut |off, buf| image.read_at(&inode, off, buf).unwrap(),
        SIZE,
    );
    assert_eq!(got, want, "content of /big read back from the image");
    let mut head = vec![0u8; 16];
    std::fs::File::open(&big)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_ne!(head, vec![0u8; 16], "the pattern was written");
}
