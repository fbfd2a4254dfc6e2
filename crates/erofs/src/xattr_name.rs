//! Xattr names: splitting a full name into a built-in index and suffix, and the name filter
//! hash. Shared by the reader (`xattr`) and the builder.

use crate::format::{XATTR_FILTER_BITS, XATTR_FILTER_SEED, xattr_index};

/// A name that cannot be stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("xattr name is empty")]
    Empty,
    #[error("xattr name {0:?} is longer than 255 bytes after its prefix")]
    TooLong(String),
}

/// Built-in prefixes, in the order names are matched (exact ACL names first).
const BUILTIN: [(u8, &[u8]); 5] = [
    (xattr_index::POSIX_ACL_ACCESS, b"system.posix_acl_access"),
    (xattr_index::POSIX_ACL_DEFAULT, b"system.posix_acl_default"),
    (xattr_index::USER, b"user."),
    (xattr_index::TRUSTED, b"trusted."),
    (xattr_index::SECURITY, b"security."),
];

/// Split a full xattr name into (built-in index, suffix). Names with no built-in prefix get
/// index 0 and keep their whole name as suffix (the kernel never lists those).
pub fn split(full: &[u8]) -> Result<(u8, &[u8]), NameError> {
    if full.is_empty() {
        return Err(NameError::Empty);
    }
    let (index, suffix) = BUILTIN
        .iter()
        .find_map(|&(i, p)| {
            let acl = i == xattr_index::POSIX_ACL_ACCESS || i == xattr_index::POSIX_ACL_DEFAULT;
            if acl {
                (full == p).then_some((i, &full[full.len()..]))
            } else {
                full.strip_prefix(p).map(|s| (i, s))
            }
        })
        .unwrap_or((0, full));
    if suffix.len() > 255 {
        return Err(NameError::TooLong(
            String::from_utf8_lossy(full).into_owned(),
        ));
    }
    Ok((index, suffix))
}

/// Bit of the 32-bit name filter that a name sets: xxh32(suffix, seed + base index) mod 32,
/// where suffix is the name after its built-in prefix (a long prefix's infix included).
pub fn filter_bit(base_index: u8, suffix: &[u8]) -> u32 {
    xxhash_rust::xxh32::xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(base_index as u32))
        & (XATTR_FILTER_BITS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_prefixes_split() {
        assert_eq!(split(b"user.x").unwrap(), (1, &b"x"[..]));
        assert_eq!(split(b"system.posix_acl_access").unwrap(), (2, &b""[..]));
        assert_eq!(split(b"system.posix_acl_accessX").unwrap().0, 0);
        assert_eq!(split(b"security.selinux").unwrap(), (6, &b"selinux"[..]));
        assert_eq!(split(b"other").unwrap(), (0, &b"other"[..]));
        assert_eq!(split(b""), Err(NameError::Empty));
    }

    #[test]
    fn filter_bit_is_in_range_and_depends_on_index() {
        assert!(filter_bit(1, b"foo") < 32);
        let bits: Vec<u32> = (0..7)
            .map(|i| filter_bit(i, b"erofs.fingerprint"))
            .collect();
        assert!(bits.iter().any(|&b| b != bits[0]));
    }
}
