//! The tar archive format, read as a stream: ustar, GNU (long names and links, base-256
//! numbers) and PAX headers (local and global). [`TarReader::next_entry`] yields one member
//! at a time with its extension headers applied; the member's data follows in the stream.
//! Header checksums are verified, extension payloads are size-limited and truncation is an
//! error (also a missing end-of-archive block). Errors carry the header's byte offset.

use super::BuildError;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};

const BLOCK: usize = 512;
/// Largest PAX or GNU long-name payload we accept (xattr values are at most 64 KiB).
const MAX_EXTENSION: u64 = 1 << 20;

/// Undo gzip or zstd compression, detected by magic; plain tar passes through.
pub(crate) fn decompress(mut input: Box<dyn Read + Send>) -> std::io::Result<Box<dyn Read + Send>> {
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
pub(crate) struct Entry {
    pub(crate) path: Vec<u8>,
    pub(crate) link: Vec<u8>,
    pub(crate) typeflag: u8,
    pub(crate) mode: u64,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
    pub(crate) devmajor: u64,
    pub(crate) devminor: u64,
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub(crate) struct TarReader {
    pub(crate) r: Box<dyn Read + Send>,
    /// Bytes consumed from the (decompressed) stream.
    pub(crate) pos: u64,
    /// Bytes of the current member's data (with padding) not read yet.
    pub(crate) pending: u64,
    pub(crate) header_at: u64,
    pub(crate) global: BTreeMap<Vec<u8>, Vec<u8>>,
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
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, BuildError> {
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

pub(crate) fn pad(size: u64) -> u64 {
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
