//! Runtime control: the one owner of the rules while the proxy runs.
//!
//! File rules, rules added through the admin API, runtime switches
//! (`enabled`, `probability`, TTLs), the kill switch and reloads all change
//! the state kept here, and every change publishes one new immutable
//! [`RuleSet`] to the proxy. Changes are serialised by one lock that only
//! the admin side takes, never across an `.await`; the request path never
//! takes it, it reads the published snapshot.
//!
//! Every change is logged under the `faultline::audit` target with what
//! changed and who asked.

mod halt_file;
mod publish;
mod scenarios;
mod view;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::book::{self, RuleBook, RuleText};
use crate::config::UpstreamConfig;
use crate::diagnostic::{Diagnostic, FieldError, FieldPath};
use crate::fault::BodySource;
use crate::metrics::Metrics;
use crate::rules::{LiveRule, Rule, RuleSet, RuleSource, RuleSpec, UpstreamIdentity};
use crate::scenario::Scenario;
use crate::tls::ServedCertificate;
use crate::traffic::Tally;
use rustls::sign::CertifiedKey;
use scenarios::{Anchor, Overlay, Run};

pub use halt_file::{HaltFile, HaltFileError};
pub use publish::{HaltSignal, Published, Snapshot};
pub use scenarios::{RunState, MAX_SPEED};
pub use view::{
    LastReload, ReloadSummary, RuleCounts, RuleView, RunStatus, RunView, ScenarioView, StatusView,
    StepRef,
};

/// The longest TTL a rule may be given.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where the file rules come from, read again on every reload.
#[derive(Debug, Clone)]
pub enum RuleFiles {
    /// Every `*.toml` below this directory.
    Dir(PathBuf),
    /// Texts fixed at start (the demo's built-in rules).
    Fixed(Vec<RuleText>),
}

impl RuleFiles {
    /// Reads and validates the files; no rule may take a `reserved` name.
    fn load(
        &self,
        upstreams: &[UpstreamConfig],
        reserved: &[&str],
    ) -> Result<RuleBook, Vec<Diagnostic>> {
        let upstream_names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let book = match self {
            RuleFiles::Dir(dir) => book::load_dir_reserving(dir, &upstream_names, reserved),
            RuleFiles::Fixed(texts) => {
                book::load_sources_reserving(texts, &upstream_names, reserved)
            }
        }?;
        let identities: Vec<UpstreamIdentity<'_>> = upstreams.iter().map(Into::into).collect();
        book.fitted(&identities)
    }
}

/// What asked for a reload, for the audit log and `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// `POST /api/reload` from this address.
    Api(String),
    Signal,
    Watcher,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Api(caller) => write!(f, "api {caller}"),
            Trigger::Signal => f.write_str("SIGHUP"),
            Trigger::Watcher => f.write_str("watcher"),
        }
    }
}

/// What control works with, wired by [`crate::app`]: the upstreams rules
/// may name, the metrics it keeps, each upstream's traffic counts (for
/// guards and reports), and the cell it publishes snapshots into.
#[derive(Debug)]
pub struct Wiring {
    pub upstreams: Vec<UpstreamConfig>,
    pub metrics: Metrics,
    /// By upstream index.
    pub tallies: Vec<Arc<Tally>>,
    pub published: Arc<Published>,
    /// The certificates TLS listeners serve, which a reload reads again.
    pub certificates: Vec<Arc<ServedCertificate>>,
    /// `admin.halt_file`: a halt is written there and a resume removes it.
    pub halt_file: Option<HaltFile>,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no rule is named {0:?}")]
    NotFound(String),
    #[error("a rule named {0:?} already exists")]
    NameTaken(String),
    #[error(
        "rule {0:?} comes from a rule file; disable it, or remove it from the file and reload"
    )]
    FileRule(String),
    #[error("faultline is halted: nothing can be enabled until POST /api/resume")]
    Halted,
    #[error("rule {0:?} is disabled; a TTL counts down only while a rule is enabled")]
    NotEnabled(String),
    #[error("{}", first_message(.0))]
    Invalid(Vec<FieldError>),
    #[error("the rule files have {} problem(s); the rules in force are unchanged", .0.len())]
    Rejected(Vec<Diagnostic>),
    #[error("no scenario is named {0:?}")]
    ScenarioNotFound(String),
    #[error("scenario {0:?} is already running; stop it first")]
    ScenarioRunning(String),
    #[error("scenario {0:?} is not running")]
    ScenarioNotRunning(String),
    #[error("scenario {scenario:?} is already armed to start at {at}; stop it first")]
    ScenarioScheduled { scenario: String, at: String },
    #[error("scenario {scenario:?} anchored there would have ended at {ended_at}: a run that is over is not started")]
    ScenarioOver { scenario: String, ended_at: String },
    #[error("scenario {0:?} cannot start outside the proxy's runtime")]
    NoRuntime(String),
    #[error("scenario {0:?} has not run yet")]
    NoReport(String),
    #[error("scenario {scenario:?} cannot start while {other:?} runs: both drive rule {rule:?}")]
    ScenarioConflict {
        scenario: String,
        other: String,
        rule: String,
    },
    #[error(
        "rule {rule:?} is driven by scenario {scenario:?} until it ends; stop the scenario first"
    )]
    DrivenByScenario { rule: String, scenario: String },
    #[error(
        "the guard of scenario {0:?} watches no upstream: no upstream has its labels or names"
    )]
    GuardWatchesNothing(String),
    #[error("an upstream named {0:?} already exists")]
    UpstreamTaken(String),
    #[error("at most {MAX_RUNTIME_UPSTREAMS} upstreams may be added at run time")]
    TooManyUpstreams,
}

/// The most upstreams the Toxiproxy API may add over the process's life
/// (a retired one's index is taken again by one of the same name).
pub const MAX_RUNTIME_UPSTREAMS: usize = 1_000;

fn first_message(errors: &[FieldError]) -> String {
    errors
        .first()
        .map_or_else(|| "invalid".to_owned(), ToString::to_string)
}

/// A change to one rule's runtime switches; `None` leaves a switch as it is.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub enabled: Option<bool>,
    pub probability: Option<f64>,
    /// `Some(None)` removes a TTL; `Some(Some(ttl))` sets one.
    pub ttl: Option<Option<Duration>>,
}

/// The rules while the proxy runs, and the changes made to them.
pub struct Control {
    wiring: Wiring,
    /// The config's upstreams and those added at run time, by index.
    upstreams: ArcSwap<Vec<UpstreamConfig>>,
    /// Each upstream's running counts, by index.
    tallies: ArcSwap<Vec<Arc<Tally>>>,
    files: RuleFiles,
    seed: u64,
    started: Instant,
    state: Mutex<State>,
    /// Held through a whole reload, read and apply, so two reloads at once
    /// cannot apply an older read after a newer one.
    reloading: Mutex<()>,
    /// For TTL timers, which outlive the call that armed them.
    me: Weak<Control>,
}

struct State {
    /// File rules in evaluation order, then API rules in the order added.
    entries: Vec<Entry>,
    halted: bool,
    /// The kill switch's signal for the snapshots published since the last halt.
    halt: Arc<HaltSignal>,
    /// Rule names that have a `faultline_rule_enabled` series.
    published: HashSet<String>,
    last_reload: Option<LastReload>,
    next_timer: u64,
    /// The scenarios the rule files define.
    scenarios: Vec<Arc<Scenario>>,
    /// Each scenario's latest run, by scenario name.
    runs: BTreeMap<String, Run>,
    /// The rule files' `start_at`s acted on, by scenario name.
    anchors: BTreeMap<String, Anchor>,
    next_run: u64,
    /// Indices of run-time upstreams that were removed.
    retired: Vec<usize>,
}

/// A rule as defined, with the switches flipped at run time.
struct Entry {
    rule: Arc<Rule>,
    enabled: Option<bool>,
    probability: Option<f64>,
    expiry: Option<Expiry>,
    /// What a running scenario does to the rule; it wins over the switches.
    overlay: Option<Overlay>,
    /// Given when the rule turns off or goes: the requests its blackhole
    /// holds are let go, as a halt lets them go.
    off: Arc<HaltSignal>,
}

/// When an enabled rule turns itself off.
struct Expiry {
    at: SystemTime,
    id: u64,
    timer: Option<AbortHandle>,
}

impl Drop for Expiry {
    fn drop(&mut self) {
        if let Some(timer) = &self.timer {
            timer.abort();
        }
    }
}

impl Entry {
    fn new(rule: Arc<Rule>) -> Entry {
        Entry {
            rule,
            enabled: None,
            probability: None,
            expiry: None,
            overlay: None,
            off: Arc::default(),
        }
    }

    fn name(&self) -> &str {
        self.rule.name()
    }

    /// Whether the rule is on now: a running scenario's word, else the
    /// runtime switch, else the file's.
    fn enabled(&self) -> bool {
        self.overlay
            .as_ref()
            .and_then(|o| o.enabled)
            .or(self.enabled)
            .unwrap_or(self.rule.enabled)
    }

    fn probability(&self) -> f64 {
        self.overlay
            .as_ref()
            .and_then(|o| o.probability)
            .or(self.probability)
            .unwrap_or(self.rule.probability)
    }

    /// The definition in force: the rule, or a scenario's patched copy.
    fn current(&self) -> &Arc<Rule> {
        self.overlay
            .as_ref()
            .and_then(|o| o.patched.as_ref())
            .unwrap_or(&self.rule)
    }

    fn is_api(&self) -> bool {
        self.rule.source == RuleSource::Api
    }

    /// The rule as the request path sees it: the definition in force, with
    /// the switches in force.
    fn live(&self) -> LiveRule {
        LiveRule {
            rule: Arc::clone(self.current()),
            enabled: self.enabled(),
            probability: self.probability(),
        }
    }

    fn switch_off(&mut self) {
        self.enabled = Some(false);
        self.expiry = None;
    }
}

impl Control {
    /// Takes over the rules and publishes the first snapshot.
    pub fn new(wiring: Wiring, files: RuleFiles, book: RuleBook, seed: u64) -> Arc<Self> {
        for scenario in &book.scenarios {
            wiring.metrics.set_scenario(scenario.name(), false, None);
        }
        let control = Arc::new_cyclic(|me| Control {
            upstreams: ArcSwap::from_pointee(wiring.upstreams.clone()),
            tallies: ArcSwap::from_pointee(wiring.tallies.clone()),
            wiring,
            files,
            seed,
            started: Instant::now(),
            state: Mutex::new(State {
                entries: book.rules.into_iter().map(Entry::new).collect(),
                halted: false,
                halt: Arc::default(),
                published: HashSet::new(),
                last_reload: None,
                next_timer: 0,
                scenarios: book.scenarios,
                runs: BTreeMap::new(),
                anchors: BTreeMap::new(),
                next_run: 0,
                retired: Vec::new(),
            }),
            reloading: Mutex::new(()),
            me: me.clone(),
        });
        control.publish(&mut control.lock());
        control
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind:
        // every change is computed before it is stored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds the snapshot of the current state and publishes it.
    fn publish(&self, state: &mut State) {
        let metrics = self.metrics();
        for entry in &mut state.entries {
            match (entry.enabled(), entry.off.is_halted()) {
                // Turned off: let go of what it holds.
                (false, false) => entry.off.halt(),
                // On again: a fresh signal for what it will hold.
                (true, true) => entry.off = Arc::default(),
                (true, false) | (false, true) => {}
            }
        }
        let rule_off: Vec<Arc<HaltSignal>> =
            state.entries.iter().map(|e| Arc::clone(&e.off)).collect();
        let rules: Vec<LiveRule> = state.entries.iter().map(Entry::live).collect();
        let names: HashSet<String> = rules.iter().map(|r| r.rule.name().to_owned()).collect();
        for gone in state.published.difference(&names) {
            metrics.forget_rule(gone);
        }
        for live in &rules {
            metrics.set_rule_enabled(live.rule.name(), live.enabled);
        }
        state.published = names;
        let upstreams = self.upstreams();
        let set = RuleSet::new(rules, upstreams.iter().map(Into::into), self.seed);
        let snapshot = Snapshot::new(set, &upstreams, metrics, Arc::clone(&state.halt), rule_off);
        self.wiring.published.store(snapshot);
    }

    /// Every upstream: the config's, then those added at run time
    /// ([`Control::add_upstream`]), by index.
    fn upstreams(&self) -> Arc<Vec<UpstreamConfig>> {
        self.upstreams.load_full()
    }

    fn metrics(&self) -> &Metrics {
        &self.wiring.metrics
    }

    /// The running counts of an upstream's traffic.
    fn tally(&self, upstream: usize) -> Option<Arc<Tally>> {
        self.tallies.load().get(upstream).cloned()
    }

    /// Adds a `tcp://` upstream at run time (the Toxiproxy API's proxies),
    /// or brings back a retired one of the same name at its index; gives
    /// its index. Rules may name it from then on.
    pub fn add_upstream(
        &self,
        upstream: UpstreamConfig,
        tally: Arc<Tally>,
        caller: &str,
    ) -> Result<usize, ControlError> {
        let mut state = self.lock();
        let mut upstreams = (*self.upstreams()).clone();
        let mut tallies = (*self.tallies.load_full()).clone();
        let index = match upstreams.iter().position(|u| u.name == upstream.name) {
            Some(i) if state.retired.contains(&i) => {
                state.retired.retain(|&r| r != i);
                upstreams[i] = upstream;
                tallies[i] = tally;
                i
            }
            Some(_) => return Err(ControlError::UpstreamTaken(upstream.name)),
            None if upstreams.len() >= self.wiring.upstreams.len() + MAX_RUNTIME_UPSTREAMS => {
                return Err(ControlError::TooManyUpstreams);
            }
            None => {
                upstreams.push(upstream);
                tallies.push(tally);
                upstreams.len() - 1
            }
        };
        info!(target: "faultline::audit", caller, upstream = upstreams[index].name, "upstream added");
        self.upstreams.store(Arc::new(upstreams));
        self.tallies.store(Arc::new(tallies));
        self.publish(&mut state);
        Ok(index)
    }

    /// Retires an upstream added at run time: its index stays (snapshots
    /// in flight keep pointing at it) until one of the same name comes back.
    pub fn retire_upstream(&self, index: usize, caller: &str) {
        let mut state = self.lock();
        if index >= self.wiring.upstreams.len() && !state.retired.contains(&index) {
            state.retired.push(index);
            info!(target: "faultline::audit", caller, index, "upstream retired");
        }
    }

    fn upstream_names(&self) -> Vec<String> {
        self.upstreams().iter().map(|u| u.name.clone()).collect()
    }

    /// Every rule, in evaluation order.
    pub fn rules(&self) -> Vec<RuleView> {
        let state = self.lock();
        state.entries.iter().map(RuleView::of).collect()
    }

    pub fn rule(&self, name: &str) -> Result<RuleView, ControlError> {
        let state = self.lock();
        find(&state, name).map(|i| RuleView::of(&state.entries[i]))
    }

    pub fn status(&self) -> StatusView {
        let state = self.lock();
        StatusView::of(&state, self.seed, self.started.elapsed())
    }

    /// Adds a rule at run time, after every other rule.
    pub fn add(
        &self,
        spec: RuleSpec,
        ttl: Option<Duration>,
        caller: &str,
    ) -> Result<RuleView, ControlError> {
        let mut state = self.lock();
        if find(&state, &spec.name).is_ok() {
            return Err(ControlError::NameTaken(spec.name));
        }
        if let Some(ttl) = ttl {
            check_ttl(ttl, &FieldPath::root().key("ttl"))?;
            if !spec.enabled {
                return Err(ControlError::NotEnabled(spec.name));
            }
        }
        if spec.enabled && state.halted {
            return Err(ControlError::Halted);
        }
        if spec.fault.body_file.is_some() {
            // The API must not become a way to read the proxy's files.
            return Err(ControlError::Invalid(vec![FieldError::new(
                FieldPath::root().key("fault").key("body_file"),
                "rules added through the API carry their body inline (`body`); `body_file` is for rule files",
            )]));
        }
        let names = self.upstream_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let rule = spec
            .validate(
                RuleSource::Api,
                BodySource::inline(),
                &names,
                &FieldPath::root(),
            )
            .map_err(ControlError::Invalid)?;
        let upstreams = self.upstreams();
        let identities: Vec<UpstreamIdentity<'_>> = upstreams.iter().map(Into::into).collect();
        if let Some(message) = rule.misfit(&identities) {
            return Err(ControlError::Invalid(vec![FieldError::new(
                FieldPath::root().key("fault"),
                message,
            )]));
        }
        let mut entry = Entry::new(Arc::new(rule));
        if let Some(ttl) = ttl {
            entry.expiry = Some(self.arm(&mut state, entry.name(), ttl));
        }
        let view = RuleView::of(&entry);
        info!(
            target: "faultline::audit",
            caller,
            rule = entry.name(),
            enabled = entry.enabled(),
            kind = entry.rule.fault.kind().name(),
            ttl = ttl.map(|t| humantime::format_duration(t).to_string()),
            "rule added"
        );
        state.entries.push(entry);
        self.publish(&mut state);
        Ok(view)
    }

    /// Flips a rule's switches: all of the change, or none of it.
    pub fn change(
        &self,
        name: &str,
        change: Change,
        caller: &str,
    ) -> Result<RuleView, ControlError> {
        let mut state = self.lock();
        let i = find(&state, name)?;
        if let Some(scenario) = Control::driver_of(&state, name) {
            return Err(ControlError::DrivenByScenario {
                rule: name.to_owned(),
                scenario: scenario.to_owned(),
            });
        }
        if let Some(p) = change.probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(ControlError::Invalid(vec![FieldError::new(
                    FieldPath::root().key("probability"),
                    format!("probability {p} is not between 0 and 1"),
                )]));
            }
        }
        let entry = &state.entries[i];
        let enabled = change.enabled.unwrap_or(entry.enabled());
        let ttl = change.ttl.flatten();
        if let Some(ttl) = ttl {
            check_ttl(ttl, &FieldPath::root().key("ttl"))?;
        }
        if ttl.is_some() && !enabled {
            return Err(ControlError::NotEnabled(name.to_owned()));
        }
        if enabled && !entry.enabled() && state.halted {
            return Err(ControlError::Halted);
        }
        let was_enabled = entry.enabled();
        let expiry = match (enabled, change.ttl) {
            (false, _) => None,
            (true, Some(Some(ttl))) => Some(self.arm(&mut state, name, ttl)),
            (true, Some(None)) => None,
            (true, None) => state.entries[i].expiry.take(),
        };
        let entry = &mut state.entries[i];
        if change.enabled.is_some() {
            entry.enabled = Some(enabled);
        }
        if let Some(p) = change.probability {
            entry.probability = Some(p);
        }
        entry.expiry = expiry;
        if enabled && !was_enabled {
            entry.rule.counters.restart();
        }
        let view = RuleView::of(entry);
        info!(
            target: "faultline::audit",
            caller,
            rule = name,
            enabled,
            probability = entry.probability(),
            expires_at = view.expires_at.as_deref(),
            "rule changed"
        );
        self.publish(&mut state);
        Ok(view)
    }

    /// Removes a rule added through the API.
    pub fn delete(&self, name: &str, caller: &str) -> Result<(), ControlError> {
        let mut state = self.lock();
        let i = find(&state, name)?;
        if !state.entries[i].is_api() {
            return Err(ControlError::FileRule(name.to_owned()));
        }
        // A deleted rule holds nothing any more.
        state.entries.remove(i).off.halt();
        info!(target: "faultline::audit", caller, rule = name, "rule deleted");
        self.publish(&mut state);
        Ok(())
    }

    /// Turns every fault off and refuses to turn any on until [`Control::resume`].
    /// Requests waiting inside a fault are let go and forwarded.
    /// With `admin.halt_file`, the halt is also written there, so a restart
    /// comes back halted.
    pub fn halt(&self, caller: &str) -> StatusView {
        let mut state = self.lock();
        if !state.halted {
            self.halt_locked(&mut state, caller);
            // Under the lock, so a resume right after cannot be overtaken.
            if let Some(file) = &self.wiring.halt_file {
                file.record(caller, SystemTime::now());
            }
        }
        StatusView::of(&state, self.seed, self.started.elapsed())
    }

    /// Starts halted: `admin.halt_file` says the proxy was halted when it
    /// stopped (its `note`). Called before the files' anchored runs are
    /// armed, so none is joined until resumed.
    pub fn start_halted(&self, note: &str) {
        let mut state = self.lock();
        let path = self
            .wiring
            .halt_file
            .as_ref()
            .map_or_else(String::new, |file| file.path().display().to_string());
        self.halt_locked(&mut state, &format!("admin.halt_file {path} ({note})"));
    }

    fn halt_locked(&self, state: &mut State, caller: &str) {
        state.halted = true;
        let stopped = self.end_all_runs(state, &format!("halted by {caller}"));
        let switched_off: Vec<String> = state
            .entries
            .iter_mut()
            .filter(|entry| entry.enabled())
            .map(|entry| {
                entry.switch_off();
                entry.name().to_owned()
            })
            .collect();
        // Let go of everything the older snapshots hold.
        let halt = std::mem::take(&mut state.halt);
        self.publish(state);
        halt.halt();
        self.metrics().halted().set(1);
        warn!(
            target: "faultline::audit",
            caller,
            switched_off = switched_off.join(","),
            scenarios_stopped = stopped.join(","),
            "HALTED: every fault is off until resumed"
        );
    }

    /// Lifts the halt: rules may be enabled again. Nothing turns on by itself.
    pub fn resume(&self, caller: &str) -> StatusView {
        let mut state = self.lock();
        if state.halted {
            state.halted = false;
            if let Some(file) = &self.wiring.halt_file {
                file.clear();
            }
            self.metrics().halted().set(0);
            info!(target: "faultline::audit", caller, "resumed: rules may be enabled again");
            // The rule files' anchored runs are a standing order: a run the
            // halt stopped, or kept from starting, is joined at its current step.
            let trigger = format!("resumed by {caller}");
            self.arm_locked(&mut state, &trigger);
            self.rejoin_after_halt(&mut state, &trigger);
            self.publish(&mut state);
        }
        StatusView::of(&state, self.seed, self.started.elapsed())
    }

    /// Reads the rule files again and applies them whole, or not at all.
    ///
    /// A rule that is still there keeps its counters and its runtime
    /// switches, unless the file now says otherwise for that switch (the
    /// newer word wins). Runtime rules stay after the file rules.
    pub fn reload(&self, trigger: &Trigger) -> Result<ReloadSummary, ControlError> {
        let _reloading = self
            .reloading
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let api_names: Vec<String> = {
            let state = self.lock();
            state
                .entries
                .iter()
                .filter(|e| e.is_api())
                .map(|e| e.name().to_owned())
                .collect()
        };
        let reserved: Vec<&str> = api_names.iter().map(String::as_str).collect();
        // Read outside the state lock: the admin API stays responsive meanwhile.
        let loaded = self.files.load(&self.upstreams(), &reserved);
        // A renewed certificate applies on reload; a broken one rejects the
        // reload with the rules, so nothing changes by half.
        let certificates = self.read_certificates();
        let loaded = match (loaded, certificates) {
            (Ok(book), Ok(certificates)) => Ok((book, certificates)),
            (Ok(_), Err(problems)) => Err(problems),
            (Err(mut problems), certificates) => {
                problems.extend(certificates.err().unwrap_or_default());
                Err(problems)
            }
        };
        let mut state = self.lock();
        let was_rejected = state
            .last_reload
            .as_ref()
            .is_some_and(|last| last.outcome == "rejected");
        let book = match loaded {
            Ok((book, certificates)) => {
                self.install_certificates(certificates);
                book
            }
            Err(problems) => {
                self.metrics().record_reload(false);
                warn!(
                    target: "faultline::audit",
                    caller = %trigger,
                    problems = problems.len(),
                    "reload rejected; the rules and certificates in force are unchanged"
                );
                for problem in &problems {
                    warn!("{problem}");
                }
                state.last_reload = Some(LastReload::rejected(trigger, &problems));
                return Err(ControlError::Rejected(problems));
            }
        };
        let (mut entries, summary) = merge(std::mem::take(&mut state.entries), book.rules);
        if state.halted {
            for entry in entries.iter_mut().filter(|e| e.enabled()) {
                entry.switch_off();
            }
        }
        state.entries = entries;
        // A run must not go on driving a rule whose definition moved under it.
        let disturbed: Vec<String> = summary
            .changed
            .iter()
            .chain(&summary.removed)
            .cloned()
            .collect();
        self.abort_runs_touching(&mut state, &disturbed);
        let running = Control::running_names(&state);
        for gone in &state.scenarios {
            let kept = book.scenarios.iter().any(|s| s.name() == gone.name());
            if !kept && !running.iter().any(|r| r == gone.name()) {
                self.metrics().forget_scenario(gone.name());
            }
        }
        for scenario in &book.scenarios {
            if !running.iter().any(|r| r == scenario.name()) {
                self.metrics().set_scenario(scenario.name(), false, None);
            }
        }
        state.scenarios = book.scenarios;
        self.arm_locked(&mut state, &format!("reload by {trigger}"));
        self.publish(&mut state);
        if summary.is_empty() && *trigger == Trigger::Watcher && !was_rejected {
            // A file touched but not changed (an editor's swap file, a
            // ConfigMap refresh): not worth a count or a log line.
            debug!(caller = %trigger, "reload: nothing changed");
            return Ok(summary);
        }
        self.metrics().record_reload(true);
        state.last_reload = Some(LastReload::applied(trigger));
        if summary.is_empty() {
            info!(target: "faultline::audit", caller = %trigger, "reload: nothing changed");
        } else {
            info!(
                target: "faultline::audit",
                caller = %trigger,
                added = summary.added.join(","),
                changed = summary.changed.join(","),
                removed = summary.removed.join(","),
                "reload applied"
            );
        }
        Ok(summary)
    }

    /// Every served certificate read again, in the order of
    /// `Wiring::certificates`, or every problem.
    fn read_certificates(&self) -> Result<Vec<Arc<CertifiedKey>>, Vec<Diagnostic>> {
        let mut read = Vec::new();
        let mut problems = Vec::new();
        for served in &self.wiring.certificates {
            match served.read_again() {
                Ok(pair) => read.push(pair),
                Err(e) => problems.push(Diagnostic::whole_file(served.cert_path(), e)),
            }
        }
        if problems.is_empty() {
            Ok(read)
        } else {
            Err(problems)
        }
    }

    fn install_certificates(&self, read: Vec<Arc<CertifiedKey>>) {
        for (served, pair) in self.wiring.certificates.iter().zip(read) {
            if served.serving().cert != pair.cert {
                info!(
                    target: "faultline::audit",
                    cert = %served.cert_path().display(),
                    "serving a new certificate from the next handshake on"
                );
            }
            served.install(pair);
        }
    }

    /// Starts the countdown of a TTL.
    fn arm(&self, state: &mut State, name: &str, ttl: Duration) -> Expiry {
        state.next_timer += 1;
        let id = state.next_timer;
        let timer = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let me = self.me.clone();
            let name = name.to_owned();
            // Due from now, not from when the timer's task first runs.
            let due = tokio::time::Instant::now() + ttl;
            runtime
                .spawn(async move {
                    tokio::time::sleep_until(due).await;
                    if let Some(control) = me.upgrade() {
                        control.expire(&name, id);
                    }
                })
                .abort_handle()
        });
        Expiry {
            at: SystemTime::now() + ttl,
            id,
            timer,
        }
    }

    /// A TTL ran out: the rule turns off, unless it was changed since.
    fn expire(&self, name: &str, id: u64) {
        let mut state = self.lock();
        let Ok(i) = find(&state, name) else { return };
        let entry = &mut state.entries[i];
        if entry.expiry.as_ref().is_none_or(|e| e.id != id) {
            return;
        }
        // Not aborted from inside: the timer is this task.
        if let Some(mut expiry) = entry.expiry.take() {
            expiry.timer = None;
        }
        entry.enabled = Some(false);
        info!(target: "faultline::audit", caller = "ttl", rule = name, "rule expired and is now off");
        self.publish(&mut state);
    }
}

fn find(state: &State, name: &str) -> Result<usize, ControlError> {
    state
        .entries
        .iter()
        .position(|e| e.name() == name)
        .ok_or_else(|| ControlError::NotFound(name.to_owned()))
}

fn check_ttl(ttl: Duration, field: &FieldPath) -> Result<(), ControlError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(ControlError::Invalid(vec![FieldError::new(
            field.clone(),
            format!(
                "ttl {} must be more than 0 and at most {}",
                humantime::format_duration(ttl),
                humantime::format_duration(MAX_TTL)
            ),
        )]));
    }
    Ok(())
}

/// The reload merge: the entries in force and the rules the files now
/// define give the new entries, in evaluation order, and what changed.
///
/// Rules are matched by name. An unchanged rule keeps its entry as it is;
/// a changed one keeps its counters and each runtime switch the file did
/// not change (the newer word wins); rules added through the API stay
/// after the file rules.
fn merge(entries: Vec<Entry>, rules: Vec<Arc<Rule>>) -> (Vec<Entry>, ReloadSummary) {
    let mut old: HashMap<String, Entry> = HashMap::new();
    let mut api = Vec::new();
    for entry in entries {
        if entry.is_api() {
            api.push(entry);
        } else {
            old.insert(entry.name().to_owned(), entry);
        }
    }
    let mut summary = ReloadSummary::default();
    let mut merged = Vec::with_capacity(rules.len() + api.len());
    for rule in rules {
        let entry = match old.remove(rule.name()) {
            Some(entry) if entry.rule.same_definition(&rule) => {
                summary.unchanged += 1;
                entry
            }
            Some(previous) => {
                summary.changed.push(rule.name().to_owned());
                carry_over(previous, &rule)
            }
            None => {
                summary.added.push(rule.name().to_owned());
                Entry::new(rule)
            }
        };
        merged.push(entry);
    }
    // A removed rule holds nothing any more.
    for removed in old.values() {
        removed.off.halt();
    }
    summary.removed = old.into_keys().collect();
    summary.removed.sort();
    merged.extend(api);
    summary.rules = merged.len();
    (merged, summary)
}

/// A file rule whose definition changed: it keeps its counters, and each
/// runtime switch the file did not change.
fn carry_over(previous: Entry, rule: &Rule) -> Entry {
    let rule = Arc::new(rule.with_counters(Arc::clone(&previous.rule.counters)));
    let keep_enabled = previous.rule.enabled == rule.enabled;
    let keep_probability = previous.rule.probability == rule.probability;
    let mut entry = Entry::new(rule);
    // Still the same rule: what it holds stays held while it stays on.
    entry.off = previous.off;
    if keep_enabled {
        entry.enabled = previous.enabled;
        entry.expiry = previous.expiry;
    }
    if keep_probability {
        entry.probability = previous.probability;
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"orders\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\nlistener = \"edge\"\nupstream = \"orders\"\n";

    fn rule(name: &str, extra: &str) -> String {
        format!(
            "[[rule]]\nname = \"{name}\"\n{extra}\n[rule.fault]\nkind = \"error\"\nstatus = 503\n"
        )
    }

    /// A control over the rule files of a temporary folder.
    struct Fixture {
        dir: tempfile::TempDir,
        control: Arc<Control>,
    }

    impl Fixture {
        fn new(rules: &str) -> Fixture {
            Fixture::with_file("notes.txt", "", rules)
        }

        /// A fixture whose folder also holds `file`, for `body_file`.
        fn with_file(file: &str, contents: &str, rules: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(file), contents).unwrap();
            std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
            let config = Config::parse(CONFIG, dir.path()).unwrap();
            let files = RuleFiles::Dir(dir.path().to_path_buf());
            let rules = files.load(&config.upstreams, &[]).unwrap();
            let wiring = Wiring {
                published: Arc::new(Published::new(Snapshot::empty(&config.upstreams))),
                upstreams: config.upstreams,
                metrics: Metrics::new(),
                tallies: Vec::new(),
                certificates: Vec::new(),
                halt_file: None,
            };
            let control = Control::new(wiring, files, rules, 1);
            Fixture { dir, control }
        }

        fn edit(&self, rules: &str) -> ReloadSummary {
            std::fs::write(self.dir.path().join("rules.toml"), rules).unwrap();
            self.control.reload(&Trigger::Signal).unwrap()
        }

        fn view(&self, name: &str) -> RuleView {
            self.control.rule(name).unwrap()
        }

        /// What the request path sees of a rule.
        fn published(&self, name: &str) -> LiveRule {
            let snapshot = self.snapshot();
            let rule = snapshot
                .rules
                .rules()
                .iter()
                .find(|r| r.rule.name() == name)
                .cloned();
            rule.unwrap()
        }

        fn snapshot(&self) -> Arc<Snapshot> {
            self.control.wiring.published.load_full()
        }
    }

    fn set(probability: f64) -> Change {
        Change {
            probability: Some(probability),
            ..Change::default()
        }
    }

    #[test]
    fn a_runtime_switch_survives_until_the_file_changes_that_switch() {
        let fixture = Fixture::new(&rule("flaky", "probability = 0.5"));
        fixture.control.change("flaky", set(0.1), "test").unwrap();

        let summary = fixture.edit(&rule("flaky", "probability = 0.5\ndescription = \"x\""));
        assert_eq!(summary.changed, ["flaky"]);
        assert_eq!(fixture.view("flaky").probability, 0.1);
        assert_eq!(fixture.published("flaky").probability, 0.1);

        // The file's newer word on the same switch wins.
        fixture.edit(&rule("flaky", "probability = 0.9"));
        assert_eq!(fixture.view("flaky").probability, 0.9);
        assert_eq!(fixture.published("flaky").probability, 0.9);
    }

    #[test]
    fn a_changed_rule_keeps_its_counts() {
        let fixture = Fixture::new(&rule("flaky", ""));
        fixture.published("flaky").rule.counters.record_injected();
        fixture.edit(&rule("flaky", "probability = 0.5"));
        assert_eq!(fixture.view("flaky").injected, 1);
    }

    #[test]
    fn an_edited_body_file_is_a_change() {
        let with_file = "[[rule]]\nname = \"teapot\"\n[rule.fault]\nkind = \"error\"\nstatus = 418\nbody_file = \"tea.txt\"\n";
        let fixture = Fixture::with_file("tea.txt", "green", with_file);
        assert!(fixture.edit(with_file).is_empty());
        std::fs::write(fixture.dir.path().join("tea.txt"), "black").unwrap();
        assert_eq!(fixture.edit(with_file).changed, ["teapot"]);
    }

    #[test]
    fn while_halted_a_reload_turns_nothing_on() {
        let fixture = Fixture::new(&rule("first", ""));
        let status = fixture.control.halt("test");
        assert!(status.halted);
        assert!(!fixture.view("first").enabled);
        assert!(fixture.snapshot().rules.candidates(0).is_none());

        let summary = fixture.edit(&format!("{}{}", rule("first", ""), rule("second", "")));
        assert_eq!(summary.added, ["second"]);
        assert!(!fixture.view("second").enabled);
        fixture.control.resume("test");
        assert!(!fixture.view("second").enabled, "resume turned a rule on");
        assert!(fixture.snapshot().rules.candidates(0).is_none());
    }

    #[test]
    fn halting_releases_what_older_snapshots_hold() {
        let fixture = Fixture::new(&rule("first", ""));
        let before = fixture.snapshot();
        assert!(!before.halt.is_halted());
        fixture.control.halt("test");
        assert!(before.halt.is_halted());
        assert!(!fixture.snapshot().halt.is_halted());
    }

    #[test]
    fn the_reload_merge_keeps_unchanged_entries_and_counts_of_changed_ones() {
        let fixture = Fixture::new(&format!("{}{}", rule("kept", ""), rule("edited", "")));
        fixture.published("edited").rule.counters.record_injected();
        let dir = fixture.dir.path();
        let source = |text: String| RuleText {
            path: dir.join("rules.toml"),
            text,
        };
        let book = book::load_sources(
            &[source(format!(
                "{}{}{}",
                rule("kept", ""),
                rule("edited", "probability = 0.5"),
                rule("new", "")
            ))],
            &["orders"],
        )
        .unwrap();
        let entries = std::mem::take(&mut fixture.control.lock().entries);
        let (merged, summary) = merge(entries, book.rules);
        assert_eq!(summary.unchanged, 1);
        assert_eq!(summary.changed, ["edited"]);
        assert_eq!(summary.added, ["new"]);
        assert!(summary.removed.is_empty());
        assert_eq!(summary.rules, 3);
        let names: Vec<&str> = merged.iter().map(Entry::name).collect();
        assert_eq!(names, ["kept", "edited", "new"]);
        assert_eq!(merged[1].rule.counters.injected(), 1);
        assert_eq!(merged[1].rule.probability, 0.5);

        let (merged, summary) = merge(merged, Vec::new());
        assert!(merged.is_empty());
        assert_eq!(summary.removed, ["edited", "kept", "new"]);
    }

    #[test]
    fn turning_a_rule_off_or_removing_it_lets_go_of_what_it_holds() {
        let fixture = Fixture::new(&format!("{}{}", rule("first", ""), rule("second", "")));
        let off = |name: &str| {
            let snapshot = fixture.snapshot();
            let candidates = snapshot.rules.candidates(0).unwrap();
            let i = candidates
                .iter()
                .position(|c| c.rule.name() == name)
                .unwrap();
            Arc::clone(snapshot.rule_off(0, i).unwrap())
        };
        let first = off("first");
        let second = off("second");
        let disable = Change {
            enabled: Some(false),
            ..Change::default()
        };
        fixture.control.change("first", disable, "test").unwrap();
        assert!(first.is_halted(), "disabling did not let go");
        assert!(!second.is_halted(), "another rule let go");
        let enable = Change {
            enabled: Some(true),
            ..Change::default()
        };
        fixture.control.change("first", enable, "test").unwrap();
        assert!(
            !off("first").is_halted(),
            "a re-enabled rule must hold again"
        );

        fixture.edit(&rule("first", ""));
        assert!(second.is_halted(), "a removed rule did not let go");
    }

    /// Lets every task that is due run, without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn ttl(ttl: Duration) -> Change {
        Change {
            enabled: Some(true),
            ttl: Some(Some(ttl)),
            ..Change::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ttl_turns_the_rule_off_when_it_runs_out_and_not_before() {
        let fixture = Fixture::new(&rule("flaky", "enabled = false"));
        fixture
            .control
            .change("flaky", ttl(Duration::from_secs(600)), "test")
            .unwrap();
        tokio::time::advance(Duration::from_secs(600) - Duration::from_millis(1)).await;
        settle().await;
        assert!(fixture.view("flaky").enabled, "expired early");
        assert!(fixture.published("flaky").enabled);
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert!(!fixture.view("flaky").enabled, "did not expire on time");
        assert!(!fixture.published("flaky").enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_ttl_supersedes_the_older_one() {
        let fixture = Fixture::new(&rule("flaky", "enabled = false"));
        let control = &fixture.control;
        control
            .change("flaky", ttl(Duration::from_secs(60)), "test")
            .unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        control
            .change("flaky", ttl(Duration::from_secs(60)), "test")
            .unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        settle().await;
        assert!(fixture.view("flaky").enabled, "the superseded timer fired");
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(!fixture.view("flaky").enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_steps_apply_at_their_offsets_divided_by_the_speed() {
        let rules = format!(
            "{}{}[[scenario]]\nname = \"outage\"\nduration = \"4h\"\n\
             [[scenario.step]]\nat = \"0s\"\nenable = [\"first\"]\n\
             [[scenario.step]]\nat = \"1h\"\nenable = [\"second\"]\n\
             [[scenario.step]]\nat = \"2h\"\ndisable = [\"first\"]\n",
            rule("first", "enabled = false"),
            rule("second", "enabled = false"),
        );
        let fixture = Fixture::new(&rules);
        let enabled = |name: &str| fixture.published(name).enabled;
        // Played ten times faster: a step at 1h is due after 6 minutes.
        fixture
            .control
            .start_scenario("outage", 10.0, "test")
            .unwrap();
        assert!(enabled("first"), "the step at 0s applies at once");
        assert!(!enabled("second"));

        tokio::time::advance(Duration::from_secs(360) - Duration::from_millis(1)).await;
        settle().await;
        assert!(!enabled("second"), "the 1h step applied early");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert!(enabled("second"), "the 1h step did not apply on time");

        tokio::time::advance(Duration::from_secs(360)).await;
        settle().await;
        assert!(!enabled("first"), "the 2h step did not apply on time");

        // The run ends at 4h / 10 = 24 minutes, and its changes are undone.
        tokio::time::advance(Duration::from_secs(720) - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(fixture.control.scenario("outage").unwrap().state, "running");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_ne!(fixture.control.scenario("outage").unwrap().state, "running");
        assert!(
            !enabled("first") && !enabled("second"),
            "the run's changes were not undone"
        );
    }
}
