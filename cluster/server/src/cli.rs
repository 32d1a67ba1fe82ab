use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dos_server::local::{LocalCluster, LocalConfig};

/// dos: an erasure-coded, versioned, deduplicating object store.
#[derive(Parser)]
#[command(name = "dos-server", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in this process: an API server and six data servers, metadata in
    /// an embedded SQLite database, no services needed.
    Local {
        /// Folder for all data (metadata, secret, data1 … data6). Created if missing.
        #[arg(long, env = "DOS_ROOT", default_value = "./dos-data")]
        root: PathBuf,
        /// Address of the REST API.
        #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:23333")]
        listen: SocketAddr,
        /// Require `Authorization: Bearer TOKEN` on every request.
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Local {
            root,
            listen,
            token,
        } => {
            let mut config = LocalConfig::new(root.clone(), listen);
            config.token = token.filter(|t| !t.is_empty());
            let cluster = LocalCluster::start(config)
                .await
                .with_context(|| format!("cannot start the local cluster in {}", root.display()))?;
            eprintln!(
                "dos-server: serving http://{} (data in {}); Ctrl-C stops",
                cluster.api_addr(),
                root.display()
            );
            shutdown_signal().await;
            eprintln!("dos-server: shutting down");
            cluster.shutdown().await;
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
