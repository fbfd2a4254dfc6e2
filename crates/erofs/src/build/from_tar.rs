//! A tar source, read as a stream (plain, gzip or zstd, detected by magic): ustar, GNU
//! (long names and links, base-256 numbers) and PAX headers (path, linkpath, size, uid, gid,
//! nanosecond mtime, `SCHILY.xattr.*`, `SCHILY.acl.access`/`default`), hardlinks, devices,
//! fifos. File content is written to the image's data area as it streams by: memory stays
//! bounded by one buffer plus each file's inline tail.
//!
//! Hostile input is refused with the byte offset of the offending header: bad checksums,
//! truncation (also a missing end-of-archive block), `..` components, absolute paths, names
//! over 255 bytes, sizes beyond what the image can address, oversized extension headers,
//! sparse files.
//!
//! With [`Options::oci_layer`], OCI whiteouts become the overlayfs form: `.wh.NAME` → a 0/0
//! character device `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory.

use super::file_data;
use super::tree::{Content, Kind, Node, NodeId, Tree, encode_dev};
use super::xattrs::max_ibody_size;
use super::{BuildError, ImageFile, Options, Progress};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};

const BLOCK: usize = 512;
/// Largest PAX or GNU long-name payload we accept (xattr values are at most 64 KiB).
const MAX_EXTENSION: u64 = 1 << 20;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Read a tar stream into a tree, storing file content in `img`.
pub fn read(
    input: Box<dyn Read + Send>,
    opts: &Options,
    img: &mut ImageFile,
    progress: &dyn Progress,
) -> Result<Tree, BuildError> {
    let mut tar = TarReader {
        r: decompress(input).map_err(|e| BuildError::Tar {
            offset: 0,
            msg: format!("reading: {e}"),
        })?,
        pos: 0,
        pending: 0,
        header_at: 0,
        global: BTreeMap::new(),
    };
    let mut b = Builder {
        tree: Tree::new(),
        opts,
    };
    b.tree.nodes[0].mtime = opts.build_time as i64;
    while let Some(e) = tar.next_entry()? {
        let at = tar.header_at;
        let fail = |msg: String| BuildError::Tar { offset: at, msg };
        b.apply(e, &mut tar, img, progress).map_err(|e| match e {
            BuildError::Source(msg) => fail(msg),
            other => other,
        })?;
    }
    Ok(b.tree)
}

fn decompress(mut input: Box<dyn Read + Send>) -> std::io::Result<Box<dyn Read + Send>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = head[..n].to_vec();
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let zst = head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let r = std::io::BufReader::with_capacity(1 << 20, std::io::Cursor::new(head).chain(input));
    Ok(if gz {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if zst {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else {
        Box::new(r)
    })
}

/// One archive member, extension headers applied.
#[derive(Debug, Default)]
struct Entry {
    path: Vec<u8>,
    link: Vec<u8>,
    typeflag: u8,
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    devmajor: u64,
    devminor: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

struct TarReader {
    r: Box<dyn Read + Send>,
    /// Bytes consumed from the (decompressed) stream.
    pos: u64,
    /// Bytes of the current member's data (with padding) not read yet.
    pending: u64,
    header_at: u64,
    global: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl TarReader {
    fn err(&self, msg: impl Into<String>) -> BuildError {
        BuildError::Tar {
            offset: self.header_at,
            msg: msg.into(),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), BuildError> {
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                Err(self.err(format!("archive is truncated (in {what})")))
            }
            Err(e) => Err(self.err(format!("reading {what}: {e}"))),
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<(), BuildError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..k], "member data")?;
            n -= k as u64;
        }
        Ok(())
    }

    /// A header block, or `None` at the end-of-archive marker.
    fn header(&mut self) -> Result<Option<[u8; BLOCK]>, BuildError> {
        let pending = std::mem::take(&mut self.pending);
        self.skip(pending)?;
        self.header_at = self.pos;
        let mut h = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut h[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(format!("reading a header: {e}"))),
            }
        }
        self.pos += got as u64;
        if got == 0 {
            return Err(self.err("archive is truncated (no end-of-archive marker)"));
        }
        if got < BLOCK {
            return Err(self.err("archive is truncated (in a header)"));
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let stored =
            octal(&h[148..156]).ok_or_else(|| self.err("header checksum field is not a number"))?;
        let unsigned: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as i8 as i64
                }
            })
            .sum();
        if stored != unsigned && stored as i64 != signed {
            return Err(self.err(format!(
                "header checksum mismatch (stored {stored}, computed {unsigned}): not a tar archive or corrupt"
            )));
        }
        Ok(Some(h))
    }

    /// The payload of an extension member (PAX, GNU long name), size-limited.
    fn extension(&mut self, size: u64, what: &str) -> Result<Vec<u8>, BuildError> {
        if size > MAX_EXTENSION {
            return Err(self.err(format!(
                "{what} of {size} bytes is larger than {MAX_EXTENSION}"
            )));
        }
        let mut v = vec![0u8; size as usize];
        self.read_exact(&mut v, what)?;
        self.skip(pad(size))?;
        Ok(v)
    }

    /// The next member with its extension headers applied; its data is next in the stream.
    fn next_entry(&mut self) -> Result<Option<Entry>, BuildError> {
        let mut pax: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let Some(h) = self.header()? else {
                if !pax.is_empty() || long_name.is_some() || long_link.is_some() {
                    return Err(self.err("extension header without a member after it"));
                }
                return Ok(None);
            };
            let size = number(&h[124..136]).ok_or_else(|| self.err("bad size field"))?;
            let typeflag = h[156];
            match typeflag {
                b'x' => {
                    let data = self.extension(size, "PAX header")?;
                    parse_pax(&data, &mut pax).map_err(|m| self.err(m))?;
                    continue;
                }
                b'g' => {
                    let data = self.extension(size, "PAX global header")?;
                    let mut g = std::mem::take(&mut self.global);
                    parse_pax(&data, &mut g).map_err(|m| self.err(m))?;
                    self.global = g;
                    continue;
                }
                b'L' => {
                    long_name = Some(cstr(&self.extension(size, "GNU long name")?).to_vec());
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.extension(size, "GNU long link")?).to_vec());
                    continue;
                }
                _ => {}
            }
            let field = |r: std::ops::Range<usize>, what: &str| {
                number(&h[r]).ok_or_else(|| self.err(format!("bad {what} field")))
            };
            let mut e = Entry {
                typeflag,
                mode: field(100..108, "mode")?,
                uid: field(108..116, "uid")?,
                gid: field(116..124, "gid")?,
                size,
                mtime: field(136..148, "mtime")? as i64,
                link: cstr(&h[157..257]).to_vec(),
                ..Entry::default()
            };
            let ustar = &h[257..263] == b"ustar\0";
            if typeflag == b'3' || typeflag == b'4' {
                e.devmajor = field(329..337, "devmajor")?;
                e.devminor = field(337..345, "devminor")?;
            }
            e.path = if ustar && h[345] != 0 {
                let mut p = cstr(&h[345..500]).to_vec();
                p.push(b'/');
                p.extend_from_slice(cstr(&h[..100]));
                p
            } else {
                cstr(&h[..100]).to_vec()
            };
            if let Some(n) = long_name.take() {
                e.path = n;
            }
            if let Some(l) = long_link.take() {
                e.link = l;
            }
            let mut all = self.global.clone();
            all.append(&mut pax);
            self.apply_pax(&mut e, &all)?;
            self.pending = e.size + pad(e.size);
            return Ok(Some(e));
        }
    }

    fn apply_pax(&self, e: &mut Entry, pax: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), BuildError> {
        let num = |k: &[u8], v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    self.err(format!(
                        "PAX {} is not a number",
                        String::from_utf8_lossy(k)
                    ))
                })
        };
        for (k, v) in pax {
            match k.as_slice() {
                b"path" => e.path = v.clone(),
                b"linkpath" => e.link = v.clone(),
                b"size" => e.size = num(k, v)?,
                b"uid" => e.uid = num(k, v)?,
                b"gid" => e.gid = num(k, v)?,
                b"mtime" => {
                    (e.mtime, e.mtime_nsec) =
                        pax_time(v).ok_or_else(|| self.err("bad PAX mtime"))?;
                }
                b"SCHILY.devmajor" => e.devmajor = num(k, v)?,
                b"SCHILY.devminor" => e.devminor = num(k, v)?,
                b"SCHILY.acl.access" | b"SCHILY.acl.default" => {
                    let text =
                        std::str::from_utf8(v).map_err(|_| self.err("ACL text is not UTF-8"))?;
                    let value = super::acl::from_text(text).map_err(|m| self.err(m))?;
                    let name: &[u8] = if k.ends_with(b"access") {
                        b"system.posix_acl_access"
                    } else {
                        b"system.posix_acl_default"
                    };
                    e.xattrs.insert(name.to_vec(), value);
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(self.err("sparse files are not supported"));
                }
                k => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        e.xattrs.insert(name.to_vec(), v.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// An octal field (spaces and NULs around the digits).
fn octal(f: &[u8]) -> Option<u64> {
    let s = f.iter().skip_while(|&&c| c == b' ' || c == 0);
    let mut v: u64 = 0;
    let mut any = false;
    for &c in s {
        match c {
            b'0'..=b'7' => {
                v = v.checked_mul(8)?.checked_add((c - b'0') as u64)?;
                any = true;
            }
            b' ' | 0 => break,
            _ => return None,
        }
    }
    if !any && f.iter().any(|&c| c != b' ' && c != 0) {
        return None;
    }
    Some(v)
}

/// A numeric field: octal, or GNU base-256 (high bit of the first byte set).
fn number(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        if f[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (f[0] & 0x3f) as u64;
        for &c in &f[1..] {
            v = v.checked_mul(256)?.checked_add(c as u64)?;
        }
        Some(v)
    } else {
        octal(f)
    }
}

/// A PAX time: `[-]SECONDS[.FRACTION]`.
fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    Some(if !neg {
        (secs, nsec)
    } else if nsec == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nsec)
    })
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn parse_pax(mut data: &[u8], out: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), String> {
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .filter(|&i| i > 0 && i < 20)
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("PAX record length does not match its content".into());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        if v.is_empty() && !k.starts_with(b"SCHILY.xattr.") {
            // An empty value deletes the keyword.
            out.remove(k);
        } else {
            out.insert(k.to_vec(), v.to_vec());
        }
        data = &data[len..];
    }
    Ok(())
}

/// Split and check a member path: relative, no `..`, names of at most 255 bytes.
fn components(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.first() == Some(&b'/') {
        return Err(format!("absolute path {:?} in archive", shown()));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(format!("path {:?} leaves the archive root (..)", shown())),
            c if c.len() > crate::format::NAME_LEN => {
                return Err(format!(
                    "path {:?} has a name longer than 255 bytes",
                    shown()
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

struct Builder<'a> {
    tree: Tree,
    opts: &'a Options,
}

impl Builder<'_> {
    /// The directory for `comps`, creating missing ones (mode 0755, root-owned).
    fn dir(&mut self, comps: &[&[u8]]) -> Result<NodeId, BuildError> {
        let mut cur = 0;
        for (i, c) in comps.iter().enumerate() {
            let next = self.tree.entries(cur).and_then(|e| e.get(*c).copied());
            cur = match next {
                Some(id) if self.tree.nodes[id].is_dir() => id,
                Some(_) => {
                    return Err(BuildError::Source(format!(
                        "{:?} is not a directory",
                        String::from_utf8_lossy(&comps[..=i].join(&b'/'))
                    )));
                }
                None => {
                    let mut n = Node::new(Kind::Dir(BTreeMap::new()), 0o755);
                    n.mtime = self.opts.build_time as i64;
                    let id = self.tree.add(n);
                    self.tree
                        .entries_mut(cur)
                        .expect("a directory")
                        .insert(c.to_vec(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    fn lookup(&self, comps: &[&[u8]]) -> Option<NodeId> {
        let mut cur = 0;
        for c in comps {
            cur = *self.tree.entries(cur)?.get(*c)?;
        }
        Some(cur)
    }

    fn apply(
        &mut self,
        e: Entry,
        tar: &mut TarReader,
        img: &mut ImageFile,
        progress: &dyn Progress,
    ) -> Result<(), BuildError> {
        let src = |m: String| BuildError::Source(m);
        let mut comps = components(&e.path).map_err(src)?;
        let shown = String::from_utf8_lossy(&e.path).into_owned();
        if super::exclude::excluded_or_under(&self.opts.exclude, &comps) {
            return Ok(());
        }
        let mut typeflag = e.typeflag;
        if typeflag == 0 && e.path.ends_with(b"/") {
            typeflag = b'5';
        }
        let mut devmajor_minor = (e.devmajor, e.devminor);
        if self.opts.oci_layer
            && let Some(last) = comps.last().copied()
            && let Some(hidden) = last.strip_prefix(WHITEOUT)
        {
            let parent = self.dir(&comps[..comps.len() - 1])?;
            if last == OPAQUE {
                self.tree.nodes[parent]
                    .xattrs
                    .insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
                return Ok(());
            }
            if hidden.is_empty() || hidden.starts_with(WHITEOUT) {
                return Err(src(format!("bad whiteout name {shown:?}")));
            }
            *comps.last_mut().expect("not empty") = hidden;
            typeflag = b'3';
            devmajor_minor = (0, 0);
        }
        super::xattrs::validate(&e.xattrs).map_err(|m| src(format!("{shown:?}: {m}")))?;
        let perm = (e.mode & 0o7777) as u16;
        let uid =
            u32::try_from(e.uid).map_err(|_| src(format!("{shown:?}: uid {} too large", e.uid)))?;
        let gid =
            u32::try_from(e.gid).map_err(|_| src(format!("{shown:?}: gid {} too large", e.gid)))?;
        let dev = || -> Result<u32, BuildError> {
            let (ma, mi) = devmajor_minor;
            if ma > 0xfff || mi > 0xfffff {
                return Err(src(format!("{shown:?}: device {ma}:{mi} out of range")));
            }
            Ok(encode_dev(ma as u32, mi as u32))
        };
        let kind = match typeflag {
            b'0' | 0 | b'7' => {
                let bs = img.block_size();
                if e.size > (u32::MAX as u64) * bs {
                    return Err(src(format!(
                        "{shown:?}: size {} is too large for the image",
                        e.size
                    )));
                }
                let fp = self.opts.fingerprint.is_some() && e.size > 0;
                let inline = file_data::can_inline(
                    self.opts.inline,
                    bs,
                    e.size,
                    max_ibody_size(&e.xattrs, fp),
                );
                let at = file_data::place(img, e.size, inline);
                let at_header = tar.header_at;
                let stored = {
                    let mut data = (&mut tar.r).take(e.size);
                    let err = |io: std::io::Error| BuildError::Tar {
                        offset: at_header,
                        msg: format!("{shown:?}: {io}"),
                    };
                    file_data::store(img, &at, e.size, &mut data, fp, progress, &err)?
                };
                tar.pos += e.size;
                tar.pending = pad(e.size);
                Kind::File {
                    size: e.size,
                    content: Content::Stored(stored),
                }
            }
            b'1' => {
                let target = components(&e.link).map_err(src)?;
                if super::exclude::excluded_or_under(&self.opts.exclude, &target) {
                    // The file it names was left out: so is this name.
                    return Ok(());
                }
                let id = self.lookup(&target).ok_or_else(|| {
                    src(format!(
                        "hardlink {shown:?} to {:?}, which is not in the archive before it",
                        String::from_utf8_lossy(&e.link)
                    ))
                })?;
                if self.tree.nodes[id].is_dir() {
                    return Err(src(format!("hardlink {shown:?} to a directory")));
                }
                let Some((name, parent)) = comps.split_last() else {
                    return Err(src("hardlink to the root".into()));
                };
                let dir = self.dir(parent)?;
                self.tree
                    .entries_mut(dir)
                    .expect("a directory")
                    .insert(name.to_vec(), id);
                return Ok(());
            }
            b'2' => Kind::Symlink(e.link.clone()),
            b'3' => Kind::CharDev(dev()?),
            b'4' => Kind::BlockDev(dev()?),
            b'5' => Kind::Dir(BTreeMap::new()),
            b'6' => Kind::Fifo,
            b'S' => return Err(src(format!("{shown:?}: sparse files are not supported"))),
            b'V' => return Ok(()),
            t => {
                return Err(src(format!(
                    "{shown:?}: unsupported member type {:?}",
                    t as char
                )));
            }
        };
        if let Kind::Symlink(t) = &kind
            && t.is_empty()
        {
            return Err(src(format!("symlink {shown:?} has an empty target")));
        }
        let mut node = Node::new(kind, perm);
        node.uid = uid;
        node.gid = gid;
        node.mtime = e.mtime;
        node.mtime_nsec = e.mtime_nsec;
        node.xattrs = e.xattrs;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./").
            if !node.is_dir() {
                return Err(src(format!(
                    "{shown:?} names the root but is not a directory"
                )));
            }
            let root = &mut self.tree.nodes[0];
            node.kind = std::mem::replace(&mut root.kind, Kind::Fifo);
            *root = node;
            return Ok(());
        };
        let dir = self.dir(parent)?;
        let existing = self.tree.entries(dir).and_then(|e| e.get(*name).copied());
        match existing {
            // A directory again: new metadata, same children.
            Some(id) if self.tree.nodes[id].is_dir() && node.is_dir() => {
                node.kind = std::mem::replace(&mut self.tree.nodes[id].kind, Kind::Fifo);
                self.tree.nodes[id] = node;
            }
            _ => {
                let id = self.tree.add(node);
                self.tree
                    .entries_mut(dir)
                    .expect("a directory")
                    .insert(name.to_vec(), id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"   12 \0"), Some(0o12));
        assert_eq!(octal(b"\0\0\0"), Some(0));
        assert_eq!(octal(b"12x4"), None);
        assert_eq!(
            number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            Some(1 << 32)
        );
        assert_eq!(
            pax_time(b"1705475665.072010969"),
            Some((1705475665, 72010969))
        );
        assert_eq!(
            pax_time(b"1700507017.49215386"),
            Some((1700507017, 492153860))
        );
        assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time(b"12"), Some((12, 0)));
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(&[b'a'; 256]).is_err());
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn pax_records() {
        let mut m = BTreeMap::new();
        parse_pax(
            b"30 mtime=1700000000.123456789\n19 SCHILY.xattr.a=\n",
            &mut m,
        )
        .unwrap();
        assert_eq!(m[&b"mtime"[..]], b"1700000000.123456789");
        assert_eq!(m[&b"SCHILY.xattr.a"[..]], b"");
        assert!(parse_pax(b"99 path=x\n", &mut m).is_err());
        assert!(parse_pax(b"x path=x\n", &mut m).is_err());
    }
}
