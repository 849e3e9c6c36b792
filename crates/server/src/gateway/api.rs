//! The server HTTP API for backends (SPEC §6): publish, send, rooms,
//! presence, history, disconnect, and the dashboard's stats.
//! `Authorization: Bearer <api key>`; the whole API answers 404 when no key
//! is configured. An adapter: it decodes the request, calls the command
//! layer as [`Caller::Backend`], and encodes the answer (a [`Rejection`]
//! becomes a status and a JSON error).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_protocol::{check_body_depth, decode_id, ErrorCode, Id, DEFAULT_HISTORY_LIMIT};
use tokio::sync::oneshot;

use super::App;
use crate::hub::Delivery;
use crate::pipeline::Reply;
use crate::service::{Caller, Destination, HistoryTarget, Rejection};

/// Room in a POST body for `from`, `id` and the JSON around the message
/// `body` (which `--max-body` bounds).
const ENVELOPE: usize = 1024;

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/api/rooms", get(rooms))
        .route(
            "/api/rooms/{room}/messages",
            get(room_history).post(publish),
        )
        .route("/api/rooms/{room}/presence", get(presence))
        .route("/api/users/{user}/messages", axum::routing::post(send))
        .route("/api/users/{user}/connections", delete(disconnect))
        .route("/api/users/{user}/conversations", get(conversations))
        // The dashboard's numbers (`admin.rs`).
        .route("/api/stats", get(super::admin::stats))
        // The key is checked before anything else, the body included: an
        // unauthenticated client cannot make the server hold its bytes.
        .route_layer(middleware::from_fn_with_state(app, require_key))
}

async fn require_key(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match authorize(&app, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// A path or query string the router could not decode (bad
/// percent-encoding, a repeated or malformed parameter): our JSON 400, not
/// axum's plain text.
fn decoded<T, E: std::fmt::Display>(extracted: Result<T, E>) -> Result<T, ApiError> {
    extracted.map_err(|e| bad_request(e.to_string()))
}

/// Whether a body read stopped at its size limit (not a broken body).
fn is_over_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads a POST body: at most `--max-body` plus [`ENVELOPE`], and within
/// `--handshake-timeout` (a client trickling a body holds nothing for long).
async fn read_body(app: &App, body: Body) -> Result<Bytes, ApiError> {
    read_body_within(app, body, app.config.max_body.saturating_add(ENVELOPE)).await
}

/// Reads a request body of at most `limit` bytes within
/// `--handshake-timeout` (413 past the limit, 408 past the deadline).
pub(super) async fn read_body_within(
    app: &App,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(app.config.handshake_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) if is_over_limit(&err) => Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body larger than {limit} bytes"),
        )),
        Ok(Err(err)) => Err(bad_request(format!("unreadable request body: {err}"))),
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            "bad_request",
            "request body not received in time".into(),
        )),
    }
}

/// An API error: status plus `{"error": {"code", "message"}}`.
pub(super) struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = app.config.api_key.as_deref() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "the server API is disabled (no --api-key)".into(),
        ));
    };
    let given = super::bearer(headers).unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key".into(),
        ))
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let status = match r.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::NotJoined => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, r.code.as_str(), r.message)
    }
}

/// The JSON body of a publish or send.
#[derive(Deserialize)]
struct Post {
    body: Option<Box<RawValue>>,
    from: Option<String>,
    /// Optional idempotency key (any JSON string or number), deduplicated
    /// per `from` like a WebSocket command `id`.
    id: Option<Box<RawValue>>,
}

/// Decodes a POST body; the command layer validates what it says.
fn parse_post(bytes: &[u8]) -> Result<(Box<RawValue>, String, Option<Id>), ApiError> {
    let post: Post = serde_json::from_slice(bytes)
        .map_err(|e| bad_request(format!("invalid JSON body: {e}")))?;
    let body = post
        .body
        .ok_or_else(|| bad_request("missing field `body`"))?;
    check_body_depth(&body).map_err(bad_request)?;
    let from = post.from.unwrap_or_else(|| "server".into());
    let id = match post.id {
        None => None,
        Some(raw) => Some(decode_id(&raw).map_err(|e| bad_request(e.message))?),
    };
    Ok((body, from, id))
}

/// Submits a publish or send as the backend and waits for its commit.
async fn submit(app: &App, to: Destination, bytes: &[u8]) -> Result<Delivery, ApiError> {
    let (body, from, id) = parse_post(bytes)?;
    let (tx, rx) = oneshot::channel();
    let caller = Caller::Backend { from: &from };
    app.submit(caller, to, body, id, Reply::Channel(tx))?;
    match rx.await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the write pipeline stopped".into(),
        )),
    }
}

async fn publish(
    State(app): State<Arc<App>>,
    room: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(room) = decoded(room)?;
    let bytes = read_body(&app, body).await?;
    let d = submit(&app, Destination::Room(Arc::from(room.as_str())), &bytes).await?;
    Ok(Json(
        json!({"room": room, "seq": d.seq, "delivered": d.delivered, "duplicate": d.duplicate}),
    ))
}

async fn send(
    State(app): State<Arc<App>>,
    user: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(user) = decoded(user)?;
    let bytes = read_body(&app, body).await?;
    let d = submit(&app, Destination::User(Arc::from(user.as_str())), &bytes).await?;
    Ok(Json(
        json!({"to": user, "seq": d.seq, "gid": d.gid, "delivered": d.delivered, "stored": d.stored, "duplicate": d.duplicate}),
    ))
}

async fn rooms(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, ApiError> {
    let rooms: Vec<serde_json::Value> = app
        .rooms()?
        .into_iter()
        .map(|r| json!({"room": &*r.room, "seq": r.seq, "online": r.online}))
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
}

async fn presence(
    State(app): State<Arc<App>>,
    room: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(room) = decoded(room)?;
    let users: Vec<String> = app
        .presence(Caller::Backend { from: "server" }, &room)?
        .iter()
        .map(|u| u.to_string())
        .collect();
    Ok(Json(
        json!({"room": room, "online": users.len(), "users": users}),
    ))
}

#[derive(Deserialize)]
struct Page {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn room_history(
    State(app): State<Arc<App>>,
    room: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (Path(room), Query(page)) = (decoded(room)?, decoded(page)?);
    let limit = page.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    let read = app.history(
        Caller::Backend { from: "server" },
        HistoryTarget::Room(room.clone()),
        page.before,
        limit,
    )?;
    let page = read.run().await?;
    let mut reply = json!({"room": room, "messages": page.messages});
    if page.truncated {
        reply["truncated"] = json!(true);
    }
    Ok(Json(reply).into_response())
}

#[derive(Deserialize)]
struct ListPage {
    before: Option<String>,
    limit: Option<usize>,
}

/// The user's conversation list, as their `conversations` command sees it
/// (every room with a read position: the backend holds no token).
async fn conversations(
    State(app): State<Arc<App>>,
    user: Result<Path<String>, PathRejection>,
    page: Result<Query<ListPage>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (Path(user), Query(page)) = (decoded(user)?, decoded(page)?);
    let limit = page.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    let read = app.conversations(&user, None, page.before.as_deref(), limit)?;
    let page = read.run().await?;
    let mut reply: serde_json::Value =
        serde_json::from_slice(&page.encode(None)).unwrap_or_else(|_| json!({}));
    if let Some(object) = reply.as_object_mut() {
        object.remove("type");
        object.insert("user".into(), json!(user));
    }
    Ok(Json(reply).into_response())
}

async fn disconnect(
    State(app): State<Arc<App>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(user) = decoded(user)?;
    let n = app.disconnect_user(&user)?;
    Ok(Json(json!({"user": user, "disconnected": n})))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_matches_only_equal_keys() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"secret", b""));
    }
}
