//! Every failure of the API server, mapped to an HTTP status in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dos_metadata::MetadataError;

use crate::shard_client::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
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
    #[error("writing shards failed: {0}")]
    ShardWrite(ShardError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("too many requests in flight, retry later")]
    Overloaded,
    #[error("the request body stalled: nothing arrived for {secs} s")]
    BodyStalled { secs: u64 },
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
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::RangeNotSatisfiable { .. } | ApiError::OffsetMismatch { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            ApiError::NotEnoughServers { .. }
            | ApiError::ShardsUnavailable { .. }
            | ApiError::ShardWrite(_)
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let mut resp = (status, format!("{}\n", one_line(&self.to_string()))).into_response();
        if let ApiError::RangeNotSatisfiable { size } = self
            && let Ok(v) = format!("bytes */{size}").parse()
        {
            resp.headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, v);
        }
        resp
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

pub type ApiResult<T> = Result<T, ApiError>;
