//! What each object request does, apart from how it arrived: the HTTP handlers and the
//! in-process store both parse their input and call these.

use bytes::Bytes;
use dos_metadata::{ContentRecord, NewVersion};
use dos_protocol::{
    BLOCK_SIZE, BlockHashes, ByteRange, ContentHash, ObjectName, ServerInfo, VersionRecord,
    WriteAttributes, block_count, now_ns, shard_len,
};
use futures::Stream;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::pipeline::read::{Decoder, ReadPlan};
use crate::pipeline::write::{
    BodyLimits, ContentDigest, Deadlines, encode_stream, hash_stream, store_content,
};
use crate::placement;

/// The version `attrs` describe, of content `hash` of `size` bytes; a FIFO, socket or device
/// node with content is refused (they are names with attributes only).
pub fn new_version(hash: ContentHash, size: u64, attrs: &WriteAttributes) -> ApiResult<NewVersion> {
    if attrs.kind.is_special() && size != 0 {
        return Err(ApiError::BadRequest(format!(
            "a {} version holds no content ({size} bytes sent)",
            attrs.kind.as_str()
        )));
    }
    Ok(NewVersion {
        size,
        hash: Some(hash),
        mtime_ns: attrs.mtime_ns.unwrap_or_else(now_ns),
        mode: attrs.mode.unwrap_or_else(|| attrs.kind.default_mode()),
        kind: attrs.kind,
        posix: attrs.posix,
        ctime_ns: now_ns(),
    })
}

/// Bodies up to this size are read whole before anything is written for them.
const SMALL_BODY: u64 = 1 << 20;

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
    if attrs.kind.is_special() && digest != ContentHash::of(b"") {
        // Refused before any byte is stored (the version would be refused after).
        new_version(digest, 1, &attrs)?;
    }
    // A small body arrives at once: a read now and one touch once the body is in (one
    // metadata write fewer); a large one is touched first, so that the orphan collector
    // keeps the content while the body streams.
    let known = if content_length.is_some_and(|l| l <= SMALL_BODY) {
        core.meta.get_content(&digest).await?
    } else {
        core.meta.touch_content(&digest).await?
    };
    if let Some(existing) = known {
        // Known content: the bytes are still read and hashed (proof of possession), but no
        // shard is written.
        let (hash, size) = hash_stream(body, BodyLimits::of(core)).await?;
        if hash != digest || size != existing.size {
            return Err(ApiError::DigestMismatch);
        }
        // Touched again now that the body is in (in the version's transaction), so that the
        // orphan collector's grace period need not cover a slow upload.
        let rec = core
            .meta
            .add_known_version(name, new_version(digest, size, &attrs)?)
            .await?
            .ok_or_else(|| {
                ApiError::Unavailable(
                    "the stored content was collected while the body arrived; retry".into(),
                )
            })?;
        made(core, &rec, &attrs).await;
        return Ok(rec);
    }
    let servers = placement::choose_servers(core)?;
    let (codec, limits) = (&core.codec, BodyLimits::of(core));
    let ((size, blocks), committed) = store_content(
        &core.shards,
        Deadlines::of(core),
        &digest,
        &servers,
        content_length.map(shard_len),
        |writers| async move {
            let (encoded, writers) = encode_stream(
                codec,
                body,
                writers,
                ContentDigest::default(),
                0,
                content_length,
                limits,
            )
            .await?;
            let size = encoded.accepted;
            let (hash, blocks) = encoded.digest.finish(size);
            if hash != digest {
                return Err(ApiError::DigestMismatch);
            }
            Ok((((size, blocks), shard_len(size)), writers))
        },
    )
    .await?;
    let placed = crate::repair::replace_lost(core, digest, size, &blocks, committed).await?;
    let stored = Stored {
        hash: digest,
        size,
        blocks,
    };
    record_new_content(core, name, stored, &placed, &attrs).await
}

/// A version of content that is stored already; the caller has just touched its record (so
/// the orphan collector keeps it).
pub async fn add_known_version(
    core: &Core,
    name: &ObjectName,
    hash: ContentHash,
    size: u64,
    attrs: &WriteAttributes,
) -> ApiResult<VersionRecord> {
    let rec = core
        .meta
        .add_version(name, new_version(hash, size, attrs)?)
        .await?;
    made(core, &rec, attrs).await;
    Ok(rec)
}

/// Version `rec` was just made: the one it supersedes goes, and every subscriber to changes
/// hears of it.
async fn made(core: &Core, rec: &VersionRecord, attrs: &WriteAttributes) {
    supersede(core, rec, attrs).await;
    published(core, rec);
}

/// Tells the bus's subscribers (mounts) of version `rec`, without making the request wait
/// for the broker; a change that cannot be published is logged (subscribers still see it
/// within their attribute TTL).
pub fn published(core: &Core, rec: &VersionRecord) {
    let (bus, change) = (core.bus.clone(), dos_protocol::Change::of(rec));
    tokio::spawn(async move {
        if let Err(e) = bus.publish_change(&change).await {
            tracing::debug!(name = %change.name, error = %e, "change not published");
        }
    });
}

/// Removes the version `attrs.supersedes` names, if it is the one right before `rec` and
/// holds the same content (else both stay: a version is never lost to a race). A failure
/// here leaves one version more in the history, and is only logged.
async fn supersede(core: &Core, rec: &VersionRecord, attrs: &WriteAttributes) {
    let Some(old) = attrs.supersedes else { return };
    if old + 1 != rec.version {
        return;
    }
    match core.meta.get_version(&rec.name, Some(old)).await {
        Ok(Some(prev)) if prev.hash.is_some() && prev.hash == rec.hash => {
            if let Err(e) = core.meta.delete_version(&rec.name, old).await {
                tracing::warn!(name = %rec.name, version = old, error = %e, "superseded version kept");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(name = %rec.name, version = old, error = %e, "superseded version kept")
        }
    }
}

/// Content whose shards were just committed: its hash, size and block hashes.
#[derive(Debug, Clone)]
pub struct Stored {
    pub hash: ContentHash,
    pub size: u64,
    pub blocks: BlockHashes,
}

/// Records where new content's shards went and the version that refers to it (one
/// metadata transaction where the engine has them).
pub async fn record_new_content(
    core: &Core,
    name: &ObjectName,
    stored: Stored,
    servers: &[ServerInfo],
    attrs: &WriteAttributes,
) -> ApiResult<VersionRecord> {
    let Stored { hash, size, blocks } = stored;
    let content = ContentRecord {
        hash,
        size,
        placement: servers.iter().map(|s| s.id.clone()).collect(),
        blocks,
    };
    let rec = core
        .meta
        .add_version_with_content(name, new_version(hash, size, attrs)?, &content)
        .await?;
    made(core, &rec, attrs).await;
    Ok(rec)
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
/// when four shards cannot be opened. Shards found bad are queued for repair.
pub async fn open_read(
    core: &Core,
    content: &ContentRecord,
    range: Option<ByteRange>,
) -> ApiResult<Decoder> {
    let (first_block, end_block) = match range {
        Some(r) => (r.start / BLOCK_SIZE as u64, r.end / BLOCK_SIZE as u64 + 1),
        None => (0, block_count(content.size)),
    };
    let plan = ReadPlan {
        hash: content.hash,
        size: content.size,
        holders: placement::holders(core, content).await,
        first_block,
        end_block,
        stall_timeout: core.config.shard_stall_timeout,
        blocks: content.blocks.clone(),
        health: core.health.clone(),
    };
    let decoder = Decoder::open(core.shards.clone(), core.codec.clone(), plan).await;
    match decoder {
        Ok(d) => {
            if d.degraded() {
                core.repairs.request(content.hash);
            }
            Ok(d)
        }
        Err(e) => {
            core.repairs.request(content.hash);
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
    let rec = core
        .meta
        .add_version(name, NewVersion::delete_marker(now_ns()))
        .await?;
    published(core, &rec);
    Ok(rec)
}

/// Makes version `version` of `name` its latest again: a new version with that content,
/// mode and owner, dated now. No bytes move.
pub async fn restore(core: &Core, name: &ObjectName, version: u64) -> ApiResult<VersionRecord> {
    let (old, hash) = resolve(core, name, Some(version)).await?;
    let attrs = WriteAttributes {
        kind: old.kind,
        mode: Some(old.mode),
        mtime_ns: Some(now_ns()),
        supersedes: None,
        posix: old.posix,
    };
    match core.meta.touch_content(&hash).await? {
        Some(_) => add_known_version(core, name, hash, old.size, &attrs).await,
        None => Err(ApiError::NotFound(format!(
            "the content of {name} version {version} is no longer stored"
        ))),
    }
}
