//! The metrics of README "Metrics": one explicit registry per running proxy (never
//! the global default, so two proxies in one process keep apart), names in
//! one place, and label handles resolved ahead of the hot path.
//!
//! Per upstream and per rule the handles are resolved when the config or
//! the rule snapshot is built. The one label pair that varies per request,
//! method and status code, is resolved on first use into a fixed table
//! ([`UpstreamMetrics::requests`]), so a request never formats a label or
//! takes the registry's lock.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::UpstreamConfig;
use crate::grpc::GrpcStatus;
use crate::tls::HandshakeFailure;
use crate::traffic::{Outcome, Tally};

pub const REQUESTS_TOTAL: &str = "faultline_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "faultline_request_duration_seconds";
pub const UPSTREAM_DURATION_SECONDS: &str = "faultline_upstream_duration_seconds";
pub const FAULTS_INJECTED_TOTAL: &str = "faultline_faults_injected_total";
pub const FAULTS_OVERFLOW_TOTAL: &str = "faultline_faults_overflow_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "faultline_upstream_errors_total";
pub const CLIENT_ERRORS_TOTAL: &str = "faultline_client_errors_total";
pub const RULE_ENABLED: &str = "faultline_rule_enabled";
pub const HALTED: &str = "faultline_halted";
pub const SCENARIO_RUNNING: &str = "faultline_scenario_running";
pub const SCENARIO_STEP: &str = "faultline_scenario_step";
pub const RULES_RELOADS_TOTAL: &str = "faultline_rules_reloads_total";
pub const INFLIGHT_REQUESTS: &str = "faultline_inflight_requests";
pub const BUILD_INFO: &str = "faultline_build_info";
pub const TLS_HANDSHAKE_ERRORS_TOTAL: &str = "faultline_tls_handshake_errors_total";
pub const GRPC_REQUESTS_TOTAL: &str = "faultline_grpc_requests_total";
pub const DNS_QUERIES_TOTAL: &str = "faultline_dns_queries_total";
pub const TCP_CONNECTIONS_TOTAL: &str = "faultline_tcp_connections_total";
pub const TCP_BYTES_TOTAL: &str = "faultline_tcp_bytes_total";

/// The `grpc_status` of a gRPC call that ended without one (its trailers
/// never came, or held no valid `grpc-status`).
pub const GRPC_STATUS_NONE: &str = "none";

/// From a 1 ms loopback upstream to a 5-minute blackhole: roughly ×2.5 steps.
const DURATION_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Methods with a label of their own; any other is counted as `OTHER`,
/// so a hostile client cannot create series at will.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];
const METHOD_SLOTS: usize = METHODS.len() + 1;
/// Status codes 100 to 599.
const CODE_SLOTS: usize = 500;
/// gRPC's 17 status codes and "none".
const GRPC_SLOTS: usize = GrpcStatus::COUNT + 1;

/// Why the proxy could not get an answer from an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorReason {
    /// Its name did not resolve.
    Dns,
    Connect,
    /// The TLS handshake failed.
    Tls,
    Timeout,
    Protocol,
}

/// Why a request failed by its client's doing: never the upstream's, never
/// an injected fault's, and never counted against a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorReason {
    /// Not valid HTTP: a missing or repeated `Host`, a broken chunked body.
    Protocol,
    /// The client left before its request body was whole.
    Aborted,
    /// The request body stalled past `upstream_timeout`.
    Timeout,
    /// A `CONNECT` that is not served: sent to a reverse proxy, which
    /// opens no tunnels, or to a port a forward listener does not allow.
    Connect,
}

impl ClientErrorReason {
    pub const ALL: [ClientErrorReason; 4] = [
        ClientErrorReason::Protocol,
        ClientErrorReason::Aborted,
        ClientErrorReason::Timeout,
        ClientErrorReason::Connect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientErrorReason::Protocol => "protocol",
            ClientErrorReason::Aborted => "aborted",
            ClientErrorReason::Timeout => "timeout",
            ClientErrorReason::Connect => "connect",
        }
    }
}

/// Every family of README "Metrics", registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    faults_injected: IntCounterVec,
    faults_overflow: IntCounterVec,
    upstream_errors: IntCounterVec,
    client_errors: IntCounterVec,
    rule_enabled: IntGaugeVec,
    halted: IntGauge,
    scenario_running: IntGaugeVec,
    scenario_step: IntGaugeVec,
    rules_reloads: IntCounterVec,
    inflight: IntGaugeVec,
    tls_handshake_errors: IntCounterVec,
    grpc_requests: IntCounterVec,
    dns_queries: IntCounterVec,
    tcp_connections: IntCounterVec,
    tcp_bytes: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("metric definitions are static")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definitions are static")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        labels,
    )
    .expect("metric definitions are static")
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::new(),
            requests: counter_vec(
                REQUESTS_TOTAL,
                "Requests answered, by upstream, region, method and status code.",
                &["upstream", "region", "method", "code"],
            ),
            request_duration: histogram_vec(
                REQUEST_DURATION_SECONDS,
                "Time until the client got response headers, injected delay included.",
                &["upstream", "region"],
            ),
            upstream_duration: histogram_vec(
                UPSTREAM_DURATION_SECONDS,
                "Time waiting on the real upstream for response headers.",
                &["upstream"],
            ),
            faults_injected: counter_vec(
                FAULTS_INJECTED_TOTAL,
                "Faults injected, by rule, kind, upstream and region.",
                &["rule", "kind", "upstream", "region"],
            ),
            faults_overflow: counter_vec(
                FAULTS_OVERFLOW_TOTAL,
                "Requests a fault matched but max_active_faults let pass unharmed.",
                &["upstream"],
            ),
            upstream_errors: counter_vec(
                UPSTREAM_ERRORS_TOTAL,
                "Errors reaching upstreams, made by the proxy and never injected.",
                &["upstream", "reason"],
            ),
            client_errors: counter_vec(
                CLIENT_ERRORS_TOTAL,
                "Requests that failed by their client's doing, never the upstream's.",
                &["reason"],
            ),
            rule_enabled: gauge_vec(RULE_ENABLED, "1 when the rule is enabled.", &["rule"]),
            halted: IntGauge::new(HALTED, "1 while the kill switch is on.")
                .expect("metric definitions are static"),
            scenario_running: gauge_vec(
                SCENARIO_RUNNING,
                "1 while the scenario runs.",
                &["scenario"],
            ),
            scenario_step: gauge_vec(
                SCENARIO_STEP,
                "Index of the scenario's current step.",
                &["scenario"],
            ),
            rules_reloads: counter_vec(
                RULES_RELOADS_TOTAL,
                "Rule reloads, applied or rejected.",
                &["outcome"],
            ),
            inflight: gauge_vec(
                INFLIGHT_REQUESTS,
                "Requests in flight, by listener.",
                &["listener"],
            ),
            tls_handshake_errors: counter_vec(
                TLS_HANDSHAKE_ERRORS_TOTAL,
                "TLS handshakes with clients that failed, by listener and reason.",
                &["listener", "reason"],
            ),
            grpc_requests: counter_vec(
                GRPC_REQUESTS_TOTAL,
                "gRPC calls, by upstream, region and the status the call ended with.",
                &["upstream", "region", "grpc_status"],
            ),
            dns_queries: counter_vec(
                DNS_QUERIES_TOTAL,
                "DNS queries faultline's DNS server took, by the answer they got.",
                &["answer"],
            ),
            tcp_connections: counter_vec(
                TCP_CONNECTIONS_TOTAL,
                "TCP connections to tcp:// upstreams, by upstream, region and how they ended.",
                &["upstream", "region", "outcome"],
            ),
            tcp_bytes: counter_vec(
                TCP_BYTES_TOTAL,
                "Bytes copied on TCP connections, by upstream, region and direction (upstream: the client's, downstream: the upstream's).",
                &["upstream", "region", "direction"],
            ),
        };
        let registry = &metrics.registry;
        let collectors: [Box<dyn prometheus::core::Collector>; 18] = [
            Box::new(metrics.dns_queries.clone()),
            Box::new(metrics.tcp_connections.clone()),
            Box::new(metrics.tcp_bytes.clone()),
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.upstream_duration.clone()),
            Box::new(metrics.faults_injected.clone()),
            Box::new(metrics.faults_overflow.clone()),
            Box::new(metrics.upstream_errors.clone()),
            Box::new(metrics.client_errors.clone()),
            Box::new(metrics.rule_enabled.clone()),
            Box::new(metrics.halted.clone()),
            Box::new(metrics.scenario_running.clone()),
            Box::new(metrics.scenario_step.clone()),
            Box::new(metrics.rules_reloads.clone()),
            Box::new(metrics.inflight.clone()),
            Box::new(metrics.tls_handshake_errors.clone()),
            Box::new(metrics.grpc_requests.clone()),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for outcome in ["applied", "rejected"] {
            metrics.rules_reloads.with_label_values(&[outcome]);
        }
        for reason in ClientErrorReason::ALL {
            metrics.client_errors.with_label_values(&[reason.as_str()]);
        }
        let build_info = gauge_vec(
            BUILD_INFO,
            "Always 1; the version is a label.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("metric names are unique");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        metrics
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// The handles for one upstream, resolved once.
    pub fn upstream(&self, upstream: &UpstreamConfig) -> UpstreamMetrics {
        let region = region_of(upstream);
        let labels = [upstream.name.as_str(), region];
        let errors = |reason: &str| {
            self.upstream_errors
                .with_label_values(&[upstream.name.as_str(), reason])
        };
        UpstreamMetrics {
            name: upstream.name.clone(),
            region: region.to_owned(),
            requests_vec: self.requests.clone(),
            requests: (0..METHOD_SLOTS * CODE_SLOTS)
                .map(|_| OnceLock::new())
                .collect(),
            unanswered: (0..METHOD_SLOTS).map(|_| OnceLock::new()).collect(),
            request_duration: self.request_duration.with_label_values(&labels),
            request_duration_vec: self.request_duration.clone(),
            faults_injected_vec: self.faults_injected.clone(),
            upstream_duration: self
                .upstream_duration
                .with_label_values(&[upstream.name.as_str()]),
            dns_errors: errors("dns"),
            connect_errors: errors("connect"),
            tls_errors: errors("tls"),
            timeout_errors: errors("timeout"),
            protocol_errors: errors("protocol"),
            faults_overflow: self
                .faults_overflow
                .with_label_values(&[upstream.name.as_str()]),
            grpc_vec: self.grpc_requests.clone(),
            grpc: (0..GRPC_SLOTS).map(|_| OnceLock::new()).collect(),
            tally: Arc::default(),
        }
    }

    /// The handles of one tcp:// upstream, resolved once; `tally` is the
    /// upstream's running counts (guards count its failed connections).
    pub fn tcp(&self, upstream: &UpstreamConfig, tally: Arc<Tally>) -> TcpMetrics {
        let region = region_of(upstream);
        let name = upstream.name.as_str();
        TcpMetrics {
            connections: TcpOutcome::ALL.map(|outcome| {
                self.tcp_connections
                    .with_label_values(&[name, region, outcome.as_str()])
            }),
            bytes_upstream: self
                .tcp_bytes
                .with_label_values(&[name, region, "upstream"]),
            bytes_downstream: self
                .tcp_bytes
                .with_label_values(&[name, region, "downstream"]),
            tally,
        }
    }

    /// The injected-fault counter of one rule on one upstream.
    pub fn faults_injected(&self, rule: &str, kind: &str, upstream: &UpstreamConfig) -> IntCounter {
        self.faults_injected.with_label_values(&[
            rule,
            kind,
            upstream.name.as_str(),
            region_of(upstream),
        ])
    }

    /// The injected-fault counter of a rule that matches DNS queries: it
    /// has no upstream, so `upstream` and `region` are empty.
    pub fn dns_faults_injected(&self, rule: &str, kind: &str) -> IntCounter {
        self.faults_injected
            .with_label_values(&[rule, kind, "", ""])
    }

    /// `faultline_dns_queries_total` for each answer, resolved once.
    pub fn dns_queries(&self) -> DnsQueryMetrics {
        DnsQueryMetrics {
            counters: DnsOutcome::ALL
                .map(|outcome| self.dns_queries.with_label_values(&[outcome.as_str()])),
        }
    }

    pub fn set_rule_enabled(&self, rule: &str, enabled: bool) {
        self.rule_enabled
            .with_label_values(&[rule])
            .set(i64::from(enabled));
    }

    /// Drops the gauge of a rule that no longer exists.
    pub fn forget_rule(&self, rule: &str) {
        let _ = self.rule_enabled.remove_label_values(&[rule]);
    }

    /// Counts a reload: `applied` or `rejected`.
    pub fn record_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.rules_reloads.with_label_values(&[outcome]).inc();
    }

    /// `faultline_client_errors_total` for each reason, in the order of
    /// [`ClientErrorReason::ALL`]: resolved once, counted per request.
    pub fn client_errors(&self) -> [IntCounter; ClientErrorReason::ALL.len()] {
        ClientErrorReason::ALL
            .map(|reason| self.client_errors.with_label_values(&[reason.as_str()]))
    }

    /// `faultline_tls_handshake_errors_total` of one TLS listener, for each
    /// reason in the order of [`HandshakeFailure::ALL`].
    pub fn tls_handshake_errors(&self, listener: &str) -> [IntCounter; 4] {
        HandshakeFailure::ALL.map(|reason| {
            self.tls_handshake_errors
                .with_label_values(&[listener, reason.as_str()])
        })
    }

    pub fn inflight(&self, listener: &str) -> IntGauge {
        self.inflight.with_label_values(&[listener])
    }

    /// `faultline_scenario_running` and `faultline_scenario_step` (the
    /// index of the current step; -1 before the first and when not running).
    pub fn set_scenario(&self, scenario: &str, running: bool, step: Option<usize>) {
        self.scenario_running
            .with_label_values(&[scenario])
            .set(i64::from(running));
        let step = step.and_then(|s| i64::try_from(s).ok()).unwrap_or(-1);
        self.scenario_step.with_label_values(&[scenario]).set(step);
    }

    /// Drops the gauges of a scenario the rule files no longer define.
    pub fn forget_scenario(&self, scenario: &str) {
        let _ = self.scenario_running.remove_label_values(&[scenario]);
        let _ = self.scenario_step.remove_label_values(&[scenario]);
    }

    pub fn halted(&self) -> &IntGauge {
        &self.halted
    }
}

/// What a DNS query got: the `answer` label of `faultline_dns_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsOutcome {
    /// A fixed answer from `[dns] records`.
    Records,
    /// Answered by an `upstream` resolver (whatever it said).
    Forwarded,
    /// No `upstream` resolver answered in time, or too many queries were
    /// being forwarded: `SERVFAIL`.
    UpstreamFailed,
    /// Not a query faultline answers (another opcode or class, a type the
    /// system resolver cannot ask): `NOTIMP`.
    NotImplemented,
    /// Malformed: `FORMERR`, or nothing when not even the header could be read.
    Malformed,
    /// Injected by a `dns` rule, by answer.
    NxDomain,
    ServFail,
    NoData,
    Refused,
    Timeout,
    Addresses,
}

impl DnsOutcome {
    pub const ALL: [DnsOutcome; 11] = [
        DnsOutcome::Records,
        DnsOutcome::Forwarded,
        DnsOutcome::UpstreamFailed,
        DnsOutcome::NotImplemented,
        DnsOutcome::Malformed,
        DnsOutcome::NxDomain,
        DnsOutcome::ServFail,
        DnsOutcome::NoData,
        DnsOutcome::Refused,
        DnsOutcome::Timeout,
        DnsOutcome::Addresses,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsOutcome::Records => "records",
            DnsOutcome::Forwarded => "forwarded",
            DnsOutcome::UpstreamFailed => "upstream_failed",
            DnsOutcome::NotImplemented => "notimp",
            DnsOutcome::Malformed => "malformed",
            DnsOutcome::NxDomain => "nxdomain",
            DnsOutcome::ServFail => "servfail",
            DnsOutcome::NoData => "nodata",
            DnsOutcome::Refused => "refused",
            DnsOutcome::Timeout => "timeout",
            DnsOutcome::Addresses => "addresses",
        }
    }
}

/// `faultline_dns_queries_total`'s handles, one per [`DnsOutcome`].
#[derive(Debug, Clone)]
pub struct DnsQueryMetrics {
    counters: [IntCounter; DnsOutcome::ALL.len()],
}

impl DnsQueryMetrics {
    pub fn record(&self, outcome: DnsOutcome) {
        if let Some(counter) = DnsOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.counters.get(i))
        {
            counter.inc();
        }
    }
}

/// How a TCP connection ended, the `outcome` of `faultline_tcp_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOutcome {
    /// Both sides closed.
    Closed,
    /// An injected fault ended it (reset, cut, hold, refusal).
    Injected,
    /// The upstream could not be reached: the proxy's failure, never a fault.
    UpstreamConnect,
    /// Either side broke it off (a reset, an I/O error), or shutdown did.
    Error,
}

impl TcpOutcome {
    pub const ALL: [TcpOutcome; 4] = [
        TcpOutcome::Closed,
        TcpOutcome::Injected,
        TcpOutcome::UpstreamConnect,
        TcpOutcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpOutcome::Closed => "closed",
            TcpOutcome::Injected => "injected",
            TcpOutcome::UpstreamConnect => "upstream_connect",
            TcpOutcome::Error => "error",
        }
    }
}

/// One tcp:// upstream's handles.
#[derive(Debug, Clone)]
pub struct TcpMetrics {
    /// In the order of [`TcpOutcome::ALL`].
    connections: [IntCounter; 4],
    pub bytes_upstream: IntCounter,
    pub bytes_downstream: IntCounter,
    tally: Arc<Tally>,
}

impl TcpMetrics {
    /// Counts a connection that ended, and what it lasted, for guards.
    pub fn record(&self, outcome: TcpOutcome, elapsed: Duration) {
        let index = TcpOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.connections[index].inc();
        let outcome = match outcome {
            TcpOutcome::Closed => Outcome::Success,
            TcpOutcome::Injected => Outcome::Injected,
            TcpOutcome::UpstreamConnect | TcpOutcome::Error => Outcome::Failure,
        };
        self.tally.record(outcome, elapsed);
    }
}

fn region_of(upstream: &UpstreamConfig) -> &str {
    upstream.labels.get("region").map_or("", String::as_str)
}

/// One upstream's handles.
pub struct UpstreamMetrics {
    name: String,
    region: String,
    requests_vec: IntCounterVec,
    /// `faultline_requests_total` by method slot and status code, filled on first use.
    requests: Box<[OnceLock<IntCounter>]>,
    /// `faultline_requests_total{code="0"}` by method slot.
    unanswered: Box<[OnceLock<IntCounter>]>,
    request_duration: Histogram,
    /// For forward traffic counted under the region its host names.
    request_duration_vec: HistogramVec,
    /// For forward traffic's faults, counted in the same region.
    faults_injected_vec: IntCounterVec,
    upstream_duration: Histogram,
    dns_errors: IntCounter,
    connect_errors: IntCounter,
    tls_errors: IntCounter,
    timeout_errors: IntCounter,
    protocol_errors: IntCounter,
    faults_overflow: IntCounter,
    grpc_vec: IntCounterVec,
    /// `faultline_grpc_requests_total` by status code, then "none"; filled
    /// on first use, so an upstream that serves no gRPC shows no series.
    grpc: Box<[OnceLock<IntCounter>]>,
    /// The same traffic for scenario guards and reports.
    tally: Arc<Tally>,
}

impl std::fmt::Debug for UpstreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("name", &self.name)
            .finish()
    }
}

impl UpstreamMetrics {
    /// A request answered: its method, status, what the client waited, and
    /// whether an injected fault made the answer.
    pub fn record_request(
        &self,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
        by_fault: bool,
    ) {
        self.request_duration.observe(elapsed.as_secs_f64());
        let outcome = if by_fault {
            Outcome::Injected
        } else {
            Outcome::of_status(status)
        };
        self.tally.record(outcome, elapsed);
        let method_slot = METHODS
            .iter()
            .position(|m| m == method)
            .unwrap_or(METHODS.len());
        let label = || {
            let method = METHODS.get(method_slot).map_or("OTHER", Method::as_str);
            self.requests_vec.with_label_values(&[
                &self.name,
                &self.region,
                method,
                status.as_str(),
            ])
        };
        let cached = usize::from(status.as_u16())
            .checked_sub(100)
            .filter(|code_slot| *code_slot < CODE_SLOTS)
            .and_then(|code_slot| self.requests.get(method_slot * CODE_SLOTS + code_slot));
        match cached {
            Some(slot) => slot.get_or_init(label).inc(),
            // A status outside 100..=599 is rare enough to look up each time.
            None => label().inc(),
        }
    }

    /// [`Self::record_request`], counted under `region` instead of the
    /// upstream's own: forward traffic to a destination whose requests each
    /// name their region (an AWS host). Looked up per request, as the
    /// regions are not known ahead; reverse traffic never comes here.
    pub fn record_request_in(
        &self,
        region: Option<&str>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
        by_fault: bool,
    ) {
        let Some(region) = region.filter(|region| *region != self.region) else {
            return self.record_request(method, status, elapsed, by_fault);
        };
        self.request_duration_vec
            .with_label_values(&[self.name.as_str(), region])
            .observe(elapsed.as_secs_f64());
        let outcome = if by_fault {
            Outcome::Injected
        } else {
            Outcome::of_status(status)
        };
        self.tally.record(outcome, elapsed);
        let method = METHODS
            .iter()
            .find(|m| *m == method)
            .map_or("OTHER", Method::as_str);
        self.requests_vec
            .with_label_values(&[&self.name, region, method, status.as_str()])
            .inc();
    }

    /// A fault `rule` (of `kind`) injected into forward traffic counted
    /// under `region` ([`Self::record_request_in`]'s), so a region's panels
    /// see the faults of its requests. Looked up per fault; `false`, with
    /// nothing counted, when `region` is the upstream's own, which the
    /// rule's handle resolved ahead counts.
    pub fn record_fault_in(&self, region: &str, rule: &str, kind: &str) -> bool {
        if region == self.region {
            return false;
        }
        self.faults_injected_vec
            .with_label_values(&[rule, kind, self.name.as_str(), region])
            .inc();
        true
    }

    /// A request that ended with no response (an injected abort or
    /// blackhole): counted with `code="0"`, as proxies count no response.
    pub fn record_unanswered(&self, method: &Method, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
        self.tally.record(Outcome::Injected, elapsed);
        let method_slot = METHODS
            .iter()
            .position(|m| m == method)
            .unwrap_or(METHODS.len());
        let Some(slot) = self.unanswered.get(method_slot) else {
            return;
        };
        slot.get_or_init(|| {
            let method = METHODS.get(method_slot).map_or("OTHER", Method::as_str);
            self.requests_vec
                .with_label_values(&[&self.name, &self.region, method, "0"])
        })
        .inc();
    }

    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    pub fn record_upstream_error(&self, reason: UpstreamErrorReason) {
        match reason {
            UpstreamErrorReason::Dns => self.dns_errors.inc(),
            UpstreamErrorReason::Connect => self.connect_errors.inc(),
            UpstreamErrorReason::Tls => self.tls_errors.inc(),
            UpstreamErrorReason::Timeout => self.timeout_errors.inc(),
            UpstreamErrorReason::Protocol => self.protocol_errors.inc(),
        }
    }

    /// A gRPC call ended with `status`, or with none (`None`).
    pub fn record_grpc(&self, status: Option<GrpcStatus>) {
        let slot = status.map_or(GrpcStatus::COUNT, GrpcStatus::index);
        let Some(counter) = self.grpc.get(slot) else {
            return;
        };
        counter
            .get_or_init(|| {
                let label = status.map_or(GRPC_STATUS_NONE, GrpcStatus::name);
                self.grpc_vec
                    .with_label_values(&[&self.name, &self.region, label])
            })
            .inc();
    }

    pub fn record_overflow(&self) {
        self.faults_overflow.inc();
    }

    /// The running counts guards and reports read.
    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> UpstreamConfig {
        UpstreamConfig {
            name: "orders-use1".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: "127.0.0.1:1".parse().unwrap(),
            host_header: http::HeaderValue::from_static("127.0.0.1:1"),
            host: Default::default(),
            protocol: Default::default(),
            labels: [("region".to_owned(), "us-east-1".to_owned())].into(),
            listen: None,
            listen_tls: None,
            ad_hoc: false,
            transport: crate::config::Transport::Http,
            tls: None,
        }
    }

    #[test]
    fn requests_are_counted_by_method_and_code() {
        let metrics = Metrics::new();
        let handles = metrics.upstream(&upstream());
        for _ in 0..3 {
            handles.record_request(
                &Method::GET,
                StatusCode::OK,
                Duration::from_millis(2),
                false,
            );
        }
        handles.record_request(
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::IM_A_TEAPOT,
            Duration::ZERO,
            false,
        );
        for code in [799, 599] {
            let status = StatusCode::from_u16(code).unwrap();
            handles.record_request(&Method::GET, status, Duration::ZERO, false);
        }
        let text = metrics.render();
        assert!(text.contains(r#"faultline_requests_total{code="200",method="GET",region="us-east-1",upstream="orders-use1"} 3"#), "{text}");
        assert!(text.contains(r#"faultline_requests_total{code="418",method="OTHER",region="us-east-1",upstream="orders-use1"} 1"#), "{text}");
        assert!(text.contains(r#"faultline_requests_total{code="799",method="GET",region="us-east-1",upstream="orders-use1"} 1"#), "{text}");
        assert!(text.contains(r#"faultline_requests_total{code="599",method="GET",region="us-east-1",upstream="orders-use1"} 1"#), "{text}");
        assert!(text.contains(r#"faultline_request_duration_seconds_count{region="us-east-1",upstream="orders-use1"} 6"#), "{text}");
    }

    #[test]
    fn every_unlabelled_family_is_exposed_from_the_start() {
        let text = Metrics::new().render();
        for family in [HALTED, BUILD_INFO, RULES_RELOADS_TOTAL] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing"
            );
        }
        assert!(text.contains(r#"faultline_rules_reloads_total{outcome="rejected"} 0"#));
        assert!(text.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn grpc_calls_are_counted_by_status_name() {
        let metrics = Metrics::new();
        let handles = metrics.upstream(&upstream());
        assert!(!metrics.render().contains("faultline_grpc_requests_total{"));
        handles.record_grpc(Some(GrpcStatus::UNAVAILABLE));
        handles.record_grpc(Some(GrpcStatus::UNAVAILABLE));
        handles.record_grpc(Some(GrpcStatus::OK));
        handles.record_grpc(None);
        let text = metrics.render();
        for (status, n) in [("UNAVAILABLE", 2), ("OK", 1), ("none", 1)] {
            let series = format!(
                r#"faultline_grpc_requests_total{{grpc_status="{status}",region="us-east-1",upstream="orders-use1"}} {n}"#
            );
            assert!(text.contains(&series), "{series} in {text}");
        }
    }

    #[test]
    fn two_registries_keep_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.upstream(&upstream())
            .record_request(&Method::GET, StatusCode::OK, Duration::ZERO, false);
        assert!(!b.render().contains("faultline_requests_total{"));
    }
}
