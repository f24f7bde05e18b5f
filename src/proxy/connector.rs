//! The upstream seam: the pipeline asks for "this request, sent to that
//! upstream" and gets the upstream's response, whatever carries it.
//!
//! Each upstream has one [`Connector`], chosen from its config (`url`
//! scheme and `protocol`) when the proxy starts: HTTP/1.1 (over TCP or
//! TLS) through the pooled [`UpstreamClient`], HTTP/2 through the
//! multiplexed [`Http2Client`], or a choice per request (`auto`: the
//! client's version over `http://`, ALPN's over `https://`). A new way to
//! reach upstreams is a new variant here and a new arm in
//! [`Connectors::send`]; nothing else in the pipeline changes. An enum
//! rather than a trait object: the hot path matches on it instead of
//! boxing every request's future.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::header::UPGRADE;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::body::{Received, RequestBody};
use super::dial::{self, AdHocClient, Resolver};
use super::h2::{Http2Client, Sent};
use super::pool::{UpstreamClient, UpstreamError};
use rustls::ClientConfig;

use crate::config::{Config, Protocol};
use crate::tls::UpstreamTls;

/// How requests reach one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connector {
    /// HTTP/1.1 over pooled TCP connections, in TLS for `https://`
    /// upstreams (the pool makes the handshake as it connects).
    Http1,
    /// HTTP/2 always: `h2` over TLS, `h2c` without.
    Http2,
    /// `auto` over `http://`: h2c for a client that spoke HTTP/2, HTTP/1.1
    /// for the others.
    FollowClient,
    /// `auto` over `https://`: HTTP/2 unless ALPN chose HTTP/1.1.
    Alpn,
    /// Forward traffic that no configured upstream has (a destination, or
    /// `other`): to the authority of each request's absolute-form URI.
    AdHoc,
}

/// Every upstream's connector, by upstream index.
pub(super) struct Connectors {
    by_upstream: Vec<Connector>,
    http1: UpstreamClient,
    http2: Http2Client,
    /// By upstream index: `Some` for destinations and `other`.
    ad_hoc: Vec<Option<AdHocClient>>,
    /// Dials a `CONNECT`'s target.
    tcp: HttpConnector<Resolver>,
}

impl Connectors {
    /// `tls` has, per upstream index, the TLS of each `https://` upstream
    /// (for HTTP/1.1; HTTP/2 offers its own ALPN from the same settings).
    /// `forward_tls` has, per upstream index, the TLS of intercepted
    /// traffic to each destination (and `other`).
    pub(super) fn new(
        config: &Config,
        tls: &[Option<UpstreamTls>],
        forward_tls: &[Option<Arc<ClientConfig>>],
        resolver: &Resolver,
    ) -> Self {
        let upstreams = &config.upstreams;
        let settings = &config.proxy;
        let by_upstream = upstreams
            .iter()
            .map(
                |upstream| match (upstream.protocol, upstream.scheme == Scheme::HTTPS) {
                    _ if upstream.ad_hoc => Connector::AdHoc,
                    (Protocol::Http1, _) => Connector::Http1,
                    (Protocol::H2 | Protocol::H2c, _) => Connector::Http2,
                    (Protocol::Auto, false) => Connector::FollowClient,
                    (Protocol::Auto, true) => Connector::Alpn,
                },
            )
            .collect();
        let h2_tls: Vec<Option<UpstreamTls>> = upstreams
            .iter()
            .zip(tls)
            .map(|(upstream, tls)| {
                let tls = tls.as_ref()?;
                let mut config = (*tls.config).clone();
                config.alpn_protocols = match upstream.protocol {
                    Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                    _ => vec![b"h2".to_vec()],
                };
                Some(UpstreamTls {
                    config: Arc::new(config),
                    server_name: tls.server_name.clone(),
                })
            })
            .collect();
        Self {
            by_upstream,
            http1: UpstreamClient::new(upstreams, tls, settings, resolver),
            http2: Http2Client::new(upstreams, &h2_tls, settings, resolver),
            ad_hoc: upstreams
                .iter()
                .enumerate()
                .map(|(i, upstream)| {
                    upstream.ad_hoc.then(|| {
                        let connect_to = config
                            .destinations
                            .iter()
                            .find(|d| d.upstream == i)
                            .and_then(|d| d.connect_to.clone());
                        let tls = forward_tls.get(i).cloned().flatten();
                        AdHocClient::new(settings, resolver, connect_to, tls)
                    })
                })
                .collect(),
            tcp: dial::connector(settings, resolver),
        }
    }

    /// A TCP connection to `authority` (port explicit), for a `CONNECT`'s tunnel.
    pub(super) async fn tcp(&self, authority: &Authority) -> Result<TcpStream, UpstreamError> {
        dial::tcp(&self.tcp, authority).await
    }

    /// Sends `request` (origin-form URI, `Host` set; absolute form for an
    /// ad-hoc upstream, which has no address of its own) to upstream
    /// `index`; gives the response and the time it came. `client` is the HTTP
    /// version the client spoke; `now` is the time the caller already read.
    ///
    /// Not an `async fn`: HTTP/1.1 hands back the pool's own future, so the
    /// request is not moved through one more future on every call.
    #[inline(always)] // its future is then built where the caller keeps it
    pub(super) fn send(
        &self,
        index: usize,
        request: Request<RequestBody>,
        client: Version,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<Received>, Instant), UpstreamError>> + '_ {
        let http2 = match self.by_upstream[index] {
            Connector::Http1 => false,
            Connector::FollowClient => client == Version::HTTP_2,
            Connector::Http2 => true,
            // An upgrade (a WebSocket) goes over HTTP/1.1, the one
            // version that carries it, when the upstream may speak it.
            Connector::Alpn => {
                !self.http2.chose_http1(index) && !request.headers().contains_key(UPGRADE)
            }
            Connector::AdHoc => {
                let sending = async move {
                    match &self.ad_hoc[index] {
                        Some(client) => client
                            .send(request)
                            .await
                            .map(|(response, at)| (response.map(Received::Http1), at)),
                        None => Err(UpstreamError::Connect("no client for this upstream".into())),
                    }
                };
                return Either::Right(Either::Left(sending));
            }
        };
        if !http2 {
            return Either::Left(self.http1.send(index, request, now));
        }
        // Boxed: an HTTP/2 exchange's future is twice an HTTP/1.1 one's, and
        // inline it would make every request's future (which hyper moves
        // about) that large. One allocation next to the several hyper's
        // HTTP/2 makes per stream.
        Either::Right(Either::Right(Box::pin(async move {
            // A `let`, not a `match` around both waits: the first one's
            // result would stay in the future while the second runs.
            let request = match self.http2.send(index, request).await? {
                Sent::Answered(response, at) => return Ok((response.map(Received::Http2), at)),
                Sent::Http1(request) => request,
            };
            // The first connection taught that the upstream speaks
            // HTTP/1.1 only. Boxed: it happens once per upstream.
            Box::pin(self.http1.send(index, request, now)).await
        })))
    }
}
