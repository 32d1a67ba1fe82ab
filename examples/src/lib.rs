//! Examples and benchmarks live under `examples/`; see the README there.
