//! Reader errors. Every error names the image; structural ones also name where (nid, path,
//! offset) and what was expected, so a corrupt image can be diagnosed from the message alone.
//!
//! The workspace's rule for error types: `Display` says everything, the cause included, and
//! `source()` returns nothing (cause fields are named `cause`, never `source`, and carry no
//! `#[source]`/`#[from]` outside `#[error(transparent)]`). anyhow's `{:#}` prints a context
//! followed by each `source()`, so an error that did both printed its cause twice.

/// A reader error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be read (I/O error or read past its end).
    #[error("{image}: cannot read {len} bytes at offset {offset}: {cause}")]
    Io {
        image: String,
        offset: u64,
        len: usize,
        cause: std::io::Error,
    },
    /// The image file could not be opened or its size found.
    #[error("{image}: cannot open: {cause}")]
    Open {
        image: String,
        cause: std::io::Error,
    },
    /// Not an EROFS image at all.
    #[error("{image}: not an EROFS image: {what}")]
    NotErofs { image: String, what: String },
    /// The image is structurally wrong at `at` (a nid, a path, the superblock …).
    #[error("{image}: {at}: corrupt: {what}")]
    Corrupt {
        image: String,
        at: String,
        what: String,
    },
    /// A feature bit this reader does not implement.
    #[error(
        "{image}: unsupported incompatible feature bit {bit:#x} ({name}); refusing to read the image"
    )]
    UnsupportedFeature {
        image: String,
        bit: u32,
        name: &'static str,
    },
    /// Something valid but not implemented (multiple devices, …).
    #[error("{image}: {at}: {what} is not supported")]
    Unsupported {
        image: String,
        at: String,
        what: String,
    },
    /// Compressed file data, until the codecs land.
    #[error("{image}: nid {nid}: compressed data ({algorithm}) is not supported yet")]
    CompressedUnsupported {
        image: String,
        nid: u64,
        algorithm: &'static str,
    },
    /// A path that does not exist in the image.
    #[error("{image}: {path}: no such file or directory")]
    NotFound { image: String, path: String },
    /// An operation on the wrong kind of inode (read_dir on a file, read_link on a dir …).
    #[error("{image}: nid {nid}: {what}")]
    WrongType {
        image: String,
        nid: u64,
        what: &'static str,
    },
}

/// Reader result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The image this error is about (its name as given to the reader).
    pub fn image(&self) -> &str {
        match self {
            Error::Io { image, .. }
            | Error::Open { image, .. }
            | Error::NotErofs { image, .. }
            | Error::Corrupt { image, .. }
            | Error::UnsupportedFeature { image, .. }
            | Error::Unsupported { image, .. }
            | Error::CompressedUnsupported { image, .. }
            | Error::NotFound { image, .. }
            | Error::WrongType { image, .. } => image,
        }
    }

    /// The message without its leading image name, for a caller that names the image itself.
    pub fn detail(&self) -> String {
        let s = self.to_string();
        match s
            .strip_prefix(self.image())
            .and_then(|r| r.strip_prefix(": "))
        {
            Some(rest) => rest.to_string(),
            None => s,
        }
    }

    /// True for errors that say the image is damaged (as opposed to I/O or unsupported).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::NotErofs { .. })
    }
}
