//! Filesystem errors and their errno, decided in one exhaustive match.

use dos_client::ClientError;

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
    #[error("store: {0}")]
    Store(#[from] ClientError),
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
            FsError::Busy(_) => libc::ETXTBSY,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::Local(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                _ => libc::EIO,
            },
            FsError::NoSpace => libc::ENOSPC,
            FsError::Store(e) => {
                if e.is_not_found() {
                    libc::ENOENT
                } else {
                    libc::EIO
                }
            }
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
