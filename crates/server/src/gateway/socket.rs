//! The socket loop shared by `/ws` and `/relay`: one reader (this task) that
//! decodes frames and hands data messages to a [`Handler`], and one writer
//! task that drains the connection's outbound queue with vectored writes.
//!
//! Idle connections are cheap: the reader waits for readiness and reads into
//! a per-thread scratch buffer, so a connection keeps no read buffer unless a
//! frame is split across reads; the writer's batch is empty until a frame is
//! queued.
//!
//! The loop is generic over the stream: a plain `TcpStream` is split into
//! its owned halves (one `recv` per read, `writev`); a TLS stream is split
//! with `tokio::io::split` (rustls decrypts into the same scratch buffer and
//! encrypts a whole vectored batch into few records).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_protocol::close;
use switchboard_ws::{close_frame, encode_frame, Decoder, Message, OpCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::hub::{Conn, Hub};

/// How long we wait for the peer's close frame after sending ours, and for
/// the writer to flush at the end.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Size of the per-thread read buffer.
const SCRATCH: usize = 64 * 1024;
/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// A request from a handler to close the connection.
#[derive(Debug, Clone, Copy)]
pub struct CloseWith {
    pub code: u16,
    pub reason: &'static str,
}

pub trait Handler {
    /// A complete text or binary message.
    fn on_message(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), CloseWith>;
    /// When the handler next wants `on_deadline` called, if ever.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn on_deadline(&mut self) -> Result<(), CloseWith> {
        Ok(())
    }
    /// The connection is gone; undo every registration.
    fn on_close(&mut self);
}

/// A WebSocket connection's byte stream, taken back from hyper.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Recovers the stream we served hyper (plain or TLS) and the bytes
    /// hyper read past the request head.
    pub fn from_upgraded(upgraded: Upgraded) -> Option<(Stream, Bytes)> {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return Some((Stream::Plain(parts.io.into_inner()), parts.read_buf)),
            Err(upgraded) => upgraded,
        };
        let parts = upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>().ok()?;
        Some((Stream::Tls(Box::new(parts.io.into_inner())), parts.read_buf))
    }
}

/// Runs the connection until it ends: spawns the writer task and returns
/// the reader loop (not an `async fn`, whose arguments would stay in every
/// connection's future next to the loop's own).
pub fn run<'a, H: Handler>(
    hub: &'a Hub,
    stream: Stream,
    leftover: Bytes,
    conn: Arc<Conn>,
    max_message: usize,
    handler: &'a mut H,
) -> impl Future<Output = ()> + 'a {
    match stream {
        Stream::Plain(tcp) => {
            let (reader, writer) = tcp.into_split();
            let writer = tokio::spawn(write_loop(writer, conn.clone(), hub.metrics.clone()));
            Either::Left(read_loop(
                hub,
                reader,
                writer,
                leftover,
                conn,
                max_message,
                handler,
            ))
        }
        Stream::Tls(tls) => {
            let (reader, writer) = tokio::io::split(*tls);
            let writer = tokio::spawn(write_loop(writer, conn.clone(), hub.metrics.clone()));
            Either::Right(read_loop(
                hub,
                reader,
                writer,
                leftover,
                conn,
                max_message,
                handler,
            ))
        }
    }
}

async fn read_loop<H: Handler, R: AsyncRead + Unpin>(
    hub: &Hub,
    mut reader: R,
    mut writer_task: tokio::task::JoinHandle<()>,
    leftover: Bytes,
    conn: Arc<Conn>,
    max_message: usize,
    handler: &mut H,
) {
    let mut decoder = Decoder::new(max_message, conn.deflate);
    // Copy, then drop: `leftover` is a view into hyper's read buffer, which
    // would otherwise stay allocated for the life of the connection.
    let mut buf = BytesMut::from(&leftover[..]);
    drop(leftover);
    // Set once we asked to close: from then on we only wait for the peer's
    // close frame (or EOF) until this instant.
    let mut close_deadline: Option<Instant> = None;
    // After a protocol error the byte stream cannot be parsed any further.
    let mut failed = false;

    'conn: loop {
        while !failed {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(message)) => {
                    conn.touch(hub.clock_ms());
                    match message {
                        Message::Text(payload) if close_deadline.is_none() => {
                            dispatch(hub, &conn, handler, OpCode::Text, payload);
                        }
                        Message::Binary(payload) if close_deadline.is_none() => {
                            dispatch(hub, &conn, handler, OpCode::Binary, payload);
                        }
                        Message::Text(_) | Message::Binary(_) => {}
                        Message::Ping(payload) => {
                            conn.push(encode_frame(OpCode::Pong, &payload, false));
                        }
                        Message::Pong(_) => {}
                        Message::Close(status) => {
                            if close_deadline.is_none() {
                                // Echo the peer's status code, as RFC 6455 §5.5.1 suggests.
                                let code = status.map(|(code, _)| code).unwrap_or(0);
                                conn.close(code, "", true);
                            }
                            break 'conn;
                        }
                    }
                }
                Err(err) => {
                    failed = true;
                    buf.clear();
                    conn.close(err.code, err.reason, true);
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 0 {
            // Give the memory back between messages: idle connections hold none.
            buf = BytesMut::new();
        }
        if close_deadline.is_none() && conn.closing.is_fired() {
            close_deadline = Some(Instant::now() + CLOSE_GRACE);
        }
        let handler_deadline = if close_deadline.is_none() {
            handler.deadline()
        } else {
            None
        };
        tokio::select! {
            read = read_into(&mut reader, &mut buf) => match read {
                Ok(0) | Err(_) => break 'conn,
                Ok(n) => {
                    hub.metrics.bytes_in.increment(n as u64);
                    if failed {
                        buf.clear();
                    }
                }
            },
            _ = conn.closing.wait(), if close_deadline.is_none() => {}
            _ = sleep_until(close_deadline), if close_deadline.is_some() => break 'conn,
            _ = sleep_until(handler_deadline), if handler_deadline.is_some() => {
                if let Err(close) = handler.on_deadline() {
                    conn.close(close.code, close.reason, true);
                }
            }
        }
    }

    handler.on_close();
    // Let the writer flush (a close frame at least), but never hang on it.
    if tokio::time::timeout(CLOSE_GRACE, &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
}

fn dispatch<H: Handler>(hub: &Hub, conn: &Conn, handler: &mut H, opcode: OpCode, payload: Bytes) {
    hub.metrics.messages_in.increment(1);
    if let Err(close) = handler.on_message(opcode, payload) {
        conn.close(close.code, close.reason, true);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for bytes and appends what arrived to `buf`; `Ok(0)` at the end of
/// the stream. The read goes into the per-thread scratch buffer (for TCP one
/// `recv` once the socket is readable; TLS decrypts into it), so waiting
/// holds no buffer. Cancel-safe: nothing is read unless it is appended.
fn read_into<'a, R: AsyncRead + Unpin>(
    reader: &'a mut R,
    buf: &'a mut BytesMut,
) -> impl Future<Output = io::Result<usize>> + 'a {
    poll_fn(move |cx| {
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *reader).poll_read(cx, &mut read))?;
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
    })
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    conn: Arc<Conn>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    loop {
        let close = conn.take_batch(&mut batch);
        if let Some(reason) = &close {
            if !reason.graceful {
                // Aborted (slow consumer, dead peer): the socket is probably
                // full, so try the close frame once without waiting.
                write_once(&mut writer, &close_frame(reason.code, reason.reason)).await;
                return;
            }
        }
        if !batch.is_empty() {
            let written = {
                let write = write_batch(&mut writer, &mut batch);
                tokio::pin!(write);
                tokio::select! {
                    result = &mut write => result,
                    _ = conn.closing.wait() => {
                        match conn.close_reason() {
                            Some(r) if !r.graceful => return,
                            _ => write.await,
                        }
                    }
                }
            };
            match written {
                Ok(n) => {
                    metrics.bytes_out.increment(n as u64);
                    conn.notify_drained();
                }
                Err(_) => {
                    conn.close(close::GOING_AWAY, "write failed", false);
                    return;
                }
            }
            continue;
        }
        if let Some(reason) = close {
            let frame = if reason.code == 0 {
                encode_frame(OpCode::Close, b"", false)
            } else {
                close_frame(reason.code, reason.reason)
            };
            if writer.write_all(&frame).await.is_ok() {
                metrics.bytes_out.increment(frame.len() as u64);
            }
            // FIN after our close frame: RFC 6455 wants the server to close
            // the TCP connection first.
            let _ = writer.shutdown().await;
            return;
        }
        conn.wait_for_frames().await;
    }
}

/// One write attempt that never waits (a no-op when the socket is full).
async fn write_once<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) {
    poll_fn(|cx| {
        let _ = Pin::new(&mut *writer).poll_write(cx, frame);
        let _ = Pin::new(&mut *writer).poll_flush(cx);
        Poll::Ready(())
    })
    .await
}

/// Writes every frame of `batch` with as few syscalls as possible.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &mut VecDeque<Bytes>,
) -> io::Result<usize> {
    let mut total = 0;
    while !batch.is_empty() {
        // A heap Vec, not an array: the slices live across the await, so an
        // array would sit in every idle connection's writer future.
        let slices: Vec<IoSlice<'_>> = batch
            .iter()
            .take(MAX_IOVECS)
            .map(|f| IoSlice::new(f))
            .collect();
        let written = writer.write_vectored(&slices).await;
        drop(slices);
        let mut n = written?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        total += n;
        while n > 0 {
            let Some(front) = batch.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                batch.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    // TLS buffers what it encrypted until flushed (a no-op for TCP).
    writer.flush().await?;
    Ok(total)
}
