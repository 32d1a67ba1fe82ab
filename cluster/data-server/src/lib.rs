//! Data server: stores verified, optionally compressed shard files and serves them over HTTP.
