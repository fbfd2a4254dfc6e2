//! Content fingerprints: the xattr value `mkfs.erofs --xattr-inode-digest` writes and the
//! kernel's `inode_share` keys on: `sha256:` followed by the 32 raw bytes of SHA-256 over the
//! file's uncompressed content (39 bytes), for every regular file with size > 0.

use crate::format::fingerprint::{DEFAULT_NAME, SHA256_TAG, VALUE_LEN};
use crate::xattr_name;
use sha2::{Digest, Sha256};
use std::io::Read;

/// A fingerprint xattr value.
pub type Value = [u8; VALUE_LEN];

/// Fingerprint value of an in-memory content.
pub fn of_bytes(content: &[u8]) -> Value {
    value_of_digest(&Sha256::digest(content).into())
}

/// Fingerprint value of a stream's content.
pub fn of_reader(mut r: impl Read) -> std::io::Result<Value> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(value_of_digest(&h.finalize().into()))
}

/// The value for a SHA-256 digest.
pub fn value_of_digest(digest: &[u8; 32]) -> Value {
    let mut v = [0u8; VALUE_LEN];
    v[..SHA256_TAG.len()].copy_from_slice(SHA256_TAG);
    v[SHA256_TAG.len()..].copy_from_slice(digest);
    v
}

/// The xattr name fingerprints are stored under, as a long prefix (base index + infix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrName {
    /// Full name, e.g. `erofs.fingerprint.v1` or `trusted.erofs.fingerprint`.
    pub full: String,
    /// Built-in index of the base prefix (0: none; such names are hidden from listxattr).
    pub base_index: u8,
    /// The rest of the name after the base prefix.
    pub infix: Vec<u8>,
}

impl XattrName {
    /// Split a fingerprint xattr name into its long-prefix parts.
    pub fn new(full: &str) -> Result<XattrName, crate::xattr_name::NameError> {
        let (base_index, infix) = xattr_name::split(full.as_bytes())?;
        Ok(XattrName {
            full: full.to_string(),
            base_index,
            infix: infix.to_vec(),
        })
    }
}

impl Default for XattrName {
    fn default() -> Self {
        XattrName::new(DEFAULT_NAME).expect("the default name is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_tag_then_raw_digest() {
        let v = of_bytes(b"hello\n");
        assert_eq!(&v[..7], b"sha256:");
        assert_eq!(
            hex::encode(&v[7..]),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(of_reader(&b"hello\n"[..]).unwrap(), v);
    }

    #[test]
    fn names_split_into_base_index_and_infix() {
        let d = XattrName::default();
        assert_eq!(
            (d.base_index, d.infix.as_slice()),
            (0, &b"erofs.fingerprint.v1"[..])
        );
        let t = XattrName::new("trusted.erofs.fingerprint").unwrap();
        assert_eq!(
            (t.base_index, t.infix.as_slice()),
            (4, &b"erofs.fingerprint"[..])
        );
    }
}
