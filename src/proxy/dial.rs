//! Reaching the address a request names: the resolver every upstream
//! connection goes through (its failures typed, so a name that does not
//! resolve is told from a refused connect), the client of forward traffic
//! that no configured upstream has (per destination: its `connect_to`, its
//! TLS trust), and a `CONNECT`'s dial.

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
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;
use tower_service::Service;

use super::body::RequestBody;
use super::pool::UpstreamError;
use crate::config::{dns_key, DnsConfig, ProxyConfig};
use crate::control::Published;
use crate::fault::{DnsAnswer, DnsFault};
use crate::plan::decide_dns;

/// The most idle connections the forward client keeps to one authority.
/// It keeps them for `pool_idle_timeout`, as the upstream pool does. High
/// enough that every client connection kept busy through one tunnelled
/// authority keeps its upstream connection: below that, each request
/// beyond the cap paid a new TLS handshake (16 gave 0.39x the keep-alive
/// rps of a TLS listener with 32 clients in `scripts/interceptbench.sh`).
const AD_HOC_MAX_IDLE_PER_AUTHORITY: usize = 1024;

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
            let (delay, fault) = snapshot.take_dns_decision(decision);
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

/// Where a destination's traffic is dialled and how its TLS is checked.
#[derive(Clone)]
pub(super) struct DestinationConnector {
    tcp: HttpConnector<Resolver>,
    /// Dialled instead of the URI's authority (which stays in SNI).
    connect_to: Option<Authority>,
    /// For `https://` (intercepted traffic): the system's roots and the
    /// destination's `tls.ca`, ALPN h2 and HTTP/1.1.
    tls: Option<TlsConnector>,
    connect_timeout: std::time::Duration,
}

/// A destination's TLS handshake failed (told from a refused connect).
#[derive(Debug)]
struct TlsFailure(io::Error);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl StdError for TlsFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;
type Connecting = Pin<Box<dyn Future<Output = Result<DestinationStream, BoxError>> + Send>>;

impl Service<Uri> for DestinationConnector {
    type Response = DestinationStream;
    type Error = BoxError;
    // Boxed: connecting is rare (a new connection).
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let dial = match (&self.connect_to, uri.authority()) {
            (Some(to), _) => Some(to.clone()),
            (None, Some(authority)) if authority.port().is_none() && https => {
                format!("{authority}:443").parse().ok()
            }
            (None, authority) => authority.cloned(),
        };
        let mut tcp = self.tcp.clone();
        let tls = self.tls.clone().filter(|_| https);
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let dial = dial.ok_or("the request's URI has no host")?;
            let target = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(dial)
                .path_and_query("/")
                .build()?;
            let stream = tcp.call(target).await?.into_inner();
            let Some(tls) = tls else {
                return Ok(DestinationStream {
                    io: TokioIo::new(Either::Left(stream)),
                    h2: false,
                });
            };
            // The name the client asked for, whatever was dialled.
            let host = uri.host().ok_or("the request's URI has no host")?;
            let name = crate::tls::server_name(host)?;
            let stream = match tokio::time::timeout(timeout, tls.connect(name, stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(TlsFailure(e).into()),
                Err(_) => {
                    let late = io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no handshake within connect_timeout",
                    );
                    return Err(TlsFailure(late).into());
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(DestinationStream {
                io: TokioIo::new(Either::Right(stream)),
                h2,
            })
        })
    }
}

/// A connection to a destination, plain or TLS, and whether ALPN chose h2.
pub(super) struct DestinationStream {
    io: TokioIo<Either<TcpStream, TlsStream<TcpStream>>>,
    h2: bool,
}

impl Connection for DestinationStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for DestinationStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for DestinationStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Forward traffic to a destination (or to none, `other`): HTTP/1.1 to
/// wherever an absolute-form `http://` request names, and HTTP/1.1 or h2
/// (as ALPN agrees) over verified TLS for intercepted `https://` requests;
/// to the destination's `connect_to` instead, when it has one. Pooled by
/// authority: hyper-util's own client, as these authorities are not known
/// ahead and the upstream pool is indexed by configured upstream.
pub(super) struct AdHocClient {
    client: Client<DestinationConnector, RequestBody>,
}

impl AdHocClient {
    /// `tls`: the client config of intercepted traffic to it.
    pub(super) fn new(
        settings: &ProxyConfig,
        resolver: &Resolver,
        connect_to: Option<Authority>,
        tls: Option<Arc<ClientConfig>>,
    ) -> Self {
        let connector = DestinationConnector {
            tcp: connector(settings, resolver),
            connect_to,
            tls: tls.map(TlsConnector::from),
            connect_timeout: settings.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(AD_HOC_MAX_IDLE_PER_AUTHORITY)
            // `Host` is set already: the request target's authority.
            .set_host(false)
            .build(connector);
        Self { client }
    }

    /// Sends `request`, whose URI is in absolute form (`http://authority/…`
    /// or `https://…`: the client dials its authority and writes the
    /// origin form).
    pub(super) async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Instant), UpstreamError> {
        match self.client.request(request).await {
            Ok(response) => Ok((response, Instant::now())),
            Err(e) if e.is_connect() => match tls_failure(&e) {
                Some(message) => Err(UpstreamError::Tls(io::Error::other(message))),
                None => Err(UpstreamError::Connect(e.into())),
            },
            Err(e) => Err(UpstreamError::Forwarded(e.into())),
        }
    }
}

/// The TLS failure somewhere in a connect error's chain, said in a sentence.
fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(failure) = e.downcast_ref::<TlsFailure>() {
            return Some(failure.0.to_string());
        }
        current = e.source();
    }
    None
}
