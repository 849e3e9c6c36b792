//! A client session, whatever carries it: decodes a JSON command, checks
//! the rate and who is asking ([`Login`]), calls the [`Service`], and
//! queues the reply or the `error` on the session's connection. The `/ws`
//! transport (`gateway::session`) feeds it text messages; an HTTP fallback
//! transport would feed it the same.

use std::sync::Arc;

use switchboard_protocol::{self as proto, decode_command, Command, ErrorCode, Id};
use tokio::time::Instant;

use super::login::{Ending, Hello, Login, Start};
use super::rate::{TokenBucket, Verdict, SIGNAL_RATE};
use super::{Caller, Destination, HistoryTarget, Rejection, Service};
use crate::hub::Conn;
use crate::pipeline::{ChangeOf, Reply};

pub struct ClientSession {
    service: Arc<Service>,
    conn: Arc<Conn>,
    login: Login,
    bucket: TokenBucket,
    /// Made by the first signal or `conversations` (most clients send
    /// neither: 8 bytes per session instead of 32, and no 56-byte
    /// semaphore allocation).
    extras: Option<Box<Extras>>,
}

/// What only some sessions need.
struct Extras {
    /// [`SIGNAL_RATE`]: signals over it are refused (never a reason to
    /// close: the command bucket judges floods). A bucket starts full, as
    /// it would be by the first signal anyway.
    signals: TokenBucket,
    /// One `conversations` list is computed at a time per session: each
    /// reads the store on the blocking pool, so a burst of them from one
    /// client must queue behind each other, not occupy the pool.
    lists: Option<Arc<tokio::sync::Semaphore>>,
}

impl ClientSession {
    /// Opens a session on a registered connection. `Err` when it must end
    /// at once (a refused token, too many connections for the user): the
    /// reason was already queued as an `error`.
    pub fn new(
        service: Arc<Service>,
        conn: Arc<Conn>,
        start: Start,
        device: Option<String>,
    ) -> (ClientSession, Result<(), Ending>) {
        let bucket = TokenBucket::new(&service.command_rate);
        let login = Login::new(&service, device);
        let mut session = ClientSession {
            service,
            conn,
            login,
            bucket,
            extras: None,
        };
        let started = session.login.start(&session.service, &session.conn, start);
        (session, started)
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Charges one incoming message to the rate limit (`--rate-limit`):
    /// `Ok(false)` means dropped (a `rate_limited` error, echoing the id if
    /// `payload` has one, is queued).
    pub fn admit(&mut self, payload: &[u8]) -> Result<bool, Ending> {
        match self.bucket.take(&self.service.command_rate, Instant::now()) {
            Verdict::Allow => Ok(true),
            Verdict::Reject => {
                let id = std::str::from_utf8(payload).ok().and_then(proto::peek_id);
                let refusal = Rejection::new(
                    ErrorCode::RateLimited,
                    "rate limit exceeded; command dropped",
                );
                self.service.send_error(&self.conn, id.as_ref(), &refusal);
                Ok(false)
            }
            Verdict::Close => {
                self.service.hub.metrics.error(ErrorCode::RateLimited);
                Err(Ending::RateLimited)
            }
        }
    }

    /// Queues an `error` on this session's connection.
    pub fn reject(&self, id: Option<&Id>, refusal: &Rejection) {
        self.service.send_error(&self.conn, id, refusal);
    }

    /// One JSON command.
    pub fn handle(&mut self, text: &str) -> Result<(), Ending> {
        let proto::Request { command, id } = match decode_command(text) {
            Ok(request) => request,
            Err(err) => {
                self.reject(err.id.as_ref(), &Rejection::new(err.code, err.message));
                return Ok(());
            }
        };
        if let Command::Hello {
            user,
            token,
            device,
            ..
        } = &command
        {
            let hello = Hello {
                user: user.as_deref(),
                token: token.as_deref(),
                device: device.as_deref(),
            };
            return self
                .login
                .hello(&self.service, &self.conn, hello, id.as_ref());
        }
        self.login.require(&self.service, &self.conn, id.as_ref())?;
        if matches!(command, Command::Signal { .. }) && !self.may_signal() {
            let refusal = Rejection::new(
                ErrorCode::RateLimited,
                format!("more than {SIGNAL_RATE} signals per second; signal dropped"),
            );
            self.reject(id.as_ref(), &refusal);
            return Ok(());
        }
        if let Err(refusal) = self.dispatch(command, id.as_ref()) {
            self.reject(id.as_ref(), &refusal);
        }
        Ok(())
    }

    /// Charges one signal to [`SIGNAL_RATE`]: false if it must be dropped.
    fn may_signal(&mut self) -> bool {
        let rate = &self.service.signal_rate;
        let extras = extras(&mut self.extras, &self.service);
        matches!(extras.signals.take(rate, Instant::now()), Verdict::Allow)
    }

    /// Calls the service for an identified client; replies are queued on
    /// the connection.
    fn dispatch(&mut self, command: Command<'_>, id: Option<&Id>) -> Result<(), Rejection> {
        let service = &self.service;
        let conn = &self.conn;
        let Some(client) = self.login.client(conn) else {
            // `require` identified the session or ended it.
            return Ok(());
        };
        match command {
            Command::Hello { .. } => {}
            Command::Join { room, since } => service.join(client, &room, since, id)?,
            Command::Leave { room } => {
                service.leave(client, &room)?;
                service
                    .hub
                    .reply(conn, proto::encode(&proto::Left::new(id, &room)));
            }
            Command::Publish { room, body } => service.submit(
                Caller::Client(client),
                Destination::Room(Arc::from(room.as_ref())),
                body.to_owned(),
                id.cloned(),
                self.reply_to(id),
            )?,
            Command::Send { to, body } => service.submit(
                Caller::Client(client),
                Destination::User(Arc::from(to.as_ref())),
                body.to_owned(),
                id.cloned(),
                self.reply_to(id),
            )?,
            Command::Received { upto } => service.received(client, upto)?,
            Command::Read { target, upto } => service.read(client, destination(target), upto)?,
            Command::Edit { to, target, body } => service.change(
                client,
                destination(to),
                ChangeOf {
                    target,
                    recall: false,
                },
                body.to_owned(),
                id.cloned(),
                self.reply_to(id),
            )?,
            Command::Recall { to, target } => service.change(
                client,
                destination(to),
                ChangeOf {
                    target,
                    recall: true,
                },
                recalled_body(),
                id.cloned(),
                self.reply_to(id),
            )?,
            Command::Signal { to, body } => service.signal(client, destination(to), body)?,
            Command::Conversations { before, limit } => {
                let list = service.conversations(
                    &client.user(),
                    client.rooms,
                    before.as_deref(),
                    limit,
                )?;
                let (service, conn, id) = (service.clone(), conn.clone(), id.cloned());
                let lists = extras(&mut self.extras, &service)
                    .lists
                    .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
                    .clone();
                // Read-your-writes: a `read` this client sent just before is
                // in the list (reads go through the writer, lists do not).
                let committed = service.pipeline.barrier();
                tokio::spawn(async move {
                    // Never closed: the semaphore lives as long as the session.
                    let Ok(_one_at_a_time) = lists.acquire_owned().await else {
                        return;
                    };
                    if let Some(committed) = committed {
                        let _ = committed.await;
                    }
                    match list.run().await {
                        Ok(page) => {
                            service.reply_page(&conn, page.encode(id.as_ref())).await;
                        }
                        Err(refusal) => service.send_error(&conn, id.as_ref(), &refusal),
                    }
                });
            }
            Command::History {
                target,
                before,
                limit,
            } => {
                let target = match target {
                    proto::HistoryTarget::Room(room) => HistoryTarget::Room(room.into_owned()),
                    proto::HistoryTarget::With(with) => HistoryTarget::With(with.into_owned()),
                };
                let read = service.history(Caller::Client(client), target, before, limit)?;
                let (service, conn, id) = (service.clone(), conn.clone(), id.cloned());
                tokio::spawn(async move {
                    let target = read.target().clone();
                    match read.run().await {
                        Ok(page) => {
                            let (room, with) = match &target {
                                HistoryTarget::Room(r) => (Some(r.as_str()), None),
                                HistoryTarget::With(w) => (None, Some(w.as_str())),
                            };
                            let reply = proto::History {
                                id: id.as_ref(),
                                room,
                                with,
                                messages: page.messages,
                                truncated: page.truncated,
                                read: page.read,
                                peer_read: page.peer_read,
                            };
                            service.reply_page(&conn, proto::encode(&reply)).await;
                        }
                        Err(refusal) => service.send_error(&conn, id.as_ref(), &refusal),
                    }
                });
            }
            Command::Presence { room } => {
                let users = service.presence(Caller::Client(client), &room)?;
                let names: Vec<&str> = users.iter().map(|u| &**u).collect();
                let list = proto::PresenceList::new(id, &room, names);
                service.hub.reply(conn, proto::encode(&list));
            }
            Command::Ping => service
                .hub
                .reply(conn, proto::encode(&proto::Pong::new(id))),
        }
        Ok(())
    }

    /// Acks and errors for a publish, send, edit or recall come back to
    /// this connection.
    fn reply_to(&self, id: Option<&Id>) -> Reply {
        Reply::Conn {
            conn: self.conn.clone(),
            id: id.cloned(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.login.deadline()
    }

    pub fn on_deadline(&mut self) -> Result<(), Ending> {
        self.login.on_deadline(&self.service, &self.conn)
    }

    /// The connection is gone: leave every room, drop the user's presence.
    pub fn close(&mut self) {
        self.service.hub.disconnect(&self.conn);
    }
}

/// A session's [`Extras`], made on first use.
fn extras<'a>(extras: &'a mut Option<Box<Extras>>, service: &Service) -> &'a mut Extras {
    extras.get_or_insert_with(|| {
        Box::new(Extras {
            signals: TokenBucket::new(&service.signal_rate),
            lists: None,
        })
    })
}

/// A command's room or user as the pipeline's destination.
fn destination(target: proto::Target<'_>) -> Destination {
    match target {
        proto::Target::Room(room) => Destination::Room(Arc::from(room.as_ref())),
        proto::Target::User(user) => Destination::User(Arc::from(user.as_ref())),
    }
}

/// What a recall stores as its body: `null`.
fn recalled_body() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::NULL.to_owned()
}
