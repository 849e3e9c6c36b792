//! Test harness: runs the real `switchboard` binary on a free port and talks
//! to it over real sockets (tokio-tungstenite as an independent client, and
//! a raw TCP client for what a well-behaved client library will not do).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest we wait for any single expected event. Only a bound for failing
/// tests; passing tests proceed as soon as the event arrives.
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    /// The rest of stdout after the "listening" line; kept open so that a
    /// later write does not fail on a closed pipe.
    stdout: BufReader<std::process::ChildStdout>,
    /// The store's directory; removed when the server is dropped.
    pub data_dir: std::path::PathBuf,
}

/// A fresh, unique directory for one server's store.
pub fn temp_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_in(&temp_dir(), "127.0.0.1:0", args, env)
    }

    /// Starts a server on `listen` with its store in `data_dir` (kept as is,
    /// so a restart finds the previous data).
    pub fn start_in(
        data_dir: &std::path::Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        Server::spawn(data_dir, listen, args, env, Stdio::inherit())
    }

    /// Starts a server whose stderr (its logs) goes to the file `log`.
    /// `RUST_LOG` in `env` overrides the harness's level.
    pub fn start_logging_to(log: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let file = std::fs::File::create(log).expect("create the log file");
        Server::spawn(&temp_dir(), "127.0.0.1:0", args, env, Stdio::from(file))
    }

    fn spawn(
        data_dir: &std::path::Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .args(["--listen", listen])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn switchboard");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read listening line");
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Server {
            addr,
            child,
            stdout,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn connect(&self, user: &str) -> Client {
        let mut client = Client::connect(&self.url(&format!("/ws?user={user}"))).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["user"], user);
        client
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path, None, None).await
    }

    /// One HTTP/1.1 request over a fresh connection; returns status and body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let authorization = bearer.map(|key| format!("Bearer {key}"));
        self.request(method, path, authorization.as_deref(), body)
            .await
    }

    /// A body-less request with this `Authorization` header, verbatim.
    pub async fn http_with_auth(
        &self,
        method: &str,
        path: &str,
        authorization: &str,
    ) -> (u16, String) {
        self.request(method, path, Some(authorization), None).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(value) = authorization {
            request.push_str(&format!("Authorization: {value}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
            .await
            .expect("http timeout")
            .expect("read");
        let status = response[9..12].parse().expect("status");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of an unlabelled metric (or a labelled one, written in full).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "kill -{signal} failed"
        );
    }

    /// What the process wrote to stdout after its "listening" line, up to
    /// its exit (call after `wait_exit`).
    pub fn rest_of_stdout(&mut self) -> String {
        use std::io::Read;
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stdout");
        rest
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Server {
    /// Kills the process (SIGKILL) but keeps its data directory.
    pub fn kill(mut self) -> std::path::PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data_dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A TCP connection to the server from `source`, one of this machine's
/// loopback addresses (all of 127.0.0.0/8), so that one test can be several
/// clients to the per-IP limits.
pub async fn tcp_from(source: &str, server: &Server) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let source: std::net::IpAddr = source.parse().expect("source address");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    socket.connect(server.addr).await.expect("connect")
}

/// A WebSocket upgrade to `path` from `source` with these extra headers:
/// the client, or the status it was refused with.
pub async fn upgrade_from(
    source: &str,
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.url(path).into_client_request().expect("request");
    for (name, value) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            name.parse().expect("header name");
        request
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    let stream = tcp_from(source, server).await;
    let connect = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(TIMEOUT, connect)
        .await
        .expect("upgrade timeout")
    {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("upgrade failed without an HTTP answer: {other:?}"),
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// What ended a connection.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// A close frame with this code (0 when it had none).
    Close(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Client {
    /// Wraps an already-open WebSocket.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client { ws, next_id: 0 }
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        Client { ws, next_id: 0 }
    }

    pub async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    /// Sends a command with a fresh `id` (unless it has one) and returns the
    /// id. Fresh ids are unique across clients: the server deduplicates
    /// publishes by (user, id), also across reconnects and restarts.
    pub async fn command(&mut self, mut value: Value) -> Value {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        if value.get("id").is_none() {
            self.next_id = NEXT.fetch_add(1, Ordering::Relaxed);
            value["id"] = json!(format!("c{}-{}", std::process::id(), self.next_id));
        }
        let id = value["id"].clone();
        self.send(value).await;
        id
    }

    /// Sends a command and returns the next event, which must be its reply.
    pub async fn request(&mut self, value: Value) -> Value {
        let id = self.command(value).await;
        let reply = self.recv().await;
        assert_eq!(reply["id"], id, "reply {reply} does not answer {id}");
        reply
    }

    /// Sends without panicking; false once the connection is gone.
    pub async fn ws_send(&mut self, value: Value) -> bool {
        self.ws.send(Message::text(value.to_string())).await.is_ok()
    }

    /// The next JSON event, or None once the connection has ended.
    pub async fn try_recv(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for an event")
            {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).ok(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    }

    /// The next JSON event (ping/pong frames are skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for an event")
                .expect("connection ended")
                .expect("websocket error");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("event is JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next event, which must have this `type`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let event = self.recv().await;
        assert_eq!(event["type"], kind, "expected {kind}, got {event}");
        event
    }

    /// Proves nothing else is queued for us: a `ping` round trip must come
    /// back as the very next event (the server answers in order).
    pub async fn expect_nothing_pending(&mut self) {
        let id = self.command(json!({"type": "ping"})).await;
        let next = self.recv().await;
        assert_eq!(next["type"], "pong", "unexpected event {next}");
        assert_eq!(next["id"], id);
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let reply = self.request(json!({"type": "join", "room": room})).await;
        assert_eq!(reply["type"], "joined", "{reply}");
        reply
    }

    pub async fn publish(&mut self, room: &str, body: Value) -> Value {
        let reply = self
            .request(json!({"type": "publish", "room": room, "body": body}))
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
        reply
    }

    /// Reads until the connection ends, returning how (skipping events).
    pub async fn expect_end(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("connection did not end")
            {
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Close(frame.map(|f| u16::from(f.code)).unwrap_or(0))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// Sends one raw text frame, bypassing the client's UTF-8 checks.
    pub async fn send_raw_text(&mut self, payload: Vec<u8>) {
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.expect("send raw");
    }
}

/// A bare TCP WebSocket client: handshakes, then only does what it is told.
/// It never answers pings and never reads unless asked.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub async fn connect(server: &Server, path: &str) -> RawClient {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        RawClient::handshake(stream, path).await
    }

    /// A client that will not read: its socket's receive buffer is fixed
    /// at 64 KiB. Left to autotuning it grows (here up to
    /// `net.ipv4.tcp_rmem`'s 32 MiB), and then a test's flood could fit in
    /// the kernel without the server ever seeing a full queue.
    pub async fn connect_unread(server: &Server, path: &str) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        let stream = socket.connect(server.addr).await.expect("connect");
        RawClient::handshake(stream, path).await
    }

    async fn handshake(mut stream: TcpStream, path: &str) -> RawClient {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        // Read the response head byte by byte so no frame bytes are consumed.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(TIMEOUT, stream.read_u8())
                .await
                .expect("handshake timeout")
                .expect("read");
            head.push(byte);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawClient { stream }
    }

    /// Writes one masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        let frame = masked_frame(0x1, text.as_bytes());
        self.stream.write_all(&frame).await.expect("write frame");
    }
}

/// A client→server frame with FIN set and a fixed mask.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Splits unmasked server→client bytes into (opcode, payload) frames.
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

/// The status code of the close frame that ends a raw byte stream.
pub fn final_close_code(bytes: &[u8]) -> u16 {
    let frames = server_frames(bytes);
    let (opcode, payload) = frames.last().expect("no frames");
    assert_eq!(
        *opcode, 0x8,
        "the stream does not end with a close frame: {frames:?}"
    );
    u16::from_be_bytes([payload[0], payload[1]])
}
