//! Read every regular file of an image through the library in 128 KiB requests, files in
//! parallel on all cores (the read benchmark of the closing note): `read_all IMAGE`.

use erofs::walk::try_walk;
use erofs::{FileType, Image, Inode};
use rayon::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: read_all IMAGE")?;
    let start = std::time::Instant::now();
    let img = Image::open(&path)?;
    let mut files: Vec<Inode> = Vec::new();
    // A damaged tree is an error, not a smaller benchmark.
    try_walk(&img, |_, inode| {
        if inode.file_type() == FileType::Reg {
            files.push(inode.clone());
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    let (bytes, errors) = files
        .par_iter()
        .map_init(
            || vec![0u8; 128 << 10],
            |buf, inode| {
                let mut off = 0;
                while off < inode.size {
                    match img.read_at(inode, off, buf) {
                        Ok(0) => break,
                        Ok(n) => off += n as u64,
                        Err(e) => {
                            eprintln!("{e}");
                            return (off, 1u64);
                        }
                    }
                }
                (off, 0)
            },
        )
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!(
        "{path}: {} files, {bytes} bytes, {errors} errors, {:.3} s",
        files.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
