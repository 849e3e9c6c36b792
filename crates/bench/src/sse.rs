//! A minimal client of Switchboard's HTTP fallback transport (`GET /sse`,
//! `POST /sse/SESSION`; `docs/PROTOCOL.md`, "HTTP transport"), for the
//! `--transport sse` of `fanout` and `connect`: it reads the event stream
//! (chunked) and hands each event's JSON to a scenario's [`Frames`], as
//! [`driver::hold`] does with WebSocket frames, so a scenario counts SSE
//! deliveries with the code that counts WebSocket ones.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::driver::{sleep_until, End, Frames};
use super::wire::{dial, read_head, Target};

/// Largest chunk or event accepted (a guard against garbage).
const MAX_EVENT: usize = 64 << 20;

/// Opens `GET /sse{query}` and reads the response head. Returns the stream
/// and the body bytes read past the head.
pub async fn open(
    target: &Target,
    source: Option<IpAddr>,
    query: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut stream = dial(target, source).await?;
    let request = format!(
        "GET /sse{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        target.host
    );
    stream.write_all(request.as_bytes()).await?;
    let (head, rest) = read_head(&mut stream).await?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET /sse refused: {status}");
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("GET /sse: expected a chunked event stream");
    }
    Ok((stream, rest))
}

/// `POST /sse/SESSION` with `lines` (one command each), on a connection of
/// its own; the status.
pub async fn post(
    target: &Target,
    source: Option<IpAddr>,
    session: &str,
    lines: &str,
    last_event_id: &str,
) -> anyhow::Result<u16> {
    let mut stream = dial(target, source).await?;
    // Confirming what arrived lets the server forget it (as client.js does).
    let confirm = if last_event_id.is_empty() {
        String::new()
    } else {
        format!("Last-Event-ID: {last_event_id}\r\n")
    };
    let request = format!(
        "POST /sse/{session} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\n{confirm}Content-Length: {}\r\n\r\n{lines}",
        target.host,
        lines.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let (head, _) = read_head(&mut stream).await?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("no status in the POST answer")?;
    Ok(status)
}

/// One event of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The `session` event: the id and the heartbeat (ms) to POST within.
    Session { id: String, heartbeat_ms: u64 },
    /// A protocol event: its JSON.
    Data(Vec<u8>),
    /// `event: close`: the session ended (its data).
    Close(String),
}

/// Undoes the chunked encoding and splits the body into events.
#[derive(Default)]
pub struct EventBuf {
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet split into events.
    body: Vec<u8>,
    /// Bytes left in the current chunk (`None`: a size line comes next).
    chunk_left: Option<usize>,
    /// The zero-size chunk arrived.
    pub ended: bool,
    /// The `id` of the last event split off.
    pub last_id: String,
}

impl EventBuf {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.ended {
            // The body is over (what follows is the last chunk's CRLF).
            return Ok(());
        }
        self.raw.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match self.chunk_left {
                None => {
                    let Some(eol) = self.raw[at..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&self.raw[at..at + eol])
                        .map_err(|_| "chunk size is not text")?;
                    let size = usize::from_str_radix(line.trim(), 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    if size > MAX_EVENT {
                        return Err(format!("chunk of {size} bytes"));
                    }
                    at += eol + 2;
                    if size == 0 {
                        self.ended = true;
                        break;
                    }
                    self.chunk_left = Some(size);
                }
                Some(0) => {
                    if self.raw.len() - at < 2 {
                        break;
                    }
                    at += 2;
                    self.chunk_left = None;
                }
                Some(left) => {
                    let take = left.min(self.raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    self.body.extend_from_slice(&self.raw[at..at + take]);
                    at += take;
                    self.chunk_left = Some(left - take);
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }

    /// The next complete event, skipping comments.
    pub fn next_event(&mut self) -> Result<Option<Event>, String> {
        loop {
            let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") else {
                if self.body.len() > MAX_EVENT {
                    return Err("event too large".into());
                }
                return Ok(None);
            };
            let block: Vec<u8> = self.body.drain(..end + 2).collect();
            let mut kind: &[u8] = b"message";
            let mut data: &[u8] = b"";
            for line in block.split(|&b| b == b'\n') {
                if let Some(value) = line.strip_prefix(b"id: ") {
                    self.last_id = String::from_utf8_lossy(value).into_owned();
                } else if let Some(value) = line.strip_prefix(b"event: ") {
                    kind = value;
                } else if let Some(value) = line.strip_prefix(b"data: ") {
                    data = value;
                }
            }
            if data.is_empty() && kind == b"message" {
                continue; // a comment or a retry line
            }
            return Ok(Some(match kind {
                b"session" => {
                    let value: serde_json::Value =
                        serde_json::from_slice(data).map_err(|e| format!("session event: {e}"))?;
                    Event::Session {
                        id: value["session"].as_str().unwrap_or_default().to_string(),
                        heartbeat_ms: value["heartbeat"].as_u64().unwrap_or(25_000),
                    }
                }
                b"close" => Event::Close(String::from_utf8_lossy(data).into_owned()),
                _ => Event::Data(data.to_vec()),
            }));
        }
    }
}

/// Holds one SSE session opened with [`open`]: POSTs `first` (a command
/// line, e.g. a `join`) once the session is known, hands every event's JSON
/// to `frames`, and POSTs a `ping` each half heartbeat so the server keeps
/// the session; until `stop`, the callback's deadline, or the end of the
/// stream. POSTs go from `source` too.
pub async fn hold(
    (mut stream, leftover): (TcpStream, Vec<u8>),
    target: &Target,
    source: Option<IpAddr>,
    first: Option<String>,
    stop: impl std::future::Future<Output = ()>,
    frames: &mut impl Frames,
) -> End {
    let mut events = EventBuf::default();
    if let Err(err) = events.feed(&leftover) {
        return End::Gone(err);
    }
    let mut first = first;
    let mut session = String::new();
    let mut ping_every = Duration::MAX;
    let mut next_ping = tokio::time::Instant::now() + Duration::from_secs(3600);
    let mut read = vec![0u8; 16 * 1024];
    tokio::pin!(stop);
    loop {
        frames.on_read();
        loop {
            match events.next_event() {
                Ok(None) => break,
                Ok(Some(Event::Data(json))) => {
                    let mut ignored = Vec::new();
                    if let Err(how) = frames.on_data(&json, &mut ignored) {
                        return End::Gone(how);
                    }
                }
                Ok(Some(Event::Session { id, heartbeat_ms })) => {
                    session = id;
                    ping_every = Duration::from_millis(heartbeat_ms / 2);
                    next_ping = tokio::time::Instant::now() + ping_every;
                    if let Some(line) = first.take() {
                        match post(target, source, &session, &format!("{line}\n"), "").await {
                            Ok(204) => {}
                            Ok(status) => return End::Gone(format!("POST answered {status}")),
                            Err(err) => return End::Gone(format!("POST failed: {err:#}")),
                        }
                    }
                }
                Ok(Some(Event::Close(why))) => return End::Gone(format!("closed: {why}")),
                Err(err) => return End::Gone(err),
            }
        }
        frames.after_read();
        if events.ended {
            return End::Gone("the stream ended".into());
        }
        let deadline = frames.deadline();
        tokio::select! {
            biased;
            () = &mut stop => return End::Stopped,
            () = sleep_until(deadline), if deadline.is_some() => return End::Deadline,
            () = tokio::time::sleep_until(next_ping), if ping_every != Duration::MAX => {
                next_ping += ping_every;
                let ping = "{\"type\":\"ping\"}\n";
                if let Err(err) = post(target, source, &session, ping, &events.last_id).await {
                    return End::Gone(format!("ping POST failed: {err:#}"));
                }
            }
            n = stream.read(&mut read) => match n {
                Ok(0) => return End::Gone("eof".into()),
                Ok(n) => {
                    if let Err(err) = events.feed(&read[..n]) {
                        return End::Gone(err);
                    }
                }
                Err(err) => return End::Gone(format!("read error: {}", err.kind())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        out
    }

    #[test]
    fn events_come_out_of_chunks_split_anywhere() {
        let stream = chunked(&[
            "retry: 1000\nevent: session\nid: s:0\ndata: {\"session\":\"s\",\"heartbeat\":400}\n\n",
            "id: s:1\ndata: {\"type\":\"welcome\"}\n\n: ping\n\nid: s:2\nda",
            "ta: {\"type\":\"joined\"}\n\nevent: close\ndata: {\"code\":1001}\n\n",
        ]);
        let mut stream = stream;
        stream.extend_from_slice(b"0\r\n\r\n");
        for split in [1, 2, 7, 50, stream.len()] {
            let mut buf = EventBuf::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(split) {
                buf.feed(piece).unwrap();
                while let Some(event) = buf.next_event().unwrap() {
                    seen.push(event);
                }
            }
            assert_eq!(
                seen,
                [
                    Event::Session {
                        id: "s".into(),
                        heartbeat_ms: 400
                    },
                    Event::Data(b"{\"type\":\"welcome\"}".to_vec()),
                    Event::Data(b"{\"type\":\"joined\"}".to_vec()),
                    Event::Close("{\"code\":1001}".into()),
                ],
                "split every {split} bytes"
            );
            assert!(buf.ended);
        }
    }

    #[test]
    fn garbage_chunk_sizes_are_errors() {
        let mut buf = EventBuf::default();
        assert!(buf.feed(b"zz\r\n").is_err());
    }
}
