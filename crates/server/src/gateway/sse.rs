//! The HTTP fallback transport, for where a WebSocket cannot open (proxies
//! that drop `Upgrade`, TLS-inspecting middleboxes): the `/ws` protocol with
//! server→client events over Server-Sent Events and client→server commands
//! over `POST`. One more adapter over [`ClientSession`]: the command layer,
//! hub and limits are the WebSocket's.
//!
//! - `GET /sse` opens a session (same query and token rules as `/ws`) and
//!   streams its events: `id: SESSION:N` + `data: JSON`, one event per
//!   protocol frame. The hub queues WebSocket frames as for any connection
//!   (encoded once per fan-out); the stream takes the payload out of each
//!   and frames it for SSE.
//! - `POST /sse/SESSION` carries commands, one JSON object per line; replies
//!   come on the stream. `DELETE /sse/SESSION` ends the session (a client
//!   that closes), as a WebSocket's close does.
//! - A stream that breaks leaves the session alive for two heartbeat
//!   intervals. A `GET /sse` with `Last-Event-ID: SESSION:N` (what an
//!   `EventSource` sends when it reconnects) reattaches and gets every event
//!   after N again, from the events it kept (up to `--max-queue` bytes).
//!
//! See `docs/PROTOCOL.md`, "HTTP transport".

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use parking_lot::Mutex;
use switchboard_protocol::{close, ErrorCode};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::api::{read_body_within, ApiError};
use super::guard::{self, Slot};
use super::http::{self, WsQuery};
use super::session::close_for;
use super::App;
use crate::hub::Conn;
use crate::service::client::ClientSession;
use crate::service::login::Ending;
use crate::service::Rejection;

/// Bytes of sent events a session keeps for a reattach, at most (and no
/// more than `--max-queue`). A reattach needs what was lost in flight when a
/// stream broke; a client that was further behind gets a new session and
/// resumes with `since`, which loses nothing either. Measured: without
/// confirmations and this cap, an idle member of a 100-user room kept 7 KB
/// of presence events, up to `--max-queue` in a busy room.
const RETAINED: usize = 64 * 1024;

/// Commands per `POST` body, at most: with each line up to `--max-frame`,
/// this bounds a body to 16 frames' worth.
const MAX_COMMANDS_PER_POST: usize = 16;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/sse", get(open)).route(
        "/sse/{session}",
        axum::routing::post(commands).delete(end).options(preflight),
    )
}

/// The live HTTP-transport sessions, by id.
#[derive(Default)]
pub struct SseSessions {
    map: DashMap<String, Arc<SseSession>>,
}

struct SseSession {
    /// 128 random bits, hex: the session's credential in SSE ids and POST
    /// paths (with auth on, a POST also needs a token for the same user).
    id: String,
    conn: Arc<Conn>,
    client: Mutex<ClientSession>,
    stream: Mutex<StreamState>,
    /// Wakes the session's driver: the deadline may have moved, or the
    /// stream detached.
    poke: Notify,
    /// The session's place in the connection limits, given back when it
    /// ends ([`super::guard::Gate::session`]).
    slot: Mutex<Option<Slot>>,
}

struct StreamState {
    /// Id of the next event (the `session` event is 0).
    next: u64,
    /// Events written to a stream and not yet confirmed (a POST's
    /// `Last-Event-ID`), newest last, kept for a reattach: at most
    /// [`RETAINED`] bytes.
    sent: VecDeque<(u64, Bytes)>,
    sent_bytes: usize,
    /// The attached stream (a generation), or 0 when detached.
    attached: u64,
    generations: u64,
    detached_at: Option<Instant>,
    /// The `close` event went out: no reattach.
    ended: bool,
}

/// A stream frame an EventSource ignores (a comment): keeps proxies and
/// idle timeouts from closing a quiet stream.
const PING: &[u8] = b": ping\n\n";

async fn open(
    State(app): State<Arc<App>>,
    query: Result<Query<WsQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(err) => return http::undecodable(&app, err),
    };
    let origin = allowed_origin(&app, req.headers());
    let (start, device) = match http::client_start(&app, query, req.headers()) {
        Ok(started) => started,
        Err(message) => return http::refuse(&app, StatusCode::BAD_REQUEST, &message),
    };
    if let Some(resumed) = reattach(&app, req.headers(), &start) {
        return with_cors(resumed, origin);
    }
    let slot = match http::admit_session(&app, &req) {
        Ok(slot) => slot,
        Err((status, message)) => return http::refuse(&app, status, message),
    };
    app.hub.metrics.connections_accepted.increment(1);
    let conn = app.hub.connect(None, app.config.max_queue);
    let (client, started) = ClientSession::new(app.service.clone(), conn.clone(), start, device);
    if let Err(ending) = started {
        // Refused before anything streamed: an HTTP status an EventSource
        // does not retry (it would for a stream that just ended).
        let mut client = client;
        client.close();
        drop(slot);
        let (status, code, message) = match ending {
            Ending::TooManyConnections => (
                StatusCode::TOO_MANY_REQUESTS,
                "forbidden",
                "too many connections for this user",
            ),
            _ => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing, invalid or expired token",
            ),
        };
        return with_cors(
            ApiError(status, code, message.into()).into_response(),
            origin,
        );
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let session = Arc::new(SseSession {
        id: id.clone(),
        conn,
        client: Mutex::new(client),
        stream: Mutex::new(StreamState {
            next: 1,
            sent: VecDeque::new(),
            sent_bytes: 0,
            attached: 0,
            generations: 0,
            detached_at: None,
            ended: false,
        }),
        poke: Notify::new(),
        slot: Mutex::new(slot),
    });
    app.sse.map.insert(id.clone(), session.clone());
    let hello = session_event(&app, &id, Some(0), false, session.conn.user());
    let stream = attach(&session, hello, Vec::new());
    tokio::spawn(drive(app.clone(), session));
    with_cors(stream_response(stream), origin)
}

/// A `GET /sse` with `Last-Event-ID: SESSION:N` of a live session whose
/// events after N are all still held: the stream that sends them again and
/// goes on. `None`: open a new session (the client resumes with `since`).
fn reattach(
    app: &Arc<App>,
    headers: &HeaderMap,
    start: &crate::service::login::Start,
) -> Option<Response> {
    let last = headers.get("last-event-id")?.to_str().ok()?;
    let (id, n) = last.split_once(':')?;
    let n: u64 = n.parse().ok()?;
    let session = app.sse.map.get(id)?.value().clone();
    // The request must name the same user (auth on: prove it again with a
    // token): a session id alone does not make another user this one.
    match start {
        crate::service::login::Start::Identified(identity)
            if identity.user != session.conn.user() =>
        {
            return None
        }
        crate::service::login::Start::Identified(_) => {}
        _ if app.auth.required() => return None,
        _ => {}
    }
    let replay = {
        let st = session.stream.lock();
        if st.ended || session.conn.is_closing() || n >= st.next {
            return None;
        }
        let oldest = st.sent.front().map_or(st.next, |(first, _)| *first);
        if n + 1 < oldest {
            return None;
        }
        st.sent
            .iter()
            .filter(|(event, _)| *event > n)
            .map(|(_, bytes)| bytes.clone())
            .collect::<Vec<_>>()
    };
    session.conn.touch(app.hub.clock_ms());
    let hello = session_event(app, &session.id, None, true, session.conn.user());
    Some(stream_response(attach(&session, hello, replay)))
}

/// The first event of a stream: the session id (the POST path), the
/// heartbeat the client must POST within, and the user when the session is
/// identified already (by the opening request's query or token: `welcome`
/// follows and no `hello` is needed; without it the session waits for one).
fn session_event(app: &App, id: &str, event_id: Option<u64>, resumed: bool, user: &str) -> Bytes {
    let mut data = serde_json::json!({
        "session": id,
        "heartbeat": app.config.heartbeat.as_millis() as u64,
        "resumed": resumed,
    });
    if !user.is_empty() {
        data["user"] = serde_json::Value::from(user);
    }
    let mut out = String::from("retry: 1000\nevent: session\n");
    if let Some(n) = event_id {
        out.push_str(&format!("id: {id}:{n}\n"));
    }
    out.push_str(&format!("data: {data}\n\n"));
    Bytes::from(out)
}

fn stream_response(stream: SseStream) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        // nginx buffers proxied responses unless told otherwise.
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Makes `session`'s stream the attached one (a previous stream ends at its
/// next poll); it starts with `first` and the replayed events.
fn attach(session: &Arc<SseSession>, first: Bytes, replay: Vec<Bytes>) -> SseStream {
    let mut st = session.stream.lock();
    st.generations += 1;
    st.attached = st.generations;
    st.detached_at = None;
    let mut pending = BytesMut::with_capacity(first.len());
    pending.put(first);
    for event in replay {
        pending.put(event);
    }
    SseStream {
        session: session.clone(),
        generation: st.attached,
        pending: Some(pending.freeze()),
        batch: VecDeque::new(),
        done: false,
    }
}

/// The body of one `GET /sse`: drains the session's queue, as the socket
/// loop does for a WebSocket.
struct SseStream {
    session: Arc<SseSession>,
    generation: u64,
    /// The session event and a reattach's replay, sent first.
    pending: Option<Bytes>,
    batch: VecDeque<Bytes>,
    done: bool,
}

impl futures_util::Stream for SseStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.pending.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let session = &this.session;
        let mut st = session.stream.lock();
        if st.attached != this.generation {
            // Another stream took over (a reattach).
            this.done = true;
            return Poll::Ready(None);
        }
        // Register, then take: a frame queued in between still wakes us.
        session.conn.register_waker(cx.waker());
        let close = session.conn.take_batch(&mut this.batch);
        if this.batch.is_empty() && close.is_none() {
            return Poll::Pending;
        }
        let mut chunk = BytesMut::new();
        let limit = session.conn.queue_limit().min(RETAINED);
        for frame in this.batch.drain(..) {
            let Some((opcode, payload)) = unframe(&frame) else {
                continue;
            };
            if opcode != 0x1 {
                // Heartbeat pings; nothing else is queued on these sessions.
                chunk.put_slice(PING);
                continue;
            }
            let n = st.next;
            st.next += 1;
            let event = encode_event(&session.id, n, &payload);
            chunk.put_slice(&event);
            st.sent_bytes += event.len();
            st.sent.push_back((n, event));
            while st.sent_bytes > limit {
                match st.sent.pop_front() {
                    Some((_, old)) => st.sent_bytes -= old.len(),
                    None => break,
                }
            }
        }
        if let Some(reason) = close {
            let data = serde_json::json!({"code": reason.code.as_u16(), "reason": reason.reason});
            chunk.put_slice(format!("event: close\ndata: {data}\n\n").as_bytes());
            st.ended = true;
            this.done = true;
        }
        drop(st);
        session.conn.notify_drained();
        Poll::Ready(Some(Ok(chunk.freeze())))
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let mut st = self.session.stream.lock();
        if st.attached == self.generation {
            st.attached = 0;
            st.detached_at = Some(Instant::now());
            drop(st);
            self.session.poke.notify_one();
        }
    }
}

/// The opcode and payload of one of our own (unmasked, uncompressed) frames.
fn unframe(frame: &Bytes) -> Option<(u8, Bytes)> {
    let opcode = frame.first()? & 0x0f;
    let (start, len): (usize, usize) = match frame.get(1)? & 0x7f {
        126 => (
            4,
            u16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]) as usize,
        ),
        127 => {
            let bytes: [u8; 8] = frame.get(2..10)?.try_into().ok()?;
            (10, usize::try_from(u64::from_be_bytes(bytes)).ok()?)
        }
        n => (2, n as usize),
    };
    let end = start.checked_add(len)?;
    (end <= frame.len()).then(|| (opcode, frame.slice(start..end)))
}

/// One SSE event: `id: SESSION:N`, then the JSON on one `data:` line. A raw
/// CR or LF in JSON can only be whitespace between tokens (inside strings
/// they are escaped), so it becomes a space: same value, one line.
fn encode_event(session: &str, n: u64, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + session.len() + 32);
    out.put_slice(b"id: ");
    out.put_slice(session.as_bytes());
    out.put_slice(format!(":{n}\ndata: ").as_bytes());
    if json.iter().any(|&b| b == b'\n' || b == b'\r') {
        out.extend(
            json.iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
    } else {
        out.put_slice(json);
    }
    out.put_slice(b"\n\n");
    out.freeze()
}

/// Runs a session's timers (hello timeout, token expiry), and ends it when
/// its connection closes or no stream came back within the grace period.
/// Ending leaves the rooms at once, as a WebSocket's end does: a stream
/// still attached may flush its last events and the `close` event, but the
/// user is not kept online by a client that stopped reading.
async fn drive(app: Arc<App>, session: Arc<SseSession>) {
    let grace = grace(app.config.heartbeat);
    loop {
        let poked = session.poke.notified();
        tokio::pin!(poked);
        poked.as_mut().enable();
        if session.conn.is_closing() {
            break;
        }
        let detached_at = session.stream.lock().detached_at;
        let deadline = session.client.lock().deadline();
        let abandon = detached_at.map(|at| at + grace);
        let wake = match (deadline, abandon) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut poked => continue,
            _ = session.conn.wait_closing() => break,
            _ = sleep => {}
        }
        let now = Instant::now();
        if abandon.is_some_and(|at| at <= now) {
            session
                .conn
                .close(close::GOING_AWAY, "session abandoned", false);
            break;
        }
        if deadline.is_some_and(|at| at <= now) {
            let ended = session.client.lock().on_deadline();
            if let Err(ending) = ended {
                end_with(&session.conn, ending);
            }
        }
    }
    app.sse.map.remove(&session.id);
    session.client.lock().close();
    drop(session.slot.lock().take());
    app.conn_closed.notify_waiters();
}

fn end_with(conn: &Conn, ending: Ending) {
    let close = close_for(ending);
    conn.close(close.code, close.reason, true);
}

/// `POST /sse/SESSION`: up to [`MAX_COMMANDS_PER_POST`] JSON commands, one
/// per line, each up to `--max-frame` bytes, run in order as if they had
/// come in WebSocket frames. 204 once they ran (replies are on the stream).
async fn commands(
    State(app): State<Arc<App>>,
    session: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let origin = allowed_origin(&app, req.headers());
    let response = run_commands(&app, session, req).await;
    with_cors(response, origin)
}

/// The live session a `POST` or `DELETE` names, if the request may act on
/// it: an allowed origin and, with auth on, a token for the session's user.
fn authorized(
    app: &App,
    session: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
) -> Result<Arc<SseSession>, ApiError> {
    let Ok(Path(id)) = session else {
        return Err(no_session());
    };
    let Some(session) = app.sse.map.get(&id).map(|s| s.value().clone()) else {
        return Err(no_session());
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !guard::origin_allowed(&app.config.allowed_origins, origin, host) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "origin not allowed".into(),
        ));
    }
    if app.auth.required() {
        let user = super::bearer(headers)
            .and_then(|token| app.auth.authenticate(None, Some(token)).ok().flatten())
            .map(|identity| identity.user);
        let owner = session.conn.user();
        if user.is_none() || (!owner.is_empty() && user.as_deref() != Some(owner)) {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid token for the session's user is required (Authorization: Bearer)".into(),
            ));
        }
    }
    Ok(session)
}

/// `DELETE /sse/SESSION`: the client is done. The session ends now (close
/// 1000 on its stream, its rooms left), not after the grace period a broken
/// stream gets. 204, or the statuses of a `POST`.
async fn end(
    State(app): State<Arc<App>>,
    session: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let origin = allowed_origin(&app, req.headers());
    let response = match authorized(&app, session, req.headers()) {
        Ok(session) => {
            session.conn.close(close::NORMAL, "client closed", true);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(refused) => refused.into_response(),
    };
    with_cors(response, origin)
}

async fn run_commands(
    app: &Arc<App>,
    session: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let session = match authorized(app, session, req.headers()) {
        Ok(session) => session,
        Err(refused) => return refused.into_response(),
    };
    let confirmed = confirmed(req.headers(), &session.id);
    let limit = app.config.max_frame.saturating_mul(MAX_COMMANDS_PER_POST);
    let body = match read_body_within(app, req.into_body(), limit).await {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body is not UTF-8".into(),
        )
        .into_response();
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() > MAX_COMMANDS_PER_POST {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("at most {MAX_COMMANDS_PER_POST} commands per request"),
        )
        .into_response();
    }
    if session.conn.is_closing() {
        return gone();
    }
    session.conn.touch(app.hub.clock_ms());
    if let Some(upto) = confirmed {
        session.forget_sent(upto);
    }
    let mut client = session.client.lock();
    for line in lines {
        if line.len() > app.config.max_frame {
            // A WebSocket would close with 1009; here the one command is
            // refused and the others run.
            client.reject(
                None,
                &Rejection::new(
                    ErrorCode::TooLarge,
                    format!("command larger than {} bytes", app.config.max_frame),
                ),
            );
            continue;
        }
        let outcome = match client.admit(line.as_bytes()) {
            Ok(true) => client.handle(line),
            Ok(false) => Ok(()),
            Err(ending) => Err(ending),
        };
        if let Err(ending) = outcome {
            end_with(&session.conn, ending);
            break;
        }
    }
    drop(client);
    // A hello may have moved the token's expiry.
    session.poke.notify_one();
    StatusCode::NO_CONTENT.into_response()
}

/// The event a POST says its client has (`Last-Event-ID: SESSION:N`).
fn confirmed(headers: &HeaderMap, session: &str) -> Option<u64> {
    let last = headers.get("last-event-id")?.to_str().ok()?;
    let (id, n) = last.split_once(':')?;
    (id == session).then(|| n.parse().ok()).flatten()
}

impl SseSession {
    /// Drops the kept events up to `upto`: the client has them.
    fn forget_sent(&self, upto: u64) {
        let mut st = self.stream.lock();
        while st.sent.front().is_some_and(|(n, _)| *n <= upto) {
            if let Some((_, event)) = st.sent.pop_front() {
                st.sent_bytes -= event.len();
            }
        }
    }
}

fn gone() -> Response {
    no_session().into_response()
}

fn no_session() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such session: it ended or expired; open a new one with GET /sse".into(),
    )
}

/// CORS preflight for a cross-origin `POST` (it carries `Authorization`).
async fn preflight(State(app): State<Arc<App>>, req: Request) -> Response {
    let origin = allowed_origin(&app, req.headers());
    let mut response = StatusCode::NO_CONTENT.into_response();
    if origin.is_some() {
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    with_cors(response, origin)
}

/// The request's `Origin`, if it may read our answers (the origin check of
/// `/ws`): echoed in `Access-Control-Allow-Origin` so a page on an allowed
/// origin can use the transport.
fn allowed_origin(app: &App, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    guard::origin_allowed(&app.config.allowed_origins, origin.to_str().ok(), host)
        .then(|| origin.clone())
}

fn with_cors(mut response: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// How long a session outlives its stream, waiting for a reattach: as long
/// as a silent WebSocket is kept.
fn grace(heartbeat: Duration) -> Duration {
    heartbeat * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_apart_into_opcode_and_payload() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload = vec![b'x'; len];
            let frame = switchboard_ws::encode_frame(switchboard_ws::OpCode::Text, &payload, false);
            let (opcode, body) = unframe(&frame).expect("our own frame");
            assert_eq!((opcode, body.len()), (1, len));
        }
        assert!(unframe(&Bytes::from_static(&[0x81, 5, b'a'])).is_none());
        assert!(unframe(&Bytes::from_static(&[0x81])).is_none());
    }

    #[test]
    fn an_event_is_one_data_line_with_the_session_id() {
        let event = encode_event("ab", 7, b"{\"a\":\n1,\r\n\"b\":2}");
        assert_eq!(&event[..], b"id: ab:7\ndata: {\"a\": 1,  \"b\":2}\n\n");
        assert_eq!(&encode_event("s", 1, b"{}")[..], b"id: s:1\ndata: {}\n\n");
    }
}
