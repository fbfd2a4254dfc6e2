//! LZMA in MicroLZMA framing: a raw LZMA1 stream whose first byte is the bitwise NOT of the
//! properties byte, with no header, sizes or end marker (the sizes come from the lcluster
//! map). liblzma has both directions.

use super::{Algorithm, Codec, CodecError, Fill};
use liblzma_sys as sys;

/// MicroLZMA with a preset level and the dictionary size the image's LZMA config announces.
#[derive(Debug, Clone, Copy)]
pub struct Lzma {
    level: u32,
    dict_size: u32,
}

impl Lzma {
    pub const DEFAULT_LEVEL: i32 = 6;
    pub const MAX_LEVEL: i32 = 9;
    /// The kernel refuses larger dictionaries (`Z_EROFS_LZMA_MAX_DICT_SIZE`).
    pub const MAX_DICT_SIZE: u32 = 8 << 20;
    /// liblzma's smallest dictionary.
    const MIN_DICT_SIZE: u32 = 4096;

    pub fn new(level: i32, dict_size: u32) -> Result<Lzma, String> {
        if !(0..=Self::MAX_LEVEL).contains(&level) {
            return Err(format!(
                "lzma level {level} out of range 0..={}",
                Self::MAX_LEVEL
            ));
        }
        if dict_size > Self::MAX_DICT_SIZE {
            return Err(format!(
                "lzma dictionary size {dict_size} above the kernel's limit {}",
                Self::MAX_DICT_SIZE
            ));
        }
        Ok(Lzma {
            level: level as u32,
            dict_size: dict_size.max(Self::MIN_DICT_SIZE),
        })
    }

    /// The dictionary size to announce in the image's LZMA config.
    pub fn dict_size(&self) -> u32 {
        self.dict_size
    }

    /// A dictionary larger than the data is never used: cap it, which saves the (large)
    /// match-finder and window allocations for each pcluster.
    fn dict_for(&self, len: usize) -> u32 {
        let need = u32::try_from(len.next_power_of_two()).unwrap_or(u32::MAX);
        need.clamp(Self::MIN_DICT_SIZE, self.dict_size)
    }
}

/// An `lzma_stream` that is always ended.
struct Stream(sys::lzma_stream);

impl Stream {
    fn new() -> Stream {
        // SAFETY: `lzma_stream` is a plain C struct and LZMA_STREAM_INIT is all zeros (null
        // pointers and zero counters).
        Stream(unsafe { std::mem::zeroed() })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was zero-initialised and only ever set up by liblzma;
        // `lzma_end` accepts both and frees whatever liblzma allocated.
        unsafe { sys::lzma_end(&mut self.0) };
    }
}

fn ret_name(ret: sys::lzma_ret) -> String {
    match ret {
        sys::LZMA_DATA_ERROR => "data error".into(),
        sys::LZMA_BUF_ERROR => "input ends early".into(),
        sys::LZMA_MEM_ERROR => "out of memory".into(),
        sys::LZMA_OPTIONS_ERROR => "unsupported options".into(),
        sys::LZMA_FORMAT_ERROR => "not MicroLZMA".into(),
        other => format!("liblzma error {other}"),
    }
}

impl Codec for Lzma {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Lzma
    }

    fn compress_fill(&self, src: &[u8], dst: &mut [u8]) -> Result<Fill, CodecError> {
        let fail = |detail: String| CodecError::Compress {
            codec: Algorithm::Lzma,
            detail,
        };
        if src.is_empty() || dst.len() < 16 {
            return Ok(Fill {
                consumed: 0,
                written: 0,
            });
        }
        // MicroLZMA sizes are 32-bit.
        let src = &src[..src.len().min(1 << 30)];
        // SAFETY: a zeroed options struct is valid input to `lzma_lzma_preset`, which fills
        // every field.
        let mut opts: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
        // SAFETY: `opts` is a valid, writable options struct.
        if unsafe { sys::lzma_lzma_preset(&mut opts, self.level) } != 0 {
            return Err(fail(format!("unsupported preset {}", self.level)));
        }
        opts.dict_size = self.dict_for(src.len());
        let mut strm = Stream::new();
        // SAFETY: `strm` is a zero-initialised stream and `opts` a valid options struct that
        // liblzma copies.
        let ret = unsafe { sys::lzma_microlzma_encoder(&mut strm.0, &opts) };
        if ret != sys::LZMA_OK {
            return Err(fail(ret_name(ret)));
        }
        strm.0.next_in = src.as_ptr();
        strm.0.avail_in = src.len();
        strm.0.next_out = dst.as_mut_ptr();
        strm.0.avail_out = dst.len();
        // SAFETY: the in/out pointers and lengths describe live slices borrowed for this call;
        // liblzma reads at most `avail_in` and writes at most `avail_out` bytes.
        let ret = unsafe { sys::lzma_code(&mut strm.0, sys::LZMA_FINISH) };
        if ret != sys::LZMA_STREAM_END {
            return Err(fail(ret_name(ret)));
        }
        let consumed = strm.0.total_in as usize;
        let written = strm.0.total_out as usize;
        if consumed == 0 {
            return Ok(Fill {
                consumed: 0,
                written: 0,
            });
        }
        Ok(Fill { consumed, written })
    }

    fn config(&self, _max_pcluster_blocks: u16) -> Vec<u8> {
        // dict_size, then format 0 (MicroLZMA).
        let mut c = vec![0u8; crate::format::compr_cfg::LZMA_SIZE];
        c[..4].copy_from_slice(&self.dict_size.to_le_bytes());
        c
    }

    fn decompress(&self, stream: &[u8], dst: &mut [u8], partial: bool) -> Result<(), CodecError> {
        let corrupt = |detail: String| CodecError::Corrupt {
            codec: Algorithm::Lzma,
            detail,
        };
        let expected = dst.len();
        if stream.is_empty() {
            return Err(corrupt("empty stream".into()));
        }
        if u32::try_from(stream.len()).is_err() || u32::try_from(expected).is_err() {
            return Err(corrupt("sizes beyond MicroLZMA's 32-bit limit".into()));
        }
        let mut strm = Stream::new();
        // SAFETY: `strm` is zero-initialised; the sizes are plain numbers liblzma checks.
        let ret = unsafe {
            sys::lzma_microlzma_decoder(
                &mut strm.0,
                stream.len() as u64,
                expected as u64,
                u8::from(!partial),
                self.dict_for(expected),
            )
        };
        if ret != sys::LZMA_OK {
            return Err(corrupt(ret_name(ret)));
        }
        strm.0.next_in = stream.as_ptr();
        strm.0.avail_in = stream.len();
        strm.0.next_out = dst.as_mut_ptr();
        strm.0.avail_out = expected;
        // SAFETY: as in `compress_fill`: the pointers describe live borrowed slices.
        let ret = unsafe { sys::lzma_code(&mut strm.0, sys::LZMA_FINISH) };
        if ret != sys::LZMA_STREAM_END {
            return Err(corrupt(ret_name(ret)));
        }
        let got = strm.0.total_out as usize;
        if got != expected {
            return Err(CodecError::Length {
                codec: Algorithm::Lzma,
                got,
                expected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::exercise;

    #[test]
    fn lzma_microlzma() {
        exercise(&Lzma::new(6, Lzma::MAX_DICT_SIZE).unwrap());
        exercise(&Lzma::new(0, 1 << 16).unwrap());
    }

    #[test]
    fn first_byte_is_inverted_properties() {
        let input = crate::codec::tests::sample(10_000, 1);
        let mut out = vec![0u8; 4096];
        Lzma::new(6, 1 << 20)
            .unwrap()
            .compress_fill(&input, &mut out)
            .unwrap();
        // lc=3, lp=0, pb=2 → properties 0x5d.
        assert_eq!(out[0], !0x5d);
    }
}
