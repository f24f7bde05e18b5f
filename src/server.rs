//! The one accept loop every listener runs, and the per-connection control
//! that lets the request path, or shutdown, end a connection.
//!
//! Each connection is served in a task of its own by hyper's `http1`
//! (upgrades enabled) or `http2` connection, with a [`ConnControl`] riding
//! along: on a plain listener the task reads the first bytes to tell h2c's
//! preface from HTTP/1.1 (as hyper-util's auto builder does); on a TLS
//! listener it makes the handshake first and follows ALPN (`h2`, or
//! HTTP/1.1). The task looks at the control each time it is woken, before
//! the connection: a drain asks hyper for a graceful close; an abort drops
//! the connection, and [`AbortableStream`] decides on drop whether the
//! socket ends with a FIN or, with zero linger, an RST. Looking costs one
//! atomic load and a waker registration, where waiting on shutdown signals
//! (`Notify`, a watch channel) would take a lock each time the connection
//! wakes, several times per request. The accept loop keeps every open
//! connection's control, so shutdown can reach them all.
//!
//! An upgraded HTTP/1.1 connection (a WebSocket) outlives hyper's part of
//! it, and so its task: whoever copies its bytes on holds its
//! [`Registration`] (shutdown waits for it) and watches its control with
//! [`ConnControl::poll_ended`] (the grace period's end closes it).
//!
//! A client must send its first request's head within the header timeout
//! of being accepted, and each later head within the same time of asking
//! for it (for HTTP/1.1, that includes the idle wait between requests), or
//! its connection is closed: a silent or trickling client cannot hold a
//! file descriptor for long. The TLS handshake and the first bytes (read
//! here, to tell HTTP/1.1 from h2c) have no timeout of their own, so the
//! first deadline is kept here, from accept until the service sees the
//! first request.
//!
//! An idle plain HTTP/1.1 connection gives its HTTP state back, as nginx and
//! HAProxy do. hyper keeps two 8 KiB buffers, its dispatcher and a slot for
//! the request's future for a connection's whole life, about 19 KB per idle
//! keep-alive connection. Every [`IDLE_SWEEP`], the accept loop asks the
//! connections that stayed idle (no request in flight, the last response
//! sent) through as many sweeps as their patience to park (one sweep at
//! first; more for a client that comes back soon after parks, see
//! `MAX_PATIENCE`): the task ends hyper's
//! connection without closing the socket (hyper's graceful shutdown of an
//! idle HTTP/1.1 connection, with the socket's shutdown skipped), keeps the
//! socket, the service and any bytes hyper had read ahead, and waits for the
//! socket to become readable; then a fresh hyper connection serves it, read-
//! ahead bytes first. While parked, the task times the next head itself,
//! and a drain or an abort ends it as it would a served one. Nothing is
//! timed per request; counting requests and answers (the response body is
//! wrapped, `Answered`) costs about 250 instructions of 29,750 per
//! request (callgrind). After parks, the sweep nudges the allocator for a
//! while (`nudge_allocator`), so that the freed memory leaves the process.
//!
//! What does not park: h2c and h2 connections (their streams are many and
//! long-lived), TLS connections (the TLS session, with its own buffers,
//! stays, and rustls may hold decrypted bytes a readiness wait on the
//! socket would not see), and a connection whose last request asked for an
//! upgrade (until its next request: once upgraded, the socket is the
//! tunnel's). The sweep passes them by.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::socket::SendStream;
use crate::tls::HandshakeFailure;

/// How an aborted connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An RST: zero linger, unsent data discarded.
    Reset,
    /// A FIN.
    Close,
    /// A few bytes that are not HTTP ([`GARBAGE_BYTES`]), then a FIN.
    Garbage,
}

/// Where a connection stands, as [`ConnControl`] keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Asked by the sweep to give back its HTTP state while idle, or parked.
    /// Only a connection that may park is asked (plain HTTP/1.1); the others
    /// take it as `Open`.
    Idle,
    /// Finish the request in flight, then close.
    Drain,
    /// End now, this way.
    Ended(Ending),
}

impl State {
    fn to_u8(self) -> u8 {
        match self {
            State::Open => 0,
            State::Drain => 1,
            State::Ended(Ending::Reset) => 2,
            State::Ended(Ending::Close) => 3,
            State::Ended(Ending::Garbage) => 4,
            State::Idle => 5,
        }
    }

    fn from_u8(code: u8) -> State {
        match code {
            0 => State::Open,
            1 => State::Drain,
            2 => State::Ended(Ending::Reset),
            3 => State::Ended(Ending::Close),
            4 => State::Ended(Ending::Garbage),
            5 => State::Idle,
            // Only `to_u8` stores into `ConnControl::state`.
            _ => unreachable!("connection state {code} was never stored"),
        }
    }
}

/// What an [`Ending::Garbage`] sends: not HTTP by any reading.
const GARBAGE_BYTES: &[u8] =
    b"\x00\x17\xfe\xff\x16garbage: faultline injected bytes that are not HTTP\r\n\x00";

/// How often the accept loop looks for idle HTTP/1.1 connections; one
/// parks once it stays idle through its patience's worth of sweeps (one to
/// `MAX_PATIENCE`). Short, so that what a parked connection gives back
/// serves the connections still busy instead of piling up as free pages
/// (nginx and HAProxy give their buffers back as soon as a connection is
/// idle). A request that comes to a parked connection pays for a fresh
/// hyper connection: about 12,000 instructions on top of 29,400 (callgrind,
/// a client pausing 200 ms between requests, sweeps and nudges included).
pub const IDLE_SWEEP: Duration = Duration::from_millis(25);

/// The most sweeps of idleness a connection waits before parking (400 ms):
/// about how long every connection waited before parking with a 250 ms
/// sweep, where a client pausing 50–400 ms between requests would otherwise
/// pay for a fresh hyper connection on each.
const MAX_PATIENCE: u8 = 16;

/// How long after the last park the sweep keeps nudging the allocator
/// ([`nudge_allocator`]): past mimalloc's purge delay (1 s) with room to spare.
const NUDGE_FOR: Duration = Duration::from_secs(2);

/// Every how many sweeps a nudge comes while they are due: every 100 ms.
const NUDGE_EVERY: u32 = 4;

/// The size of the block a nudge allocates and frees: past mimalloc's
/// largest size class (512 KiB), so that it gets a page of its own.
const NUDGE_BYTES: usize = 1 << 20;

/// The preface an h2c client starts with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the accept loop waits after an error such as running out of file descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accept queue a listener asks for. The kernel silently caps it at
/// its own limit (`net.core.somaxconn` on Linux, 4096 by default since
/// 5.4; `kern.ipc.somaxconn` on the BSDs), so every listener gets the
/// system's maximum; tokio's `bind` asks for 128.
const LISTEN_BACKLOG: u32 = i32::MAX.unsigned_abs();

/// Binds a listening socket on `addr` with the longest accept queue the
/// system allows, so a burst of connections, or a pause in accepting
/// (out of file descriptors), does not drop connection attempts.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As tokio's `bind` does: a restarted proxy takes its port back at
    // once, even with connections of the last run in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How soon a dedicated port that could not be reopened is tried again,
/// doubling up to [`REOPEN_RETRY_MAX`].
const REOPEN_RETRY: Duration = Duration::from_millis(20);
const REOPEN_RETRY_MAX: Duration = Duration::from_secs(1);

/// Binds a dedicated port again, retrying with backoff; `None` on shutdown.
pub async fn rebind(addr: SocketAddr, stop: &Stop) -> Option<TcpListener> {
    let mut wait = REOPEN_RETRY;
    let mut warned = false;
    loop {
        match bind(addr) {
            Ok(socket) => {
                info!(%addr, "accepting connections again");
                return Some(socket);
            }
            Err(e) if !warned => {
                warn!(%addr, error = %e, "cannot reopen the dedicated port; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.drain.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(REOPEN_RETRY_MAX);
    }
}

/// A dedicated port's socket once nothing refuses its upstream: the one
/// held in `listener`, or bound again ([`rebind`]) after a refusal closed
/// it. While `refused()` says so the socket is dropped, so connections are
/// refused for real, `closed()` is called, and the task waits for the next
/// change of the rules (`changes`). `None`: `stop` drained, or the rules
/// are gone.
pub async fn open_unless_refused(
    listener: &mut Option<TcpListener>,
    addr: SocketAddr,
    name: &str,
    refused: impl Fn() -> bool,
    closed: impl Fn(),
    changes: &mut tokio::sync::watch::Receiver<()>,
    stop: &Stop,
) -> Option<TcpListener> {
    while refused() {
        drop(listener.take());
        closed();
        info!(%addr, upstream = name, "refusing connections: an unavailable/refuse rule is on");
        tokio::select! {
            _ = stop.drain.cancelled() => return None,
            changed = changes.changed() => changed.ok()?,
        }
    }
    match listener.take() {
        Some(socket) => Some(socket),
        None => rebind(addr, stop).await,
    }
}

/// How long a client may take before its connection is closed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the first request's head, counted from accept; for each later
    /// head on HTTP/1.1, counted from the end of the previous response.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: crate::config::DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Lets the request path, or shutdown, end a connection, and the accept
/// loop's sweep park an idle one.
#[derive(Debug)]
pub struct ConnControl {
    /// A [`State`], as [`State::to_u8`] writes it.
    state: AtomicU8,
    /// The connection's task, woken when the state changes.
    task: AtomicWaker,
    /// Whoever carries the connection on after an upgrade, woken by an abort.
    tunnel: AtomicWaker,
    /// The connection may park: plain HTTP/1.1. The sweep passes the others
    /// by; set once, by the connection's task.
    parkable: AtomicBool,
    /// Requests the service was called with. Written by the connection's
    /// task only, as is `answered` for HTTP/1.1 (an h2 stream's body is
    /// dropped on its own task, and an update may be lost: h2 never parks).
    requests: AtomicU64,
    /// Responses whose body hyper has finished with (sent, or dropped).
    answered: AtomicU64,
    /// The last request came with a body, which hyper may still be reading
    /// after the response, or asked for an upgrade, which takes the socket
    /// once its `101` is sent: its connection is not known to be idle.
    unfinished: AtomicBool,
    /// `answered` as the last sweep saw it; the sweep's own.
    swept: AtomicU64,
    /// Sweeps in a row that found the connection idle with nothing
    /// answered since the one before (parked or not); the sweep's own.
    quiet: AtomicU8,
    /// How many such sweeps it takes to park: doubled when the client
    /// comes back within as long a nap, halved when it stays away.
    patience: AtomicU8,
    /// hyper is ending its connection to park: the socket stays open.
    parking: AtomicBool,
    /// Times the connection has parked.
    parks: AtomicU64,
}

impl Default for ConnControl {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(State::Open.to_u8()),
            task: AtomicWaker::new(),
            tunnel: AtomicWaker::new(),
            parkable: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            unfinished: AtomicBool::new(false),
            // Not a count `answered` can have: the first sweep only looks.
            swept: AtomicU64::new(u64::MAX),
            quiet: AtomicU8::new(0),
            patience: AtomicU8::new(1),
            parking: AtomicBool::new(false),
            parks: AtomicU64::new(0),
        }
    }
}

impl ConnControl {
    /// Ends the connection now, with no response, as `ending` says.
    pub fn abort(&self, ending: Ending) {
        self.state
            .store(State::Ended(ending).to_u8(), Ordering::Release);
        self.task.wake();
        self.tunnel.wake();
    }

    /// Ready, with how, once the connection must end now. For an upgraded
    /// connection, which its task no longer watches. A drain does not end
    /// it: a tunnel has no response to finish, so it runs until its sides
    /// close or the grace period is over.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<Ending> {
        // Registered before the state is read, as the task does.
        self.tunnel.register(cx.waker());
        match self.state() {
            State::Ended(ending) => Poll::Ready(ending),
            // The sweep does not ask a connection whose last request asked
            // for an upgrade to park; `Idle` would be as `Open` anyway.
            State::Open | State::Idle | State::Drain => Poll::Pending,
        }
    }

    /// Lets the request in flight finish, then closes the connection.
    fn drain(&self) {
        // An abort already asked for stays.
        for from in [State::Open, State::Idle] {
            if self
                .state
                .compare_exchange(
                    from.to_u8(),
                    State::Drain.to_u8(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                break;
            }
        }
        self.task.wake();
    }

    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// From `from` to `to`, unless a drain or an abort came first.
    fn switch(&self, from: State, to: State) -> bool {
        self.state
            .compare_exchange(
                from.to_u8(),
                to.to_u8(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// On the connection's task: a load and a store, no atomic
    /// read-modify-write.
    #[inline(always)]
    fn request_started(&self, unfinished: bool) {
        let requests = self.requests.load(Ordering::Relaxed);
        self.requests.store(requests + 1, Ordering::Relaxed);
        self.unfinished.store(unfinished, Ordering::Relaxed);
    }

    fn answered(&self) {
        let answered = self.answered.load(Ordering::Relaxed);
        self.answered.store(answered + 1, Ordering::Relaxed);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Every request answered, the last one without a body nor an upgrade:
    /// hyper's HTTP/1.1 connection waits for the next head, which makes its
    /// graceful shutdown end it at once, with nothing written.
    fn idle(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == self.answered.load(Ordering::Relaxed)
            && !self.unfinished.load(Ordering::Relaxed)
    }

    /// Lets the sweep park the connection: plain HTTP/1.1 only.
    fn may_park(&self) {
        self.parkable.store(true, Ordering::Relaxed);
    }

    /// The sweep: asks a connection that may park, has had requests and
    /// stayed idle through its patience's worth of sweeps to park; `true`
    /// if it asked.
    fn sweep(&self) -> bool {
        if !self.parkable.load(Ordering::Relaxed) {
            return false;
        }
        let answered = self.answered.load(Ordering::Relaxed);
        let seen = self.swept.swap(answered, Ordering::Relaxed);
        if seen != answered || answered == 0 || !self.idle() {
            self.quiet.store(0, Ordering::Relaxed);
            return false;
        }
        let quiet = self.quiet.load(Ordering::Relaxed).saturating_add(1);
        self.quiet.store(quiet, Ordering::Relaxed);
        if quiet >= self.patience.load(Ordering::Relaxed) && self.switch(State::Open, State::Idle) {
            self.task.wake();
            return true;
        }
        false
    }

    /// On the connection's task, when a request ends a park (or comes
    /// before one): a client that came back within the time the sweep
    /// waited before parking gets twice the patience, up to
    /// [`MAX_PATIENCE`]; one that stayed away four times as long, half.
    fn woke(&self) {
        let patience = self.patience.load(Ordering::Relaxed);
        let napped = self.quiet.load(Ordering::Relaxed).saturating_sub(patience);
        let patience = if napped < patience {
            patience.saturating_mul(2).min(MAX_PATIENCE)
        } else if napped >= patience.saturating_mul(4) {
            (patience / 2).max(1)
        } else {
            patience
        };
        self.patience.store(patience, Ordering::Relaxed);
    }

    /// How many times the connection has parked: given its HTTP state back
    /// while idle between two requests.
    pub fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    fn parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }
}

/// What the request path knows of the connection a request came in on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub control: Arc<ConnControl>,
    /// Keeps the connection among those shutdown waits for and ends: held
    /// by its task, and by an upgraded connection's tunnel after that.
    pub registration: Arc<Registration>,
}

/// When an accept loop stops, and how its connections end.
#[derive(Debug, Clone)]
pub struct Stop {
    /// Stop accepting; in-flight requests may finish within `grace`.
    pub drain: CancellationToken,
    /// Stop accepting and reset every connection at once.
    pub reset: CancellationToken,
    pub grace: Duration,
}

impl Stop {
    /// Stops by draining when `token` is cancelled.
    pub fn draining(token: CancellationToken, grace: Duration) -> Self {
        Self {
            drain: token,
            reset: CancellationToken::new(),
            grace,
        }
    }
}

/// A listener's TLS: what it serves, and where failed handshakes are
/// counted.
#[derive(Clone)]
pub struct TlsDoor {
    pub acceptor: TlsAcceptor,
    /// `faultline_tls_handshake_errors_total` of this listener, in the
    /// order of [`HandshakeFailure::ALL`].
    pub failures: [IntCounter; 4],
}

impl std::fmt::Debug for TlsDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsDoor")
    }
}

/// Accepts connections until `stop` says so: then lets in-flight requests
/// finish for at most the grace period before the remaining connections are
/// dropped, or resets them all at once. Clients slower than `limits` are
/// disconnected.
pub async fn serve<M, S, B>(listener: TcpListener, make_service: M, limits: Limits, stop: Stop)
where
    M: Fn(ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Unpin + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    accept_loop(listener, None, make_service, limits, stop).await;
}

/// [`serve`], in TLS: each connection's handshake must be done within the
/// header timeout of accept, or the connection is closed and counted.
/// TLS connections do not park.
pub async fn serve_tls<M, S, B>(
    listener: TcpListener,
    tls: TlsDoor,
    make_service: M,
    limits: Limits,
    stop: Stop,
) where
    M: Fn(ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Unpin + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    accept_loop(listener, Some(tls), make_service, limits, stop).await;
}

async fn accept_loop<M, S, B>(
    listener: TcpListener,
    tls: Option<TlsDoor>,
    make_service: M,
    limits: Limits,
    stop: Stop,
) where
    M: Fn(ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Unpin + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let header_timeout = limits.header_timeout;
    let mut http1 = http1::Builder::new();
    // hyper's header read timeout needs a timer. It runs from when hyper
    // starts reading a head: after the first bytes for the first request,
    // after the previous response for the next ones.
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut http2 = http2::Builder::new(BoxingExecutor);
    http2.timer(TokioTimer::new());
    let builders = Arc::new(Builders { http1, http2 });
    let open = Arc::new(OpenConnections::default());
    // The sweep ends with the accept loop, however it returns. A TLS
    // listener's connections never park: it needs none.
    let sweeping = CancellationToken::new();
    let _sweeping = sweeping.clone().drop_guard();
    if tls.is_none() {
        tokio::spawn(sweep_idle(Arc::clone(&open), sweeping));
    }
    let local = listener.local_addr().ok();
    let mut failures = AcceptFailures::default();

    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.drain.cancelled() => break,
            _ = stop.reset.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection_error(&e) => continue,
                Err(e) => {
                    // The listener stays readable, so retrying at once
                    // would spin; one line per run of failures, not per try.
                    if failures.failed() {
                        warn!(
                            error = %e,
                            listener = ?local,
                            "accept failed; retrying every {ACCEPT_BACKOFF:?} until it succeeds"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Some(failed) = failures.succeeded() {
            info!(listener = ?local, failed, "accepting connections again");
        }
        // The deadline of the first request's head runs from here.
        let first_head = tokio::time::sleep(header_timeout);
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let control = Arc::new(ConnControl::default());
        let registration = Arc::new(open.register(Arc::clone(&control)));
        let service = Greeting {
            service: make_service(ConnInfo {
                peer,
                control: Arc::clone(&control),
                registration: Arc::clone(&registration),
            }),
            control: Arc::clone(&control),
        };
        let stream = AbortableStream {
            stream: SendStream::new(stream),
            control: Arc::clone(&control),
            read_ahead: Bytes::new(),
        };
        let conn = Conn {
            control,
            peer,
            header_timeout,
            builders: Arc::clone(&builders),
        };
        // Two kinds of task: a plain connection's carries nothing of TLS.
        match &tls {
            None => tokio::spawn(async move {
                let _registration = registration;
                conn.run(stream, service, first_head).await;
            }),
            Some(door) => {
                let door = door.clone();
                tokio::spawn(async move {
                    let _registration = registration;
                    conn.run_tls(&door, stream, service, first_head).await;
                })
            }
        };
    }

    // Stop accepting at once: the listening socket closes here.
    drop(listener);
    if stop.reset.is_cancelled() {
        open.end_all(Ending::Reset);
        return;
    }
    open.drain_all();
    let grace = stop.grace;
    if tokio::time::timeout(grace, open.all_closed())
        .await
        .is_err()
    {
        warn!(listener = ?local, ?grace, "grace period over; closing the connections still open");
        open.end_all(Ending::Close);
    }
}

/// hyper's builders, shared by an accept loop's connections.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<BoxingExecutor>,
}

/// Looks for idle connections every [`IDLE_SWEEP`] until `stop`; with no
/// connection open and no nudge due, waits for one to open.
async fn sweep_idle(open: Arc<OpenConnections>, stop: CancellationToken) {
    let mut every = tokio::time::interval(IDLE_SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nudges = Nudges::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut parked = false;
        for control in open.lock().controls.values() {
            parked |= control.sweep();
        }
        nudges.after_sweep(parked);
        if !nudges.due() {
            let opened = open.opened.notified();
            let mut opened = pin!(opened);
            // Listening before looking: an open in between is not missed.
            opened.as_mut().enable();
            if open.lock().controls.is_empty() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = opened => every.reset(),
                }
            }
        }
    }
}

/// When the sweep nudges the allocator: every [`NUDGE_EVERY`] sweeps for
/// [`NUDGE_FOR`] after the last sweep that asked a connection to park.
#[derive(Debug, Default)]
struct Nudges {
    /// Sweeps left in which nudges are due.
    left: u32,
}

impl Nudges {
    const SWEEPS: u32 = NUDGE_FOR.as_millis() as u32 / IDLE_SWEEP.as_millis() as u32;

    /// Counts a sweep, nudging when one is due; `true` if it nudged.
    fn after_sweep(&mut self, parked: bool) -> bool {
        if parked {
            self.left = Self::SWEEPS;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        let nudge = self.left % NUDGE_EVERY == 0;
        if nudge {
            nudge_allocator();
        }
        nudge
    }

    fn due(&self) -> bool {
        self.left != 0
    }
}

/// Lets the allocator give back what parked connections freed. mimalloc
/// (the binary's allocator, src/main.rs) returns a freed page to the
/// system only once its purge delay (1 s) is over, and only when a later
/// free of a whole page runs the purge; a process that is quiet after its
/// connections park never does, and keeps ~16 KB per parked connection
/// resident. A block past its largest size class has a page of its own,
/// which its free gives back at once, running the purge (of pages freed
/// by any thread). The block is never touched: it costs no resident
/// memory. With another allocator this is one allocation and free.
fn nudge_allocator() {
    let block: Vec<u8> = Vec::with_capacity(NUDGE_BYTES);
    // Not optimized away: the point is the allocator's work.
    drop(std::hint::black_box(block));
}

/// One connection's task.
struct Conn {
    control: Arc<ConnControl>,
    peer: SocketAddr,
    header_timeout: Duration,
    builders: Arc<Builders>,
}

/// How hyper's HTTP/1.1 connection ended.
enum Served {
    /// The socket is closed, or closes when the connection is dropped.
    Closed,
    /// Idle and asked to park: the socket is still open.
    Parked,
}

/// The deadline of the head a connection waits for while hyper does not
/// time it: the first one, and the next one after a park.
struct HeadDeadline<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// The service's request count when the wait began; `None`: not waiting.
    waiting_since: Option<u64>,
}

impl HeadDeadline<'_> {
    /// Whether the head is late; the wait is over once the service sees a
    /// request.
    fn passed(&mut self, control: &ConnControl, cx: &mut Context<'_>) -> bool {
        let Some(since) = self.waiting_since else {
            return false;
        };
        if control.requests() != since {
            self.waiting_since = None;
            return false;
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }

    fn wait_until(&mut self, deadline: Instant, control: &ConnControl) {
        self.sleep.as_mut().reset(deadline);
        self.waiting_since = Some(control.requests());
    }
}

impl Conn {
    /// Serves a connection of a plain listener: HTTP/1.1, or h2c.
    async fn run<S, B>(self, mut stream: AbortableStream, service: Greeting<S>, first_head: Sleep)
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + Unpin + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut deadline = HeadDeadline {
            sleep: pin!(first_head),
            waiting_since: Some(0),
        };
        let sniffed = {
            let mut sniff = pin!(sniff(&mut stream));
            self.watch(&mut deadline, |cx| sniff.as_mut().poll(cx))
                .await
        };
        match sniffed {
            Some(Ok(false)) => {
                self.control.may_park();
                self.serve_http1(stream, service, deadline).await;
            }
            Some(Ok(true)) => self.serve_h2(stream, service, deadline).await,
            Some(Err(e)) => debug!(error = %e, peer = %self.peer, "connection ended with an error"),
            None => {}
        }
    }

    /// Polls `poll` until it is ready, unless a drain, an abort or the
    /// head's deadline ends the wait first (`None`).
    async fn watch<T>(
        &self,
        deadline: &mut HeadDeadline<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Option<T> {
        poll_fn(|cx| {
            // Registered before the state is read: a change made after
            // the read wakes this task again.
            self.control.task.register(cx.waker());
            match self.control.state() {
                State::Open | State::Idle => {}
                State::Drain | State::Ended(_) => return Poll::Ready(None),
            }
            if let Poll::Ready(value) = poll(cx) {
                return Poll::Ready(Some(value));
            }
            if deadline.passed(&self.control, cx) {
                self.late();
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    fn late(&self) {
        debug!(peer = %self.peer, header_timeout = ?self.header_timeout, "closing a connection whose request head did not come in time");
    }

    /// Serves a connection of a TLS listener: makes the handshake within
    /// the first head's deadline, then serves what ALPN agreed: h2, or
    /// HTTP/1.1 (also when the client offered nothing: prior knowledge does
    /// not apply to TLS, RFC 9113 §3.3). Neither parks.
    async fn run_tls<S, B>(
        self,
        door: &TlsDoor,
        stream: AbortableStream,
        service: Greeting<S>,
        first_head: Sleep,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + Unpin + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let mut deadline = HeadDeadline {
            sleep: pin!(first_head),
            waiting_since: Some(0),
        };
        let shaken = handshake(
            &door.acceptor,
            stream,
            &self.control,
            deadline.sleep.as_mut(),
        );
        let stream = match shaken.await {
            Handshake::Done(stream) => stream,
            Handshake::Failed(failure) => {
                debug!(peer = %self.peer, reason = failure.as_str(), "TLS handshake failed");
                door.failures[failure as usize].inc();
                return;
            }
            Handshake::Ended => return,
        };
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            return self.serve_h2(stream, service, deadline).await;
        }
        // Boxed, as a plain connection's is. Never asked to park (the
        // control is not parkable): it ends as it closes, or is upgraded.
        let mut connection = Box::new(
            self.builders
                .http1
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades(),
        );
        self.serve_session(&mut connection, &mut deadline).await;
    }

    /// Serves plain HTTP/1.1, parking between requests when idle. Upgrades
    /// are enabled: after a `101`, hyper hands the socket over
    /// (`hyper::upgrade::on`) and its connection, and this, ends.
    async fn serve_http1<S, B>(
        &self,
        mut stream: AbortableStream,
        mut service: Greeting<S>,
        mut deadline: HeadDeadline<'_>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        loop {
            // Boxed, so that a parked connection does not keep its room.
            let mut connection = Box::new(
                self.builders
                    .http1
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
            match self.serve_session(&mut connection, &mut deadline).await {
                Served::Closed => return,
                Served::Parked => {}
            }
            // hyper flushed its last response and did not shut the socket.
            self.control.set_parking(false);
            // `None`: upgraded, and the socket is the tunnel's. Not to be
            // seen here: a connection whose last request asked for an
            // upgrade is never idle, so never asked to park.
            let Some(parts) = connection.into_parts() else {
                return;
            };
            self.control.parks.fetch_add(1, Ordering::Relaxed);
            service = parts.service;
            stream = parts.io.into_inner();
            // Even empty, hyper's read buffer holds its whole allocation.
            if parts.read_buf.is_empty() {
                drop(parts.read_buf);
            } else {
                stream.read_ahead = parts.read_buf;
            }
            // The next head is timed here again, from when the connection
            // went idle: at least one sweep interval ago.
            deadline.wait_until(
                Instant::now() + self.header_timeout.saturating_sub(IDLE_SWEEP),
                &self.control,
            );
            if stream.read_ahead.is_empty() {
                let socket = stream.stream.get_ref();
                // Readable also when the client closed: hyper then ends quietly.
                let readable = self.watch(&mut deadline, |cx| socket.poll_read_ready(cx));
                if readable.await.is_none() {
                    return;
                }
            }
            self.control.woke();
            // Unless a drain or an abort came first.
            if !self.control.switch(State::Idle, State::Open) {
                return;
            }
        }
    }

    /// Runs one hyper HTTP/1.1 connection until it ends, is upgraded, or
    /// parks (only a parkable connection, asked by the sweep).
    async fn serve_session<I, S, B>(
        &self,
        connection: &mut http1::UpgradeableConnection<TokioIo<I>, Greeting<S>>,
        deadline: &mut HeadDeadline<'_>,
    ) -> Served
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let control = &*self.control;
        let first_request = control.requests();
        let mut draining = false;
        let mut parking = false;
        let ended = poll_fn(|cx| {
            // Registered before the state is read: a change made after
            // the read wakes this task again.
            control.task.register(cx.waker());
            match control.state() {
                State::Open => {}
                State::Idle if parking => {}
                // hyper's connection is idle only between two requests: its
                // graceful shutdown before the first one would answer that
                // one with `connection: close`. The sweep asks only
                // parkable connections; a TLS one takes `Idle` as `Open`.
                State::Idle
                    if control.requests() != first_request
                        && control.idle()
                        && control.parkable.load(Ordering::Relaxed) =>
                {
                    parking = true;
                    control.set_parking(true);
                    Pin::new(&mut *connection).graceful_shutdown();
                }
                // A request came since the sweep looked.
                State::Idle => {
                    control.woke();
                    control.switch(State::Idle, State::Open);
                }
                State::Drain if !draining => {
                    draining = true;
                    Pin::new(&mut *connection).graceful_shutdown();
                }
                State::Drain => {}
                // Returning drops the connection: the socket closes as
                // the ending asks, whatever the connection was doing.
                State::Ended(_) => return Poll::Ready(Ok(Served::Closed)),
            }
            let polled = Pin::new(&mut *connection).poll(cx);
            if polled.is_pending() && deadline.passed(control, cx) {
                self.late();
                return Poll::Ready(Ok(Served::Closed));
            }
            polled.map_ok(|()| {
                if parking {
                    Served::Parked
                } else {
                    Served::Closed
                }
            })
        })
        .await;
        ended.unwrap_or_else(|e| {
            debug!(error = %e, peer = %self.peer, "connection ended with an error");
            Served::Closed
        })
    }

    /// Serves HTTP/2 (h2c, or h2 over TLS), which never parks: its streams
    /// are many and long-lived.
    async fn serve_h2<I, S, B>(
        &self,
        stream: I,
        service: Greeting<S>,
        mut deadline: HeadDeadline<'_>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let control = &*self.control;
        let mut connection = Box::pin(
            self.builders
                .http2
                .serve_connection(TokioIo::new(stream), service),
        );
        let mut draining = false;
        let ended = poll_fn(|cx| {
            control.task.register(cx.waker());
            match control.state() {
                // The sweep does not ask an h2 connection to park.
                State::Open | State::Idle => {}
                State::Drain if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                State::Drain => {}
                State::Ended(_) => return Poll::Ready(Ok(())),
            }
            let polled = connection.as_mut().poll(cx);
            if polled.is_pending() && deadline.passed(control, cx) {
                self.late();
                return Poll::Ready(Ok(()));
            }
            polled
        })
        .await;
        if let Err(e) = ended {
            debug!(error = %e, peer = %self.peer, "connection ended with an error");
        }
    }
}

/// Reads until the first bytes tell h2c's preface from HTTP/1.1, as
/// hyper-util's auto builder does: `true` for h2c. What was read is put back
/// for hyper to read first.
async fn sniff(stream: &mut AbortableStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let h2 = loop {
        let read = stream.read(&mut buf[filled..]).await?;
        let from = filled;
        filled += read;
        if read == 0 || buf[from..filled] != H2_PREFACE[from..filled] {
            break false;
        }
        if filled == H2_PREFACE.len() {
            break true;
        }
    };
    stream.read_ahead = Bytes::copy_from_slice(&buf[..filled]);
    Ok(h2)
}

/// How a TLS handshake ended.
enum Handshake {
    /// Boxed: the TLS state is over a kilobyte, and it lives as long as
    /// the connection anyway.
    Done(Box<TlsStream<AbortableStream>>),
    Failed(HandshakeFailure),
    /// Shutdown ended the connection first.
    Ended,
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a client that speaks plain HTTP to a TLS port is told, as nginx
/// tells it, before the connection closes.
const TLS_REQUIRED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
content-type: application/json\r\nx-faultline-error: tls_required\r\ncontent-length: 83\r\n\r\n\
{\"error\":\"tls_required\",\"message\":\"this port speaks TLS: use https:// to reach it\"}";

/// Makes the server side of a TLS handshake within `deadline`, unless the
/// connection's control ends it first.
async fn handshake(
    acceptor: &TlsAcceptor,
    io: AbortableStream,
    control: &ConnControl,
    mut deadline: Pin<&mut Sleep>,
) -> Handshake {
    let shake = async {
        // A look at the first byte tells a TLS client from a plain one,
        // which gets an answer it can read rather than a TLS alert.
        let mut first = [0u8; 1];
        match io.stream.get_ref().peek(&mut first).await {
            Ok(0) | Err(_) => return Err(HandshakeFailure::Closed),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => {
                let socket = io.stream.get_ref();
                // What has arrived is read first: closing a socket with
                // unread bytes sends an RST, which can lose the answer.
                let mut unread = [0u8; 4096];
                while matches!(socket.try_read(&mut unread), Ok(n) if n > 0) {}
                let _ = socket.try_write(TLS_REQUIRED);
                return Err(HandshakeFailure::NotTls);
            }
            Ok(_) => {}
        }
        acceptor.accept(io).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                HandshakeFailure::Closed
            } else {
                HandshakeFailure::Protocol
            }
        })
    };
    tokio::select! {
        shaken = shake => match shaken {
            Ok(stream) => Handshake::Done(Box::new(stream)),
            Err(failure) => Handshake::Failed(failure),
        },
        () = &mut deadline => Handshake::Failed(HandshakeFailure::Timeout),
        () = ended(control) => Handshake::Ended,
    }
}

/// Resolves once the connection's control asks it to drain or end.
async fn ended(control: &ConnControl) {
    poll_fn(|cx| {
        control.task.register(cx.waker());
        match control.state() {
            // A TLS connection is never asked to park.
            State::Open | State::Idle => Poll::Pending,
            State::Drain | State::Ended(_) => Poll::Ready(()),
        }
    })
    .await;
}

/// The controls of one accept loop's open connections.
#[derive(Debug, Default)]
struct OpenConnections {
    /// Touched when a connection opens and closes, never per request.
    registry: Mutex<Registry>,
    /// Told when the last connection closes.
    emptied: Notify,
    /// Told when a connection opens.
    opened: Notify,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    /// By connection number.
    controls: HashMap<u64, Arc<ConnControl>>,
}

impl OpenConnections {
    /// Keeps `control` until the returned registration is dropped.
    fn register(self: &Arc<Self>, control: Arc<ConnControl>) -> Registration {
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.controls.insert(id, control);
        drop(registry);
        self.opened.notify_waiters();
        Registration {
            open: Arc::clone(self),
            id,
        }
    }

    fn drain_all(&self) {
        for control in self.lock().controls.values() {
            control.drain();
        }
    }

    fn end_all(&self, ending: Ending) {
        for control in self.lock().controls.values() {
            control.abort(ending);
        }
    }

    async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            let mut emptied = pin!(emptied);
            // Listening before looking: a close in between is not missed.
            emptied.as_mut().enable();
            if self.lock().controls.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The map stays whole whatever panicked while holding it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An open connection's place in its accept loop's open connections, given
/// up on drop.
#[derive(Debug)]
pub struct Registration {
    open: Arc<OpenConnections>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.open.lock();
        registry.controls.remove(&self.id);
        if registry.controls.is_empty() {
            self.open.emptied.notify_waiters();
        }
    }
}

/// Failed accepts in a row, so a run of them is logged once.
#[derive(Debug, Default)]
struct AcceptFailures {
    in_a_row: u64,
}

impl AcceptFailures {
    /// Counts a failure; `true` when it starts a run.
    fn failed(&mut self) -> bool {
        self.in_a_row += 1;
        self.in_a_row == 1
    }

    /// Ends the run, if any: how many accepts failed in it.
    fn succeeded(&mut self) -> Option<u64> {
        match std::mem::take(&mut self.in_a_row) {
            0 => None,
            failed => Some(failed),
        }
    }
}

/// The executor of the tasks hyper spawns for HTTP/2: one per stream on
/// the client side (the request's whole pipeline) and one or two per
/// request on an upstream connection (waiting for the response, sending
/// the body). Each is boxed before tokio takes it: tokio moves a task's
/// future by value through several calls and again when it stores the
/// output, and these futures are kilobytes (hyper's upstream task enum is
/// as large as the connection it may also hold), so a box moved as a
/// pointer costs less than the copies (`scripts/grpcbench.sh`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// A connection's service, which tells its [`ConnControl`] that a request
/// head has arrived.
struct Greeting<S> {
    service: S,
    control: Arc<ConnControl>,
}

// The request future is not boxed per request: it would save hyper's
// inline slot for it (about 2.5 KB per idle keep-alive connection) but
// copy the whole 2.2 KB future into a fresh box on every request, about
// 500 instructions of 29,000 (callgrind, `wrk`-style keep-alive load). A
// parked connection gives that slot back anyway. Wrapping it to wrap the
// response body costs about 200 instructions per request, most of them in
// copies of the future hyper now makes on its way into that slot.
impl<S, B> Service<Request<Incoming>> for Greeting<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Answered<B>>;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    #[inline(always)]
    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // A body hyper may still read after the response, or an upgrade
        // (hyper's `OnUpgrade`, there when the request asks for one) that
        // takes the socket after it: not idle once answered.
        let unfinished =
            !request.body().is_end_stream() || request.extensions().get::<OnUpgrade>().is_some();
        self.control.request_started(unfinished);
        // Built in place: a future made first and moved in costs a copy.
        Answering {
            control: Some(Arc::clone(&self.control)),
            future: self.service.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, whose response's body tells the connection when
    /// hyper is done with it.
    struct Answering<F> {
        #[pin]
        future: F,
        control: Option<Arc<ConnControl>>,
    }
}

impl<F, B, E> Future for Answering<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Answered<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.future.poll(cx))?;
        let answer = Answer(this.control.take());
        Poll::Ready(Ok(response.map(|body| Answered {
            body,
            _answer: answer,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its response answered when hyper drops
    /// it: sent whole, or not wanted (`HEAD`).
    struct Answered<B> {
        #[pin]
        body: B,
        _answer: Answer,
    }
}

/// Counts a response answered on drop.
struct Answer(Option<Arc<ConnControl>>);

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(control) = &self.0 {
            control.answered();
        }
    }
}

impl<B: Body> Body for Answered<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Accept errors that concern one connection, not the listener.
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A client socket that ends with an RST instead of a FIN, or with garbage
/// before the FIN, when its connection was aborted that way; that gives
/// bytes read ahead back first; and that stays open when hyper ends its
/// connection to park.
struct AbortableStream {
    stream: SendStream,
    control: Arc<ConnControl>,
    /// Read before hyper's connection: the bytes that told HTTP/1.1 from
    /// h2c, or what the last one had read past its last request.
    read_ahead: Bytes,
}

impl Drop for AbortableStream {
    fn drop(&mut self) {
        match self.control.state() {
            // Zero linger: close() sends RST and discards unsent data.
            State::Ended(Ending::Reset) => {
                let _ = self.stream.get_ref().set_zero_linger();
            }
            // A few bytes fit the socket buffer: no need to wait for writability.
            State::Ended(Ending::Garbage) => {
                let _ = self.stream.get_ref().try_write(GARBAGE_BYTES);
            }
            State::Ended(Ending::Close) | State::Open | State::Idle | State::Drain => {}
        }
    }
}

impl AsyncRead for AbortableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let len = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead[..len]);
            this.read_ahead.advance(len);
            if this.read_ahead.is_empty() {
                // Lets go of what held them: hyper's last read buffer.
                this.read_ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AbortableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper has flushed: parking keeps the socket as it is.
        if self.control.parking() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_the_atomic() {
        let states = [
            State::Open,
            State::Idle,
            State::Drain,
            State::Ended(Ending::Reset),
            State::Ended(Ending::Close),
            State::Ended(Ending::Garbage),
        ];
        for state in states {
            assert_eq!(State::from_u8(state.to_u8()), state);
        }
    }

    #[test]
    fn a_run_of_accept_failures_is_reported_once() {
        let mut failures = AcceptFailures::default();
        assert_eq!(failures.succeeded(), None);
        assert!(failures.failed(), "the first failure is logged");
        assert!(!failures.failed());
        assert!(!failures.failed());
        assert_eq!(failures.succeeded(), Some(3));
        assert_eq!(failures.succeeded(), None);
        assert!(failures.failed(), "a new run is logged again");
    }

    #[test]
    fn nudges_come_every_few_sweeps_until_long_after_the_last_park() {
        let mut nudges = Nudges::default();
        assert!(
            !nudges.after_sweep(false),
            "nothing parked, nothing to give back"
        );
        assert!(!nudges.due());
        let mut nudged = u32::from(nudges.after_sweep(true));
        let mut sweeps = 1;
        while nudges.due() {
            nudged += u32::from(nudges.after_sweep(false));
            sweeps += 1;
        }
        assert_eq!(sweeps, Nudges::SWEEPS);
        assert!(IDLE_SWEEP * sweeps >= NUDGE_FOR);
        assert_eq!(nudged, Nudges::SWEEPS / NUDGE_EVERY);
        // A park while nudges are due starts the count again.
        nudges.after_sweep(true);
        nudges.after_sweep(false);
        nudges.after_sweep(true);
        assert!(nudges.due());
    }

    /// One request, answered; the sweeps until the one that asks to park.
    fn sweeps_to_park(control: &ConnControl) -> u32 {
        control.may_park();
        control.request_started(false);
        control.answered();
        (1..=64)
            .find(|_| control.sweep())
            .expect("the connection never parked")
    }

    #[test]
    fn a_client_that_comes_back_soon_after_a_park_gets_more_patience() {
        let control = ConnControl::default();
        // The first sweep sees the answer, the next one a whole quiet interval.
        assert_eq!(sweeps_to_park(&control), 2);
        // Back before the next sweep: a park that saved nothing.
        control.woke();
        assert!(control.switch(State::Idle, State::Open));
        assert_eq!(sweeps_to_park(&control), 3);
        // Patience doubles up to its limit.
        for _ in 0..8 {
            control.woke();
            assert!(control.switch(State::Idle, State::Open));
            sweeps_to_park(&control);
        }
        control.woke();
        assert!(control.switch(State::Idle, State::Open));
        assert_eq!(sweeps_to_park(&control), 1 + u32::from(MAX_PATIENCE));
        // Parked four times as long as it waited: half the patience.
        for _ in 0..4 * MAX_PATIENCE {
            assert!(!control.sweep(), "parked: asked once");
        }
        control.woke();
        assert!(control.switch(State::Idle, State::Open));
        assert_eq!(sweeps_to_park(&control), 1 + u32::from(MAX_PATIENCE / 2));
    }

    #[test]
    fn only_a_parkable_connection_is_asked_to_park() {
        let control = ConnControl::default();
        control.request_started(false);
        control.answered();
        assert!((0..64).all(|_| !control.sweep()), "h2, TLS: never asked");
        assert_eq!(control.state(), State::Open);
        control.may_park();
        assert!((0..64).any(|_| control.sweep()));
    }

    #[test]
    fn a_request_that_asked_for_an_upgrade_keeps_its_connection_from_parking() {
        let control = ConnControl::default();
        control.may_park();
        control.request_started(true);
        control.answered();
        assert!(
            (0..64).all(|_| !control.sweep()),
            "the socket may be a tunnel's"
        );
        // The next request, if the upgrade was refused, frees it again.
        control.request_started(false);
        control.answered();
        assert!((0..64).any(|_| control.sweep()));
    }

    #[test]
    fn a_tunnel_ends_only_when_its_connection_is_ended() {
        let control = ConnControl::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(control.poll_ended(&mut cx).is_pending());
        control.drain();
        assert!(
            control.poll_ended(&mut cx).is_pending(),
            "a drain lets it run"
        );
        control.abort(Ending::Reset);
        assert_eq!(control.poll_ended(&mut cx), Poll::Ready(Ending::Reset));
    }

    #[test]
    fn a_drain_does_not_undo_an_abort() {
        let control = ConnControl::default();
        control.abort(Ending::Garbage);
        control.drain();
        assert_eq!(control.state(), State::Ended(Ending::Garbage));
        let control = ConnControl::default();
        control.drain();
        assert_eq!(control.state(), State::Drain);
    }
}
