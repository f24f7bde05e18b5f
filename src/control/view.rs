//! What the admin API shows of the runtime state, as JSON; `faultline ctl`
//! reads the same types back.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::scenarios::{rfc3339_millis, unix_ms, Run};
use super::Trigger;
use super::{Entry, State};
use crate::diagnostic::Diagnostic;
use crate::fault::FaultSpec;
use crate::rules::{MatchSpec, RuleSource};
use crate::scenario::spec::{GuardSpec, StepSpec};
use crate::scenario::Scenario;

/// One rule: its definition, its switches as they are now, and its counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleView {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `file` or `api`.
    pub source: String,
    /// The rule file, for a file rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub enabled: bool,
    pub probability: f64,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    pub fault: FaultSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// RFC 3339, when a TTL is counting down; `null` otherwise.
    pub expires_at: Option<String>,
    /// Faults injected over the rule's life.
    pub injected: u64,
    /// What is left of `times` since the rule was last enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times_left: Option<u64>,
    /// The running scenario that drives the rule now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
}

impl RuleView {
    pub(super) fn of(entry: &Entry) -> RuleView {
        let rule = entry.current();
        RuleView {
            name: rule.name.clone(),
            description: rule.description.clone(),
            source: match rule.source {
                RuleSource::File(_) => "file",
                RuleSource::Api => "api",
            }
            .to_owned(),
            file: match &rule.source {
                RuleSource::File(path) => Some(path.display().to_string()),
                RuleSource::Api => None,
            },
            enabled: entry.enabled(),
            probability: entry.probability(),
            matcher: rule.matcher.spec().clone(),
            fault: rule.fault_spec.clone(),
            times: rule.turns.times,
            every: rule.turns.every,
            sticky: rule.sticky.as_ref().map(ToString::to_string),
            expires_at: entry.expiry.as_ref().map(|e| rfc3339(e.at)),
            injected: rule.counters.injected(),
            times_left: rule
                .turns
                .times
                .map(|times| times.saturating_sub(rule.counters.fired())),
            scenario: entry.overlay.as_ref().map(|o| o.scenario.clone()),
        }
    }
}

/// `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_seconds: u64,
    pub halted: bool,
    /// The seed fault decisions are drawn from: replay a run with it.
    pub seed: u64,
    pub rules: RuleCounts,
    /// Names of the scenarios running now.
    pub scenarios_running: Vec<String>,
    #[serde(default)]
    pub last_reload: Option<LastReload>,
    /// The replica's wall clock when it answered, RFC 3339 UTC with
    /// milliseconds: fleets compare it across replicas.
    #[serde(default)]
    pub clock: String,
    #[serde(default)]
    pub clock_unix_ms: u64,
    /// One per running scenario.
    #[serde(default)]
    pub runs: Vec<RunStatus>,
}

/// A running scenario in `GET /api/status`: where it is and when its
/// current step began on this replica, to see drift across a fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub name: String,
    /// The current step's index; `null` before the first step.
    pub step: Option<usize>,
    /// When the current step began here (the run's start in the lead-in).
    /// For a run anchored at `start_at` and joined late, the step's
    /// scheduled instant, which every replica shares.
    pub step_started_at: String,
    pub step_started_unix_ms: u64,
    /// The run's anchor: its `start_at`, or when it was told to start.
    pub started_at: String,
    pub speed: f64,
    /// Present when the run was anchored with `start_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub total: usize,
    pub enabled: usize,
    pub file: usize,
    pub api: usize,
}

impl StatusView {
    pub(super) fn of(state: &State, seed: u64, uptime: Duration) -> StatusView {
        let api = state.entries.iter().filter(|e| e.is_api()).count();
        let now = SystemTime::now();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: uptime.as_secs(),
            halted: state.halted,
            seed,
            rules: RuleCounts {
                total: state.entries.len(),
                enabled: state.entries.iter().filter(|e| e.enabled()).count(),
                file: state.entries.len() - api,
                api,
            },
            scenarios_running: super::Control::running_names(state),
            last_reload: state.last_reload.clone(),
            clock: rfc3339_millis(now),
            clock_unix_ms: unix_ms(now),
            runs: state
                .runs
                .values()
                .filter(|r| r.is_running())
                .map(Run::status)
                .collect(),
        }
    }
}

/// The last reload, applied or rejected, and by what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReload {
    pub at: String,
    /// `applied` or `rejected`.
    pub outcome: String,
    /// `api`, `watcher`, `SIGHUP`, …
    pub trigger: String,
    /// `PATH:LINE:COL: error: MESSAGE`, one per problem.
    #[serde(default)]
    pub errors: Vec<String>,
}

impl LastReload {
    pub(super) fn applied(trigger: &Trigger) -> LastReload {
        LastReload {
            at: rfc3339(SystemTime::now()),
            outcome: "applied".to_owned(),
            trigger: trigger.to_string(),
            errors: Vec::new(),
        }
    }

    pub(super) fn rejected(trigger: &Trigger, problems: &[Diagnostic]) -> LastReload {
        LastReload {
            at: rfc3339(SystemTime::now()),
            outcome: "rejected".to_owned(),
            trigger: trigger.to_string(),
            errors: problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// Rules in force afterwards, file and API.
    pub rules: usize,
}

impl ReloadSummary {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `GET /api/scenarios/{name}`: the definition, and the latest run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioView {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub file: String,
    /// As written.
    pub duration: String,
    pub duration_seconds: f64,
    /// The file's `start_at`, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    /// The rules its steps drive.
    pub rules: Vec<String>,
    pub steps: Vec<StepSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSpec>,
    /// `idle` (never run), `scheduled` (armed for its `start_at`),
    /// `running`, `completed`, `stopped` or `aborted`.
    pub state: String,
    /// The latest run; `null` when idle.
    pub run: Option<RunView>,
}

impl ScenarioView {
    pub(super) fn of(scenario: &Scenario, run: Option<&Run>) -> ScenarioView {
        let run = run.map(Run::view);
        ScenarioView {
            name: scenario.name().to_owned(),
            description: scenario.spec.description.clone(),
            file: scenario.source.display().to_string(),
            duration: scenario.spec.duration.clone(),
            duration_seconds: scenario.duration.as_secs_f64(),
            start_at: scenario.spec.start_at.clone(),
            rules: scenario.touched.iter().cloned().collect(),
            steps: scenario.spec.step.clone(),
            guard: scenario.spec.guard.clone(),
            state: run
                .as_ref()
                .map_or_else(|| "idle".to_owned(), |r| r.state.clone()),
            run,
        }
    }
}

/// A run: when, how fast, where it is or how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub state: String,
    pub speed: f64,
    /// The run's anchor: its `start_at`, or when it was told to start.
    pub started_at: String,
    /// RFC 3339 with milliseconds, when the run was anchored at a wall-clock time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    pub ended_at: Option<String>,
    /// Why it ended early: who stopped it, or what the guard saw.
    pub reason: Option<String>,
    /// The last step applied.
    pub current_step: Option<StepRef>,
    pub next_step: Option<StepRef>,
    /// Wall-clock seconds until the next step.
    pub next_step_in_seconds: Option<f64>,
    /// Time on the scenario's own clock (wall time × speed).
    pub scenario_seconds: f64,
    pub wall_seconds: f64,
    /// How long the whole run takes at this speed.
    pub wall_duration_seconds: f64,
}

/// A step, named by its index, offset and description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRef {
    pub index: usize,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
