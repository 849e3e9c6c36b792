//! The `switchboard` binary.

mod bench;

use clap::{Parser, Subcommand};
use switchboard_server::{Config, Server};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time messaging server: rooms, presence, direct messages over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Config),
    /// Load generator: measure a running server (or a baseline).
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(config) => serve(config),
        Command::Bench(args) => bench::run(args),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::bind(config.clone()).await?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, "listening");
        // Tests and scripts read this line to learn the port.
        println!("switchboard listening on http://{addr}");
        server.run(shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    // Don't wait for lingering tasks (e.g. writers stuck on dead peers).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
