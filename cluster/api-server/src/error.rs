//! Every failure of the API server, with its HTTP status decided in one place
//! ([`ApiError::status`]) and the one-line message a client may see
//! ([`ApiError::public_message`]): for a server-side failure that line names what failed but
//! no internal detail (data-server addresses, file paths, engine URLs), which goes to the
//! log instead.

use dos_metadata::MetadataError;
use dos_transport::ShardError;
use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// The body does not hash to its `Digest`; nothing was stored.
    #[error("the body does not match its Digest; nothing was stored")]
    DigestMismatch,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("offset {offset} does not match the {accepted} bytes accepted so far")]
    OffsetMismatch { offset: u64, accepted: u64 },
    #[error("only {live} data servers are live; six are needed to store an object")]
    NotEnoughServers { live: usize },
    #[error("only {available} of the 4 shards needed are readable")]
    ShardsUnavailable { available: usize },
    /// Fewer than four shards give a block that matches its recorded hash.
    #[error("fewer than 4 shards hold the right bytes of block {block}; no wrong byte was served")]
    Unverifiable { block: u64 },
    /// A data server did not take or commit its shard.
    #[error("writing shards failed: {0}")]
    ShardWrite(ShardError),
    /// A data server failed while its shard was being read.
    #[error("reading shards failed: {0}")]
    ShardRead(ShardError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("too many requests in flight, retry later")]
    Overloaded,
    #[error("the request body stalled: nothing arrived for {secs} s")]
    BodyStalled { secs: u64 },
    #[error("the request body arrives slower than {min_rate} bytes a second; nothing was stored")]
    BodyTooSlow { min_rate: u64 },
    #[error("request line and headers exceed {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// Temporarily impossible; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::DigestMismatch => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyStalled { .. } | ApiError::BodyTooSlow { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ApiError::RangeNotSatisfiable { .. } | ApiError::OffsetMismatch { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            ApiError::NotEnoughServers { .. }
            | ApiError::ShardsUnavailable { .. }
            | ApiError::Unverifiable { .. }
            | ApiError::ShardWrite(_)
            | ApiError::ShardRead(_)
            | ApiError::Unavailable(_)
            | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Metadata(e) => match e {
                MetadataError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                MetadataError::BadRequest(_) => StatusCode::BAD_REQUEST,
                MetadataError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one line a client is told. Failures of the store's own parts say which part
    /// failed, not where or why in its internals (that is logged).
    pub fn public_message(&self) -> String {
        let line = match self {
            ApiError::ShardWrite(e) => format!(
                "writing shards failed: {}; nothing was stored",
                shard_failure(e)
            ),
            ApiError::ShardRead(e) => format!("reading shards failed: {}", shard_failure(e)),
            ApiError::Metadata(MetadataError::Unavailable(_)) => {
                "the metadata store is unavailable; retry later".into()
            }
            ApiError::Metadata(MetadataError::Corrupt(_)) => {
                "the metadata store holds a malformed record".into()
            }
            ApiError::Internal(_) => "internal error (logged by the server)".into(),
            other => other.to_string(),
        };
        line.replace(['\n', '\r'], " ")
    }

    /// The kind of failure, as the `x-dos-error` header names it.
    pub fn kind(&self) -> &'static str {
        use dos_protocol::error_kind as k;
        match self {
            ApiError::NotFound(_) => k::NOT_FOUND,
            ApiError::BadRequest(_)
            | ApiError::MethodNotAllowed
            | ApiError::RangeNotSatisfiable { .. }
            | ApiError::HeadersTooLarge { .. } => k::INVALID,
            ApiError::DigestMismatch => k::DIGEST_MISMATCH,
            ApiError::OffsetMismatch { .. } => k::OFFSET_MISMATCH,
            ApiError::Gone(_) => k::EXPIRED,
            ApiError::Unauthorized | ApiError::Forbidden(_) => k::DENIED,
            ApiError::Conflict(_) => k::CONFLICT,
            ApiError::Overloaded => k::BUSY,
            ApiError::BodyStalled { .. } | ApiError::BodyTooSlow { .. } => k::TIMEOUT,
            ApiError::NotEnoughServers { .. }
            | ApiError::ShardsUnavailable { .. }
            | ApiError::Unverifiable { .. }
            | ApiError::ShardWrite(_)
            | ApiError::ShardRead(_)
            | ApiError::Unavailable(_) => k::UNAVAILABLE,
            ApiError::Metadata(MetadataError::Unavailable(_)) => k::UNAVAILABLE,
            ApiError::Metadata(MetadataError::BadRequest(_)) => k::INVALID,
            ApiError::Metadata(MetadataError::Corrupt(_)) | ApiError::Internal(_) => k::INTERNAL,
        }
    }

    /// Whether the client may expect a retry to succeed soon (sent as `Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        matches!(self, ApiError::Overloaded).then_some(1)
    }
}

/// What kind of data-server failure, without naming the server.
fn shard_failure(e: &ShardError) -> &'static str {
    match e {
        ShardError::NotFound | ShardError::Corrupt => "a data server lost its upload",
        ShardError::TooNew => "a data server refused to remove a recent shard",
        ShardError::OffsetMismatch { .. } => "a data server holds other bytes of the upload",
        ShardError::Full => "a data server's disk is full",
        ShardError::Refused(_) => "a data server refused the request",
        ShardError::Denied => "a data server does not share this cluster's secret",
        ShardError::Unreachable(_) => "a data server is unreachable",
        ShardError::Timeout(_) => "a data server did not answer in time",
        ShardError::Malformed(_) => "a data server sent a malformed answer",
        ShardError::Failed(_) => "a data server failed",
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
