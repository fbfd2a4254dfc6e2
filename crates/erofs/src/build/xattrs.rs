//! Xattrs as mkfs writes them: entries, the shared xattr table (a name/value pair used by
//! several inodes is stored once and referenced by id), each inode's inline xattr body with
//! its name filter, and the fingerprint entry (a long-prefix entry with an empty name).

use super::BuildError;
use super::tree::{NodeId, Tree};
use crate::fingerprint::XattrName;
use crate::format::{
    XATTR_ENTRY_SIZE, XATTR_IBODY_HEADER_SIZE, XattrEntry, XattrIbodyHeader, xattr_index,
};
use crate::xattr_name;
use std::collections::{BTreeMap, HashMap};
use zerocopy::IntoBytes;

/// A long xattr name prefix: entry `id` of the prefix table.
#[derive(Debug, Clone)]
pub struct LongPrefix {
    pub id: u8,
    pub name: XattrName,
}

/// Bytes of one entry with its padding.
fn entry_size(suffix: usize, value: usize) -> usize {
    (XATTR_ENTRY_SIZE + suffix + value).next_multiple_of(4)
}

fn push_entry(out: &mut Vec<u8>, index: u8, suffix: &[u8], value: &[u8]) {
    let e = XattrEntry {
        e_name_len: suffix.len() as u8,
        e_name_index: index,
        e_value_size: (value.len() as u16).into(),
    };
    let start = out.len();
    out.extend_from_slice(e.as_bytes());
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    out.resize(start + entry_size(suffix.len(), value.len()), 0);
}

/// Check a name/value pair can be stored; returns (index, suffix).
fn split<'a>(name: &'a [u8], value: &[u8]) -> Result<(u8, &'a [u8]), BuildError> {
    let (index, suffix) = xattr_name::split(name).map_err(|e| BuildError::Source(e.to_string()))?;
    if value.len() > u16::MAX as usize {
        return Err(BuildError::Source(format!(
            "xattr {:?}: value of {} bytes is longer than 65535",
            String::from_utf8_lossy(name),
            value.len()
        )));
    }
    Ok((index, suffix))
}

/// Check every pair of an inode can be stored (names and value sizes); the error names the
/// offending xattr, the caller adds the path.
pub fn validate(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), String> {
    for (n, v) in xattrs {
        split(n, v).map_err(|e| match e {
            BuildError::Source(m) => m,
            other => other.to_string(),
        })?;
    }
    Ok(())
}

/// Upper bound of an inode's xattr body (every pair inline), to decide tail inlining before
/// the shared table exists.
pub fn max_ibody_size(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>, fingerprint: bool) -> usize {
    let entries: usize = xattrs
        .iter()
        .map(|(n, v)| {
            entry_size(
                xattr_name::split(n).map_or(n.len(), |(_, s)| s.len()),
                v.len(),
            )
        })
        .sum::<usize>()
        + if fingerprint {
            entry_size(0, crate::format::fingerprint::VALUE_LEN)
        } else {
            0
        };
    if entries == 0 {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + entries
    }
}

/// The shared xattr area: entries stored once, referenced by 4-byte-unit ids from the start
/// of the area (the start of block `xattr_blkaddr`).
#[derive(Debug, Default)]
pub struct SharedXattrs {
    pub bytes: Vec<u8>,
    ids: HashMap<(Vec<u8>, Vec<u8>), u32>,
}

impl SharedXattrs {
    /// Share every pair that at least two of `nodes` carry (and that is larger than the 4-byte
    /// id that replaces it), in name/value order so images are reproducible.
    pub fn collect(tree: &Tree, nodes: &[NodeId]) -> Result<SharedXattrs, BuildError> {
        let mut count: HashMap<(&[u8], &[u8]), u32> = HashMap::new();
        for &id in nodes {
            for (n, v) in &tree.nodes[id].xattrs {
                *count.entry((n, v)).or_default() += 1;
            }
        }
        let mut pairs: Vec<(&[u8], &[u8])> = count
            .into_iter()
            .filter(|&(_, c)| c >= 2)
            .map(|(k, _)| k)
            .collect();
        pairs.sort();
        let mut table = SharedXattrs::default();
        for (n, v) in pairs {
            let (index, suffix) = split(n, v)?;
            let id = u32::try_from(table.bytes.len() / 4)
                .map_err(|_| BuildError::TooMany("shared xattrs"))?;
            push_entry(&mut table.bytes, index, suffix, v);
            table.ids.insert((n.to_vec(), v.to_vec()), id);
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// An inode's xattr body (header, shared ids, inline entries), or empty when it has none.
/// Inline entries whose name starts with one of `prefixes` are stored under the longest such
/// prefix with the rest of their name.
pub fn ibody(
    xattrs: &BTreeMap<Vec<u8>, Vec<u8>>,
    shared: &SharedXattrs,
    prefixes: &[LongPrefix],
    fingerprint: Option<(&LongPrefix, &[u8])>,
) -> Result<Vec<u8>, BuildError> {
    if xattrs.is_empty() && fingerprint.is_none() {
        return Ok(Vec::new());
    }
    let mut present = 0u32;
    let mut shared_ids = Vec::new();
    let mut inline = Vec::new();
    for (n, v) in xattrs {
        // The fingerprint replaces a source xattr of the same name.
        if fingerprint.is_some_and(|(p, _)| n.as_slice() == p.name.full.as_bytes()) {
            continue;
        }
        let (index, suffix) = split(n, v)?;
        present |= 1 << xattr_name::filter_bit(index, suffix);
        match shared.ids.get(&(n.clone(), v.clone())) {
            Some(&id) if shared_ids.len() < u8::MAX as usize => shared_ids.push(id),
            _ => {
                let long = prefixes
                    .iter()
                    .filter(|p| n.starts_with(p.name.full.as_bytes()))
                    .max_by_key(|p| p.name.full.len());
                match long {
                    Some(p) => push_entry(
                        &mut inline,
                        xattr_index::LONG_PREFIX | p.id,
                        &n[p.name.full.len()..],
                        v,
                    ),
                    None => push_entry(&mut inline, index, suffix, v),
                }
            }
        }
    }
    if let Some((prefix, value)) = fingerprint {
        present |= 1 << xattr_name::filter_bit(prefix.name.base_index, &prefix.name.infix);
        push_entry(
            &mut inline,
            xattr_index::LONG_PREFIX | prefix.id,
            b"",
            value,
        );
    }
    let header = XattrIbodyHeader {
        // Stored inverted: a set bit means no xattr name of this inode hashes there.
        h_name_filter: (!present).into(),
        h_shared_count: shared_ids.len() as u8,
        h_reserved2: [0; 7],
    };
    let mut out = Vec::with_capacity(XATTR_IBODY_HEADER_SIZE + shared_ids.len() * 4 + inline.len());
    out.extend_from_slice(header.as_bytes());
    for id in shared_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&inline);
    if (out.len() - XATTR_IBODY_HEADER_SIZE) / 4 + 1 > u16::MAX as usize {
        return Err(BuildError::TooMany("xattr bytes on one inode"));
    }
    Ok(out)
}

/// `i_xattr_icount` for a body of `len` bytes.
pub fn icount(len: usize) -> u16 {
    if len == 0 {
        0
    } else {
        ((len - XATTR_IBODY_HEADER_SIZE) / 4 + 1) as u16
    }
}

/// The long-prefix table record of the fingerprint name: `le16 len`, base index, infix,
/// padded to 4 bytes.
pub fn prefix_record(name: &XattrName) -> Vec<u8> {
    let len = 1 + name.infix.len();
    let mut out = Vec::with_capacity((2 + len).next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.push(name.base_index);
    out.extend_from_slice(&name.infix);
    out.resize((2 + len).next_multiple_of(4), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_record_matches_upstream_bytes() {
        // plain-fp.erofs at byte 0x4ac: 15 00 00 "erofs.fingerprint.v1" 00.
        let r = prefix_record(&XattrName::default());
        assert_eq!(&r[..3], &[0x15, 0, 0]);
        assert_eq!(&r[3..23], b"erofs.fingerprint.v1");
        assert_eq!(r.len(), 24);
        let t = prefix_record(&XattrName::new("trusted.erofs.fingerprint").unwrap());
        assert_eq!(&t[..3], &[0x12, 0, 4]);
        assert_eq!(t.len(), 20);
    }

    #[test]
    fn fingerprint_body_matches_upstream_bytes() {
        // tiny.txt of plain-fp.erofs: only the fingerprint, filter bit 8.
        let p = LongPrefix {
            id: 0,
            name: XattrName::default(),
        };
        let v = crate::fingerprint::of_bytes(b"x");
        let body = ibody(
            &BTreeMap::new(),
            &SharedXattrs::default(),
            &[],
            Some((&p, &v)),
        )
        .unwrap();
        assert_eq!(
            &body[..12],
            &[0xff, 0xfe, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&body[12..16], &[0x00, 0x80, 39, 0]);
        assert_eq!(body.len(), 12 + 44);
        assert_eq!(icount(body.len()), 12);
        // A source xattr with the fingerprint's name gives way to the fingerprint.
        let mut x = BTreeMap::new();
        x.insert(b"erofs.fingerprint.v1".to_vec(), b"forged".to_vec());
        let again = ibody(&x, &SharedXattrs::default(), &[], Some((&p, &v))).unwrap();
        assert_eq!(again, body);
    }

    #[test]
    fn names_under_a_long_prefix_store_only_the_rest() {
        let redirect = LongPrefix {
            id: 1,
            name: XattrName::new("trusted.overlay.redirect").unwrap(),
        };
        let mut x = BTreeMap::new();
        x.insert(b"trusted.overlay.redirect".to_vec(), b"/obj".to_vec());
        x.insert(b"trusted.overlay.redirectx".to_vec(), b"v".to_vec());
        x.insert(b"user.other".to_vec(), b"v".to_vec());
        let body = ibody(&x, &SharedXattrs::default(), &[redirect], None).unwrap();
        // Entries in name order: the exact name (empty suffix), the longer one (suffix "x"),
        // then user.other under its built-in prefix.
        assert_eq!(&body[12..16], &[0, 0x81, 4, 0]);
        assert_eq!(&body[16..20], b"/obj");
        assert_eq!(&body[20..24], &[1, 0x81, 1, 0]);
        assert_eq!(&body[24..26], b"xv");
        assert_eq!(&body[28..32], &[5, 1, 1, 0]);
        assert_eq!(body.len(), 40);
        // The name filter bit is the full name's, as the kernel computes it.
        let plain = ibody(&x, &SharedXattrs::default(), &[], None).unwrap();
        assert_eq!(&body[..4], &plain[..4]);
    }
}
