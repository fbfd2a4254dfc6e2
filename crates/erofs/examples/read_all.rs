//! Read every regular file of an image through the library, in directory order, in 128 KiB
//! requests (the read benchmark of the closing note): `read_all IMAGE`.

use erofs::walk::{Visit, walk};
use erofs::{FileType, Image};
use std::ops::ControlFlow;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: read_all IMAGE")?;
    let start = std::time::Instant::now();
    let img = Image::open(&path)?;
    let (mut files, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 128 << 10];
    walk(&img, |v| {
        if let Visit::Inode { inode, .. } = v
            && inode.file_type() == FileType::Reg
        {
            files += 1;
            let mut off = 0;
            while off < inode.size {
                match img.read_at(inode, off, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => off += n as u64,
                    Err(e) => {
                        eprintln!("{e}");
                        errors += 1;
                        break;
                    }
                }
            }
            bytes += off;
        }
        ControlFlow::Continue(())
    });
    println!(
        "{path}: {files} files, {bytes} bytes, {errors} errors, {:.3} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
