//! HTTP routes and the WebSocket upgrade handshake (RFC 6455 §4.2).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use switchboard_protocol::{validate_device, validate_room, validate_user};
use switchboard_ws::DeflateConfig;

use super::guard::{self, Refusal};
use super::relay::RelaySession;
use super::session::{Session, Start};
use super::ConnectInfo;
use super::{socket, App};
use crate::auth::Identity;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws))
        .route("/relay/{channel}", get(relay))
        .merge(super::api::routes())
        .merge(super::web::routes())
        .with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the store answers (the writer thread runs as long as the
/// process does; a failing disk shows here and in `unavailable` errors).
async fn readyz(State(app): State<Arc<App>>) -> Response {
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

#[derive(Deserialize)]
struct WsQuery {
    user: Option<String>,
    device: Option<String>,
    token: Option<String>,
}

async fn ws(State(app): State<Arc<App>>, Query(query): Query<WsQuery>, req: Request) -> Response {
    if let Some(user) = &query.user {
        if let Err(message) = validate_user(user) {
            return refuse(&app, StatusCode::BAD_REQUEST, &message);
        }
    }
    if let Some(device) = &query.device {
        if let Err(message) = validate_device(device) {
            return refuse(&app, StatusCode::BAD_REQUEST, &message);
        }
    }
    // With auth on, identity comes only from a token: `Authorization:
    // Bearer`, `?token=`, or (Pending) the first `hello`. A bad token still
    // gets the upgrade, so a browser can read the `unauthorized` error.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = bearer.or(query.token);
    let start = match (app.auth.required(), token, query.user) {
        (true, Some(token), _) => match app.auth.authenticate(None, Some(&token)) {
            Ok(Some(identity)) => Start::Identified(identity),
            Ok(None) => Start::Pending,
            Err(message) => Start::Refused(message.to_string()),
        },
        (true, None, _) | (false, _, None) => Start::Pending,
        (false, _, Some(user)) => Start::Identified(Identity::named(&user)),
    };
    let device = query.device;
    upgrade(app, req, move |app, conn| {
        Box::new(Session::new(app, conn, start, device))
    })
}

#[derive(Deserialize)]
struct RelayQuery {
    #[serde(default)]
    echo: bool,
}

async fn relay(
    State(app): State<Arc<App>>,
    Path(channel): Path<String>,
    Query(query): Query<RelayQuery>,
    req: Request,
) -> Response {
    if let Err(message) = validate_room(&channel) {
        return refuse(
            &app,
            StatusCode::BAD_REQUEST,
            &message.replace("room", "channel"),
        );
    }
    upgrade(app, req, move |app, conn| {
        app.hub.relay.join(&channel, &conn);
        Box::new(RelaySession {
            app,
            conn,
            channel,
            echo: query.echo,
        })
    })
}

fn refuse(app: &App, status: StatusCode, message: &str) -> Response {
    app.hub.metrics.connections_refused.increment(1);
    (status, format!("{message}\n")).into_response()
}

/// A boxed handler so `/ws` and `/relay` share one upgrade path.
type MakeHandler = Box<dyn socket::Handler + Send>;

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

/// A connection's handler plus its per-IP slot, released as soon as the
/// connection is unregistered (not when its task finally ends).
struct Admitted {
    inner: MakeHandler,
    app: Arc<App>,
    ip: Option<std::net::IpAddr>,
}

impl socket::Handler for Admitted {
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
        self.inner.on_close();
        if let Some(ip) = self.ip.take() {
            self.app.ip_limits.release(ip);
        }
    }
    fn on_finish(&mut self) {
        self.app.conn_closed.notify_waiters();
    }
}

/// Validates the upgrade request, answers 101, and runs the socket loop on
/// the raw TCP stream once hyper lets go of it.
fn upgrade<F>(app: Arc<App>, mut req: Request, make: F) -> Response
where
    F: FnOnce(Arc<App>, Arc<crate::hub::Conn>) -> MakeHandler + Send + 'static,
{
    let headers = req.headers();
    if req.method() != Method::GET || !header_has_token(headers, header::UPGRADE, "websocket") {
        return refuse(
            &app,
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send an Upgrade: websocket request",
        );
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return refuse(&app, StatusCode::BAD_REQUEST, "missing Connection: Upgrade");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut response = refuse(
            &app,
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version (need 13)",
        );
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k.as_bytes()))
    else {
        return refuse(
            &app,
            StatusCode::BAD_REQUEST,
            "missing or invalid Sec-WebSocket-Key",
        );
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !guard::origin_allowed(&app.config.allowed_origins, origin, host) {
        return refuse(&app, StatusCode::FORBIDDEN, "origin not allowed");
    }
    if app.shutting_down.load(Ordering::Relaxed) {
        return refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        );
    }
    if app.hub.connection_count() >= app.config.max_connections {
        return refuse(
            &app,
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached",
        );
    }
    let accept = switchboard_ws::accept_key(key.as_bytes());
    let offers: Vec<&[u8]> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let deflate = switchboard_ws::negotiate_deflate(&offers);

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    let config: Option<DeflateConfig> = match deflate {
        Some((config, value)) => {
            response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, value);
            Some(DeflateConfig {
                compress_min: app.config.compress_min,
                ..config
            })
        }
        None => None,
    };
    // Per-IP limits last, so every refusal above leaves the counters alone.
    let ip = req
        .extensions()
        .get::<ConnectInfo>()
        .map(|c| guard::client_ip(c.0, req.headers(), &app.config.trusted_proxies));
    if let Some(ip) = ip {
        match app.ip_limits.admit(ip) {
            Ok(()) => {}
            Err(Refusal::TooManyConnections) => {
                return refuse(
                    &app,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                )
            }
            Err(Refusal::TooFast) => {
                return refuse(
                    &app,
                    StatusCode::TOO_MANY_REQUESTS,
                    "connecting too fast from this address",
                )
            }
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Register before answering 101: once the client sees the handshake
    // complete, it is in its channel or identified, and misses nothing sent
    // after that. Frames queued now are written when the socket loop starts.
    app.hub.metrics.connections_accepted.increment(1);
    let conn = app.hub.connect(config, app.config.max_queue);
    let mut handler = Admitted {
        inner: make(app.clone(), conn.clone()),
        app: app.clone(),
        ip,
    };
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
        let Some((stream, read_buf)) = parts else {
            socket::Handler::on_close(&mut handler);
            socket::Handler::on_finish(&mut handler);
            return;
        };
        // A task of its own: this one's future keeps everything it
        // captured to the end, so the connection would carry it all.
        let hub = app.hub.clone();
        let max_frame = app.config.max_frame;
        drop(app);
        tokio::spawn(socket::run(hub, stream, read_buf, conn, max_frame, handler));
    });
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// A Sec-WebSocket-Key is the base64 of 16 bytes: 24 characters ending in `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}
