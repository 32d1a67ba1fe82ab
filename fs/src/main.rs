//! `dosfs`: mount the dos object store as a filesystem.

mod cli;

use clap::Parser;

/// jemalloc reuses freed block buffers instead of handing them back to the kernel and faulting
/// fresh zeroed pages in for the next one (see BENCHMARKS.md, dosfs cold reads).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // Freed memory goes back to the kernel in the background (jemalloc's decay, 10 s), not
    // only when the program next allocates: an idle mount returns what a burst took.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("dosfs: allocator background purging not enabled: {e}");
    }
    // The daemon's own files (the embedded store, the cache, staging, the journal, the
    // token) are its owner's alone: files 0600, folders 0700. Files in the mount keep the
    // modes their programs give them.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Every file being written (and, with --writeback, every file waiting for its upload)
    // holds its staging file open: allow as many descriptors as the hard limit does.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            eprintln!("dosfs: could not raise the open-file limit: {e}");
        }
    }
    let args = cli::Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    match args.logging.log_format {
        dos_server::LogFormat::Text => logs.init(),
        dos_server::LogFormat::Json => logs.json().init(),
    }
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dosfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
