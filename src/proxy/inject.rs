//! The fault phases of the pipeline, named by when they run (as pingora
//! names its `ProxyHttp` hooks): [`Proxy::before_upstream`] (delay, then
//! answer, abort or hold), forward, [`Proxy::after_upstream`] (response
//! latency), then [`Proxy::shape`] and [`Proxy::mark`] on the way back.
//! Each phase takes the plan [`crate::plan::decide`] made and only sleeps,
//! answers or drops: nothing here decides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, Version};
use tracing::debug;

use super::body::{ReadAhead, Replayed, RequestBody, ResponseBody};
use super::synthetic::{self, X_FAULTLINE_RULE};
use super::tunnel::TunnelFaults;
use super::{shape, ActiveFault, ByFault, Connection, Plan, Proxy, StreamAborted, Unanswered};
use crate::aws::{self, Protocol};
use crate::control::HaltSignal;
use crate::fault::AbortMode;
use crate::plan::Action;
use crate::server::Ending;

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

/// What the phase before the upstream leaves to do.
enum BeforeUpstream {
    /// Send the request on; the after-upstream phases still apply.
    Forward(Request<RequestBody>),
    /// The kill switch, or the rule turning off, let the request go: it is
    /// sent on, and its response comes back untouched.
    LetGo(Request<RequestBody>),
    /// The fault answered: this goes back instead of the upstream's response.
    Answer(Response<ResponseBody>),
}

impl Proxy {
    /// Runs a planned fault: before upstream, forward, after upstream.
    pub(super) async fn inject(
        &self,
        plan: Plan,
        conn: &Arc<Connection>,
        request: Request<RequestBody>,
        start: Instant,
    ) -> Result<Response<ResponseBody>, Unanswered> {
        let Plan {
            decision,
            snapshot,
            upstream,
        } = &plan;
        let upstream = *upstream;
        let candidates = snapshot.rules.candidates(upstream);
        let fired = || {
            decision
                .fired
                .iter()
                .filter_map(move |&i| Some((i, candidates?.get(i)?)))
        };
        let Some(_active) = ActiveFault::enter(&self.active_faults, self.max_active_faults) else {
            debug!("max_active_faults reached; request passes unharmed");
            self.upstream_metrics[upstream].record_overflow();
            // Not injected: the rules keep their `times` budget.
            for (_, candidate) in fired() {
                candidate
                    .rule
                    .counters
                    .give_back(candidate.rule.turns.times);
            }
            return Ok(self.forward_now(upstream, conn, request, None).await?);
        };
        // Counted when decided: a client that leaves mid-fault was still
        // faulted. Forward traffic in the region its request names, as the
        // request itself is counted.
        let region = self.derived_region(conn, &request, upstream);
        let metrics = &self.upstream_metrics[upstream];
        for (i, candidate) in fired() {
            let rule = &candidate.rule;
            let in_region = region.is_some_and(|region| {
                metrics.record_fault_in(region.as_str(), rule.name(), rule.fault.kind().name())
            });
            if !in_region {
                snapshot.count_injected(upstream, i);
            }
            rule.counters.record_injected();
        }
        let halt = &snapshot.halt;
        // HTTP/2 carries other requests on the same connection: fail only this stream.
        let multiplexed = request.version() == Version::HTTP_2;
        let response = match self.before_upstream(&plan, conn, request, start).await? {
            BeforeUpstream::Answer(response) => response,
            BeforeUpstream::LetGo(request) => {
                return Ok(self.forward_now(upstream, conn, request, None).await?);
            }
            BeforeUpstream::Forward(request) => {
                // An upgrade's tunnel carries the shaping out on its bytes.
                let faults = (!decision.shaping.is_none()).then_some(TunnelFaults {
                    shaping: &decision.shaping,
                    halt,
                });
                let response = self.forward_now(upstream, conn, request, faults).await?;
                self.after_upstream(decision.response_delay, halt).await;
                response
            }
        };
        if halt.is_halted() {
            // Halted while waiting: the response goes back as it is.
            return Ok(response);
        }
        let response = self.shape(response, &decision.shaping, multiplexed, conn, halt);
        Ok(self.mark(response, fired().map(|(_, c)| &c.rule.name_header)))
    }

    /// Before the upstream: the injected delay, then the terminal fault.
    async fn before_upstream(
        &self,
        plan: &Plan,
        conn: &Arc<Connection>,
        request: Request<RequestBody>,
        start: Instant,
    ) -> Result<BeforeUpstream, Unanswered> {
        let (action, delay, upstream) = (&plan.decision.action, plan.decision.delay, plan.upstream);
        let halt = &plan.snapshot.halt;
        if !delay.is_zero() {
            sleep_unless_halted(delay, halt).await;
        }
        let multiplexed = request.version() == Version::HTTP_2;
        if halt.is_halted() {
            return Ok(BeforeUpstream::LetGo(request));
        }
        match action {
            Action::Forward => Ok(BeforeUpstream::Forward(request)),
            Action::Respond(response) => {
                // Worked out only for an `aws.*` preset, which answers in
                // the protocol of the service asked.
                let protocol = response
                    .adaptive
                    .as_ref()
                    .and_then(|_| aws_protocol(&request));
                let mut response = synthetic::injected(response, protocol);
                response.extensions_mut().insert(ByFault);
                Ok(BeforeUpstream::Answer(response))
            }
            Action::Refuse if request.method() == Method::CONNECT => {
                // The tunnel's dial is what is refused: answered as a
                // refused dial is, but marked as the fault's.
                let mut response = synthetic::refused_connect();
                response.extensions_mut().insert(ByFault);
                Ok(BeforeUpstream::Answer(response))
            }
            Action::Abort(_) | Action::Refuse if multiplexed => Err(StreamAborted.into()),
            Action::Abort(_) | Action::Refuse => {
                let mode = match action {
                    Action::Abort(mode) => *mode,
                    // A refused connection, on a connection already made.
                    _ => AbortMode::Reset,
                };
                if mode != AbortMode::Reset {
                    let (limit, time) = match mode {
                        AbortMode::Close => (CLOSE_DRAIN_LIMIT, CLOSE_DRAIN_TIME),
                        AbortMode::Reset | AbortMode::Empty | AbortMode::Garbage => {
                            (u64::MAX, FULL_DRAIN_TIME)
                        }
                    };
                    let (parts, body) = request.into_parts();
                    let mut read = body.into_replayed();
                    if drain(&mut read, limit, time, halt).await && read.is_whole() {
                        let request = Request::from_parts(parts, RequestBody::replayed(read));
                        return Ok(BeforeUpstream::LetGo(request));
                    }
                    self.record_unanswered(upstream, &parts.method, start);
                } else {
                    self.record_unanswered(upstream, request.method(), start);
                }
                conn.info.control.abort(ending(mode));
                // Never completes: the connection task sees the abort and
                // drops the connection, and this request's future with it.
                std::future::pending().await
            }
            &Action::Blackhole { max_hold } => {
                // The blackhole's rule fired last: turning it off lets the request go.
                let rule_off = plan
                    .decision
                    .fired
                    .last()
                    .and_then(|&i| plan.snapshot.rule_off(upstream, i));
                let (parts, body) = request.into_parts();
                let mut held = body.into_replayed();
                let let_go = hold(&mut held, max_hold, halt, rule_off.map(Arc::as_ref)).await;
                if let_go == Held::Halted && held.is_whole() {
                    let request = Request::from_parts(parts, RequestBody::replayed(held));
                    return Ok(BeforeUpstream::LetGo(request));
                }
                if multiplexed {
                    return Err(StreamAborted.into());
                }
                self.record_unanswered(upstream, &parts.method, start);
                conn.info.control.abort(Ending::Close);
                // Never completes: the connection task drops it with the connection.
                std::future::pending().await
            }
        }
    }

    /// After the upstream answered: its headers wait out a response-side latency.
    async fn after_upstream(&self, response_delay: Duration, halt: &HaltSignal) {
        if !response_delay.is_zero() {
            sleep_unless_halted(response_delay, halt).await;
        }
    }

    /// On the way back: body-shaping faults wrap the response body.
    fn shape(
        &self,
        response: Response<ResponseBody>,
        shaping: &crate::fault::Shaping,
        multiplexed: bool,
        conn: &Arc<Connection>,
        halt: &Arc<HaltSignal>,
    ) -> Response<ResponseBody> {
        // A `101` has no body: its tunnel shapes the bytes that follow.
        if shaping.is_none() || response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return response;
        }
        // On HTTP/2 a cut fails the stream, never the shared connection.
        let control = (!multiplexed).then(|| Arc::clone(&conn.info.control));
        response.map(|body| {
            ResponseBody::Shaped(Box::new(shape::ShapedBody::new(
                body,
                *shaping,
                control,
                Arc::clone(halt),
            )))
        })
    }

    /// On the way back: one `x-faultline-rule` per rule that acted.
    fn mark<'a>(
        &self,
        mut response: Response<ResponseBody>,
        rules: impl Iterator<Item = &'a http::HeaderValue>,
    ) -> Response<ResponseBody> {
        if self.mark_faults {
            for name in rules {
                response
                    .headers_mut()
                    .append(X_FAULTLINE_RULE.clone(), name.clone());
            }
        }
        response
    }
}

/// How an injected abort ends the connection.
pub(super) fn ending(mode: AbortMode) -> Ending {
    match mode {
        AbortMode::Reset => Ending::Reset,
        // `empty` has read the whole request: a FIN says no response comes.
        AbortMode::Close | AbortMode::Empty => Ending::Close,
        AbortMode::Garbage => Ending::Garbage,
    }
}

/// Reads a request body before an abort, up to `limit` bytes and `time`,
/// keeping what a halt would forward. `true` when the kill switch fired
/// meanwhile.
async fn drain(body: &mut Replayed, limit: u64, time: Duration, halt: &HaltSignal) -> bool {
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
        () = halt.halted() => true,
        () = read => false,
        () = tokio::time::sleep(time) => false,
    }
}

/// Sleeps for `delay`, or until the kill switch lets the request go.
async fn sleep_unless_halted(delay: Duration, halt: &HaltSignal) {
    tokio::select! {
        biased;
        () = halt.halted() => {}
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
    /// The kill switch, or the rule turning off, let the request out.
    Halted,
}

/// Holds a blackholed request for `max_hold`, reading its body ahead all
/// the while, so that hyper notices a client that leaves, and so the body
/// can still be forwarded if the kill switch, or its rule turning off, lets
/// the request out.
async fn hold(
    body: &mut Replayed,
    max_hold: Duration,
    halt: &HaltSignal,
    rule_off: Option<&HaltSignal>,
) -> Held {
    let rule_off = async {
        match rule_off {
            Some(off) => off.halted().await,
            None => std::future::pending().await,
        }
    };
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
        () = halt.halted() => Held::Halted,
        () = rule_off => Held::Halted,
        held = read => held,
        () = tokio::time::sleep(max_hold) => Held::Expired,
    }
}

/// The protocol of the AWS service a request asks, when it tells.
fn aws_protocol<B>(request: &Request<B>) -> Option<Protocol> {
    let host = request.uri().authority().map(|a| a.as_str()).or_else(|| {
        request
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
    });
    let facts = aws::facts(&aws::RequestParts {
        method: request.method(),
        host,
        path: request.uri().path(),
        query: request.uri().query(),
        headers: request.headers(),
        form: None,
    });
    Protocol::of(request.headers(), request.uri().query(), facts.service)
}
