//! Bodies that flow out of the API server, apart from HTTP: an object's bytes (a decoder run
//! on its own task, trimmed to the range asked for), the same gzipped, and version records
//! page by page.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use dos_metadata::VersionsFrom;
use dos_protocol::{BLOCK_SIZE, ByteRange, VersionRecord};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::pipeline::read::{Decoder, RawBlock};

/// Chunks of a body; an error ends it (the client sees a truncated transfer, never wrong
/// bytes).
pub type Chunks<E> = ReceiverStream<Result<Bytes, E>>;

/// Runs the decoder on its own task, sending exactly the bytes of `range` (all of a `size`
/// byte object when `None`). Each block is hashed (on a blocking thread) while the next one
/// is read, and sent only once its hash matches the recorded one (or it was rebuilt from
/// shards that do), so checking costs no time on the read's path. Shards found bad on the
/// way are queued for repair at the end. The task stops as soon as the receiver is dropped.
pub fn object_bytes(
    core: &Arc<Core>,
    mut decoder: Decoder,
    range: Option<ByteRange>,
    size: u64,
) -> Chunks<ApiError> {
    let (tx, rx) = mpsc::channel(16);
    let (start, end) = range.map_or((0, size), |r| (r.start, r.end + 1));
    let repairs = core.repairs.clone();
    tokio::spawn(dos_transport::request_id::carry(async move {
        let mut out = Trimmed {
            tx,
            block_start: start / BLOCK_SIZE as u64 * BLOCK_SIZE as u64,
            start,
            end,
        };
        let mut pending: Option<(RawBlock, Hashing)> = None;
        loop {
            // The next block is read while the one before it is hashed.
            let hashed = async {
                match &mut pending {
                    Some((_, h)) => Some(h.await),
                    None => None,
                }
            };
            let (next, hashed) = tokio::join!(decoder.next_raw(), hashed);
            if let Some((raw, _)) = pending.take() {
                let right = match hashed {
                    Some(Ok(right)) => right,
                    Some(Err(e)) => {
                        out.fail(ApiError::Internal(format!("hasher failed: {e}")))
                            .await;
                        break;
                    }
                    None => true,
                };
                match decoder.checked(raw, right).await {
                    Ok(data) => {
                        if !out.send(data).await {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(hash = %decoder.hash(), error = %e, "read failed mid-stream");
                        out.fail(e).await;
                        break;
                    }
                }
            }
            match next {
                Ok(Some(raw)) if raw.expected.is_some() => {
                    let (data, want) = (raw.data.clone(), raw.expected);
                    let hashing =
                        tokio::task::spawn_blocking(move || want.is_none_or(|w| w.matches(&data)));
                    pending = Some((raw, hashing));
                }
                Ok(Some(raw)) => {
                    // Nothing recorded to check it against (content stored before block
                    // hashes were kept).
                    if !out.send(raw.data).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(hash = %decoder.hash(), error = %e, "read failed mid-stream");
                    out.fail(e).await;
                    break;
                }
            }
        }
        if decoder.degraded() {
            metrics::counter!(crate::metrics::DEGRADED_READS).increment(1);
            repairs.request_with(decoder.hash(), decoder.wrong_shards());
        }
    }));
    ReceiverStream::new(rx)
}

/// Whether a block has its recorded hash, being worked out on a blocking thread.
type Hashing = tokio::task::JoinHandle<bool>;

/// Sends the part of each block inside `[start, end)`.
struct Trimmed {
    tx: mpsc::Sender<Result<Bytes, ApiError>>,
    block_start: u64,
    start: u64,
    end: u64,
}

impl Trimmed {
    /// Sends what of `segments` (the next block) the range holds; `false` once the range is
    /// complete or the receiver is gone.
    async fn send(&mut self, segments: Vec<Bytes>) -> bool {
        for seg in segments {
            let seg_end = self.block_start + seg.len() as u64;
            let from = self
                .start
                .saturating_sub(self.block_start)
                .min(seg.len() as u64) as usize;
            let to =
                (self.end.min(seg_end).saturating_sub(self.block_start) as usize).min(seg.len());
            self.block_start = seg_end;
            if from < to && self.tx.send(Ok(seg.slice(from..to))).await.is_err() {
                return false;
            }
            if seg_end >= self.end {
                return false;
            }
        }
        true
    }

    /// Ends the body with an error (the client sees a cut-off transfer, never wrong bytes).
    async fn fail(&self, e: ApiError) {
        // The receiver may be gone already; the body ends either way.
        let _ = self.tx.send(Err(e)).await;
    }
}

/// Gzips a byte stream on a blocking thread.
pub fn gzip<S>(input: S) -> Chunks<std::io::Error>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Every send below may find the receiver gone (the client left): then stop quietly.
        let mut input = input;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        while let Some(chunk) = runtime.block_on(input.next()) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if let Err(e) = gz.write_all(&chunk) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            let out = std::mem::take(gz.get_mut());
            if !out.is_empty() && tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                return;
            }
        }
        match gz.finish() {
            Ok(rest) => {
                let _ = tx.blocking_send(Ok(Bytes::from(rest)));
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Versions per metadata request.
const PAGE: usize = 1000;

/// The versions `from` designates, as pages of records read one after the other (never all
/// at once). The first page is read before this returns, so a metadata failure is an error
/// here rather than a broken body.
pub async fn version_pages(
    core: &Arc<Core>,
    from: VersionsFrom,
) -> ApiResult<impl Stream<Item = ApiResult<Vec<VersionRecord>>> + Send + 'static> {
    let first = core.meta.list_versions(&from, PAGE).await?;
    let state = (core.clone(), from, Some(first), false);
    Ok(futures::stream::unfold(
        state,
        |(core, from, page, done)| async move {
            if done {
                return None;
            }
            let page = match page {
                Some(p) => p,
                None => match core.meta.list_versions(&from, PAGE).await {
                    Ok(p) => p,
                    Err(e) => return Some((Err(e.into()), (core, from, None, true))),
                },
            };
            let last = page.last()?.clone();
            let next = match &from {
                VersionsFrom::Name(n, _) => VersionsFrom::Name(n.clone(), last.version),
                VersionsFrom::All(_) => VersionsFrom::All(Some((last.name.clone(), last.version))),
            };
            let more = page.len() == PAGE;
            Some((Ok(page), (core, next, None, !more)))
        },
    ))
}
