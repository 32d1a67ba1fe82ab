//! Staging files for data being written through dosfs.
//!
//! They live in `<dir>/staging/`, beside but outside `<dir>/blocks/`, so the block cache never
//! sees, counts or evicts them. Each [`StagingFile`] belongs to its caller and is deleted when
//! dropped unless it is kept or persisted. Nothing here cleans up files that were kept.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::CacheError;

const STAGING_DIR: &str = "staging";
const FILE_PREFIX: &str = "write-";

/// Where staging files are created: `<dir>/staging/`.
#[derive(Debug, Clone)]
pub struct StagingArea {
    dir: PathBuf,
}

impl StagingArea {
    /// Creates (if needed) `<dir>/staging/`. Pass the cache directory to keep everything dosfs
    /// stores locally in one place.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, CacheError> {
        let dir = dir.as_ref().join(STAGING_DIR);
        fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The `staging/` directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a new, empty staging file opened for reading and writing.
    pub fn create(&self) -> Result<StagingFile, CacheError> {
        let inner = tempfile::Builder::new()
            .prefix(FILE_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|source| CacheError::Io {
                path: self.dir.clone(),
                source,
            })?;
        Ok(StagingFile { inner })
    }
}

/// A file in the staging area, deleted on drop unless [`StagingFile::keep`] or
/// [`StagingFile::persist`] is called. `Read`, `Write` and `Seek` go to the underlying file;
/// for positional I/O use [`StagingFile::file`] with `std::os::unix::fs::FileExt`.
#[derive(Debug)]
pub struct StagingFile {
    inner: NamedTempFile,
}

impl StagingFile {
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    pub fn file(&self) -> &File {
        self.inner.as_file()
    }

    pub fn file_mut(&mut self) -> &mut File {
        self.inner.as_file_mut()
    }

    /// Keeps the file where it is (it is no longer deleted on drop).
    pub fn keep(self) -> Result<(File, PathBuf), CacheError> {
        self.inner.keep().map_err(|err| CacheError::Io {
            path: err.file.path().to_path_buf(),
            source: err.error,
        })
    }

    /// Atomically moves the file to `path` (on the same filesystem) and keeps it there.
    pub fn persist(self, path: impl AsRef<Path>) -> Result<File, CacheError> {
        let path = path.as_ref();
        self.inner.persist(path).map_err(|err| CacheError::Io {
            path: path.to_path_buf(),
            source: err.error,
        })
    }
}

impl Read for StagingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file_mut().read(buf)
    }
}

impl Write for StagingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file_mut().flush()
    }
}

impl Seek for StagingFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file_mut().seek(pos)
    }
}
