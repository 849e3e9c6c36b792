//! Who a client session is: the hello / token / expiry state machine.
//!
//! A session starts identified (a token or, with auth off, `?user=` in the
//! request), pending (waiting for `hello`), or refused (a bad token: the
//! client still gets the `unauthorized` error before the close). Pending
//! sessions become guests after `--hello-timeout` when auth is off, and are
//! ended when it is on. With auth on, a `hello` with a fresh token for the
//! same user extends the session before the token expires.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::{self as proto, ErrorCode, Id};
use tokio::time::Instant;

use super::{Client, Rejection, Service};
use crate::auth::{Authenticator, Identity};
use crate::hub::{Conn, IdentifyError};

/// How a session starts, decided from the request that opened it.
pub enum Start {
    /// A valid token, or `?user=` with auth off.
    Identified(Identity),
    /// Waiting for `hello` (or, with auth off, any command: then a guest).
    Pending,
    /// Auth on, and the request named a user (`?user=`) but carried no
    /// token: the client evidently expects `?user=` to be enough, so it is
    /// told at once (an `unauthorized` error) instead of waiting out
    /// `--hello-timeout` in silence. It may still send a `hello` with a
    /// token within the timeout.
    TokenRequired,
    /// Auth off, and the request carried a token: it is ignored (nothing
    /// could verify it), and `welcome` says so. Identified when `?user=`
    /// named a user, else pending.
    TokenIgnored(Option<Identity>),
    /// The request carried an invalid token: `unauthorized`, then the end.
    Refused(String),
}

impl Start {
    /// With auth on, identity comes only from a token (the `Authorization:
    /// Bearer` header or `?token=`, else the first `hello`); a bad one is
    /// refused after the session opens, so a browser can read why. With
    /// auth off, `?user=` names the user.
    pub fn from_request(
        auth: &dyn Authenticator,
        token: Option<String>,
        user: Option<String>,
    ) -> Start {
        match (auth.required(), token, user) {
            (true, Some(token), _) => match auth.authenticate(None, Some(&token)) {
                Ok(Some(identity)) => Start::Identified(identity),
                Ok(None) => Start::Pending,
                Err(err) => Start::Refused(err.to_string()),
            },
            (true, None, Some(_)) => Start::TokenRequired,
            (true, None, None) | (false, None, None) => Start::Pending,
            (false, Some(_), user) => Start::TokenIgnored(user.map(|u| Identity::named(&u))),
            (false, None, Some(user)) => Start::Identified(Identity::named(&user)),
        }
    }
}

/// Why a client session must end (the transport picks the close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// No valid token (bad, missing in time, or refused on `hello`).
    Unauthorized,
    /// The token expired without a fresh one arriving in a `hello`.
    TokenExpired,
    /// `--max-connections-per-user` reached.
    TooManyConnections,
    /// Far over `--rate-limit` for a second.
    RateLimited,
}

/// Every session holds one of these for its whole life, so it keeps only
/// what it needs after `hello` (56 bytes; it was 160 with the whole
/// [`Identity`], a second copy of the user's name, a deadline each for
/// `hello` and token expiry, and a random session id).
pub struct Login {
    /// The client's device id (`?device=` or `hello`); "" when not given
    /// (then the service's shared "": no allocation per session).
    /// Inbox delivery is tracked per device.
    device: Arc<str>,
    /// Once identified: the token's room grant (`None`: any room). The
    /// user is the connection's ([`Conn::user_arc`]).
    rooms: Option<Box<[String]>>,
    /// Until identified: when the session becomes a guest (auth off) or
    /// ends (auth on). Once identified: when the token expires (plus
    /// leeway).
    deadline: Option<Instant>,
    identified: bool,
    /// Said in the first `welcome` ([`TOKEN_IGNORED`]): auth is off and the
    /// client presented a token, which was ignored.
    warning: bool,
}

/// Without this a client that sends a token to a server with auth off
/// believes it is the token's user, while it is `?user=` or a guest.
const TOKEN_IGNORED: &str = "authentication is off on this server: the token was ignored, \
     and you are the user named by ?user= or hello.user (a guest when none is)";

impl Login {
    pub fn new(service: &Service, device: Option<String>) -> Login {
        Login {
            device: device_id(service, device.as_deref().unwrap_or_default()),
            rooms: None,
            deadline: Some(Instant::now() + service.config.hello_timeout),
            identified: false,
            warning: false,
        }
    }

    /// Applies how the session started.
    pub fn start(
        &mut self,
        service: &Arc<Service>,
        conn: &Arc<Conn>,
        start: Start,
    ) -> Result<(), Ending> {
        match start {
            Start::Identified(identity) => self.identify(service, conn, identity, None),
            Start::Pending => Ok(()),
            Start::TokenRequired => {
                let timeout = service.config.hello_timeout;
                let message = format!(
                    "a token is required: authentication is on and ?user= is ignored; \
                     send {{\"type\":\"hello\",\"token\":\"…\"}} within {}, \
                     or connect with ?token= or an Authorization: Bearer header",
                    describe(timeout)
                );
                let refusal = Rejection::new(ErrorCode::Unauthorized, message);
                service.send_error(conn, None, &refusal);
                Ok(())
            }
            Start::TokenIgnored(identity) => {
                self.warning = true;
                match identity {
                    Some(identity) => self.identify(service, conn, identity, None),
                    None => Ok(()),
                }
            }
            Start::Refused(message) => Err(unauthorized(service, conn, None, message)),
        }
    }

    /// The identified client, if the session is identified.
    pub fn client<'a>(&'a self, conn: &'a Arc<Conn>) -> Option<Client<'a>> {
        if !self.identified {
            return None;
        }
        Some(Client {
            conn,
            user: conn.user_arc()?,
            rooms: self.rooms.as_deref(),
            device: &self.device,
        })
    }

    /// `hello`: identifies a pending session; on an identified one, a fresh
    /// token for the same user (auth on) extends it, anything else is
    /// refused.
    pub fn hello(
        &mut self,
        service: &Arc<Service>,
        conn: &Arc<Conn>,
        hello: Hello<'_>,
        id: Option<&Id>,
    ) -> Result<(), Ending> {
        if self.identified {
            return self.refresh(service, conn, hello, id);
        }
        if let Some(device) = hello.device {
            self.device = device_id(service, device);
        }
        if hello.token.is_some() && !service.auth.required() {
            self.warning = true;
        }
        match service.auth.authenticate(hello.user, hello.token) {
            Ok(Some(identity)) => self.identify(service, conn, identity, id),
            Ok(None) => self.identify(service, conn, guest(), id),
            Err(err) => Err(unauthorized(service, conn, id, err.to_string())),
        }
    }

    /// Before any command but `hello`: with auth on, a pending session ends;
    /// with auth off it carries on as a guest.
    pub fn require(
        &mut self,
        service: &Arc<Service>,
        conn: &Arc<Conn>,
        id: Option<&Id>,
    ) -> Result<(), Ending> {
        if self.identified {
            return Ok(());
        }
        if service.auth.required() {
            return Err(unauthorized(
                service,
                conn,
                id,
                "send hello with a token first",
            ));
        }
        self.identify(service, conn, guest(), None)
    }

    /// When [`Login::on_deadline`] should run next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn on_deadline(&mut self, service: &Arc<Service>, conn: &Arc<Conn>) -> Result<(), Ending> {
        if !self.identified && self.deadline.is_some() {
            if service.auth.required() {
                self.deadline = None;
                let message = "no valid token received in time";
                return Err(unauthorized(service, conn, None, message));
            }
            return self.identify(service, conn, guest(), None);
        }
        if self.identified && self.deadline.is_some_and(|at| at <= Instant::now()) {
            self.deadline = None;
            let refusal = Rejection::new(
                ErrorCode::Unauthorized,
                "token expired: send hello with a fresh token before expiry",
            );
            service.send_error(conn, None, &refusal);
            return Err(Ending::TokenExpired);
        }
        Ok(())
    }

    /// Registers the user with the hub (queuing `welcome`) and starts its
    /// inbox delivery.
    fn identify(
        &mut self,
        service: &Arc<Service>,
        conn: &Arc<Conn>,
        identity: Identity,
        id: Option<&Id>,
    ) -> Result<(), Ending> {
        self.deadline = None;
        let welcome = self.welcome(service, conn, &identity.user, id);
        let limit = service.config.max_connections_per_user;
        // Cluster mode: the inbox replay follows the user first (see
        // `replay::inbox`).
        match service.hub.identify(conn, &identity.user, welcome, limit) {
            Ok(range) => {
                super::replay::inbox(service.clone(), conn.clone(), self.device.clone(), range);
            }
            Err(IdentifyError::TooManyConnections) => {
                let refusal = Rejection::new(
                    ErrorCode::Forbidden,
                    format!("user `{}` already has {limit} connections", identity.user),
                );
                service.send_error(conn, id, &refusal);
                return Err(Ending::TooManyConnections);
            }
            Err(IdentifyError::AlreadyIdentified) => {}
        }
        self.set_expiry(service, &identity);
        self.rooms = identity.rooms.map(Vec::into_boxed_slice);
        self.identified = true;
        Ok(())
    }

    fn refresh(
        &mut self,
        service: &Arc<Service>,
        conn: &Arc<Conn>,
        hello: Hello<'_>,
        id: Option<&Id>,
    ) -> Result<(), Ending> {
        let current = conn.user();
        if !service.auth.required() || hello.token.is_none() {
            let refusal = Rejection::bad_request("already identified: hello is accepted once");
            service.send_error(conn, id, &refusal);
            return Ok(());
        }
        match service.auth.authenticate(hello.user, hello.token) {
            Ok(Some(identity)) if identity.user == current => {
                self.set_expiry(service, &identity);
                self.rooms = identity.rooms.map(Vec::into_boxed_slice);
                service
                    .hub
                    .reply(conn, self.welcome(service, conn, current, id));
                Ok(())
            }
            Ok(_) => {
                let refusal = Rejection::new(
                    ErrorCode::Forbidden,
                    "a refreshed token must be for the same user",
                );
                service.send_error(conn, id, &refusal);
                Ok(())
            }
            Err(err) => Err(unauthorized(service, conn, id, err.to_string())),
        }
    }

    fn welcome(&mut self, service: &Service, conn: &Conn, user: &str, id: Option<&Id>) -> Vec<u8> {
        let heartbeat = service.config.heartbeat.as_secs().max(1);
        // The session id shown to the client: its connection's id under the
        // service's secret key (as opaque as a random one, and not kept).
        let session = format!("{:016x}", service.session_ids.hash_one(conn.id));
        let mut welcome = proto::Welcome::new(id, user, &session, heartbeat);
        welcome.warning = std::mem::take(&mut self.warning).then_some(TOKEN_IGNORED);
        proto::encode(&welcome)
    }

    /// An `exp` too far ahead for the clock to represent (≥ 2^63 s: a
    /// token meant to never expire) sets no timer rather than overflowing.
    fn set_expiry(&mut self, service: &Service, identity: &Identity) {
        self.deadline = identity.expires_at.and_then(|exp| {
            let now = jsonwebtoken::get_current_timestamp();
            let left = exp
                .saturating_add(service.config.jwt_leeway.as_secs())
                .saturating_sub(now);
            Instant::now().checked_add(Duration::from_secs(left))
        });
    }
}

/// A device id as the session keeps it: "" is the service's shared one.
fn device_id(service: &Service, device: &str) -> Arc<str> {
    if device.is_empty() {
        service.no_device.clone()
    } else {
        Arc::from(device)
    }
}

/// What a `hello` carries.
#[derive(Clone, Copy, Default)]
pub struct Hello<'a> {
    pub user: Option<&'a str>,
    pub token: Option<&'a str>,
    pub device: Option<&'a str>,
}

/// Queues the `unauthorized` error that precedes the end of a session.
fn unauthorized(
    service: &Service,
    conn: &Conn,
    id: Option<&Id>,
    message: impl Into<String>,
) -> Ending {
    service.send_error(conn, id, &Rejection::new(ErrorCode::Unauthorized, message));
    Ending::Unauthorized
}

/// `5 s`, `300 ms`: a duration as the client is told it.
fn describe(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A user for a session that named none (auth off).
fn guest() -> Identity {
    Identity::named(&format!("guest-{:08x}", rand::random::<u32>()))
}
