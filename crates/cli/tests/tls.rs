//! TLS: `--tls-cert`/`--tls-key` serve wss:// and https:// over real
//! handshakes, with certificates made by rcgen at test time; SIGHUP reloads
//! the certificate without touching open connections.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{temp_dir, Server, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    ca: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        Pki {
            ca: ca.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client configuration that trusts this CA only.
    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// The certificate and key files the server is started with; rewritten in
/// place for reloads. Removed on drop.
struct CertFiles {
    dir: PathBuf,
}

impl CertFiles {
    fn new(pki: &Pki) -> CertFiles {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let files = CertFiles { dir };
        files.write(&pki.cert_pem, &pki.key_pem);
        files
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn write(&self, cert_pem: &str, key_pem: &str) {
        std::fs::write(self.cert(), cert_pem).unwrap();
        std::fs::write(self.key(), key_pem).unwrap();
    }

    fn start_server(&self) -> Server {
        Server::start_with(&[
            "--store",
            "memory",
            "--tls-cert",
            path_str(&self.cert()),
            "--tls-key",
            path_str(&self.key()),
        ])
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A TLS handshake with `localhost` at `addr`.
async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

/// GET over https; returns status and body.
async fn https_get(addr: SocketAddr, config: Arc<ClientConfig>, path: &str) -> (u16, String) {
    let mut stream = handshake(addr, config).await.expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server ends with close_notify; tolerate a bare FIN all the same.
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("https timeout");
    let response = String::from_utf8(response).expect("utf-8 response");
    let status = response[9..12].parse().expect("status");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

/// The value of metric `name` in a `/metrics` response.
fn metric_value(response: &str, name: &str) -> Option<f64> {
    response
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn metric(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> f64 {
    let (_, body) = https_get(addr, config, "/metrics").await;
    metric_value(&body, name).unwrap_or_else(|| panic!("metric {name} not found"))
}

/// As [`metric`], but `None` when the request fails (the server hung up).
async fn try_metric(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Option<f64> {
    let mut stream = handshake(addr, config).await.ok()?;
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response)).await;
    metric_value(&String::from_utf8(response).ok()?, name)
}

/// A wss:// client (tokio-tungstenite over rustls).
struct Wss {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Wss {
    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, user: &str) -> Wss {
        let url = format!("wss://localhost:{}/ws?user={user}", addr.port());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async_tls_with_config(
                url,
                tcp,
                None,
                Some(Connector::Rustls(config)),
            ),
        )
        .await
        .expect("wss connect timeout")
        .expect("wss connect");
        let mut client = Wss { ws };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["user"], user);
        client
    }

    async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for an event")
                .expect("connection ended")
                .expect("websocket error");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON event"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let event = self.recv().await;
        assert_eq!(event["type"], kind, "expected {kind}, got {event}");
        event
    }
}

/// `from` publishes to `room`; `to` receives it.
async fn relay_message(from: &mut Wss, to: &mut Wss, room: &str, text: &str) {
    from.send(json!({"type": "publish", "room": room, "body": {"text": text}}))
        .await;
    from.expect("ack").await;
    let message = to.expect("message").await;
    assert_eq!(message["body"]["text"], text, "{message}");
}

#[tokio::test]
async fn wss_and_https_then_sighup_reload_keeps_open_connections() {
    let old = Pki::new("switchboard test CA 1");
    let files = CertFiles::new(&old);
    let server = files.start_server();
    let addr = server.addr;

    // wss: two users in a room over TLS.
    let mut alice = Wss::connect(addr, old.client(), "alice").await;
    let mut bob = Wss::connect(addr, old.client(), "bob").await;
    for client in [&mut alice, &mut bob] {
        client.send(json!({"type": "join", "room": "secure"})).await;
        client.expect("joined").await;
    }
    assert_eq!(alice.expect("presence").await["user"], "bob");
    relay_message(&mut alice, &mut bob, "secure", "over tls").await;
    // A message larger than one TLS record (16 KiB) and than one read.
    let big = "x".repeat(30_000);
    relay_message(&mut bob, &mut alice, "secure", &big).await;

    // https
    let (status, body) = https_get(addr, old.client(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Plain WebSocket on the TLS port: no handshake.
    let plain = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?user=mallory")),
    )
    .await
    .expect("plain connect timeout");
    assert!(plain.is_err(), "plain ws:// must not work on the TLS port");

    // Renewal: a certificate from another CA, same files.
    let new = Pki::new("switchboard test CA 2");
    assert!(
        handshake(addr, new.client()).await.is_err(),
        "the new CA must not be trusted before the reload"
    );
    files.write(&new.cert_pem, &new.key_pem);
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while handshake(addr, new.client()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 5 s of SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handshake(addr, old.client()).await.is_err(),
        "after the reload only the new certificate is served"
    );
    assert_eq!(
        metric(addr, new.client(), "switchboard_tls_reloads_total").await,
        1.0
    );

    // The connections opened before the reload are untouched.
    relay_message(&mut alice, &mut bob, "secure", "after reload").await;
    relay_message(&mut bob, &mut alice, "secure", "still here").await;
    let mut carol = Wss::connect(addr, new.client(), "carol").await;
    carol.send(json!({"type": "join", "room": "secure"})).await;
    carol.expect("joined").await;
    assert_eq!(alice.expect("presence").await["user"], "carol");
    assert_eq!(bob.expect("presence").await["user"], "carol");
    relay_message(&mut alice, &mut carol, "secure", "hello carol").await;
}

#[tokio::test]
async fn failed_reload_keeps_the_previous_certificate() {
    let pki = Pki::new("switchboard test CA");
    let files = CertFiles::new(&pki);
    let server = files.start_server();
    let addr = server.addr;
    let failures = "switchboard_tls_reload_failures_total";

    let other = Pki::new("another CA");
    let broken: [(&str, &str); 2] = [
        // Not PEM at all.
        ("not a certificate", &pki.key_pem),
        // A valid certificate with somebody else's key.
        (&other.cert_pem, &pki.key_pem),
    ];
    for (attempt, (cert, key)) in broken.iter().enumerate() {
        files.write(cert, key);
        server.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(addr, pki.client(), failures).await < (attempt + 1) as f64 {
            assert!(Instant::now() < deadline, "reload {attempt} not attempted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Still serving the original certificate (the metrics fetch above
        // trusted only its CA), and WebSockets still open.
        let mut client = Wss::connect(addr, pki.client(), "dave").await;
        client.send(json!({"type": "ping", "id": 1})).await;
        client.expect("pong").await;
    }
    assert_eq!(
        metric(addr, pki.client(), "switchboard_tls_reloads_total").await,
        0.0
    );
}

#[tokio::test]
async fn tls_handshake_timeout() {
    let pki = Pki::new("switchboard test CA");
    let files = CertFiles::new(&pki);
    let server = Server::start_with(&[
        "--store",
        "memory",
        "--handshake-timeout",
        "200ms",
        "--tls-cert",
        path_str(&files.cert()),
        "--tls-key",
        path_str(&files.key()),
    ]);
    // Connect and say nothing: the server hangs up after the timeout.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(TIMEOUT, stream.read(&mut byte))
        .await
        .expect("the server kept a silent connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let failures = "switchboard_tls_handshake_failures_total";
    let deadline = Instant::now() + TIMEOUT;
    // Read with the same 200 ms budget for our own requests: on a loaded
    // machine the server may rightly hang up on one of them too.
    while try_metric(server.addr, pki.client(), failures).await < Some(1.0) {
        assert!(Instant::now() < deadline, "handshake timeout not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `serve` with these TLS files; it must exit 1 with a message
/// naming the problem (and not panic).
fn startup_error(cert: &Path, key: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with bad TLS files");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_tls_files_stop_startup() {
    let pki = Pki::new("switchboard test CA");
    let files = CertFiles::new(&pki);

    let missing = files.dir.join("missing.pem");
    let err = startup_error(&missing, &files.key());
    assert!(
        err.contains("TLS certificate") && err.contains("missing.pem"),
        "{err}"
    );

    let garbage = files.dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let err = startup_error(&garbage, &files.key());
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = startup_error(&files.cert(), &garbage);
    assert!(err.contains("no PEM private key"), "{err}");

    let other = Pki::new("another CA");
    let other_key = files.dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let err = startup_error(&files.cert(), &other_key);
    assert!(err.contains("cannot be used with certificate"), "{err}");
}

#[tokio::test]
async fn shutdown_closes_wss_connections_with_1001() {
    let pki = Pki::new("switchboard test CA");
    let files = CertFiles::new(&pki);
    let mut server = files.start_server();
    let mut client = Wss::connect(server.addr, pki.client(), "erin").await;
    server.signal("TERM");
    let close = loop {
        match tokio::time::timeout(TIMEOUT, client.ws.next())
            .await
            .expect("no close frame")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    // Reading on sends our close reply; the server then sees the close
    // handshake complete and exits without waiting out its grace period.
    while let Ok(Some(_)) = tokio::time::timeout(TIMEOUT, client.ws.next()).await {}
    assert_eq!(server.wait_exit(TIMEOUT), Some(0));
}

/// Sends `head` over https and reads until the server closes: the status
/// code, or None when it closed without answering.
async fn https_answer_to_head(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    head: String,
) -> Option<u16> {
    let stream = handshake(addr, config).await.expect("TLS handshake");
    let (mut read, mut write) = tokio::io::split(stream);
    let mut response = Vec::new();
    // Written while reading: the server may close before taking all of it.
    let (_, read) = tokio::join!(
        write.write_all(head.as_bytes()),
        tokio::time::timeout(TIMEOUT, read.read_to_end(&mut response))
    );
    read.expect("the server neither answered nor closed").ok();
    let response = String::from_utf8_lossy(&response);
    response.get(9..12).and_then(|code| code.parse().ok())
}

/// The 16 KiB bound on request heads holds over TLS too. (Here the head
/// arrives in records of at most 16 KiB, so hyper's read buffer bound, 64 KiB,
/// refused 100 KiB heads but not 20 KiB ones.)
#[tokio::test]
async fn https_request_heads_over_16_kib_get_431() {
    let pki = Pki::new("switchboard test CA");
    let files = CertFiles::new(&pki);
    let server = files.start_server();
    let request = |pad: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let answer = https_answer_to_head(server.addr, pki.client(), request(20 * 1024)).await;
    assert_eq!(answer, Some(431));
    let answer = https_answer_to_head(server.addr, pki.client(), request(15 * 1024)).await;
    assert_eq!(answer, Some(200));
}

/// A TLS connection holds its slot in `--max-connections` from accept,
/// through the handshake: connections that never finish one fill the
/// server, the next is closed at accept (no handshake), and the WebSocket
/// already open is not disturbed.
#[tokio::test]
async fn unfinished_tls_handshakes_count_in_the_connection_limit() {
    let pki = Pki::new("switchboard test CA");
    let files = CertFiles::new(&pki);
    let server = Server::start_with(&[
        "--store",
        "memory",
        "--max-connections",
        "2",
        "--tls-cert",
        path_str(&files.cert()),
        "--tls-key",
        path_str(&files.key()),
    ]);
    let mut bystander = Wss::connect(server.addr, pki.client(), "bystander").await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    // Accepted in order: `silent` holds the last slot by now.
    assert!(
        handshake(server.addr, pki.client()).await.is_err(),
        "a connection past the limit got a TLS handshake"
    );
    bystander.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(bystander.expect("pong").await["id"], "p");
    drop(silent);
    // The slot frees once the server has seen `silent` go.
    let deadline = Instant::now() + TIMEOUT;
    while handshake(server.addr, pki.client()).await.is_err() {
        assert!(Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
