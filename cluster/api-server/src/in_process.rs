//! [`ObjectStore`] in process: the embedded default's dosfs calls the API server's core
//! directly, so requests are function calls and bodies move as `Bytes` (no HTTP, no
//! serialisation), while the REST listener serves curl and other clients on the same store.
//! Each call does what the matching REST request does ([`crate::objects`],
//! [`crate::resumable`]); the object-store contract suite checks that both agree.

use std::sync::Arc;

use async_trait::async_trait;
use dos_metadata::VersionsFrom;
use dos_protocol::{
    ByteRange, ContentHash, ListPage, ListQuery, ObjectName, VersionRecord, WriteAttributes,
};
use dos_store::{
    Content, ObjectRead, ObjectStore, PostOutcome, Received, RecordStream, StoreError, StoreResult,
    UploadBody, UploadId, UploadProgress,
};
use futures::StreamExt;

use crate::core::Core;
use crate::error::ApiError;
use crate::{objects, resumable, stream};

/// The store of this process's API server.
#[derive(Clone)]
pub struct InProcessStore {
    core: Arc<Core>,
}

impl InProcessStore {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// What a failure of the core means to a client of the store (the in-process twin of the
/// HTTP status table).
pub fn store_error(e: ApiError) -> StoreError {
    let message = e.public_message();
    match e {
        ApiError::NotFound(_) => StoreError::NotFound(message),
        ApiError::BadRequest(_)
        | ApiError::RangeNotSatisfiable { .. }
        | ApiError::MethodNotAllowed
        | ApiError::HeadersTooLarge { .. } => StoreError::Invalid(message),
        ApiError::DigestMismatch => StoreError::DigestMismatch,
        ApiError::OffsetMismatch { offset, accepted } => {
            StoreError::OffsetMismatch { offset, accepted }
        }
        ApiError::Gone(_) => StoreError::Expired,
        ApiError::Unauthorized | ApiError::Forbidden(_) => StoreError::Denied(message),
        ApiError::Conflict(_) => StoreError::Conflict(message),
        ApiError::Overloaded => StoreError::Busy(message),
        ApiError::BodyStalled { .. } | ApiError::BodyTooSlow { .. } => StoreError::Timeout(message),
        ApiError::NotEnoughServers { .. }
        | ApiError::ShardsUnavailable { .. }
        | ApiError::Unverifiable { .. }
        | ApiError::ShardWrite(_)
        | ApiError::ShardRead(_)
        | ApiError::Unavailable(_) => StoreError::Unavailable(message),
        ApiError::Metadata(m) => match m {
            dos_metadata::MetadataError::Unavailable(_) => StoreError::Unavailable(message),
            dos_metadata::MetadataError::BadRequest(_) => StoreError::Invalid(message),
            dos_metadata::MetadataError::Corrupt(_) => StoreError::Internal(message),
        },
        ApiError::Internal(_) => StoreError::Internal(message),
    }
}

fn io_error(e: std::io::Error) -> String {
    e.to_string()
}

#[async_trait]
impl ObjectStore for InProcessStore {
    async fn redundancy(&self, hash: &ContentHash) -> StoreResult<dos_protocol::Redundancy> {
        crate::check::redundancy(&self.core, hash)
            .await
            .map_err(store_error)
    }

    async fn check(&self, hash: &ContentHash) -> StoreResult<dos_protocol::CheckReport> {
        crate::check::check_hash(&self.core, hash)
            .await
            .map_err(store_error)
    }

    async fn head(&self, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord> {
        objects::resolve(&self.core, name, version)
            .await
            .map(|(rec, _)| rec)
            .map_err(store_error)
    }

    async fn get(
        &self,
        name: &ObjectName,
        version: Option<u64>,
        range: Option<ByteRange>,
    ) -> StoreResult<ObjectRead> {
        let core = &self.core;
        let (record, hash) = objects::resolve(core, name, version)
            .await
            .map_err(store_error)?;
        let range = match range {
            None => None,
            Some(r) => r
                .within(record.size)
                .map_err(|_| StoreError::Invalid("range not satisfiable".into()))?,
        };
        let content = objects::content_of(core, &hash)
            .await
            .map_err(store_error)?;
        let decoder = objects::open_read(core, &content, range)
            .await
            .map_err(store_error)?;
        let body = stream::object_bytes(core, decoder, range, record.size)
            .map(|chunk| chunk.map_err(store_error));
        Ok(ObjectRead {
            record,
            range,
            body: Box::pin(body),
        })
    }

    async fn put(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        content: Content,
    ) -> StoreResult<VersionRecord> {
        let body = content.body.map(|r| r.map_err(io_error));
        objects::put(
            &self.core,
            name,
            content.hash,
            *attrs,
            body,
            Some(content.size),
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
        match resumable::post(&self.core, name, hash, size, *attrs)
            .await
            .map_err(store_error)?
        {
            resumable::PostOutcome::Stored(v) => Ok(PostOutcome::Stored(v)),
            resumable::PostOutcome::Upload(token) => Ok(PostOutcome::Upload(UploadId(token))),
        }
    }

    async fn upload(
        &self,
        upload: &UploadId,
        offset: u64,
        len: u64,
        body: UploadBody,
    ) -> StoreResult<UploadProgress> {
        let core = &self.core;
        let token = resumable::verify(&upload.0, &core.config.secret).map_err(store_error)?;
        let body = body.map(|r| r.map_err(io_error));
        match resumable::put(core, &token, offset, Some(len), body)
            .await
            .map_err(store_error)?
        {
            resumable::PutOutcome::Partial { accepted } => Ok(UploadProgress::Partial { accepted }),
            resumable::PutOutcome::Done(v) => Ok(UploadProgress::Done(v)),
            resumable::PutOutcome::Received(_) => Err(StoreError::Invalid(
                "a streamed upload is sent by stream_upload".into(),
            )),
        }
    }

    async fn open_upload(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
    ) -> StoreResult<UploadId> {
        resumable::open(&self.core, name, *attrs)
            .await
            .map(UploadId)
            .map_err(store_error)
    }

    async fn stream_upload(&self, upload: &UploadId, body: UploadBody) -> StoreResult<Received> {
        let core = &self.core;
        let token = resumable::verify(&upload.0, &core.config.secret).map_err(store_error)?;
        if token.stage != resumable::Stage::Open {
            return Err(StoreError::Invalid(
                "only an open upload takes a streamed body".into(),
            ));
        }
        let body = body.map(|r| r.map_err(io_error));
        match resumable::put(core, &token, 0, None, body)
            .await
            .map_err(store_error)?
        {
            resumable::PutOutcome::Received(r) => Ok(Received {
                upload: UploadId(r.token),
                hash: r.hash,
                size: r.size,
            }),
            _ => Err(StoreError::Internal(
                "an open upload answered as a declared one".into(),
            )),
        }
    }

    async fn finish_upload(
        &self,
        upload: &UploadId,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> StoreResult<VersionRecord> {
        let core = &self.core;
        let token = resumable::verify(&upload.0, &core.config.secret).map_err(store_error)?;
        resumable::finish(core, &token, hash, attrs)
            .await
            .map_err(store_error)
    }

    async fn upload_status(&self, upload: &UploadId) -> StoreResult<u64> {
        let core = &self.core;
        let token = resumable::verify(&upload.0, &core.config.secret).map_err(store_error)?;
        resumable::accepted(core, &token).await.map_err(store_error)
    }

    async fn delete(&self, name: &ObjectName) -> StoreResult<VersionRecord> {
        objects::delete(&self.core, name).await.map_err(store_error)
    }

    async fn versions(&self, name: &ObjectName) -> StoreResult<RecordStream> {
        let pages = stream::version_pages(&self.core, VersionsFrom::Name(name.clone(), 0))
            .await
            .map_err(store_error)?;
        let records = pages.flat_map(|page| {
            let items: Vec<StoreResult<VersionRecord>> = match page {
                Ok(p) => p.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(store_error(e))],
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(records))
    }

    async fn changes(&self) -> StoreResult<dos_store::ChangeStream> {
        Ok(self.core.bus.changes())
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        if !(1..=10_000).contains(&query.limit) {
            return Err(StoreError::Invalid("limit must be 1 to 10000".into()));
        }
        self.core
            .meta
            .list(query)
            .await
            .map_err(|e| store_error(e.into()))
    }

    async fn restore(&self, name: &ObjectName, version: u64) -> StoreResult<VersionRecord> {
        objects::restore(&self.core, name, version)
            .await
            .map_err(store_error)
    }
}
