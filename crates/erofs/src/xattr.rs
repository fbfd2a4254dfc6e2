//! Extended attributes: the inline area after an inode (header, shared ids, entries), shared
//! entries in the xattr area, long name prefixes (in the metadata area with PLAIN_XATTR_PFX,
//! else in the packed or metabox inode), the name filter, and the fingerprint entry.

use crate::error::Result;
use crate::format::{
    XATTR_ENTRY_SIZE, XATTR_IBODY_HEADER_SIZE, XattrEntry, XattrIbodyHeader, compat, xattr_index,
};
use crate::image::Image;
use crate::inode::{Inode, Space};
use crate::xattr_name;
use zerocopy::FromBytes;

/// One xattr: full name (e.g. `user.foo`) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// A long name prefix: a built-in prefix index plus an infix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongPrefix {
    pub base_index: u8,
    pub infix: Vec<u8>,
}

/// An xattr entry as stored, with its decoded name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawXattr {
    /// On-disk `e_name_index` (0x80 | id for long prefixes).
    pub index: u8,
    /// The stored name suffix.
    pub suffix: Vec<u8>,
    /// Built-in index the full name is based on (the long prefix's base for long ones).
    pub base_index: u8,
    /// Full name.
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// The shared xattr id, for shared entries.
    pub shared_id: Option<u32>,
}

impl RawXattr {
    /// The name after its built-in prefix (what the name filter hashes).
    pub fn name_after_base(&self) -> &[u8] {
        let p = xattr_index::prefix(self.base_index).unwrap_or(b"");
        &self.name[p.len()..]
    }
}

/// The inline xattr header of an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IbodyHeader {
    /// Stored (inverted) name filter: a set bit means no xattr name hashes there.
    pub name_filter: u32,
    pub shared_ids: Vec<u32>,
}

/// Longest long-prefix infix (a name is at most 255 bytes).
const MAX_INFIX: usize = 255;

/// Read the long prefix table.
pub(crate) fn load_prefixes(img: &Image) -> Result<Vec<LongPrefix>> {
    let sb = img.superblock();
    let count = sb.xattr_prefix_count as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut pos = sb.xattr_prefix_start as u64 * 4;
    // Where the table lives: the kernel's order of preference.
    enum Where {
        Plain,
        Metabox,
        Packed(Inode),
    }
    let place = if sb.has_compat(compat::PLAIN_XATTR_PFX) {
        Where::Plain
    } else if sb.metabox_nid.is_some() {
        Where::Metabox
    } else if sb.packed_nid != 0 {
        Where::Packed(img.inode(sb.packed_nid)?)
    } else {
        Where::Plain
    };
    let read = |pos: u64, buf: &mut [u8]| -> Result<()> {
        match &place {
            Where::Plain => img.read_raw(pos, buf),
            Where::Metabox => img.read_meta(Space::Metabox, pos, buf),
            Where::Packed(p) => {
                if img.read_at(p, pos, buf)? != buf.len() {
                    return Err(img.corrupt_nid(
                        p.nid,
                        format!("long prefix table at {pos} runs past the packed inode"),
                    ));
                }
                Ok(())
            }
        }
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let mut l = [0u8; 2];
        read(pos, &mut l)?;
        let len = u16::from_le_bytes(l) as usize;
        if len == 0 || len > 1 + MAX_INFIX {
            return Err(img.corrupt_at(
                "long xattr prefixes",
                format!("prefix {i}: length {len} not in 1..=256"),
            ));
        }
        let mut rec = vec![0u8; len];
        read(pos + 2, &mut rec)?;
        let base_index = rec[0];
        if base_index & xattr_index::LONG_PREFIX != 0 || xattr_index::prefix(base_index).is_none() {
            return Err(img.corrupt_at(
                "long xattr prefixes",
                format!("prefix {i}: unknown base index {base_index}"),
            ));
        }
        out.push(LongPrefix {
            base_index,
            infix: rec[1..].to_vec(),
        });
        pos = (pos + 2 + len as u64).next_multiple_of(4);
    }
    Ok(out)
}

/// The inline header of `inode` and every entry (shared first, then inline), read once; None
/// when it has no xattr area.
pub fn ibody(img: &Image, inode: &Inode) -> Result<Option<(IbodyHeader, Vec<RawXattr>)>> {
    let Some((h, inline)) = read_ibody(img, inode)? else {
        return Ok(None);
    };
    let entries = decode_all(img, inode, &h, &inline)?;
    Ok(Some((h, entries)))
}

/// The header and the raw bytes of the inline entries.
fn read_ibody(img: &Image, inode: &Inode) -> Result<Option<(IbodyHeader, Vec<u8>)>> {
    let size = inode.xattr_size() as usize;
    if size < XATTR_IBODY_HEADER_SIZE {
        return Ok(None);
    }
    let mut buf = vec![0u8; size];
    let pos = inode.pos + inode.inode_size();
    img.read_meta(inode.space, pos, &mut buf)
        .map_err(|e| img.corrupt_nid(inode.nid, format!("xattr area unreadable: {e}")))?;
    let h = XattrIbodyHeader::read_from_prefix(&buf).expect("sized").0;
    let shared = h.h_shared_count as usize;
    let entries_start = XATTR_IBODY_HEADER_SIZE + shared * 4;
    if entries_start > size {
        return Err(img.corrupt_nid(
            inode.nid,
            format!("{shared} shared xattr ids do not fit the {size} byte xattr area"),
        ));
    }
    let shared_ids = buf[XATTR_IBODY_HEADER_SIZE..entries_start]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Ok(Some((
        IbodyHeader {
            name_filter: h.h_name_filter.get(),
            shared_ids,
        },
        buf[entries_start..].to_vec(),
    )))
}

/// Decode an entry's full name.
fn full_name(img: &Image, inode: &Inode, index: u8, suffix: &[u8]) -> Result<(u8, Vec<u8>)> {
    if index & xattr_index::LONG_PREFIX != 0 {
        let id = (index & xattr_index::LONG_PREFIX_MASK) as usize;
        let prefixes = img.long_prefixes()?;
        let p = prefixes.get(id).ok_or_else(|| {
            img.corrupt_nid(
                inode.nid,
                format!(
                    "xattr uses long prefix {id} but the image has {}",
                    prefixes.len()
                ),
            )
        })?;
        let base = xattr_index::prefix(p.base_index).expect("validated at load");
        let mut name = Vec::with_capacity(base.len() + p.infix.len() + suffix.len());
        name.extend_from_slice(base);
        name.extend_from_slice(&p.infix);
        name.extend_from_slice(suffix);
        return Ok((p.base_index, name));
    }
    let base = xattr_index::prefix(index).ok_or_else(|| {
        img.corrupt_nid(inode.nid, format!("xattr has unknown name index {index}"))
    })?;
    let mut name = base.to_vec();
    name.extend_from_slice(suffix);
    Ok((index, name))
}

/// Decode one entry from `bytes` (which start at it); returns it and its padded size.
fn decode_entry(
    img: &Image,
    inode: &Inode,
    bytes: &[u8],
    shared_id: Option<u32>,
) -> Result<(RawXattr, usize)> {
    let e = XattrEntry::read_from_prefix(bytes)
        .map_err(|_| img.corrupt_nid(inode.nid, "xattr entry header truncated".into()))?
        .0;
    let nl = e.e_name_len as usize;
    let vl = e.e_value_size.get() as usize;
    let total = (XATTR_ENTRY_SIZE + nl + vl).next_multiple_of(4);
    if XATTR_ENTRY_SIZE + nl + vl > bytes.len() {
        return Err(img.corrupt_nid(
            inode.nid,
            format!(
                "xattr entry of {} bytes runs past its area ({} bytes left)",
                XATTR_ENTRY_SIZE + nl + vl,
                bytes.len()
            ),
        ));
    }
    let suffix = &bytes[XATTR_ENTRY_SIZE..XATTR_ENTRY_SIZE + nl];
    let value = bytes[XATTR_ENTRY_SIZE + nl..XATTR_ENTRY_SIZE + nl + vl].to_vec();
    let (base_index, name) = full_name(img, inode, e.e_name_index, suffix)?;
    Ok((
        RawXattr {
            index: e.e_name_index,
            suffix: suffix.to_vec(),
            base_index,
            name,
            value,
            shared_id,
        },
        total.min(bytes.len()),
    ))
}

/// Read one shared entry.
fn shared_entry(img: &Image, inode: &Inode, id: u32) -> Result<RawXattr> {
    let sb = img.superblock();
    let space = if sb.has_compat(compat::SHARED_EA_IN_METABOX) {
        Space::Metabox
    } else {
        Space::Image
    };
    let pos = sb
        .block_offset(sb.xattr_blkaddr as u64)
        .and_then(|b| b.checked_add(id as u64 * 4))
        .ok_or_else(|| img.corrupt_nid(inode.nid, format!("shared xattr {id} offset overflows")))?;
    let bad = |e| img.corrupt_nid(inode.nid, format!("shared xattr {id} unreadable: {e}"));
    let mut head = [0u8; XATTR_ENTRY_SIZE];
    img.read_meta(space, pos, &mut head).map_err(bad)?;
    let e = XattrEntry::read_from_bytes(&head).expect("sized");
    let len = XATTR_ENTRY_SIZE + e.e_name_len as usize + e.e_value_size.get() as usize;
    let mut buf = vec![0u8; len];
    img.read_meta(space, pos, &mut buf).map_err(bad)?;
    Ok(decode_entry(img, inode, &buf, Some(id))?.0)
}

/// Every entry: shared first, then inline.
pub fn raw(img: &Image, inode: &Inode) -> Result<Vec<RawXattr>> {
    Ok(ibody(img, inode)?
        .map(|(_, entries)| entries)
        .unwrap_or_default())
}

fn decode_all(img: &Image, inode: &Inode, h: &IbodyHeader, inline: &[u8]) -> Result<Vec<RawXattr>> {
    let mut out = Vec::new();
    for &id in &h.shared_ids {
        out.push(shared_entry(img, inode, id)?);
    }
    let mut off = 0;
    while off < inline.len() {
        let (x, n) = decode_entry(img, inode, &inline[off..], None)?;
        out.push(x);
        off += n;
    }
    Ok(out)
}

pub(crate) fn all(img: &Image, inode: &Inode) -> Result<Vec<Xattr>> {
    Ok(raw(img, inode)?
        .into_iter()
        .map(|x| Xattr {
            name: x.name,
            value: x.value,
        })
        .collect())
}

/// Base indexes the kernel lists (to a CAP_SYS_ADMIN caller, user_xattr on).
fn listable(base_index: u8) -> bool {
    matches!(
        base_index,
        xattr_index::USER
            | xattr_index::POSIX_ACL_ACCESS
            | xattr_index::POSIX_ACL_DEFAULT
            | xattr_index::TRUSTED
            | xattr_index::SECURITY
    )
}

pub(crate) fn listed(img: &Image, inode: &Inode) -> Result<Vec<Xattr>> {
    let raw = raw(img, inode)?;
    // The kernel lists inline entries before shared ones.
    let (shared, inline): (Vec<_>, Vec<_>) = raw.into_iter().partition(|x| x.shared_id.is_some());
    Ok(inline
        .into_iter()
        .chain(shared)
        .filter(|x| listable(x.base_index))
        .map(|x| Xattr {
            name: x.name,
            value: x.value,
        })
        .collect())
}

pub(crate) fn get(img: &Image, inode: &Inode, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let Ok((index, suffix)) = xattr_name::split(name) else {
        return Ok(None);
    };
    if !listable(index) {
        // The kernel has no handler for these names.
        return Ok(None);
    }
    let Some((h, inline)) = read_ibody(img, inode)? else {
        return Ok(None);
    };
    if img.superblock().xattr_filter_active()
        && h.name_filter & (1 << xattr_name::filter_bit(index, suffix)) != 0
    {
        return Ok(None);
    }
    Ok(decode_all(img, inode, &h, &inline)?
        .into_iter()
        .find(|x| x.base_index == index && x.name_after_base() == suffix)
        .map(|x| x.value))
}

pub(crate) fn fingerprint(img: &Image, inode: &Inode) -> Result<Option<Vec<u8>>> {
    let Some(id) = img.superblock().ishare_xattr_prefix_id else {
        return Ok(None);
    };
    let want = xattr_index::LONG_PREFIX | id;
    Ok(raw(img, inode)?
        .into_iter()
        .find(|x| x.index == want && x.suffix.is_empty())
        .map(|x| x.value))
}

/// The name filter the inode's xattrs call for (inverted, as stored): bits of names present
/// are clear.
pub fn expected_filter(xattrs: &[RawXattr]) -> u32 {
    let mut present = 0u32;
    for x in xattrs {
        present |= 1 << xattr_name::filter_bit(x.base_index, x.name_after_base());
    }
    !present
}
