//! The upstream client: one pool of idle HTTP/1.1 connections per upstream.
//!
//! Connections are dialled by hyper-util's [`HttpConnector`] (DNS through
//! [`super::dial::Resolver`], connect timeout, `TCP_NODELAY`) and spoken to with hyper's own
//! `client::conn::http1`, each driven by a task of its own. Idle
//! connections wait in a lock-free queue per upstream, indexed by the
//! upstream's position in the config, so a request finds its pool without
//! hashing a key or taking a lock. hyper-util's legacy `Client` did both on
//! every request, and boxed and spawned besides; this pool brought most of
//! the proxy's gain on HAProxy in `scripts/loadtest.sh`.
//!
//! A connection goes back to its pool once hyper says it can take the next
//! request: at once when the response body came with its head, else when the
//! body has been read. One idle for `[proxy] pool_idle_timeout` is never
//! used again, and a sweeper closes it, as a pool timer would. One that
//! answered `101` is an upgrade's, handed over to its tunnel
//! (`hyper::upgrade::on` on the response): it never goes back.
//!
//! The queue hands out the longest-idle connection first. Under steady
//! traffic every pooled connection stays in use, so the connections a burst
//! opened stay open until traffic falls off; in exchange no lock is taken.

use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use http::{Request, Response, StatusCode, Uri};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tower_service::Service;
use tracing::debug;

use super::body::{Received, RequestBody};
use super::dial::Resolver;
use crate::config::{ProxyConfig, UpstreamConfig};
use crate::socket::SendStream;
use crate::tls::UpstreamTls;

/// The sweeper looks for connections idle for too long at least this often,
/// and four times per idle timeout when that is shorter.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unresolvable, connect timeout).
    #[error(transparent)]
    Connect(BoxError),
    /// The TLS handshake failed: a certificate that does not verify, a
    /// name that does not match, a TLS alert, or no TLS at all.
    #[error("TLS handshake with the upstream failed: {0}")]
    Tls(std::io::Error),
    /// The connection broke, or the upstream's answer was not HTTP.
    #[error(transparent)]
    Exchange(hyper::Error),
    /// The exchange of forward traffic no configured upstream has failed
    /// after connecting (hyper-util's client, which wraps hyper's error).
    #[error(transparent)]
    Forwarded(BoxError),
    /// An HTTP/2 stream failed: reset by the upstream, or its connection
    /// broke or went away.
    #[error("the upstream's HTTP/2 stream failed: {0}")]
    Http2(#[source] h2::Error),
    /// The client's request body failed before the upstream answered.
    #[error("the request's body failed: {0}")]
    Body(#[source] BoxError),
}

/// The one client every request to every upstream goes through.
pub(super) struct UpstreamClient {
    connector: HttpConnector<Resolver>,
    /// Bounds the TLS handshake too, as it bounds the TCP connect.
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Per upstream index: where it is dialled, and its idle connections.
    pools: Arc<[Pool]>,
    /// Started with the first connection, when a runtime is sure to exist.
    sweeper: OnceLock<()>,
}

struct Pool {
    /// `http://authority/` or `https://authority/`, what the connector
    /// dials (the scheme gives the default port).
    target: Uri,
    /// For an `https://` upstream: the handshake every connection makes.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    idle: SegQueue<Idle>,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

impl UpstreamClient {
    /// `tls` has, per upstream index, the TLS of each `https://` upstream.
    pub(super) fn new(
        upstreams: &[UpstreamConfig],
        tls: &[Option<UpstreamTls>],
        settings: &ProxyConfig,
        resolver: &Resolver,
    ) -> Self {
        // It dials https:// targets too: the TLS is ours, over its TCP.
        let connector = super::dial::connector(settings, resolver);
        let pools = upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| Pool {
                target: dial_target(upstream),
                tls: tls
                    .get(i)
                    .cloned()
                    .flatten()
                    .map(|tls| (TlsConnector::from(tls.config), tls.server_name)),
                idle: SegQueue::new(),
            })
            .collect();
        Self {
            connect_timeout: settings.connect_timeout,
            connector,
            idle_timeout: settings.pool_idle_timeout,
            pools,
            sweeper: OnceLock::new(),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to upstream `index`
    /// on an idle connection, or on a new one, and gives the response with
    /// the time it came. `now` is the time the caller already read:
    /// connections idle since before `now` minus the idle timeout are not
    /// used.
    ///
    /// Not an `async fn`: that would keep the request twice in the future
    /// (rust-lang/rust #62958), which every plain request carries.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    #[inline(always)] // its future is then built where the caller keeps it
    pub(super) fn send(
        &self,
        index: usize,
        mut request: Request<RequestBody>,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<Received>, Instant), UpstreamError>> + Send + '_
    {
        async move {
            let pool = &self.pools[index];
            let fresh_since = now.checked_sub(self.idle_timeout);
            loop {
                let (mut sender, reused) = match pool.checkout(fresh_since) {
                    Some(sender) => (sender, true),
                    // Boxed: dialling is rare, and its future large.
                    None => (Box::pin(self.connect(pool)).await?, false),
                };
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        let answered = Instant::now();
                        // After a `101` the connection is the tunnel's, not HTTP.
                        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                            self.checkin(index, sender, answered);
                        }
                        return Ok((response.map(Received::Http1), answered));
                    }
                    Err(mut failed) => match failed.take_message() {
                        // The pooled connection closed before the request was
                        // written (the upstream ended it while idle): nothing
                        // was sent, so another connection may carry it.
                        Some(unsent) if reused => request = unsent,
                        _ => return Err(UpstreamError::Exchange(failed.into_error())),
                    },
                }
            }
        }
    }

    async fn connect(&self, pool: &Pool) -> Result<SendRequest<RequestBody>, UpstreamError> {
        self.sweeper
            .get_or_init(|| spawn_sweeper(Arc::downgrade(&self.pools), self.idle_timeout));
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let io = connector
            .call(pool.target.clone())
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        // Written with send(2), as the client side is.
        let stream = SendStream::new(io.into_inner());
        match &pool.tls {
            None => handshake(stream).await,
            Some((tls, name)) => {
                handshake(tls_handshake(tls, name, stream, self.connect_timeout).await?).await
            }
        }
    }

    /// Returns a connection to its pool once it can carry the next request:
    /// at once, as idle since `now`, or once its response body is read.
    fn checkin(&self, index: usize, mut sender: SendRequest<RequestBody>, now: Instant) {
        if sender.is_ready() {
            self.pools[index].checkin(sender, now);
            return;
        }
        // Its response body is still streaming: it is ready once that has
        // been read, and gone if the body is dropped half-read.
        let pools = Arc::clone(&self.pools);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pools[index].checkin(sender, Instant::now());
            }
        });
    }
}

impl Pool {
    /// The next idle connection that can take a request and has been idle
    /// since `fresh_since` or later; the others met on the way are dropped,
    /// which closes them.
    fn checkout(&self, fresh_since: Option<Instant>) -> Option<SendRequest<RequestBody>> {
        while let Some(idle) = self.idle.pop() {
            let fresh = fresh_since.is_none_or(|cutoff| idle.since >= cutoff);
            if fresh && idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<RequestBody>, since: Instant) {
        self.idle.push(Idle { sender, since });
    }

    /// Drops (and so closes) the connections idle since before `cutoff`.
    fn expire(&self, cutoff: Instant) {
        // Requests keep popping and pushing meanwhile: look at as many as
        // were queued when the sweep began, each once.
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { break };
            if idle.since >= cutoff && !idle.sender.is_closed() {
                self.idle.push(idle);
            }
        }
    }
}

/// The client side of an upstream's TLS handshake on `stream`, within
/// `timeout` (the connect timeout: the handshake is part of connecting).
pub(super) async fn tls_handshake(
    tls: &TlsConnector,
    name: &ServerName<'static>,
    stream: SendStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<SendStream>, UpstreamError> {
    match tokio::time::timeout(timeout, tls.connect(name.clone(), stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(UpstreamError::Tls(e)),
        Err(_) => Err(UpstreamError::Tls(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no handshake within connect_timeout",
        ))),
    }
}

/// Starts HTTP/1.1 on a connected stream; a task of its own drives it.
async fn handshake<S>(stream: S) -> Result<SendRequest<RequestBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    // With upgrades: after a `101` the connection gives its socket to the
    // response's `OnUpgrade` instead of failing the exchange.
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Now and then closes the connections idle for longer than `idle_timeout`;
/// ends with the client.
fn spawn_sweeper(pools: Weak<[Pool]>, idle_timeout: Duration) {
    let every = (idle_timeout / 4).clamp(Duration::from_millis(1), MAX_SWEEP_INTERVAL);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(pools) = pools.upgrade() else { return };
            let Some(cutoff) = Instant::now().checked_sub(idle_timeout) else {
                continue;
            };
            for pool in pools.iter() {
                pool.expire(cutoff);
            }
        }
    });
}

/// The URI the connector dials for `upstream`.
pub(super) fn dial_target(upstream: &UpstreamConfig) -> Uri {
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query("/")
        .build()
        // Scheme and authority were parsed from the config: always valid.
        .unwrap_or_default()
}
