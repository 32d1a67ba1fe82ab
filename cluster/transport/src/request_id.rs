//! Request ids: one per client request, made (or taken from the client's `x-request-id`) by
//! the API server, logged with everything the request causes, sent to the data servers it
//! calls (which log it too) and returned to the client, so one slow or failed request can be
//! followed end to end. The id of the request being served travels in a task-local; tasks a
//! request spawns take it along with [`carry`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

pub use dos_protocol::headers::REQUEST_ID as HEADER;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// One request's id: 1 to 64 characters of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The header that carries it.
    pub const HEADER_NAME: &'static str = HEADER;

    /// A new random id (16 hex digits).
    pub fn new() -> Self {
        Self(Arc::from(format!("{:016x}", rand::random::<u64>())))
    }

    /// The client's id when it is one, else a new one.
    pub fn from_header(value: Option<&str>) -> Self {
        match value {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Self(Arc::from(v))
            }
            _ => Self::new(),
        }
    }

    /// The tracing span everything a request causes is logged under.
    pub fn span(&self, method: &str, path: &str) -> tracing::Span {
        tracing::info_span!("request", id = %self, method, path)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the request this task serves, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` as part of this request.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

/// `f` with the current request id (if any) and tracing span, for a task it spawns.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument as _;
    let id = RequestId::current();
    let f = f.in_current_span();
    async move {
        match id {
            Some(id) => id.scope(f).await,
            None => f.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_are_checked_and_carried() {
        assert_eq!(
            RequestId::from_header(Some("abc-1.2_3")).as_str(),
            "abc-1.2_3"
        );
        for bad in ["", "a b", "x\r\nInjected: 1", &"a".repeat(65)] {
            let id = RequestId::from_header(Some(bad));
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.as_str().len(), 16);
        }
        assert_eq!(RequestId::current(), None);
        let id = RequestId::from_header(Some("r1"));
        let seen = id
            .clone()
            .scope(async { tokio::spawn(carry(async { RequestId::current() })).await })
            .await
            .unwrap();
        assert_eq!(seen, Some(id));
    }
}
