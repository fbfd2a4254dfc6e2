//! Layouts the upstream vectors do not contain, in small hand-made images: long xattr
//! prefixes inside the packed inode (no PLAIN_XATTR_PFX) and in the metadata area, inodes
//! inside the metabox, directories without ".", and compact inodes with NLINK_1.

use erofs::format::{EROFS_MAGIC, compat, file_type, incompat, layout};
use erofs::walk::{Visit, walk};
use erofs::{FileType, Image};
use std::ops::ControlFlow;
use std::sync::Arc;

const BS: usize = 4096;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A compact inode at `at`.
#[allow(clippy::too_many_arguments)]
fn inode(b: &mut [u8], at: usize, format: u16, icount: u16, mode: u16, nb: u16, size: u32, u: u32) {
    put16(b, at, format);
    put16(b, at + 2, icount);
    put16(b, at + 4, mode);
    put16(b, at + 6, nb);
    put32(b, at + 8, size);
    put32(b, at + 12, 7); // mtime after the epoch
    put32(b, at + 16, u);
    put32(b, at + 20, (at / 32) as u32);
}

/// A directory block of sorted (name, nid, type) entries.
fn dir_block(entries: &[(&str, u64, u8)]) -> Vec<u8> {
    let mut v = vec![0u8; entries.len() * 12];
    let mut names = Vec::new();
    for (i, (n, nid, t)) in entries.iter().enumerate() {
        put64(&mut v, i * 12, *nid);
        put16(
            &mut v,
            i * 12 + 8,
            (entries.len() * 12 + names.len()) as u16,
        );
        v[i * 12 + 10] = *t;
        names.extend_from_slice(n.as_bytes());
    }
    v.extend(names);
    v
}

const INLINE: u16 = (layout::FLAT_INLINE as u16) << 1;
const PLAIN: u16 = (layout::FLAT_PLAIN as u16) << 1;
const METABOX_NID: u64 = 1 << 63;

/// Where the long prefix table is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prefixes {
    /// In the metadata area (PLAIN_XATTR_PFX).
    Plain,
    /// In the packed inode's data (no metabox).
    Packed,
    /// In the metabox inode's data.
    Metabox,
}

/// Root (nid 64, no "." entry) holding "f" (nid 80, a long-prefix xattr, inline data,
/// NLINK_1) and, with a metabox, "m" (inside it). Nid 96 is the packed inode, 112 the
/// metabox.
fn image(prefixes: Prefixes) -> Vec<u8> {
    let metabox = prefixes != Prefixes::Packed;
    let mut b = vec![0u8; 2 * BS];
    // Superblock.
    let sb = 1024;
    put32(&mut b, sb, EROFS_MAGIC);
    let mut compat_bits = compat::MTIME;
    b[sb + 12] = 12;
    b[sb + 13] = metabox as u8; // one extension slot: the metabox nid
    put16(&mut b, sb + 14, 64);
    put64(&mut b, sb + 16, 5);
    put64(&mut b, sb + 24, 1_700_000_000);
    put32(&mut b, sb + 32, 42);
    put32(&mut b, sb + 36, 2);
    let metabox_bit = if metabox { incompat::METABOX } else { 0 };
    put32(&mut b, sb + 80, incompat::XATTR_PREFIXES | metabox_bit);
    b[sb + 91] = 1; // one long prefix
    put64(&mut b, sb + 96, 96);
    put64(&mut b, sb + 128, 112);
    // The long prefix "user." + "long.".
    let record = [&6u16.to_le_bytes()[..], &[1u8], b"long."].concat();
    match prefixes {
        Prefixes::Plain => {
            compat_bits |= compat::PLAIN_XATTR_PFX;
            put32(&mut b, sb + 92, 1280 / 4);
            b[1280..1280 + record.len()].copy_from_slice(&record);
        }
        // At offset 0 of the packed inode's data.
        Prefixes::Packed => {}
        // At offset 1024 of the metabox's data.
        Prefixes::Metabox => {
            put32(&mut b, sb + 92, 1024 / 4);
            b[BS + 1024..BS + 1024 + record.len()].copy_from_slice(&record);
        }
    }
    put32(&mut b, sb + 8, compat_bits);

    // Root directory, "." omitted (i_format bit 4).
    let mut entries = vec![("..", 64, file_type::DIR), ("f", 80, file_type::REG)];
    if metabox {
        entries.push(("m", METABOX_NID, file_type::REG));
    }
    let root = dir_block(&entries);
    inode(
        &mut b,
        2048,
        INLINE | 1 << 4,
        0,
        0o040755,
        2,
        root.len() as u32,
        u32::MAX,
    );
    b[2048 + 32..2048 + 32 + root.len()].copy_from_slice(&root);

    // "f": NLINK_1 compact inode with i_nb = start block high bits (no blocks here), one
    // inline xattr using long prefix 0, then its data.
    inode(&mut b, 2560, INLINE | 1 << 4, 3, 0o100640, 0, 5, u32::MAX);
    let x = 2560 + 32;
    put32(&mut b, x, !0); // name filter: not in use (no XATTR_FILTER)
    b[x + 12] = 1; // e_name_len
    b[x + 13] = 0x80; // long prefix 0
    put16(&mut b, x + 14, 1);
    b[x + 16] = b'x';
    b[x + 17] = b'v';
    b[x + 20..x + 25].copy_from_slice(b"hello");

    // The packed inode: its data is the prefix table.
    inode(
        &mut b,
        3072,
        INLINE,
        0,
        0o100600,
        1,
        record.len() as u32,
        u32::MAX,
    );
    b[3072 + 32..3072 + 32 + record.len()].copy_from_slice(&record);

    // The metabox inode: block 1 is its data, holding "m" at local nid 0.
    inode(&mut b, 3584, PLAIN, 0, 0o100600, 1, BS as u32, 1);
    inode(&mut b, BS, INLINE, 0, 0o100444, 1, 5, u32::MAX);
    b[BS + 32..BS + 37].copy_from_slice(b"boxed");
    b
}

fn read_all(img: &Image, path: &str) -> Vec<u8> {
    let i = img.resolve(path).unwrap();
    let mut v = vec![0u8; i.size as usize + 3];
    let n = img.read_at(&i, 0, &mut v).unwrap();
    v.truncate(n);
    v
}

#[test]
fn packed_and_plain_long_prefixes_metabox_inodes_and_omitted_dots() {
    for placement in [Prefixes::Plain, Prefixes::Packed, Prefixes::Metabox] {
        let metabox = placement != Prefixes::Packed;
        let img = Image::from_source(Arc::new(image(placement)), "synthetic").unwrap();
        let p = &img.long_prefixes().unwrap()[0];
        assert_eq!((p.base_index, &p.infix[..]), (1, &b"long."[..]));

        let f = img.resolve("/f").unwrap();
        assert_eq!((f.nlink, f.mode, f.size), (1, 0o100640, 5));
        assert_eq!((f.mtime, f.mtime_nsec), (1_700_000_007, 42));
        assert_eq!(read_all(&img, "/f"), b"hello");
        let xs = img.listed_xattrs(&f).unwrap();
        assert_eq!(xs.len(), 1);
        assert_eq!(
            (&xs[0].name[..], &xs[0].value[..]),
            (&b"user.long.x"[..], &b"v"[..])
        );
        assert_eq!(
            img.get_xattr(&f, b"user.long.x").unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(img.get_xattr(&f, b"user.long.y").unwrap(), None);

        if metabox {
            let m = img.resolve("/m").unwrap();
            assert_eq!(m.nid, METABOX_NID);
            assert_eq!(m.image_offset(), None);
            assert_eq!(read_all(&img, "/m"), b"boxed");
        }

        let root = img.root().unwrap();
        assert!(root.dot_omitted);
        let mut seen = Vec::new();
        walk(&img, |v| {
            match v {
                Visit::Inode { path, inode, .. } => seen.push((
                    String::from_utf8_lossy(path).into_owned(),
                    inode.file_type(),
                )),
                Visit::Problem { path, error } => panic!("{path:?}: {error}"),
            }
            ControlFlow::Continue(())
        });
        let mut want = vec![
            ("/".to_string(), FileType::Dir),
            ("/f".to_string(), FileType::Reg),
        ];
        if metabox {
            want.push(("/m".to_string(), FileType::Reg));
        }
        assert_eq!(seen, want, "{placement:?}");
        let r = erofs::fsck::fsck(&img, &Default::default());
        assert!(r.is_clean(), "{placement:?}: {:?}", r.problems);
    }
}

#[test]
fn a_metabox_nid_without_a_metabox_is_corrupt() {
    let mut b = image(Prefixes::Plain);
    // Drop the METABOX feature: "m" now points nowhere.
    put32(&mut b, 1024 + 80, incompat::XATTR_PREFIXES);
    let img = Image::from_source(Arc::new(b), "synthetic").unwrap();
    let e = img.resolve("/m").unwrap_err().to_string();
    assert!(e.contains("metabox"), "{e}");
}
