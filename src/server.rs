//! The one accept loop every listener runs, and the per-connection control
//! that lets the request path fail a connection on purpose.
//!
//! Each connection is served by hyper-util's auto builder (HTTP/1.1 and h2c)
//! under a [`GracefulShutdown`] watcher. A [`ConnControl`] rides along: when
//! the request path asks for an abort, the connection task drops the
//! connection, and [`AbortableStream`] decides on drop whether the socket
//! ends with a FIN or, with zero linger, an RST.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::fault::AbortMode;

/// [`ConnControl`] states: 0 is open.
const RESET: u8 = 1;
const CLOSE: u8 = 2;
const GARBAGE: u8 = 3;

/// What an `abort` in `garbage` mode sends: not HTTP by any reading.
const GARBAGE_BYTES: &[u8] =
    b"\x00\x17\xfe\xff\x16garbage: faultline injected bytes that are not HTTP\r\n\x00";

/// How long the accept loop waits after an error such as running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Lets the request path end its connection on purpose.
#[derive(Debug, Default)]
pub struct ConnControl {
    /// 0 (open), [`RESET`], [`CLOSE`] or [`GARBAGE`].
    abort: AtomicU8,
    notify: Notify,
}

impl ConnControl {
    /// Ends the connection with no response: RST for `Reset`, FIN for `Close`.
    pub fn abort(&self, mode: AbortMode) {
        let code = match mode {
            AbortMode::Reset => RESET,
            AbortMode::Close | AbortMode::Empty => CLOSE,
            AbortMode::Garbage => GARBAGE,
        };
        self.abort.store(code, Ordering::Release);
        self.notify.notify_one();
    }

    fn mode(&self) -> u8 {
        self.abort.load(Ordering::Acquire)
    }

    async fn aborted(&self) {
        self.notify.notified().await;
    }
}

/// What the request path knows of the connection a request came in on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub control: Arc<ConnControl>,
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

/// Accepts connections until `stop` says so: then lets in-flight requests
/// finish for at most the grace period before the remaining connections are
/// dropped, or resets them all at once.
pub async fn serve<M, S, B>(listener: TcpListener, make_service: M, stop: Stop)
where
    M: Fn(ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer makes hyper enforce its header read timeout (slow-loris clients).
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    // Cancelled when the grace period is over: connections still open are dropped.
    let force_close = CancellationToken::new();
    let local = listener.local_addr().ok();

    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.drain.cancelled() => break,
            _ = stop.reset.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection_error(&e) => continue,
                Err(e) => {
                    warn!(error = %e, listener = ?local, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let control = Arc::new(ConnControl::default());
        let service = make_service(ConnInfo {
            peer,
            control: Arc::clone(&control),
        });
        let io = TokioIo::new(AbortableStream {
            stream,
            control: Arc::clone(&control),
        });
        let connection = graceful.watch(builder.serve_connection(io, service).into_owned());
        let force_close = force_close.clone();
        let reset = stop.reset.clone();
        tokio::spawn(async move {
            tokio::select! {
                // Biased, this branch first: when shutdown or a refuse rule
                // ends the connection, dropping the graceful watcher makes the
                // connection branch ready too, and the ending must win.
                biased;
                // The mode is set inside the branch's future: select! drops the
                // connection (closing the socket) before it runs a handler.
                () = async {
                    force_close.cancelled().await;
                    if reset.is_cancelled() {
                        control.abort(AbortMode::Reset);
                    }
                } => {}
                // Dropping the connection closes the socket, as the abort asked.
                () = control.aborted() => {}
                result = connection => {
                    if let Err(e) = result {
                        debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
            }
        });
    }

    // Stop accepting at once: the listening socket closes here.
    drop(listener);
    if stop.reset.is_cancelled() {
        force_close.cancel();
        return;
    }
    let grace = stop.grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(listener = ?local, ?grace, "grace period over; dropping the connections still open");
        force_close.cancel();
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

/// A client socket that ends with an RST instead of a FIN when its
/// connection was aborted in `reset` mode.
struct AbortableStream {
    stream: TcpStream,
    control: Arc<ConnControl>,
}

impl Drop for AbortableStream {
    fn drop(&mut self) {
        match self.control.mode() {
            // Zero linger: close() sends RST and discards unsent data.
            RESET => {
                let _ = self.stream.set_zero_linger();
            }
            // A few bytes fit the socket buffer: no need to wait for writability.
            GARBAGE => {
                let _ = self.stream.try_write(GARBAGE_BYTES);
            }
            _ => {}
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
