//! HTTP/2 to upstreams: h2 over TLS (ALPN) and h2c by prior knowledge.
//!
//! Each HTTP/2 upstream gets at most `[proxy] h2_connections` connections,
//! opened as requests need them and shared by every request as streams,
//! each connection driven by a task of its own. A request takes the next
//! live connection in turn: one atomic load of the list and one increment,
//! no lock. Only opening a connection, or replacing one that closed (an
//! upstream's GOAWAY, a failed keep-alive ping, a broken socket), takes the
//! upstream's dial lock. The server's `max_concurrent_streams` is respected
//! by h2: streams past it wait for one to finish. Keep-alive pings
//! ([`PING_INTERVAL`]) notice a dead upstream between requests.
//!
//! The `h2` crate is driven directly, not through hyper's
//! `client::conn::http2`: hyper hands each request to the connection's task
//! through a channel, spawns a task per response and one per request body,
//! and sends the response back through a oneshot, about a tenth of a gRPC
//! call's instructions through the proxy. Here the request's own task
//! opens the stream, and sends the body ([`Pump`]) while it awaits the
//! response; only a body still streaming when the response comes gets a
//! task of its own.
//!
//! An upstream's GOAWAY makes the connection refuse new streams: the next
//! request finds it not ready, marks it closed, and goes to another
//! connection (a new one if need be), untouched. Streams in flight on the
//! old one finish.
//!
//! `protocol = "auto"` over `https://` offers h2 and HTTP/1.1 in ALPN on
//! the first connection; over `http://` (for a client that spoke HTTP/2)
//! the first connection is a probe: the h2c preface, and a look at the
//! answer's first frame ([`speaks_h2c`]). An upstream that picks HTTP/1.1,
//! or answers the preface with anything but SETTINGS (an HTTP/1.1 server's
//! `400`), is remembered, and its requests go to the HTTP/1.1 pool from then
//! on ([`Http2Client::send`] says so with [`Sent::Http1`]).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream as StreamSender};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::task::AbortHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tower_service::Service;
use tracing::debug;

use super::body::{ClientBodyError, RequestBody};
use super::pool::UpstreamError;
use crate::config::{Protocol, ProxyConfig, UpstreamConfig};
use crate::socket::SendStream;
use crate::tls::UpstreamTls;

/// How often an idle HTTP/2 connection pings its upstream, and how long
/// the answer may take before the connection is closed.
pub(super) const PING_INTERVAL: Duration = Duration::from_secs(20);
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a request whose connection turned out closing (a
/// GOAWAY, a failed ping) is tried on another connection.
const UNSENT_RETRIES: u32 = 2;

/// Flow-control windows offered to upstreams, and the most header bytes
/// taken from one: hyper's client defaults, which this client had before
/// it drove `h2` itself. Large uploads and downloads (gRPC streams) are
/// not held to HTTP/2's 64 KiB default window.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Streams opened before the upstream's SETTINGS say how many it takes.
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// What the first connection taught about an `auto` upstream.
const LEARNED_NOTHING: u8 = 0;
const LEARNED_H2: u8 = 1;
const LEARNED_HTTP1: u8 = 2;

/// What a probe sends: the h2c preface and an empty SETTINGS frame.
const H2C_PROBE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// The type byte of a SETTINGS frame, the fourth byte of an h2 server's
/// first answer.
const SETTINGS_FRAME: u8 = 0x04;

/// The HTTP/2 side of every upstream that may speak it.
pub(super) struct Http2Client {
    /// By upstream index; `None` for upstreams that never speak HTTP/2.
    upstreams: Box<[Option<Http2Upstream>]>,
    connector: HttpConnector<super::dial::Resolver>,
    builder: h2::client::Builder,
    connect_timeout: Duration,
    max_connections: usize,
}

struct Http2Upstream {
    /// What the connector dials: `scheme://authority/`.
    target: Uri,
    scheme: Scheme,
    /// The `:authority` of requests that carry no `Host` of their own.
    authority: Authority,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// For `auto`: [`LEARNED_NOTHING`] until the first connection says
    /// which version the upstream speaks.
    learned: AtomicU8,
    /// `protocol = "auto"`: ALPN may choose HTTP/1.1.
    auto: bool,
    /// The live connections, shared by every request.
    connections: ArcSwap<Vec<Http2Connection>>,
    /// Which connection the next request takes.
    turn: AtomicUsize,
    /// Held while a connection is dialled, so a burst opens one, not many.
    dialing: tokio::sync::Mutex<()>,
}

/// One connection to an upstream: a handle that opens streams on it, and
/// whether its task has ended or it refused a stream.
#[derive(Clone)]
struct Http2Connection {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// How a request went: answered over HTTP/2, or to be sent over HTTP/1.1
/// (an `auto` upstream whose ALPN chose it), with the request back.
pub(super) enum Sent {
    Answered(Response<RecvBody>, Instant),
    Http1(Request<RequestBody>),
}

impl Http2Client {
    /// `tls` has, per upstream index, the TLS of each `https://` upstream,
    /// already offering the protocols [`alpn_for`] gives.
    pub(super) fn new(
        upstreams: &[UpstreamConfig],
        tls: &[Option<UpstreamTls>],
        settings: &ProxyConfig,
        resolver: &super::dial::Resolver,
    ) -> Self {
        let connector = super::dial::connector(settings, resolver);
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false);
        let upstreams = upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                let speaks_h2 = match upstream.protocol {
                    Protocol::Http1 => false,
                    Protocol::H2 | Protocol::H2c | Protocol::Auto => true,
                };
                speaks_h2.then(|| Http2Upstream {
                    target: super::pool::dial_target(upstream),
                    scheme: upstream.scheme.clone(),
                    authority: upstream.authority.clone(),
                    tls: tls
                        .get(i)
                        .cloned()
                        .flatten()
                        .map(|tls| (TlsConnector::from(tls.config), tls.server_name)),
                    learned: AtomicU8::new(match upstream.protocol {
                        Protocol::Auto => LEARNED_NOTHING,
                        _ => LEARNED_H2,
                    }),
                    auto: upstream.protocol == Protocol::Auto,
                    connections: ArcSwap::from_pointee(Vec::new()),
                    turn: AtomicUsize::new(0),
                    dialing: tokio::sync::Mutex::new(()),
                })
            })
            .collect();
        Self {
            upstreams,
            connector,
            builder,
            connect_timeout: settings.connect_timeout,
            max_connections: settings.h2_connections,
        }
    }

    /// Whether upstream `index`, an `auto` one, turned out to speak only
    /// HTTP/1.1 (ALPN chose it, or it refused h2c): its requests go to the
    /// HTTP/1.1 pool.
    pub(super) fn chose_http1(&self, index: usize) -> bool {
        self.upstreams[index]
            .as_ref()
            .is_some_and(|upstream| upstream.learned.load(Ordering::Relaxed) == LEARNED_HTTP1)
    }

    /// Sends `request` (as the HTTP/1.1 rewriting left it: origin form,
    /// `Host` set) to upstream `index` over HTTP/2.
    ///
    /// Not an `async fn`, and the retry apart: each would keep another copy
    /// of the request in every call's future (rust-lang/rust #62958).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(super) fn send(
        &self,
        index: usize,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Sent, UpstreamError>> + Send + '_ {
        async move {
            let Some(upstream) = &self.upstreams[index] else {
                return Ok(Sent::Http1(request));
            };
            let Some(connection) = self.sender(upstream).await? else {
                return Ok(Sent::Http1(request));
            };
            let mut sender = connection.sender;
            match poll_fn(|cx| sender.poll_ready(cx)).await {
                Ok(()) => exchange(sender, to_http2(request, upstream)).await,
                Err(e) => {
                    connection.closed.store(true, Ordering::Release);
                    // Boxed: rare, and it holds the request.
                    Box::pin(self.resend(upstream, request, e)).await
                }
            }
        }
    }

    /// Sends a request whose connection refused a new stream (its
    /// upstream's GOAWAY, a failed keep-alive ping, a broken socket): it is
    /// marked closed, and another connection takes the request, up to
    /// `UNSENT_RETRIES` times.
    async fn resend(
        &self,
        upstream: &Http2Upstream,
        request: Request<RequestBody>,
        mut error: h2::Error,
    ) -> Result<Sent, UpstreamError> {
        for _ in 0..UNSENT_RETRIES {
            debug!(upstream = %upstream.authority, %error, "the connection was closing; the request goes to another");
            let connection = match self.sender(upstream).await? {
                Some(connection) => connection,
                // Only a first connection learns HTTP/1.1; this upstream
                // spoke HTTP/2 already.
                None => return Err(UpstreamError::Http2(error)),
            };
            let mut sender = connection.sender;
            match poll_fn(|cx| sender.poll_ready(cx)).await {
                Ok(()) => return exchange(sender, to_http2(request, upstream)).await,
                Err(e) => {
                    connection.closed.store(true, Ordering::Release);
                    error = e;
                }
            }
        }
        Err(UpstreamError::Http2(error))
    }

    /// A live connection to `upstream`, opened if need be; `None`: the
    /// upstream chose HTTP/1.1 in ALPN.
    async fn sender(
        &self,
        upstream: &Http2Upstream,
    ) -> Result<Option<Http2Connection>, UpstreamError> {
        match upstream.pick(self.max_connections) {
            Some(sender) => Ok(Some(sender)),
            // Boxed: dialling is rare, and its future large.
            None => Box::pin(self.connect(upstream)).await,
        }
    }

    /// A connection for `upstream`: a live one another request opened
    /// meanwhile, or a new one while there are fewer than the most allowed.
    /// `None`: the upstream chose HTTP/1.1 in ALPN.
    async fn connect(
        &self,
        upstream: &Http2Upstream,
    ) -> Result<Option<Http2Connection>, UpstreamError> {
        let _dialing = upstream.dialing.lock().await;
        if let Some(sender) = upstream.pick(self.max_connections) {
            return Ok(Some(sender));
        }
        if upstream.learned.load(Ordering::Relaxed) == LEARNED_HTTP1 {
            return Ok(None);
        }
        let Some(connection) = Box::pin(self.dial(upstream)).await? else {
            return Ok(None);
        };
        // The dead are dropped; the new one joins the live.
        let mut live: Vec<_> = upstream
            .connections
            .load()
            .iter()
            .filter(|connection| !connection.closed.load(Ordering::Acquire))
            .cloned()
            .collect();
        live.push(connection.clone());
        upstream.connections.store(Arc::new(live));
        Ok(Some(connection))
    }

    async fn dial(
        &self,
        upstream: &Http2Upstream,
    ) -> Result<Option<Http2Connection>, UpstreamError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let io = connector
            .call(upstream.target.clone())
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let mut stream = SendStream::new(io.into_inner());
        let Some((tls, name)) = &upstream.tls else {
            if upstream.learned.load(Ordering::Relaxed) == LEARNED_NOTHING {
                let speaks = tokio::time::timeout(self.connect_timeout, speaks_h2c(&mut stream))
                    .await
                    .map_err(|_| {
                        UpstreamError::Connect(
                            "no answer to the h2c preface within connect_timeout".into(),
                        )
                    })?
                    .map_err(|e| UpstreamError::Connect(e.into()))?;
                if !speaks {
                    debug!(upstream = %upstream.authority, "the upstream does not speak h2c");
                    upstream.learned.store(LEARNED_HTTP1, Ordering::Relaxed);
                    return Ok(None);
                }
                upstream.learned.store(LEARNED_H2, Ordering::Relaxed);
                // The probe's connection has been spoken to: a fresh one.
                return Box::pin(self.dial(upstream)).await;
            }
            return self.handshake(stream).await.map(Some);
        };
        let stream = super::pool::tls_handshake(tls, name, stream, self.connect_timeout).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            if !upstream.auto {
                return Err(UpstreamError::Tls(std::io::Error::other(
                    "the upstream did not agree to HTTP/2 (h2) in ALPN; protocol = \"auto\" would fall back to HTTP/1.1",
                )));
            }
            // Only `auto` offers anything else: HTTP/1.1 from now on. This
            // connection goes unused; the pool dials its own.
            debug!(upstream = %upstream.authority, "the upstream chose HTTP/1.1 in ALPN");
            upstream.learned.store(LEARNED_HTTP1, Ordering::Relaxed);
            return Ok(None);
        }
        upstream.learned.store(LEARNED_H2, Ordering::Relaxed);
        self.handshake(stream).await.map(Some)
    }

    async fn handshake<S>(&self, stream: S) -> Result<Http2Connection, UpstreamError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        open(&self.builder, stream).await
    }
}

/// Makes the HTTP/2 handshake on `stream`, and drives the connection in a
/// task of its own, with a second one pinging to notice a dead upstream.
async fn open<S>(builder: &h2::client::Builder, stream: S) -> Result<Http2Connection, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, mut connection) = builder
        .handshake::<S, Bytes>(stream)
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    let closed = Arc::new(AtomicBool::new(false));
    let pinger = connection.ping_pong();
    let ended = Arc::clone(&closed);
    let driving = tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
        ended.store(true, Ordering::Release);
    });
    if let Some(pinger) = pinger {
        tokio::spawn(keep_alive(
            pinger,
            driving.abort_handle(),
            Arc::clone(&closed),
        ));
    }
    Ok(Http2Connection { sender, closed })
}

/// Pings the upstream every [`PING_INTERVAL`]: a ping not answered within
/// [`PING_TIMEOUT`] (a dead upstream, or a path that drops packets) ends
/// the connection, and the requests after go to a new one. A task apart
/// from the connection's, so a busy connection polls no timer on every
/// frame; it ends with the connection.
async fn keep_alive(mut pinger: PingPong, connection: AbortHandle, closed: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        if closed.load(Ordering::Acquire) {
            return;
        }
        match tokio::time::timeout(PING_TIMEOUT, pinger.ping(Ping::opaque())).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => debug!(error = %e, "keep-alive ping failed; the connection is closed"),
            Err(_) => debug!(
                "no answer to a keep-alive ping within {}s; the connection is closed",
                PING_TIMEOUT.as_secs()
            ),
        }
        closed.store(true, Ordering::Release);
        connection.abort();
        return;
    }
}

impl Http2Upstream {
    /// The next live connection in turn, once there are as many as
    /// allowed (`max`); `None` asks the caller to open one.
    fn pick(&self, max: usize) -> Option<Http2Connection> {
        let connections = self.connections.load();
        if connections.len() < max {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let connection = &connections[turn % connections.len()];
        // A closed one (GOAWAY, failed ping) is replaced by the caller.
        (!connection.closed.load(Ordering::Acquire)).then(|| connection.clone())
    }
}

/// Sends the h2c preface on `stream` and reads the answer's first bytes:
/// an h2 server's first frame is its SETTINGS; an HTTP/1.1 server answers
/// with a status line, or closes.
async fn speaks_h2c(stream: &mut SendStream) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(H2C_PROBE).await?;
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..]).await? {
            0 => return Ok(false),
            read => filled += read,
        }
    }
    Ok(head[3] == SETTINGS_FRAME)
}

/// The request as HTTP/2 carries it: `:scheme` and `:authority` in the
/// URI, the `Host` moved into `:authority`.
fn to_http2(request: Request<RequestBody>, upstream: &Http2Upstream) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    let authority = match parts.headers.remove(header::HOST) {
        // The upstream's own name (`host = "upstream"`): no parse.
        Some(host) if host.as_bytes() == upstream.authority.as_str().as_bytes() => {
            upstream.authority.clone()
        }
        Some(host) => {
            Authority::try_from(host.as_bytes()).unwrap_or_else(|_| upstream.authority.clone())
        }
        None => upstream.authority.clone(),
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(upstream.scheme.clone());
    uri.authority = Some(authority);
    uri.path_and_query = Some(path);
    // Every part was parsed already: always valid.
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, body)
}

/// Opens the request's stream on a ready connection, sends its body while
/// waiting for the response's head (the rest in a task of its own, if it
/// is still streaming when the head comes), and gives the response.
#[allow(clippy::manual_async_fn)] // as `Http2Client::send`
fn exchange(
    mut sender: SendRequest<Bytes>,
    request: Request<RequestBody>,
) -> impl Future<Output = Result<Sent, UpstreamError>> + Send {
    async move {
        let (head, body) = request.into_parts();
        let end = body.is_end_stream();
        let (response, stream) = sender
            .send_request(Request::from_parts(head, ()), end)
            .map_err(UpstreamError::Http2)?;
        drop(sender);
        let mut pump = (!end).then_some(Pump {
            body,
            stream,
            waiting: None,
        });
        let mut response = response;
        // The body is sent from this task while the response is awaited:
        // most (a gRPC call's message, a small POST) end before it comes.
        let response = poll_fn(|cx| {
            if let Some(sending) = &mut pump {
                match sending.poll(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) => pump = None,
                    Poll::Ready(Err(PumpError::Client(e))) => {
                        return Poll::Ready(Err(UpstreamError::Body(e.into())));
                    }
                    // The upstream reset the stream or went away: its
                    // response says how, or fails.
                    Poll::Ready(Err(PumpError::Upstream(e))) => {
                        debug!(error = %e, "the upstream stopped taking the request's body");
                        pump = None;
                    }
                }
            }
            Pin::new(&mut response)
                .poll(cx)
                .map_err(UpstreamError::Http2)
        })
        .await?;
        if let Some(mut sending) = pump {
            // Still streaming when the response came (a bidirectional
            // call, an upload answered early): the rest in a task.
            tokio::spawn(async move {
                if let Err(e) = poll_fn(|cx| sending.poll(cx)).await {
                    debug!(error = %e, "the request's body was not sent whole");
                }
            });
        }
        Ok(Sent::Answered(response.map(RecvBody::new), Instant::now()))
    }
}

/// Sends a request's body on its stream as it comes, keeping to the
/// stream's flow control: a chunk read is held until the upstream's window
/// takes it, and the next is not read until then (hyper's own
/// `PipeToSendStream`, whose fix for hyperium/hyper#4003 it keeps: no
/// capacity is claimed before a chunk is in hand).
struct Pump {
    body: RequestBody,
    stream: StreamSender<Bytes>,
    /// A chunk read, waiting for capacity, and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
}

#[derive(Debug, thiserror::Error)]
enum PumpError {
    /// The client's body failed (it went away, or broke its framing).
    #[error(transparent)]
    Client(ClientBodyError),
    /// The upstream reset the stream, or the connection failed.
    #[error("the upstream stream failed: {0}")]
    Upstream(h2::Error),
}

impl Pump {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            // Woken by an RST_STREAM too, while waiting on the client or on
            // capacity.
            if let Poll::Ready(reason) = self.stream.poll_reset(cx).map_err(PumpError::Upstream)? {
                return Poll::Ready(Err(PumpError::Upstream(h2::Error::from(reason))));
            }
            if let Some((_, end)) = self.waiting {
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(e)) => return Poll::Ready(Err(PumpError::Upstream(e))),
                        None => {
                            let reset = h2::Error::from(Reason::STREAM_CLOSED);
                            return Poll::Ready(Err(PumpError::Upstream(reset)));
                        }
                    }
                }
                let (chunk, _) = self.waiting.take().unwrap_or_default();
                self.stream
                    .send_data(chunk, end)
                    .map_err(PumpError::Upstream)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    self.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(PumpError::Client(e)));
                }
                None => {
                    // Ended with no trailers and no last chunk said so.
                    self.stream
                        .send_data(Bytes::new(), true)
                        .map_err(PumpError::Upstream)?;
                    return Poll::Ready(Ok(()));
                }
            };
            match frame.into_data() {
                Ok(chunk) => {
                    let end = self.body.is_end_stream();
                    if chunk.is_empty() {
                        // Needs no capacity: an explicit end of the body.
                        self.stream
                            .send_data(chunk, end)
                            .map_err(PumpError::Upstream)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // h2 raises the claim to the chunk's length as it sends.
                    self.stream.reserve_capacity(1);
                    self.waiting = Some((chunk, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.stream.reserve_capacity(0);
                        self.stream
                            .send_trailers(trailers)
                            .map_err(PumpError::Upstream)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// An upstream's response body on an HTTP/2 stream: its DATA, then its
/// trailers. Each chunk read gives its window back to the upstream.
#[derive(Debug)]
pub(super) struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl RecvBody {
    fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            data_done: false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // An RST_STREAM with NO_ERROR after the response ends it
                // early, without failing it (RFC 9113 §8.1).
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The `content-length` travels as a header, and h2 holds the body
        // to it.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits, on tokio's paused clock, until `connection` is marked
    /// closed; gives how long that took.
    async fn until_closed(connection: &Http2Connection, within: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        while !connection.closed.load(Ordering::Acquire) {
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_stops_answering_pings_loses_its_connection() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        // The upstream makes its handshake, then is never polled again: it
        // answers no ping, as a dead host or a black-holed path would not.
        let upstream = tokio::spawn(h2::server::handshake(theirs));
        let connection = open(&h2::client::Builder::new(), ours).await.unwrap();
        let _silent = upstream.await.unwrap().unwrap();
        let took = until_closed(&connection, PING_INTERVAL + PING_TIMEOUT + PING_INTERVAL)
            .await
            .expect("closed after a ping went unanswered");
        assert!(took >= PING_INTERVAL + PING_TIMEOUT, "{took:?}");
        let mut sender = connection.sender;
        assert!(
            poll_fn(|cx| sender.poll_ready(cx)).await.is_err(),
            "the aborted connection opens no stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_answers_pings_keeps_its_connection() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut upstream = h2::server::handshake(theirs).await.unwrap();
            while upstream.accept().await.is_some() {}
        });
        let connection = open(&h2::client::Builder::new(), ours).await.unwrap();
        assert_eq!(
            until_closed(&connection, 4 * (PING_INTERVAL + PING_TIMEOUT)).await,
            None,
            "pinged and answered, the connection stays"
        );
    }
}
