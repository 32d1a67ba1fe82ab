//! The state every request shares, and placement: choosing servers for new shards and finding
//! the live holders of existing ones.

use std::sync::Arc;
use std::time::Duration;

use dos_bus::Bus;
use dos_erasure::Codec;
use dos_metadata::{ContentRecord, MetadataStore};
use dos_protocol::{ContentHash, ServerId, ServerInfo, TOTAL_SHARDS};
use rand::seq::SliceRandom;

use crate::error::{ApiError, ApiResult};
use crate::maintenance::{Jobs, MaintenanceConfig};
use crate::repair::RepairQueue;
use crate::shard_client::ShardClient;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Key that signs resumable-upload tokens; every API server of a cluster shares it.
    pub secret: Vec<u8>,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// How long a resumable upload token stays valid.
    pub upload_ttl: Duration,
    /// How long a locate broadcast waits for answers.
    pub locate_timeout: Duration,
    /// Requests served at once before new ones get 503.
    pub max_in_flight: usize,
    /// A request body that sends nothing for this long is cut off (408); what it had sent
    /// stays in temp uploads, which expire.
    pub body_idle_timeout: Duration,
    /// Background scrub, retention and orphan collection.
    pub maintenance: MaintenanceConfig,
}

impl ApiConfig {
    pub fn new(secret: Vec<u8>) -> Self {
        Self {
            secret,
            token: None,
            upload_ttl: Duration::from_secs(24 * 3600),
            locate_timeout: Duration::from_millis(500),
            max_in_flight: 1024,
            body_idle_timeout: Duration::from_secs(60),
            maintenance: MaintenanceConfig::default(),
        }
    }
}

pub struct Core {
    pub meta: Arc<dyn MetadataStore>,
    pub bus: Arc<dyn Bus>,
    pub shards: ShardClient,
    pub codec: Codec,
    pub config: ApiConfig,
    pub repair: RepairQueue,
    pub jobs: Jobs,
}

impl Core {
    /// Six distinct live servers in random order, or 503.
    pub fn choose_servers(&self) -> ApiResult<Vec<ServerInfo>> {
        let mut live = self.bus.live_servers();
        if live.len() < TOTAL_SHARDS {
            return Err(ApiError::NotEnoughServers { live: live.len() });
        }
        live.shuffle(&mut rand::rng());
        live.truncate(TOTAL_SHARDS);
        Ok(live)
    }

    /// For each shard index, the live servers believed to hold it: the recorded placement
    /// first, then (only if some shard has no live holder) whatever a locate broadcast finds.
    pub async fn holders(&self, content: &ContentRecord) -> Vec<Vec<ServerInfo>> {
        let live = self.bus.live_servers();
        let find = |id: &ServerId| live.iter().find(|s| &s.id == id).cloned();
        let mut holders: Vec<Vec<ServerInfo>> = (0..TOTAL_SHARDS)
            .map(|i| {
                content
                    .placement
                    .get(i)
                    .and_then(find)
                    .into_iter()
                    .collect()
            })
            .collect();
        if holders.iter().any(Vec::is_empty) {
            self.add_located(&content.hash, &mut holders).await;
        }
        holders
    }

    /// Adds the answers of a locate broadcast to `holders`.
    pub async fn add_located(&self, hash: &ContentHash, holders: &mut [Vec<ServerInfo>]) {
        match self.bus.locate(hash, self.config.locate_timeout).await {
            Ok(replies) => {
                for r in replies {
                    for s in r.shards {
                        if let Some(h) = holders.get_mut(usize::from(s))
                            && !h.contains(&r.server)
                        {
                            h.push(r.server.clone());
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(%hash, error = %e, "locate failed"),
        }
    }
}
