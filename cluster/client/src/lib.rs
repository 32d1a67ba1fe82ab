//! HTTP client for the dos REST API.
//!
//! [`Client`] speaks to one API server: whole-object and streamed reads and writes (the
//! SHA-256 `Digest` is computed here), ranges, resumable uploads through `POST` and
//! `/temp/TOKEN`, version history, listings and shard locations. Every failure is a
//! [`ClientError`]; a server's refusal keeps its status and one-line message.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dos_client::ClientError> {
//! use dos_client::{Client, WriteAttributes};
//! let client = Client::builder("http://127.0.0.1:23333").token("secret").build()?;
//! let record = client.put_bytes("docs/a.txt", &b"hello"[..], &WriteAttributes::default()).await?;
//! assert_eq!(client.get("docs/a.txt", Some(record.version)).await?, &b"hello"[..]);
//! # Ok(()) }
//! ```

mod client;
mod error;
mod meta;
mod ndjson;
mod store;
mod upload;
#[cfg(feature = "test-util")]
pub mod workload;

pub use bytes::Bytes;
pub use client::{
    Client, ClientBuilder, ObjectStream, PostOutcome, RecordStream, Streamed, UploadProgress,
    UploadSource, install_crypto_provider,
};
pub use dos_protocol::{
    ContentHash, EntryKind, ListPage, ObjectName, VersionRecord, WriteAttributes,
};
pub use error::ClientError;
pub use meta::ObjectMeta;
pub use store::store_error;
pub use upload::hash_file;
/// The protocol vocabulary and the HTTP client this crate builds on, for raw requests.
pub use {dos_protocol, reqwest};

/// Decodes a gzip body (as sent with `Content-Encoding: gzip`).
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, ClientError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| ClientError::InvalidResponse {
            url: String::new(),
            message: format!("bad gzip body: {e}"),
        })?;
    Ok(out)
}
