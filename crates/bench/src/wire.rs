//! A minimal WebSocket client: the upgrade handshake, masked client frames,
//! and a parser for the server's unmasked frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest server frame we accept (a guard against garbage lengths).
const MAX_FRAME: usize = 64 << 20;
/// Any valid key will do: we do not check the server's accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Where to connect, from `ws://HOST:PORT[/ignored]`.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("--url must look like ws://HOST:PORT (got `{url}`)"))?;
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        if host.is_empty() {
            bail!("--url has no host: `{url}`");
        }
        let has_port = match host.rfind(']') {
            Some(bracket) => host[bracket..].contains(':'),
            None => host.contains(':'),
        };
        let with_port = if has_port {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve `{with_port}`"))?
            .next()
            .with_context(|| format!("`{with_port}` resolves to no address"))?;
        Ok(Target {
            addr,
            host: host.to_string(),
        })
    }

    /// The source address for connection number `n`: the first
    /// `per_ip` connections let the kernel choose; later ones bind
    /// 127.0.0.2, 127.0.0.3, … so a loopback target can take more
    /// connections than one address has ephemeral ports.
    pub fn source_for(&self, n: usize, per_ip: usize) -> Option<IpAddr> {
        match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() && per_ip > 0 && n >= per_ip => {
                let host = n / per_ip + 1;
                Some(IpAddr::V4(Ipv4Addr::new(
                    127,
                    (host >> 16) as u8,
                    (host >> 8) as u8,
                    host as u8,
                )))
            }
            _ => None,
        }
    }
}

/// The servers of `--url` (repeated, or a comma list): one, or the nodes
/// of a cluster that the connections are spread over.
pub fn parse_urls(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    if urls.is_empty() {
        bail!("--url is needed");
    }
    urls.iter().map(|url| Target::parse(url)).collect()
}

/// `--url` as the results show it: the one URL as given, several joined
/// with commas (as `--url` takes them back).
pub fn urls_label(urls: &[String]) -> String {
    urls.join(",")
}

/// Opens a TCP connection and performs the upgrade handshake. Returns
/// the stream and any bytes read past the response head.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    path: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut stream = dial(target, source).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.host
    );
    stream.write_all(request.as_bytes()).await?;
    let (head, rest) = read_head(&mut stream).await?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("upgrade of {path} refused: {status}");
    }
    Ok((stream, rest))
}

/// A TCP connection to `target` from `source` (the kernel's choice if
/// `None`), without Nagle's delay.
pub async fn dial(target: &Target, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connect to {}", target.addr))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads an HTTP response head: the head as text, and the bytes read past it.
pub async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("response head too large");
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed in the response head");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    Ok((head, buf[end..].to_vec()))
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A masking key per connection (never all zeros, so masking costs what
/// it costs a real client).
pub fn mask_for(n: usize) -> [u8; 4] {
    ((n as u32).wrapping_mul(0x9E37_79B9) | 0x0101_0101).to_be_bytes()
}

/// One server frame, borrowed from the read buffer.
/// (Fragments are handed out one by one: a bench message is one frame.)
pub struct Frame<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// A read buffer that hands out whole frames without copying them.
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes the next frame needs from `start` (when known).
    need: usize,
}

impl FrameBuf {
    pub fn new(capacity: usize, leftover: Vec<u8>) -> FrameBuf {
        let end = leftover.len();
        let mut buf = leftover;
        buf.resize(capacity.max(end), 0);
        FrameBuf {
            buf,
            start: 0,
            end,
            need: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes buffered and not handed out yet (a partial frame included).
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Reads once from `stream` (cancel-safe); `Ok(0)` is EOF.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> std::io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room_needed = self.need.max(1);
        if self.buf.len() - self.start < room_needed || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < room_needed || self.end == self.buf.len() {
                let grown = room_needed.max(self.buf.len() * 2);
                self.buf.resize(grown, 0);
            }
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (avail[0], avail[1]);
        if b1 & 0x80 != 0 {
            return Err("protocol error: the server sent a masked frame".into());
        }
        let (header, len) = match b1 & 0x7F {
            126 if avail.len() >= 4 => (4, u16::from_be_bytes([avail[2], avail[3]]) as usize),
            127 if avail.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&avail[2..10]);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                )
            }
            126 | 127 => return Ok(None),
            n => (2, n as usize),
        };
        if len > MAX_FRAME {
            return Err(format!("protocol error: frame of {len} bytes"));
        }
        let total = header + len;
        if avail.len() < total {
            self.need = total;
            return Ok(None);
        }
        self.need = 0;
        let at = self.start;
        self.start += total;
        Ok(Some(Frame {
            opcode: b0 & 0x0F,
            payload: &self.buf[at + header..at + total],
        }))
    }
}

/// The one frame loop of every scenario: hands each complete data frame
/// buffered in `buf` to `on_data` (which may queue replies in `out`), and
/// queues a pong in `out` for each ping. `on_data` returns `Ok(true)` to stop
/// there (the frames after stay buffered), or `Err` to end the connection;
/// a close frame or garbage ends it too. `Ok(true)` if `on_data` stopped it.
pub fn dispatch(
    buf: &mut FrameBuf,
    out: &mut Vec<u8>,
    mask: [u8; 4],
    mut on_data: impl FnMut(&[u8], &mut Vec<u8>) -> Result<bool, String>,
) -> Result<bool, String> {
    while let Some(frame) = buf.next_frame()? {
        match frame.opcode {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                if on_data(frame.payload, out)? {
                    return Ok(true);
                }
            }
            OP_PING => encode_frame(out, OP_PONG, frame.payload, mask),
            OP_PONG => {}
            OP_CLOSE => return Err(describe_close(frame.payload)),
            other => return Err(format!("protocol error: opcode {other}")),
        }
    }
    Ok(false)
}

/// A close frame's status as text, e.g. `4008 slow consumer`.
pub fn describe_close(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return "close (no status)".into();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8_lossy(&payload[2..]);
    if reason.is_empty() {
        format!("close {code}")
    } else {
        format!("close {code} {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            let mask = mask_for(7);
            encode_frame(&mut out, OP_TEXT, &payload, mask);
            let (header, got) = match out[1] & 0x7F {
                126 => (4, u16::from_be_bytes([out[2], out[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(got, len);
            assert_eq!(out[0], 0x81);
            assert_ne!(out[1] & 0x80, 0);
            let key = &out[header..header + 4];
            let body: Vec<u8> = out[header + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i & 3])
                .collect();
            assert_eq!(body, payload);
        }
    }

    #[tokio::test]
    async fn frames_are_parsed_across_reads_and_lengths() {
        // Unmasked server frames: 7-bit, 16-bit and 64-bit lengths.
        let mut stream = Vec::new();
        for len in [3usize, 200, 70_000] {
            stream.push(0x82);
            if len < 126 {
                stream.push(len as u8);
            } else if len <= 0xFFFF {
                stream.push(126);
                stream.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                stream.push(127);
                stream.extend_from_slice(&(len as u64).to_be_bytes());
            }
            stream.extend_from_slice(&vec![b'a'; len]);
        }
        stream.extend_from_slice(&[0x89, 0x01, b'p']);
        // Deliver it in awkward pieces.
        let mut chunks = stream
            .chunks(7)
            .map(|c| c.to_vec())
            .collect::<Vec<_>>()
            .into_iter();
        let mut buf = FrameBuf::new(64, Vec::new());
        let mut seen = Vec::new();
        loop {
            while let Some(frame) = buf.next_frame().unwrap() {
                seen.push((frame.opcode, frame.payload.len()));
            }
            let Some(chunk) = chunks.next() else { break };
            let mut reader: &[u8] = &chunk;
            while !reader.is_empty() {
                buf.fill(&mut reader).await.unwrap();
                while let Some(frame) = buf.next_frame().unwrap() {
                    seen.push((frame.opcode, frame.payload.len()));
                }
            }
        }
        assert_eq!(seen, vec![(2, 3), (2, 200), (2, 70_000), (OP_PING, 1)]);
    }

    #[test]
    fn dispatch_answers_pings_stops_on_request_and_ends_on_close() {
        let mut stream = Vec::new();
        for (opcode, payload) in [
            (OP_TEXT, &b"one"[..]),
            (OP_PING, b"hb"),
            (OP_TEXT, b"two"),
            (OP_TEXT, b"three"),
            (OP_CLOSE, &[0x0F, 0xA0][..]),
        ] {
            stream.push(0x80 | opcode);
            stream.push(payload.len() as u8);
            stream.extend_from_slice(payload);
        }
        let mut buf = FrameBuf::new(64, stream);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let stopped = dispatch(&mut buf, &mut out, [0; 4], |payload, _| {
            seen.push(payload.to_vec());
            Ok(payload == b"two")
        });
        assert_eq!(stopped, Ok(true));
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec()]);
        // The pong, masked with an all-zero key: the ping's payload.
        assert_eq!(out, [0x80 | OP_PONG, 0x82, 0, 0, 0, 0, b'h', b'b']);
        let rest = dispatch(&mut buf, &mut out, [0; 4], |payload, _| {
            seen.push(payload.to_vec());
            Ok(false)
        });
        assert_eq!(rest, Err("close 4000".to_string()));
        assert_eq!(seen.last().map(Vec::as_slice), Some(&b"three"[..]));
    }

    #[test]
    fn urls_and_sources() {
        let t = Target::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(t.addr.port(), 9000);
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(Target::parse("ws://127.0.0.1/x").unwrap().addr.port(), 80);
        assert!(Target::parse("http://127.0.0.1:1").is_err());
        assert_eq!(t.source_for(5, 10), None);
        assert_eq!(t.source_for(10, 10), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(t.source_for(2550, 10), Some("127.0.1.0".parse().unwrap()));
        let urls = ["ws://127.0.0.1:1".to_string(), "ws://127.0.0.1:2".into()];
        let targets = parse_urls(&urls).unwrap();
        assert_eq!(targets[1].addr.port(), 2);
        assert_eq!(urls_label(&urls), "ws://127.0.0.1:1,ws://127.0.0.1:2");
        assert_eq!(urls_label(&urls[..1]), "ws://127.0.0.1:1");
        assert!(parse_urls(&[]).is_err());
    }
}
