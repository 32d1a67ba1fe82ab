//! Filesystem errors and their errno, decided in one exhaustive match.

use dos_cache::CacheError;
use dos_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only: {0}")]
    ReadOnly(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("name too long")]
    NameTooLong,
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no such attribute")]
    NoAttr,
    #[error("too many links")]
    TooManyLinks,
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("buffer too small")]
    Range,
    #[error("bad file handle")]
    BadHandle,
    #[error("local staging: {0}")]
    Local(#[from] std::io::Error),
    #[error("no space left for local staging")]
    NoSpace,
    #[error("local cache: {0}")]
    Cache(#[from] CacheError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly(_) => libc::EROFS,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NoAttr => libc::ENODATA,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::Busy(_) => libc::ETXTBSY,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::Local(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                // A length past what the staging filesystem takes (truncate to petabytes).
                Some(libc::EFBIG) => libc::EFBIG,
                _ => libc::EIO,
            },
            FsError::NoSpace => libc::ENOSPC,
            FsError::Cache(e) => match e {
                CacheError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                    libc::ENOSPC
                }
                _ => libc::EIO,
            },
            FsError::Store(e) => match e {
                StoreError::NotFound(_) => libc::ENOENT,
                StoreError::Invalid(_) => libc::EINVAL,
                StoreError::Denied(_) => libc::EACCES,
                StoreError::Conflict(_) => libc::EBUSY,
                // The file changed underneath: what was read no longer names these bytes.
                StoreError::Changed(_) => libc::ESTALE,
                // Overloaded for a moment: the same call may succeed right after.
                StoreError::Busy(_) => libc::EAGAIN,
                StoreError::Timeout(_) => libc::ETIMEDOUT,
                // The store cannot keep or give the data now (too few data servers, the
                // network to it lost, wrong bytes): an I/O error, never a silent success.
                StoreError::Unavailable(_)
                | StoreError::Transport(_)
                | StoreError::Integrity(_)
                | StoreError::DigestMismatch
                | StoreError::OffsetMismatch { .. }
                | StoreError::Expired
                | StoreError::Internal(_) => libc::EIO,
            },
        }
    }

    /// Expected failures (a lookup that finds nothing) are not worth a warning.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            FsError::NotFound
                | FsError::Exists
                | FsError::NotEmpty
                | FsError::NoAttr
                | FsError::Range
                | FsError::NotDir
                | FsError::IsDir
        )
    }
}

pub type FsResult<T> = Result<T, FsError>;
