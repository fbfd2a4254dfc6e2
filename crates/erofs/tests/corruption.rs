//! Hostile input: thousands of seeded random corruptions of the upstream vectors (byte and
//! bit flips, overwritten ranges, planted extreme values, truncations), each driven through
//! every reader path: open, the tree walk, lookups, all data, symlinks, xattrs,
//! fingerprints, extents and fsck. No case may panic or exceed its time bound.
//!
//! Mutations aim mostly at metadata (superblock, inodes with their xattrs and inline data,
//! chunk indexes, compressed maps and pclusters, directory blocks, the prefix table), found
//! by a clean walk first; half of
//! the cases re-seal the superblock checksum so they get past it, as an attacker would.

use erofs::data::{self, Phys};
use erofs::fsck::{FsckOptions, fsck};
use erofs::walk::{Visit, walk};
use erofs::zmap::Place;
use erofs::{FileType, Image};
use rayon::prelude::*;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{Rng, testdata};

/// Cases per image. Release builds (as CI runs) do them all; debug builds a few.
/// `EROFS_SHARE_CORRUPTION_CASES` overrides it (for longer fuzzing runs).
fn cases_per_image() -> usize {
    std::env::var("EROFS_SHARE_CORRUPTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 5 } else { 150 })
}
/// Long runs report each image's tally this often.
const PROGRESS_EVERY: usize = 10_000;
/// Longest a single case may take.
const CASE_LIMIT: Duration = Duration::from_secs(5);
/// Data read per case by the driver (beyond it, files are skipped).
const READ_BUDGET: u64 = 8 << 20;

/// Byte ranges holding metadata, found by walking the clean image.
fn metadata_regions(img: &Image) -> Vec<(u64, u64)> {
    let sb = img.superblock();
    let bs = sb.block_size();
    let mut out = vec![(0u64, 8192u64.min(img.len())), (1024, 256)];
    if sb.xattr_prefix_count > 0 {
        out.push((sb.xattr_prefix_start as u64 * 4, 512));
    }
    if sb.xattr_blkaddr != 0 {
        out.push((sb.xattr_blkaddr as u64 * bs, 4 * bs));
    }
    walk(img, |v| {
        if let Visit::Inode { inode, .. } = v
            && let Some(pos) = inode.image_offset()
        {
            let mut len = inode.inode_size() + inode.xattr_size();
            if inode.layout == erofs::format::layout::FLAT_INLINE {
                len += inode.size % bs;
            }
            if inode.layout == erofs::format::layout::CHUNK_BASED {
                len += 64;
            }
            if inode.is_compressed() {
                // The map header, the lcluster indexes (or extent records) and an inline
                // tail pcluster; then the first pclusters themselves.
                len += 8 + 16 + inode.size.div_ceil(bs).min(64) * 8;
                if let Ok((ext, _)) = erofs::zmap::extents(img, inode, 4) {
                    for e in ext {
                        match e.place {
                            Place::Image { pa, plen } => out.push((pa, plen.min(2 * bs))),
                            Place::Inline { pos, plen } => out.push((pos, plen)),
                            _ => {}
                        }
                    }
                }
            }
            out.push((pos, len.min(2 * bs)));
            if inode.is_dir()
                && let Ok((ext, _)) = data::extents(img, inode, 64)
            {
                for e in ext {
                    if let Phys::Image(p) = e.phys {
                        out.push((p, e.len.min(4 * bs)));
                    }
                }
            }
        }
        ControlFlow::Continue(())
    });
    out.retain(|&(s, l)| l > 0 && s < img.len());
    out
}

/// Values that tend to break size, count and offset fields.
const NASTY: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    4096,
];

enum Mutation {
    /// (offset, original bytes): the range changed.
    InPlace(u64, Vec<u8>),
    Truncate(u64),
}

fn mutate(rng: &mut Rng, buf: &mut [u8], regions: &[(u64, u64)]) -> (Mutation, String) {
    let len = buf.len() as u64;
    let pick = |rng: &mut Rng| -> u64 {
        if rng.below(10) < 8 {
            let (s, l) = regions[rng.below(regions.len() as u64) as usize];
            (s + rng.below(l)).min(len - 1)
        } else {
            rng.below(len)
        }
    };
    match rng.below(10) {
        0 => {
            // Truncate: mostly inside metadata, sometimes just short of the end.
            let at = if rng.below(2) == 0 {
                pick(rng)
            } else {
                len - 1 - rng.below(len.min(8192))
            };
            (Mutation::Truncate(at), format!("truncate to {at}"))
        }
        1..=4 => {
            let at = pick(rng);
            let n = (1 + rng.below(4)).min(len - at);
            let old = buf[at as usize..(at + n) as usize].to_vec();
            for b in &mut buf[at as usize..(at + n) as usize] {
                *b ^= 1 << rng.below(8);
            }
            (
                Mutation::InPlace(at, old),
                format!("flip bits in {n} bytes at {at}"),
            )
        }
        5..=6 => {
            let at = pick(rng);
            let n = (1 + rng.below(64)).min(len - at);
            let old = buf[at as usize..(at + n) as usize].to_vec();
            let fill = rng.below(3);
            for b in &mut buf[at as usize..(at + n) as usize] {
                *b = match fill {
                    0 => 0,
                    1 => 0xff,
                    _ => rng.next_u64() as u8,
                };
            }
            (
                Mutation::InPlace(at, old),
                format!("overwrite {n} bytes at {at} (fill {fill})"),
            )
        }
        _ => {
            let width = [2u64, 4, 8][rng.below(3) as usize];
            let at = (pick(rng) & !(width - 1)).min(len - width);
            let old = buf[at as usize..(at + width) as usize].to_vec();
            let v = NASTY[rng.below(NASTY.len() as u64) as usize];
            buf[at as usize..(at + width) as usize]
                .copy_from_slice(&v.to_le_bytes()[..width as usize]);
            (
                Mutation::InPlace(at, old),
                format!("write {v:#x} as {width} bytes at {at}"),
            )
        }
    }
}

fn reseal(buf: &mut [u8]) {
    if buf.len() < 1024 + 128 {
        return;
    }
    let bits = buf[1024 + 12].clamp(9, 16);
    let n = erofs::superblock::checksum_len(bits);
    if buf.len() < 1024 + n {
        return;
    }
    buf[1028..1032].fill(0);
    let c = erofs::superblock::checksum_of(&buf[1024..1024 + n]);
    buf[1028..1032].copy_from_slice(&c.to_le_bytes());
}

/// Every reader path over one (possibly corrupt) image. Errors are fine; panics are not.
fn drive(img: &Image) -> (usize, bool) {
    let mut touched = 0usize;
    let mut compressed = false;
    let mut budget = READ_BUDGET;
    let mut buf = vec![0u8; 64 * 1024];
    let _ = img.root();
    for p in ["/", "big/mixed.bin", "/dir1500", "/a/b/c", "/.."] {
        let _ = img.resolve(p);
    }
    walk(img, |v| {
        let Visit::Inode {
            inode,
            entry,
            parent,
            ..
        } = v
        else {
            return ControlFlow::Continue(());
        };
        touched += 1;
        let _ = img.xattrs(inode);
        let _ = img.listed_xattrs(inode);
        let _ = img.fingerprint(inode);
        let _ = img.get_xattr(inode, b"user.a");
        let _ = img.get_xattr(inode, b"trusted.erofs.fingerprint");
        let _ = img.get_xattr(inode, b"system.posix_acl_access");
        if let (Some(e), Ok(dir)) = (entry, img.inode(parent)) {
            let _ = img.lookup(&dir, &e.name);
        }
        match inode.file_type() {
            FileType::Reg | FileType::Dir => {
                if inode.is_compressed() {
                    compressed = true;
                    let _ = erofs::zmap::extents(img, inode, 1024);
                } else {
                    let _ = data::extents(img, inode, 1024);
                }
                let mut off = 0u64;
                while off < inode.size && budget > 0 {
                    match img.read_at(inode, off, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            off += n as u64;
                            budget = budget.saturating_sub(n as u64);
                        }
                    }
                }
                // Random access past the middle and at the end.
                let _ = img.read_at(inode, inode.size / 2, &mut buf[..100]);
                let _ = img.read_at(inode, inode.size.saturating_sub(1), &mut buf[..10]);
            }
            FileType::Symlink => {
                let _ = img.read_link(inode);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    let r = fsck(
        img,
        &FsckOptions {
            verify_fingerprints: true,
            max_problems: 100,
            data_budget: Some(2 << 20),
        },
    );
    assert!(r.problems.len() <= 100);
    // Without fingerprints fsck needs no budget: it reads each stored block at most once,
    // and a compressed block decodes to at most 12 MiB (the kernel's largest extent), so
    // 3072 times its size in 4 KiB blocks.
    let bound = if compressed {
        img.len() * 3072
    } else {
        img.len()
    };
    let s = fsck(
        img,
        &FsckOptions {
            max_problems: 100,
            ..FsckOptions::default()
        },
    );
    assert!(
        s.bytes_read <= bound,
        "read {} of {} (bound {bound})",
        s.bytes_read,
        img.len()
    );
    (touched, !r.is_clean() || !s.is_clean())
}

/// What the cases of one image gave.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    cases: usize,
    opened: usize,
    detected: usize,
    slowest: Duration,
}

impl Tally {
    fn add(self, o: Tally) -> Tally {
        Tally {
            cases: self.cases + o.cases,
            opened: self.opened + o.opened,
            detected: self.detected + o.detected,
            slowest: self.slowest.max(o.slowest),
        }
    }
}

/// `per_image` cases on image `name`, each starting from the pristine image.
fn corrupt_image(name: &str, per_image: usize, rng: &mut Rng) -> Tally {
    let name = name.to_string();
    let mut t = Tally::default();
    // Every case starts from this image: a mutation and the re-seal are undone from it,
    // never from bytes saved after mutating.
    let pristine = std::fs::read(testdata::image(&name)).unwrap();
    let mut buf = pristine.clone();
    let regions = {
        let clean = Image::from_source(Arc::new(pristine.clone()), name.clone()).unwrap();
        metadata_regions(&clean)
    };
    for case in 0..per_image {
        assert!(
            buf == pristine,
            "{name} case {case}: the image is not the pristine one"
        );
        let (m, what) = mutate(rng, &mut buf, &regions);
        let seal = rng.below(2) == 0;
        let src: Vec<u8> = match &m {
            Mutation::Truncate(at) => buf[..*at as usize].to_vec(),
            Mutation::InPlace(..) => std::mem::take(&mut buf),
        };
        let mut src = src;
        if seal {
            reseal(&mut src);
        }
        let src = Arc::new(src);
        let start = Instant::now();
        let label = format!("{name} case {case}: {what}, resealed {seal}");
        let result = catch_unwind(AssertUnwindSafe(|| {
            match Image::from_source(src.clone(), label.clone()) {
                Ok(img) => Some(drive(&img)),
                Err(e) => {
                    // Errors name the image.
                    assert!(e.to_string().contains(&label), "{e}");
                    None
                }
            }
        }));
        let took = start.elapsed();
        let outcome = result.unwrap_or_else(|_| panic!("PANIC in {label}"));
        assert!(took < CASE_LIMIT, "{label}: took {took:?}");
        t.slowest = t.slowest.max(took);
        t.opened += outcome.is_some() as usize;
        t.detected += outcome.is_some_and(|(_, problems)| problems) as usize;
        t.cases += 1;
        if t.cases.is_multiple_of(PROGRESS_EVERY) {
            eprintln!(
                "{name}: {} cases ({} opened, fsck found problems in {}), slowest {:?}",
                t.cases, t.opened, t.detected, t.slowest
            );
        }
        // Undo the mutation and the re-seal (the checksum lives in the superblock's
        // block) from the pristine image.
        if let Mutation::InPlace(at, old) = m {
            buf = Arc::try_unwrap(src).expect("image dropped");
            let (at, end) = (at as usize, at as usize + old.len());
            buf[at..end].copy_from_slice(&pristine[at..end]);
            // (up to 64 KiB from byte 1024, as `reseal` computes it).
            let sb = pristine.len().min(1024 + 65536);
            buf[..sb].copy_from_slice(&pristine[..sb]);
        }
    }
    t
}

#[test]
fn thousands_of_corruptions_never_panic_or_hang() {
    let started = Instant::now();
    let per_image = cases_per_image();
    // `EROFS_SHARE_CORRUPTION_SEED` picks other cases (for longer fuzzing runs).
    let seed = std::env::var("EROFS_SHARE_CORRUPTION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_E20F);
    // Images in parallel, each with its own stream of cases from the seed.
    let names = testdata::image_names();
    let Tally {
        cases,
        opened,
        detected,
        slowest,
    } = names
        .par_iter()
        .enumerate()
        .map(|(i, name)| {
            let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            corrupt_image(name, per_image, &mut rng)
        })
        .reduce(Tally::default, Tally::add);
    eprintln!(
        "{cases} corruption cases ({opened} opened, fsck found problems in {detected}) in {:?}, slowest {slowest:?}",
        started.elapsed()
    );
    assert!(cases >= 19 * per_image, "{cases} cases");
    // From a pristine image nearly every case opens (truncations inside the superblock do
    // not); far fewer means the cases no longer start from it.
    assert!(
        opened * 4 > cases * 3,
        "too few cases got past open: {opened}/{cases}"
    );
}
