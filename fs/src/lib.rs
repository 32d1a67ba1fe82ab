//! dosfs: the dos object store as a filesystem.
//!
//! [`core`] is the filesystem (inodes, reads through the block cache, staged writes,
//! history) with no FUSE types, [`fuse`] the thin fuser adapter, [`mount`] the lifecycle
//! (embedded cluster or remote API, mount, unmount), [`restore`] the restore of a folder to a
//! moment (`dosfs restore PATH --at TIME`), [`tools`] the commands that work through a mount
//! (`dosfs stats`, `warmup`, `bench`).

pub mod core;
pub mod error;
pub mod fuse;
pub mod metrics;
pub mod mount;
pub mod restore;
pub mod tools;
