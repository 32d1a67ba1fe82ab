//! Turning Elasticsearch responses into results. Every failure that is not a definite answer
//! (connection errors, timeouts, 5xx, an index that is missing, a body that is not the
//! documented shape) becomes [`MetadataError::Unavailable`]; only a `found: false` document
//! is "not found".

use elasticsearch::http::response::Response;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::MetadataError;

/// A response read to the end: its status and its JSON body (`Null` when the body was empty or
/// not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

pub(crate) fn transport_error(what: &str, e: elasticsearch::Error) -> MetadataError {
    MetadataError::Unavailable(format!("elasticsearch {what}: {e}"))
}

impl Reply {
    pub async fn read(
        what: &str,
        sent: Result<Response, elasticsearch::Error>,
    ) -> Result<Self, MetadataError> {
        let response = sent.map_err(|e| transport_error(what, e))?;
        let status = response.status_code().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport_error(what, e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Self { status, body })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `error.type` of an error body.
    pub fn error_type(&self) -> Option<&str> {
        self.body
            .get("error")
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
    }

    /// A 409 `version_conflict_engine_exception`: the document exists (create) or changed
    /// (conditional write).
    pub fn is_version_conflict(&self) -> bool {
        self.status == 409 && self.error_type() == Some("version_conflict_engine_exception")
    }

    /// What to report for a response that is not one of the expected answers.
    pub fn unexpected(&self, what: &str) -> MetadataError {
        let reason = self
            .body
            .get("error")
            .map(|e| {
                let ty = e.get("type").and_then(Value::as_str).unwrap_or("error");
                let reason = e.get("reason").and_then(Value::as_str).unwrap_or("");
                format!("{ty}: {reason}")
            })
            .unwrap_or_else(|| "unexpected response".to_string());
        MetadataError::Unavailable(format!(
            "elasticsearch {what} answered {}: {reason}",
            self.status
        ))
    }

    /// Parses a successful body.
    pub fn parse<T: DeserializeOwned>(self, what: &str) -> Result<T, MetadataError> {
        serde_json::from_value(self.body).map_err(|e| {
            MetadataError::Unavailable(format!(
                "elasticsearch {what}: response is not the documented shape: {e}"
            ))
        })
    }
}

/// The answer of `GET /<index>/_doc/<id>`.
#[derive(Debug, Deserialize)]
pub(crate) struct GetReply {
    #[serde(rename = "_source")]
    pub source: Option<Value>,
    #[serde(rename = "_seq_no")]
    pub seq_no: Option<i64>,
    #[serde(rename = "_primary_term")]
    pub primary_term: Option<i64>,
}

/// The answer of `POST /<index>/_search`.
#[derive(Debug, Deserialize)]
pub(crate) struct SearchReply {
    pub hits: SearchHits,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchHits {
    pub hits: Vec<SearchHit>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchHit {
    #[serde(rename = "_source")]
    pub source: Value,
}
