//! The in-process bus of `dos-server local`: heartbeats update a shared [`LiveSet`], locate
//! asks each registered responder directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use dos_protocol::{Change, ContentHash, LocateReply, ServerId, ServerInfo};

use crate::{Bus, BusError, ChangeEvent, ChangeStream, LiveSet, LocateResponder, Subscription};

type Responders = Arc<Mutex<HashMap<ServerId, (ServerInfo, Arc<dyn LocateResponder>)>>>;

#[derive(Clone)]
pub struct MemoryBus {
    live: LiveSet,
    responders: Responders,
    changes: tokio::sync::broadcast::Sender<ChangeEvent>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new(LiveSet::default())
    }
}

impl MemoryBus {
    pub fn new(live: LiveSet) -> Self {
        Self {
            live,
            responders: Arc::default(),
            changes: tokio::sync::broadcast::channel(crate::CHANGE_BACKLOG).0,
        }
    }

    pub fn live_set(&self) -> &LiveSet {
        &self.live
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn announce(
        &self,
        server: &ServerInfo,
        draining: bool,
        stats: Option<dos_protocol::ServerStats>,
    ) -> Result<(), BusError> {
        self.live.record_as(server, draining, stats);
        Ok(())
    }

    async fn serve_locate(
        &self,
        server: ServerInfo,
        responder: Arc<dyn LocateResponder>,
    ) -> Result<Subscription, BusError> {
        let id = server.id.clone();
        self.responders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), (server, responder));
        let responders = self.responders.clone();
        let live = self.live.clone();
        Ok(Subscription::new(move || {
            responders
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            live.remove(&id);
        }))
    }

    fn live_servers(&self) -> Vec<ServerInfo> {
        self.live.live()
    }

    fn draining_servers(&self) -> Vec<ServerId> {
        self.live.draining()
    }

    fn server_stats(&self) -> Vec<(ServerId, dos_protocol::ServerStats)> {
        self.live.stats()
    }

    async fn locate(
        &self,
        hash: &ContentHash,
        _timeout: Duration,
    ) -> Result<Vec<LocateReply>, BusError> {
        let responders: Vec<_> = self
            .responders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        Ok(responders
            .into_iter()
            .filter_map(|(server, r)| {
                let shards = r.shards_of(hash);
                (!shards.is_empty()).then_some(LocateReply { server, shards })
            })
            .collect())
    }

    async fn publish_change(&self, change: &Change) -> Result<(), BusError> {
        // No subscriber is no error.
        let _ = self.changes.send(ChangeEvent::Changed(change.clone()));
        Ok(())
    }

    fn changes(&self) -> ChangeStream {
        crate::change_stream(self.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contract() {
        crate::contract::run_all(|| async { MemoryBus::default() }).await;
    }
}
