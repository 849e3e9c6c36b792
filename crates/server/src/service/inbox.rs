//! Inbox positions and read receipts: `received` (a device confirms its
//! inbox) and `read` (tell a sender how far their messages were read).

use switchboard_protocol::validate_user;

use super::message::shutting_down;
use super::{validate_name, Client, Rejection, Service};
use crate::pipeline::Job;

impl Service {
    /// Records that this device has its inbox up to `upto`: kept in memory
    /// at once (a reconnect right after must not get those entries again)
    /// and stored with the next commit.
    pub fn received(&self, client: Client<'_>, upto: u64) -> Result<(), Rejection> {
        let user = client.user();
        // A device cannot confirm what was never sent.
        let upto = upto.min(self.hub.inbox_seq(&user));
        self.hub.set_cursor(&user, client.device, upto);
        let job = Job::Cursor {
            user: user.to_string(),
            device: client.device.to_string(),
            upto,
        };
        if self.pipeline.submit(job) {
            Ok(())
        } else {
            Err(shutting_down())
        }
    }

    /// Tells every connection of `from` that this user read their messages
    /// up to `upto` (live only: not stored).
    pub fn read(&self, client: Client<'_>, from: &str, upto: u64) -> Result<(), Rejection> {
        validate_name(validate_user, from, "")?;
        self.hub.read_receipt(from, &client.user(), upto);
        Ok(())
    }
}
