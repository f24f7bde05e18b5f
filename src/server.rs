//! The one accept loop every listener runs, and the per-connection control
//! that lets the request path, or shutdown, end a connection.
//!
//! Each connection is served by hyper-util's auto builder (HTTP/1.1 and h2c,
//! upgrades enabled) in a task of its own, with a [`ConnControl`] riding
//! along. The task looks
//! at the control each time it is woken, before the connection: a drain
//! asks hyper for a graceful close; an abort drops the connection, and
//! [`AbortableStream`] decides on drop whether the socket ends with a FIN
//! or, with zero linger, an RST. Looking costs one atomic load and a waker
//! registration, where waiting on shutdown signals (`Notify`, a watch
//! channel) would take a lock each time the connection wakes, several times
//! per request. The accept loop keeps every open connection's control, so
//! shutdown can reach them all.
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
//! file descriptor for long. hyper-util first reads to tell HTTP/1.1 from
//! h2c, and that read has no timeout of its own, so the first deadline is
//! kept here, from accept until the service sees the first request.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::time::Sleep;
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
        }
    }

    fn from_u8(code: u8) -> State {
        match code {
            0 => State::Open,
            1 => State::Drain,
            2 => State::Ended(Ending::Reset),
            3 => State::Ended(Ending::Close),
            4 => State::Ended(Ending::Garbage),
            // Only `to_u8` stores into `ConnControl::state`.
            _ => unreachable!("connection state {code} was never stored"),
        }
    }
}

/// What an [`Ending::Garbage`] sends: not HTTP by any reading.
const GARBAGE_BYTES: &[u8] =
    b"\x00\x17\xfe\xff\x16garbage: faultline injected bytes that are not HTTP\r\n\x00";

/// How long the accept loop waits after an error such as running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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

/// Lets the request path, or shutdown, end a connection.
#[derive(Debug, Default)]
pub struct ConnControl {
    /// A [`State`], as [`State::to_u8`] writes it.
    state: AtomicU8,
    /// The connection's task, woken when the state changes.
    task: AtomicWaker,
    /// Whoever carries the connection on after an upgrade, woken by an abort.
    tunnel: AtomicWaker,
    /// The first request's head has arrived: its deadline is over.
    greeted: AtomicBool,
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
            State::Open | State::Drain => Poll::Pending,
        }
    }

    /// Lets the request in flight finish, then closes the connection.
    fn drain(&self) {
        // An abort already asked for stays.
        let _ = self.state.compare_exchange(
            State::Open.to_u8(),
            State::Drain.to_u8(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.task.wake();
    }

    fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Set and read on the connection's own task: no ordering needed.
    fn greet(&self) {
        self.greeted.store(true, Ordering::Relaxed);
    }

    fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Relaxed)
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
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
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
pub async fn serve_tls<M, S, B>(
    listener: TcpListener,
    tls: TlsDoor,
    make_service: M,
    limits: Limits,
    stop: Stop,
) where
    M: Fn(ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
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
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let header_timeout = limits.header_timeout;
    let mut builder = auto::Builder::new(BoxingExecutor);
    // hyper's header read timeout needs a timer. It runs from when hyper
    // starts reading a head: after the first bytes for the first request,
    // after the previous response for the next ones.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    // Shared by the connection tasks, which start hyper themselves (a TLS
    // connection only after its handshake).
    let builder = Arc::new(builder);
    let open = Arc::new(OpenConnections::default());
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
        let io = AbortableStream {
            stream: SendStream::new(stream),
            control: Arc::clone(&control),
        };
        let builder = Arc::clone(&builder);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _registration = registration;
            let mut first_head = pin!(first_head);
            let Some(door) = tls else {
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                return drive(connection, &control, first_head, peer, header_timeout).await;
            };
            match handshake(&door.acceptor, io, &control, first_head.as_mut()).await {
                Handshake::Done(stream) => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    drive(connection, &control, first_head, peer, header_timeout).await;
                }
                Handshake::Failed(failure) => {
                    debug!(%peer, reason = failure.as_str(), "TLS handshake failed");
                    door.failures[failure as usize].inc();
                }
                Handshake::Ended => {}
            }
        });
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

/// Serves one connection until it ends: hyper's connection, the control's
/// drain and abort, and the first head's deadline (`first_head`, running
/// since accept) until the service sees a request.
/// Upgrades are enabled: after a `101`, hyper hands the socket over
/// (`hyper::upgrade::on`) and its connection, and this, ends.
async fn drive<I, S, B>(
    connection: auto::UpgradeableConnection<'_, TokioIo<I>, Greeting<S>, BoxingExecutor>,
    control: &ConnControl,
    first_head: Pin<&mut Sleep>,
    peer: SocketAddr,
    header_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut connection = pin!(connection);
    let mut first_head = Some(first_head);
    let mut draining = false;
    let ended = poll_fn(|cx| {
        // Registered before the state is read: a change made after
        // the read wakes this task again.
        control.task.register(cx.waker());
        match control.state() {
            State::Open => {}
            State::Drain if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            State::Drain => {}
            // Returning drops the connection: the socket closes as
            // the ending asks, whatever the connection was doing.
            State::Ended(_) => return Poll::Ready(Ok(())),
        }
        let polled = connection.as_mut().poll(cx);
        if polled.is_pending() {
            if let Some(deadline) = first_head.as_mut() {
                if control.greeted() {
                    // Later heads are hyper's to time.
                    first_head = None;
                } else if deadline.as_mut().poll(cx).is_ready() {
                    debug!(%peer, ?header_timeout, "closing a connection that sent no request");
                    return Poll::Ready(Ok(()));
                }
            }
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        debug!(error = %e, %peer, "connection ended with an error");
    }
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
            State::Open => Poll::Pending,
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
// 500 instructions of 29,000 (callgrind, `wrk`-style keep-alive load).
impl<S, R> Service<R> for Greeting<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> S::Future {
        self.control.greet();
        self.service.call(request)
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
/// before the FIN, when its connection was aborted that way.
struct AbortableStream {
    stream: SendStream,
    control: Arc<ConnControl>,
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
            State::Ended(Ending::Close) | State::Open | State::Drain => {}
        }
    }
}

impl AsyncRead for AbortableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
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
