//! Minimal WebSocket echo server on top of switchboard-ws, used to run the Autobahn
//! fuzzingclient cases against the codec:
//!
//! ```text
//! cargo run --release -p switchboard-ws --example echo -- 127.0.0.1:9002
//! kosoku -m fuzzingclient -o /tmp/ab ws://127.0.0.1:9002
//! ```

use std::time::Duration;

use switchboard_ws::{
    accept_key, close_frame, negotiate_deflate, Bytes, BytesMut, Decoder, DeflateConfig, Message,
    OpCode, SharedMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_MESSAGE: usize = 16 << 20;
const MAX_HANDSHAKE: usize = 16 << 10;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo server listening on {addr}");
    loop {
        let (sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve(sock).await {
                eprintln!("connection error: {e}");
            }
        });
    }
}

fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Reads the HTTP upgrade request and answers it. Returns the negotiated deflate config and
/// any bytes received after the request.
async fn handshake(
    sock: &mut TcpStream,
) -> std::io::Result<Option<(Option<DeflateConfig>, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        if let Some(i) = find_subslice(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HANDSHAKE || sock.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    };
    let head = buf.split_to(end);
    let mut key: Option<&[u8]> = None;
    let mut extensions: Vec<&[u8]> = Vec::new();
    for line in head[..].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            key = Some(value);
        } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
            extensions.push(value);
        }
    }
    let Some(key) = key else {
        sock.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        return Ok(None);
    };
    let negotiated = negotiate_deflate(&extensions);
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some((_, header)) = &negotiated {
        resp.push_str("Sec-WebSocket-Extensions: ");
        resp.push_str(header);
        resp.push_str("\r\n");
    }
    resp.push_str("\r\n");
    sock.write_all(resp.as_bytes()).await?;
    Ok(Some((negotiated.map(|(c, _)| c), buf)))
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let Some((deflate, mut buf)) = handshake(&mut sock).await? else {
        return Ok(());
    };
    let mut dec = Decoder::new(MAX_MESSAGE, deflate);
    let mut out: Vec<Bytes> = Vec::new();
    loop {
        // Decode everything buffered, collecting replies.
        let mut close: Option<Bytes> = None;
        loop {
            match dec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(msg)) => match msg {
                    Message::Text(p) => out.push(echo_frame(OpCode::Text, p, deflate)),
                    Message::Binary(p) => out.push(echo_frame(OpCode::Binary, p, deflate)),
                    Message::Ping(p) => {
                        out.push(switchboard_ws::encode_frame(OpCode::Pong, &p, false))
                    }
                    Message::Pong(_) => {}
                    Message::Close(code) => {
                        close = Some(close_frame(code.map_or(1000, |(c, _)| c), ""));
                        break;
                    }
                },
                Err(e) => {
                    close = Some(close_frame(e.code, e.reason));
                    break;
                }
            }
        }
        for frame in out.drain(..) {
            sock.write_all(&frame).await?;
        }
        if let Some(frame) = close {
            sock.write_all(&frame).await?;
            return linger_close(sock).await;
        }
        // Grow the read buffer geometrically / to the known frame size (no O(n^2) copying).
        let want = dec.bytes_needed().saturating_sub(buf.len()).max(64 << 10);
        buf.reserve(want);
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn echo_frame(opcode: OpCode, payload: Bytes, deflate: Option<DeflateConfig>) -> Bytes {
    if let (Some(cfg), true) = (deflate, std::env::var_os("ECHO_FORCE_COMPRESS").is_some()) {
        let z = switchboard_ws::deflate_message(&payload, cfg.server_max_window_bits);
        return switchboard_ws::encode_frame(opcode, &z, true);
    }
    SharedMessage::new(opcode, payload).frame_for(deflate)
}

/// The server closes the TCP connection first (RFC 6455 7.1.1): send FIN, then drain input until
/// the client closes too (or a timeout), so that unread data does not turn our close into a RST.
async fn linger_close(mut sock: TcpStream) -> std::io::Result<()> {
    sock.shutdown().await?;
    let mut scratch = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = sock.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}
