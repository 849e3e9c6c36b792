//! HTTP routes and the WebSocket upgrade handshake (RFC 6455 §4.2).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use switchboard_protocol::{validate_device, validate_room, validate_user};
use switchboard_ws::{DeflateConfig, Handshake, Rejection, UpgradeRequest};

use super::guard::{self, Counts, Refusal, Slot};
use super::relay::RelaySession;
use super::session::{Session, Start};
use super::ConnectInfo;
use super::{socket, App};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws))
        .route("/relay/{channel}", get(relay))
        .merge(super::sse::routes())
        .merge(super::api::routes(app.clone()))
        .merge(super::web::routes())
        .merge(super::admin::routes())
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers (the writer thread runs as long as the
/// process does; a failing disk shows here and in `unavailable` errors).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if let Some(cluster) = &app.cluster {
        if !cluster.follower.is_up() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster unavailable: not connected to Redis' announcements\n",
            )
                .into_response();
        }
    }
    if !app.pipeline.healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable: the last commit failed\n",
        )
            .into_response();
    }
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || store.check()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok: store reachable\n").into_response(),
        Ok(Err(err)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {err}\n"),
        )
            .into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store check failed: {err}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.hub.metrics.render(),
    )
}

/// The query of a client session's opening request (`/ws`, `/sse`).
#[derive(Deserialize)]
pub(super) struct WsQuery {
    user: Option<String>,
    device: Option<String>,
    token: Option<String>,
}

/// A query string or path the router could not decode (a repeated key, bad
/// percent-encoding): refused through [`refuse`], so it is counted and worded
/// like every other refusal, not answered with axum's own text.
pub(super) fn undecodable(app: &App, err: impl std::fmt::Display) -> Response {
    refuse(app, StatusCode::BAD_REQUEST, &err.to_string())
}

/// How a client session starts, from its opening request: the names are
/// checked, the token comes from `Authorization: Bearer` or `?token=`.
/// Also the device. `Err`: why the request is bad (a 400).
pub(super) fn client_start(
    app: &App,
    query: WsQuery,
    headers: &axum::http::HeaderMap,
) -> Result<(Start, Option<String>), String> {
    if let Some(user) = &query.user {
        validate_user(user)?;
    }
    if let Some(device) = &query.device {
        validate_device(device)?;
    }
    let bearer = super::bearer(headers).map(str::to_owned);
    let start = Start::from_request(&*app.auth, bearer.or(query.token), query.user);
    Ok((start, query.device))
}

async fn ws(
    State(app): State<Arc<App>>,
    query: Result<Query<WsQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(err) => return undecodable(&app, err),
    };
    let (start, device) = match client_start(&app, query, req.headers()) {
        Ok(started) => started,
        Err(message) => return refuse(&app, StatusCode::BAD_REQUEST, &message),
    };
    upgrade(app, req, move |app, conn| {
        Session::new(app.service.clone(), conn, start, device)
    })
}

#[derive(Deserialize)]
struct RelayQuery {
    #[serde(default)]
    echo: Echo,
}

/// `/relay/{channel}?echo=`: `false` (the default), `true`, or `only`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Echo {
    /// Messages go to the channel's other connections.
    #[default]
    False,
    /// To the channel's other connections and back to the sender.
    True,
    /// Back to the sender only: the connection does not join the channel
    /// (it neither sends to nor receives from its other connections), so
    /// conformance suites can run many cases at once, each its own echo.
    Only,
}

async fn relay(
    State(app): State<Arc<App>>,
    channel: Result<Path<String>, PathRejection>,
    query: Result<Query<RelayQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let (channel, query) = match (channel, query) {
        (Ok(Path(channel)), Ok(Query(query))) => (channel, query),
        (Err(err), _) => return undecodable(&app, err),
        (_, Err(err)) => return undecodable(&app, err),
    };
    if let Err(message) = validate_room(&channel) {
        return refuse(
            &app,
            StatusCode::BAD_REQUEST,
            &message.replace("room", "channel"),
        );
    }
    upgrade(app, req, move |app, conn| {
        if query.echo != Echo::Only {
            app.hub.relay.join(&channel, &conn);
        }
        RelaySession {
            app,
            conn,
            channel,
            echo: query.echo,
        }
    })
}

pub(super) fn refuse(app: &App, status: StatusCode, message: &str) -> Response {
    app.hub.metrics.connections_refused.increment(1);
    (status, format!("{message}\n")).into_response()
}

/// A connection's whole handler, boxed so `/ws` and `/relay` share one
/// socket loop, and so the socket task's future holds only a pointer to
/// it: with the slots and `app` inline that future (the `socket::run`
/// driver) would be 72 bytes bigger, too big for the 256-byte tokio task it
/// fits now (`socket::tests`; 384 instead of 512 when this was measured
/// with heaptrack), while the box grows by 32.
pub(super) type Boxed = Box<Admitted<dyn socket::Handler + Send>>;

impl<T: socket::Handler + ?Sized> socket::Handler for Box<T> {
    fn on_message(
        &mut self,
        opcode: switchboard_ws::OpCode,
        payload: Bytes,
    ) -> Result<(), socket::CloseWith> {
        (**self).on_message(opcode, payload)
    }
    fn deadline(&self) -> Option<tokio::time::Instant> {
        (**self).deadline()
    }
    fn on_deadline(&mut self) -> Result<(), socket::CloseWith> {
        (**self).on_deadline()
    }
    fn on_close(&mut self) {
        (**self).on_close()
    }
    fn on_finish(&mut self) {
        (**self).on_finish()
    }
}

/// A connection's handler plus its slots in the connection limits, given
/// back as soon as the connection is unregistered (not when its task
/// finally ends, up to `CLOSE_GRACE` later): a client that sees its
/// connection end can connect again at once.
pub(super) struct Admitted<H: ?Sized> {
    app: Arc<App>,
    /// Through a trusted proxy: the forwarded client's per-IP count; once
    /// the upgrade completes, also the connection's slot since accept (from
    /// hyper's stream), joined ([`guard::Gate::join`]). Given back to
    /// `app.gate`: no `Slot` with a gate of its own (saves 14 bytes).
    held: Counts,
    inner: H,
}

impl<H: ?Sized> Drop for Admitted<H> {
    /// A handler dropped without `on_close` (a runtime shut down) still
    /// gives its counts back.
    fn drop(&mut self) {
        self.app.gate.release(std::mem::take(&mut self.held));
    }
}

impl<H: socket::Handler + ?Sized> socket::Handler for Admitted<H> {
    fn on_message(
        &mut self,
        opcode: switchboard_ws::OpCode,
        payload: Bytes,
    ) -> Result<(), socket::CloseWith> {
        self.inner.on_message(opcode, payload)
    }
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.inner.deadline()
    }
    fn on_deadline(&mut self) -> Result<(), socket::CloseWith> {
        self.inner.on_deadline()
    }
    fn on_close(&mut self) {
        // First, so the slots are free before anyone can see this
        // connection leave.
        self.app.gate.release(std::mem::take(&mut self.held));
        self.inner.on_close();
    }
    fn on_finish(&mut self) {
        self.app.conn_closed.notify_waiters();
    }
}

/// Answers an upgrade request: the RFC 6455 checks, then admission, then
/// registration, the 101 and the socket task.
fn upgrade<F, H>(app: Arc<App>, req: Request, make: F) -> Response
where
    F: FnOnce(Arc<App>, Arc<crate::hub::Conn>) -> H + Send + 'static,
    H: socket::Handler + Send + 'static,
{
    let handshake = match check_handshake(&req) {
        Ok(handshake) => handshake,
        Err(rejection) => return refuse_handshake(&app, rejection),
    };
    let client = match admit(&app, &req) {
        Ok(client) => client,
        Err((status, message)) => return refuse(&app, status, message),
    };
    accept(app, req, handshake, client, make)
}

/// The RFC 6455 §4.2.1 request checks and the handshake's answer
/// (`switchboard_ws::validate_upgrade` on this request's headers).
fn check_handshake(req: &Request) -> Result<Handshake, Rejection> {
    let headers = req.headers();
    let all = |name: header::HeaderName| -> Vec<&[u8]> {
        headers.get_all(name).iter().map(|v| v.as_bytes()).collect()
    };
    let (upgrade, connection, extensions) = (
        all(header::UPGRADE),
        all(header::CONNECTION),
        all(header::SEC_WEBSOCKET_EXTENSIONS),
    );
    let (version, key) = (
        all(header::SEC_WEBSOCKET_VERSION),
        all(header::SEC_WEBSOCKET_KEY),
    );
    switchboard_ws::validate_upgrade(&UpgradeRequest {
        method: req.method().as_str(),
        upgrade: &upgrade,
        connection: &connection,
        http11: req.version() >= axum::http::Version::HTTP_11,
        version: &version,
        key: &key,
        extensions: &extensions,
    })
}

fn refuse_handshake(app: &App, rejection: Rejection) -> Response {
    let status = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = refuse(app, status, rejection.message());
    if rejection == Rejection::UnsupportedVersion {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(switchboard_ws::SUPPORTED_VERSION),
        );
    }
    response
}

/// Whether this server takes the WebSocket now: origin, shutdown, then the
/// per-IP limits (the connection already holds its slot in
/// `--max-connections`, since accept). On success, through a trusted proxy,
/// the forwarded client's per-IP count; else the status and text to refuse
/// with.
fn admit(app: &App, req: &Request) -> Result<Option<Slot>, (StatusCode, &'static str)> {
    let Some(peer) = may_open(app, req)? else {
        return Ok(None);
    };
    app.gate
        .upgrade(peer, req.headers())
        .map_err(|r| refused(app, "WebSocket", peer, req, r))
}

/// Whether this server takes a session of the HTTP fallback transport now:
/// origin, shutdown, then a slot of its own ([`guard::Gate::session`]).
pub(super) fn admit_session(
    app: &App,
    req: &Request,
) -> Result<Option<Slot>, (StatusCode, &'static str)> {
    let Some(peer) = may_open(app, req)? else {
        return Ok(None);
    };
    app.gate
        .session(peer, req.headers())
        .map(Some)
        .map_err(|r| refused(app, "SSE session", peer, req, r))
}

/// The checks before any count is taken: origin and shutdown. The peer, if
/// known, for the per-IP limits (so every refusal here leaves them alone).
fn may_open(
    app: &App,
    req: &Request,
) -> Result<Option<std::net::SocketAddr>, (StatusCode, &'static str)> {
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !guard::origin_allowed(&app.config.allowed_origins, origin, host) {
        return Err((StatusCode::FORBIDDEN, "origin not allowed"));
    }
    if app.shutting_down.load(Ordering::Relaxed) {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "server is shutting down"));
    }
    Ok(req.extensions().get::<ConnectInfo>().map(|c| c.0))
}

/// The answer to a refusal by the connection limits, logged (debug) with
/// the address the limits counted: behind a trusted proxy the forwarded
/// client's, which is the one an operator needs to find the culprit (the
/// peer is the proxy).
fn refused(
    app: &App,
    what: &'static str,
    peer: std::net::SocketAddr,
    req: &Request,
    refusal: Refusal,
) -> (StatusCode, &'static str) {
    let reason = refusal.reason();
    let client = app.gate.client(peer, req.headers());
    tracing::debug!(%client, %peer, reason, "{what} refused");
    let status = match refusal {
        Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::TooManyConnections | Refusal::TooFast => StatusCode::TOO_MANY_REQUESTS,
    };
    (status, reason)
}

/// Registers the connection, answers 101 and runs the socket loop on the
/// raw stream once hyper lets go of it.
fn accept<F, H>(
    app: Arc<App>,
    mut req: Request,
    handshake: Handshake,
    client: Option<Slot>,
    make: F,
) -> Response
where
    F: FnOnce(Arc<App>, Arc<crate::hub::Conn>) -> H + Send + 'static,
    H: socket::Handler + Send + 'static,
{
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, handshake.accept);
    let config: Option<DeflateConfig> = match handshake.deflate {
        Some((config, value)) => {
            response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, value);
            Some(DeflateConfig {
                compress_min: app.config.compress_min,
                ..config
            })
        }
        None => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Register before answering 101: once the client sees the handshake
    // complete, it is in its channel or identified, and misses nothing sent
    // after that. Frames queued now are written when the socket loop starts.
    app.hub.metrics.connections_accepted.increment(1);
    let conn = app.hub.connect(config, app.config.max_queue);
    // Before the client's slot becomes bare counts (which give nothing back
    // on drop): should `make` panic, the slot still frees its count.
    let inner = make(app.clone(), conn.clone());
    let handler: Boxed = Box::new(Admitted {
        app: app.clone(),
        held: client.map(Slot::into_counts).unwrap_or_default(),
        inner,
    });
    spawn_socket(app, on_upgrade, conn, handler);
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Waits for hyper to hand over the stream, then runs the socket loop on it;
/// if the upgrade fails, undoes the registration.
fn spawn_socket(
    app: Arc<App>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    conn: Arc<crate::hub::Conn>,
    mut handler: Boxed,
) {
    tokio::spawn(async move {
        let parts = match on_upgrade.await {
            // We served hyper a plain or TLS stream: recover it and any
            // bytes hyper read past the request head.
            Ok(upgraded) => socket::Stream::from_upgraded(upgraded),
            Err(err) => {
                tracing::debug!(%err, "upgrade failed");
                None
            }
        };
        let Some((stream, slot, read_buf)) = parts else {
            socket::Handler::on_close(&mut handler);
            socket::Handler::on_finish(&mut handler);
            return;
        };
        let connection = slot.map(Slot::into_counts).unwrap_or_default();
        handler.held = app.gate.join(connection, std::mem::take(&mut handler.held));
        // A task of its own: this one's future keeps everything it
        // captured to the end, so the connection would carry it all.
        let hub = app.hub.clone();
        let max_frame = app.config.max_frame;
        let park = app.parking.clone();
        drop(app);
        tokio::spawn(socket::run(
            hub, stream, read_buf, conn, max_frame, handler, park,
        ));
    });
}
