//! One JSON-protocol connection for the scenarios that drive many small
//! sessions (`direct`, `resume`, `churn`, `publish`): a [`FrameBuf`] over the stream,
//! pongs for the server's pings, and the events a scenario tells apart by
//! the start of their text (the server writes `"type"` first).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::common;
use super::driver::{self, End, Frames};
use super::wire::{self, FrameBuf, OP_TEXT};

/// What a text frame from the server is, by the start of its JSON.
pub fn is(payload: &[u8], kind: &[u8]) -> bool {
    // `{"type":"` is 9 bytes.
    payload.len() > 9 + kind.len()
        && payload.starts_with(b"{\"type\":\"")
        && payload[9..].starts_with(kind)
        && payload[9 + kind.len()] == b'"'
}

/// A connection: its read buffer, and frames waiting to be written.
pub struct Conn {
    pub stream: TcpStream,
    buf: FrameBuf,
    out: Vec<u8>,
    pub mask: [u8; 4],
}

impl Conn {
    pub fn new(stream: TcpStream, leftover: Vec<u8>, capacity: usize, mask: [u8; 4]) -> Conn {
        Conn {
            stream,
            buf: FrameBuf::new(capacity, leftover),
            out: Vec::new(),
            mask,
        }
    }

    /// Whether bytes are already buffered (read them before waiting).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Queues a text frame; [`Conn::flush`] writes it.
    pub fn push_text(&mut self, payload: &[u8]) {
        wire::encode_frame(&mut self.out, OP_TEXT, payload, self.mask);
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(&self.out).await;
        self.out.clear();
        written.map_err(|err| format!("write error: {}", err.kind()))
    }

    /// Queues a text frame and writes it (with anything else queued).
    pub async fn send_text(&mut self, payload: &[u8]) -> Result<(), String> {
        self.push_text(payload);
        self.flush().await
    }

    /// Reads once from the socket. Cancel-safe (for `select!`); the
    /// frames read are handed out by [`Conn::frames`].
    pub async fn fill(&mut self) -> Result<(), String> {
        match self.buf.fill(&mut self.stream).await {
            Ok(0) => Err("eof without close frame".into()),
            Ok(_) => Ok(()),
            Err(err) => Err(format!("read error: {}", err.kind())),
        }
    }

    /// Hands every complete text frame buffered to `on_text` and queues
    /// pongs for pings. A close frame (or garbage) ends the connection:
    /// `Err` says how.
    pub fn frames(&mut self, mut on_text: impl FnMut(&[u8])) -> Result<(), String> {
        wire::dispatch(&mut self.buf, &mut self.out, self.mask, |payload, _| {
            on_text(payload);
            Ok(false)
        })
        .map(|_| ())
    }

    /// Hands out the frames already buffered or, when no whole frame is,
    /// reads once (waiting at most `wait`) and hands out what came; writes
    /// the pongs.
    pub async fn read(
        &mut self,
        wait: Duration,
        mut on_text: impl FnMut(&[u8]),
    ) -> Result<(), String> {
        let buffered = self.buf.len();
        if buffered > 0 {
            self.frames(&mut on_text)?;
        }
        // Nothing buffered, or only part of a frame: that needs a read
        // (handing out nothing and returning would make callers spin).
        if buffered == 0 || self.buf.len() == buffered {
            match timeout(wait, self.fill()).await {
                Err(_) => return Err(format!("nothing from the server for {wait:?}")),
                Ok(read) => read?,
            }
            self.frames(&mut on_text)?;
        }
        self.flush().await
    }

    /// Reads until `until` picks an answer out of a text frame, for at most
    /// `wait` in all; the frames after the answer stay buffered. `Err` if
    /// the connection ends or time runs out first.
    pub async fn wait_for<T>(
        &mut self,
        wait: Duration,
        mut until: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut answer = None;
            wire::dispatch(&mut self.buf, &mut self.out, self.mask, |payload, _| {
                answer = until(payload);
                Ok(answer.is_some())
            })?;
            self.flush().await?;
            if let Some(answer) = answer {
                return Ok(answer);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(read) => read?,
                Err(_) => return Err(format!("no answer within {wait:?}")),
            }
        }
    }

    /// Reads until `stop` (see [`driver::read_until`]), handing the frames
    /// to `frames`.
    pub async fn read_until(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
        frames: &mut impl Frames,
    ) -> End {
        let (mut reader, mut writer) = self.stream.split();
        driver::read_until(
            &mut reader,
            &mut writer,
            &mut self.buf,
            &mut self.out,
            self.mask,
            stop,
            frames,
        )
        .await
    }

    /// Closes politely (close frame, then the server's side of the close).
    pub async fn close(mut self) {
        let _ = self.flush().await;
        let (mut reader, mut writer) = self.stream.split();
        common::close_politely(&mut reader, &mut writer, self.mask).await;
    }
}

/// The string after `"key":"` up to the next quote (for names we chose, which
/// need no escaping).
pub fn field_str<'a>(payload: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = payload.get(at..)?.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// The machine's count of connections dropped because a listen queue was
/// full (`TcpExt: ListenOverflows` in /proc/net/netstat; Linux). When the
/// server is alone on the machine these are its: a dropped SYN is retried
/// by the client after 1 s, then 3 s, …
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|name| name == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_waits_for_the_rest_of_a_partial_frame() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut server, _) = server.unwrap();
        let frame = [&[0x81, 5][..], b"hello"].concat();
        // The upgrade left part of the first frame buffered.
        let mut conn = Conn::new(client.unwrap(), frame[..3].to_vec(), 64, [0; 4]);
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.write_all(&frame[3..]).await.unwrap();
            server
        });
        let mut seen = Vec::new();
        conn.read(Duration::from_secs(5), |p| seen.push(p.to_vec()))
            .await
            .unwrap();
        assert_eq!(seen, [b"hello".to_vec()]);
        drop(rest.await.unwrap());
    }

    #[test]
    fn kinds_and_string_fields() {
        let ack = br#"{"type":"ack","room":"resume-7","seq":12,"delivered":3}"#;
        assert!(is(ack, b"ack"));
        assert!(!is(ack, b"ac"));
        assert!(!is(br#"{"type":"acknowledged"}"#, b"ack"));
        assert_eq!(field_str(ack, b"\"room\":"), Some(&b"resume-7"[..]));
        assert_eq!(field_str(ack, b"\"to\":"), None);
        assert_eq!(field_str(br#"{"room":12}"#, b"\"room\":"), None);
        assert!(!is(b"{\"type\":\"", b"ack"));
    }
}
