//! Raw DEFLATE (RFC 1951, no zlib or gzip wrapper).

use super::{Algorithm, Codec, CodecError, Fill, fill_by_search};
use std::cell::RefCell;

/// DEFLATE: libdeflate compresses (searching for the prefix that fills a pcluster), a
/// streaming inflater decodes (it can stop when the output is full, for partial pclusters).
#[derive(Debug, Clone, Copy)]
pub struct Deflate {
    level: i32,
}

impl Deflate {
    pub const DEFAULT_LEVEL: i32 = 6;
    pub const MAX_LEVEL: i32 = 12;

    pub fn new(level: i32) -> Result<Deflate, String> {
        if !(0..=Self::MAX_LEVEL).contains(&level) {
            return Err(format!(
                "deflate level {level} out of range 0..={}",
                Self::MAX_LEVEL
            ));
        }
        Ok(Deflate { level })
    }
}

thread_local! {
    /// libdeflate compressors are costly to set up: one per thread and level.
    static COMPRESSOR: RefCell<Option<(i32, libdeflater::Compressor)>> = const { RefCell::new(None) };
}

impl Codec for Deflate {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Deflate
    }

    fn compress_fill(&self, src: &[u8], dst: &mut [u8]) -> Result<Fill, CodecError> {
        if src.is_empty() || dst.is_empty() {
            return Ok(Fill {
                consumed: 0,
                written: 0,
            });
        }
        let lvl = libdeflater::CompressionLvl::new(self.level).map_err(|e| CodecError::Config {
            codec: Algorithm::Deflate,
            detail: format!("{e:?}"),
        })?;
        let mut fill = COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|(l, _)| *l != self.level) {
                *slot = Some((self.level, libdeflater::Compressor::new(lvl)));
            }
            let (_, c) = slot.as_mut().expect("set above");
            // Stop once within a few bytes of full: more tries gain little.
            let close = (22 - 2 * self.level).max(0) as usize;
            fill_by_search(src, dst, dst.len() * 4, close, |prefix, buf| {
                c.deflate_compress(prefix, buf).ok()
            })
        });
        // A stream may open with a non-final stored block, whose first byte is 0 and would be
        // taken for zero padding. The rest of that byte is unused padding in DEFLATE (the
        // stored length starts at the next byte boundary): set a bit there.
        if fill.written > 0 && dst[0] == 0 {
            dst[0] = 1 << 3;
        }
        if fill.written == 0 {
            fill.consumed = 0;
        }
        Ok(fill)
    }

    fn config(&self, _max_pcluster_blocks: u16) -> Vec<u8> {
        // Window bits: libdeflate uses the full 32 KiB window.
        let mut c = vec![0u8; crate::format::compr_cfg::DEFLATE_SIZE];
        c[0] = 15;
        c
    }

    fn decompress(&self, stream: &[u8], dst: &mut [u8], partial: bool) -> Result<(), CodecError> {
        let expected = dst.len();
        let mut inflater = flate2::Decompress::new(false);
        let corrupt = |detail: String| CodecError::Corrupt {
            codec: Algorithm::Deflate,
            detail,
        };
        loop {
            let (i, o) = (inflater.total_in() as usize, inflater.total_out() as usize);
            let status = inflater
                .decompress(&stream[i..], &mut dst[o..], flate2::FlushDecompress::Finish)
                .map_err(|e| corrupt(e.to_string()))?;
            let out = inflater.total_out() as usize;
            match status {
                flate2::Status::StreamEnd => break,
                _ if out == expected => break,
                _ if out == o && inflater.total_in() as usize == i => {
                    return Err(corrupt(format!(
                        "stream ends early: {out} of {expected} bytes decoded"
                    )));
                }
                _ => {}
            }
        }
        let got = inflater.total_out() as usize;
        if got != expected {
            return Err(CodecError::Length {
                codec: Algorithm::Deflate,
                got,
                expected,
            });
        }
        if !partial {
            // The stream must end exactly here: nothing more to decode.
            let mut probe = [0u8; 1];
            let i = inflater.total_in() as usize;
            let status = inflater
                .decompress(&stream[i..], &mut probe, flate2::FlushDecompress::Finish)
                .map_err(|e| corrupt(e.to_string()))?;
            if inflater.total_out() as usize != expected || status != flate2::Status::StreamEnd {
                return Err(corrupt(format!(
                    "stream holds more than the {expected} bytes expected"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::exercise;

    #[test]
    fn deflate_levels() {
        exercise(&Deflate::new(6).unwrap());
        exercise(&Deflate::new(1).unwrap());
    }

    #[test]
    fn stored_block_start_is_not_zero() {
        // Incompressible data at level 0 makes stored blocks: the first byte must not be 0.
        let input = crate::codec::tests::noise(10_000, 5);
        let mut out = vec![0u8; 4096];
        let codec = Deflate::new(0).unwrap();
        let fill = codec.compress_fill(&input, &mut out).unwrap();
        assert!(fill.consumed > 0);
        assert_ne!(out[0], 0);
        let mut back = vec![0u8; fill.consumed];
        codec
            .decompress(&out[..fill.written], &mut back, false)
            .unwrap();
        assert_eq!(back, input[..fill.consumed]);
    }
}
