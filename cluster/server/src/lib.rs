//! Composition of dos servers: the embedded single-machine cluster ([`local`]) that
//! `dos-server local` and `dosfs mount` run, and the pieces the `dos-server` binary wires.

pub mod local;
pub mod metrics;
pub mod secret;
pub mod status;
pub mod tls;

/// How the binaries write their logs (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors), spans and their fields included.
    Json,
}

/// The logging flags of both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log lines as text, or as one JSON object per line (with the request's or the FUSE
    /// operation's span).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "DOS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}
