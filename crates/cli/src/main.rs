//! The `switchboard` binary.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use switchboard_server::config::file::ConfigFile;
use switchboard_server::config::LogFormat;
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
    Serve(Box<ServeArgs>),
    /// Mint a JWT for local development (HS256 with the server's secret).
    Token(TokenArgs),
    /// A terminal client: join rooms, chat, send direct messages (/help).
    Connect(connect::ConnectArgs),
    /// Check a configuration file, or show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file of settings: each flag is a key, written with `_` for `-`
    /// (`max_frame = "1MiB"`). Flags and SWITCHBOARD_* variables win over it.
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Config,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check FILE as `serve --config FILE` would use it (with the
    /// SWITCHBOARD_* environment), without starting: exit 0 when it would
    /// start, else 2 and the problem (file, line and column for the file's).
    Check {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print the effective configuration as a TOML file, each value with its
    /// source (flag, variable, file line, default); secrets are redacted.
    /// Takes every `serve` flag.
    Print(Box<ServeArgs>),
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

/// The exit code of a configuration that cannot be used, as for clap's
/// usage errors.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let (cli, matches, file) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let log_format = match &cli.command {
        Command::Serve(serve) => serve.settings.log_format,
        _ => LogFormat::Text,
    };
    init_logs(log_format);
    let result = match cli.command {
        Command::Serve(serve) => match serve.settings.validate() {
            Ok(()) => self::serve(serve.settings),
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(BAD_CONFIG);
            }
        },
        Command::Token(args) => token(args),
        Command::Connect(args) => connect::run(args),
        Command::Config(ConfigCommand::Check { file: path }) => {
            // `parse` has loaded the file and parsed it with the
            // environment, as the `config print` settings.
            match matches.as_ref().map_or(Ok(()), check) {
                Ok(()) => {
                    println!("{}: ok", path.display());
                    Ok(())
                }
                Err(message) => {
                    eprintln!("error: {}: {message}", path.display());
                    return ExitCode::from(BAD_CONFIG);
                }
            }
        }
        Command::Config(ConfigCommand::Print(_)) => {
            if let Some(matches) = &matches {
                print!(
                    "{}",
                    switchboard_server::config::file::describe(matches, file.as_ref())
                );
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:?}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line, reading the `--config` file (or `config check`'s
/// FILE) when there is one. Also returns the `serve` settings' matches (for
/// `config check` and `config print`) and the file.
///
/// Two passes: the first finds the file's name; the second parses again with
/// the file's values as defaults, so that flags and environment still win.
/// A command line the first pass refuses is refused whatever the file says
/// (the file only adds defaults), so clap may exit there as usual.
fn parse(args: &[OsString]) -> Result<(Cli, Option<ArgMatches>, Option<ConfigFile>), String> {
    let first = Cli::parse_from(args);
    let checking = matches!(first.command, Command::Config(ConfigCommand::Check { .. }));
    let (path, serve_args): (Option<PathBuf>, Vec<OsString>) = match &first.command {
        Command::Serve(serve) => (serve.config.clone(), args.to_vec()),
        Command::Config(ConfigCommand::Print(serve)) => (serve.config.clone(), args.to_vec()),
        // Checked as `serve` would run with it: no flags, the environment.
        Command::Config(ConfigCommand::Check { file }) => {
            let serve = vec![
                args.first()
                    .cloned()
                    .unwrap_or_else(|| "switchboard".into()),
                "config".into(),
                "print".into(),
            ];
            (Some(file.clone()), serve)
        }
        Command::Token(_) | Command::Connect(_) => return Ok((first, None, None)),
    };
    let file = match path {
        Some(path) => Some(ConfigFile::load(&path).map_err(|e| e.to_string())?),
        None => None,
    };
    let command = match &file {
        Some(file) => Cli::command()
            .mut_subcommand("serve", |serve| file.apply(serve))
            .mut_subcommand("config", |config| {
                config.mut_subcommand("print", |print| file.apply(print))
            }),
        None => Cli::command(),
    };
    let matches = match command.try_get_matches_from(&serve_args) {
        Ok(matches) => matches,
        // Only the environment can be wrong here (`config check` parses no
        // flags), and clap's usage text would be `config print`'s.
        Err(error) if checking => {
            return Err(format!(
                "{} (set in the environment: `config check` applies SWITCHBOARD_* variables as `serve` would)",
                clap_message(&error)
            ))
        }
        Err(error) => error.exit(),
    };
    let settings = match matches.subcommand() {
        Some(("config", config)) => config.subcommand_matches("print").cloned(),
        Some(("serve", serve)) => Some(serve.clone()),
        _ => None,
    };
    let cli = match first.command {
        // `config check` keeps its own command; its settings are in `settings`.
        Command::Config(ConfigCommand::Check { .. }) => first,
        _ => Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?,
    };
    Ok((cli, settings, file))
}

/// A clap error's message without its `error:` prefix, usage and tips.
fn clap_message(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message = rendered.trim_start_matches("error: ");
    let end = ["\n\nUsage:", "\n\nFor more information"]
        .iter()
        .filter_map(|marker| message.find(marker))
        .min()
        .unwrap_or(message.len());
    message[..end].trim_end().to_string()
}

/// What `serve` checks before it binds, on the settings of `config check`.
fn check(matches: &ArgMatches) -> Result<(), String> {
    let serve = ServeArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
    Server::check(&serve.settings).map_err(|e| format!("{e:#}"))
}

/// Logs go to stderr (stdout carries the "listening" line scripts read).
/// Colour only for a person at a terminal: never into a file or pipe, and
/// not when NO_COLOR (https://no-color.org) is set to anything non-empty.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            // The event's fields beside `level`, `target` and `timestamp`,
            // not nested under `fields`: what log shippers index.
            .flatten_event(true)
            .with_ansi(false)
            .init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
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
