//! Shared helpers of the Elasticsearch engine's tests.
#![allow(dead_code)]

pub mod fake_es;
