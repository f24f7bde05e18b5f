//! What control publishes and the request path reads: one immutable
//! [`Snapshot`] (the rules in force, their metric handles, and the halt
//! signal of their faults), swapped whole in a [`Published`] cell.
//!
//! Never two swappable things that must agree: the rules and the signal
//! that lets their faults go travel together in one snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use prometheus::IntCounter;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::rules::RuleSet;

/// The kill switch's signal to the requests inside a snapshot's faults:
/// once given, they stop waiting and are forwarded untouched. Checking it
/// is one atomic load and sharing it one `Arc` count, so a faulted request
/// takes no lock unless it actually waits.
#[derive(Debug, Default)]
pub struct HaltSignal {
    halted: AtomicBool,
    token: CancellationToken,
}

impl HaltSignal {
    /// Lets every waiting request go; later checks see it at once.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Completes when the requests are let go.
    pub async fn halted(&self) {
        self.token.cancelled().await;
    }

    /// [`HaltSignal::halted`] as a future a body can keep.
    pub fn halted_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

/// The rules in force for new requests.
#[derive(Debug)]
pub struct Snapshot {
    pub rules: RuleSet,
    /// Per upstream, per rule that can apply to it (in the order of
    /// [`RuleSet::candidates`]): `faultline_faults_injected_total`.
    injected: Vec<Vec<IntCounter>>,
    /// Per rule of [`RuleSet::dns_candidates`]: `faultline_faults_injected_total`.
    dns_injected: Vec<IntCounter>,
    /// Given when the proxy halts: requests inside this snapshot's faults
    /// stop waiting.
    pub halt: Arc<HaltSignal>,
    /// Per rule, in the order of [`RuleSet::rules`]: given when that rule
    /// turns off or goes, so the requests its blackhole holds are let go.
    rule_off: Vec<Arc<HaltSignal>>,
}

impl Snapshot {
    /// Resolves the rules' metric handles, once per snapshot rather than
    /// per request.
    pub fn new(
        rules: RuleSet,
        upstreams: &[UpstreamConfig],
        metrics: &Metrics,
        halt: Arc<HaltSignal>,
        rule_off: Vec<Arc<HaltSignal>>,
    ) -> Self {
        let injected = upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                let Some(candidates) = rules.candidates(i) else {
                    return Vec::new();
                };
                candidates
                    .iter()
                    .map(|c| {
                        metrics.faults_injected(c.rule.name(), c.rule.fault.kind().name(), upstream)
                    })
                    .collect()
            })
            .collect();
        let dns_injected = rules
            .dns_candidates()
            .iter()
            .map(|c| metrics.dns_faults_injected(c.rule.name(), c.rule.fault.kind().name()))
            .collect();
        Self {
            rules,
            injected,
            dns_injected,
            halt,
            rule_off,
        }
    }

    /// No rules at all: what the proxy serves before control publishes.
    pub fn empty(upstreams: &[UpstreamConfig]) -> Self {
        Self {
            rules: RuleSet::new(Vec::new(), upstreams.iter().map(Into::into), 0),
            injected: Vec::new(),
            dns_injected: Vec::new(),
            halt: Arc::default(),
            rule_off: Vec::new(),
        }
    }

    /// The signal given when the `candidate`-th rule of `upstream` turns off.
    pub fn rule_off(&self, upstream: usize, candidate: usize) -> Option<&Arc<HaltSignal>> {
        let candidate = self.rules.candidates(upstream)?.get(candidate)?;
        self.rule_off.get(candidate.index)
    }

    /// Counts a fault the `candidate`-th DNS rule injected (into a client's
    /// query or the proxy's own resolution), on the rule and in the metrics.
    pub fn count_dns_injected(&self, candidate: usize) {
        if let Some(c) = self.rules.dns_candidates().get(candidate) {
            c.rule.counters.record_injected();
        }
        if let Some(counter) = self.dns_injected.get(candidate) {
            counter.inc();
        }
    }

    /// What a DNS decision comes to: the rules that fired counted as
    /// injected ([`Self::count_dns_injected`]), then the delay before the
    /// answer and the answer a rule makes (`None`: the true one).
    pub fn take_dns_decision(
        &self,
        decision: Option<crate::plan::DnsDecision>,
    ) -> (std::time::Duration, Option<crate::fault::DnsFault>) {
        let Some(decision) = decision else {
            return (std::time::Duration::ZERO, None);
        };
        for &i in &decision.fired {
            self.count_dns_injected(i);
        }
        (decision.delay, decision.answer)
    }

    /// Counts a fault the `candidate`-th rule of `upstream` injected.
    pub fn count_injected(&self, upstream: usize, candidate: usize) {
        if let Some(counter) = self.injected.get(upstream).and_then(|c| c.get(candidate)) {
            counter.inc();
        }
    }
}

/// The cell control publishes snapshots into: one atomic load per request,
/// and a watch for those that wait on a change (dedicated ports).
#[derive(Debug)]
pub struct Published {
    current: ArcSwap<Snapshot>,
    changed: watch::Sender<()>,
}

impl Published {
    pub fn new(first: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
            changed: watch::Sender::new(()),
        }
    }

    /// The snapshot in force, for the span of one request.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The snapshot in force, to keep.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot; requests in flight keep theirs.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
        self.changed.send_replace(());
    }

    /// Wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}
