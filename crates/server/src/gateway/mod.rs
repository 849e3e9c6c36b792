//! The network edge: an HTTP/1.1 server (hyper + axum routes) whose
//! WebSocket endpoints hand the raw TCP stream to our own frame codec.
//!
//! Every adapter here is thin: `/ws` (`session.rs`) and the HTTP API
//! (`api.rs`) decode, call the command layer ([`crate::service`]), and
//! encode; no rule about what a client may do lives in this module.
//! `/relay/{channel}` forwards frames verbatim (`relay.rs`). Both WebSocket
//! endpoints run the same socket loop (`socket.rs`).

mod admin;
mod api;
mod cluster_setup;
mod guard;
mod http;
mod park;
mod relay;
mod session;
mod socket;
mod sse;
mod tls;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tower_service::Service as _;

use crate::auth::{Authenticator, JwtAuth, NoAuth};
use crate::config::{Config, StoreKind};
use crate::hub::{Hub, PresencePolicy};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Settings};
use crate::service::rate::{Rate, SIGNAL_RATE};
use crate::service::Service;
use crate::store::{MemoryStore, Retention, SqliteStore, Store, StoreError};

/// Everything a request handler needs: the command layer (which it derefs
/// to, for `app.hub`, `app.config`, …) plus the network edge's own state.
pub struct App {
    pub service: Arc<Service>,
    /// Connection slots (global and per IP) and the connect rate per IP.
    pub gate: Arc<guard::Gate>,
    shutting_down: AtomicBool,
    /// Fired whenever a WebSocket connection ends (for shutdown draining).
    conn_closed: Notify,
    /// Sessions of the HTTP fallback transport (`/sse`).
    sse: sse::SseSessions,
    /// Idle WebSocket connections parked outside tasks.
    parking: Arc<park::Parking<http::Boxed>>,
}

impl std::ops::Deref for App {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}

pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    /// With `--tls-cert`: the TLS acceptor, and SIGHUP to reload it.
    tls: Option<(Arc<tls::Tls>, Signal)>,
}

impl Server {
    /// Binds the listening socket (so the caller learns the real port when
    /// `listen` has port 0) without serving yet.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        config.validate().map_err(anyhow::Error::msg)?;
        // Certificates first: a bad file stops start-up before anything else.
        let tls = match load_tls(&config)? {
            Some(tls) => {
                // Installed before we serve, so a SIGHUP never kills us.
                let hangup = signal(SignalKind::hangup())?;
                Some((Arc::new(tls), hangup))
            }
            None => None,
        };
        let presence = PresencePolicy {
            batch_above: config.presence_batch_above,
            interval_ms: config.presence_interval.as_millis().max(1) as u64,
        };
        let settings = Settings {
            retention: Retention {
                count: config.retention_count,
                age_ms: config.retention_age.as_millis() as u64,
            },
            dedupe_window: config.dedupe_window,
            max_rooms: config.max_rooms,
            max_inboxes: config.max_inboxes,
            max_dedupe: config.max_dedupe,
            edit_window: config.edit_window,
            recall_window: config.recall_window,
        };
        if let Some(url) = config.redis.clone() {
            let auth = load_auth(&config)?;
            let node = cluster_setup::Node::open(&config, &url, presence, settings).await?;
            return Server::finish(
                config,
                tls,
                node.hub,
                node.store,
                node.pipeline,
                auth,
                Some(node.cluster),
            );
        }
        let store: Arc<dyn Store> = match config.store {
            StoreKind::Memory => Arc::new(MemoryStore::new()),
            StoreKind::Sqlite => Arc::new(SqliteStore::open(&config.data_dir).map_err(|e| {
                let dir = config.data_dir.display();
                // Corruption is the one failure a retry cannot fix: say
                // what the operator can do.
                let advice = match e {
                    StoreError::Corrupt(_) => format!(
                        "\nthe database is damaged: restore {dir}/switchboard.db from a backup, \
                         or move it (with its -wal and -shm files) aside to start with an empty store"
                    ),
                    _ => String::new(),
                };
                anyhow::anyhow!("cannot open the store in {dir}: {e}{advice}")
            })?),
        };
        let auth = load_auth(&config)?;
        let hub = Arc::new(Hub::with_presence(Arc::new(Metrics::new()), presence));
        let pipeline = Pipeline::start(store.clone(), hub.clone(), settings)
            .map_err(|e| anyhow::anyhow!("cannot recover the store: {e}"))?;
        Server::finish(config, tls, hub, store, pipeline, auth, None)
    }

    /// Binds the socket and assembles the app (both store kinds).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        config: Config,
        tls: Option<(Arc<tls::Tls>, Signal)>,
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        pipeline: Pipeline,
        auth: Box<dyn Authenticator>,
        cluster: Option<crate::service::Cluster>,
    ) -> anyhow::Result<Server> {
        let listener = listen(config.listen).map_err(|e| cannot_listen(config.listen, e))?;
        let gate = Arc::new(guard::Gate::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.connect_rate_per_ip,
            config.trusted_proxies.clone(),
            hub.metrics.sockets.clone(),
        ));
        let command_rate = Rate::new(config.rate_limit, config.rate_burst);
        let parking = park::Parking::new(hub.clone(), config.park_idle, config.max_frame)
            .map_err(|e| anyhow::anyhow!("cannot create the epoll for idle connections: {e}"))?;
        let app = Arc::new(App {
            service: Arc::new(Service {
                config,
                hub,
                store,
                pipeline,
                auth,
                cluster,
                command_rate,
                signal_rate: Rate::new(SIGNAL_RATE, SIGNAL_RATE),
                no_device: Arc::from(""),
                session_ids: std::hash::RandomState::new(),
            }),
            gate,
            shutting_down: AtomicBool::new(false),
            conn_closed: Notify::new(),
            sse: sse::SseSessions::default(),
            parking,
        });
        Ok(Server { listener, app, tls })
    }

    /// What `bind` checks before it opens the store or the socket: the
    /// settings' own rules, the TLS certificate and key, the JWT keys.
    /// For `switchboard config check`.
    pub fn check(config: &Config) -> anyhow::Result<()> {
        config.validate().map_err(anyhow::Error::msg)?;
        load_tls(config)?;
        load_auth(config)?;
        Ok(())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until `shutdown` completes, then closes every WebSocket with
    /// 1001 and waits (bounded by `shutdown_timeout`) for them to go.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { listener, app, tls } = self;
        let router = http::router(app.clone());
        let heartbeat = tokio::spawn(heartbeat_loop(app.clone()));
        let parked = tokio::spawn(app.parking.clone().watch());
        let presence = tokio::spawn(presence_loop(app.clone()));
        let gate = app.gate.clone();
        let trims = app.hub.metrics.memory_trims.clone();
        let trim = tokio::spawn(crate::memory::trim_after_waves(move || gate.churn(), trims));
        let (tls, reloader) = match tls {
            Some((tls, hangup)) => {
                let reloader = tokio::spawn(reload_on_hangup(tls.clone(), hangup, app.clone()));
                (Some(tls), Some(reloader))
            }
            None => (None, None),
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match app.gate.open(peer.ip()) {
                        Ok(slot) => {
                            let serve = serve_connection(stream, peer, slot, router.clone(), app.clone(), tls.clone());
                            tokio::spawn(serve);
                        }
                        Err(refusal) => refuse_at_accept(&app, stream, peer, refusal, tls.is_some()),
                    },
                    Err(err) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        app.shutting_down.store(true, Ordering::SeqCst);
        let open = app.hub.connection_count();
        tracing::info!(open, "shutting down: closing connections with 1001");
        app.hub.close_all(
            switchboard_protocol::close::GOING_AWAY,
            "server shutting down",
        );
        let drained = async {
            loop {
                let closed = app.conn_closed.notified();
                tokio::pin!(closed);
                closed.as_mut().enable();
                if app.hub.connection_count() == 0 {
                    break;
                }
                closed.await;
            }
        };
        if tokio::time::timeout(app.config.shutdown_timeout, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                left = app.hub.connection_count(),
                "shutdown timeout: exiting with connections open"
            );
        }
        heartbeat.abort();
        presence.abort();
        parked.abort();
        trim.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        // Commit whatever is still queued before exiting.
        let pipeline_app = app.clone();
        let _ = tokio::task::spawn_blocking(move || pipeline_app.pipeline.stop()).await;
        if let Some(cluster) = &app.cluster {
            // Our users' leaves now, not when the lease runs out.
            cluster.retire(app.config.shutdown_timeout).await;
        }
        tracing::info!("shutdown complete");
    }
}

/// Turns away a connection over the limits, at once and without waiting
/// on the client: on plain HTTP with a canned 503/429 (what a WebSocket
/// client or a load balancer can report), on TLS by closing (a handshake
/// costs more than the refusal should).
/// The TLS acceptor, when `--tls-cert` and `--tls-key` are set.
fn load_tls(config: &Config) -> anyhow::Result<Option<tls::Tls>> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(tls::Tls::load(cert, key)?)),
        _ => Ok(None),
    }
}

/// JWT verification when any of its keys is set, else everyone is trusted.
fn load_auth(config: &Config) -> anyhow::Result<Box<dyn Authenticator>> {
    if config.jwt_secret.is_none() && config.jwt_public_key.is_none() && config.jwks.is_none() {
        return Ok(Box::new(NoAuth));
    }
    let auth = JwtAuth::new(
        config.jwt_secret.as_deref(),
        config.jwt_public_key.as_deref(),
        config.jwks.as_deref(),
        config.jwt_leeway,
    )
    .map_err(|e| anyhow::anyhow!("JWT configuration: {e}"))?;
    Ok(Box::new(auth))
}

fn refuse_at_accept(
    app: &App,
    stream: TcpStream,
    peer: SocketAddr,
    refusal: guard::Refusal,
    tls: bool,
) {
    app.hub.metrics.connections_refused.increment(1);
    // Per IP, only direct clients are limited here (a trusted proxy's
    // connections count under their forwarded address at the upgrade), so
    // the peer is the client.
    tracing::debug!(client = %peer.ip(), %peer, reason = refusal.reason(), "connection refused at accept");
    if tls {
        return;
    }
    let response: &[u8] = match refusal {
        guard::Refusal::Full => concat!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n",
            "Content-Length: 25\r\nConnection: close\r\n\r\nconnection limit reached\n"
        )
        .as_bytes(),
        guard::Refusal::TooManyConnections | guard::Refusal::TooFast => concat!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n",
            "Content-Length: 39\r\nConnection: close\r\n\r\ntoo many connections from this address\n"
        )
        .as_bytes(),
    };
    // Whatever of the request has arrived is read first: closing a socket
    // with unread input resets it, and the reset can overtake the answer.
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut sink) {
            Ok(n) if n == sink.len() => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(response);
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: guard::Slot,
    router: axum::Router,
    app: Arc<App>,
    tls: Option<Arc<tls::Tls>>,
) {
    // Small messages must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_http(socket::Counted::new(stream, slot), peer, router, app).await;
    };
    // The slot is held through the handshake too.
    match tls.accept(stream, app.config.handshake_timeout).await {
        Ok(stream) => serve_http(socket::Counted::new(stream, slot), peer, router, app).await,
        Err(err) => {
            app.hub.metrics.tls_handshake_failures.increment(1);
            tracing::debug!(%err, %peer, "TLS handshake failed");
        }
    }
}

/// Largest request head (request line and headers), answered 431 beyond.
/// Node's default: room for a long JWT in `Authorization`; clients that need
/// more put their token in `hello`. `max_buf_size` alone does not bound the
/// head: hyper checks it only while a head is incomplete, so one that
/// arrives in a single large read is accepted whatever its size. hyper's
/// own limit of 100 header lines applies too (431 as well).
const MAX_HEAD: usize = 16 * 1024;

/// HTTP/1.1 on a plain or TLS stream; a WebSocket upgrade takes the stream
/// back from hyper (`socket::Stream::from_upgraded`).
async fn serve_http<S>(stream: S, peer: SocketAddr, router: axum::Router, app: Arc<App>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The peer address goes into each request's extensions. Not with
    // `router.layer(Extension(..))`: that rebuilds the route table for every
    // connection (kilobytes, and CPU, per handshake).
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(req)
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Also bounds an idle keep-alive connection: hyper starts this
        // clock whenever it waits for a request head, the first one or the
        // next.
        .header_read_timeout(app.config.handshake_timeout)
        .max_header_size(MAX_HEAD)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(err) = result {
        tracing::debug!(%err, %peer, "http connection error");
    }
}

/// Reloads the TLS certificate and key on every SIGHUP (certificate
/// renewals). Open connections keep the session they negotiated.
async fn reload_on_hangup(tls: Arc<tls::Tls>, mut hangup: Signal, app: Arc<App>) {
    while hangup.recv().await.is_some() {
        let reloader = tls.clone();
        let result = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .unwrap_or_else(|err| Err(anyhow::anyhow!("reload task failed: {err}")));
        match result {
            Ok(()) => {
                app.hub.metrics.tls_reloads.increment(1);
                tracing::info!("SIGHUP: TLS certificate reloaded; new connections use it");
            }
            Err(err) => {
                app.hub.metrics.tls_reload_failures.increment(1);
                tracing::error!(
                    "SIGHUP: TLS certificate reload failed, keeping the previous one: {err:#}"
                );
            }
        }
    }
}

/// Connections the kernel queues for `accept`. tokio's `bind` asks for 128,
/// which a reconnect storm overflows: the SYNs dropped are retried by the
/// clients after 1 s, 3 s, 7 s. The kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's `bind` do: restart without waiting out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A bind failure that names the address and the way out: the bare OS
/// error ("Address already in use") names neither, and the usual cause is
/// a second server started on the default port.
fn cannot_listen(addr: SocketAddr, err: std::io::Error) -> anyhow::Error {
    let advice = match err.kind() {
        std::io::ErrorKind::AddrInUse => {
            let other = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1).max(1));
            format!(
                "another process (perhaps another switchboard) is listening there: \
                 stop it, or choose another address with --listen \
                 (e.g. --listen {other}, or port 0 for any free port)"
            )
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges: choose another port with --listen".to_string()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no interface of this machine has that address: choose another with --listen"
                .to_string()
        }
        _ => "choose another address with --listen".to_string(),
    };
    anyhow::anyhow!("cannot listen on {addr}: {err}\n{advice}")
}

/// The credentials of an `Authorization: Bearer …` header. The scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer` works too.
pub(crate) fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start())
}

/// The peer address of an HTTP connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectInfo(pub SocketAddr);

async fn heartbeat_loop(app: Arc<App>) {
    let period = app.config.heartbeat;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        app.hub
            .heartbeat(period * 2, |conn, ping| app.parking.ping(conn, ping));
        app.gate.sweep();
    }
}

/// Sends the presence batches of big rooms as they fall due. Ticks ten
/// times per interval, so a batch goes out at most a tenth of an interval
/// late; a tick with nothing pending costs one uncontended lock.
async fn presence_loop(app: Arc<App>) {
    let interval = app.config.presence_interval;
    let period = (interval / 10).clamp(
        std::time::Duration::from_millis(5),
        std::time::Duration::from_millis(100),
    );
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        app.hub.flush_presence();
    }
}
