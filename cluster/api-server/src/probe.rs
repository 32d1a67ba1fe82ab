//! One way to ask the holders of an object's shards something, used by reads (open a
//! stream), repair (is the shard there?) and scrub (verify the whole shard): every shard is
//! asked at once; for each, its holders are tried in order and the first good answer wins.
//! The result says which shards answered, which are bad and why, and whether that is a
//! quorum (enough good shards to decode the object).

use std::future::Future;

use dos_protocol::{DATA_SHARDS, ServerInfo};
use dos_transport::ShardError;
use futures::future;

use crate::placement::{Holders, ShardFault};

/// The outcome of a probe of some shards.
#[derive(Debug)]
pub struct Probe<T> {
    /// Shards that answered: index, the server that did, its answer.
    pub good: Vec<(u8, ServerInfo, T)>,
    /// Shards no holder answered well for.
    pub bad: Vec<(u8, ShardFault)>,
}

impl<T> Probe<T> {
    /// Enough good shards to decode the object.
    pub fn has_quorum(&self) -> bool {
        self.good.len() >= DATA_SHARDS
    }

    /// The servers that answered for a shard.
    pub fn holding(&self) -> Vec<ServerInfo> {
        self.good.iter().map(|(_, s, _)| s.clone()).collect()
    }
}

/// Asks `ask(shard, server)` of each shard in `shards`, trying its holders in order. A holder
/// that answers "missing" or "corrupt" makes the fault [`ShardFault::Missing`] (repair
/// rebuilds it there) unless a later holder has a good copy; one that cannot be reached is
/// skipped; a shard nobody could be asked about is [`ShardFault::Unreachable`].
pub async fn probe<T, F, Fut>(holders: &Holders, shards: &[u8], ask: F) -> Probe<T>
where
    F: Fn(u8, ServerInfo) -> Fut,
    Fut: Future<Output = Result<T, ShardError>>,
{
    let ask = &ask;
    let outcomes = future::join_all(shards.iter().map(|&shard| async move {
        let mut fault = ShardFault::Unreachable;
        let candidates = holders.get(usize::from(shard)).cloned().unwrap_or_default();
        for server in candidates {
            match ask(shard, server.clone()).await {
                Ok(answer) => return (shard, Ok((server, answer))),
                Err(e) => {
                    tracing::info!(shard, server = %server.id, error = %e, "shard unavailable");
                    if e.is_missing() && fault == ShardFault::Unreachable {
                        fault = ShardFault::Missing(server);
                    }
                }
            }
        }
        (shard, Err(fault))
    }))
    .await;
    let mut probe = Probe {
        good: Vec::new(),
        bad: Vec::new(),
    };
    for (shard, outcome) in outcomes {
        match outcome {
            Ok((server, answer)) => probe.good.push((shard, server, answer)),
            Err(fault) => probe.bad.push((shard, fault)),
        }
    }
    probe
}

#[cfg(test)]
mod tests {
    use super::*;
    use dos_protocol::ServerId;

    fn server(i: usize) -> ServerInfo {
        ServerInfo {
            id: ServerId(format!("s{i}")),
            addr: format!("h:{i}"),
        }
    }

    #[tokio::test]
    async fn first_good_holder_wins_and_faults_say_why() {
        // Shard 0 on s0; shard 1 missing on s1 but good on s7; shard 2 missing on s2;
        // shard 3 unreachable on s3; shard 4 has no holder.
        let holders: Holders = vec![
            vec![server(0)],
            vec![server(1), server(7)],
            vec![server(2)],
            vec![server(3)],
            vec![],
        ];
        let p = probe(&holders, &[0, 1, 2, 3, 4], |shard, s| async move {
            match (shard, s.id.0.as_str()) {
                (1, "s1") | (2, _) => Err(ShardError::NotFound),
                (3, _) => Err(ShardError::Unreachable("down".into())),
                _ => Ok(shard * 10),
            }
        })
        .await;
        let good: Vec<_> = p
            .good
            .iter()
            .map(|(i, s, v)| (*i, s.id.0.clone(), *v))
            .collect();
        assert_eq!(good, vec![(0, "s0".into(), 0), (1, "s7".into(), 10)]);
        assert_eq!(
            p.bad,
            vec![
                (2, ShardFault::Missing(server(2))),
                (3, ShardFault::Unreachable),
                (4, ShardFault::Unreachable)
            ]
        );
        assert!(!p.has_quorum());
    }
}
