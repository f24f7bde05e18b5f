//! The upstream seam: the pipeline asks for "this request, sent to that
//! upstream" and gets the upstream's response, whatever carries it.
//!
//! Each upstream has one [`Connector`], chosen from its config when the
//! proxy starts. Today every upstream is HTTP/1.1 (over TCP or TLS) through
//! the pooled [`UpstreamClient`]; a TLS or HTTP/2 connector is a new variant here and a
//! new arm in [`Connectors::send`], and nothing else in the pipeline
//! changes. An enum rather than a trait object: the hot path matches on it
//! instead of boxing every request's future.

use std::future::Future;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::RequestBody;
use super::pool::{UpstreamClient, UpstreamError};
use crate::config::{ProxyConfig, UpstreamConfig};
use crate::tls::UpstreamTls;

/// How requests reach one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connector {
    /// HTTP/1.1 over pooled TCP connections, in TLS for `https://`
    /// upstreams (the pool makes the handshake as it connects).
    Http1,
}

/// Every upstream's connector, by upstream index.
pub(super) struct Connectors {
    by_upstream: Vec<Connector>,
    http1: UpstreamClient,
}

impl Connectors {
    /// `tls` has, per upstream index, the TLS of each `https://` upstream.
    pub(super) fn new(
        upstreams: &[UpstreamConfig],
        tls: &[Option<UpstreamTls>],
        settings: &ProxyConfig,
    ) -> Self {
        Self {
            by_upstream: upstreams.iter().map(|_| Connector::Http1).collect(),
            http1: UpstreamClient::new(upstreams, tls, settings),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to upstream `index`;
    /// gives the response and the time it came. `now` is the time the caller
    /// already read.
    ///
    /// Not an `async fn`: it hands back the connector's own future, so the
    /// request is not moved through one more future on every call. A second
    /// connector makes this an enum of futures (one arm each).
    pub(super) fn send(
        &self,
        index: usize,
        request: Request<RequestBody>,
        now: Instant,
    ) -> impl Future<Output = Result<(Response<Incoming>, Instant), UpstreamError>> + '_ {
        match self.by_upstream[index] {
            Connector::Http1 => self.http1.send(index, request, now),
        }
    }
}
