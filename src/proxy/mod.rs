//! Doing it: the request pipeline. For each request, in order:
//! route (which upstream: the front door's part), decide (which faults,
//! [`crate::plan::decide`]), then either forward at once (no fault: the fast
//! path) or run the fault phases of [`inject`]: before upstream (delay,
//! answer, abort or hold), forward, after upstream (response latency,
//! shaping, marking). Errors stay typed ([`ProxyError`]) until the edge,
//! [`Proxy::handle`], which records the request and turns an error into a
//! response with [`synthetic::rescue`], the one place that does.
//!
//! Two seams keep new protocols out of the pipeline: a front door is an
//! [`Entry`] and its routing (a plain listener, an upstream's dedicated
//! port, a forward listener routed by authority in [`egress`]); an
//! upstream is reached through its connector ([`connector`], [`dial`]). An
//! upgrade goes through the same pipeline as any request, and so does a
//! forward listener's `CONNECT`; after the `101` (or the `CONNECT`'s
//! `200`), [`tunnel`] copies the bytes, or, for a host the listener
//! intercepts, [`intercept`] terminates the client's TLS and serves the
//! requests inside through this same pipeline.

mod body;
mod connector;
mod dial;
mod egress;
mod forward;
mod h2;
mod inject;
mod intercept;
mod pool;
mod regions;
mod shape;
pub mod synthetic;
mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus::{IntCounter, IntGauge};
use tokio_util::either::Either;

pub use body::ResponseBody;
use body::{RequestBody, UpstreamBody};

use crate::ca::Ca;
use crate::config::{Config, RouteConfig, UpstreamConfig};
use crate::control::{Published, Snapshot};
use crate::grpc::{self, GrpcStatus};
use crate::metrics::{ClientErrorReason, Metrics, UpstreamMetrics};
use crate::plan::{self, Decision, RequestView};
use crate::server::ConnInfo;
use crate::tls::UpstreamTls;
use crate::traffic::{Outcome, Tally};
use connector::Connectors;
use forward::Hop;
use synthetic::{Blame, ProxyError};
use tunnel::TunnelFaults;

/// The largest form body read to find a query-protocol call's `Action`
/// (README "AWS-aware rules"): only bodies that say their length, up to
/// this, are read; others are decided without the operation.
pub const FORM_READ_LIMIT: u64 = 64 * 1024;
/// How long reading that body may take; a client slower than this is
/// decided without the operation, and its body forwarded as it comes.
const FORM_READ_TIME: Duration = Duration::from_secs(5);

/// A request's future for the rare paths (a fault, a form read first),
/// boxed so that a plain request's future is not as large as theirs.
type Boxed<'a> = Pin<
    Box<dyn Future<Output = (Result<Response<ResponseBody>, Unanswered>, Instant)> + Send + 'a>,
>;

/// A timeout that never fires, and the longest one kept.
const NO_TIMEOUT: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Where a connection came in: a shared listener with routes, an
/// upstream's dedicated port, or a forward listener (routed by each
/// request's own authority, [`egress`]). A new front door is a new way in
/// here and a new arm in [`Proxy::route`].
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    Listener(usize),
    Upstream(usize),
    /// A forward listener, by listener index.
    Forward(usize),
}

/// The state every request shares: upstreams, routes, the published rule
/// snapshot and the upstream connectors.
pub struct Proxy {
    upstreams: Vec<UpstreamConfig>,
    /// Per listener index, its routes.
    routes: Vec<ListenerRoutes>,
    /// The forward listeners' settings, and upstreams by authority.
    forward_routes: egress::ForwardRoutes,
    published: Arc<Published>,
    connectors: Connectors,
    /// faultline's CA, for intercepted `CONNECT`s (when a forward listener
    /// intercepts any).
    ca: Option<Arc<Ca>>,
    upstream_timeout: Duration,
    /// For a TLS handshake with an intercepted client.
    header_timeout: Duration,
    mark_faults: bool,
    active_faults: AtomicUsize,
    max_active_faults: usize,
    metrics: Metrics,
    /// Per upstream index.
    upstream_metrics: Vec<UpstreamMetrics>,
    /// The bound on the regions forward traffic's signatures label series with.
    signed_regions: regions::SignedRegions,
    /// `faultline_inflight_requests` per listener index, then per upstream
    /// index for dedicated ports (labelled with the upstream's name).
    listener_inflight: Vec<IntGauge>,
    dedicated_inflight: Vec<IntGauge>,
    /// `faultline_client_errors_total`, in the order of [`ClientErrorReason::ALL`].
    client_errors: [IntCounter; ClientErrorReason::ALL.len()],
}

/// The TLS of forward traffic: faultline's CA for intercepted clients,
/// and per upstream index, the client config of each destination's (and
/// `other`'s) intercepted traffic, verified with the system's roots and
/// the destination's `tls.ca`.
#[derive(Debug, Default)]
pub struct ForwardTls {
    pub ca: Option<Arc<Ca>>,
    pub clients: Vec<Option<Arc<rustls::ClientConfig>>>,
}

/// The `Via` faultline adds to the forward traffic it sends, and by which
/// it knows a request it sent already.
const VIA: HeaderValue = HeaderValue::from_static("1.1 faultline");

/// Why the pipeline gives neither the upstream's response nor an injected one.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    /// The proxy's own failure, answered by [`synthetic::rescue`] at the edge.
    #[error(transparent)]
    Error(#[from] ProxyError),
    /// An injected abort or blackhole on an HTTP/2 stream: hyper resets
    /// that stream alone.
    #[error(transparent)]
    Aborted(#[from] StreamAborted),
}

/// A decision, with the snapshot it was made from: the halt signal of its
/// faults, and the counters of the rules that fired.
struct Plan {
    decision: Decision,
    snapshot: Arc<Snapshot>,
    upstream: usize,
}

impl Proxy {
    /// `upstream_tls` has, per upstream index, the TLS of each `https://`
    /// upstream, read by the caller (a file may fail to read).
    pub fn new(
        config: &Config,
        upstream_tls: &[Option<UpstreamTls>],
        forward_tls: ForwardTls,
        published: Arc<Published>,
        metrics: Metrics,
    ) -> Self {
        let mut routes = vec![ListenerRoutes::default(); config.listeners.len()];
        for route in &config.routes {
            let listener = &mut routes[route.listener];
            listener.by_host |= route.host.is_some();
            listener.routes.push(route.clone());
        }
        // Every connection resolves through the DNS rules too (README "DNS").
        let resolver =
            dial::Resolver::new(Arc::clone(&published), config.dns.as_ref(), &config.proxy);
        Self {
            upstream_metrics: config
                .upstreams
                .iter()
                .map(|u| metrics.upstream(u))
                .collect(),
            listener_inflight: config
                .listeners
                .iter()
                .map(|l| metrics.inflight(&l.name))
                .collect(),
            dedicated_inflight: config
                .upstreams
                .iter()
                // Apart from listener names, which may be the same.
                .map(|u| metrics.inflight(&format!("upstream:{}", u.name)))
                .collect(),
            client_errors: metrics.client_errors(),
            signed_regions: regions::SignedRegions::new(
                config
                    .upstreams
                    .iter()
                    .filter_map(|u| u.labels.get("region").map(String::as_str)),
            ),
            metrics,
            upstreams: config.upstreams.clone(),
            routes,
            forward_routes: egress::ForwardRoutes::new(config),
            published,
            connectors: Connectors::new(config, upstream_tls, &forward_tls.clients, &resolver),
            ca: forward_tls.ca,
            header_timeout: config.proxy.header_timeout,
            // Capped so a deadline can always be added to an instant:
            // thirty years is no timeout at all, as tokio's own far future.
            upstream_timeout: config.proxy.upstream_timeout.min(NO_TIMEOUT),
            mark_faults: config.proxy.mark_faults,
            active_faults: AtomicUsize::new(0),
            max_active_faults: config.proxy.max_active_faults,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where the rule snapshots this proxy reads are published.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// The running counts of each upstream's traffic, by upstream index.
    pub fn tallies(&self) -> Vec<Arc<Tally>> {
        self.upstream_metrics
            .iter()
            .map(|m| Arc::clone(m.tally()))
            .collect()
    }

    pub fn upstreams(&self) -> &[UpstreamConfig] {
        &self.upstreams
    }

    /// The hyper service for one connection.
    pub fn service(
        self: &Arc<Self>,
        entry: Entry,
        conn: ConnInfo,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<ResponseBody>,
        Error = StreamAborted,
        Future = impl Future<Output = Result<Response<ResponseBody>, StreamAborted>> + Send,
    > + Send
           + 'static {
        // Formatted once per connection, not per request.
        let client_ip = HeaderValue::from_str(&conn.peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let conn = Arc::new(Connection {
            proxy: Arc::clone(self),
            entry,
            client_ip,
            info: conn,
            intercepted: None,
        });
        // One per-connection Arc per request: no counter shared by every worker.
        hyper::service::service_fn(move |request| Proxy::handle(Arc::clone(&conn), request))
    }

    /// The edge of the pipeline: everything before it returns typed
    /// errors; here the request is recorded, and an error becomes its
    /// response.
    ///
    /// This and the steps below it are plain functions giving an `async`
    /// block, not `async fn`s: an `async fn` keeps its arguments and the
    /// locals they are moved into side by side in its future (rust-lang/rust
    /// #62958), a few hundred bytes for every request moved down a step,
    /// and hyper moves each request's future whole.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn handle(
        conn: Arc<Connection>,
        request: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, StreamAborted>> + Send + 'static {
        async move {
            let this = &*conn.proxy;
            let conn = &conn;
            let start = Instant::now();
            let inflight = match conn.entry {
                Entry::Listener(i) | Entry::Forward(i) => &this.listener_inflight[i],
                Entry::Upstream(i) => &this.dedicated_inflight[i],
            };
            let _inflight = Inflight::enter(inflight);
            if request.method() == Method::CONNECT
                && (!matches!(conn.entry, Entry::Forward(_)) || conn.intercepted.is_some())
            {
                // A reverse proxy has no tunnel to offer: the client's mistake,
                // never forwarded. (A forward listener serves it, outside TLS.)
                let error = ProxyError::ConnectNotSupported;
                this.record_client_error(&error);
                return Ok(synthetic::rescue(&error, false));
            }
            if matches!(conn.entry, Entry::Forward(_)) && sent_by_faultline(&request) {
                return Ok(synthetic::rescue(&ProxyError::ForwardLoop, false));
            }
            // Read once here, for the answer to an error and the gRPC metric;
            // an HTTP/1.1 request is ruled out by its version alone.
            let grpc = grpc::is_call(request.version(), request.headers());
            let upstream = match this.route(conn, &request) {
                Ok(upstream) => upstream,
                Err(error) => {
                    this.record_client_error(&error);
                    return Ok(synthetic::rescue(&error, grpc));
                }
            };
            let method = request.method().clone();
            let region = this.derived_region(conn, &request, upstream);
            let metrics = &this.upstream_metrics[upstream];
            // Counts the call once however it ends, a client that leaves
            // mid-call (this future dropped) included.
            let call = grpc.then(|| GrpcCall(Some(metrics)));
            let (outcome, end) = this.pipeline(upstream, conn, request, start).await;
            let elapsed = end.saturating_duration_since(start);
            match outcome {
                Ok(mut response) => {
                    let by_fault = response.extensions().get::<ByFault>().is_some();
                    let status = response.status();
                    metrics.record_request_in(
                        region.as_ref().map(crate::aws::RegionName::as_str),
                        &method,
                        status,
                        elapsed,
                        by_fault,
                    );
                    if let Some(call) = call {
                        call.answered(&mut response);
                    }
                    Ok(response)
                }
                Err(Unanswered::Error(error)) => {
                    let response = synthetic::rescue(&error, grpc);
                    if let Some(call) = call {
                        call.ended(Some(error.grpc_status()));
                    }
                    match error.blame() {
                        Blame::Upstream(reason) => metrics.record_upstream_error(reason),
                        // Gone before the answer: counted as the client's, not as a request.
                        Blame::Client(ClientErrorReason::Aborted) => {
                            this.record_client_error(&error);
                            return Ok(response);
                        }
                        Blame::Client(_) => this.record_client_error(&error),
                        Blame::Config => {}
                    }
                    // The status the error stands for, not the 200 a gRPC
                    // answer goes out with: error ratios and guards see it.
                    metrics.record_request_in(
                        region.as_ref().map(crate::aws::RegionName::as_str),
                        &method,
                        error.status(),
                        elapsed,
                        false,
                    );
                    Ok(response)
                }
                Err(Unanswered::Aborted(aborted)) => {
                    metrics.record_unanswered(&method, elapsed);
                    if let Some(call) = call {
                        // hyper resets the stream with INTERNAL_ERROR, which gRPC
                        // clients read as INTERNAL.
                        call.ended(Some(GrpcStatus::INTERNAL));
                    }
                    Err(aborted)
                }
            }
        }
    }

    /// Decides, then does: forwards at once when no rule fires, else runs
    /// the fault phases. Gives the outcome and when it came.
    ///
    /// Decided before the future exists, so the plan is not carried in a
    /// plain request's future; only a request whose form body a rule needs
    /// (the AWS query protocol's `Action`) waits before deciding, in a
    /// future of its own.
    // Inlined: the future it gives is then built where its caller keeps
    // it, not built and copied there.
    #[inline(always)]
    fn pipeline<'a>(
        &'a self,
        upstream: usize,
        conn: &'a Arc<Connection>,
        request: Request<Incoming>,
        start: Instant,
    ) -> impl Future<Output = (Result<Response<ResponseBody>, Unanswered>, Instant)> + Send + 'a
    {
        // An intercepted CONNECT is not itself faulted: the requests in it are.
        let intercepted = self.intercepts(conn, &request);
        let snapshot = self.published.load();
        if !intercepted && reads_form(&snapshot, upstream, &request) {
            // Not held across the read: a snapshot guard is for moments.
            drop(snapshot);
            // Boxed: rare, and it would make every request's future larger.
            return Either::Right(Box::pin(async move {
                let (request, form) = read_form(request).await;
                let plan = self.decide(self.published.load(), upstream, conn, &request, form);
                self.run(plan, upstream, conn, request, start).await
            }) as Boxed<'a>);
        }
        let request = request.map(RequestBody::from);
        let plan = match intercepted {
            true => None,
            false => self.decide(snapshot, upstream, conn, &request, None),
        };
        // Run's own future, not wrapped: hyper's is moved whole, and each
        // wrapping copied it once more.
        self.run(plan, upstream, conn, request, start)
    }

    /// The plan for a request: `None` when no rule fires.
    fn decide(
        &self,
        snapshot: arc_swap::Guard<Arc<Snapshot>>,
        upstream: usize,
        conn: &Connection,
        request: &Request<RequestBody>,
        form: Option<bytes::Bytes>,
    ) -> Option<Plan> {
        let view = RequestView {
            method: request.method(),
            path: request.uri().path(),
            query: request.uri().query(),
            authority: request.uri().authority().map(|a| a.as_str()),
            headers: request.headers(),
            client_ip: conn.client_ip.as_bytes(),
            form: form.as_deref(),
        };
        plan::decide(&snapshot.rules, upstream, &view).map(|decision| Plan {
            decision,
            // Kept only when a fault needs it: one atomic load per plain request.
            snapshot: arc_swap::Guard::into_inner(snapshot),
            upstream,
        })
    }

    /// Does what [`Self::decide`] planned.
    // Inlined: the future it gives is then built where its caller keeps
    // it, not built and copied there.
    #[inline(always)]
    fn run<'a>(
        &'a self,
        plan: Option<Plan>,
        upstream: usize,
        conn: &'a Arc<Connection>,
        request: Request<RequestBody>,
        start: Instant,
    ) -> Either<
        impl Future<Output = (Result<Response<ResponseBody>, Unanswered>, Instant)> + Send + 'a,
        Boxed<'a>,
    > {
        match plan {
            // Sent as it came: the time read on arrival stands for both.
            None => Either::Left(async move {
                match self.forward(upstream, conn, request, start, None).await {
                    Ok((response, answered)) => (Ok(response), answered),
                    Err(error) => (Err(error.into()), Instant::now()),
                }
            }),
            // Boxed: a fault's future is several times the size of a plain
            // forward, and every request's future would be that big, and
            // copied so, if it were kept inline.
            Some(plan) => Either::Right(Box::pin(async move {
                let outcome = self.inject(plan, conn, request, start).await;
                (outcome, Instant::now())
            })),
        }
    }

    /// The region forward traffic is counted under when its destination
    /// has no `region` label: the one its AWS host names (read once per
    /// intercepted tunnel), else the one it is signed for
    /// ([`crate::aws::HostRegion::of_request`]) within the bound of
    /// [`regions`], as a client picks that one freely. `None` for reverse
    /// traffic, at once. Kept inline, never allocated.
    fn derived_region<B>(
        &self,
        conn: &Connection,
        request: &Request<B>,
        upstream: usize,
    ) -> Option<crate::aws::RegionName> {
        let host = match &conn.intercepted {
            Some(intercepted) => intercepted.region?,
            None if matches!(conn.entry, Entry::Forward(_))
                && self.names_region_by_host(upstream) =>
            {
                crate::aws::host_region(request.uri().host()?)
            }
            None => return None,
        };
        host.of_request(request.headers(), request.uri().query(), |region| {
            self.signed_regions.bound(region)
        })
    }

    /// Whether forward traffic to `upstream` is counted under the region
    /// its host names: a destination (or `other`) with no `region` label.
    fn names_region_by_host(&self, upstream: usize) -> bool {
        let target = &self.upstreams[upstream];
        target.ad_hoc && !target.labels.contains_key("region")
    }

    /// Whether `request` is a `CONNECT` this proxy decrypts.
    fn intercepts(&self, conn: &Connection, request: &Request<Incoming>) -> bool {
        match conn.entry {
            Entry::Forward(listener) if request.method() == Method::CONNECT => {
                self.ca.is_some() && self.forward_routes.intercepts(listener, request.uri())
            }
            _ => false,
        }
    }

    /// The upstream for a request: the dedicated one, the first matching
    /// route, (on a forward listener) the one its authority names, or (in
    /// an intercepted tunnel) the tunnel's.
    fn route(&self, conn: &Connection, request: &Request<Incoming>) -> Result<usize, ProxyError> {
        if let Some(intercepted) = &conn.intercepted {
            return Ok(intercepted.upstream);
        }
        match conn.entry {
            Entry::Upstream(upstream) => Ok(upstream),
            Entry::Listener(listener) => {
                let listener = self.routes.get(listener).ok_or(ProxyError::NoRoute)?;
                // Finding the host is a header lookup: only if a route asks.
                let host = listener.by_host.then(|| request_host(request)).flatten();
                let path = request.uri().path();
                listener
                    .routes
                    .iter()
                    .find(|route| route.matches(host, path))
                    .map(|route| route.upstream)
                    .ok_or(ProxyError::NoRoute)
            }
            Entry::Forward(listener) => self
                .forward_routes
                .route(listener, request.method(), request.uri())
                .map(|target| target.upstream),
        }
    }

    /// Sends `request` to `upstream`; `sent` is the time it leaves. Gives
    /// the upstream's response and when it came. A clock read costs tens of
    /// nanoseconds on a VM, so a plain request reads it twice: on arrival
    /// (passed here as `sent`) and when the response comes (in the pool).
    ///
    /// An upgrade the upstream accepts (`101`) gets its tunnel here, shaped
    /// by `faults`; it starts copying once the `101` has gone back.
    #[inline(always)] // as `pipeline`
    #[allow(clippy::manual_async_fn)] // on purpose: see `Proxy::handle`
    fn forward<'a>(
        &'a self,
        upstream: usize,
        conn: &'a Arc<Connection>,
        mut request: Request<RequestBody>,
        sent: Instant,
        faults: Option<TunnelFaults<'a>>,
    ) -> impl Future<Output = Result<(Response<ResponseBody>, Instant), ProxyError>> + Send + 'a
    {
        async move {
            let target = &self.upstreams[upstream];
            if request.method() == Method::CONNECT {
                // Boxed: dialling's future is large, and a CONNECT rare.
                return Box::pin(self.open_tunnel(upstream, conn, request, faults)).await;
            }
            // A timeout while waiting on the client for its body is the client's stall.
            let waiting_on_client = request.body_mut().watch_client();
            let client_version = request.version();
            // In a block: the request's storage ends before the wait, and
            // with it the request is not carried in the future twice.
            let (sending, upgrade) = {
                let (request, upgrade) = self.outgoing(target, conn, request)?;
                let sending = self
                    .connectors
                    .send(upstream, request, client_version, sent);
                (sending, upgrade)
            };
            let deadline = tokio::time::Instant::from_std(sent + self.upstream_timeout);
            match tokio::time::timeout_at(deadline, sending).await {
                Ok(Ok((mut response, answered))) => {
                    let metrics = &self.upstream_metrics[upstream];
                    metrics.record_upstream(answered.saturating_duration_since(sent));
                    if target.ad_hoc && response.status() == StatusCode::LOOP_DETECTED {
                        // faultline itself, one hop on, found its own `Via`:
                        // told as this proxy's error, not as an upstream's 508
                        // (whose faultline headers are stripped below).
                        let looped = response.headers().get(&synthetic::X_FAULTLINE_ERROR);
                        if looped.is_some_and(|code| code == ProxyError::ForwardLoop.code()) {
                            return Err(ProxyError::ForwardLoop);
                        }
                    }
                    let switching = match upgrade {
                        Some(client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                            let upstream_side = hyper::upgrade::on(&mut response);
                            tunnel::spawn(client, upstream_side, Arc::clone(conn), faults);
                            true
                        }
                        // Refused (or answered otherwise): a response like any.
                        _ => false,
                    };
                    let (mut parts, body) = response.into_parts();
                    forward::remove_hop_by_hop(&mut parts.headers, Hop::Response { switching });
                    let success = Outcome::of_status(parts.status) == Outcome::Success;
                    let body = UpstreamBody::new(body, Arc::clone(conn), upstream, success);
                    let response = Response::from_parts(parts, ResponseBody::Upstream(body));
                    Ok((response, answered))
                }
                Ok(Err(e)) => Err(ProxyError::from_upstream(&target.name, e)),
                Err(_)
                    if waiting_on_client.is_some_and(|waiting| waiting.load(Ordering::Acquire)) =>
                {
                    Err(ProxyError::ClientTimeout)
                }
                Err(_) => Err(ProxyError::UpstreamTimeout {
                    upstream: target.name.clone(),
                }),
            }
        }
    }

    /// The request as it goes upstream, and the client's side of an
    /// upgrade it asks for.
    fn outgoing(
        &self,
        target: &UpstreamConfig,
        conn: &Connection,
        request: Request<RequestBody>,
    ) -> Result<(Request<RequestBody>, Option<hyper::upgrade::OnUpgrade>), ProxyError> {
        // Forward traffic no upstream has goes where its URI says, with
        // that authority as its `Host` (RFC 9112 §3.2.2); intercepted
        // traffic to where its tunnel went, with the client's `Host`.
        let ad_hoc = match (target.ad_hoc, &conn.intercepted) {
            (false, _) => None,
            (true, None) => {
                let (authority, host) = ad_hoc_target(request.uri())?;
                Some((http::uri::Scheme::HTTP, authority, host))
            }
            (true, Some(intercepted)) => {
                let (authority, host) = intercepted.target(&request)?;
                Some((http::uri::Scheme::HTTPS, authority, host))
            }
        };
        let host = ad_hoc
            .as_ref()
            .map_or(&target.host_header, |(_, _, host)| host);
        let forward::Outgoing {
            mut request,
            upgrade,
        } = forward::upstream_request_with_host(target, host, &conn.client_ip, request).map_err(
            |reason| ProxyError::ClientProtocol {
                reason: reason.to_owned(),
            },
        )?;
        if let Some((scheme, authority, _)) = ad_hoc {
            // Absolute form again: the ad-hoc client dials its authority.
            *request.uri_mut() = absolute(scheme, authority, request.uri())?;
            // Marks it as faultline's, should it come back (a loop).
            request.headers_mut().append(http::header::VIA, VIA);
        }
        Ok((request, upgrade))
    }

    /// A forward listener's `CONNECT`: dials its target (or its
    /// destination's `connect_to`), and once that answers, gives the `200`
    /// and copies both ways after it ([`tunnel::spawn_connected`], shaped
    /// by `faults`). An intercepted one gives the `200` at once and serves
    /// the requests inside its TLS ([`intercept`]).
    async fn open_tunnel(
        &self,
        upstream: usize,
        conn: &Arc<Connection>,
        mut request: Request<RequestBody>,
        faults: Option<TunnelFaults<'_>>,
    ) -> Result<(Response<ResponseBody>, Instant), ProxyError> {
        let target = &self.upstreams[upstream];
        let routed = match conn.entry {
            Entry::Forward(listener) if conn.intercepted.is_none() => {
                self.forward_routes
                    .route(listener, request.method(), request.uri())?
            }
            _ => return Err(ProxyError::ConnectNotSupported),
        };
        let authority = routed.tunnel.ok_or(ProxyError::NoRoute)?;
        let Some(client) = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()
        else {
            // hyper leaves the hand-over in every CONNECT it serves.
            return Err(ProxyError::ClientProtocol {
                reason: "this CONNECT cannot be tunnelled".to_owned(),
            });
        };
        if let (true, Some(ca)) = (routed.intercept, &self.ca) {
            intercept::spawn(
                client,
                Arc::clone(conn),
                intercept::Tunnel {
                    upstream,
                    authority,
                    ca: Arc::clone(ca),
                    handshake_timeout: self.header_timeout,
                },
            );
            let now = Instant::now();
            return Ok((Response::new(ResponseBody::full(bytes::Bytes::new())), now));
        }
        let dial = self
            .forward_routes
            .connect_to(upstream)
            .unwrap_or(&authority);
        let sent = Instant::now();
        let stream = self
            .connectors
            .tcp(dial)
            .await
            .map_err(|e| ProxyError::from_upstream(&target.name, e))?;
        let answered = Instant::now();
        self.upstream_metrics[upstream].record_upstream(answered.saturating_duration_since(sent));
        tunnel::spawn_connected(client, stream, Arc::clone(conn), faults);
        Ok((
            Response::new(ResponseBody::full(bytes::Bytes::new())),
            answered,
        ))
    }

    /// [`Self::forward`] for a request sent now, after a fault held it.
    async fn forward_now(
        &self,
        upstream: usize,
        conn: &Arc<Connection>,
        request: Request<RequestBody>,
        faults: Option<TunnelFaults<'_>>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let (response, _) = self
            .forward(upstream, conn, request, Instant::now(), faults)
            .await?;
        Ok(response)
    }

    /// Counts a request its client failed: never the upstream's error.
    fn record_client_error(&self, error: &ProxyError) {
        if let Blame::Client(reason) = error.blame() {
            let slot = ClientErrorReason::ALL.iter().position(|r| *r == reason);
            if let Some(counter) = slot.and_then(|i| self.client_errors.get(i)) {
                counter.inc();
            }
        }
    }

    /// Counts a request that ends with no response at all (an injected
    /// abort or blackhole that closes its HTTP/1.1 connection).
    fn record_unanswered(&self, upstream: usize, method: &Method, since: Instant) {
        self.upstream_metrics[upstream].record_unanswered(method, since.elapsed());
    }
}

/// One listener's routes.
#[derive(Debug, Clone, Default)]
struct ListenerRoutes {
    /// In file order: the first that matches takes the request.
    routes: Vec<RouteConfig>,
    /// Whether any route matches on the host.
    by_host: bool,
}

/// An injected abort or blackhole on an HTTP/2 stream: returned as the
/// service's error, it makes hyper reset that stream alone.
#[derive(Debug, thiserror::Error)]
#[error("stream aborted by an injected fault")]
pub struct StreamAborted;

/// Marks a response an injected fault made, so the request is counted as
/// the fault's and not as the system's own error.
#[derive(Debug, Clone, Copy)]
struct ByFault;

/// Per connection: where it came in and who the client is.
struct Connection {
    proxy: Arc<Proxy>,
    entry: Entry,
    client_ip: HeaderValue,
    info: ConnInfo,
    /// Set for the decrypted connection inside an intercepted `CONNECT`.
    intercepted: Option<Intercepted>,
}

/// Where the requests of an intercepted tunnel go.
struct Intercepted {
    /// The destination's upstream (or `other`).
    upstream: usize,
    /// The `CONNECT`'s target, port explicit.
    authority: http::uri::Authority,
    /// Its host (and port, if not 443), the `Host` of a request that has none.
    host: HeaderValue,
    /// What its host says of the region its requests are counted under;
    /// `None` when its destination has a `region` label of its own.
    region: Option<crate::aws::HostRegion>,
}

impl Intercepted {
    /// Where a decrypted request goes, and its `Host`: the client's `Host`
    /// (or h2 `:authority`), kept byte for byte as a signature covers it,
    /// which must name the tunnel's host (the tunnel's port, if it names
    /// one); none at all, the tunnel's.
    fn target<B>(
        &self,
        request: &Request<B>,
    ) -> Result<(http::uri::Authority, HeaderValue), ProxyError> {
        let host = match request.headers().get(http::header::HOST) {
            Some(host) => host.clone(),
            None => match request.uri().authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).map_err(|_| {
                    ProxyError::ClientProtocol {
                        reason: "the request's authority is not a valid host".to_owned(),
                    }
                })?,
                None => self.host.clone(),
            },
        };
        let mismatch = || ProxyError::ClientProtocol {
            reason: format!(
                "the request's host is not the tunnel's ({}): one tunnel reaches one host",
                self.authority
            ),
        };
        let authority: http::uri::Authority = host
            .to_str()
            .ok()
            .and_then(|h| h.parse().ok())
            .ok_or_else(mismatch)?;
        let same_host = authority.host().eq_ignore_ascii_case(self.authority.host());
        let port = authority.port_u16().unwrap_or(443);
        if !same_host || Some(port) != self.authority.port_u16() {
            return Err(mismatch());
        }
        Ok((authority, host))
    }
}

/// Whether faultline already sent this request on (its `Via` names it).
fn sent_by_faultline(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(http::header::VIA)
        .iter()
        .any(|via| {
            via.as_bytes()
                .split(|&b| b == b',')
                .any(|hop| hop.trim_ascii() == VIA.as_bytes())
        })
}

/// Where an ad-hoc forward request goes: its URI's authority (the front
/// door checked it is `http://` with a host), and that as a `Host` value.
fn ad_hoc_target(uri: &http::Uri) -> Result<(http::uri::Authority, HeaderValue), ProxyError> {
    let authority = uri.authority().cloned().ok_or(ProxyError::NoRoute)?;
    let host =
        HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::ClientProtocol {
            reason: "the request's URI has an invalid host".to_owned(),
        })?;
    Ok((authority, host))
}

/// `scheme://authority` and the path of `origin` (origin form).
fn absolute(
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    origin: &http::Uri,
) -> Result<http::Uri, ProxyError> {
    let path = origin.path_and_query().map_or("/", |p| p.as_str());
    http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::ClientProtocol {
            reason: format!("the request's URI cannot be forwarded: {e}"),
        })
}

/// Whether to read this request's body before deciding: a rule of its
/// upstream matches on the AWS operation (checked first: the common case
/// looks at no header), and the body is a small form (the query
/// protocol's `Action`).
fn reads_form(snapshot: &Snapshot, upstream: usize, request: &Request<Incoming>) -> bool {
    if !snapshot
        .rules
        .candidates(upstream)
        .is_some_and(|rules| rules.reads_form())
    {
        return false;
    }
    let headers = request.headers();
    let is_form = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let small = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > 0 && len <= FORM_READ_LIMIT);
    is_form && small
}

/// Reads a small form body ahead ([`reads_form`]); gives the
/// request, whose body replays what was read, and the body when it came
/// whole within [`FORM_READ_TIME`].
async fn read_form(request: Request<Incoming>) -> (Request<RequestBody>, Option<bytes::Bytes>) {
    let (parts, body) = request.into_parts();
    let mut read = Box::new(body::Replayed::new(body));
    let whole = tokio::time::timeout(FORM_READ_TIME, async {
        loop {
            match read.read_ahead().await {
                body::ReadAhead::More if read.buffered() <= FORM_READ_LIMIT => {}
                body::ReadAhead::Ended => return true,
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let form = (whole && read.is_complete()).then(|| read.contiguous());
    (
        Request::from_parts(parts, RequestBody::replayed(read)),
        form,
    )
}

/// The request's host name, port removed: `Host`, else the URI authority (HTTP/2).
fn request_host(request: &Request<Incoming>) -> Option<&str> {
    let host = match request.headers().get(http::header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri().authority()?.as_str(),
    };
    Some(strip_port(host))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// A gRPC call not counted in `faultline_grpc_requests_total` yet: counted
/// once, with the status it ended with, or CANCELLED if it is dropped
/// first (the client left while the call waited on a fault or the upstream).
struct GrpcCall<'a>(Option<&'a UpstreamMetrics>);

impl GrpcCall<'_> {
    fn ended(mut self, status: Option<GrpcStatus>) {
        if let Some(metrics) = self.0.take() {
            metrics.record_grpc(status);
        }
    }

    /// The call has its response: its status is in the headers (a
    /// trailers-only response, the upstream's, injected or the proxy's),
    /// stands in the HTTP status (as clients read a non-200 without one),
    /// or comes in the upstream body's trailers, counted by the body.
    fn answered(mut self, response: &mut Response<ResponseBody>) {
        let in_headers = response.headers().get(&grpc::GRPC_STATUS);
        let status = match in_headers.map(GrpcStatus::from_header) {
            Some(status) => status,
            None if response.status() != http::StatusCode::OK => {
                Some(GrpcStatus::of_http(response.status()))
            }
            None if response.body_mut().follow_grpc() => {
                self.0 = None;
                return;
            }
            // A body of the proxy's own with no status: the call has none.
            None => None,
        };
        self.ended(status);
    }
}

impl Drop for GrpcCall<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.record_grpc(Some(GrpcStatus::CANCELLED));
        }
    }
}

/// A request in flight on a listener, for `faultline_inflight_requests`.
struct Inflight<'a>(&'a IntGauge);

impl<'a> Inflight<'a> {
    fn enter(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request inside an injected fault, counted against `max_active_faults`.
struct ActiveFault<'a>(&'a AtomicUsize);

impl<'a> ActiveFault<'a> {
    fn enter(active: &'a AtomicUsize, max: usize) -> Option<Self> {
        if active.fetch_add(1, Ordering::AcqRel) >= max {
            active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(active))
    }
}

impl Drop for ActiveFault<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_removed_from_hosts() {
        assert_eq!(
            strip_port("orders.us-east-1.example:8080"),
            "orders.us-east-1.example"
        );
        assert_eq!(strip_port("orders"), "orders");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
