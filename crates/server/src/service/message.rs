//! `publish` (to a room) and `send` (to a user): validated here for every
//! entry point, then queued on the [`crate::pipeline`], which sequences,
//! stores, fans out and answers through the [`Reply`].

use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_protocol::{validate_room, validate_user, ErrorCode, Id};

pub use crate::pipeline::Destination;
use crate::pipeline::{ChangeOf, Job, Reply, Submission};

use super::{not_joined, validate_name, Caller, Client, Rejection, Service};

impl Service {
    /// Validates a message and queues it. `Ok` means queued: the ack (or an
    /// `unavailable` error if the commit fails) arrives through `reply`.
    ///
    /// Checks, in order: the destination's name; for a client, its token's
    /// room grant; the body's size (`--max-body`); for a client, room
    /// membership; for the backend, its `from` name.
    pub fn submit(
        &self,
        caller: Caller<'_>,
        to: Destination,
        body: Box<RawValue>,
        id: Option<Id>,
        reply: Reply,
    ) -> Result<(), Rejection> {
        self.queue(caller, to, body, id, reply, None)
    }

    /// An `edit` (`body`: the new one) or a `recall` (`body`: `null`) of the
    /// client's message: the checks of a message here; whose message it
    /// is, whether it is held and the window are judged by the pipeline
    /// when the change is sequenced.
    pub fn change(
        &self,
        client: Client<'_>,
        to: Destination,
        change: ChangeOf,
        body: Box<RawValue>,
        id: Option<Id>,
        reply: Reply,
    ) -> Result<(), Rejection> {
        self.queue(Caller::Client(client), to, body, id, reply, Some(change))
    }

    fn queue(
        &self,
        caller: Caller<'_>,
        to: Destination,
        body: Box<RawValue>,
        id: Option<Id>,
        reply: Reply,
        change: Option<ChangeOf>,
    ) -> Result<(), Rejection> {
        match &to {
            Destination::Room(room) => validate_name(validate_room, room, "")?,
            Destination::User(user) => validate_name(validate_user, user, "")?,
        }
        if let (Caller::Client(client), Destination::Room(room)) = (&caller, &to) {
            client.check_room_access(room)?;
        }
        self.check_body(&body)?;
        let (from, sender) = match caller {
            Caller::Client(client) => {
                if let Destination::Room(room) = &to {
                    if !self.hub.is_member(client.conn, room) {
                        return Err(not_joined(room));
                    }
                }
                (client.user(), Some(client.conn.id))
            }
            Caller::Backend { from } => {
                validate_name(validate_user, from, "from")?;
                (Arc::from(from), None)
            }
        };
        let job = Job::Message(Submission {
            to,
            from,
            sender,
            body,
            id,
            reply,
            change,
        });
        if self.pipeline.submit(job) {
            Ok(())
        } else {
            Err(shutting_down())
        }
    }

    /// `--max-body`: the one place a message body's size is judged,
    /// whichever entry point it came through. (Its nesting is a wire-format
    /// rule, checked while decoding: `protocol::check_body_depth`.)
    pub fn check_body(&self, body: &RawValue) -> Result<(), Rejection> {
        let max = self.config.max_body;
        if body.get().len() > max {
            return Err(Rejection::new(
                ErrorCode::TooLarge,
                format!("body is larger than {max} bytes"),
            ));
        }
        Ok(())
    }
}

pub(super) fn shutting_down() -> Rejection {
    Rejection::new(ErrorCode::Unavailable, "the server is shutting down")
}
