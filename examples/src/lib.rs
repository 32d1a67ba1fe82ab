//! Examples and benchmarks.
