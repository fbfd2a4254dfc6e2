//! The erofs-share daemon: per-image FUSE mounts whose identical files share one page cache
//! per domain through an internal dedup mount.
