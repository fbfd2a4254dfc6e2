//! Reading every regular file of a mounted tree, as the benchmarks' readers do.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Reads every regular file under `root` (symlinks not followed) through `buf`, adding its
/// path to `files`; returns the bytes read, or the path that failed and why.
pub fn read_tree(
    root: &Path,
    buf: &mut [u8],
    files: &mut Vec<PathBuf>,
) -> Result<u64, (PathBuf, std::io::Error)> {
    let mut total = 0;
    let rd = std::fs::read_dir(root).map_err(|e| (root.to_path_buf(), e))?;
    for e in rd {
        let e = e.map_err(|e| (root.to_path_buf(), e))?;
        let ft = e.file_type().map_err(|err| (e.path(), err))?;
        if ft.is_dir() {
            total += read_tree(&e.path(), buf, files)?;
        } else if ft.is_file() {
            let p = e.path();
            let mut f = std::fs::File::open(&p).map_err(|err| (p.clone(), err))?;
            loop {
                let n = f.read(buf).map_err(|err| (p.clone(), err))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            files.push(p);
        }
    }
    Ok(total)
}
