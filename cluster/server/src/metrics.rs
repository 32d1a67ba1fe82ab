//! Installs the Prometheus exporter of a process (binaries call this once, before starting
//! servers): every family the libraries record through the `metrics` facade is then
//! rendered at `/metrics`. Histograms get fixed buckets (seconds).

use dos_worker::http::Metrics;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Bucket bounds of every histogram (they all measure seconds): 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Installs the exporter as this process's recorder and returns what renders it. Fails if
/// another recorder was installed before.
pub fn install() -> anyhow::Result<Metrics> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    Ok(Metrics::new(
        move || handle.render(),
        move || upkeep.run_upkeep(),
    ))
}
