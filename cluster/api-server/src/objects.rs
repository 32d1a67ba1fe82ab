//! What each object request does, apart from HTTP: the handlers in `http` parse and format,
//! these functions decide.

use bytes::Bytes;
use dos_metadata::{ContentRecord, NewVersion};
use dos_protocol::{
    BLOCK_SIZE, ByteRange, ContentHash, ObjectName, VersionRecord, WriteAttributes, block_count,
    now_ns, shard_len,
};
use futures::Stream;
use sha2::Digest as _;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::pipeline::read::Decoder;
use crate::pipeline::write::{
    ShardWriters, abort_uploads, commit_uploads, create_uploads, encode_stream, hash_stream,
};

pub fn new_version(hash: ContentHash, size: u64, attrs: &WriteAttributes) -> NewVersion {
    NewVersion {
        size,
        hash: Some(hash),
        mtime_ns: attrs.mtime_ns.unwrap_or_else(now_ns),
        mode: attrs.mode.unwrap_or_else(|| attrs.kind.default_mode()),
        kind: attrs.kind,
    }
}

/// `PUT /objects/NAME`: stores the body as a new version once it is durable.
pub async fn put<S, E>(
    core: &Core,
    name: &ObjectName,
    digest: ContentHash,
    attrs: WriteAttributes,
    body: S,
    content_length: Option<u64>,
) -> ApiResult<VersionRecord>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    if let Some(existing) = core.meta.touch_content(&digest).await? {
        // Known content: the bytes are still read and hashed (proof of possession), but no
        // shard is written.
        let (hash, size) = hash_stream(body, core.config.body_idle_timeout).await?;
        if hash != digest || size != existing.size {
            return Err(digest_mismatch());
        }
        // Touched again now that the body is in, so that the orphan collector's grace period
        // need not cover a slow upload.
        if core.meta.touch_content(&digest).await?.is_none() {
            return Err(ApiError::Unavailable(
                "the stored content was collected while the body arrived; retry".into(),
            ));
        }
        return Ok(core
            .meta
            .add_version(name, new_version(hash, size, &attrs))
            .await?);
    }
    let servers = core.choose_servers()?;
    let numbered: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u8, s.clone()))
        .collect();
    let uploads = create_uploads(
        &core.shards,
        &digest,
        &numbered,
        content_length.map(shard_len),
    )
    .await?;
    let stored = async {
        let writers = ShardWriters::open(&core.shards, &uploads, 0);
        let (encoded, writers) = encode_stream(
            &core.codec,
            body,
            writers,
            sha2::Sha256::new(),
            0,
            content_length,
            core.config.body_idle_timeout,
        )
        .await?;
        writers.finish().await?;
        let hash = ContentHash(encoded.hasher.finalize().into());
        if hash != digest {
            return Err(digest_mismatch());
        }
        commit_uploads(&core.shards, &uploads, shard_len(encoded.accepted)).await?;
        Ok(encoded.accepted)
    }
    .await;
    let size = match stored {
        Ok(size) => size,
        Err(e) => {
            abort_uploads(&core.shards, &uploads).await;
            return Err(e);
        }
    };
    record_content(core, digest, size, &servers).await?;
    Ok(core
        .meta
        .add_version(name, new_version(digest, size, &attrs))
        .await?)
}

pub fn digest_mismatch() -> ApiError {
    ApiError::BadRequest("the body does not match its Digest; nothing was stored".into())
}

pub async fn record_content(
    core: &Core,
    hash: ContentHash,
    size: u64,
    servers: &[dos_protocol::ServerInfo],
) -> ApiResult<()> {
    core.meta
        .put_content(&ContentRecord {
            hash,
            size,
            placement: servers.iter().map(|s| s.id.clone()).collect(),
        })
        .await?;
    Ok(())
}

/// Resolves `name` at `version` (latest when `None`) to a live version, or 404.
pub async fn resolve(
    core: &Core,
    name: &ObjectName,
    version: Option<u64>,
) -> ApiResult<(VersionRecord, ContentHash)> {
    let record = core
        .meta
        .get_version(name, version)
        .await?
        .ok_or_else(|| match version {
            Some(v) => ApiError::NotFound(format!("{name} has no version {v}")),
            None => ApiError::NotFound(format!("no object named {name}")),
        })?;
    match record.hash {
        Some(h) => Ok((record, h)),
        None => Err(ApiError::NotFound(format!(
            "{name} version {} is a delete marker",
            record.version
        ))),
    }
}

/// The content record of `hash`, or a 500 if metadata lost it.
pub async fn content_of(core: &Core, hash: &ContentHash) -> ApiResult<ContentRecord> {
    core.meta
        .get_content(hash)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("no placement recorded for content {hash}")))
}

/// Opens a decoder for `range` of the content (all of it when `None`). Fails before any byte
/// when four shards cannot be opened.
pub async fn open_read(
    core: &Core,
    content: &ContentRecord,
    range: Option<ByteRange>,
) -> ApiResult<Decoder> {
    let (first, end) = match range {
        Some(r) => (r.start / BLOCK_SIZE as u64, r.end / BLOCK_SIZE as u64 + 1),
        None => (0, block_count(content.size)),
    };
    let holders = core.holders(content).await;
    let decoder = Decoder::open(
        core.shards.clone(),
        core.codec.clone(),
        content.hash,
        content.size,
        holders,
        first,
        end,
    )
    .await;
    match decoder {
        Ok(d) => {
            if !d.faults().is_empty() {
                core.repair.request(content.hash);
            }
            Ok(d)
        }
        Err(e) => {
            core.repair.request(content.hash);
            Err(e)
        }
    }
}

/// `DELETE /objects/NAME`: a delete marker; 404 when there is nothing to delete.
pub async fn delete(core: &Core, name: &ObjectName) -> ApiResult<VersionRecord> {
    match core.meta.get_version(name, None).await? {
        None => return Err(ApiError::NotFound(format!("no object named {name}"))),
        Some(v) if v.is_delete_marker() => {
            return Err(ApiError::NotFound(format!("{name} is already deleted")));
        }
        Some(_) => {}
    }
    Ok(core
        .meta
        .add_version(name, NewVersion::delete_marker(now_ns()))
        .await?)
}
