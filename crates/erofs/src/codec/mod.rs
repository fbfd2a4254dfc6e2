//! Compression codecs, one per file, behind the [`Codec`] trait.
//!
//! EROFS frames every codec the same way: one physical cluster (pcluster) holds one
//! independent compressed stream. With `ZERO_PADDING` (every image since Linux 5.3) the stream
//! ends at the end of the pcluster and the unused room before it is zeros, so the stream's
//! start is the first non-zero byte of the pcluster's first page; without it (legacy LZ4) the
//! stream starts at the first byte and trailing bytes are garbage. [`Codec::decompress`] gets
//! the stream (see [`stream_start`]) and an output buffer of the exact decoded length.
//!
//! Writers fill pclusters to a fixed size: [`Codec::compress_fill`] compresses as much of its
//! input as fits in the output buffer and says how much it consumed.

mod deflate;
mod lz4;
mod lzma;
mod zstd;

pub use self::deflate::Deflate;
pub use self::lz4::Lz4;
pub use self::lzma::Lzma;
pub use self::zstd::Zstd;

use crate::format::compr_alg;
use std::fmt;

/// An on-disk compression algorithm (the `h_algorithmtype` nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Lz4,
    Lzma,
    Deflate,
    Zstd,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Lz4,
        Algorithm::Lzma,
        Algorithm::Deflate,
        Algorithm::Zstd,
    ];

    /// Decode an on-disk algorithm id.
    pub fn from_id(id: u8) -> Option<Algorithm> {
        match id {
            compr_alg::LZ4 => Some(Algorithm::Lz4),
            compr_alg::LZMA => Some(Algorithm::Lzma),
            compr_alg::DEFLATE => Some(Algorithm::Deflate),
            compr_alg::ZSTD => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    /// The on-disk id.
    pub fn id(self) -> u8 {
        match self {
            Algorithm::Lz4 => compr_alg::LZ4,
            Algorithm::Lzma => compr_alg::LZMA,
            Algorithm::Deflate => compr_alg::DEFLATE,
            Algorithm::Zstd => compr_alg::ZSTD,
        }
    }

    pub fn name(self) -> &'static str {
        compr_alg::name(self.id())
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong in a codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{0}: compressed data start not found (first page of the pcluster is all zeros)")]
    NoStream(Algorithm),
    #[error("{codec}: corrupt compressed data: {detail}")]
    Corrupt { codec: Algorithm, detail: String },
    #[error("{codec}: decoded {got} bytes, expected {expected}")]
    Length {
        codec: Algorithm,
        got: usize,
        expected: usize,
    },
    #[error("{codec}: bad setting: {detail}")]
    Config { codec: Algorithm, detail: String },
    #[error("{codec}: compression failed: {detail}")]
    Compress { codec: Algorithm, detail: String },
}

/// The result of [`Codec::compress_fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Input bytes the compressed stream decodes to (a prefix of the input).
    pub consumed: usize,
    /// Compressed bytes written at the start of the output buffer.
    pub written: usize,
}

/// One compression algorithm with its settings.
pub trait Codec: Send + Sync + fmt::Debug {
    /// The on-disk algorithm this codec reads and writes.
    fn algorithm(&self) -> Algorithm;

    /// Compress the longest prefix of `src` whose compressed form fits in `dst`.
    /// `consumed == 0` means not even a little of the input fits.
    fn compress_fill(&self, src: &[u8], dst: &mut [u8]) -> Result<Fill, CodecError>;

    /// Decode `stream` into exactly `dst.len()` bytes. `partial`: the stream may decode to
    /// more than `dst` (a partially referenced pcluster) and decoding stops when `dst` is full;
    /// otherwise the stream must decode to exactly `dst.len()` bytes.
    fn decompress(&self, stream: &[u8], dst: &mut [u8], partial: bool) -> Result<(), CodecError>;

    /// The payload of this algorithm's config record after the superblock (COMPR_CFGS),
    /// for images whose physical clusters are at most `max_pcluster_blocks` blocks.
    fn config(&self, max_pcluster_blocks: u16) -> Vec<u8>;
}

/// Where the compressed stream starts in a pcluster with zero padding: the first non-zero byte
/// within the first `page` bytes (the kernel looks no further).
pub fn stream_start(alg: Algorithm, pcluster: &[u8], page: usize) -> Result<usize, CodecError> {
    let window = &pcluster[..pcluster.len().min(page)];
    window
        .iter()
        .position(|&b| b != 0)
        .ok_or(CodecError::NoStream(alg))
}

/// A codec with its level, as named on the mkfs command line: `lz4`, `lz4hc[,level=N]`,
/// `zstd[,level=N]`, `lzma[,level=N]`, `deflate[,level=N]`.
pub fn parse_spec(spec: &str) -> Result<Box<dyn Codec>, String> {
    parse_spec_for(spec, 1 << 20)
}

/// As [`parse_spec`], for writing pclusters of at most `pcluster_size` bytes: the LZMA
/// dictionary is 8 × that (a power of two, at most the kernel's 8 MiB), as readers allocate
/// what the image's config announces.
pub fn parse_spec_for(spec: &str, pcluster_size: u32) -> Result<Box<dyn Codec>, String> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or_default().trim();
    let mut level = None;
    for opt in parts {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key.trim() {
            "level" => {
                let n: i32 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{spec}: level must be a number, got {value:?}"))?;
                level = Some(n);
            }
            other => return Err(format!("{spec}: unknown option {other:?} (only level=N)")),
        }
    }
    let codec: Box<dyn Codec> = match name {
        "lz4" => {
            if level.is_some() {
                return Err(format!("{spec}: lz4 has no levels; use lz4hc,level=N"));
            }
            Box::new(Lz4::fast())
        }
        "lz4hc" => Box::new(Lz4::hc(level.unwrap_or(Lz4::HC_DEFAULT_LEVEL))?),
        "lzma" => Box::new(Lzma::new(
            level.unwrap_or(Lzma::DEFAULT_LEVEL),
            (pcluster_size.saturating_mul(8))
                .next_power_of_two()
                .clamp(1 << 16, Lzma::MAX_DICT_SIZE),
        )?),
        "deflate" => Box::new(Deflate::new(level.unwrap_or(Deflate::DEFAULT_LEVEL))?),
        "zstd" => Box::new(Zstd::new(
            level.unwrap_or(Zstd::DEFAULT_LEVEL),
            Zstd::DEFAULT_WINDOW_LOG,
        )?),
        other => {
            return Err(format!(
                "unknown compressor {other:?}: expected lz4, lz4hc, lzma, deflate or zstd"
            ));
        }
    };
    Ok(codec)
}

/// Search for the longest input prefix whose compressed form fits in `dst`, for codecs
/// without a native "fill the output" mode. `compress(prefix, buf)` returns the compressed
/// length or `None` when it does not fit in `buf`; `buf` has some slack beyond `dst.len()` so
/// that "just too big" is told apart from "failed". Starts from a guess, then narrows using
/// the compression ratio seen and bisection; stops when the output is within `close_enough`
/// bytes of full.
pub(crate) fn fill_by_search(
    src: &[u8],
    dst: &mut [u8],
    first_guess: usize,
    close_enough: usize,
    mut compress: impl FnMut(&[u8], &mut [u8]) -> Option<usize>,
) -> Fill {
    const SLACK: usize = 64;
    let cap = dst.len();
    let mut buf = vec![0u8; cap + SLACK];
    let mut best = Fill {
        consumed: 0,
        written: 0,
    };
    let mut hi = src.len() + 1; // smallest prefix known not to fit
    let mut m = first_guess.max(1);
    loop {
        m = m.clamp(best.consumed + 1, hi - 1);
        match compress(&src[..m], &mut buf) {
            Some(n) if n > 0 && n <= cap => {
                dst[..n].copy_from_slice(&buf[..n]);
                best = Fill {
                    consumed: m,
                    written: n,
                };
                if hi <= m + 1 || n + close_enough >= cap {
                    break;
                }
                // Grow by the ratio seen, but at least halfway to the known upper bound
                // when that is close, so the search ends in O(log n) steps.
                let by_ratio = (cap as u128 * m as u128 / n as u128) as usize;
                m = by_ratio.max(m + 1);
                if hi <= src.len() {
                    m = m.min(m / 2 + hi / 2);
                }
            }
            _ => {
                hi = m;
                if hi <= best.consumed + 1 {
                    break;
                }
                m = (best.consumed + hi) / 2;
            }
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Text-like, compressible, deterministic data.
    pub fn sample(len: usize, seed: u64) -> Vec<u8> {
        let words: [&[u8]; 8] = [
            b"erofs ",
            b"page ",
            b"cache ",
            b"share ",
            b"lz4 ",
            b"zstd ",
            b"\n",
            b"cluster ",
        ];
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(11) {
                out.extend_from_slice(&x.to_le_bytes()[..3]);
            } else {
                out.extend_from_slice(words[(x % 8) as usize]);
            }
        }
        out.truncate(len);
        out
    }

    /// Random, incompressible data.
    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every codec behaves as the trait says: round trip, fill, partial decode, corruption.
    pub fn exercise(codec: &dyn Codec) {
        let alg = codec.algorithm();
        for (len, seed) in [
            (1usize, 1u64),
            (100, 2),
            (4096, 3),
            (70_000, 4),
            (300_000, 5),
        ] {
            let input = sample(len, seed);
            for pcluster in [4096usize, 16384, 65536] {
                let mut out = vec![0u8; pcluster];
                let fill = codec.compress_fill(&input, &mut out).unwrap();
                assert!(fill.written <= pcluster, "{alg}: overfilled");
                assert!(fill.consumed > 0 && fill.consumed <= input.len(), "{alg}");
                if fill.consumed < input.len() {
                    // Filled: a full pcluster should be close to full.
                    assert!(
                        fill.written + pcluster / 8 >= pcluster,
                        "{alg}: pcluster {pcluster} only {} full, consumed {}",
                        fill.written,
                        fill.consumed
                    );
                }
                // Place it as a writer does: at the end of whole blocks, zeros before it.
                let blocks = fill.written.div_ceil(4096) * 4096;
                let mut pc = vec![0u8; blocks];
                pc[blocks - fill.written..].copy_from_slice(&out[..fill.written]);
                let start = stream_start(alg, &pc, 4096).unwrap();
                assert_eq!(start, blocks - fill.written, "{alg}: stream starts with 0");
                let mut back = vec![0u8; fill.consumed];
                codec.decompress(&pc[start..], &mut back, false).unwrap();
                assert!(back == input[..fill.consumed], "{alg}: round trip differs");
                // Partial decode of a prefix.
                let part = fill.consumed / 2;
                let mut pre = vec![0u8; part];
                codec.decompress(&pc[start..], &mut pre, true).unwrap();
                assert!(pre == input[..part], "{alg}: partial decode differs");
                // Asking for more than the stream holds is an error, not a panic.
                let mut too_long = vec![0u8; fill.consumed + 10];
                assert!(
                    codec
                        .decompress(&pc[start..], &mut too_long, false)
                        .is_err()
                );
            }
        }
        // Incompressible input: whatever fits decodes back.
        let input = noise(20_000, 9);
        let mut out = vec![0u8; 4096];
        let fill = codec.compress_fill(&input, &mut out).unwrap();
        if fill.consumed > 0 {
            let mut back = vec![0u8; fill.consumed];
            codec
                .decompress(&out[..fill.written], &mut back, false)
                .unwrap();
            assert!(back == input[..fill.consumed]);
        }
        // Corrupt streams: errors (or wrong bytes), never a panic or a hang.
        let input = sample(50_000, 7);
        let mut out = vec![0u8; 8192];
        let fill = codec.compress_fill(&input, &mut out).unwrap();
        let stream = &out[..fill.written];
        let mut dst = vec![0u8; fill.consumed];
        for i in (0..stream.len()).step_by(97) {
            let mut bad = stream.to_vec();
            bad[i] ^= 0x5a;
            let _ = codec.decompress(&bad, &mut dst, false);
            let _ = codec.decompress(&bad, &mut dst, true);
        }
        for cut in [0usize, 1, 5, stream.len() / 2, stream.len() - 1] {
            assert!(
                codec.decompress(&stream[..cut], &mut dst, false).is_err(),
                "{alg}: truncated stream ({cut} of {}) accepted",
                stream.len()
            );
        }
        assert!(codec.decompress(&noise(3000, 3), &mut dst, false).is_err());
        assert!(codec.decompress(&[], &mut dst, true).is_err());
    }

    #[test]
    fn stream_start_skips_zero_padding_within_first_page() {
        let mut pc = vec![0u8; 8192];
        pc[5000] = 1;
        assert!(stream_start(Algorithm::Lz4, &pc, 4096).is_err());
        pc[4095] = 7;
        assert_eq!(stream_start(Algorithm::Lz4, &pc, 4096).unwrap(), 4095);
    }

    #[test]
    fn specs_parse() {
        assert_eq!(parse_spec("lz4").unwrap().algorithm(), Algorithm::Lz4);
        assert_eq!(
            parse_spec("lz4hc,level=12").unwrap().algorithm(),
            Algorithm::Lz4
        );
        assert_eq!(
            parse_spec("zstd,level=5").unwrap().algorithm(),
            Algorithm::Zstd
        );
        assert_eq!(parse_spec("lzma").unwrap().algorithm(), Algorithm::Lzma);
        assert_eq!(
            parse_spec("deflate,level=9").unwrap().algorithm(),
            Algorithm::Deflate
        );
        for bad in [
            "lz5",
            "lz4,level=3",
            "lz4hc,level=x",
            "zstd,foo=1",
            "lzma,level=99",
            "deflate,level=13",
            "lz4hc,level=99",
            "zstd,level=23",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn fill_search_finds_a_tight_prefix() {
        // A fake codec whose output is half its input, rounded up.
        let src = vec![7u8; 10_000];
        let mut dst = vec![0u8; 1000];
        let fill = fill_by_search(&src, &mut dst, 100, 0, |p, buf| {
            let n = p.len().div_ceil(2);
            (n <= buf.len()).then_some(n)
        });
        assert_eq!(
            fill,
            Fill {
                consumed: 2000,
                written: 1000
            }
        );
        let fill = fill_by_search(&src[..300], &mut dst, 4000, 0, |p, buf| {
            let n = p.len().div_ceil(2);
            (n <= buf.len()).then_some(n)
        });
        assert_eq!(
            fill,
            Fill {
                consumed: 300,
                written: 150
            }
        );
    }
}
