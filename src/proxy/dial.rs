//! Reaching the address a request names: the resolver every upstream
//! connection goes through (its failures typed, so a name that does not
//! resolve is told from a refused connect), the HTTP/1.1 client of forward
//! traffic that no configured upstream has, and a `CONNECT`'s dial.

use std::error::Error as StdError;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::{GaiAddrs, GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use super::body::RequestBody;
use super::pool::UpstreamError;
use crate::config::ProxyConfig;

/// The most idle connections the forward client keeps to one authority.
/// It keeps them for `pool_idle_timeout`, as the upstream pool does.
const AD_HOC_MAX_IDLE_PER_AUTHORITY: usize = 16;

/// A name that did not resolve, as the resolver says.
#[derive(Debug)]
pub(super) struct DnsFailure(io::Error);

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name resolution failed: {}", self.0)
    }
}

impl StdError for DnsFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// The system resolver (`getaddrinfo` on a blocking thread, as hyper-util
/// does), with its failures typed as [`DnsFailure`].
#[derive(Clone)]
pub(super) struct Resolver(GaiResolver);

impl Resolver {
    fn new() -> Self {
        Self(GaiResolver::new())
    }
}

type Resolving = Pin<Box<dyn Future<Output = Result<GaiAddrs, DnsFailure>> + Send>>;

impl Service<Name> for Resolver {
    type Response = GaiAddrs;
    type Error = DnsFailure;
    // Boxed: resolving is rare (a new connection), its future opaque.
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DnsFailure>> {
        self.0.poll_ready(cx).map_err(DnsFailure)
    }

    fn call(&mut self, name: Name) -> Resolving {
        let resolving = self.0.call(name);
        Box::pin(async move { resolving.await.map_err(DnsFailure) })
    }
}

/// The TCP dialler of every upstream connection: [`Resolver`], the
/// connect timeout, `TCP_NODELAY`, and any scheme (TLS, when there is
/// one, is made over it by the caller).
pub(super) fn connector(settings: &ProxyConfig) -> HttpConnector<Resolver> {
    let mut connector = HttpConnector::new_with_resolver(Resolver::new());
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    connector
}

/// Opens a TCP connection to `authority` (its port explicit), for a tunnel.
pub(super) async fn tcp(
    connector: &HttpConnector<Resolver>,
    authority: &Authority,
) -> Result<TcpStream, UpstreamError> {
    let target = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    let mut connector = connector.clone();
    poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    let io = connector
        .call(target)
        .await
        .map_err(|e| UpstreamError::Connect(e.into()))?;
    Ok(io.into_inner())
}

/// HTTP/1.1 to wherever a forward request names, pooled by authority:
/// hyper-util's own client, as these authorities are not known ahead and
/// the upstream pool is indexed by configured upstream.
pub(super) struct AdHocClient {
    client: Client<HttpConnector<Resolver>, RequestBody>,
}

impl AdHocClient {
    pub(super) fn new(settings: &ProxyConfig) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(AD_HOC_MAX_IDLE_PER_AUTHORITY)
            // `Host` is set already: the request target's authority.
            .set_host(false)
            .build(connector(settings));
        Self { client }
    }

    /// Sends `request`, whose URI is in absolute form (`http://authority/…`:
    /// the client dials its authority and writes the origin form).
    pub(super) async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Instant), UpstreamError> {
        match self.client.request(request).await {
            Ok(response) => Ok((response, Instant::now())),
            Err(e) if e.is_connect() => Err(UpstreamError::Connect(e.into())),
            Err(e) => Err(UpstreamError::Forwarded(e.into())),
        }
    }
}
