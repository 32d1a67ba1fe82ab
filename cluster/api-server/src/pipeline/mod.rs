//! Streaming pipelines between a client body and six shard streams.

pub mod read;
pub mod write;
