//! What a data server does for the API server, apart from how the request arrived: the HTTP
//! adapter ([`crate::http`]) and the in-process transport ([`crate::local`]) both call these.
//! Store calls block (file I/O, compression, checksums), so they run on blocking threads.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dos_protocol::shard::TempStatus;
use dos_protocol::{ContentHash, PIECE_SIZE};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::store::format::FormatError;
use crate::store::{ShardStore, ShardStoreError};

/// A shard upload body that sends nothing for this long is cut off.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a write of pieces failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Store(#[from] ShardStoreError),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("the body goes past the declared length")]
    TooLong,
    #[error("the request body stalled: nothing arrived for {} s", .0.as_secs())]
    Stalled(Duration),
    #[error("blocking task failed: {0}")]
    Task(String),
}

/// Runs blocking store work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ShardStoreError> + Send + 'static,
) -> Result<T, ShardStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ShardStoreError::Io(std::io::Error::other(format!("blocking task: {e}"))))?
}

/// Writes the bytes of `body` into upload `id` from raw offset `offset`, piece by piece:
/// every whole piece, and the short last piece of the shard; a trailing partial piece that
/// does not end the shard is dropped (the sender resends it). A body that sends nothing for
/// `idle` is cut off; what it sent stays in the upload.
pub async fn write_stream<S, E>(
    store: &Arc<ShardStore>,
    id: &str,
    offset: u64,
    body: S,
    idle: Duration,
) -> Result<TempStatus, WriteError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let (s, id_owned) = (store.clone(), id.to_string());
    let mut status = blocking(move || s.temp_status(&id_owned)).await?;
    if offset > status.received || !offset.is_multiple_of(PIECE_SIZE as u64) {
        return Err(ShardStoreError::OffsetMismatch {
            offset,
            length: status.received,
        }
        .into());
    }
    let mut offset = offset;
    let mut buf = BytesMut::with_capacity(PIECE_SIZE);
    let mut body = body;
    loop {
        let chunk = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| WriteError::Stalled(idle))?;
        let done = chunk.is_none();
        let mut direct = None;
        if let Some(chunk) = chunk {
            let chunk = chunk.map_err(|e| WriteError::Body(e.to_string()))?;
            // A whole piece on its own (the in-process transport sends them so): no copy.
            if buf.is_empty() && chunk.len() == want(status, offset, false, 0) {
                direct = Some(chunk);
            } else {
                buf.extend_from_slice(&chunk);
            }
        }
        loop {
            let piece = match direct.take() {
                Some(p) => p,
                None => {
                    let n = want(status, offset, done, buf.len());
                    if n == 0 || buf.len() < n {
                        break;
                    }
                    buf.split_to(n).freeze()
                }
            };
            let (s, id_owned) = (store.clone(), id.to_string());
            status = blocking(move || s.write_piece(&id_owned, offset, &piece)).await?;
            offset = status.received;
        }
        if status.length == Some(offset) && !buf.is_empty() {
            return Err(WriteError::TooLong);
        }
        if done {
            return Ok(status);
        }
    }
}

/// Bytes of the next piece to write at `offset`: a whole piece, the rest of a shard of known
/// length, or (length unknown) whatever is left when the body ended.
fn want(status: TempStatus, offset: u64, done: bool, buffered: usize) -> usize {
    match status.length {
        Some(l) => l.saturating_sub(offset).min(PIECE_SIZE as u64) as usize,
        None if done && buffered > 0 => buffered.min(PIECE_SIZE),
        None => PIECE_SIZE,
    }
}

/// Where a read's pieces come from.
#[derive(Debug, Clone)]
pub enum Source {
    Shard { hash: ContentHash, shard: u8 },
    Temp { id: String },
}

/// A verified byte stream of a shard or upload.
pub type PieceBody = ReceiverStream<Result<Bytes, FormatError>>;

/// An opened read: raw bytes `[start, end)` of a `total`-byte shard or upload.
pub struct ReadStream {
    pub total: u64,
    pub start: u64,
    pub end: u64,
    pub body: PieceBody,
}

type PieceFn = Box<dyn FnMut(usize) -> Result<Vec<u8>, FormatError> + Send>;

/// A shard or upload opened for verified reads of its pieces.
pub struct Opened {
    /// Raw length of the shard (of what the upload received).
    pub total: u64,
    piece: PieceFn,
}

/// Opens `source`, checking a committed shard's header and index (a corrupt one is
/// quarantined).
pub async fn open(store: &Arc<ShardStore>, source: Source) -> Result<Opened, ShardStoreError> {
    let s = store.clone();
    blocking(move || match source {
        Source::Shard { hash, shard } => {
            let mut reader = s.open_shard(&hash, shard)?;
            s.count(|c| &c.read);
            let total = reader.len();
            let store = s.clone();
            let piece = move |k| {
                reader.piece(k).inspect_err(|e| {
                    if let FormatError::Corrupt(m) = e {
                        store.quarantine(&hash, shard, m);
                    }
                })
            };
            Ok(Opened {
                total,
                piece: Box::new(piece),
            })
        }
        Source::Temp { id } => {
            let total = s.temp_status(&id)?.received;
            let store = s.clone();
            let piece = move |k| {
                store.read_temp_piece(&id, k).map_err(|e| match e {
                    ShardStoreError::Io(e) => FormatError::Io(e),
                    other => FormatError::Corrupt(other.to_string()),
                })
            };
            Ok(Opened {
                total,
                piece: Box::new(piece),
            })
        }
    })
    .await
}

impl Opened {
    /// Streams raw bytes `[start, end)` (`end` beyond the data is cut to it). The first piece
    /// is read and verified before this returns, so a shard that is bad from the start fails
    /// here; a piece that fails later ends the stream with its error (the reader sees a
    /// truncated transfer, never wrong bytes). The stream reads ahead a few pieces.
    pub async fn stream(self, start: u64, end: u64) -> Result<ReadStream, ShardStoreError> {
        let Opened { total, mut piece } = self;
        let end = end.min(total);
        if start >= end {
            let (_, rx) = mpsc::channel(1);
            return Ok(ReadStream {
                total,
                start,
                end: start,
                body: ReceiverStream::new(rx),
            });
        }
        let (first_tx, first_rx) = oneshot::channel::<Result<(), FormatError>>();
        let (tx, rx) = mpsc::channel::<Result<Bytes, FormatError>>(4);
        tokio::task::spawn_blocking(move || {
            let mut first_tx = Some(first_tx);
            let mut pos = start;
            while pos < end {
                let k = (pos / PIECE_SIZE as u64) as usize;
                let piece_start = k as u64 * PIECE_SIZE as u64;
                let result = piece(k).and_then(|bytes| {
                    let from = (pos - piece_start) as usize;
                    let to = ((end - piece_start) as usize).min(bytes.len());
                    if from >= to {
                        return Err(FormatError::Corrupt(format!("piece {k} is short")));
                    }
                    Ok(Bytes::from(bytes).slice(from..to))
                });
                match result {
                    Ok(bytes) => {
                        pos += bytes.len() as u64;
                        if let Some(f) = first_tx.take() {
                            // The opener may be gone (its client left): nothing to do then.
                            let _ = f.send(Ok(()));
                        }
                        if tx.blocking_send(Ok(bytes)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, piece = k, "shard read failed");
                        match first_tx.take() {
                            Some(f) => {
                                let _ = f.send(Err(e));
                            }
                            None => {
                                let _ = tx.blocking_send(Err(e));
                            }
                        }
                        return;
                    }
                }
            }
        });
        match first_rx.await {
            Ok(Ok(())) => Ok(ReadStream {
                total,
                start,
                end,
                body: ReceiverStream::new(rx),
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ShardStoreError::Io(std::io::Error::other(
                "shard reader stopped",
            ))),
        }
    }
}
