//! `dos-server`: the composition root. Parses flags (with environment fallbacks), sets up
//! logging, starts what the command names, and stops it on Ctrl-C or SIGTERM.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    // Everything this process creates (shards, metadata, secrets, logs) is its owner's
    // alone: files 0600, folders 0700.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.logging.log_format {
        dos_server::LogFormat::Text => logs.init(),
        dos_server::LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dos-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dos-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
