//! HTTP/2 to upstreams: h2 over TLS (ALPN) and h2c by prior knowledge.
//!
//! Each HTTP/2 upstream gets at most `[proxy] h2_connections` connections,
//! opened as requests need them and shared by every request as streams,
//! each connection driven by a task of its own. A request takes the next
//! live connection in turn: one atomic load of the list and one increment,
//! no lock. Only opening a connection, or replacing one that closed (an
//! upstream's GOAWAY, a failed keep-alive ping, a broken socket), takes the
//! upstream's dial lock. The server's `max_concurrent_streams` is respected:
//! streams past it wait for one to finish. Keep-alive pings
//! ([`PING_INTERVAL`], when no DATA came meanwhile) notice a dead upstream.
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
//! Streams open one request at a time per connection (its opener, held
//! while the stream waits for a slot under the upstream's
//! `max_concurrent_streams`), so a request cancelled while it waits never
//! reaches the upstream. An upstream's GOAWAY makes the connection refuse
//! new streams: the next request finds it not ready, marks it closed, and
//! goes to another connection (a new one if need be), untouched. Streams
//! in flight on the old one finish, still watched by the pinger.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
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

/// Fields HTTP/2 forbids in a message (RFC 9113 §8.2.2), which h2
/// refuses; `TE` is allowed only as `trailers`, and only in a request's
/// head, never in trailers.
const CONNECTION_SPECIFIC: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TE,
];

/// Flow-control windows offered to upstreams, and the most header bytes
/// taken from one: hyper's client defaults without its adaptive window
/// (which this client used before it drove `h2` itself, growing from
/// 64 KiB with the measured bandwidth). Large uploads and downloads (gRPC
/// streams) are not held to HTTP/2's 64 KiB default window; one stream
/// downloads at most 2 MiB per round trip (20 MiB/s at 100 ms).
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
    connections: ArcSwap<Vec<Arc<Http2Connection>>>,
    /// Which connection the next request takes.
    turn: AtomicUsize,
    /// Held while a connection is dialled, so a burst opens one, not many.
    dialing: tokio::sync::Mutex<()>,
}

/// One connection to an upstream, shared by every request on it.
struct Http2Connection {
    /// Opens streams, one request at a time: a request waiting for a
    /// stream slot (the upstream's `max_concurrent_streams`) waits here,
    /// and one cancelled meanwhile (its client left, `upstream_timeout`)
    /// never reaches the upstream. A handle per request would hand every
    /// stream to h2 at once, which queues them all and sends a cancelled
    /// one's HEADERS anyway once a slot frees.
    opener: tokio::sync::Mutex<SendRequest<Bytes>>,
    state: Arc<ConnectionState>,
}

/// What the requests, the driving task and the pinging task of one
/// connection tell each other.
#[derive(Default)]
struct ConnectionState {
    /// No new stream goes on it: it refused one (GOAWAY, a failed ping, a
    /// broken socket), or it ended. Streams in flight may still finish.
    closed: AtomicBool,
    /// Its driving task has ended: nothing more goes over it.
    ended: AtomicBool,
    /// DATA chunks received on it: the pinger's evidence that the upstream
    /// is alive, so a busy connection is not pinged and one whose pong
    /// waits behind the upstream's DATA is not cut.
    received: AtomicU64,
}

/// A stream opened on a connection, or the request back with why the
/// connection took no new stream.
// Made once per request and matched at once: boxing the large variant
// would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Stream {
        response: h2::client::ResponseFuture,
        stream: StreamSender<Bytes>,
        body: RequestBody,
        end: bool,
    },
    Refused(Request<RequestBody>, h2::Error),
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
            match open_stream(&connection, request, upstream).await? {
                Opened::Stream {
                    response,
                    stream,
                    body,
                    end,
                } => exchange(response, stream, body, end, &connection.state).await,
                // Boxed: rare, and it holds the request.
                Opened::Refused(request, e) => Box::pin(self.resend(upstream, request, e)).await,
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
        mut request: Request<RequestBody>,
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
            match open_stream(&connection, request, upstream).await? {
                Opened::Stream {
                    response,
                    stream,
                    body,
                    end,
                } => return exchange(response, stream, body, end, &connection.state).await,
                Opened::Refused(unsent, e) => (request, error) = (unsent, e),
            }
        }
        Err(UpstreamError::Http2(error))
    }

    /// A live connection to `upstream`, opened if need be; `None`: the
    /// upstream chose HTTP/1.1 in ALPN.
    async fn sender(
        &self,
        upstream: &Http2Upstream,
    ) -> Result<Option<Arc<Http2Connection>>, UpstreamError> {
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
    ) -> Result<Option<Arc<Http2Connection>>, UpstreamError> {
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
        let connection = Arc::new(connection);
        // The dead are dropped; the new one joins the live.
        let mut live: Vec<_> = upstream
            .connections
            .load()
            .iter()
            .filter(|connection| !connection.state.closed.load(Ordering::Acquire))
            .cloned()
            .collect();
        live.push(Arc::clone(&connection));
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
    let state = Arc::new(ConnectionState::default());
    let pinger = connection.ping_pong();
    let driven = Arc::clone(&state);
    let driving = tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
        driven.closed.store(true, Ordering::Release);
        driven.ended.store(true, Ordering::Release);
    });
    if let Some(pinger) = pinger {
        tokio::spawn(keep_alive(
            pinger,
            driving.abort_handle(),
            Arc::clone(&state),
        ));
    }
    Ok(Http2Connection {
        opener: tokio::sync::Mutex::new(sender),
        state,
    })
}

/// Pings the upstream after every [`PING_INTERVAL`] in which no DATA came
/// from it: a ping answered neither within [`PING_TIMEOUT`] nor by DATA
/// meanwhile (a dead upstream, or a path that drops packets) ends the
/// connection, and the requests after go to a new one. A task apart from
/// the connection's, so a busy connection polls no timer on every frame;
/// it pings a connection that still carries streams after a GOAWAY, and
/// ends when the connection does.
async fn keep_alive(mut pinger: PingPong, connection: AbortHandle, state: Arc<ConnectionState>) {
    let mut seen = state.received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        if state.ended.load(Ordering::Acquire) {
            return;
        }
        let received = state.received.load(Ordering::Relaxed);
        if received != seen {
            seen = received;
            continue;
        }
        let ping = pinger.ping(Ping::opaque());
        let mut ping = std::pin::pin!(ping);
        let failed = loop {
            match tokio::time::timeout(PING_TIMEOUT, ping.as_mut()).await {
                Ok(Ok(_)) => break None,
                Ok(Err(e)) => break Some(format!("keep-alive ping failed: {e}")),
                Err(_) => {
                    // The answer may wait behind DATA the upstream sends.
                    let received = state.received.load(Ordering::Relaxed);
                    if received == seen {
                        break Some(format!(
                            "no answer to a keep-alive ping within {}s",
                            PING_TIMEOUT.as_secs()
                        ));
                    }
                    seen = received;
                }
            }
        };
        if let Some(why) = failed {
            if !state.ended.load(Ordering::Acquire) {
                debug!("{why}; the connection is closed");
            }
            state.closed.store(true, Ordering::Release);
            state.ended.store(true, Ordering::Release);
            connection.abort();
            return;
        }
    }
}

impl Http2Upstream {
    /// The next live connection in turn, once there are as many as
    /// allowed (`max`); `None` asks the caller to open one.
    fn pick(&self, max: usize) -> Option<Arc<Http2Connection>> {
        let connections = self.connections.load();
        if connections.len() < max {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let connection = &connections[turn % connections.len()];
        // A closed one (GOAWAY, failed ping) is replaced by the caller.
        (!connection.state.closed.load(Ordering::Acquire)).then(|| Arc::clone(connection))
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
    if parts.headers.contains_key(header::UPGRADE) {
        // An HTTP/1.1 upgrade HTTP/2 cannot carry (h2 refuses these
        // headers): the upstream gets the request without it, and answers
        // it as a plain one. An `auto` upstream takes upgrades over
        // HTTP/1.1 instead (`Connectors::send`).
        parts.headers.remove(header::UPGRADE);
        parts.headers.remove(header::CONNECTION);
    }
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

/// Opens the request's stream on `connection` once it takes one (its
/// opener held meanwhile), or gives the request back with why it takes
/// none.
async fn open_stream(
    connection: &Http2Connection,
    request: Request<RequestBody>,
    upstream: &Http2Upstream,
) -> Result<Opened, UpstreamError> {
    let mut opener = connection.opener.lock().await;
    if let Err(e) = poll_fn(|cx| opener.poll_ready(cx)).await {
        connection.state.closed.store(true, Ordering::Release);
        return Ok(Opened::Refused(request, e));
    }
    let (head, body) = to_http2(request, upstream).into_parts();
    let end = body.is_end_stream();
    let (response, stream) = opener
        .send_request(Request::from_parts(head, ()), end)
        .map_err(UpstreamError::Http2)?;
    Ok(Opened::Stream {
        response,
        stream,
        body,
        end,
    })
}

/// Sends an opened stream's body while waiting for the response's head
/// (the rest in a task of its own, if it is still streaming when the head
/// comes), and gives the response.
#[allow(clippy::manual_async_fn)] // as `Http2Client::send`
fn exchange(
    response: h2::client::ResponseFuture,
    stream: StreamSender<Bytes>,
    body: RequestBody,
    end: bool,
    state: &Arc<ConnectionState>,
) -> impl Future<Output = Result<Sent, UpstreamError>> + Send + '_ {
    async move {
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
                    // h2 refused what faultline sent: the stream is reset,
                    // and the request fails as the proxy's, not the
                    // upstream's silence.
                    Poll::Ready(Err(PumpError::Local(e))) => {
                        return Poll::Ready(Err(UpstreamError::Http2(e)));
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
        let state = Arc::clone(state);
        Ok(Sent::Answered(
            response.map(|recv| RecvBody::new(recv, state)),
            Instant::now(),
        ))
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
    /// h2 refused what was to be sent (the stream is reset).
    #[error("the request's body could not be sent: {0}")]
    Local(h2::Error),
}

impl Pump {
    /// A failed send: the upstream's doing, or h2 refusing ours, in which
    /// case the stream is reset so the upstream does not wait for the rest.
    fn failed(&mut self, e: h2::Error) -> PumpError {
        if e.is_remote() || e.is_io() || e.is_go_away() {
            PumpError::Upstream(e)
        } else {
            self.stream.send_reset(Reason::INTERNAL_ERROR);
            PumpError::Local(e)
        }
    }
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
                if let Err(e) = self.stream.send_data(chunk, end) {
                    return Poll::Ready(Err(self.failed(e)));
                }
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
                    if let Err(e) = self.stream.send_data(Bytes::new(), true) {
                        return Poll::Ready(Err(self.failed(e)));
                    }
                    return Poll::Ready(Ok(()));
                }
            };
            match frame.into_data() {
                Ok(chunk) => {
                    let end = self.body.is_end_stream();
                    if chunk.is_empty() {
                        // Needs no capacity: an explicit end of the body.
                        if let Err(e) = self.stream.send_data(chunk, end) {
                            return Poll::Ready(Err(self.failed(e)));
                        }
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
                    if let Ok(mut trailers) = frame.into_trailers() {
                        self.stream.reserve_capacity(0);
                        // Fields HTTP/2 forbids (an HTTP/1.1 client may
                        // send them as trailers): h2 would refuse them all.
                        for name in CONNECTION_SPECIFIC {
                            trailers.remove(name);
                        }
                        if let Err(e) = self.stream.send_trailers(trailers) {
                            return Poll::Ready(Err(self.failed(e)));
                        }
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
    /// Its connection's: each chunk counts as a sign of life.
    state: Arc<ConnectionState>,
}

impl std::fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionState")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl RecvBody {
    fn new(recv: RecvStream, state: Arc<ConnectionState>) -> Self {
        Self {
            recv,
            data_done: false,
            state,
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
                    self.state.received.fetch_add(1, Ordering::Relaxed);
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
        while !connection.state.closed.load(Ordering::Acquire) {
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
        let mut opener = connection.opener.lock().await;
        assert!(
            poll_fn(|cx| opener.poll_ready(cx)).await.is_err(),
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

    #[tokio::test(start_paused = true)]
    async fn data_coming_in_keeps_a_connection_whose_pings_go_unanswered() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        // Silent to pings, as an upstream whose answer waits behind the
        // DATA it sends on a slow path; the DATA itself still comes.
        let upstream = tokio::spawn(h2::server::handshake(theirs));
        let connection = open(&h2::client::Builder::new(), ours).await.unwrap();
        let _silent = upstream.await.unwrap().unwrap();
        let state = Arc::clone(&connection.state);
        let data = tokio::spawn(async move {
            loop {
                state.received.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        assert_eq!(
            until_closed(&connection, 4 * (PING_INTERVAL + PING_TIMEOUT)).await,
            None,
            "DATA is a sign of life"
        );
        data.abort();
        assert!(
            until_closed(&connection, 2 * (PING_INTERVAL + PING_TIMEOUT))
                .await
                .is_some(),
            "with the DATA stopped, the unanswered ping ends it"
        );
    }
}
