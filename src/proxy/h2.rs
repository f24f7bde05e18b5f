//! HTTP/2 to upstreams: h2 over TLS (ALPN) and h2c by prior knowledge.
//!
//! Each HTTP/2 upstream gets at most `[proxy] h2_connections` connections,
//! opened as requests need them and shared by every request as streams
//! (hyper's `client::conn::http2`, each connection driven by a task of its
//! own). A request takes the next live connection in turn: one atomic load
//! of the list and one increment, no lock. Only opening a connection, or
//! replacing one that closed (an upstream's GOAWAY, a failed keep-alive
//! ping, a broken socket), takes the upstream's dial lock. The server's
//! `max_concurrent_streams` is respected by hyper: streams past it wait
//! for one to finish. Keep-alive pings ([`PING_INTERVAL`]) notice a dead
//! upstream between requests.
//!
//! An upstream's GOAWAY is not seen by `SendRequest::is_closed` until a
//! request reaches the connection (h2 records it as the connection's error
//! and wakes no sender); hyper then ends the connection's dispatch task and
//! hands that request back unsent, and [`Http2Client::send`] gives it to
//! another connection. Streams in flight on the old one finish.
//!
//! `protocol = "auto"` over `https://` offers h2 and HTTP/1.1 in ALPN on
//! the first connection; over `http://` (for a client that spoke HTTP/2)
//! the first connection is a probe: the h2c preface, and a look at the
//! answer's first frame ([`speaks_h2c`]). An upstream that picks HTTP/1.1,
//! or answers the preface with anything but SETTINGS (an HTTP/1.1 server's
//! `400`), is remembered, and its requests go to the HTTP/1.1 pool from then
//! on ([`Http2Client::send`] says so with [`Sent::Http1`]).

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tower_service::Service;
use tracing::debug;

use super::body::RequestBody;
use super::pool::UpstreamError;
use crate::config::{Protocol, ProxyConfig, UpstreamConfig};
use crate::server::BoxingExecutor;
use crate::socket::SendStream;
use crate::tls::UpstreamTls;

/// How often an idle HTTP/2 connection pings its upstream, and how long
/// the answer may take before the connection is closed.
pub(super) const PING_INTERVAL: Duration = Duration::from_secs(20);
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a request hyper hands back unsent (its connection was
/// closing) is tried on another connection.
const UNSENT_RETRIES: u32 = 2;

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
    builder: http2::Builder<BoxingExecutor>,
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
    connections: ArcSwap<Vec<SendRequest<RequestBody>>>,
    /// Which connection the next request takes.
    turn: AtomicUsize,
    /// Held while a connection is dialled, so a burst opens one, not many.
    dialing: tokio::sync::Mutex<()>,
}

/// How a request went: answered over HTTP/2, or to be sent over HTTP/1.1
/// (an `auto` upstream whose ALPN chose it), with the request back.
pub(super) enum Sent {
    Answered(Response<Incoming>, Instant),
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
        let mut builder = http2::Builder::new(BoxingExecutor);
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            // Large uploads and downloads (gRPC streams) are not held to the
            // 64 KiB default window.
            .adaptive_window(true);
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
            let Some(mut sender) = self.sender(upstream).await? else {
                return Ok(Sent::Http1(request));
            };
            let sending = sender.try_send_request(to_http2(request, upstream));
            match sending.await {
                Ok(response) => Ok(Sent::Answered(response, Instant::now())),
                // Boxed: rare, and it holds the request handed back.
                Err(failed) => Box::pin(self.resend(upstream, failed)).await,
            }
        }
    }

    /// Sends again a request hyper handed back because it never left: the
    /// connection was found closing (its upstream's GOAWAY is only noticed
    /// by the next request) and is closed now. Another connection takes it,
    /// up to `UNSENT_RETRIES` times.
    async fn resend(
        &self,
        upstream: &Http2Upstream,
        mut failed: TrySendError<Request<RequestBody>>,
    ) -> Result<Sent, UpstreamError> {
        let mut retries = 0;
        loop {
            let unsent = failed.take_message().filter(|_| retries < UNSENT_RETRIES);
            let Some(request) = unsent else {
                return Err(UpstreamError::Exchange(failed.into_error()));
            };
            debug!(upstream = %upstream.authority, "the connection was closing; the request goes to another");
            retries += 1;
            let mut sender = match self.sender(upstream).await? {
                Some(sender) => sender,
                // Only a first connection learns HTTP/1.1; this upstream
                // spoke HTTP/2 already.
                None => return Err(UpstreamError::Exchange(failed.into_error())),
            };
            failed = match sender.try_send_request(request).await {
                Ok(response) => return Ok(Sent::Answered(response, Instant::now())),
                Err(failed) => failed,
            };
        }
    }

    /// A live connection to `upstream`, opened if need be; `None`: the
    /// upstream chose HTTP/1.1 in ALPN.
    async fn sender(
        &self,
        upstream: &Http2Upstream,
    ) -> Result<Option<SendRequest<RequestBody>>, UpstreamError> {
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
    ) -> Result<Option<SendRequest<RequestBody>>, UpstreamError> {
        let _dialing = upstream.dialing.lock().await;
        if let Some(sender) = upstream.pick(self.max_connections) {
            return Ok(Some(sender));
        }
        if upstream.learned.load(Ordering::Relaxed) == LEARNED_HTTP1 {
            return Ok(None);
        }
        let Some(sender) = Box::pin(self.dial(upstream)).await? else {
            return Ok(None);
        };
        // The dead are dropped; the new one joins the live.
        let mut live: Vec<_> = upstream
            .connections
            .load()
            .iter()
            .filter(|sender| !sender.is_closed())
            .cloned()
            .collect();
        live.push(sender.clone());
        upstream.connections.store(Arc::new(live));
        Ok(Some(sender))
    }

    async fn dial(
        &self,
        upstream: &Http2Upstream,
    ) -> Result<Option<SendRequest<RequestBody>>, UpstreamError> {
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

    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<RequestBody>, UpstreamError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Http2Upstream {
    /// The next live connection in turn, once there are as many as
    /// allowed (`max`); `None` asks the caller to open one.
    fn pick(&self, max: usize) -> Option<SendRequest<RequestBody>> {
        let connections = self.connections.load();
        if connections.len() < max {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let sender = &connections[turn % connections.len()];
        // A closed one (GOAWAY, failed ping) is replaced by the caller.
        (!sender.is_closed() && sender.is_ready()).then(|| sender.clone())
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

/// The request as HTTP/2 carries it: the target in absolute form (hyper
/// takes `:scheme` and `:authority` from it), the `Host` moved into
/// `:authority`.
fn to_http2(request: Request<RequestBody>, upstream: &Http2Upstream) -> Request<RequestBody> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .headers
        .remove(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| upstream.authority.clone());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        // Every part was parsed already: always valid.
        .unwrap_or_default();
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, body)
}
