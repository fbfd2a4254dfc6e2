//! Where image bytes come from: positioned reads only, so the image is never held in memory
//! (a `Vec<u8>` source exists for tests and fuzzing).

use std::io;

/// Random access to an image's bytes.
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Fill `buf` from `offset`; an error if the range is not entirely inside the source.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Length of the source in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the source is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len() as u64)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range ends beyond the {} byte image", self.len()),
                )
            })?;
        buf.copy_from_slice(&self[offset as usize..end as usize]);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(Vec::len(self) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_reads_in_range_and_refuses_past_end() {
        let v = vec![1u8, 2, 3, 4];
        let mut b = [0u8; 2];
        v.read_exact_at(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        assert!(v.read_exact_at(&mut b, 3).is_err());
        assert!(v.read_exact_at(&mut b, u64::MAX).is_err());
        assert_eq!(ReadAt::len(&v).unwrap(), 4);
    }
}
