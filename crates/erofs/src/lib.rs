//! The EROFS on-disk format: reader, builder, codecs and content fingerprints.
//!
//! No FUSE, no daemon: this crate is usable on its own.

pub mod build;
pub mod data;
pub mod dir;
pub mod error;
pub mod extract;
pub mod fingerprint;
pub mod format;
pub mod fsck;
pub mod image;
pub mod inode;
pub mod source;
pub mod superblock;
pub mod walk;
pub mod xattr;
pub mod xattr_name;

pub use error::{Error, Result};
pub use image::Image;
pub use inode::{FileType, Inode};
