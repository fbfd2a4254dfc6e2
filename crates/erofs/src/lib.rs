//! The EROFS on-disk format: reader, builder, codecs and content fingerprints.
//!
//! No FUSE, no daemon: this crate is usable on its own.
//!
//! Reading: [`Image`] opens an image over any [`source::ReadAt`] (positioned reads only) and
//! validates the [`superblock`]; [`inode`], [`dir`], [`data`] and [`xattr`] decode what
//! their names say, each checking every offset, size and count before use. [`walk`] visits
//! the whole tree with cycle and depth guards; [`fsck`] checks an image and [`extract`]
//! restores its tree into a directory.
//!
//! Writing: [`build`] makes an image, plain or compressed, from a directory or a tar stream,
//! with the content fingerprints `inode_share` keys on.

pub mod build;
pub mod codec;
pub mod data;
mod decompress;
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
pub mod zmap;

pub use error::{Error, Result};
pub use image::Image;
pub use inode::{FileType, Inode};
