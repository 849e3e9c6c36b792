//! Server configuration: every flag of `switchboard serve`, each also settable
//! through a `SWITCHBOARD_*` environment variable and a key of the
//! `--config` file ([`file`]).

pub mod file;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Address to listen on (HTTP and WebSocket). Use port 0 for any free port.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Interval between server ping frames. A peer that sends nothing for two
    /// intervals is closed (4009) and its presence leaves are broadcast.
    /// Units: ms, s, m (default s).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT", default_value = "25s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Idle plain-TCP WebSocket connections are parked: their socket is
    /// watched by one epoll of the server's instead of a task of their own
    /// (about 500 bytes less each). `quiet`: a connection parks when idle
    /// after its handshake and after each of its first 4 wake-ups, then
    /// only after a heartbeat interval without a data message; pings and
    /// pongs are answered while parked. `always`: whenever idle (for tests:
    /// every message unparks). `off`: never.
    #[arg(
        long,
        env = "SWITCHBOARD_PARK_IDLE",
        default_value = "quiet",
        value_enum
    )]
    pub park_idle: ParkIdle,

    /// Largest accepted WebSocket frame and message (after decompression);
    /// larger ones close the connection with 1009. Units: B, KiB, MiB.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME", default_value = "64KiB", value_parser = parse_size)]
    pub max_frame: usize,

    /// Commands per second a connection may send on /ws (token bucket).
    /// Commands over the limit get `rate_limited`; a client that keeps
    /// sending more than twice the limit is closed with 1008. 0 = unlimited.
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Burst size of the per-connection token bucket (commands).
    #[arg(long, env = "SWITCHBOARD_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// Bytes a connection may have waiting to be written before it is
    /// disconnected as a slow consumer (close 4008). Units: B, KiB, MiB.
    #[arg(long, env = "SWITCHBOARD_MAX_QUEUE", default_value = "1MiB", value_parser = parse_size)]
    pub max_queue: usize,

    /// permessage-deflate: messages shorter than this are sent uncompressed
    /// (as are those compression does not shrink). 0 compresses every
    /// message, even when it grows, for clients that mishandle mixed frames.
    #[arg(long, env = "SWITCHBOARD_COMPRESS_MIN", default_value = "64B", value_parser = parse_size_or_zero)]
    pub compress_min: usize,

    /// Maximum simultaneous client connections of every kind (WebSockets,
    /// plain HTTP, TLS handshakes); connections past it are answered 503 and
    /// closed at accept (with TLS: closed).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Time a connection without `?user=` has to send `hello` before it is
    /// made a guest. Units: ms, s, m.
    #[arg(long, env = "SWITCHBOARD_HELLO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub hello_timeout: Duration,

    /// Time an HTTP client has to send its request head (slowloris guard);
    /// also the longest an HTTP connection stays open idle between
    /// requests, and the time for a TLS handshake and an API request body.
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Where the embedded store keeps its files.
    #[arg(
        long,
        env = "SWITCHBOARD_DATA_DIR",
        default_value = "./switchboard-data"
    )]
    pub data_dir: std::path::PathBuf,

    /// Store backend: `sqlite` (durable, in --data-dir) or `memory`
    /// (nothing survives a restart; for tests and benchmarks).
    #[arg(long, env = "SWITCHBOARD_STORE", default_value = "sqlite", value_enum)]
    pub store: StoreKind,

    /// Cluster mode: share rooms, inboxes, history and presence with every
    /// node started with the same Redis (`redis://HOST:PORT[/DB]`). The
    /// embedded store (`--store`, `--data-dir`) is then not used.
    /// The URL may hold a password: `--help` and `config print` hide it.
    #[arg(long, env = "SWITCHBOARD_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// What to do when Redis cannot back "an ack means durable" (checked
    /// with CONFIG GET at start-up, see docs/OPERATIONS.md): `strict`
    /// refuses to start, `relaxed` warns and serves, `trust` skips the
    /// check (a Redis that forbids CONFIG, configured by someone who
    /// vouches for it).
    #[arg(
        long,
        env = "SWITCHBOARD_REDIS_DURABILITY",
        default_value = "strict",
        value_enum
    )]
    pub redis_durability: RedisDurability,

    /// How long a Redis call may take before the command answers
    /// `unavailable` (also the bound on a connect).
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// How long a cluster node's users stay online after the node stops
    /// renewing (a `kill -9`, a partition): their presence `leave`s go out
    /// within this plus a fifth of it. Renewed every fifth; shorter means
    /// faster leaves and more Redis calls.
    #[arg(long, env = "SWITCHBOARD_NODE_LEASE", default_value = "5s", value_parser = parse_duration)]
    pub node_lease: Duration,

    /// This node's name in the cluster (default: host name, process id and
    /// start time, so a restarted node is a new node). No `|` or `:`.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,

    /// Messages kept per room and per user inbox; older ones are dropped.
    #[arg(long, env = "SWITCHBOARD_RETENTION_COUNT", default_value_t = 10_000)]
    pub retention_count: u64,

    /// Messages older than this are dropped. Units: s, m, h, d.
    #[arg(long, env = "SWITCHBOARD_RETENTION_AGE", default_value = "30d", value_parser = parse_duration)]
    pub retention_age: Duration,

    /// A `publish`/`send` repeating an `id` the same user used within this
    /// window is acknowledged again and not stored or delivered twice.
    #[arg(long, env = "SWITCHBOARD_DEDUPE_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub dedupe_window: Duration,

    /// How long after sending a user may `edit` their message (counted from
    /// its `ts`). Units: s, m, h, d.
    #[arg(long, env = "SWITCHBOARD_EDIT_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub edit_window: Duration,

    /// How long after sending a user may `recall` their message.
    #[arg(long, env = "SWITCHBOARD_RECALL_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub recall_window: Duration,

    /// Most dedupe entries kept; beyond it the oldest are dropped early
    /// (the window shrinks under a flood instead of memory growing).
    #[arg(long, env = "SWITCHBOARD_MAX_DEDUPE", default_value_t = 1_000_000)]
    pub max_dedupe: usize,

    /// Most rooms with a seq counter (rooms holding messages or members);
    /// a publish to a new room beyond it gets `unavailable`. A room is
    /// forgotten once its messages expired and nobody is in it.
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS", default_value_t = 1_000_000)]
    pub max_rooms: usize,

    /// Most user inboxes with a seq counter; a `send` to a new recipient
    /// beyond it gets `unavailable`. Forgotten like rooms.
    #[arg(long, env = "SWITCHBOARD_MAX_INBOXES", default_value_t = 1_000_000)]
    pub max_inboxes: usize,

    /// Most messages replayed on `join` with `since` (and on inbox delivery);
    /// a client further behind gets `reset` and the newest ones.
    #[arg(long, env = "SWITCHBOARD_REPLAY_LIMIT", default_value_t = 1000)]
    pub replay_limit: usize,

    /// Bearer key for the HTTP server API (/api/...). The API is off when unset.
    #[arg(long, env = "SWITCHBOARD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Turns authentication on: HS256 secret that client JWTs are signed
    /// with (also used by `switchboard token`).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Turns authentication on: PEM public key (RSA for RS256, EC P-256 for
    /// ES256) that client JWTs are verified with.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Turns authentication on: a JWKS file (JSON Web Key Set); the token's
    /// `kid` picks the key.
    #[arg(long, env = "SWITCHBOARD_JWKS")]
    pub jwks: Option<std::path::PathBuf>,

    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration_or_zero)]
    pub jwt_leeway: Duration,

    /// Origins allowed to open WebSockets (browser `Origin` header): exact
    /// (`https://chat.example.com`) or wildcard subdomains
    /// (`https://*.example.com`), comma-separated. Others get 403, except a
    /// page this server serves at an IP address or `localhost`; list the
    /// origin you serve the chat app at under a name. Unset: any origin
    /// (fine for tokens in headers/queries; set it in production).
    #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    // The pair is checked by `Config::validate`, not clap's `requires`:
    // clap only counts flags and environment variables, so one half given
    // on the command line and the other in a `--config` file would be
    // refused, and both halves missing one in the file would pass.
    /// PEM certificate chain: serve https:// and wss:// (needs --tls-key).
    /// Reloaded on SIGHUP.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Most simultaneous connections one user may hold (0 = unlimited).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_USER",
        default_value_t = 32
    )]
    pub max_connections_per_user: usize,

    /// Most simultaneous connections from one IP address, of every kind (0 =
    /// unlimited); past it, 429 and closed at accept. Through a trusted
    /// proxy, WebSockets count under the forwarded address instead.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP",
        default_value_t = 1000
    )]
    pub max_connections_per_ip: usize,

    /// New WebSocket connections per second one IP may open (token bucket,
    /// burst of twice this; 0 = unlimited).
    #[arg(long, env = "SWITCHBOARD_CONNECT_RATE_PER_IP", default_value_t = 100)]
    pub connect_rate_per_ip: u32,

    /// Most rooms one connection may be in at once.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_ROOMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_rooms_per_connection: usize,

    /// Largest `body` of a publish or send, in bytes of JSON (`too_large`
    /// beyond). Units: B, KiB, MiB.
    #[arg(long, env = "SWITCHBOARD_MAX_BODY", default_value = "32KiB", value_parser = parse_size)]
    pub max_body: usize,

    /// Proxies (IP addresses) whose `X-Forwarded-For` is trusted for the
    /// client address; from anyone else the header is ignored.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Rooms with at most this many users online get every presence change
    /// as it happens (`presence` with `event`). In bigger rooms a change
    /// after a quiet --presence-interval goes out at once, and later ones
    /// are batched into one `presence` delta per interval (`joined`, `left`,
    /// `more`): a room filling to n users costs each member about one frame
    /// per interval instead of n.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_BATCH_ABOVE", default_value_t = 8)]
    pub presence_batch_above: usize,

    /// The shortest time between two presence frames of a room with more
    /// than --presence-batch-above users online. Units: ms, s, m.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub presence_interval: Duration,

    /// On SIGTERM/SIGINT, how long to wait for connections to close after
    /// sending them close 1001 before exiting anyway.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log format on stderr: `text` (for people; coloured only when stderr
    /// is a terminal and NO_COLOR is unset) or `json` (one object per line,
    /// for log shippers). `RUST_LOG` picks the level.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "text",
        value_enum
    )]
    pub log_format: LogFormat,
}

impl Config {
    /// Rules across settings, which clap does not check for us.
    pub fn validate(&self) -> Result<(), String> {
        let tls: Result<(), String> = match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(
                "tls_cert (--tls-cert) is set but tls_key (--tls-key) is not: \
                                    TLS needs both"
                    .into(),
            ),
            (None, Some(_)) => Err(
                "tls_key (--tls-key) is set but tls_cert (--tls-cert) is not: \
                                    TLS needs both"
                    .into(),
            ),
            _ => Ok(()),
        };
        tls?;
        if self.redis.is_some() && self.node_lease < self.redis_timeout * 2 {
            // A renewal may take up to the timeout: a shorter lease would
            // have live nodes reaped (and their users' presence flap)
            // whenever Redis is slow.
            return Err(format!(
                "node_lease (--node-lease, {} ms) must be at least twice \
                 redis_timeout (--redis-timeout, {} ms)",
                self.node_lease.as_millis(),
                self.redis_timeout.as_millis()
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            heartbeat: Duration::from_secs(25),
            park_idle: ParkIdle::Quiet,
            max_frame: 64 * 1024,
            rate_limit: 100,
            rate_burst: 200,
            max_queue: 1024 * 1024,
            compress_min: switchboard_ws::COMPRESS_MIN,
            max_connections: 100_000,
            hello_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            data_dir: "./switchboard-data".into(),
            store: StoreKind::Sqlite,
            redis: None,
            redis_durability: RedisDurability::Strict,
            redis_timeout: Duration::from_secs(2),
            node_lease: Duration::from_secs(5),
            node_id: None,
            retention_count: 10_000,
            retention_age: Duration::from_secs(30 * 86_400),
            dedupe_window: Duration::from_secs(300),
            edit_window: Duration::from_secs(900),
            recall_window: Duration::from_secs(120),
            max_dedupe: 1_000_000,
            max_rooms: 1_000_000,
            max_inboxes: 1_000_000,
            replay_limit: 1000,
            api_key: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwks: None,
            jwt_leeway: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_connections_per_user: 32,
            max_connections_per_ip: 1000,
            connect_rate_per_ip: 100,
            max_rooms_per_connection: 100,
            max_body: 32 * 1024,
            trusted_proxies: Vec::new(),
            presence_batch_above: 8,
            presence_interval: Duration::from_secs(1),
            log_format: LogFormat::Text,
        }
    }
}

/// The `--store` backends. (Plain comments on the variants: doc comments
/// would add per-value descriptions to `--help`.)
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    // Durable, in --data-dir.
    Sqlite,
    // Nothing survives a restart.
    Memory,
}

/// The `--redis-durability` choices.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisDurability {
    // Refuse to start unless an ack means durable.
    Strict,
    // Warn and serve.
    Relaxed,
    // Do not check (CONFIG is not allowed).
    Trust,
}

/// The `--park-idle` choices.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkIdle {
    // After the handshake, then after a quiet heartbeat interval.
    Quiet,
    // Whenever idle (tests).
    Always,
    // Never.
    Off,
}

/// The `--log-format` choices.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    // Human-readable lines.
    Text,
    // One JSON object per line.
    Json,
}

/// Parses `500ms`, `25s`, `2m`, `12h`, `30d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}`"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("duration must be positive: `{text}`"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Like [`parse_duration`], but `0` (any unit) is allowed.
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let number = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if number.parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// Parses `65536`, `64KiB`, `1MiB` (also `KB`/`MB`, read as binary units).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size `{text}`"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` (use B, KiB or MiB)")),
    };
    match value.checked_mul(scale) {
        Some(0) => Err("size must be positive".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("size too large: `{text}`")),
    }
}

/// Like [`parse_size`], but 0 is allowed.
pub fn parse_size_or_zero(text: &str) -> Result<usize, String> {
    if text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        == "0"
    {
        return Ok(0);
    }
    parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn a_node_lease_must_outlast_two_redis_timeouts() {
        use clap::Parser;
        let parse = |args: &[&str]| Serve::try_parse_from(["serve"].iter().chain(args));
        let short = parse(&["--redis", "redis://h", "--node-lease", "3s"]).unwrap();
        let err = short.config.validate().unwrap_err();
        assert!(err.contains("node_lease"), "{err}");
        let fine = parse(&["--redis", "redis://h", "--node-lease", "4s"]).unwrap();
        assert_eq!(fine.config.validate(), Ok(()));
        // Without --redis there is no lease to judge.
        let single = parse(&["--node-lease", "1s"]).unwrap();
        assert_eq!(single.config.validate(), Ok(()));
    }

    #[test]
    fn store_kinds() {
        use clap::Parser;
        let parse = |args: &[&str]| Serve::try_parse_from(["serve"].iter().chain(args));
        assert_eq!(parse(&[]).unwrap().config.store, StoreKind::Sqlite);
        let memory = parse(&["--store", "memory"]).unwrap();
        assert_eq!(memory.config.store, StoreKind::Memory);
        let sqlite = parse(&["--store", "sqlite"]).unwrap();
        assert_eq!(sqlite.config.store, StoreKind::Sqlite);
        let unknown = parse(&["--store", "redis"]).err().unwrap().to_string();
        assert!(
            unknown.contains("[possible values: sqlite, memory]"),
            "{unknown}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25s").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_duration("25").unwrap(), Duration::from_secs(25));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("3w").is_err());
        assert_eq!(parse_duration_or_zero("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration_or_zero("5s").unwrap(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_size_or_zero("0").unwrap(), 0);
        assert_eq!(parse_size_or_zero("0B").unwrap(), 0);
        assert_eq!(parse_size_or_zero("1KiB").unwrap(), 1024);
    }
}
