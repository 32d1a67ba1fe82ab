use std::io::Read as _;
use std::path::Path;

use bytes::Bytes;
use dos_protocol::{BLOCK_SIZE, ContentHash, VersionRecord, WriteAttributes};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::{Client, ClientError, PostOutcome, UploadProgress, UploadSource};

/// Consecutive failed chunk PUTs (transport errors, 416) tolerated by a resumable upload.
const MAX_RETRIES: u32 = 3;

/// SHA-256 and length of a local file, read in 1 MiB pieces on a blocking thread.
pub async fn hash_file(path: &Path) -> Result<(ContentHash, u64), ClientError> {
    let owned = path.to_owned();
    let io_err = move |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let job = tokio::task::spawn_blocking(move || -> std::io::Result<(ContentHash, u64)> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((ContentHash(hasher.finalize().into()), size))
    });
    match job.await {
        Ok(r) => r.map_err(io_err),
        Err(e) => Err(io_err(std::io::Error::other(e))),
    }
}

impl UploadSource {
    async fn hash_and_size(&self) -> Result<(ContentHash, u64), ClientError> {
        match self {
            UploadSource::Bytes(b) => {
                let copy = b.clone();
                let hash = tokio::task::spawn_blocking(move || ContentHash::of(&copy))
                    .await
                    .unwrap_or_else(|_| ContentHash::of(b));
                Ok((hash, b.len() as u64))
            }
            UploadSource::File(p) => hash_file(p).await,
        }
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, ClientError> {
        match self {
            UploadSource::Bytes(b) => {
                let start = usize::try_from(offset)
                    .ok()
                    .filter(|&s| s <= b.len())
                    .ok_or_else(|| ClientError::InvalidInput("offset beyond the data".into()))?;
                let end = start.saturating_add(len).min(b.len());
                Ok(b.slice(start..end))
            }
            UploadSource::File(p) => {
                let io_err = |source| ClientError::Io {
                    path: p.clone(),
                    source,
                };
                let mut file = tokio::fs::File::open(p).await.map_err(io_err)?;
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(io_err)?;
                let mut buf = Vec::with_capacity(len);
                (&mut file)
                    .take(len as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(io_err)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

impl Client {
    /// Stores `source` under `name` through `POST` and, unless the content is known already,
    /// a resumable upload sent in pieces of `chunk_size` bytes (rounded up to whole 1 MiB
    /// blocks). A piece that fails in transit or is refused with 416 is retried from the
    /// offset the server reports.
    pub async fn resumable_upload(
        &self,
        name: &str,
        source: UploadSource,
        chunk_size: usize,
        attrs: &WriteAttributes,
    ) -> Result<VersionRecord, ClientError> {
        let (hash, size) = source.hash_and_size().await?;
        let location = match self.post(name, hash, size, attrs).await? {
            PostOutcome::Created(record) => return Ok(record),
            PostOutcome::Upload(location) => location,
        };
        let chunk = chunk_size.max(1).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let mut offset = self.upload_status(&location).await?;
        let mut failures = 0;
        loop {
            if offset > size {
                return Err(ClientError::invalid_response(
                    &location,
                    format!("upload accepted {offset} bytes of {size}"),
                ));
            }
            let len = usize::try_from(size - offset)
                .unwrap_or(usize::MAX)
                .min(chunk);
            let piece = source.read_at(offset, len).await?;
            if (piece.len() as u64) < (len as u64) {
                return Err(ClientError::InvalidInput(
                    "the source changed size during the upload".into(),
                ));
            }
            match self.upload_chunk(&location, offset, piece).await {
                Ok(UploadProgress::Done(record)) => return Ok(record),
                Ok(UploadProgress::Partial { accepted, .. }) => {
                    if accepted <= offset {
                        return Err(ClientError::invalid_response(
                            &location,
                            format!("upload did not advance past byte {offset}"),
                        ));
                    }
                    offset = accepted;
                    failures = 0;
                }
                Err(e) if failures < MAX_RETRIES && retryable(&e) => {
                    failures += 1;
                    offset = self.upload_status(&location).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Transport(_) => true,
        ClientError::Status { status, .. } => *status == StatusCode::RANGE_NOT_SATISFIABLE,
        _ => false,
    }
}
