//! The operator's commands that work through a mount like any program does: `dosfs stats`
//! (live rates from `.dosfs/stats`), `dosfs warmup` (read trees into the cache), `dosfs check`
//! (verify and repair trees' stored content) and `dosfs bench` (a short benchmark in a
//! temporary folder). Plain `std::fs` I/O, no FUSE types.

pub mod bench;
pub mod check;
pub mod top;
pub mod warmup;

/// `bytes` as MiB with one decimal.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
}

/// A human size: B, KiB, MiB or GiB.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1 << 10 {
        format!("{bytes} B")
    } else if bytes < 1 << 20 {
        format!("{:.1} KiB", b / 1024.0)
    } else if bytes < 1 << 30 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    }
}

/// A progress bar of `total` bytes on stderr when `shown` (a terminal), else a hidden one.
pub fn bytes_bar(total: u64, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}
