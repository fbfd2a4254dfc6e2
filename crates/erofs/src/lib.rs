//! The EROFS on-disk format: reader, builder, codecs and content fingerprints.
//!
//! No FUSE, no daemon: this crate is usable on its own.

pub mod build;
pub mod fingerprint;
pub mod format;
pub mod xattr_name;
