//! A wrapper that injects failures and delays into any [`ObjectStore`], for tests: fail the
//! next N calls of an operation (or all of them), delay them, or cut read bodies off after a
//! number of bytes, the way a network that goes away mid-answer would.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dos_protocol::{
    ByteRange, ContentHash, ListPage, ListQuery, ObjectName, VersionRecord, WriteAttributes,
};
use futures::StreamExt;

use crate::{
    Content, ObjectRead, ObjectStore, PostOutcome, Received, RecordStream, StoreError, StoreResult,
    UploadBody, UploadId, UploadProgress,
};

/// The operations of [`ObjectStore`], to aim a fault at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Head,
    Get,
    Put,
    Post,
    Upload,
    UploadStatus,
    OpenUpload,
    StreamUpload,
    FinishUpload,
    Delete,
    Versions,
    List,
}

#[derive(Debug, Clone)]
enum Action {
    Fail(StoreError),
    Delay(Duration),
    /// Read bodies end with this error after this many bytes.
    CutBody(u64, StoreError),
}

#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    action: Action,
    /// How many more calls it applies to; `None`: all.
    remaining: Option<u32>,
}

#[derive(Default)]
struct Inner {
    rules: Vec<Rule>,
    calls: Vec<Op>,
}

/// The faults in force; shared between the test and the [`FaultyStore`]s it wraps.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Inner>>);

impl Faults {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, op: Op, action: Action, times: Option<u32>) {
        self.inner().rules.push(Rule {
            op,
            action,
            remaining: times,
        });
    }

    /// Every call of `op` fails with `error` until [`clear`](Self::clear).
    pub fn fail(&self, op: Op, error: StoreError) {
        self.add(op, Action::Fail(error), None);
    }

    /// The next `times` calls of `op` fail with `error`.
    pub fn fail_times(&self, op: Op, error: StoreError, times: u32) {
        self.add(op, Action::Fail(error), Some(times));
    }

    /// Every call of `op` waits `delay` first.
    pub fn delay(&self, op: Op, delay: Duration) {
        self.add(op, Action::Delay(delay), None);
    }

    /// Bodies of the next `times` reads (all, with `None`) end with `error` after `after`
    /// bytes.
    pub fn cut_reads(&self, after: u64, error: StoreError, times: Option<u32>) {
        self.add(Op::Get, Action::CutBody(after, error), times);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.inner().rules.clear();
    }

    /// How many calls of `op` were made so far.
    pub fn calls(&self, op: Op) -> usize {
        self.inner().calls.iter().filter(|o| **o == op).count()
    }

    /// The actions that apply to this call of `op`, counting it.
    fn take(&self, op: Op) -> Vec<Action> {
        let mut inner = self.inner();
        inner.calls.push(op);
        let mut out = Vec::new();
        for rule in inner.rules.iter_mut().filter(|r| r.op == op) {
            match &mut rule.remaining {
                Some(0) => continue,
                Some(n) => *n -= 1,
                None => {}
            }
            out.push(rule.action.clone());
        }
        inner.rules.retain(|r| r.remaining != Some(0));
        out
    }

    /// Applies the delays and failures of a call of `op`; returns a body cut, if any.
    async fn before(&self, op: Op) -> StoreResult<Option<(u64, StoreError)>> {
        let mut cut = None;
        for action in self.take(op) {
            match action {
                Action::Delay(d) => tokio::time::sleep(d).await,
                Action::Fail(e) => return Err(e),
                Action::CutBody(after, e) => cut = Some((after, e)),
            }
        }
        Ok(cut)
    }
}

/// `inner` with the [`Faults`] applied.
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: ObjectStore> FaultyStore<S> {
    pub fn new(inner: S, faults: Faults) -> Self {
        Self { inner, faults }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// Passes `body` on until `after` bytes, then ends it with `error`.
fn cut(body: crate::ByteStream, after: u64, error: StoreError) -> crate::ByteStream {
    let state = (body, 0u64, Some(error));
    Box::pin(futures::stream::unfold(
        state,
        move |(mut body, seen, error)| async move {
            let error = error?;
            if seen >= after {
                return Some((Err(error), (body, seen, None)));
            }
            match body.next().await {
                Some(Ok(chunk)) => {
                    let room = (after - seen) as usize;
                    if chunk.len() > room {
                        let part: Bytes = chunk.slice(..room);
                        Some((Ok(part), (body, after, Some(error))))
                    } else {
                        let n = chunk.len() as u64;
                        Some((Ok(chunk), (body, seen + n, Some(error))))
                    }
                }
                Some(Err(e)) => Some((Err(e), (body, seen, None))),
                None => None,
            }
        },
    ))
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    async fn head(&self, name: &ObjectName, version: Option<u64>) -> StoreResult<VersionRecord> {
        self.faults.before(Op::Head).await?;
        self.inner.head(name, version).await
    }

    async fn get(
        &self,
        name: &ObjectName,
        version: Option<u64>,
        range: Option<ByteRange>,
    ) -> StoreResult<ObjectRead> {
        let cut_after = self.faults.before(Op::Get).await?;
        let mut read = self.inner.get(name, version, range).await?;
        if let Some((after, error)) = cut_after {
            read.body = cut(read.body, after, error);
        }
        Ok(read)
    }

    async fn put(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
        content: Content,
    ) -> StoreResult<VersionRecord> {
        self.faults.before(Op::Put).await?;
        self.inner.put(name, attrs, content).await
    }

    async fn post(
        &self,
        name: &ObjectName,
        hash: ContentHash,
        size: u64,
        attrs: &WriteAttributes,
    ) -> StoreResult<PostOutcome> {
        self.faults.before(Op::Post).await?;
        self.inner.post(name, hash, size, attrs).await
    }

    async fn upload(
        &self,
        upload: &UploadId,
        offset: u64,
        len: u64,
        body: UploadBody,
    ) -> StoreResult<UploadProgress> {
        self.faults.before(Op::Upload).await?;
        self.inner.upload(upload, offset, len, body).await
    }

    async fn upload_status(&self, upload: &UploadId) -> StoreResult<u64> {
        self.faults.before(Op::UploadStatus).await?;
        self.inner.upload_status(upload).await
    }

    async fn open_upload(
        &self,
        name: &ObjectName,
        attrs: &WriteAttributes,
    ) -> StoreResult<UploadId> {
        self.faults.before(Op::OpenUpload).await?;
        self.inner.open_upload(name, attrs).await
    }

    async fn stream_upload(&self, upload: &UploadId, body: UploadBody) -> StoreResult<Received> {
        self.faults.before(Op::StreamUpload).await?;
        self.inner.stream_upload(upload, body).await
    }

    async fn finish_upload(
        &self,
        upload: &UploadId,
        hash: ContentHash,
        attrs: &WriteAttributes,
    ) -> StoreResult<VersionRecord> {
        self.faults.before(Op::FinishUpload).await?;
        self.inner.finish_upload(upload, hash, attrs).await
    }

    async fn delete(&self, name: &ObjectName) -> StoreResult<VersionRecord> {
        self.faults.before(Op::Delete).await?;
        self.inner.delete(name).await
    }

    async fn versions(&self, name: &ObjectName) -> StoreResult<RecordStream> {
        self.faults.before(Op::Versions).await?;
        self.inner.versions(name).await
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        self.faults.before(Op::List).await?;
        self.inner.list(query).await
    }

    async fn changes(&self) -> StoreResult<crate::ChangeStream> {
        self.inner.changes().await
    }

    async fn redundancy(&self, hash: &ContentHash) -> StoreResult<dos_protocol::Redundancy> {
        self.inner.redundancy(hash).await
    }

    async fn check(&self, hash: &ContentHash) -> StoreResult<dos_protocol::CheckReport> {
        self.inner.check(hash).await
    }
}
