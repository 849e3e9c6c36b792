//! Parked connections: an idle plain-TCP WebSocket whose socket is watched
//! by one epoll of ours instead of a task of its own.
//!
//! A connection in its task costs, besides what the hub keeps, a 256-byte
//! tokio task and tokio's 256-byte `ScheduledIo`, both 128-byte aligned
//! (glibc leaves gaps around them): about 600 bytes of RSS for a socket
//! that mostly waits. Parked, it is an entry of [`Parking`]'s table (its
//! socket, its `Conn`, its handler) and a registration in our epoll, whose
//! own descriptor tokio watches like any other. The kernel's socket buffers
//! are the same either way.
//!
//! What wakes a parked connection, and what happens then:
//! - a frame queued or a close requested (`Conn::push`/`close` wake its
//!   waker, which is [`Unpark`]): it goes back into a task, which writes;
//! - bytes from the client: [`Parking::watch`] reads them. Whole pings and
//!   pongs, the traffic of an idle connection, are handled in place (the
//!   pong written, the connection touched); anything else (a message, a
//!   partial frame, a close, EOF) goes back into a task together with the
//!   bytes read, and the task's decoder takes it from there;
//! - its handler's deadline (the hello timeout, a token's expiry): back
//!   into a task, which acts on it;
//! - a heartbeat: [`Parking::ping`] writes the ping itself.
//!
//! Whoever takes an entry out of the table under its lock owns the
//! connection from then on, so two wakes never resume it twice. Only plain
//! TCP parks: a TLS connection's state is rustls's (about 14 KB; parking
//! would save little of it).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::{Arc, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mio::{Interest, Token};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::socket::{self, Handler};
use crate::config::ParkIdle;
use crate::hub::{fan_out, Conn, Hub};

/// Largest read of a parked connection's socket. An idle client sends
/// pongs (6–131 bytes); a read that fills this is handed to a task.
const READ: usize = 512;

/// Readiness events taken from our epoll per wake-up.
const EVENTS: usize = 256;

/// With `--park-idle quiet`, a connection parks again as soon as it is
/// idle after each of its first this many resumes by bytes from its
/// client, and after that only once a heartbeat finds it quiet. A client's
/// first steps (`hello`, a few `join`s, the replies) are over quickly, and
/// the connection then waits: parking it at once keeps its task's memory
/// for the next connection of a storm. A busy connection pays at most this
/// many extra park-resume round trips (about 10 µs each) before it stays
/// in its task.
const EAGER_RESUMES: u8 = 4;

/// Frames written to a parked connection by the threads that queue them
/// before it goes back into a task. Written there, a frame costs one
/// `send` and no wake-up, which is what a quiet connection's occasional
/// message or presence change should cost. Traffic that keeps coming
/// belongs in the task, which batches frames into one `writev` and spreads
/// the sockets over the runtime's workers: written where they are queued,
/// every frame of a fan-out is a `send` on one thread (measured flat out to
/// 1,000 `/relay` subscribers: 0.06× the deliveries/s).
const INLINE_FRAMES: u8 = 8;

/// Every parked connection of one server, and the epoll that watches them.
pub struct Parking<H> {
    hub: Arc<Hub>,
    /// The server's runtime: a connection may be unparked from any thread
    /// (the SQLite writer queues frames too), and its socket goes back to
    /// this runtime's reactor and its task to this runtime.
    handle: Handle,
    /// Registers sockets with our epoll from any thread.
    registry: mio::Registry,
    /// The epoll itself, until [`Parking::watch`] takes it.
    poll: Mutex<Option<mio::Poll>>,
    mode: ParkIdle,
    /// A resumed connection's decoder (an idle decoder holds nothing else).
    max_message: usize,
    table: Mutex<Table<H>>,
    /// An earlier deadline than the watcher sleeps until was added.
    deadline_moved: Notify,
}

struct Table<H> {
    parked: HashMap<u64, Parked<H>>,
    /// Deadlines of parked connections' handlers, soonest first.
    deadlines: BTreeSet<(Instant, u64)>,
}

/// What a parked connection keeps: no decoder (an idle one holds only
/// settings, rebuilt on resume), no buffers, no timer.
struct Parked<H> {
    io: mio::net::TcpStream,
    conn: Arc<Conn>,
    handler: H,
    /// Frames written for it while parked (up to [`INLINE_FRAMES`]).
    delivered: u8,
}

/// What a resumed connection's task starts with.
#[derive(Default)]
pub(super) struct Resume {
    /// Bytes read while parked that were more than pings and pongs.
    pub received: BytesMut,
    /// Frames taken while parked that the socket did not take (the first
    /// maybe in part): written before anything queued since.
    pub unwritten: VecDeque<Bytes>,
    /// The read found the end of the stream (or an error). Said, not left
    /// for the task to find: a socket back in tokio's reactor reads only
    /// once the reactor has seen it readable, and until then the task
    /// would be idle (and could park again).
    pub ended: bool,
}

impl<H: Handler + Unpin + Send + 'static> Parking<H> {
    pub fn new(hub: Arc<Hub>, mode: ParkIdle, max_message: usize) -> io::Result<Arc<Self>> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok(Arc::new(Parking {
            hub,
            handle: Handle::current(),
            registry,
            poll: Mutex::new(Some(poll)),
            mode,
            max_message,
            table: Mutex::new(Table {
                parked: HashMap::new(),
                deadlines: BTreeSet::new(),
            }),
            deadline_moved: Notify::new(),
        }))
    }

    /// Whether connections park at all.
    pub fn enabled(&self) -> bool {
        self.mode != ParkIdle::Off
    }

    /// Whether an idle connection parks whenever it is idle, rather than
    /// when its `Conn` says it may.
    pub fn always(&self) -> bool {
        self.mode == ParkIdle::Always
    }

    /// Parks an idle connection: its socket (already out of tokio's
    /// reactor), its `Conn`, its handler and the handler's deadline.
    pub(super) fn park(self: &Arc<Self>, tcp: std::net::TcpStream, conn: Arc<Conn>, handler: H) {
        let id = conn.id;
        let deadline = handler.deadline();
        // The waker first, while no one else can resume the connection:
        // registered after the entry is in the table, it could replace the
        // waker of a task that resumed it meanwhile (which then would never
        // be woken again). A push from now on unparks; one that comes
        // before the entry is in the table finds nothing to unpark, and is
        // seen by the look at the queue below.
        let unpark = Arc::new(Unpark {
            parking: Arc::downgrade(self),
            id,
        });
        conn.register_waker(&Waker::from(unpark));
        let mut io = mio::net::TcpStream::from_std(tcp);
        let mut table = self.table.lock();
        // Registered under the lock: the watcher, woken by this socket,
        // finds its entry. Bytes that came before are reported at once.
        if let Err(err) = self
            .registry
            .register(&mut io, Token(id as usize), Interest::READABLE)
        {
            drop(table);
            tracing::debug!(conn = id, %err, "cannot park: epoll registration failed");
            let parked = Parked {
                io,
                conn,
                handler,
                delivered: 0,
            };
            self.resume(parked, Resume::default());
            return;
        }
        let soonest = deadline.is_some_and(|at| {
            table.deadlines.insert((at, id));
            table.deadlines.first() == Some(&(at, id))
        });
        table.parked.insert(
            id,
            Parked {
                io,
                conn: conn.clone(),
                handler,
                delivered: 0,
            },
        );
        drop(table);
        self.hub.metrics.parked.increment(1.0);
        tracing::trace!(conn = id, ?deadline, "parked");
        if soonest {
            self.deadline_moved.notify_one();
        }
        // A push or close that came after the task's last look at the queue
        // woke the task (which is ending) or found no entry: look again.
        if conn.has_work() {
            self.unpark(id, Resume::default());
        }
    }

    /// A parked connection's `Conn` woke it: frames were queued or a close
    /// requested. The first [`INLINE_FRAMES`] frames are written here, on
    /// the thread that queued them, as the connection's task would have (a
    /// message to a member of a quiet room, a presence change): the
    /// connection stays parked, and no task is woken. Resumed instead: a
    /// close, frames past those, frames past the budget of the fan-out that
    /// queued them ([`fan_out::INLINE_PER_FAN_OUT`]), or a socket that does
    /// not take everything (the task then writes the rest when it can, and
    /// keeps the queue's limit).
    fn on_wake(self: &Arc<Self>, unpark: &Arc<Unpark<H>>) {
        let id = unpark.id;
        loop {
            let mut table = self.table.lock();
            let Some(parked) = table.parked.get_mut(&id) else {
                return;
            };
            let conn = parked.conn.clone();
            let mut frames = VecDeque::new();
            let mut single = None;
            let close = conn.take(&mut frames, &mut single);
            if let Some(frame) = single {
                frames.push_front(frame);
            }
            // Past its own 8, or past what the fan-out in progress may
            // write on this thread (`hub::fan_out`): resumed.
            let busy = usize::from(parked.delivered) + frames.len() > usize::from(INLINE_FRAMES)
                || (close.is_none() && !fan_out::take_inline(frames.len()));
            let written = if close.is_none() && !busy {
                parked.delivered += frames.len() as u8;
                write_frames(&parked.io, &mut frames)
            } else {
                Some(0)
            };
            if let Some(bytes) = written.filter(|&n| n > 0) {
                self.hub.metrics.bytes_out.increment(bytes as u64);
                conn.notify_drained();
            }
            if close.is_some() || busy || written.is_none() || !frames.is_empty() {
                if let Some(parked) = table.take(id) {
                    drop(table);
                    let resume = Resume {
                        unwritten: frames,
                        ..Resume::default()
                    };
                    self.resume(parked, resume);
                }
                return;
            }
            // Everything went out. Wake us again for the next frame (the
            // wake that brought us here used the waker up), then look
            // again: a frame queued meanwhile woke no one. Not under the
            // table's lock: registering may wake the new waker at once
            // (a wake in progress on another thread), which comes here.
            drop(table);
            conn.register_waker(&Waker::from(unpark.clone()));
            if !conn.has_work() {
                return;
            }
        }
    }

    /// Puts a parked connection back into a task; nothing if it is not
    /// parked (any more).
    pub(super) fn unpark(self: &Arc<Self>, id: u64, resume: Resume) {
        let Some(parked) = self.table.lock().take(id) else {
            return;
        };
        self.resume(parked, resume);
    }

    /// Writes the heartbeat ping to a parked connection; false if it is not
    /// parked (the hub queues the ping instead).
    pub fn ping(self: &Arc<Self>, conn: &Conn, frame: &Bytes) -> bool {
        let mut table = self.table.lock();
        let Some(parked) = table.parked.get(&conn.id) else {
            return false;
        };
        let mut unwritten = VecDeque::from([frame.clone()]);
        match write_frames(&parked.io, &mut unwritten) {
            Some(written) if unwritten.is_empty() => {
                self.hub.metrics.bytes_out.increment(written as u64);
            }
            // The socket is full: a client that reads nothing and does not
            // answer either is closed by the heartbeat.
            Some(0) => {}
            // Part of it, or the socket failed: the task writes the rest
            // (or meets the error).
            _ => {
                if let Some(parked) = table.take(conn.id) {
                    drop(table);
                    let resume = Resume {
                        unwritten,
                        ..Resume::default()
                    };
                    self.resume(parked, resume);
                }
            }
        }
        true
    }

    /// Watches the parked connections' sockets and deadlines until the
    /// server stops (the task is aborted).
    pub async fn watch(self: Arc<Self>) {
        let Some(poll) = self.poll.lock().take() else {
            return;
        };
        // tokio deprecates its safe constructors because an `AsRawFd` type
        // could change or close its descriptor while registered (the new
        // one is `unsafe`). `mio::Poll` cannot: its epoll descriptor is
        // its own from creation to drop, and the `AsyncFd` owns it.
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(poll, tokio::io::Interest::READABLE);
        let mut poll = match registered {
            Ok(poll) => poll,
            Err(err) => {
                tracing::error!(%err, "cannot watch parked connections");
                return;
            }
        };
        let mut events = mio::Events::with_capacity(EVENTS);
        let mut buf = vec![0u8; READ];
        loop {
            let moved = self.deadline_moved.notified();
            let next = self.table.lock().deadlines.first().map(|&(at, _)| at);
            // Far away when there is no deadline (the branch is off then).
            let until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                ready = poll.readable_mut() => {
                    let Ok(mut ready) = ready else {
                        tracing::error!("parked connections' epoll failed");
                        return;
                    };
                    events.clear();
                    if let Err(err) = ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        if err.kind() != io::ErrorKind::Interrupted {
                            tracing::warn!(%err, "epoll_wait on parked connections failed");
                        }
                        continue;
                    }
                    // Fewer events than room for them: none left, so wait
                    // for tokio's next edge (tokio keeps the readiness if a
                    // new one came in the meantime).
                    if events.iter().count() < EVENTS {
                        ready.clear_ready();
                    }
                    for event in events.iter() {
                        self.on_readable(event.token().0 as u64, &mut buf);
                    }
                }
                _ = tokio::time::sleep_until(until), if next.is_some() => {
                    self.unpark_due(Instant::now());
                }
                _ = moved => {}
            }
        }
    }

    /// Bytes (or EOF, or an error) on a parked connection's socket.
    fn on_readable(self: &Arc<Self>, id: u64, buf: &mut [u8]) {
        let mut table = self.table.lock();
        let Some(parked) = table.parked.get(&id) else {
            return;
        };
        let read = loop {
            match (&parked.io).read(buf) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match read {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
            // The task's own read sees the end (or the error) again.
            Err(_) => 0,
            Ok(n) => n,
        };
        tracing::trace!(conn = id, read = n, "parked connection readable");
        if n > 0 {
            self.hub.metrics.bytes_in.increment(n as u64);
        }
        // A short read took everything there was: epoll reports the next
        // bytes as a new edge.
        if n > 0 && n < buf.len() {
            if let Some(pongs) = pings_and_pongs(&buf[..n]) {
                parked.conn.touch(self.hub.clock_ms());
                if pongs.is_empty() {
                    return;
                }
                let mut unwritten = VecDeque::from([Bytes::from(pongs)]);
                let written = write_frames(&parked.io, &mut unwritten);
                if let Some(bytes) = written {
                    self.hub.metrics.bytes_out.increment(bytes as u64);
                }
                if written.is_some() && unwritten.is_empty() {
                    return;
                }
                // The socket is full, or failed: the task writes the rest
                // when it can (or meets the error).
                if let Some(parked) = table.take(id) {
                    drop(table);
                    let resume = Resume {
                        unwritten,
                        ..Resume::default()
                    };
                    self.resume(parked, resume);
                }
                return;
            }
        }
        let Some(parked) = table.take(id) else {
            return;
        };
        drop(table);
        let resume = Resume {
            received: BytesMut::from(&buf[..n]),
            ended: n == 0,
            ..Resume::default()
        };
        self.resume(parked, resume);
    }

    /// Resumes every parked connection whose deadline has come.
    fn unpark_due(self: &Arc<Self>, now: Instant) {
        loop {
            let mut table = self.table.lock();
            let Some(&(at, id)) = table.deadlines.first() else {
                return;
            };
            if at > now {
                return;
            }
            table.deadlines.remove(&(at, id));
            let parked = table.take(id);
            drop(table);
            if let Some(parked) = parked {
                self.resume(parked, Resume::default());
            }
        }
    }

    /// Gives a connection taken out of the table its socket back in tokio's
    /// reactor and a task again.
    fn resume(self: &Arc<Self>, parked: Parked<H>, resume: Resume) {
        let Parked {
            mut io,
            conn,
            mut handler,
            ..
        } = parked;
        self.hub.metrics.parked.decrement(1.0);
        self.hub.metrics.resumes.increment(1);
        // A client's first commands: parked again once they are answered.
        // Not when frames to it resumed it (more than a parking writes):
        // that traffic keeps coming, and a subscriber of a busy channel that
        // parked again each time would take its next frames inline again,
        // on the delivering thread (measured: a 10,000-subscriber `/relay`
        // channel at 99 msg/s delivered 80,000 frames/s for its first 7 s).
        if !resume.received.is_empty() && conn.count_resume() <= EAGER_RESUMES {
            conn.want_park();
        }
        tracing::trace!(
            conn = conn.id,
            received = resume.received.len(),
            ended = resume.ended,
            unwritten = resume.unwritten.len(),
            "resumed"
        );
        let _ = self.registry.deregister(&mut io);
        // `from_std` needs a reactor: this runtime's, whichever thread
        // unparks (a wake may come from outside the runtime).
        let _runtime = self.handle.enter();
        match TcpStream::from_std(io.into()) {
            Ok(tcp) => {
                let task = socket::resume(
                    self.hub.clone(),
                    tcp,
                    conn,
                    handler,
                    self.max_message,
                    self.clone(),
                    resume,
                );
                self.handle.spawn(task);
            }
            Err(err) => {
                // The socket is closed with the error: the connection ends.
                // Its handler unregisters in a task of its own: the waker
                // that got us here may be inside the hub's locks.
                tracing::warn!(conn = conn.id, %err, "cannot resume a parked connection");
                conn.close(switchboard_protocol::close::GOING_AWAY, "", false);
                self.handle.spawn(async move {
                    handler.on_close();
                    handler.on_finish();
                });
            }
        }
    }
}

impl<H> Table<H> {
    /// Takes a connection out of the table (and its deadline with it).
    fn take(&mut self, id: u64) -> Option<Parked<H>>
    where
        H: Handler,
    {
        let parked = self.parked.remove(&id)?;
        if let Some(at) = parked.handler.deadline() {
            self.deadlines.remove(&(at, id));
        }
        Some(parked)
    }
}

/// A parked connection's waker: a frame queued or a close requested puts
/// it back into a task. Weak: the table's `Conn`s hold these.
struct Unpark<H> {
    parking: Weak<Parking<H>>,
    id: u64,
}

impl<H: Handler + Unpin + Send + 'static> Wake for Unpark<H> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(parking) = self.parking.upgrade() {
            parking.on_wake(self);
        }
    }
}

/// Writes `frames` to a parked connection's socket until they are all
/// written or the socket is full, removing what was written (the front
/// frame may be left in part): the bytes written, or `None` if the socket
/// failed (the connection's task then meets the error).
fn write_frames(io: &mio::net::TcpStream, frames: &mut VecDeque<Bytes>) -> Option<usize> {
    let mut io = io;
    let mut total = 0;
    while !frames.is_empty() {
        let result = if frames.len() == 1 {
            io.write(&frames[0])
        } else {
            let slices: Vec<io::IoSlice<'_>> = frames
                .iter()
                .take(64)
                .map(|frame| io::IoSlice::new(frame))
                .collect();
            io.write_vectored(&slices)
        };
        let mut n = match result {
            Ok(0) => return None,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Some(total),
            Err(_) => return None,
        };
        total += n;
        while n > 0 {
            let Some(front) = frames.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                frames.pop_front();
            } else {
                bytes::Buf::advance(front, n);
                n = 0;
            }
        }
    }
    Some(total)
}

/// If `bytes` are whole client pings and pongs and nothing else (the
/// traffic of an idle connection): the pongs that answer the pings, else
/// `None` (a task's decoder must see them). Client frames are masked;
/// control frames are final, without RSV bits, and at most 125 bytes, and
/// anything else is for the decoder to refuse.
fn pings_and_pongs(bytes: &[u8]) -> Option<Vec<u8>> {
    const PING: u8 = 0x89;
    const PONG: u8 = 0x8A;
    let mut rest = bytes;
    let mut pongs = Vec::new();
    while let [first, second, ..] = *rest {
        let len = usize::from(second & 0x7f);
        if second & 0x80 == 0 || len > 125 || rest.len() < 6 + len {
            return None;
        }
        let (frame, next) = rest.split_at(6 + len);
        match first {
            PONG => {}
            PING => {
                let (mask, payload) = frame[2..].split_at(4);
                pongs.push(PONG);
                pongs.push(len as u8);
                pongs.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
            }
            _ => return None,
        }
        rest = next;
    }
    rest.is_empty().then_some(pongs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        frame
    }

    #[test]
    fn pongs_are_taken_and_pings_answered() {
        assert_eq!(pings_and_pongs(&masked(0x8A, b"")), Some(vec![]));
        let mut both = masked(0x8A, b"x");
        both.extend(masked(0x89, b"hello"));
        assert_eq!(
            pings_and_pongs(&both),
            Some([&[0x8A, 5][..], b"hello"].concat())
        );
    }

    #[test]
    fn anything_else_goes_to_the_decoder() {
        // A text message, a close, a partial pong, an unmasked pong, a
        // pong with RSV1, a 126-byte length, a pong then half a frame.
        assert_eq!(pings_and_pongs(&masked(0x81, b"hi")), None);
        assert_eq!(pings_and_pongs(&masked(0x88, b"")), None);
        assert_eq!(pings_and_pongs(&masked(0x8A, b"abc")[..5]), None);
        assert_eq!(pings_and_pongs(&[0x8A, 0x00]), None);
        assert_eq!(pings_and_pongs(&masked(0xCA, b"")), None);
        assert_eq!(pings_and_pongs(&[0x8A, 0xFE, 0, 0, 0, 0]), None);
        let mut then = masked(0x8A, b"");
        then.push(0x81);
        assert_eq!(pings_and_pongs(&then), None);
        // Fragmented pings are not a thing: no FIN, no luck.
        assert_eq!(pings_and_pongs(&masked(0x09, b"")), None);
    }
}
