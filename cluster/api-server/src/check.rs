//! How healthy one content is, asked on demand: [`redundancy`] is the cheap check behind
//! dosfs's `user.dosfs.redundancy` (each holder checks its shard's header, index and first
//! piece, as repair does); [`check`] is the full one behind `dosfs check` and each step of
//! the scrub job (every shard read whole and verified by its data server, bad ones rebuilt,
//! the object decoded and its SHA-256 compared with its hash).

use dos_metadata::ContentRecord;
use dos_protocol::{CheckReport, ContentHash, Redundancy, TOTAL_SHARDS, shard_len};
use dos_transport::ShardError;
use sha2::Digest as _;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::placement;
use crate::placement::Holders;
use crate::probe::{Probe, probe};

/// The content record of `hash`, or 404.
async fn content(core: &Core, hash: &ContentHash) -> ApiResult<ContentRecord> {
    core.meta
        .get_content(hash)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no content {}", hash.to_hex())))
}

/// How many of the shards of `hash` answer healthy where they are recorded (or found).
/// Damage found queues a repair, as a read that met it would.
pub async fn redundancy(core: &Core, hash: &ContentHash) -> ApiResult<Redundancy> {
    let content = content(core, hash).await?;
    let total = TOTAL_SHARDS as u8;
    if content.size == 0 {
        // Empty shards cannot be probed by a ranged read; there is nothing to lose.
        return Ok(Redundancy {
            healthy: total,
            total,
            repair_queued: false,
        });
    }
    let holders = placement::holders(core, &content).await;
    let probed = quick_probe(core, hash, &holders).await;
    let healthy = probed.good.len() as u8;
    if healthy < total {
        core.repairs.request(*hash);
    }
    Ok(Redundancy {
        healthy,
        total,
        repair_queued: core.repairs.is_pending(hash),
    })
}

/// Asks every shard's holders for its first byte: a data server checks the shard's header,
/// index and first piece before it answers (no shard is read whole).
pub async fn quick_probe(core: &Core, hash: &ContentHash, holders: &Holders) -> Probe<()> {
    let all: Vec<u8> = (0..TOTAL_SHARDS as u8).collect();
    let shards = &core.shards;
    probe(holders, &all, |shard, server| async move {
        shards
            .read_shard(&server, hash, shard, 0, 1)
            .await
            .map(drop)
    })
    .await
}

/// Verifies every shard of `hash` whole, rebuilds the bad ones (onto the same server, or a
/// live server holding none of the object's shards), then decodes the object and compares
/// its SHA-256 with its hash.
pub async fn check_hash(core: &Core, hash: &ContentHash) -> ApiResult<CheckReport> {
    check(core, &content(core, hash).await?).await
}

/// [`check_hash`] of a content record.
pub async fn check(core: &Core, content: &ContentRecord) -> ApiResult<CheckReport> {
    let hash = content.hash;
    let mut report = CheckReport {
        size: content.size,
        ..CheckReport::default()
    };
    let holders = placement::holders(core, content).await;
    let expected_len = shard_len(content.size);
    let all: Vec<u8> = (0..TOTAL_SHARDS as u8).collect();
    let shards = &core.shards;
    let checked = probe(&holders, &all, |shard, server| async move {
        match shards.verify_shard(&server, &hash, shard).await {
            Ok(len) if len == expected_len => Ok(()),
            Ok(len) => {
                tracing::warn!(%hash, shard, len, expected_len, "shard has the wrong length");
                Err(ShardError::Corrupt)
            }
            Err(e) => Err(e),
        }
    })
    .await;
    report.shards_verified = checked.good.len() as u8;
    if !checked.bad.is_empty() {
        if !checked.has_quorum() {
            report.unreadable = true;
            return Ok(report);
        }
        let outcome =
            crate::repair::rebuild(core, content, holders, &checked.bad, &checked.holding())
                .await?;
        report.shards_postponed = (checked.bad.len() - outcome.rebuilt.len()) as u8;
        report.shards_rebuilt = outcome.rebuilt;
    }
    // The whole object, decoded from the (now complete) shards, against its hash; hashed on
    // a blocking thread.
    let content = crate::objects::content_of(core, &hash).await?;
    let mut decoder = crate::objects::open_read(core, &content, None).await?;
    let mut hasher = sha2::Sha256::new();
    while let Some(segments) = decoder.next_block().await? {
        hasher = tokio::task::spawn_blocking(move || {
            for s in segments {
                hasher.update(&s);
            }
            hasher
        })
        .await
        .map_err(|e| ApiError::Internal(format!("hasher failed: {e}")))?;
    }
    report.sha256_ok = ContentHash(hasher.finalize().into()) == hash;
    Ok(report)
}
