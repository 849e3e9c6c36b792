//! A `/ws` connection speaking the JSON protocol: decodes commands, applies
//! the rate limit, and turns each command into a hub call and a reply.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_protocol::{
    self as proto, close, decode_command, Command, ErrorCode, HistoryTarget, Id,
};
use switchboard_ws::OpCode;
use tokio::time::Instant;

use super::replay::{self, Target};
use super::socket::{CloseWith, Handler};
use super::App;
use crate::auth::Identity;
use crate::hub::{Conn, IdentifyError};
use crate::pipeline::{Job, Reply};

/// How a connection starts, decided from the upgrade request.
pub enum Start {
    /// `?user=` (auth off) or a valid token in the request.
    Identified(Identity),
    /// Waiting for `hello` (or, with auth off, any command: then a guest).
    Pending,
    /// The request carried an invalid token: `unauthorized`, close 4001.
    Refused(String),
}

const UNAUTHORIZED: CloseWith = CloseWith {
    code: close::UNAUTHORIZED,
    reason: "unauthorized",
};

pub struct Session {
    app: Arc<App>,
    conn: Arc<Conn>,
    /// Shown to the client (hex) in `welcome`.
    session_id: u64,
    /// The client's device id (`?device=` or `hello`); "" when not given.
    /// Inbox delivery is tracked per device.
    device: Arc<str>,
    identity: Option<Identity>,
    /// Until identified: when the connection becomes a guest (auth off) or
    /// is closed 4001 (auth on).
    hello_deadline: Option<Instant>,
    /// When the token expires (plus leeway): closed 4001 unless a fresh
    /// token arrives in a `hello` first.
    expires: Option<Instant>,
    bucket: TokenBucket,
}

impl Session {
    pub fn new(app: Arc<App>, conn: Arc<Conn>, start: Start, device: Option<String>) -> Session {
        let session_id = rand::random::<u64>();
        let bucket = TokenBucket::new(app.config.rate_limit, app.config.rate_burst);
        let hello_deadline = Some(Instant::now() + app.config.hello_timeout);
        let device = Arc::from(device.unwrap_or_default());
        let mut session = Session {
            app,
            conn,
            session_id,
            device,
            identity: None,
            hello_deadline,
            expires: None,
            bucket,
        };
        let outcome = match start {
            Start::Identified(identity) => session.identify(identity, None),
            Start::Pending => Ok(()),
            Start::Refused(message) => {
                session.error(None, ErrorCode::Unauthorized, &message);
                Err(UNAUTHORIZED)
            }
        };
        if let Err(close) = outcome {
            session.conn.close(close.code, close.reason, true);
        }
        session
    }

    fn identify(&mut self, identity: Identity, id: Option<&Id>) -> Result<(), CloseWith> {
        self.hello_deadline = None;
        let heartbeat = self.app.config.heartbeat.as_secs().max(1);
        let welcome = proto::encode(&proto::Welcome::new(
            id,
            &identity.user,
            &format!("{:016x}", self.session_id),
            heartbeat,
        ));
        let limit = self.app.config.max_connections_per_user;
        match self
            .app
            .hub
            .identify(&self.conn, &identity.user, welcome, limit)
        {
            Ok(range) => {
                replay::inbox(
                    self.app.clone(),
                    self.conn.clone(),
                    self.device.clone(),
                    range,
                );
            }
            Err(IdentifyError::TooManyConnections) => {
                self.error(
                    id,
                    ErrorCode::Forbidden,
                    &format!("user `{}` already has {limit} connections", identity.user),
                );
                return Err(CloseWith {
                    code: close::POLICY,
                    reason: "too many connections for this user",
                });
            }
            Err(IdentifyError::AlreadyIdentified) => {}
        }
        self.set_expiry(&identity);
        self.identity = Some(identity);
        Ok(())
    }

    fn set_expiry(&mut self, identity: &Identity) {
        self.expires = identity.expires_at.map(|exp| {
            let now = jsonwebtoken::get_current_timestamp();
            let left = exp
                .saturating_add(self.app.config.jwt_leeway.as_secs())
                .saturating_sub(now);
            Instant::now() + Duration::from_secs(left)
        });
    }

    fn identify_guest(&mut self) -> Result<(), CloseWith> {
        let guest = format!("guest-{:08x}", rand::random::<u32>());
        self.identify(Identity::named(&guest), None)
    }

    fn error(&self, id: Option<&Id>, code: ErrorCode, message: &str) {
        self.app.hub.metrics.error(code);
        self.app.hub.reply(
            &self.conn,
            proto::encode(&proto::Error::new(id, code, message)),
        );
    }

    fn submit(&self, job: Job, id: Option<&Id>) {
        if !self.app.pipeline.submit(job) {
            self.error(id, ErrorCode::Unavailable, "the server is shutting down");
        }
    }

    /// Submits a publish or send whose ack (or error) goes back to this
    /// connection with the command's `id`.
    fn submit_message(&self, id: Option<Id>, job: impl FnOnce(Option<Id>, Reply) -> Job) {
        let reply = Reply::Conn {
            conn: self.conn.clone(),
            id: id.clone(),
        };
        let refused_id = id.clone();
        self.submit(job(id, reply), refused_id.as_ref());
    }

    /// `hello` on an identified connection: with auth on, a fresh token for
    /// the same user extends the session; anything else is refused.
    fn refresh(
        &mut self,
        user: Option<&str>,
        token: Option<&str>,
        id: Option<&Id>,
    ) -> Result<(), CloseWith> {
        let current = self
            .identity
            .as_ref()
            .map(|i| i.user.clone())
            .unwrap_or_default();
        if !self.app.auth.required() || token.is_none() {
            self.error(
                id,
                ErrorCode::BadRequest,
                "already identified: hello is accepted once",
            );
            return Ok(());
        }
        match self.app.auth.authenticate(user, token) {
            Ok(Some(identity)) if identity.user == current => {
                self.set_expiry(&identity);
                self.identity = Some(identity);
                let heartbeat = self.app.config.heartbeat.as_secs().max(1);
                let session = format!("{:016x}", self.session_id);
                let welcome = proto::Welcome::new(id, &current, &session, heartbeat);
                self.app.hub.reply(&self.conn, proto::encode(&welcome));
                Ok(())
            }
            Ok(_) => {
                self.error(
                    id,
                    ErrorCode::Forbidden,
                    "a refreshed token must be for the same user",
                );
                Ok(())
            }
            Err(message) => {
                self.error(id, ErrorCode::Unauthorized, &message.to_string());
                Err(UNAUTHORIZED)
            }
        }
    }

    /// Whether the token allows `room`; answers `forbidden` if not.
    fn may_use(&self, room: &str, id: Option<&Id>) -> bool {
        let allowed = self.identity.as_ref().is_none_or(|i| i.may_use(room));
        if !allowed {
            self.error(
                id,
                ErrorCode::Forbidden,
                &format!("your token does not allow room `{room}`"),
            );
        }
        allowed
    }

    fn body_fits(&self, body: &serde_json::value::RawValue, id: Option<&Id>) -> bool {
        let max = self.app.config.max_body;
        let fits = body.get().len() <= max;
        if !fits {
            self.error(
                id,
                ErrorCode::TooLarge,
                &format!("body is larger than {max} bytes"),
            );
        }
        fits
    }

    fn handle(&mut self, text: &str) -> Result<(), CloseWith> {
        let proto::Request { command, id } = match decode_command(text) {
            Ok(request) => request,
            Err(err) => {
                self.error(err.id.as_ref(), err.code, &err.message);
                return Ok(());
            }
        };
        if self.identity.is_none() {
            match &command {
                Command::Hello {
                    user,
                    token,
                    device,
                    ..
                } => {
                    if let Some(device) = device {
                        self.device = Arc::from(device.as_ref());
                    }
                    return match self
                        .app
                        .auth
                        .authenticate(user.as_deref(), token.as_deref())
                    {
                        Ok(Some(identity)) => self.identify(identity, id.as_ref()),
                        Ok(None) => {
                            let guest = format!("guest-{:08x}", rand::random::<u32>());
                            self.identify(Identity::named(&guest), id.as_ref())
                        }
                        Err(message) => {
                            self.error(id.as_ref(), ErrorCode::Unauthorized, &message.to_string());
                            Err(UNAUTHORIZED)
                        }
                    };
                }
                _ if self.app.auth.required() => {
                    self.error(
                        id.as_ref(),
                        ErrorCode::Unauthorized,
                        "send hello with a token first",
                    );
                    return Err(UNAUTHORIZED);
                }
                // Any other first command: carry on as a guest.
                _ => self.identify_guest()?,
            }
        }
        let hub = &self.app.hub;
        let conn = &self.conn;
        let user = conn.user_arc().cloned().unwrap_or_else(|| Arc::from(""));
        match command {
            Command::Hello { user, token, .. } => {
                let (user, token) = (user.map(|u| u.into_owned()), token.map(|t| t.into_owned()));
                return self.refresh(user.as_deref(), token.as_deref(), id.as_ref());
            }
            Command::Join { room, since } => {
                if !self.may_use(&room, id.as_ref()) {
                    return Ok(());
                }
                let max = self.app.config.max_rooms_per_connection;
                if !hub.is_member(conn, &room) && conn.rooms.lock().len() >= max {
                    self.error(
                        id.as_ref(),
                        ErrorCode::Forbidden,
                        &format!("a connection may be in at most {max} rooms"),
                    );
                    return Ok(());
                }
                if let Some(range) = hub.join(conn, &room, since, id.as_ref()) {
                    replay::room(self.app.clone(), conn.clone(), room.into_owned(), range);
                }
            }
            Command::Leave { room } => {
                if hub.leave(conn, &room) {
                    hub.reply(conn, proto::encode(&proto::Left::new(id.as_ref(), &room)));
                } else {
                    self.error(
                        id.as_ref(),
                        ErrorCode::NotJoined,
                        &format!("not joined to room `{room}`"),
                    );
                }
            }
            Command::Publish { room, body } => {
                if !self.may_use(&room, id.as_ref()) || !self.body_fits(body, id.as_ref()) {
                    return Ok(());
                }
                if !hub.is_member(conn, &room) {
                    self.error(
                        id.as_ref(),
                        ErrorCode::NotJoined,
                        &format!("not joined to room `{room}`"),
                    );
                    return Ok(());
                }
                self.submit_message(id, |id, reply| Job::Publish {
                    room: Arc::from(room.as_ref()),
                    from: user,
                    sender: Some(conn.id),
                    body: body.to_owned(),
                    id,
                    reply,
                });
            }
            Command::Send { to, body } => {
                if !self.body_fits(body, id.as_ref()) {
                    return Ok(());
                }
                self.submit_message(id, |id, reply| Job::Send {
                    to: Arc::from(to.as_ref()),
                    from: user,
                    sender: Some(conn.id),
                    body: body.to_owned(),
                    id,
                    reply,
                });
            }
            Command::Received { upto } => {
                // A device cannot confirm what was never sent.
                let upto = upto.min(hub.inbox_seq(&user));
                hub.set_cursor(&user, &self.device, upto);
                let job = Job::Cursor {
                    user: user.to_string(),
                    device: self.device.to_string(),
                    upto,
                };
                self.submit(job, id.as_ref());
            }
            Command::Read { from, upto } => hub.read_receipt(&from, &user, upto),
            Command::History {
                target,
                before,
                limit,
            } => {
                let target = match target {
                    HistoryTarget::Room(room) => {
                        if !self.may_use(&room, id.as_ref()) {
                            return Ok(());
                        }
                        Target::Room(room.into_owned())
                    }
                    HistoryTarget::With(with) => Target::With(with.into_owned()),
                };
                replay::history(self.app.clone(), conn.clone(), id, target, before, limit);
            }
            Command::Presence { room } => {
                let users = hub.presence(&room);
                let names: Vec<&str> = users.iter().map(|u| &**u).collect();
                hub.reply(
                    conn,
                    proto::encode(&proto::PresenceList::new(id.as_ref(), &room, names)),
                );
            }
            Command::Ping => hub.reply(conn, proto::encode(&proto::Pong::new(id.as_ref()))),
        }
        Ok(())
    }
}

impl Handler for Session {
    fn on_message(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), CloseWith> {
        match self.bucket.take(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Reject => {
                let id = std::str::from_utf8(&payload).ok().and_then(proto::peek_id);
                self.error(
                    id.as_ref(),
                    ErrorCode::RateLimited,
                    "rate limit exceeded; command dropped",
                );
                return Ok(());
            }
            Verdict::Close => {
                self.app.hub.metrics.error(ErrorCode::RateLimited);
                return Err(CloseWith {
                    code: close::POLICY,
                    reason: "rate limit exceeded",
                });
            }
        }
        if opcode != OpCode::Text {
            self.error(
                None,
                ErrorCode::BadRequest,
                "binary frames are not accepted on /ws: send JSON text frames",
            );
            return Ok(());
        }
        // The decoder validated UTF-8 already; this check is cheap and keeps
        // the code free of `unsafe`.
        match std::str::from_utf8(&payload) {
            Ok(text) => self.handle(text)?,
            Err(_) => {
                return Err(CloseWith {
                    code: close::INVALID_DATA,
                    reason: "invalid UTF-8",
                })
            }
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.hello_deadline.or(self.expires)
    }

    fn on_deadline(&mut self) -> Result<(), CloseWith> {
        if self.hello_deadline.is_some() {
            if self.app.auth.required() {
                self.hello_deadline = None;
                self.error(
                    None,
                    ErrorCode::Unauthorized,
                    "no valid token received in time",
                );
                return Err(UNAUTHORIZED);
            }
            return self.identify_guest();
        }
        if self.expires.is_some_and(|at| at <= Instant::now()) {
            self.expires = None;
            self.error(
                None,
                ErrorCode::Unauthorized,
                "token expired: send hello with a fresh token before expiry",
            );
            return Err(CloseWith {
                code: close::UNAUTHORIZED,
                reason: "token expired",
            });
        }
        Ok(())
    }

    fn on_close(&mut self) {
        self.app.hub.disconnect(&self.conn);
    }
}

enum Verdict {
    Allow,
    Reject,
    Close,
}

/// Token bucket with a strike rule: commands over the rate are rejected, and
/// more than `rate` rejections within one second close the connection.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    strike_window: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> TokenBucket {
        let now = Instant::now();
        let burst = f64::from(burst.max(rate).max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
            strikes: 0,
            strike_window: now,
        }
    }

    fn take(&mut self, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.strike_window) > Duration::from_secs(1) {
            self.strike_window = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if f64::from(self.strikes) > self.rate {
            Verdict::Close
        } else {
            Verdict::Reject
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rejects_then_closes() {
        let mut b = TokenBucket::new(10, 20);
        let t = Instant::now();
        let mut allowed = 0;
        let mut rejected = 0;
        loop {
            match b.take(t) {
                Verdict::Allow => allowed += 1,
                Verdict::Reject => rejected += 1,
                Verdict::Close => break,
            }
        }
        assert_eq!(allowed, 20);
        assert_eq!(rejected, 10);
    }

    #[test]
    fn bucket_refills_over_time() {
        let mut b = TokenBucket::new(10, 10);
        let t = Instant::now();
        for _ in 0..10 {
            assert!(matches!(b.take(t), Verdict::Allow));
        }
        assert!(matches!(b.take(t), Verdict::Reject));
        assert!(matches!(
            b.take(t + Duration::from_millis(150)),
            Verdict::Allow
        ));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0);
        let t = Instant::now();
        for _ in 0..10_000 {
            assert!(matches!(b.take(t), Verdict::Allow));
        }
    }
}
