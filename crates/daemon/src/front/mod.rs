//! The two ways an image is mounted (DESIGN.md): the overlay front, where the kernel serves
//! metadata, lookups and opens from an overlayfs over a metadata image and reads data from the
//! domain's dedup mount ([`overlay`]); and the FUSE front, where the daemon serves every
//! request of a FUSE mount of the image ([`fuse`]), the fallback where the overlay front cannot
//! be used.

pub mod fuse;
pub mod overlay;

/// How an image is mounted (DESIGN.md): the overlay front (kernel overlayfs over a metadata
/// image, data from the dedup mount) or the FUSE front (the daemon serves every request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Overlay,
    Fuse,
}

impl Front {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Front::Overlay => "overlay",
            Front::Fuse => "fuse",
        }
    }
}
