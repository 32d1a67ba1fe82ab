//! Placement: which servers take the shards of new content, which live servers hold the
//! shards of stored content, and where a rebuilt shard goes.

use dos_metadata::ContentRecord;
use dos_protocol::{ContentHash, ServerId, ServerInfo, TOTAL_SHARDS};
use rand::seq::SliceRandom;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};

/// For each shard index, the live servers believed to hold it, tried in order.
pub type Holders = Vec<Vec<ServerInfo>>;

/// Six distinct live servers in random order (shard `i` goes to the `i`-th), suspects (see
/// `health`) only when fewer than six others are live; or 503.
pub fn choose_servers(core: &Core) -> ApiResult<Vec<(u8, ServerInfo)>> {
    let mut live = core.bus.live_servers();
    if live.len() < TOTAL_SHARDS {
        return Err(ApiError::NotEnoughServers { live: live.len() });
    }
    live.shuffle(&mut rand::rng());
    core.health.suspects_last(&mut live);
    core.draining.last(&mut live, &core.bus.draining_servers());
    live.truncate(TOTAL_SHARDS);
    Ok(live
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as u8, s))
        .collect())
}

/// The live holders of each shard of `content`: the recorded placement first, then (only if
/// some shard has no live holder) whatever a locate broadcast finds.
pub async fn holders(core: &Core, content: &ContentRecord) -> Holders {
    let mut holders = recorded_holders(&core.bus.live_servers(), &content.placement);
    if holders.iter().any(Vec::is_empty) {
        add_located(core, &content.hash, &mut holders).await;
    }
    holders
}

/// The recorded placement resolved against the live set.
fn recorded_holders(live: &[ServerInfo], placement: &[ServerId]) -> Holders {
    let find = |id: &ServerId| live.iter().find(|s| &s.id == id).cloned();
    (0..TOTAL_SHARDS)
        .map(|i| placement.get(i).and_then(find).into_iter().collect())
        .collect()
}

/// Adds the answers of a locate broadcast to `holders`.
pub async fn add_located(core: &Core, hash: &ContentHash, holders: &mut Holders) {
    match core.bus.locate(hash, core.config.locate_timeout).await {
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

/// Why a shard could not be read: decides where repair writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardFault {
    /// Its server answered but has no good copy (missing or corrupt): rebuild there.
    Missing(ServerInfo),
    /// No live server could be reached for it: rebuild elsewhere if a spare server exists.
    Unreachable,
    /// Its server served bytes that do not match the recorded block hashes (its own checks
    /// passed, so it is not believed): rebuild on a spare server when one exists, else
    /// write it again there.
    Wrong(ServerInfo),
}

/// Where each bad shard is rebuilt: on the server that lost it when that server is live,
/// else on a live server that holds no shard of the object (`holding`) and was not picked
/// for another. Shards with no such server are left out (their repair is postponed).
pub fn repair_targets(
    live: &[ServerInfo],
    holding: &[ServerInfo],
    bad: &[(u8, ShardFault)],
) -> Vec<(u8, ServerInfo)> {
    let mut used: Vec<ServerId> = holding.iter().map(|s| s.id.clone()).collect();
    let mut targets = Vec::new();
    for (shard, fault) in bad {
        let spare = || live.iter().find(|s| !used.contains(&s.id)).cloned();
        let is_live = |s: &ServerInfo| live.iter().any(|l| l.id == s.id);
        let target = match fault {
            ShardFault::Missing(s) if is_live(s) => Some(s.clone()),
            ShardFault::Wrong(s) => spare().or_else(|| is_live(s).then(|| s.clone())),
            _ => spare(),
        };
        if let Some(t) = target {
            used.push(t.id.clone());
            targets.push((*shard, t));
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(i: usize) -> ServerInfo {
        ServerInfo {
            id: ServerId(format!("s{i}")),
            addr: format!("h:{i}"),
        }
    }

    #[test]
    fn holders_follow_the_live_set() {
        let live: Vec<_> = (0..5).map(server).collect();
        let placement: Vec<_> = (0..6).map(|i| server(i).id).collect();
        let h = recorded_holders(&live, &placement);
        assert_eq!(h[0], vec![server(0)]);
        assert!(h[5].is_empty(), "s5 is not live");
    }

    #[test]
    fn rebuilt_shards_go_home_or_to_a_spare() {
        let live: Vec<_> = (0..8).map(server).collect();
        let holding: Vec<_> = (0..4).map(server).collect();
        let bad = vec![
            (4, ShardFault::Missing(server(4))),
            (5, ShardFault::Unreachable),
        ];
        let t = repair_targets(&live, &holding, &bad);
        assert_eq!(t, vec![(4, server(4)), (5, server(5))]);
        // A lost server that is gone: its shard goes to a spare holding nothing.
        let live: Vec<_> = (0..7).filter(|i| *i != 4).map(server).collect();
        let bad = vec![(4, ShardFault::Missing(server(4)))];
        let t = repair_targets(&live, &holding, &bad);
        assert_eq!(t, vec![(4, server(5))]);
        // Six servers, one down: nowhere to go.
        let live: Vec<_> = (0..5).map(server).collect();
        let holding: Vec<_> = (0..5).map(server).collect();
        assert!(repair_targets(&live, &holding, &[(5, ShardFault::Unreachable)]).is_empty());
    }
}
