//! The `switchboard` binary.

use clap::{Parser, Subcommand};
use switchboard_server::{Config, Server};

mod connect;

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
    /// A terminal client: join rooms, chat, send direct messages (/help).
    Connect(connect::ConnectArgs),
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
        Command::Connect(args) => connect::run(args),
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
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config.clone()).await?;
        let addr = server.local_addr()?;
        tracing::info!(%addr, "listening");
        // Tests and scripts read this line to learn the port.
        println!("switchboard listening on {}://{addr}", server.scheme());
        server.run(shutdown).await;
        anyhow::Ok(())
    })?;
    // Don't wait for lingering tasks (e.g. writers stuck on dead peers).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives right after the
/// "listening" line must shut down gracefully, not kill the process.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}
