//! The socket loop shared by `/ws` and `/relay`: one task per connection
//! that reads and decodes frames (handing data messages to a [`Handler`])
//! and writes the connection's outbound queue with vectored writes.
//!
//! Idle connections are what a messaging server mostly holds, so this loop is
//! a hand-written future sized for them. One task, not a reader and a writer
//! (a tokio task is at least 128 bytes of header before its future); reads go
//! into a per-thread scratch buffer, so a connection keeps no read buffer
//! unless a frame is split across reads; what a poll leaves behind (a
//! partial frame, frames a full socket did not take) is boxed only until it
//! is gone; a timer exists only while a deadline does (hello, token expiry,
//! closing). What is left per idle connection is measured in BENCHMARKS.md.
//!
//! The loop is generic over the stream: a plain `TcpStream` (one `recv` per
//! read, `writev` per batch) or a boxed TLS stream (rustls decrypts into the
//! same scratch buffer and encrypts a whole batch into few records).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::Either;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_ws::{close_frame, encode_frame, CloseCode, Decoder, Message, OpCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use super::guard::Slot;
use super::park::{Parking, Resume};
use crate::hub::{Conn, Hub};

/// How long we wait for the peer's close frame after sending ours, and for
/// queued frames to go out once the peer has gone.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Size of the per-thread read buffer.
const SCRATCH: usize = 64 * 1024;
/// Most frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

thread_local! {
    /// Left uninitialised (`ReadBuf::uninit`; both tokio's TCP read and
    /// tokio-rustls write into it without zeroing it first): only the pages
    /// a read fills become resident. Zeroed, each worker's 64 KiB were
    /// resident from its first read, 128 KiB of a 2-core server before its
    /// first big read, if ever (measured: a worker's heap after 4 idle
    /// connections 88-100 KiB zeroed, 32 KiB uninitialised).
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH));
}

/// A request from a handler to close the connection.
#[derive(Debug, Clone, Copy)]
pub struct CloseWith {
    pub code: CloseCode,
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
    /// The socket is closed too (after `on_close`, once the last frames
    /// went out or were given up on).
    fn on_finish(&mut self) {}
}

/// A WebSocket connection's byte stream, taken back from hyper.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Recovers the stream we served hyper (plain or TLS), its connection
    /// slot and the bytes hyper read past the request head.
    pub fn from_upgraded(upgraded: Upgraded) -> Option<(Stream, Option<Slot>, Bytes)> {
        let upgraded = match upgraded.downcast::<TokioIo<Counted<TcpStream>>>() {
            Ok(parts) => {
                let Counted { slot, io } = parts.io.into_inner();
                return Some((Stream::Plain(io), slot, parts.read_buf));
            }
            Err(upgraded) => upgraded,
        };
        let parts = upgraded
            .downcast::<TokioIo<Counted<TlsStream<TcpStream>>>>()
            .ok()?;
        let Counted { slot, io } = parts.io.into_inner();
        Some((Stream::Tls(Box::new(io)), slot, parts.read_buf))
    }
}

/// A stream served to hyper together with its connection's [`Slot`], so
/// the slot lives exactly as long as hyper has the stream, and goes with it
/// to the socket loop when the connection becomes a WebSocket.
pub struct Counted<S> {
    // Before `io`: fields drop in order, so the slot is free by the time
    // the socket closes.
    slot: Option<Slot>,
    io: S,
}

impl<S> Counted<S> {
    pub fn new(io: S, slot: Slot) -> Counted<S> {
        Counted {
            slot: Some(slot),
            io,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Runs the connection until it ends (both directions are closed, or
/// given up on after [`CLOSE_GRACE`], and the handler's `on_close` has
/// run) or parks (plain TCP only, unless `--park-idle off`; [`super::park`]).
pub fn run<H: Handler + Unpin + Send + 'static>(
    hub: Arc<Hub>,
    stream: Stream,
    leftover: Bytes,
    conn: Arc<Conn>,
    max_message: usize,
    handler: H,
    park: Arc<Parking<H>>,
) -> impl Future<Output = ()> {
    match stream {
        Stream::Plain(tcp) => {
            let mut driver = Driver::new(hub, tcp, leftover, conn, max_message, handler);
            driver.park = park.enabled().then_some(park);
            Either::Left(Task(Some(driver)))
        }
        Stream::Tls(tls) => Either::Right(Task(Some(Driver::new(
            hub,
            tls,
            leftover,
            conn,
            max_message,
            handler,
        )))),
    }
}

/// A parked connection back in a task: `resume` holds what was read or
/// left unwritten while it was parked.
pub(super) fn resume<H: Handler + Unpin + Send + 'static>(
    hub: Arc<Hub>,
    tcp: TcpStream,
    conn: Arc<Conn>,
    handler: H,
    max_message: usize,
    park: Arc<Parking<H>>,
    resume: Resume,
) -> impl Future<Output = ()> {
    let mut driver = Driver::new(hub, tcp, Bytes::new(), conn, max_message, handler);
    driver.park = Some(park);
    driver.fresh = true;
    if !resume.received.is_empty() || !resume.unwritten.is_empty() || resume.ended {
        driver.busy = Some(Box::new(Busy {
            received: resume.received,
            batch: resume.unwritten,
            ended: resume.ended,
            ..Busy::default()
        }));
    }
    Task(Some(driver))
}

/// A stream a connection may park with: only plain TCP.
pub trait Parkable: Sized {
    const PARKS: bool;
    /// The socket, out of tokio's reactor (only if `PARKS`).
    fn into_std(self) -> io::Result<std::net::TcpStream>;
}

impl Parkable for TcpStream {
    const PARKS: bool = true;
    fn into_std(self) -> io::Result<std::net::TcpStream> {
        TcpStream::into_std(self)
    }
}

impl Parkable for Box<TlsStream<TcpStream>> {
    const PARKS: bool = false;
    fn into_std(self) -> io::Result<std::net::TcpStream> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The connection's task: its driver until it ends or parks.
struct Task<S, H>(Option<Driver<S, H>>);

/// How a driver's poll ended.
enum Outcome {
    /// The connection is over.
    Done,
    /// The connection is idle and may park.
    Park,
}

impl<S, H> Future for Task<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Parkable,
    H: Handler + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(driver) = this.0.as_mut() else {
            return Poll::Ready(());
        };
        match driver.poll_drive(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Outcome::Done) => {
                this.0 = None;
                Poll::Ready(())
            }
            Poll::Ready(Outcome::Park) => match this.0.take().map(Driver::park) {
                Some(Err(driver)) => {
                    // Cannot park after all: still waiting on what the
                    // poll registered.
                    this.0 = Some(driver);
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            },
        }
    }
}

/// Where the writing side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Writing queued frames as they come.
    Open,
    /// Our close frame is in the batch: after it, FIN.
    Closing,
    /// Close frame written: shutting down our side of the stream.
    ShuttingDown,
    /// Nothing more to write (closed, failed, aborted or given up).
    Done,
}

/// One connection: its stream, its decoder, and what is being written.
struct Driver<S, H> {
    hub: Arc<Hub>,
    io: S,
    conn: Arc<Conn>,
    handler: H,
    decoder: Decoder,
    writing: Writing,
    /// The reading side is over (close frame, EOF, error or timeout) and
    /// the handler's `on_close` has run.
    read_done: bool,
    /// After a protocol error the byte stream cannot be parsed any further.
    failed: bool,
    /// Resumed from the parking and nothing written since: tokio's reactor
    /// has not reported the socket writable yet, so a write that is
    /// pending says nothing about a full socket.
    fresh: bool,
    /// Boxed and only while there is a deadline: an idle connection with
    /// none carries no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Boxed and only between polls that leave work behind (a partial
    /// frame, a full socket, a close under way).
    busy: Option<Box<Busy>>,
    /// Where the connection parks when idle (plain TCP, unless
    /// `--park-idle off`).
    park: Option<Arc<Parking<H>>>,
}

/// What a connection must keep from one poll to the next only while it is
/// busy. Each poll works on a copy on the stack; it is boxed when the poll
/// ends with something left. A frame written whole in the poll that took
/// it (every delivery at moderate rates) allocates nothing, and an idle
/// connection's task is 256 bytes instead of 384 (tokio tasks are
/// 128-byte aligned; the driver future went from 248 to 136 bytes).
#[derive(Default)]
struct Busy {
    /// Received bytes not decoded yet (a frame split across reads).
    received: BytesMut,
    /// Frames taken from the connection's queue, front partly written.
    batch: VecDeque<Bytes>,
    /// Or the one frame taken (partly written), when only one was queued:
    /// no queue allocated (and freed) per frame, and a plain `write`.
    single: Option<Bytes>,
    /// Written since the last flush (TLS buffers until flushed).
    unflushed: usize,
    /// Once a close is requested: until when we wait for the peer's close
    /// frame (or EOF). Once the reading side is over: until when the writer
    /// may still write.
    closing_deadline: Option<Instant>,
    /// The stream ended (or failed) while the connection was parked: the
    /// next read is its end.
    ended: bool,
}

impl Busy {
    /// Nothing that a later poll needs.
    fn is_idle(&self) -> bool {
        self.received.is_empty()
            && self.batch.is_empty()
            && self.single.is_none()
            && self.unflushed == 0
            && self.closing_deadline.is_none()
            && !self.ended
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: Handler> Driver<S, H> {
    fn new(
        hub: Arc<Hub>,
        io: S,
        leftover: Bytes,
        conn: Arc<Conn>,
        max_message: usize,
        handler: H,
    ) -> Self {
        Driver {
            hub,
            io,
            decoder: Decoder::new(max_message, conn.deflate),
            conn,
            handler,
            writing: Writing::Open,
            read_done: false,
            failed: false,
            fresh: false,
            timer: None,
            // Copy, then drop: `leftover` is a view into hyper's read
            // buffer, which would otherwise stay allocated for the life of
            // the connection.
            busy: (!leftover.is_empty()).then(|| {
                Box::new(Busy {
                    received: BytesMut::from(&leftover[..]),
                    ..Busy::default()
                })
            }),
            park: None,
        }
    }

    /// Decodes and reads until the socket has nothing more for now.
    fn poll_read_side(&mut self, busy: &mut Busy, cx: &mut Context<'_>) {
        loop {
            self.decode_received(busy);
            if self.read_done {
                return;
            }
            if busy.received.is_empty() {
                // Give the memory back between messages: idle connections
                // hold none. (Even at capacity 0 an emptied buffer may still
                // share the allocation of the messages split off it.)
                busy.received = BytesMut::new();
            }
            let read = if std::mem::take(&mut busy.ended) {
                Poll::Ready(Ok(0))
            } else {
                poll_read_into(&mut self.io, &mut busy.received, cx)
            };
            match read {
                Poll::Pending => return,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    // The peer is gone or half-closed: flush what is queued
                    // (bounded by the flush deadline), then close.
                    self.conn.close(CloseCode::NO_STATUS, "", true);
                    self.end_read(busy);
                    return;
                }
                Poll::Ready(Ok(n)) => {
                    self.hub.metrics.bytes_in.increment(n as u64);
                    if self.failed {
                        busy.received.clear();
                    }
                }
            }
        }
    }

    fn decode_received(&mut self, busy: &mut Busy) {
        while !self.failed {
            match self.decoder.decode(&mut busy.received) {
                Ok(None) => return,
                Ok(Some(message)) => {
                    self.conn.touch(self.hub.clock_ms());
                    if matches!(message, Message::Text(_) | Message::Binary(_)) {
                        self.conn.mark_active();
                    }
                    let closing = self.conn.is_closing();
                    match message {
                        Message::Text(payload) if !closing => {
                            self.dispatch(OpCode::Text, payload);
                        }
                        Message::Binary(payload) if !closing => {
                            self.dispatch(OpCode::Binary, payload);
                        }
                        Message::Text(_) | Message::Binary(_) => {}
                        Message::Ping(payload) => {
                            self.conn.push(encode_frame(OpCode::Pong, &payload, false));
                        }
                        Message::Pong(_) => {}
                        Message::Close(status) => {
                            if !closing {
                                // Echo the peer's status code, as RFC 6455 §5.5.1 suggests.
                                let code = status.map_or(CloseCode::NO_STATUS, |(code, _)| code);
                                self.conn.close(code, "", true);
                            }
                            self.end_read(busy);
                            return;
                        }
                    }
                }
                Err(err) => {
                    self.failed = true;
                    busy.received.clear();
                    self.conn.close(err.code, err.reason, true);
                }
            }
        }
    }

    fn dispatch(&mut self, opcode: OpCode, payload: Bytes) {
        self.hub.metrics.messages_in.increment(1);
        if let Err(close) = self.handler.on_message(opcode, payload) {
            self.conn.close(close.code, close.reason, true);
        }
    }

    /// The reading side is over: unregister now (the connection leaves its
    /// rooms at once) and give the writer a bounded time to finish.
    fn end_read(&mut self, busy: &mut Busy) {
        self.read_done = true;
        busy.received = BytesMut::new();
        self.handler.on_close();
        busy.closing_deadline = Some(Instant::now() + CLOSE_GRACE);
    }

    /// Writes what is queued until the socket is full or nothing is left.
    fn poll_write_side(&mut self, busy: &mut Busy, cx: &mut Context<'_>) {
        while self.writing != Writing::Done {
            if busy.single.is_some() || !busy.batch.is_empty() {
                if self.aborted() {
                    // Slow consumer or dead peer: whatever is half written
                    // stays so; the socket is dropped.
                    self.finish_writing(busy);
                    return;
                }
                let written = if busy.single.is_some() {
                    self.poll_write_single(busy, cx)
                } else {
                    self.poll_write_batch(busy, cx)
                };
                match written {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(_)) => {
                        self.conn.close(
                            switchboard_protocol::close::GOING_AWAY,
                            "write failed",
                            false,
                        );
                        self.finish_writing(busy);
                        return;
                    }
                }
            }
            if busy.unflushed > 0 {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(())) => {
                        self.hub.metrics.bytes_out.increment(busy.unflushed as u64);
                        busy.unflushed = 0;
                        self.conn.notify_drained();
                    }
                    Poll::Ready(Err(_)) => {
                        self.finish_writing(busy);
                        return;
                    }
                }
            }
            match self.writing {
                Writing::Open => {}
                Writing::Closing => {
                    self.writing = Writing::ShuttingDown;
                    continue;
                }
                Writing::ShuttingDown => {
                    // FIN after our close frame: RFC 6455 wants the server
                    // to close the TCP connection first.
                    if Pin::new(&mut self.io).poll_shutdown(cx).is_pending() {
                        return;
                    }
                    self.finish_writing(busy);
                    return;
                }
                Writing::Done => return,
            }
            let close = self.conn.take(&mut busy.batch, &mut busy.single);
            if busy.single.is_some() || !busy.batch.is_empty() {
                continue;
            }
            // Idle: give the batch's memory back.
            busy.batch = VecDeque::new();
            match close {
                None => return,
                Some(reason) if !reason.graceful => {
                    // Aborted: the socket is probably full, so try the close
                    // frame once without waiting. Unless just resumed: then
                    // wait for tokio to see the socket writable (bounded
                    // by the closing deadline; it is usually the next turn
                    // of the reactor), and try again.
                    let frame = close_frame(reason.code, reason.reason);
                    let io = Pin::new(&mut self.io);
                    if io.poll_write(cx, &frame).is_pending() && self.fresh {
                        return;
                    }
                    let _ = Pin::new(&mut self.io).poll_flush(cx);
                    self.finish_writing(busy);
                    return;
                }
                Some(reason) => {
                    // Echoing a close without code (NO_STATUS) sends one without.
                    let frame = close_frame(reason.code, reason.reason);
                    busy.batch.push_back(frame);
                    self.writing = Writing::Closing;
                }
            }
        }
    }

    /// Whether the connection was aborted (a close that drops queued frames).
    fn aborted(&self) -> bool {
        self.conn.is_closing() && self.conn.close_reason().is_some_and(|r| !r.graceful)
    }

    fn finish_writing(&mut self, busy: &mut Busy) {
        self.writing = Writing::Done;
        busy.batch = VecDeque::new();
        busy.single = None;
    }

    /// One write of the lone frame taken (`write`/`send`, not `writev`).
    fn poll_write_single(&mut self, busy: &mut Busy, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(frame) = busy.single.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let written = match Pin::new(&mut self.io).poll_write(cx, frame) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result?,
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.fresh = false;
        busy.unflushed += written;
        if written >= frame.len() {
            busy.single = None;
        } else {
            frame.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// One vectored write of the batch's front frames.
    fn poll_write_batch(&mut self, busy: &mut Busy, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(busy.batch.iter()) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result?,
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.fresh = false;
        busy.unflushed += written;
        let mut n = written;
        while n > 0 {
            let Some(front) = busy.batch.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                busy.batch.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The earliest deadline that matters now, if any.
    fn next_deadline(&self, busy: &Busy) -> Option<Instant> {
        if busy.closing_deadline.is_some() {
            return busy.closing_deadline;
        }
        self.handler.deadline()
    }

    /// Acts on every deadline that has passed.
    fn on_deadlines(&mut self, busy: &mut Busy, now: Instant) {
        if let Some(at) = busy.closing_deadline {
            if at <= now {
                if self.read_done {
                    // The peer stopped reading: give up on the rest.
                    self.finish_writing(busy);
                } else {
                    // No close frame from the peer in time.
                    self.end_read(busy);
                }
            }
            return;
        }
        if self.handler.deadline().is_some_and(|at| at <= now) {
            if let Err(close) = self.handler.on_deadline() {
                self.conn.close(close.code, close.reason, true);
            }
        }
    }

    /// One poll of the connection, with its busy state (boxed or on the
    /// stack) at hand.
    fn poll_busy(&mut self, busy: &mut Busy, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.read_done {
                self.poll_read_side(busy, cx);
            }
            if self.writing != Writing::Done {
                self.poll_write_side(busy, cx);
            }
            if self.read_done && self.writing == Writing::Done {
                self.handler.on_finish();
                return Poll::Ready(());
            }
            if busy.closing_deadline.is_none() && self.conn.is_closing() {
                busy.closing_deadline = Some(Instant::now() + CLOSE_GRACE);
            }
            match self.poll_timer(busy, cx) {
                Poll::Ready(()) => self.on_deadlines(busy, Instant::now()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Polls the timer for the next deadline, creating, moving or dropping
    /// it as needed.
    fn poll_timer(&mut self, busy: &Busy, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.next_deadline(busy) else {
            self.timer = None;
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        timer.as_mut().poll(cx)
    }
}

impl<S, H> Driver<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Parkable,
    H: Handler + Unpin + Send + 'static,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        // First, so that a frame queued or a close requested from now on
        // wakes this task, whatever it then waits for (a full socket too).
        self.conn.register_waker(cx.waker());
        let mut boxed = self.busy.take();
        let mut local = Busy::default();
        if self.poll_busy(boxed.as_deref_mut().unwrap_or(&mut local), cx) == Poll::Ready(()) {
            return Poll::Ready(Outcome::Done);
        }
        // Keep only what the next poll needs, where it already is.
        self.busy = match boxed {
            Some(busy) if !busy.is_idle() => Some(busy),
            Some(_) => None,
            None => (!local.is_idle()).then(|| Box::new(local)),
        };
        if self.may_park() {
            return Poll::Ready(Outcome::Park);
        }
        Poll::Pending
    }

    /// Idle with nothing between polls but the handler's deadline, and
    /// parking is wanted (`Conn::take_park_wish`, or `--park-idle always`).
    fn may_park(&self) -> bool {
        let Some(park) = &self.park else {
            return false;
        };
        self.busy.is_none()
            && self.writing == Writing::Open
            && !self.read_done
            && !self.failed
            && !self.decoder.in_message()
            && !self.conn.is_closing()
            && (park.always() || self.conn.take_park_wish())
    }

    /// Hands the socket, the `Conn` and the handler to the parking; the
    /// task ends. A socket that cannot leave tokio's reactor is closed:
    /// the connection ends.
    fn park(self) -> Result<(), Self> {
        if !S::PARKS || self.park.is_none() {
            return Err(self);
        }
        let Driver {
            io,
            conn,
            mut handler,
            park,
            ..
        } = self;
        let Some(park) = park else {
            return Ok(());
        };
        match io.into_std() {
            Ok(tcp) => park.park(tcp, conn, handler),
            Err(err) => {
                tracing::debug!(conn = conn.id, %err, "cannot park: the socket failed");
                conn.close(switchboard_protocol::close::GOING_AWAY, "", false);
                handler.on_close();
                handler.on_finish();
            }
        }
        Ok(())
    }
}

/// Reads what the socket has and appends it to `buf`; `Ok(0)` at the end of
/// the stream. The read goes into the per-thread scratch buffer (for TCP one
/// `recv`; TLS decrypts into it), so waiting holds no buffer.
fn poll_read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    SCRATCH_BUF.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut read = ReadBuf::uninit(scratch.spare_capacity_mut());
        match Pin::new(reader).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokio task is its future plus about 104 bytes of header and
    /// trailer, rounded up to 128 bytes: a driver of at most 152 bytes
    /// makes an idle connection's task 256 bytes, not 384 (measured with
    /// heaptrack; BENCHMARKS.md). The handler is a boxed `dyn` in the
    /// server (`gateway::http`), two words like this one.
    #[test]
    fn an_idle_connections_driver_fits_a_256_byte_task() {
        type Boxed = Box<dyn Handler + Send>;
        let plain = std::mem::size_of::<Driver<TcpStream, Boxed>>();
        let tls = std::mem::size_of::<Driver<Box<TlsStream<TcpStream>>, Boxed>>();
        let either = std::mem::size_of::<
            Either<Driver<TcpStream, Boxed>, Driver<Box<TlsStream<TcpStream>>, Boxed>>,
        >();
        assert!(
            plain <= 152 && tls <= 152 && either <= 152,
            "{plain} {tls} {either}"
        );
    }
}
