//! The server HTTP API for backends (SPEC §6): publish, send, rooms,
//! presence, history, disconnect. `Authorization: Bearer <api key>`; the
//! whole API answers 404 when no key is configured.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_protocol::{
    json_depth, validate_room, validate_user, Id, MAX_BODY_DEPTH, MAX_HISTORY_LIMIT,
};
use tokio::sync::oneshot;

use super::replay::{read_history, Target};
use super::App;
use crate::pipeline::{Job, Reply};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/rooms", get(rooms))
        .route(
            "/api/rooms/{room}/messages",
            get(room_history).post(publish),
        )
        .route("/api/rooms/{room}/presence", get(presence))
        .route("/api/users/{user}/messages", axum::routing::post(send))
        .route("/api/users/{user}/connections", delete(disconnect))
}

/// An API error: status plus `{"error": {"code", "message"}}`.
struct ApiError(StatusCode, &'static str, String);

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
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
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

#[derive(Deserialize)]
struct Post {
    body: Option<Box<RawValue>>,
    from: Option<String>,
    /// Optional idempotency key (any JSON string or number), deduplicated
    /// per `from` like a WebSocket command `id`.
    id: Option<Box<RawValue>>,
}

/// A validated POST body.
struct Posted {
    body: Box<RawValue>,
    from: Arc<str>,
    id: Option<Id>,
}

fn parse_post(bytes: &[u8]) -> Result<Posted, ApiError> {
    let post: Post = serde_json::from_slice(bytes)
        .map_err(|e| bad_request(format!("invalid JSON body: {e}")))?;
    let body = post
        .body
        .ok_or_else(|| bad_request("missing field `body`"))?;
    if json_depth(body.get()) > MAX_BODY_DEPTH {
        return Err(bad_request(format!(
            "`body` is nested deeper than {MAX_BODY_DEPTH} levels"
        )));
    }
    let from = post.from.unwrap_or_else(|| "server".into());
    validate_user(&from).map_err(|m| bad_request(format!("from: {m}")))?;
    let id = match post.id {
        None => None,
        Some(raw)
            if raw.get().starts_with('"')
                || raw
                    .get()
                    .starts_with(|c: char| c == '-' || c.is_ascii_digit()) =>
        {
            Id::from_json(raw.get())
        }
        Some(_) => return Err(bad_request("`id` must be a string or a number")),
    };
    Ok(Posted {
        body,
        from: Arc::from(from),
        id,
    })
}

async fn submit(
    app: &App,
    job: impl FnOnce(Reply) -> Job,
) -> Result<crate::hub::Delivery, ApiError> {
    let (tx, rx) = oneshot::channel();
    if !app.pipeline.submit(job(Reply::Channel(tx))) {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server is shutting down".into(),
        ));
    }
    match rx.await {
        Ok(Ok(delivery)) => Ok(delivery),
        Ok(Err(e)) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            e.code.as_str(),
            e.message,
        )),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the write pipeline stopped".into(),
        )),
    }
}

async fn publish(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&app, &headers)?;
    validate_room(&room).map_err(bad_request)?;
    let Posted { body, from, id } = parse_post(&bytes)?;
    let room: Arc<str> = Arc::from(room);
    let d = submit(&app, |reply| Job::Publish {
        room: room.clone(),
        from,
        sender: None,
        body,
        id,
        reply,
    })
    .await?;
    Ok(Json(
        json!({"room": &*room, "seq": d.seq, "delivered": d.delivered, "duplicate": d.duplicate}),
    ))
}

async fn send(
    State(app): State<Arc<App>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&app, &headers)?;
    validate_user(&user).map_err(bad_request)?;
    let Posted { body, from, id } = parse_post(&bytes)?;
    let to: Arc<str> = Arc::from(user);
    let d = submit(&app, |reply| Job::Send {
        to: to.clone(),
        from,
        sender: None,
        body,
        id,
        reply,
    })
    .await?;
    Ok(Json(
        json!({"to": &*to, "seq": d.seq, "gid": d.gid, "delivered": d.delivered, "stored": d.stored, "duplicate": d.duplicate}),
    ))
}

async fn rooms(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&app, &headers)?;
    let rooms: Vec<serde_json::Value> = app
        .hub
        .rooms()
        .into_iter()
        .map(|(room, seq, online)| json!({"room": &*room, "seq": seq, "online": online}))
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
}

async fn presence(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&app, &headers)?;
    validate_room(&room).map_err(bad_request)?;
    let users: Vec<String> = app
        .hub
        .presence(&room)
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
    Path(room): Path<String>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    validate_room(&room).map_err(bad_request)?;
    let limit = page.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return Err(bad_request(format!(
            "`limit` must be between 1 and {MAX_HISTORY_LIMIT}"
        )));
    }
    let messages = read_history(&app, "", &Target::Room(room.clone()), page.before, limit)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
    Ok(Json(json!({"room": room, "messages": messages})).into_response())
}

async fn disconnect(
    State(app): State<Arc<App>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&app, &headers)?;
    validate_user(&user).map_err(bad_request)?;
    let n = app.hub.kick(&user);
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
