//! Resumable uploads. `POST /objects/NAME` creates six shard uploads and hands the client a
//! token that carries everything needed to continue (name, hash, size, attributes, where the
//! shards go, expiry), signed with HMAC-SHA256 under the cluster secret: any API server of the
//! cluster can continue it, and a forged or altered token is refused before any data server is
//! contacted. Accepted bytes are always whole 1 MiB blocks until the last one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dos_protocol::{
    BLOCK_SIZE, BlockHashes, ContentHash, DATA_SHARDS, EntryKind, ObjectName, PIECE_SIZE,
    PosixAttrs, ServerId, ServerInfo, TOTAL_SHARDS, VersionRecord, WriteAttributes, shard_len,
};
use futures::Stream;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use dos_protocol::shard::UNKNOWN_CONTENT;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::objects::{Stored, add_known_version, record_new_content};
use crate::pipeline::read::PieceReader;
use crate::pipeline::write::{
    BodyLimits, Committed, ContentDigest, Deadlines, ShardTarget, Uploads, encode_stream,
};
use crate::placement;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadToken {
    pub name: ObjectName,
    pub hash: ContentHash,
    pub size: u64,
    pub kind: EntryKind,
    pub mode: Option<u32>,
    pub mtime_ns: Option<i64>,
    /// Owner, group, device number, access time given at `POST` (absent: none).
    #[serde(default, skip_serializing_if = "PosixAttrs::is_unset")]
    pub posix: PosixAttrs,
    /// Data server and upload id of each shard, in shard order.
    pub shards: Vec<(ServerId, String, String)>,
    /// Unix seconds after which the token is refused.
    pub expires: u64,
    /// What the token stands for (absent in tokens of declared content).
    #[serde(default, skip_serializing_if = "Stage::is_declared")]
    pub stage: Stage,
    /// Shards whose uploads were given up while the bytes arrived (their servers went
    /// silent): rebuilt from the others when the version is made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<u8>,
}

/// The kinds of upload a token names.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Digest and size declared at `POST`; bytes sent in one or more `PUT`s.
    #[default]
    Declared,
    /// Content not known yet (`POST` with `x-dos-upload: stream`): the whole of it comes in
    /// one `PUT`, hashed here as it arrives; `hash` and `size` are not meaningful.
    Open,
    /// Every byte of an open upload arrived: `hash` and `size` are what this server computed;
    /// a `POST` with the client's digest makes the version.
    Received,
}

impl Stage {
    fn is_declared(&self) -> bool {
        *self == Stage::Declared
    }
}

impl UploadToken {
    /// The token of `uploads`, valid for the server's upload lifetime from now.
    fn new(
        core: &Core,
        name: &ObjectName,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
        uploads: &Uploads,
        stage: Stage,
    ) -> Self {
        Self {
            name: name.clone(),
            hash,
            size,
            kind: attrs.kind,
            mode: attrs.mode,
            mtime_ns: attrs.mtime_ns,
            posix: attrs.posix,
            shards: uploads
                .targets
                .iter()
                .map(|u| {
                    (
                        u.server.id.clone(),
                        u.server.addr.clone(),
                        u.temp_id.clone(),
                    )
                })
                .collect(),
            expires: unix_now() + core.config.upload_ttl.as_secs(),
            stage,
            lost: Vec::new(),
        }
    }

    /// Where the uploads are: each server at its current address when it is live (a data
    /// server that restarted may listen elsewhere), else at the address it had.
    fn targets(&self, live: &[ServerInfo]) -> Vec<ShardTarget> {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, (id, addr, temp))| ShardTarget {
                shard: i as u8,
                server: live
                    .iter()
                    .find(|s| &s.id == id)
                    .cloned()
                    .unwrap_or_else(|| ServerInfo {
                        id: id.clone(),
                        addr: addr.clone(),
                    }),
                temp_id: temp.clone(),
            })
            .collect()
    }

    /// The uploads this token names, those given up before marked so.
    fn uploads(&self, core: &Core) -> Uploads {
        let targets = self.targets(&core.bus.live_servers());
        let uploads = Uploads::resume(&core.shards, Deadlines::of(core), targets);
        uploads.given_up(&self.lost);
        uploads
    }

    pub fn attrs(&self) -> WriteAttributes {
        WriteAttributes {
            kind: self.kind,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            // New content cannot supersede anything (see `objects::supersede`).
            supersedes: None,
            posix: self.posix,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(secret: &[u8]) -> ApiResult<Hmac<Sha256>> {
    Hmac::<Sha256>::new_from_slice(secret)
        .map_err(|_| ApiError::Internal("bad token secret".into()))
}

pub fn sign(token: &UploadToken, secret: &[u8]) -> ApiResult<String> {
    let payload =
        serde_json::to_vec(token).map_err(|e| ApiError::Internal(format!("token: {e}")))?;
    let mut m = mac(secret)?;
    m.update(&payload);
    let sig = m.finalize().into_bytes();
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(sig)
    ))
}

pub fn verify(token: &str, secret: &[u8]) -> ApiResult<UploadToken> {
    let forged = || ApiError::Forbidden("upload token is not valid".into());
    let (payload, sig) = token.split_once('.').ok_or_else(forged)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| forged())?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| forged())?;
    let mut m = mac(secret)?;
    m.update(&payload);
    m.verify_slice(&sig).map_err(|_| forged())?;
    let token: UploadToken = serde_json::from_slice(&payload).map_err(|_| forged())?;
    if token.shards.len() != TOTAL_SHARDS {
        return Err(forged());
    }
    if token.expires < unix_now() {
        return Err(ApiError::Gone("upload token has expired".into()));
    }
    Ok(token)
}

pub enum PostOutcome {
    /// Content already stored: a version was made and nothing needs uploading.
    Stored(VersionRecord),
    /// Upload the bytes to `/temp/<token>`.
    Upload(String),
}

/// `POST /objects/NAME` with `Digest` and `Size`.
pub async fn post(
    core: &Core,
    name: &ObjectName,
    hash: ContentHash,
    size: u64,
    attrs: WriteAttributes,
) -> ApiResult<PostOutcome> {
    // A special kind with content is refused before an upload is opened for it.
    crate::objects::new_version(hash, size, &attrs)?;
    if let Some(existing) = core.meta.touch_content(&hash).await? {
        if existing.size != size {
            return Err(ApiError::BadRequest(format!(
                "Size {size} does not match the stored content of this digest ({} bytes)",
                existing.size
            )));
        }
        let v = add_known_version(core, name, hash, size, &attrs).await?;
        return Ok(PostOutcome::Stored(v));
    }
    let servers = placement::choose_servers(core)?;
    let uploads = Uploads::create(
        &core.shards,
        Deadlines::of(core),
        &hash,
        &servers,
        Some(shard_len(size)),
    )
    .await?;
    let token = UploadToken::new(core, name, hash, size, &attrs, &uploads, Stage::Declared);
    Ok(PostOutcome::Upload(sign(&token, &core.config.secret)?))
}

/// `POST /objects/NAME` with `x-dos-upload: stream`: an upload of content whose digest and
/// size are not known yet (a file being written). Its bytes come in one `PUT` (see
/// [`receive`]); a `POST` to the token that answer gives makes the version ([`finish`]).
pub async fn open(core: &Core, name: &ObjectName, attrs: WriteAttributes) -> ApiResult<String> {
    let servers = placement::choose_servers(core)?;
    let uploads = Uploads::create(
        &core.shards,
        Deadlines::of(core),
        &UNKNOWN_CONTENT,
        &servers,
        None,
    )
    .await?;
    let token = UploadToken::new(
        core,
        name,
        UNKNOWN_CONTENT,
        0,
        &attrs,
        &uploads,
        Stage::Open,
    );
    sign(&token, &core.config.secret)
}

/// An open upload whose bytes all arrived: the token that finishes it, and what arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub token: String,
    pub hash: ContentHash,
    pub size: u64,
}

/// `PUT /temp/TOKEN` of an open upload: the whole content in one body, from its first byte,
/// hashed and stored in the shard uploads as it arrives. No version is made yet. On any
/// failure the shard uploads are abandoned (the client sends the content again, declared).
async fn receive<S, E>(core: &Core, token: &UploadToken, body: S) -> ApiResult<Received>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let uploads = token.uploads(core);
    let (codec, limits) = (&core.codec, BodyLimits::of(core));
    let encoded = uploads
        .write(0, |writers| {
            encode_stream(
                codec,
                body,
                writers,
                ContentDigest::default(),
                0,
                None,
                limits,
            )
        })
        .await;
    let encoded = match encoded {
        Ok(e) => e,
        Err(e) => {
            uploads.abort().await;
            return Err(e);
        }
    };
    let (hash, blocks) = encoded.digest.finish(encoded.accepted);
    core.received.keep(hash, blocks);
    let received = UploadToken {
        hash,
        size: encoded.accepted,
        stage: Stage::Received,
        lost: uploads.lost(),
        ..token.clone()
    };
    Ok(Received {
        token: sign(&received, &core.config.secret)?,
        hash,
        size: encoded.accepted,
    })
}

/// `POST /temp/TOKEN` of a received upload, with the client's own digest of what it sent:
/// when it matches what arrived, the shards are committed and the version made. A mode,
/// mtime or owner in `given` replaces the one given at `POST` (a writer knows them only at
/// the end).
pub async fn finish(
    core: &Core,
    token: &UploadToken,
    digest: ContentHash,
    given: &WriteAttributes,
) -> ApiResult<VersionRecord> {
    let attrs = WriteAttributes {
        mode: given.mode.or(token.mode),
        mtime_ns: given.mtime_ns.or(token.mtime_ns),
        posix: given.posix.or(token.posix),
        ..token.attrs()
    };
    if token.stage != Stage::Received {
        return Err(ApiError::BadRequest(
            "only an upload whose bytes were streamed in one PUT is finished by a POST".into(),
        ));
    }
    let uploads = token.uploads(core);
    if digest != token.hash {
        uploads.abort().await;
        return Err(ApiError::DigestMismatch);
    }
    if held(&uploads, token).await? != token.size {
        return Err(ApiError::NotFound(
            "this upload lost bytes it had received (a data server restarted?)".into(),
        ));
    }
    let blocks = match core.received.take(&token.hash) {
        Some(b) => b,
        // Received by another API server, or before this one restarted: the block hashes
        // are computed again from the shard uploads (and the content hash checked with them).
        None => {
            let digest = read_back(core, &uploads, token.size, ContentDigest::default()).await?;
            let (hash, blocks) = digest.finish(token.size);
            if hash != token.hash {
                uploads.abort().await;
                return Err(ApiError::Unavailable(
                    "the shard uploads no longer hold what was received; send it again".into(),
                ));
            }
            blocks
        }
    };
    make_version(core, token, &uploads, &attrs, blocks).await
}

/// The end of an upload whose bytes all arrived and match: commits the shards (or drops them
/// when the content got stored meanwhile) and makes the version.
async fn make_version(
    core: &Core,
    token: &UploadToken,
    uploads: &Uploads,
    attrs: &WriteAttributes,
    blocks: BlockHashes,
) -> ApiResult<VersionRecord> {
    let hash = token.hash;
    if core.meta.touch_content(&hash).await?.is_some() {
        // Someone stored the same content meanwhile: keep theirs.
        uploads.abort().await;
        return add_known_version(core, &token.name, hash, token.size, attrs).await;
    }
    uploads.commit(shard_len(token.size), &hash).await?;
    let committed = Committed {
        placed: uploads.placed(),
        lost: uploads.lost(),
    };
    let servers = crate::repair::replace_lost(core, hash, token.size, &blocks, committed).await?;
    let stored = Stored {
        hash,
        size: token.size,
        blocks,
    };
    record_new_content(core, &token.name, stored, &servers, attrs).await
}

/// Object bytes accepted so far: whole blocks every shard has, or the whole object.
pub async fn accepted(core: &Core, token: &UploadToken) -> ApiResult<u64> {
    held(&token.uploads(core), token).await
}

/// Object bytes `uploads` hold: whole blocks every upload not given up has, or the whole
/// object (an upload whose server does not answer is given up when it can be, see
/// [`Uploads::held`]).
async fn held(uploads: &Uploads, token: &UploadToken) -> ApiResult<u64> {
    let min = match uploads.held().await {
        Ok(min) => min,
        Err(e) if e.is_missing() => {
            return Err(ApiError::NotFound(
                "this upload is finished, expired or abandoned".into(),
            ));
        }
        Err(e) => return Err(ApiError::ShardWrite(e)),
    };
    if min >= shard_len(token.size) {
        return Ok(token.size);
    }
    Ok((min / PIECE_SIZE as u64) * BLOCK_SIZE as u64)
}

pub enum PutOutcome {
    Partial {
        accepted: u64,
    },
    Done(VersionRecord),
    /// An open upload's bytes all arrived (see [`finish`]).
    Received(Received),
}

/// `PUT /temp/TOKEN` from `offset`.
pub async fn put<S, E>(
    core: &Core,
    token: &UploadToken,
    offset: u64,
    content_length: Option<u64>,
    body: S,
) -> ApiResult<PutOutcome>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    match token.stage {
        Stage::Declared => {}
        Stage::Open if offset == 0 => {
            return receive(core, token, body).await.map(PutOutcome::Received);
        }
        Stage::Open => {
            return Err(ApiError::BadRequest(
                "a streamed upload is sent whole, from byte 0, in one request".into(),
            ));
        }
        Stage::Received => {
            return Err(ApiError::BadRequest(
                "every byte of this upload arrived; POST it with its Digest to make the version"
                    .into(),
            ));
        }
    }
    let uploads = token.uploads(core);
    let have = held(&uploads, token).await?;
    if offset != have {
        return Err(ApiError::OffsetMismatch {
            offset,
            accepted: have,
        });
    }
    if content_length.is_some_and(|l| offset + l > token.size) {
        return Err(ApiError::BadRequest(format!(
            "bytes {offset}+ go past the declared size of {} bytes",
            token.size
        )));
    }
    let mut digest = ContentDigest::default();
    if offset > 0 {
        digest = read_back(core, &uploads, offset, digest).await?;
    }
    let mut accepted_now = offset;
    if offset < token.size {
        let piece_offset = offset / BLOCK_SIZE as u64 * PIECE_SIZE as u64;
        let (codec, limits) = (&core.codec, BodyLimits::of(core));
        let encoded = uploads
            .write(piece_offset, |writers| {
                encode_stream(
                    codec,
                    body,
                    writers,
                    digest,
                    offset,
                    Some(token.size),
                    limits,
                )
            })
            .await?;
        digest = encoded.digest;
        accepted_now += encoded.accepted;
    }
    if accepted_now < token.size {
        return Ok(PutOutcome::Partial {
            accepted: accepted_now,
        });
    }
    let (hash, blocks) = digest.finish(token.size);
    if hash != token.hash {
        uploads.abort().await;
        return Err(ApiError::DigestMismatch);
    }
    let v = make_version(core, token, &uploads, &token.attrs(), blocks).await?;
    Ok(PutOutcome::Done(v))
}

/// Feeds the first `offset` object bytes (whole blocks), read back from four of the shard
/// uploads not given up (the data shards when they are there, else decoded with parity), into
/// `digest`, so that the final digests cover every byte without the API server keeping state
/// between requests.
async fn read_back(
    core: &Core,
    uploads: &Uploads,
    offset: u64,
    mut digest: ContentDigest,
) -> ApiResult<ContentDigest> {
    // `offset` is a whole number of blocks, or the whole object (an upload whose bytes all
    // arrived but whose version was not made yet).
    let size = offset;
    let blocks = offset.div_ceil(BLOCK_SIZE as u64);
    let end = shard_len(offset);
    let sources: Vec<&ShardTarget> = uploads.kept().take(DATA_SHARDS).collect();
    if sources.len() < DATA_SHARDS {
        return Err(ApiError::Unavailable(
            "fewer than four shard uploads are left; send the content again".into(),
        ));
    }
    let decode = sources.iter().any(|t| usize::from(t.shard) >= DATA_SHARDS);
    let mut readers = Vec::new();
    for t in &sources {
        let body = core
            .shards
            .read_temp(&t.server, &t.temp_id, 0, end)
            .await
            .map_err(ApiError::ShardWrite)?;
        readers.push((
            t.shard,
            PieceReader::new(body, core.config.shard_stall_timeout),
        ));
    }
    for b in 0..blocks {
        let plen = dos_protocol::piece_len(size, b);
        let pieces = futures::future::join_all(
            readers
                .iter_mut()
                .map(|(_, r)| async move { r.read(plen).await }),
        )
        .await;
        let mut got: Vec<Option<Vec<u8>>> = vec![None; TOTAL_SHARDS];
        for ((shard, _), p) in readers.iter().zip(pieces) {
            got[usize::from(*shard)] = Some(p.map_err(ApiError::ShardWrite)?.to_vec());
        }
        let len = (size - b * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64) as usize;
        let codec = core.codec.clone();
        digest = tokio::task::spawn_blocking(move || {
            if decode {
                codec
                    .reconstruct_data(&mut got)
                    .map_err(|e| ApiError::Internal(format!("decoding shard uploads: {e}")))?;
            }
            let mut block = Vec::with_capacity(BLOCK_SIZE);
            dos_erasure::join_data(&got, len, &mut block);
            digest.update(&block);
            Ok::<_, ApiError>(digest)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("hasher failed: {e}")))??;
    }
    Ok(digest)
}

/// Block hashes of streamed uploads received by this server whose version is not made yet,
/// kept from the `PUT` for the `POST` that finishes it (a bounded number; one not found is
/// computed again from the shard uploads).
pub struct ReceivedBlocks(std::sync::Mutex<lru::LruCache<ContentHash, BlockHashes>>);

impl Default for ReceivedBlocks {
    fn default() -> Self {
        Self(std::sync::Mutex::new(lru::LruCache::new(
            std::num::NonZeroUsize::new(256).unwrap_or(std::num::NonZeroUsize::MIN),
        )))
    }
}

impl ReceivedBlocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<ContentHash, BlockHashes>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn keep(&self, hash: ContentHash, blocks: BlockHashes) {
        self.lock().put(hash, blocks);
    }

    /// The block hashes of `hash`; they stay (another upload of the same content may
    /// finish with them) until pushed out.
    pub fn take(&self, hash: &ContentHash) -> Option<BlockHashes> {
        self.lock().get(hash).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary tokens, and valid ones with one byte changed: never a panic, never
        /// accepted.
        #[test]
        fn forged_tokens_are_refused(t in "\\PC{0,300}", flip in 0usize..400, bit in 0u8..8) {
            prop_assert!(verify(&t, b"secret").is_err());
            let good = sign(&sample(), b"secret").unwrap();
            let mut bytes = good.clone().into_bytes();
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            if let Ok(forged) = String::from_utf8(bytes)
                && forged != good
            {
                prop_assert!(verify(&forged, b"secret").is_err());
            }
        }
    }

    fn sample() -> UploadToken {
        UploadToken {
            name: ObjectName::new("a/b").unwrap(),
            hash: ContentHash::of(b"y"),
            size: 7,
            kind: EntryKind::File,
            mode: Some(0o600),
            mtime_ns: Some(5),
            posix: PosixAttrs {
                uid: Some(1000),
                gid: Some(1000),
                rdev: 0,
                atime_ns: None,
                link: None,
            },
            shards: (0..6)
                .map(|i| {
                    (
                        ServerId(format!("s{i}")),
                        format!("h:{i}"),
                        format!("{i:032x}"),
                    )
                })
                .collect(),
            expires: unix_now() + 600,
            stage: Stage::Declared,
            lost: vec![2],
        }
    }

    #[test]
    fn tokens_are_signed() {
        let t = UploadToken {
            name: ObjectName::new("a").unwrap(),
            hash: ContentHash::of(b"x"),
            size: 5,
            mode: None,
            mtime_ns: None,
            expires: unix_now() + 60,
            ..sample()
        };
        let s = sign(&t, b"secret").unwrap();
        assert_eq!(verify(&s, b"secret").unwrap(), t);
        assert!(matches!(verify(&s, b"other"), Err(ApiError::Forbidden(_))));
        let mut forged = s.clone().into_bytes();
        forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(matches!(
            verify(&forged, b"secret"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            verify("garbage", b"secret"),
            Err(ApiError::Forbidden(_))
        ));
        let old = UploadToken { expires: 1, ..t };
        let s = sign(&old, b"secret").unwrap();
        assert!(matches!(verify(&s, b"secret"), Err(ApiError::Gone(_))));
    }
}
