//! A `/relay/{channel}` connection: frames go unchanged to the channel's
//! other connections (and back to the sender with `?echo=true`); with
//! `?echo=only` they come back to the sender alone.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_ws::OpCode;

use super::http::Echo;
use super::socket::{CloseWith, Handler};
use super::App;
use crate::hub::Conn;

pub struct RelaySession {
    pub app: Arc<App>,
    pub conn: Arc<Conn>,
    pub channel: String,
    pub echo: Echo,
}

impl Handler for RelaySession {
    fn on_message(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), CloseWith> {
        let hub = &self.app.hub;
        let delivered = match self.echo {
            Echo::Only => hub.relay.echo(&self.conn, opcode, payload, &hub.metrics),
            echo => hub.relay.forward(
                &self.channel,
                &self.conn,
                opcode,
                payload,
                echo == Echo::True,
                &hub.metrics,
            ),
        };
        hub.metrics.messages_out.increment(delivered as u64);
        Ok(())
    }

    fn on_close(&mut self) {
        if self.echo != Echo::Only {
            self.app.hub.relay.leave(&self.channel, &self.conn);
        }
        self.app.hub.disconnect(&self.conn);
    }
}
