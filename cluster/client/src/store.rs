//! [`ObjectStore`] over HTTP: a remote cluster through one API server's REST interface.
//! Every failure becomes a [`StoreError`] in one table ([`store_error`]), by the kind the
//! server names in its `x-dos-error` header (or, from servers that send none, the status).

use async_trait::async_trait;
use dos_protocol::{
    ByteRange, ContentHash, ListPage, ListQuery, ObjectName, VersionRecord, WriteAttributes,
    error_kind as k,
};
use dos_store::{
    Content, ObjectRead, ObjectStore, PostOutcome, Received, RecordStream, StoreError, StoreResult,
    UploadBody, UploadId, UploadProgress,
};
use futures::StreamExt;
use reqwest::StatusCode;

use crate::{Client, ClientError};

/// PUT bodies up to this size are held in memory, so that they can be sent again.
const REPLAYABLE_PUT: u64 = 1 << 20;

/// The `size` bytes of `body` (a small PUT's), in one buffer; an error if it yields more.
async fn collect_body(mut body: UploadBody, size: u64) -> StoreResult<bytes::Bytes> {
    let mut chunks = Vec::new();
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StoreError::Invalid(format!("reading the body: {e}")))?;
        len += chunk.len() as u64;
        if len > size {
            return Err(StoreError::Invalid(format!(
                "the body is longer than its announced {size} bytes"
            )));
        }
        chunks.push(chunk);
    }
    if len != size {
        return Err(StoreError::Invalid(format!(
            "the body is {len} bytes, not its announced {size}"
        )));
    }
    Ok(match chunks.len() {
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

/// What a client error means to a user of the store.
pub fn store_error(e: ClientError) -> StoreError {
    let line = e.to_string();
    match e {
        ClientError::Status {
            status,
            message,
            kind,
            accepted,
            ..
        } => match kind.as_deref() {
            Some(k::NOT_FOUND) => StoreError::NotFound(message),
            Some(k::INVALID) => StoreError::Invalid(message),
            Some(k::DIGEST_MISMATCH) => StoreError::DigestMismatch,
            Some(k::OFFSET_MISMATCH) => StoreError::OffsetMismatch {
                offset: 0,
                accepted: accepted.unwrap_or(0),
            },
            Some(k::EXPIRED) => StoreError::Expired,
            Some(k::DENIED) => StoreError::Denied(message),
            Some(k::CONFLICT) => StoreError::Conflict(message),
            Some(k::BUSY) => StoreError::Busy(message),
            Some(k::UNAVAILABLE) => StoreError::Unavailable(message),
            Some(k::TIMEOUT) => StoreError::Timeout(message),
            Some(_) => StoreError::Internal(message),
            None => match status {
                StatusCode::NOT_FOUND => StoreError::NotFound(message),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => StoreError::Denied(message),
                StatusCode::CONFLICT => StoreError::Conflict(message),
                StatusCode::GONE => StoreError::Expired,
                StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
                    StoreError::Timeout(message)
                }
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => {
                    StoreError::Unavailable(message)
                }
                s if s.is_client_error() => StoreError::Invalid(message),
                _ => StoreError::Internal(message),
            },
        },
        ClientError::Transport(t) if t.is_timeout() => StoreError::Timeout(line),
        ClientError::Transport(_) => StoreError::Transport(line),
        ClientError::InvalidInput(_) | ClientError::InvalidName { .. } => StoreError::Invalid(line),
        ClientError::InvalidResponse { .. } | ClientError::Integrity { .. } => {
            StoreError::Integrity(line)
        }
        ClientError::Io { .. } => StoreError::Internal(line),
    }
}

fn range_header(r: ByteRange) -> String {
    format!("bytes={}-{}", r.start, r.end)
}

#[async_trait]
impl ObjectStore for Client {
    async fn head(&self, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord> {
        Client::head(self, name.as_str(), version)
            .await
            .map(|m| m.to_record())
            .map_err(store_error)
    }

    async fn get(
        &self,
        name: &ObjectName,
        version: Option<u64>,
        range: Option<ByteRange>,
    ) -> StoreResult<ObjectRead> {
        let header = range.map(range_header);
        let stream = self
            .get_stream(name.as_str(), version, header.as_deref())
            .await
            .map_err(|e| match e.status() {
                Some(StatusCode::RANGE_NOT_SATISFIABLE) => {
                    StoreError::Invalid("range not satisfiable".into())
                }
                _ => store_error(e),
            })?;
        let (record, range) = (stream.meta.to_record(), stream.meta.range);
        Ok(ObjectRead {
            record,
            range,
            body: Box::pin(stream.map(|chunk| chunk.map_err(store_error))),
        })
    }

    async fn put(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        content: Content,
    ) -> StoreResult<VersionRecord> {
        if content.size <= REPLAYABLE_PUT {
            // Small enough to hold: a body in memory is sent again to another API server
            // when the first one is lost (a stream goes once).
            let bytes = collect_body(content.body, content.size).await?;
            return self
                .put_hashed(name.as_str(), content.hash, bytes, attrs)
                .await
                .map_err(store_error);
        }
        self.put_stream(
            name.as_str(),
            content.hash,
            Some(content.size),
            content.body,
            attrs,
        )
        .await
        .map_err(store_error)
    }

    async fn post(
        &self,
        name: &ObjectName,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
    ) -> StoreResult<PostOutcome> {
        match Client::post(self, name.as_str(), hash, size, attrs)
            .await
            .map_err(store_error)?
        {
            crate::PostOutcome::Created(v) => Ok(PostOutcome::Stored(v)),
            crate::PostOutcome::Upload(location) => Ok(PostOutcome::Upload(UploadId(location))),
        }
    }

    async fn upload(
        &self,
        upload: &UploadId,
        offset: u64,
        len: u64,
        body: UploadBody,
    ) -> StoreResult<UploadProgress> {
        match self
            .upload_stream(&upload.0, offset, len, body)
            .await
            .map_err(|e| match store_error(e) {
                StoreError::OffsetMismatch { accepted, .. } => {
                    StoreError::OffsetMismatch { offset, accepted }
                }
                other => other,
            })? {
            crate::UploadProgress::Partial { accepted, .. } => {
                Ok(UploadProgress::Partial { accepted })
            }
            crate::UploadProgress::Done(v) => Ok(UploadProgress::Done(v)),
        }
    }

    async fn upload_status(&self, upload: &UploadId) -> StoreResult<u64> {
        Client::upload_status(self, &upload.0)
            .await
            .map_err(store_error)
    }

    async fn open_upload(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
    ) -> StoreResult<UploadId> {
        Client::open_upload(self, name.as_str(), attrs)
            .await
            .map(UploadId)
            .map_err(store_error)
    }

    async fn stream_upload(&self, upload: &UploadId, body: UploadBody) -> StoreResult<Received> {
        let r = Client::stream_upload(self, &upload.0, body)
            .await
            .map_err(store_error)?;
        Ok(Received {
            upload: UploadId(r.location),
            hash: r.hash,
            size: r.size,
        })
    }

    async fn finish_upload(
        &self,
        upload: &UploadId,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> StoreResult<VersionRecord> {
        Client::finish_upload(self, &upload.0, hash, attrs)
            .await
            .map_err(store_error)
    }

    async fn delete(&self, name: &ObjectName) -> StoreResult<VersionRecord> {
        Client::delete(self, name.as_str())
            .await
            .map_err(store_error)
    }

    async fn versions(&self, name: &ObjectName) -> StoreResult<RecordStream> {
        let records = self
            .versions_stream(name.as_str())
            .await
            .map_err(store_error)?;
        Ok(Box::pin(records.map(|r| r.map_err(store_error))))
    }

    async fn redundancy(&self, hash: &ContentHash) -> StoreResult<dos_protocol::Redundancy> {
        Client::redundancy(self, hash).await.map_err(store_error)
    }

    async fn check(&self, hash: &ContentHash) -> StoreResult<dos_protocol::CheckReport> {
        Client::check(self, hash).await.map_err(store_error)
    }

    async fn changes(&self) -> StoreResult<dos_store::ChangeStream> {
        Client::changes(self).await.map_err(store_error)
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        let delimiter = query.delimiter.map(String::from);
        Client::list_at(
            self,
            &query.prefix,
            delimiter.as_deref(),
            query.cursor.as_deref(),
            Some(query.limit),
            query.at,
        )
        .await
        .map_err(store_error)
    }
}
