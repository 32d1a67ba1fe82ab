use std::path::PathBuf;

use dos_protocol::NameError;
use reqwest::StatusCode;

/// Everything that can go wrong talking to an API server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-success status; `message` is the first line of its body
    /// (or the status's reason phrase when the body was empty, as for HEAD).
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: StatusCode,
        message: String,
        /// The kind of failure the server named (`x-dos-error`), if it did.
        kind: Option<String>,
        /// For a 416 to an upload: the bytes the upload had accepted (`x-dos-accepted`).
        accepted: Option<u64>,
    },
    /// The request never got an answer: connection refused or reset, timeout, broken body.
    #[error("transport error: {0}")]
    Transport(#[from] reqwest::Error),
    /// An argument the client refused before sending anything.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An object name that the REST interface would reject.
    #[error("invalid object name {name:?}: {source}")]
    InvalidName {
        name: String,
        #[source]
        source: NameError,
    },
    /// A success answer that does not have the shape the protocol promises.
    #[error("unexpected response from {url}: {message}")]
    InvalidResponse { url: String, message: String },
    /// Bytes that do not match the size or SHA-256 the server announced for them.
    #[error("integrity check failed for {url}: {message}")]
    Integrity { url: String, message: String },
    /// A local file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The request got no answer because of its connection (refused, reset, broken off),
    /// not because of what it asked: the same request may be sent again, elsewhere.
    pub fn went_unanswered(&self) -> bool {
        matches!(self, Self::Transport(e) if !e.is_builder() && !e.is_decode())
    }

    /// The HTTP status of a [`ClientError::Status`] error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's one-line explanation of a [`ClientError::Status`] error.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            ClientError::Status { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The kind of failure the server named in its `x-dos-error` header.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Status { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }

    /// True for a 404 (unknown name, deleted latest version, missing version).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    pub(crate) fn invalid_response(url: &str, message: impl Into<String>) -> Self {
        ClientError::InvalidResponse {
            url: url.to_owned(),
            message: message.into(),
        }
    }
}
