//! Uploads that overlap the writes. A file written in order from its first byte (a `cp`, a
//! download, `tar x` of a large member) starts streaming to the store once it passes
//! [`FsConfig::stream_after`](super::FsConfig) bytes: one upload of unknown content
//! ([`ObjectStore::open_upload`]) whose single body follows the writes, reading each range
//! back from the staging file just after it was written (from the page cache) and hashing
//! it on the way. The last close then sends only the tail, gives the store its own digest
//! and waits for the version to be durable ([`ObjectStore::finish_upload`]).
//!
//! Anything else (a write elsewhere than at the end, a truncate, a rename while open, a
//! failed or stalled stream) cancels the stream; the close then uploads the staging file
//! whole, as for random writes. Cancelling ends the body with an error, so the store drops
//! what it received.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dos_protocol::{ContentHash, ObjectName, WriteAttributes};
use dos_store::{ObjectStore, Received, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::lock;
use crate::error::{FsError, FsResult};

/// Bytes read back from the staging file and sent at a time.
const CHUNK: u64 = 1 << 20;

/// How far the writes are, as the stream's body sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Feed {
    /// Bytes written from offset 0 without a gap.
    written: u64,
    /// The size the content ends at (set by the close that finishes the stream).
    end: Option<u64>,
    cancelled: bool,
}

/// What a finished stream sent: the store's answer and this side's own digest.
pub(crate) struct Streamed {
    pub received: Received,
    pub hash: ContentHash,
}

/// Counters of streamed uploads, for `.dosfs/stats`.
#[derive(Default)]
pub(crate) struct StreamStats {
    pub started: std::sync::atomic::AtomicU64,
    pub finished: std::sync::atomic::AtomicU64,
    pub cancelled: std::sync::atomic::AtomicU64,
    /// Bytes sent by streams since the mount began.
    pub bytes: std::sync::atomic::AtomicU64,
}

/// One upload in flight beside the writes of a staged file.
pub(crate) struct Streaming {
    /// The name it was opened for; a rename while open makes the close upload whole.
    pub path: String,
    feed: watch::Sender<Feed>,
    task: Option<tokio::task::JoinHandle<FsResult<Streamed>>>,
    /// One of the mount's stream slots, held while the stream lives.
    _slot: OwnedSemaphorePermit,
}

impl Streaming {
    /// Opens the upload and starts its body, which reads `file` from offset 0 as far as
    /// `written` and then follows [`wrote`](Self::wrote).
    pub fn start(
        store: Arc<dyn ObjectStore>,
        name: ObjectName,
        attrs: WriteAttributes,
        file: File,
        written: u64,
        slot: OwnedSemaphorePermit,
        stats: Arc<StreamStats>,
    ) -> Self {
        let (feed, watching) = watch::channel(Feed {
            written,
            ..Feed::default()
        });
        let digest: Arc<Mutex<Option<ContentHash>>> = Arc::default();
        let body = body(Arc::new(file), watching, digest.clone(), stats.clone());
        stats
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = name.as_str().to_string();
        let task = tokio::spawn(async move {
            let upload = store.open_upload(&name, &attrs).await?;
            let received = store.stream_upload(&upload, Box::pin(body)).await?;
            let hash = lock(&digest).take().ok_or_else(|| {
                FsError::Store(StoreError::Internal(
                    "the stream ended without its digest".into(),
                ))
            })?;
            Ok(Streamed { received, hash })
        });
        Self {
            path,
            feed,
            task: Some(task),
            _slot: slot,
        }
    }

    /// The writes reached `written` bytes from offset 0.
    pub fn wrote(&self, written: u64) {
        self.feed.send_modify(|f| f.written = written);
    }

    /// Ends the body at `size` bytes and waits for the store to have received all of it.
    pub async fn finish(mut self, size: u64) -> FsResult<Streamed> {
        self.feed.send_modify(|f| {
            f.written = size;
            f.end = Some(size);
        });
        let task = self.task.take().ok_or_else(|| {
            FsError::Local(std::io::Error::other("the stream was finished already"))
        })?;
        let streamed = task
            .await
            .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
        if streamed.received.size != size {
            return Err(FsError::Store(StoreError::Changed(format!(
                "the store received {} of {size} bytes",
                streamed.received.size
            ))));
        }
        Ok(streamed)
    }
}

impl Drop for Streaming {
    /// A stream not finished is cancelled: its body ends with an error, so the store drops
    /// what it received (the task is left to see that answer and end).
    fn drop(&mut self) {
        if self.task.is_some() {
            self.feed.send_modify(|f| f.cancelled = true);
        }
    }
}

/// The body of a stream: the staging file's bytes as the writes make them, hashed on the
/// way. At the end, the digest goes to `digest`.
fn body(
    file: Arc<File>,
    feed: watch::Receiver<Feed>,
    digest: Arc<Mutex<Option<ContentHash>>>,
    stats: Arc<StreamStats>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    struct State {
        file: Arc<File>,
        feed: watch::Receiver<Feed>,
        pos: u64,
        hasher: Option<Sha256>,
        digest: Arc<Mutex<Option<ContentHash>>>,
        stats: Arc<StreamStats>,
    }
    let state = State {
        file,
        feed,
        pos: 0,
        hasher: Some(Sha256::new()),
        digest,
        stats,
    };
    futures::stream::unfold(state, |mut st| async move {
        // `None` once the body ended (or failed).
        let mut hasher = st.hasher.take()?;
        loop {
            let now = *st.feed.borrow_and_update();
            if now.cancelled {
                st.stats
                    .cancelled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let e = std::io::Error::other("the file was changed other than by appending");
                return Some((Err(e), st));
            }
            if st.pos < now.written {
                let len = (now.written - st.pos).min(CHUNK);
                let (file, pos) = (st.file.clone(), st.pos);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, pos)?;
                    hasher.update(&buf);
                    Ok::<_, std::io::Error>((buf, hasher))
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                return match read {
                    Ok((buf, h)) => {
                        st.pos += len;
                        st.hasher = Some(h);
                        st.stats
                            .bytes
                            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                        Some((Ok(Bytes::from(buf)), st))
                    }
                    Err(e) => Some((Err(e), st)),
                };
            }
            if now.end.is_some_and(|e| e < st.pos) {
                let e = std::io::Error::other("the file shrank while it was streamed");
                return Some((Err(e), st));
            }
            if now.end == Some(st.pos) {
                *lock(&st.digest) = Some(ContentHash(hasher.finalize().into()));
                st.stats
                    .finished
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            if st.feed.changed().await.is_err() {
                // The file's side is gone without finishing: end with an error.
                let e = std::io::Error::other("the file was closed without finishing its upload");
                return Some((Err(e), st));
            }
        }
    })
}
