//! Zstandard: one frame per pcluster.

use super::{Algorithm, Codec, CodecError, Fill, fill_by_search};
use std::cell::RefCell;

/// Zstandard at a level, with a window limit the image's ZSTD config announces.
#[derive(Debug, Clone, Copy)]
pub struct Zstd {
    level: i32,
    window_log: u32,
}

impl Zstd {
    pub const DEFAULT_LEVEL: i32 = 3;
    pub const MAX_LEVEL: i32 = 22;
    /// What we write: frames need at most a 128 KiB window … unless the pcluster input is
    /// larger, in which case zstd lowers its window to the frame's size anyway.
    pub const DEFAULT_WINDOW_LOG: u32 = 17;
    /// Readers accept frames asking for windows up to this (the kernel's limit, 128 MiB).
    pub const MAX_WINDOW_LOG: u32 = 27;

    pub fn new(level: i32, window_log: u32) -> Result<Zstd, String> {
        if !(1..=Self::MAX_LEVEL).contains(&level) {
            return Err(format!(
                "zstd level {level} out of range 1..={}",
                Self::MAX_LEVEL
            ));
        }
        if !(10..=Self::MAX_WINDOW_LOG).contains(&window_log) {
            return Err(format!(
                "zstd window log {window_log} out of range 10..={}",
                Self::MAX_WINDOW_LOG
            ));
        }
        Ok(Zstd { level, window_log })
    }

    /// log2 of the largest window a frame may use.
    pub fn window_log(&self) -> u32 {
        self.window_log
    }
}

thread_local! {
    static CCTX: RefCell<Option<((i32, u32), zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

impl Codec for Zstd {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Zstd
    }

    fn compress_fill(&self, src: &[u8], dst: &mut [u8]) -> Result<Fill, CodecError> {
        let fail = |detail: String| CodecError::Compress {
            codec: Algorithm::Zstd,
            detail,
        };
        if src.is_empty() || dst.is_empty() {
            return Ok(Fill {
                consumed: 0,
                written: 0,
            });
        }
        CCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            let key = (self.level, self.window_log);
            if slot.as_ref().is_none_or(|(k, _)| *k != key) {
                let mut c =
                    zstd::bulk::Compressor::new(self.level).map_err(|e| fail(e.to_string()))?;
                c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(self.window_log))
                    .map_err(|e| fail(e.to_string()))?;
                // The frame header says the content size: readers can check it.
                c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
                    .map_err(|e| fail(e.to_string()))?;
                c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(false))
                    .map_err(|e| fail(e.to_string()))?;
                *slot = Some((key, c));
            }
            let (_, c) = slot.as_mut().expect("set above");
            Ok(fill_by_search(src, dst, dst.len() * 4, 1, |prefix, buf| {
                c.compress_to_buffer(prefix, buf).ok()
            }))
        })
    }

    fn config(&self, _max_pcluster_blocks: u16) -> Vec<u8> {
        // Format 0, then the window log above zstd's minimum of 10.
        let mut c = vec![0u8; crate::format::compr_cfg::ZSTD_SIZE];
        c[1] = (self.window_log - 10) as u8;
        c
    }

    fn decompress(&self, stream: &[u8], dst: &mut [u8], partial: bool) -> Result<(), CodecError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let corrupt = |detail: String| CodecError::Corrupt {
            codec: Algorithm::Zstd,
            detail,
        };
        let expected = dst.len();
        let mut dec = zstd::stream::raw::Decoder::new().map_err(|e| corrupt(e.to_string()))?;
        dec.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
            self.window_log.max(Self::DEFAULT_WINDOW_LOG),
        ))
        .map_err(|e| corrupt(e.to_string()))?;
        let mut input = InBuffer::around(stream);
        let mut output = OutBuffer::around(dst);
        let mut ended = false;
        while output.pos() < expected {
            let before = (input.pos(), output.pos());
            let hint = dec
                .run(&mut input, &mut output)
                .map_err(|e| corrupt(e.to_string()))?;
            if hint == 0 {
                ended = true;
                break;
            }
            if (input.pos(), output.pos()) == before {
                break; // input exhausted mid-frame
            }
        }
        let got = output.pos();
        if got != expected {
            return Err(if ended {
                CodecError::Length {
                    codec: Algorithm::Zstd,
                    got,
                    expected,
                }
            } else {
                corrupt(format!(
                    "stream ends early: {got} of {expected} bytes decoded"
                ))
            });
        }
        if !partial && !ended {
            // The frame must end exactly at the expected length.
            let mut probe = [0u8; 1];
            let mut more = OutBuffer::around(&mut probe[..]);
            let hint = dec
                .run(&mut input, &mut more)
                .map_err(|e| corrupt(e.to_string()))?;
            if more.pos() != 0 || hint != 0 {
                return Err(corrupt(format!(
                    "frame holds more than the {expected} bytes expected"
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
    fn zstd_levels() {
        exercise(&Zstd::new(3, Zstd::DEFAULT_WINDOW_LOG).unwrap());
        exercise(&Zstd::new(19, Zstd::DEFAULT_WINDOW_LOG).unwrap());
    }
}
