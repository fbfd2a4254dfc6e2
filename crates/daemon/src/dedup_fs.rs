//! The internal dedup mount of a domain: one read-only regular file per dedup object.
//!
//! Image mounts pass their shared files through to these files (FUSE passthrough), so the
//! page cache of a shared file lives here, once per domain. Opens keep the cache
//! (`FOPEN_KEEP_CACHE`, the kernel's default once `open` answers ENOSYS) so it survives every
//! open/close; `read` runs only on a cache miss and fills it from
//! any live source ([`crate::dedup::DedupObject::read`]). This mount must not enable
//! passthrough itself (the image mounts stack on it with `max_stack_depth = 1`), and its
//! requests are served on its own threads, never on an image mount's `open` handler, which
//! blocks on it.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

use crate::dedup::DedupObject;
use crate::domain::Domain;

/// Objects never change while they exist; inode numbers are never reused.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The FUSE filesystem of a domain's dedup mount.
#[derive(Debug)]
pub struct DedupFs {
    domain: Arc<Domain>,
}

impl DedupFs {
    /// Serves the objects of `domain`.
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }

    fn object(&self, ino: INodeNo) -> Option<Arc<DedupObject>> {
        self.domain.objects.lock().unwrap().get(ino.0)
    }
}

fn root_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo::ROOT,
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0o500,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn object_attr(obj: &DedupObject) -> FileAttr {
    FileAttr {
        ino: INodeNo(obj.ino),
        size: obj.size,
        blocks: obj.size.div_ceil(512),
        kind: FileType::RegularFile,
        perm: 0o400,
        nlink: 1,
        ..root_attr()
    }
}

impl Filesystem for DedupFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.domain.requests.fetch_add(1, Ordering::Relaxed);
        let obj = (parent == INodeNo::ROOT)
            .then(|| name.to_str())
            .flatten()
            .and_then(|n| self.domain.objects.lock().unwrap().by_name(n));
        match obj {
            Some(obj) => reply.entry(&TTL, &object_attr(&obj), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.domain.requests.fetch_add(1, Ordering::Relaxed);
        if ino == INodeNo::ROOT {
            return reply.attr(&TTL, &root_attr());
        }
        match self.object(ino) {
            Some(obj) => reply.attr(&TTL, &object_attr(&obj)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS switches the kernel to "no open" mode for this mount: later opens (one per
        // open of a shared file, made by passthrough) cost no round trip and get the
        // kernel's default for that mode, FOPEN_KEEP_CACHE. Nothing to check: the mount is
        // read-only and root-only.
        reply.error(Errno::ENOSYS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        // Nothing is ever dirty here. ENOSYS makes the kernel stop sending flushes to this
        // mount, so closing a dedup file never waits for a reply (see Domain::object_file).
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.domain.requests.fetch_add(1, Ordering::Relaxed);
        let Some(obj) = self.object(ino) else {
            return reply.error(Errno::EIO);
        };
        let mut buf = vec![0u8; size as usize];
        match obj.read(offset, &mut buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let objects = self.domain.objects.lock().unwrap().objects();
        let mut entries = vec![
            (INodeNo::ROOT, FileType::Directory, ".".to_string()),
            (INodeNo::ROOT, FileType::Directory, "..".to_string()),
        ];
        entries.extend(
            objects
                .iter()
                .map(|o| (INodeNo(o.ino), FileType::RegularFile, o.name.clone())),
        );
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
