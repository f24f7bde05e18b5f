//! Doing it: the request pipeline. For each request, in order:
//! route (which upstream), plan (which faults, decided up front by
//! [`crate::fault::plan`]), apply before upstream (delay, answer, abort or
//! hold), forward (the pooled client), and mark the response.

mod body;
mod forward;
mod pool;
mod shape;
pub mod synthetic;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use tracing::debug;

pub use body::ResponseBody;
use body::{ReadAhead, Replayed, RequestBody};

use crate::config::{Config, RouteConfig, UpstreamConfig};
use crate::fault::{self, AbortMode, Action, Plan, RequestView};
use crate::metrics::{Metrics, UpstreamMetrics};
use crate::rules::{Release, RuleSet};
use crate::server::{self, ConnInfo};
use crate::traffic::Tally;
use pool::UpstreamClient;
use prometheus::IntGauge;
use synthetic::{ProxyError, X_FAULTLINE_RULE};

/// How much of a request body an abort in `close` mode reads before closing,
/// so the close is a clean FIN rather than an RST for unread data.
const CLOSE_DRAIN_LIMIT: u64 = 1 << 20;
const CLOSE_DRAIN_TIME: Duration = Duration::from_secs(1);
/// How long `empty` and `garbage` aborts may take to read a whole request.
const FULL_DRAIN_TIME: Duration = Duration::from_secs(10);
/// How much of a blackholed request's body is kept while it is held, to be
/// forwarded if the kill switch lets it out. Past this the body is still
/// read, so a client that leaves is noticed, but thrown away: such a
/// request can only be closed, not forwarded.
const HOLD_KEEP_LIMIT: u64 = 1 << 20;

/// A timeout that never fires, and the longest one kept.
const NO_TIMEOUT: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// Where a connection came in: a shared listener with routes, or an
/// upstream's dedicated port.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    Listener(usize),
    Upstream(usize),
}

/// The state every request shares: upstreams, routes, the current rule
/// snapshot and the upstream client.
pub struct Proxy {
    upstreams: Vec<UpstreamConfig>,
    /// Per listener index, its routes.
    routes: Vec<ListenerRoutes>,
    rules: ArcSwap<RuleSet>,
    /// Told whenever the rule snapshot changes (dedicated ports watch it).
    rules_changed: tokio::sync::watch::Sender<()>,
    client: UpstreamClient,
    upstream_timeout: Duration,
    mark_faults: bool,
    active_faults: AtomicUsize,
    max_active_faults: usize,
    metrics: Metrics,
    /// Per upstream index.
    upstream_metrics: Vec<UpstreamMetrics>,
    /// `faultline_inflight_requests` per listener index, then per upstream
    /// index for dedicated ports (labelled with the upstream's name).
    listener_inflight: Vec<IntGauge>,
    dedicated_inflight: Vec<IntGauge>,
}

impl Proxy {
    pub fn new(config: &Config, rules: RuleSet, metrics: Metrics) -> Self {
        let mut routes = vec![ListenerRoutes::default(); config.listeners.len()];
        for route in &config.routes {
            let listener = &mut routes[route.listener];
            listener.by_host |= route.host.is_some();
            listener.routes.push(route.clone());
        }
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
            metrics,
            upstreams: config.upstreams.clone(),
            routes,
            rules: ArcSwap::from_pointee(rules),
            rules_changed: tokio::sync::watch::Sender::new(()),
            client: UpstreamClient::new(&config.upstreams, &config.proxy),
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

    /// The rule snapshot new requests will use.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// Replaces the rule snapshot; requests in flight keep theirs.
    pub fn set_rules(&self, rules: RuleSet) {
        self.rules.store(Arc::new(rules));
        self.rules_changed.send_replace(());
    }

    /// The running counts of each upstream's traffic, by upstream index.
    pub fn tally(&self, upstream: usize) -> Option<&Arc<Tally>> {
        self.upstream_metrics
            .get(upstream)
            .map(UpstreamMetrics::tally)
    }

    /// Wakes on every change of the rule snapshot.
    pub fn subscribe_rules(&self) -> tokio::sync::watch::Receiver<()> {
        self.rules_changed.subscribe()
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
        });
        // One per-connection Arc per request: no counter shared by every worker.
        hyper::service::service_fn(move |request| {
            let conn = Arc::clone(&conn);
            async move { conn.proxy.handle(&conn, request).await }
        })
    }

    async fn handle(
        &self,
        conn: &Connection,
        request: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, StreamAborted> {
        let start = Instant::now();
        let inflight = match conn.entry {
            Entry::Listener(i) => &self.listener_inflight[i],
            Entry::Upstream(i) => &self.dedicated_inflight[i],
        };
        let _inflight = Inflight::enter(inflight);
        let Some(upstream) = self.route(conn.entry, &request) else {
            return Ok(synthetic::rescue(&ProxyError::NoRoute));
        };
        let metrics = &self.upstream_metrics[upstream];
        let method = request.method().clone();
        let plan = {
            let rules = self.rules.load();
            let view = RequestView {
                method: request.method(),
                path: request.uri().path(),
                headers: request.headers(),
                client_ip: conn.client_ip.as_bytes(),
            };
            fault::plan(&rules, upstream, &view)
        };
        let (result, end) = match plan {
            // Sent as it came: the time read on arrival stands for both.
            None => {
                let (response, answered) = self
                    .forward(upstream, conn, request.map(RequestBody::from), start)
                    .await;
                (Ok(response), answered)
            }
            // Boxed: a fault's future is several times the size of a plain
            // forward, and every request's future would be that big, and
            // copied so, if it were kept inline.
            Some(plan) => {
                let result = Box::pin(self.inject(plan, upstream, conn, request, start)).await;
                (result, Instant::now())
            }
        };
        let elapsed = end.saturating_duration_since(start);
        match &result {
            Ok(response) => metrics.record_request(
                &method,
                response.status(),
                elapsed,
                response.extensions().get::<ByFault>().is_some(),
            ),
            Err(StreamAborted) => metrics.record_unanswered(&method, elapsed),
        }
        result
    }

    /// The upstream for a request: the dedicated one, or the first matching route.
    fn route(&self, entry: Entry, request: &Request<Incoming>) -> Option<usize> {
        match entry {
            Entry::Upstream(upstream) => Some(upstream),
            Entry::Listener(listener) => {
                let listener = self.routes.get(listener)?;
                // Finding the host is a header lookup: only if a route asks.
                let host = listener.by_host.then(|| request_host(request)).flatten();
                let path = request.uri().path();
                listener
                    .routes
                    .iter()
                    .find(|route| route.matches(host, path))
                    .map(|route| route.upstream)
            }
        }
    }

    async fn inject(
        &self,
        plan: Plan,
        upstream: usize,
        conn: &Connection,
        request: Request<Incoming>,
        start: Instant,
    ) -> Result<Response<ResponseBody>, StreamAborted> {
        let metrics = &self.upstream_metrics[upstream];
        let Some(_active) = ActiveFault::enter(&self.active_faults, self.max_active_faults) else {
            debug!("max_active_faults reached; request passes unharmed");
            metrics.record_overflow();
            // Not injected: the rules keep their `times` budget.
            for candidate in &plan.rules {
                candidate.rule.counters.give_back(candidate.rule.times);
            }
            return Ok(self
                .forward_now(upstream, conn, request.map(RequestBody::from))
                .await);
        };
        // Counted when decided: a client that leaves mid-fault was still faulted.
        for candidate in &plan.rules {
            candidate.injected.inc();
            candidate.rule.counters.record_injected();
        }
        let release = &plan.release;
        if !plan.delay.is_zero() {
            sleep_unless_released(plan.delay, release).await;
        }
        if release.is_released() {
            return Ok(self
                .forward_now(upstream, conn, request.map(RequestBody::from))
                .await);
        }
        // HTTP/2 carries other requests on the same connection: fail only this stream.
        let multiplexed = request.version() == Version::HTTP_2;
        let method = request.method().clone();
        let mut response = match plan.action {
            Action::Forward => {
                let response = self
                    .forward_now(upstream, conn, request.map(RequestBody::from))
                    .await;
                let proxy_error = response
                    .headers()
                    .contains_key(&synthetic::X_FAULTLINE_ERROR);
                if !plan.response_delay.is_zero() && !proxy_error {
                    // The upstream answered; its headers wait.
                    sleep_unless_released(plan.response_delay, release).await;
                }
                response
            }
            Action::Respond(response) => {
                let mut response = synthetic::injected(&response);
                response.extensions_mut().insert(ByFault);
                response
            }
            Action::Abort(_) if multiplexed => return Err(StreamAborted),
            Action::Abort(mode) => {
                if mode != AbortMode::Reset {
                    let (limit, time) = match mode {
                        AbortMode::Close => (CLOSE_DRAIN_LIMIT, CLOSE_DRAIN_TIME),
                        _ => (u64::MAX, FULL_DRAIN_TIME),
                    };
                    let (parts, body) = request.into_parts();
                    let mut read = Box::new(Replayed::new(body));
                    if drain(&mut read, limit, time, release).await && read.is_whole() {
                        let request = Request::from_parts(parts, RequestBody::Replayed(read));
                        return Ok(self.forward_now(upstream, conn, request).await);
                    }
                }
                metrics.record_unanswered(&method, start.elapsed());
                conn.info.control.abort(ending(mode));
                // The connection task drops this request with its connection.
                return std::future::pending().await;
            }
            Action::Blackhole { max_hold } => {
                let (parts, body) = request.into_parts();
                let mut held = Box::new(Replayed::new(body));
                if hold(&mut held, max_hold, release).await == Held::Released && held.is_whole() {
                    let request = Request::from_parts(parts, RequestBody::Replayed(held));
                    return Ok(self.forward_now(upstream, conn, request).await);
                }
                if multiplexed {
                    return Err(StreamAborted);
                }
                metrics.record_unanswered(&method, start.elapsed());
                conn.info.control.abort(server::Ending::Close);
                return std::future::pending().await;
            }
        };
        if release.is_released() {
            // Halted while waiting: the response goes back as it is.
            return Ok(response);
        }
        // A 502 or 504 after an injected delay is the proxy's own error, not an injected one.
        let proxy_error = response
            .headers()
            .contains_key(&synthetic::X_FAULTLINE_ERROR);
        if !plan.shaping.is_none() && !proxy_error {
            let control = (!multiplexed).then(|| Arc::clone(&conn.info.control));
            response = response.map(|body| {
                ResponseBody::Shaped(Box::new(shape::ShapedBody::new(
                    body,
                    plan.shaping,
                    control,
                    Arc::clone(&plan.release),
                )))
            });
        }
        if self.mark_faults && !proxy_error {
            for candidate in &plan.rules {
                response
                    .headers_mut()
                    .append(X_FAULTLINE_RULE.clone(), candidate.rule.name_header.clone());
            }
        }
        Ok(response)
    }

    /// [`Self::forward`] for a request sent now, after a fault held it.
    async fn forward_now(
        &self,
        upstream: usize,
        conn: &Connection,
        request: Request<RequestBody>,
    ) -> Response<ResponseBody> {
        let (response, _) = self.forward(upstream, conn, request, Instant::now()).await;
        response
    }

    /// Sends `request` to `upstream`; `sent` is the time it leaves. Gives
    /// the upstream's response, or the proxy's own error response, and when
    /// it came. A clock read costs tens of nanoseconds on a VM, so a plain
    /// request reads it twice: on arrival (passed here as `sent`) and when
    /// the response comes (in the pool).
    async fn forward(
        &self,
        upstream: usize,
        conn: &Connection,
        request: Request<RequestBody>,
        sent: Instant,
    ) -> (Response<ResponseBody>, Instant) {
        let target = &self.upstreams[upstream];
        let metrics = &self.upstream_metrics[upstream];
        let request = forward::upstream_request(target, &conn.client_ip, request);
        let deadline = tokio::time::Instant::from_std(sent + self.upstream_timeout);
        let outcome =
            tokio::time::timeout_at(deadline, self.client.send(upstream, request, sent)).await;
        let error = match outcome {
            Ok(Ok((response, answered))) => {
                metrics.record_upstream(answered.saturating_duration_since(sent));
                let (mut parts, body) = response.into_parts();
                forward::remove_hop_by_hop(&mut parts.headers);
                let response = Response::from_parts(parts, ResponseBody::Upstream(body));
                return (response, answered);
            }
            Ok(Err(e)) => ProxyError::from_upstream(&target.name, e),
            Err(_) => ProxyError::UpstreamTimeout {
                upstream: target.name.clone(),
            },
        };
        metrics.record_upstream_error(error.reason());
        (synthetic::rescue(&error), Instant::now())
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

/// How the connection ends for an abort in `mode`: `empty` has read the
/// whole request by then, so it closes like `close`.
fn ending(mode: AbortMode) -> server::Ending {
    match mode {
        AbortMode::Reset => server::Ending::Reset,
        AbortMode::Close | AbortMode::Empty => server::Ending::Close,
        AbortMode::Garbage => server::Ending::Garbage,
    }
}

/// Reads a request body before an abort, up to `limit` bytes and `time`,
/// keeping what a halt would forward. `true` when the kill switch fired
/// meanwhile.
async fn drain(body: &mut Replayed, limit: u64, time: Duration, release: &Release) -> bool {
    let read = async {
        loop {
            match body.read_ahead().await {
                ReadAhead::More if body.buffered() > limit => return,
                ReadAhead::More if body.buffered() > HOLD_KEEP_LIMIT => body.discard(),
                ReadAhead::More => {}
                ReadAhead::Ended | ReadAhead::Failed => return,
            }
        }
    };
    tokio::select! {
        biased;
        () = release.released() => true,
        () = read => false,
        () = tokio::time::sleep(time) => false,
    }
}

/// Sleeps for `delay`, or until the kill switch releases the request.
async fn sleep_unless_released(delay: Duration, release: &Release) {
    tokio::select! {
        biased;
        () = release.released() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// How a blackhole hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// `max_hold` passed.
    Expired,
    /// The body broke off: the client is gone.
    ClientLeft,
    /// The kill switch let the request out.
    Released,
}

/// Holds a blackholed request for `max_hold`, reading its body ahead all
/// the while, so that hyper notices a client that leaves, and so the body
/// can still be forwarded if the kill switch lets the request out.
async fn hold(body: &mut Replayed, max_hold: Duration, release: &Release) -> Held {
    let read = async {
        loop {
            match body.read_ahead().await {
                ReadAhead::More if body.buffered() > HOLD_KEEP_LIMIT => body.discard(),
                ReadAhead::More => {}
                ReadAhead::Failed => return Held::ClientLeft,
                ReadAhead::Ended => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        biased;
        () = release.released() => Held::Released,
        held = read => held,
        () = tokio::time::sleep(max_hold) => Held::Expired,
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
