//! Sharing domains: the only scope inside which files share a page cache.
//!
//! A domain is named by the operator (`mount --domain ID`). Each live domain owns one internal
//! dedup mount ([`crate::dedup_fs`]) and the table of its dedup objects ([`crate::dedup`]).
//! Files of two mounts share only when both mounts name the same domain and the files carry
//! the same fingerprint; the key is length-prefixed so that no (domain, fingerprint) pair
//! can collide with another one by shifting bytes between the two (the kernel's plain
//! concatenation can).
//!
//! A domain is verified (the default) or trusted (`mount --trusted`), fixed by its first
//! mount. In a verified domain a fingerprint is a claim the daemon checks before any byte is
//! served (see [`crate::dedup`]), so only `sha256:` fingerprints share there; in a trusted
//! domain, as with the kernel's `inode_share`, the first source that reads cleanly supplies
//! the bytes every mount sees.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::dedup::{DedupFile, DedupObject, DedupTable};

/// The sharing key of a file: `len(domain) ‖ domain ‖ len(fingerprint) ‖ fingerprint`, lengths
/// as little-endian u32.
pub fn share_key(domain: &[u8], fingerprint: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + domain.len() + fingerprint.len());
    for part in [domain, fingerprint] {
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part);
    }
    key
}

/// Why a fingerprint cannot be used as a sharing key (the kernel's rule: 1 ..= block size).
pub fn fingerprint_usable(fingerprint: &[u8], block_size: u64) -> bool {
    !fingerprint.is_empty() && fingerprint.len() as u64 <= block_size
}

/// The SHA-256 digest a `sha256:` fingerprint value names, if it is one.
pub fn sha256_of_fingerprint(fingerprint: &[u8]) -> Option<[u8; 32]> {
    use erofs::format::fingerprint::{SHA256_TAG, VALUE_LEN};
    if fingerprint.len() != VALUE_LEN || !fingerprint.starts_with(SHA256_TAG) {
        return None;
    }
    fingerprint[SHA256_TAG.len()..].try_into().ok()
}

/// The file name under which the domain's dedup mount is mounted inside the state directory:
/// hex of the domain id, so any byte string is a safe path component.
pub fn dir_name(id: &str) -> String {
    hex::encode(id.as_bytes())
}

/// A live domain: its dedup objects and where its internal dedup mount lives.
#[derive(Debug)]
pub struct Domain {
    /// The operator's name for it.
    pub id: String,
    /// Mountpoint of the domain's internal dedup FUSE mount.
    pub dedup_mountpoint: PathBuf,
    /// Dedup objects of the domain, by key and by dedup inode number.
    pub objects: Mutex<DedupTable>,
    /// Whether a close on the dedup mount has used up the kernel's one FLUSH.
    flush_spent: AtomicBool,
    /// Requests the dedup mount has served (lookups, getattrs, reads).
    pub requests: AtomicU64,
    /// True for a trusted domain: fingerprints are believed, not checked.
    pub trusted: bool,
}

impl Domain {
    /// A domain with no objects yet, whose dedup mount is (to be) at `dedup_mountpoint`.
    pub fn new(id: String, dedup_mountpoint: PathBuf, trusted: bool) -> Self {
        Self {
            trusted,
            id,
            dedup_mountpoint,
            objects: Mutex::new(DedupTable::default()),
            flush_spent: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        }
    }

    /// How a file with `fingerprint` shares here: its sharing key, and the SHA-256 its content
    /// must have before it is served (verified domains). None when the fingerprint cannot be
    /// used: out of the kernel's length rule, or in a verified domain not a `sha256:` value.
    pub fn sharing(
        &self,
        fingerprint: &[u8],
        block_size: u64,
    ) -> Option<(Vec<u8>, Option<[u8; 32]>)> {
        if !fingerprint_usable(fingerprint, block_size) {
            return None;
        }
        let expect = if self.trusted {
            None
        } else {
            Some(sha256_of_fingerprint(fingerprint)?)
        };
        Some((share_key(self.id.as_bytes(), fingerprint), expect))
    }

    /// Path of a dedup object's file inside the dedup mount.
    pub fn object_path(&self, obj: &DedupObject) -> PathBuf {
        self.dedup_mountpoint.join(&obj.name)
    }

    /// A dedup object's file, to register for passthrough: the one the object keeps, or
    /// opened now (see [`DedupObject::file`]). Call from an image mount's thread, never from
    /// the dedup mount's own.
    pub fn object_file<'a>(&self, obj: &'a DedupObject) -> io::Result<DedupFile<'a>> {
        let open = || File::open(self.object_path(obj));
        if !self.flush_spent.swap(true, Ordering::Relaxed) {
            // The kernel sends FLUSH on each close on the dedup mount until it is first
            // answered (ENOSYS, then never again). Spend it here: a kept file may be closed
            // later on one of the dedup mount's own threads, which must not wait on its mount.
            drop(open()?);
        }
        obj.file(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_unambiguous() {
        // With plain concatenation these two pairs would give the same bytes.
        assert_ne!(share_key(b"ab", b"c"), share_key(b"a", b"bc"));
        assert_ne!(share_key(b"", b"abc"), share_key(b"abc", b""));
        assert_eq!(share_key(b"d", b"f"), share_key(b"d", b"f"));
    }

    #[test]
    fn fingerprint_length_rule() {
        assert!(!fingerprint_usable(b"", 4096));
        assert!(fingerprint_usable(&[1; 39], 512));
        assert!(!fingerprint_usable(&[1; 513], 512));
    }

    #[test]
    fn verified_domains_share_sha256_fingerprints_only() {
        let fp = erofs::fingerprint::of_bytes(b"x");
        let v = Domain::new("d".into(), PathBuf::new(), false);
        let t = Domain::new("d".into(), PathBuf::new(), true);
        let (key, expect) = v.sharing(&fp, 4096).unwrap();
        assert_eq!(key, share_key(b"d", &fp));
        assert_eq!(expect.unwrap()[..], fp[7..]);
        assert_eq!(t.sharing(&fp, 4096).unwrap().1, None);
        assert!(v.sharing(b"md5:1234", 4096).is_none());
        assert!(t.sharing(b"md5:1234", 4096).is_some());
    }

    #[test]
    fn dir_names_are_path_safe() {
        assert_eq!(dir_name("a/b"), "612f62");
    }
}
