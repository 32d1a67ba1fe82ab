//! A mixed workload with byte-exact checks, shared by the soak command
//! (`examples/soak`) and the fault-injection tests: workers PUT, resumable-upload, GET and
//! DELETE objects whose bytes follow from a seed, remember every acknowledged version in a
//! [`Ledger`], and check every byte they read back. A read that returns other bytes than the
//! ones acknowledged is counted in `wrong_bytes`: the one number that must stay zero.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::{Client, ClientError, UploadSource, WriteAttributes};

/// Deterministic bytes for `(len, seed)` (xorshift64*).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One acknowledged version: its bytes are `pattern(len, seed)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub name: String,
    pub version: u64,
    pub len: usize,
    pub seed: u64,
}

/// Every version the store acknowledged.
#[derive(Default)]
pub struct Ledger(Mutex<Vec<Acked>>);

impl Ledger {
    pub fn push(&self, a: Acked) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(a);
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i % len`-th entry, if any.
    pub fn pick(&self, i: u64) -> Option<Acked> {
        let entries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.is_empty() {
            return None;
        }
        entries.get((i % entries.len() as u64) as usize).cloned()
    }

    pub fn all(&self) -> Vec<Acked> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What happened, by kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Tally {
    pub puts: u64,
    pub resumable_puts: u64,
    pub gets: u64,
    pub deletes: u64,
    /// Requests that failed with an error (a status or a transport failure).
    pub errors: u64,
    /// Reads that returned bytes other than the acknowledged ones. Must be zero.
    pub wrong_bytes: u64,
    /// Failures by kind (`HTTP 503`, `transport`, …) with one example message each.
    pub error_kinds: BTreeMap<String, (u64, String)>,
}

impl Tally {
    pub fn ops(&self) -> u64 {
        self.puts + self.resumable_puts + self.gets + self.deletes + self.errors
    }

    pub fn add(&mut self, other: &Tally) {
        self.puts += other.puts;
        self.resumable_puts += other.resumable_puts;
        self.gets += other.gets;
        self.deletes += other.deletes;
        self.errors += other.errors;
        self.wrong_bytes += other.wrong_bytes;
        for (k, (n, msg)) in &other.error_kinds {
            let e = self
                .error_kinds
                .entry(k.clone())
                .or_insert((0, msg.clone()));
            e.0 += n;
        }
    }

    fn failed(&mut self, e: &ClientError) {
        self.errors += 1;
        let kind = match e {
            ClientError::Status { status, .. } => format!("HTTP {}", status.as_u16()),
            ClientError::Transport(_) => "transport".to_string(),
            ClientError::Integrity { .. } => "integrity".to_string(),
            _ => "other".to_string(),
        };
        let msg: String = e.to_string().chars().take(200).collect();
        self.error_kinds.entry(kind).or_insert((0, msg)).0 += 1;
    }

    /// Only these kinds of failure are allowed (e.g. `["HTTP 503"]`); lists the others.
    pub fn unexpected_errors(&self, allowed: &[&str]) -> Vec<String> {
        self.error_kinds
            .iter()
            .filter(|(k, _)| !allowed.contains(&k.as_str()))
            .map(|(k, (n, msg))| format!("{n} × {k}: {msg}"))
            .collect()
    }
}

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Objects are 0..=max_size bytes (most small, some large).
    pub max_size: usize,
    /// Names per worker; a name is overwritten (a new version) when it comes round again.
    pub names_per_worker: u64,
    /// Out of 10 operations: PUTs, resumable uploads and DELETEs (the rest are GETs).
    pub puts: u64,
    pub resumable: u64,
    pub deletes: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            max_size: 3 << 20,
            names_per_worker: 40,
            puts: 3,
            resumable: 1,
            deletes: 1,
        }
    }
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Runs one worker until `stop`; `id` keeps its names apart from other workers'.
pub async fn worker(
    client: Client,
    id: u64,
    config: WorkloadConfig,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = id.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let attrs = WriteAttributes::default();
    while !stop.load(Ordering::Relaxed) {
        let roll = next(&mut rng) % 10;
        let name = format!("w{id}/{}", next(&mut rng) % config.names_per_worker.max(1));
        let seed = next(&mut rng);
        // Sizes: mostly under 64 KiB, one in four up to max_size.
        let len = if next(&mut rng).is_multiple_of(4) {
            (next(&mut rng) % (config.max_size as u64 + 1)) as usize
        } else {
            (next(&mut rng) % (64 << 10).min(config.max_size as u64 + 1)) as usize
        };
        if roll < config.puts + config.resumable {
            let written = if roll < config.puts {
                client.put_bytes(&name, pattern(len, seed), &attrs).await
            } else {
                let source = UploadSource::Bytes(pattern(len, seed).into());
                client
                    .resumable_upload(&name, source, 1 << 20, &attrs)
                    .await
            };
            match written {
                Ok(rec) => {
                    if roll < config.puts {
                        tally.puts += 1;
                    } else {
                        tally.resumable_puts += 1;
                    }
                    ledger.push(Acked {
                        name,
                        version: rec.version,
                        len,
                        seed,
                    });
                }
                Err(e) => tally.failed(&e),
            }
        } else if roll < config.puts + config.resumable + config.deletes {
            match client.delete(&name).await {
                Ok(_) => tally.deletes += 1,
                Err(ClientError::Status { status, .. }) if status.as_u16() == 404 => {
                    tally.deletes += 1
                }
                Err(e) => tally.failed(&e),
            }
        } else if let Some(a) = ledger.pick(next(&mut rng)) {
            check(&client, &a, &mut tally).await;
        }
    }
    tally
}

/// Reads `a` back and compares every byte.
pub async fn check(client: &Client, a: &Acked, tally: &mut Tally) {
    match client.get(&a.name, Some(a.version)).await {
        Ok(bytes) => {
            tally.gets += 1;
            if bytes.len() != a.len || bytes[..] != pattern(a.len, a.seed)[..] {
                tally.wrong_bytes += 1;
                let kind = format!("wrong bytes: {} version {}", a.name, a.version);
                tally
                    .error_kinds
                    .entry(kind)
                    .or_insert((0, String::new()))
                    .0 += 1;
            }
        }
        Err(e) => tally.failed(&e),
    }
}

/// Reads every acknowledged version back, `parallel` at a time.
pub async fn verify_all(client: &Client, ledger: &Ledger, parallel: usize) -> Tally {
    use futures::StreamExt as _;
    let all = ledger.all();
    let tallies: Vec<Tally> = futures::stream::iter(all)
        .map(|a| async move {
            let mut t = Tally::default();
            check(client, &a, &mut t).await;
            t
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut total = Tally::default();
    for t in &tallies {
        total.add(t);
    }
    total
}
