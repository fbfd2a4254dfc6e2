//! LZ4 block format (the `lz4` and `lz4hc` compressors share one on-disk algorithm).

use super::{Algorithm, Codec, CodecError, Fill};

/// LZ4, fast or high-compression (HC) when writing; reading is the same.
#[derive(Debug, Clone, Copy)]
pub struct Lz4 {
    /// `None`: the fast compressor; `Some(level)`: LZ4HC at that level.
    hc_level: Option<i32>,
}

impl Lz4 {
    pub const HC_DEFAULT_LEVEL: i32 = lzzzz::lz4_hc::CLEVEL_DEFAULT;
    pub const HC_MAX_LEVEL: i32 = lzzzz::lz4_hc::CLEVEL_MAX;

    /// The fast compressor (and the decompressor for any LZ4 pcluster).
    pub fn fast() -> Lz4 {
        Lz4 { hc_level: None }
    }

    /// LZ4HC at `level` (1 ..= 12).
    pub fn hc(level: i32) -> Result<Lz4, String> {
        if !(1..=Self::HC_MAX_LEVEL).contains(&level) {
            return Err(format!(
                "lz4hc level {level} out of range 1..={}",
                Self::HC_MAX_LEVEL
            ));
        }
        Ok(Lz4 {
            hc_level: Some(level),
        })
    }
}

impl Codec for Lz4 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Lz4
    }

    fn compress_fill(&self, src: &[u8], dst: &mut [u8]) -> Result<Fill, CodecError> {
        if src.is_empty() || dst.is_empty() {
            return Ok(Fill {
                consumed: 0,
                written: 0,
            });
        }
        // LZ4's C API counts in `int`: keep both sides well below that.
        let src = &src[..src.len().min(1 << 30)];
        let result = match self.hc_level {
            None => lzzzz::lz4::compress_fill(src, dst),
            Some(level) => lzzzz::lz4_hc::compress_fill(src, dst, level),
        };
        match result {
            Ok((consumed, written)) => Ok(Fill { consumed, written }),
            // destSize compressors report failure when nothing at all fits.
            Err(_) if dst.len() < 16 => Ok(Fill {
                consumed: 0,
                written: 0,
            }),
            Err(e) => Err(CodecError::Compress {
                codec: Algorithm::Lz4,
                detail: e.to_string(),
            }),
        }
    }

    fn config(&self, max_pcluster_blocks: u16) -> Vec<u8> {
        // max_distance 0: the default window; then the largest pcluster in blocks.
        let mut c = vec![0u8; crate::format::compr_cfg::LZ4_SIZE];
        c[2..4].copy_from_slice(&max_pcluster_blocks.to_le_bytes());
        c
    }

    fn decompress(&self, stream: &[u8], dst: &mut [u8], partial: bool) -> Result<(), CodecError> {
        let expected = dst.len();
        let result = if partial {
            lzzzz::lz4::decompress_partial(stream, dst, expected)
        } else {
            lzzzz::lz4::decompress(stream, dst)
        };
        match result {
            Ok(got) if got == expected => Ok(()),
            Ok(got) => Err(CodecError::Length {
                codec: Algorithm::Lz4,
                got,
                expected,
            }),
            Err(e) => Err(CodecError::Corrupt {
                codec: Algorithm::Lz4,
                detail: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::exercise;

    #[test]
    fn lz4_fast() {
        exercise(&Lz4::fast());
    }

    #[test]
    fn lz4_hc() {
        exercise(&Lz4::hc(9).unwrap());
        exercise(&Lz4::hc(12).unwrap());
    }

    #[test]
    fn hc_packs_more_than_fast() {
        let input = crate::codec::tests::sample(200_000, 11);
        let mut out = vec![0u8; 4096];
        let fast = Lz4::fast().compress_fill(&input, &mut out).unwrap();
        let hc = Lz4::hc(12)
            .unwrap()
            .compress_fill(&input, &mut out)
            .unwrap();
        assert!(hc.consumed > fast.consumed, "{hc:?} vs {fast:?}");
    }
}
