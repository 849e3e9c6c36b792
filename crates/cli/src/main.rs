//! The `switchboard` binary.

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
    Serve(Box<Config>),
    /// Mint a JWT for local development (HS256 with the server's secret).
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Lifetime. Units: s, m, h, d.
    #[arg(long, default_value = "1h", value_parser = switchboard_server::config::parse_duration)]
    ttl: std::time::Duration,
    /// Room patterns the token allows (`team-*`), comma-separated; all rooms when absent.
    #[arg(long, value_delimiter = ',')]
    rooms: Option<Vec<String>>,
    /// Display name (`name` claim).
    #[arg(long)]
    name: Option<String>,
    /// The HS256 secret the server verifies with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    secret: String,
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
        Command::Serve(config) => serve(*config),
        Command::Token(args) => token(args),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    switchboard_protocol::validate_user(&args.user).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = switchboard_server::auth::Claims {
        sub: args.user,
        exp: now + args.ttl.as_secs(),
        nbf: None,
        name: args.name,
        rooms: args.rooms,
    };
    let token = switchboard_server::auth::mint(&args.secret, &claims)?;
    println!("{token}");
    Ok(())
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
        println!("switchboard listening on {}://{addr}", server.scheme());
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
