//! Reaching the address a request names: the resolver every upstream
//! connection goes through (its failures typed, so a name that does not
//! resolve is told from a refused connect), the HTTP/1.1 client of forward
//! traffic that no configured upstream has, and a `CONNECT`'s dial.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use super::body::RequestBody;
use super::pool::UpstreamError;
use crate::config::{dns_key, DnsConfig, ProxyConfig};
use crate::control::Published;
use crate::fault::{DnsAnswer, DnsFault};
use crate::plan::decide_dns;

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

/// The resolver of every upstream connection: the DNS rules and `[dns]
/// records` first (README "DNS": the proxy resolves through the same
/// rules as faultline's DNS server), then the system resolver
/// (`getaddrinfo` on a blocking thread, as hyper-util does), with its
/// failures typed as [`DnsFailure`]. An upstream given by IP address never
/// gets here: hyper-util's connector dials it as it is.
#[derive(Clone)]
pub(super) struct Resolver {
    system: GaiResolver,
    view: Option<Arc<DnsView>>,
}

/// What the proxy's resolution looks at besides the system resolver.
struct DnsView {
    published: Arc<Published>,
    records: Arc<HashMap<String, Vec<IpAddr>>>,
    /// How long an `answer = "timeout"` rule keeps a dial waiting before
    /// it fails: the connect timeout, as a resolver that never answers
    /// would keep it for its own.
    timeout: Duration,
}

impl Resolver {
    /// The resolver of a proxy whose rules are published in `published`.
    pub(super) fn new(
        published: Arc<Published>,
        dns: Option<&DnsConfig>,
        settings: &ProxyConfig,
    ) -> Self {
        Self {
            system: GaiResolver::new(),
            view: Some(Arc::new(DnsView {
                published,
                records: dns.map(|dns| Arc::clone(&dns.records)).unwrap_or_default(),
                timeout: settings.connect_timeout,
            })),
        }
    }
}

/// The addresses a name resolved to (ports are the dialler's to set).
pub(super) type Addresses = std::vec::IntoIter<SocketAddr>;

type Resolving = Pin<Box<dyn Future<Output = Result<Addresses, DnsFailure>> + Send>>;

impl Service<Name> for Resolver {
    type Response = Addresses;
    type Error = DnsFailure;
    // Boxed: resolving is rare (a new connection), its future opaque.
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DnsFailure>> {
        self.system.poll_ready(cx).map_err(DnsFailure)
    }

    fn call(&mut self, name: Name) -> Resolving {
        let view = self.view.as_ref().filter(|view| {
            // No DNS rule and no record: straight to the system resolver.
            !view.records.is_empty() || !view.published.load().rules.dns_candidates().is_empty()
        });
        let Some(view) = view.map(Arc::clone) else {
            let resolving = self.system.call(name);
            return Box::pin(async move {
                let addresses: Vec<SocketAddr> = resolving.await.map_err(DnsFailure)?.collect();
                Ok(addresses.into_iter())
            });
        };
        let mut system = self.system.clone();
        Box::pin(async move {
            let key = dns_key(name.as_str());
            let snapshot = view.published.load_full();
            // As getaddrinfo asks: A, then AAAA; the first rule that fires decides.
            let decision = decide_dns(&snapshot.rules, &key, QTYPE_A, b"")
                .or_else(|| decide_dns(&snapshot.rules, &key, QTYPE_AAAA, b""));
            let (delay, fault) = match decision {
                Some(decision) => {
                    for &i in &decision.fired {
                        snapshot.count_dns_injected(i);
                    }
                    (decision.delay, decision.answer)
                }
                None => (Duration::ZERO, None),
            };
            let wait = match &fault {
                Some(DnsFault {
                    answer: DnsAnswer::Timeout,
                    ..
                }) => delay.saturating_add(view.timeout),
                _ => delay,
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = snapshot.halt.halted() => {}
                }
            }
            // The kill switch: the truth.
            let fault = fault.filter(|_| !snapshot.halt.is_halted());
            if let Some(fault) = fault {
                let failure = |what: &str| {
                    Err(DnsFailure(io::Error::other(format!(
                        "{key}: {what} (a DNS rule)"
                    ))))
                };
                return match &fault.answer {
                    DnsAnswer::NxDomain => failure("NXDOMAIN"),
                    DnsAnswer::NoData => failure("no address records (NODATA)"),
                    DnsAnswer::ServFail => failure("SERVFAIL"),
                    DnsAnswer::Refused => failure("REFUSED"),
                    DnsAnswer::Timeout => failure("no answer (timed out)"),
                    DnsAnswer::Addresses(ips) => Ok(ips
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, 0))
                        .collect::<Vec<_>>()
                        .into_iter()),
                };
            }
            if let Some(ips) = view.records.get(&key) {
                let addresses: Vec<SocketAddr> =
                    ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
                return Ok(addresses.into_iter());
            }
            poll_fn(|cx| system.poll_ready(cx))
                .await
                .map_err(DnsFailure)?;
            let addresses: Vec<SocketAddr> = system.call(name).await.map_err(DnsFailure)?.collect();
            Ok(addresses.into_iter())
        })
    }
}

/// Record type codes, as rules name them.
const QTYPE_A: u16 = 1;
const QTYPE_AAAA: u16 = 28;

/// The TCP dialler of every upstream connection: [`Resolver`], the
/// connect timeout, `TCP_NODELAY`, and any scheme (TLS, when there is
/// one, is made over it by the caller).
pub(super) fn connector(settings: &ProxyConfig, resolver: &Resolver) -> HttpConnector<Resolver> {
    let mut connector = HttpConnector::new_with_resolver(resolver.clone());
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
    pub(super) fn new(settings: &ProxyConfig, resolver: &Resolver) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(AD_HOC_MAX_IDLE_PER_AUTHORITY)
            // `Host` is set already: the request target's authority.
            .set_host(false)
            .build(connector(settings, resolver));
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
