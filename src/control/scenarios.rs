//! Scenario runs: starting, stepping, guarding, ending and undoing.
//!
//! A run never edits a rule's own switches. Each rule it drives carries an
//! [`Overlay`] that wins over them while the run lasts, so undoing the run
//! is dropping its overlays: the rules are then exactly as they were before
//! it started. One task per run sleeps until each step's absolute due time
//! (`start + at / speed`), so no drift builds up across steps; the same task
//! samples the guard.
//!
//! A run anchored at a wall-clock `start_at` (SPEC §11) is due on the wall
//! clock instead: every replica that knows the anchor computes the same due
//! times, whenever it was told. Tokio's timers are monotonic, so the task
//! sleeps what is left of the wall time and checks the clock again before
//! it acts. A replica that arrives after a step was due joins at the
//! current step: the steps before it apply as a whole, their net effect on
//! the rules, never replayed one after another. The file's `start_at` is a
//! standing order: [`Control::arm_from_files`] acts on each anchor once (at
//! start-up, on reloads that change it, on resume after a halt).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::view::{RunStatus, RunView, ScenarioView, StepRef};
use super::{Control, ControlError, State};
use crate::diagnostic::{FieldError, FieldPath};
use crate::rules::Rule;
use crate::scenario::report::{rfc3339, Mark, Place, Report, Segment};
use crate::scenario::{GuardWatch, RuleChange, Scenario, Verdict};
use crate::traffic::{Counts, Tally};

/// The fastest a scenario may be played: four hours in under two seconds.
pub const MAX_SPEED: f64 = 10_000.0;
/// The slowest: a hundred times slower than real time. Below it the timing
/// arithmetic would overflow, and no rehearsal wants it.
pub(super) const MIN_SPEED: f64 = 0.01;
/// The longest an anchored run's task sleeps before it reads the wall clock
/// again: a clock stepped forward meanwhile makes a step at most this late.
const WALL_RECHECK: Duration = Duration::from_secs(1);

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Anchored at a `start_at` still to come.
    Scheduled,
    Running,
    Completed,
    /// Stopped by hand, or by the kill switch.
    Stopped,
    /// The guard tripped, or the rule files changed a rule the run drives.
    Aborted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Scheduled => "scheduled",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Stopped => "stopped",
            RunState::Aborted => "aborted",
        }
    }
}

/// A guard's running watch and the counts of the upstreams it watches.
type GuardState = (GuardWatch, Vec<Arc<Tally>>);

/// A scenario's latest run.
pub(super) struct Run {
    pub(super) id: u64,
    pub(super) scenario: Arc<Scenario>,
    pub(super) speed: f64,
    pub(super) state: RunState,
    clock: RunClock,
    /// The run's anchor: its `start_at`, or when it was told to start.
    started_at: SystemTime,
    /// Set when the run was anchored at a wall-clock time.
    start_at: Option<SystemTime>,
    /// Armed by the rule file's `start_at`, not through the API.
    from_file: bool,
    ended_at: Option<SystemTime>,
    reason: Option<String>,
    /// The last step applied.
    step: Option<usize>,
    /// When the current step began (the run's start in the lead-in): when
    /// it applied, or its scheduled instant for a step joined late.
    step_started: SystemTime,
    start_mark: Mark,
    /// When each step applied (by step index), in step order; a replica
    /// that joined mid-run has none for the steps before it joined.
    step_marks: Vec<(usize, Mark)>,
    end_mark: Option<Mark>,
    /// Ended by the kill switch: an anchored run is rejoined on resume.
    halted: bool,
    stop: CancellationToken,
}

impl Run {
    pub(super) fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    /// Running, or armed for a `start_at` to come.
    pub(super) fn is_live(&self) -> bool {
        matches!(self.state, RunState::Running | RunState::Scheduled)
    }
}

/// What a run's steps are due on.
#[derive(Debug, Clone, Copy)]
enum RunClock {
    /// Tokio's clock from when the run was told to start: a test that
    /// pauses it plays a whole run in no real time.
    Monotonic(tokio::time::Instant),
    /// The wall clock from the run's `start_at`, the same on every replica.
    Wall(SystemTime),
}

impl RunClock {
    /// How long the run has been playing, in wall time; zero before its start.
    fn elapsed(self) -> Duration {
        match self {
            RunClock::Monotonic(started) => started.elapsed(),
            RunClock::Wall(anchor) => SystemTime::now().duration_since(anchor).unwrap_or_default(),
        }
    }

    /// Wall time left until `offset` (scenario time) is due at `speed`.
    fn until(self, offset: Duration, speed: f64) -> Duration {
        match self {
            RunClock::Monotonic(started) => (started + offset.div_f64(speed))
                .saturating_duration_since(tokio::time::Instant::now()),
            RunClock::Wall(anchor) => (anchor + offset.div_f64(speed))
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        }
    }

    /// Returns once `offset` is due at `speed`.
    async fn reached(self, offset: Duration, speed: f64) {
        match self {
            RunClock::Monotonic(started) => {
                tokio::time::sleep_until(started + offset.div_f64(speed)).await;
            }
            RunClock::Wall(anchor) => {
                let due = anchor + offset.div_f64(speed);
                // The timer is monotonic and the target is on the wall clock:
                // sleep what is left, then look at the clock again.
                while let Ok(left) = due.duration_since(SystemTime::now()) {
                    if left.is_zero() {
                        break;
                    }
                    tokio::time::sleep(left.min(WALL_RECHECK)).await;
                }
            }
        }
    }
}

/// A rule file's `start_at` this replica has acted on, by scenario name.
#[derive(Debug, Clone, Copy)]
pub(super) struct Anchor {
    start_at: SystemTime,
    /// The run was stopped by hand or aborted: the replica stays out of it
    /// until the file's `start_at` changes. A halt does not set it, so a
    /// resume rejoins.
    out: bool,
}

/// What a running scenario has done to one rule.
#[derive(Debug, Clone)]
pub(super) struct Overlay {
    pub(super) run: u64,
    pub(super) scenario: String,
    pub(super) enabled: Option<bool>,
    pub(super) probability: Option<f64>,
    /// The rule with the run's fault changes so far, when there are some.
    pub(super) patched: Option<Arc<Rule>>,
    /// The rule's `times` and `every` counts before the run, put back at its end.
    turns: (u64, u64),
}

impl Control {
    /// Every scenario the rule files define, with its state.
    ///
    /// A running scenario is shown as it runs, even if a reload has since
    /// changed or removed its definition.
    pub fn scenarios(&self) -> Vec<ScenarioView> {
        let state = self.lock();
        let mut views: Vec<ScenarioView> = state
            .scenarios
            .iter()
            .map(|scenario| view_of(&state, scenario))
            .collect();
        for run in state.runs.values().filter(|r| r.is_running()) {
            if !views.iter().any(|v| v.name == run.scenario.name()) {
                views.push(ScenarioView::of(&run.scenario, Some(run)));
            }
        }
        views
    }

    /// One scenario and its state; a scenario removed from the files is
    /// still shown through its last run.
    pub fn scenario(&self, name: &str) -> Result<ScenarioView, ControlError> {
        let state = self.lock();
        let run = state.runs.get(name);
        match state.scenarios.iter().find(|s| s.name() == name) {
            Some(scenario) => Ok(view_of(&state, scenario)),
            None => run
                .map(|run| ScenarioView::of(&run.scenario, Some(run)))
                .ok_or_else(|| ControlError::ScenarioNotFound(name.to_owned())),
        }
    }

    /// The report of a scenario's latest run, so far if it still runs.
    pub fn report(&self, name: &str) -> Result<Report, ControlError> {
        let state = self.lock();
        let Some(run) = state.runs.get(name) else {
            if state.scenarios.iter().any(|s| s.name() == name) {
                return Err(ControlError::NoReport(name.to_owned()));
            }
            return Err(ControlError::ScenarioNotFound(name.to_owned()));
        };
        Ok(self.build_report(&state, run))
    }

    /// Starts a run at `speed` times real time. Steps due at `0s` apply
    /// before this returns. Must be called inside a Tokio runtime.
    pub fn start_scenario(
        &self,
        name: &str,
        speed: f64,
        caller: &str,
    ) -> Result<ScenarioView, ControlError> {
        self.start_scenario_at(name, speed, None, caller)
    }

    /// Starts a run, now or anchored at the wall-clock `start_at`: a
    /// `start_at` to come arms the run; one passed joins it at the current
    /// step; one whose run is over is refused. Must be called inside a
    /// Tokio runtime.
    pub fn start_scenario_at(
        &self,
        name: &str,
        speed: f64,
        start_at: Option<SystemTime>,
        caller: &str,
    ) -> Result<ScenarioView, ControlError> {
        if !(MIN_SPEED..=MAX_SPEED).contains(&speed) {
            return Err(ControlError::Invalid(vec![FieldError::new(
                FieldPath::root().key("speed"),
                format!("speed {speed} must be from {MIN_SPEED} to {MAX_SPEED}"),
            )]));
        }
        let mut state = self.lock();
        if state.halted {
            return Err(ControlError::Halted);
        }
        let scenario = state
            .scenarios
            .iter()
            .find(|s| s.name() == name)
            .cloned()
            .ok_or_else(|| ControlError::ScenarioNotFound(name.to_owned()))?;
        self.launch(&mut state, &scenario, speed, start_at, false, caller)?;
        self.publish(&mut state);
        Ok(ScenarioView::of(&scenario, state.runs.get(name)))
    }

    /// Checks that `scenario` may run and starts or arms it; the caller
    /// publishes.
    fn launch(
        &self,
        state: &mut State,
        scenario: &Arc<Scenario>,
        speed: f64,
        start_at: Option<SystemTime>,
        from_file: bool,
        caller: &str,
    ) -> Result<(), ControlError> {
        let name = scenario.name();
        match state.runs.get(name) {
            Some(run) if run.is_running() => {
                return Err(ControlError::ScenarioRunning(name.to_owned()))
            }
            Some(run) if run.state == RunState::Scheduled => {
                return Err(ControlError::ScenarioScheduled {
                    scenario: name.to_owned(),
                    at: rfc3339(run.started_at),
                })
            }
            _ => {}
        }
        for other in state.runs.values().filter(|r| r.is_live()) {
            if let Some(rule) = other
                .scenario
                .touched
                .intersection(&scenario.touched)
                .next()
            {
                return Err(ControlError::ScenarioConflict {
                    scenario: name.to_owned(),
                    other: other.scenario.name().to_owned(),
                    rule: rule.clone(),
                });
            }
        }
        let now = SystemTime::now();
        if let Some(start_at) = start_at {
            let end = scenario.end_of_run(start_at, speed);
            if end <= now {
                return Err(ControlError::ScenarioOver {
                    scenario: name.to_owned(),
                    ended_at: rfc3339(end),
                });
            }
        }
        // Checked now, so that an armed run cannot fail later for it.
        let guard = self.guard_watch(scenario)?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ControlError::NoRuntime(name.to_owned()));
        };
        state.next_run += 1;
        let id = state.next_run;
        let stop = CancellationToken::new();
        let clock = match start_at {
            Some(anchor) => RunClock::Wall(anchor),
            // Read from tokio's clock: steps are due on it.
            None => RunClock::Monotonic(tokio::time::Instant::now()),
        };
        let anchor = start_at.unwrap_or(now);
        let scheduled = anchor > now;
        let run = Run {
            id,
            scenario: Arc::clone(scenario),
            speed,
            state: if scheduled {
                RunState::Scheduled
            } else {
                RunState::Running
            },
            clock,
            started_at: anchor,
            start_at,
            from_file,
            ended_at: None,
            reason: None,
            step: None,
            step_started: anchor,
            start_mark: self.mark(state),
            step_marks: Vec::new(),
            end_mark: None,
            halted: false,
            stop: stop.clone(),
        };
        state.runs.insert(name.to_owned(), run);
        let start_at_text = start_at.map(rfc3339_millis).unwrap_or_default();
        info!(
            target: "faultline::audit",
            caller,
            scenario = name,
            speed,
            steps = scenario.steps.len(),
            start_at = start_at_text,
            "{}",
            if scheduled { "scenario armed for start_at" } else { "scenario started" }
        );
        let mut begun = None;
        if !scheduled {
            // A start_at already passed: the replica joins the run late.
            begun = self.begin_locked(state, id, start_at.is_some());
        }
        runtime.spawn(drive(
            self.me.clone(),
            id,
            Arc::clone(scenario),
            speed,
            clock,
            begun,
            stop,
            guard,
        ));
        Ok(())
    }

    /// The guard's watch over its upstreams, its baseline taken now; `None`
    /// without a guard.
    fn guard_watch(&self, scenario: &Scenario) -> Result<Option<GuardState>, ControlError> {
        let Some(guard) = &scenario.guard else {
            return Ok(None);
        };
        let watched: Vec<Arc<Tally>> = self
            .upstreams()
            .iter()
            .enumerate()
            .filter(|(_, upstream)| guard.watch.applies_to_upstream((*upstream).into()))
            .filter_map(|(i, _)| self.tally(i))
            .collect();
        if watched.is_empty() {
            return Err(ControlError::GuardWatchesNothing(
                scenario.name().to_owned(),
            ));
        }
        let mut watch = GuardWatch::new(guard);
        // The baseline is taken now, not when the run's task first
        // samples: requests sent as soon as the start call returns
        // are the run's, and a fast client may finish them first.
        watch.observe(Instant::now(), sum_counts(&watched));
        Ok(Some((watch, watched)))
    }

    /// The run begins: the steps already due apply. `late` when the replica
    /// joins a run whose start passed: those steps then apply as a whole.
    /// Returns the next step to play, or `None` when the run is over.
    fn begin_locked(&self, state: &mut State, run: u64, late: bool) -> Option<usize> {
        let mark = self.mark(state);
        let record = state
            .runs
            .values_mut()
            .find(|r| r.id == run && r.is_live())?;
        record.state = RunState::Running;
        record.start_mark = mark;
        let scenario = Arc::clone(&record.scenario);
        let (clock, speed) = (record.clock, record.speed);
        self.metrics().set_scenario(scenario.name(), true, None);
        let due = scenario
            .steps
            .iter()
            .take_while(|step| clock.until(step.at, speed).is_zero())
            .count();
        if due == 0 {
            return Some(0);
        }
        if late {
            self.apply_steps_locked(state, run, 0..=due - 1, true)
                .then_some(due)
        } else {
            for index in 0..due {
                if !self.apply_steps_locked(state, run, index..=index, false) {
                    return None;
                }
            }
            Some(due)
        }
    }

    /// A scheduled run's `start_at` came.
    fn begin(&self, run: u64) -> Option<usize> {
        let mut state = self.lock();
        let next = self.begin_locked(&mut state, run, false);
        self.publish(&mut state);
        next
    }

    /// Acts on the rule files' `start_at`s: each anchor this replica has
    /// not acted on yet is armed, joined or, when its run is over, left
    /// (with a warning). A run the file anchored at another time, or armed
    /// from an older definition, is stopped and armed again. The caller
    /// publishes. Nothing is armed while halted: resuming arms it.
    pub(super) fn arm_locked(&self, state: &mut State, trigger: &str) {
        let scenarios = state.scenarios.clone();
        // An anchor dropped from the files: its armed run is called off.
        let dropped: Vec<u64> = state
            .runs
            .values()
            .filter(|r| r.state == RunState::Scheduled && r.from_file)
            .filter(|r| {
                !scenarios
                    .iter()
                    .any(|s| s.name() == r.scenario.name() && s.start_at.is_some())
            })
            .map(|r| r.id)
            .collect();
        for id in dropped {
            let reason = format!("start_at was removed from the rule files ({trigger})");
            self.end_run(state, id, RunState::Stopped, Some(reason));
        }
        state.anchors.retain(|name, _| {
            scenarios
                .iter()
                .any(|s| s.name() == name && s.start_at.is_some())
        });
        let now = SystemTime::now();
        for scenario in &scenarios {
            let Some(start_at) = scenario.start_at else {
                continue;
            };
            let name = scenario.name();
            let known = state.anchors.get(name).copied();
            let run = state.runs.get(name);
            let live = run.filter(|r| r.is_live()).map(|r| r.id);
            let same_anchor = known.is_some_and(|a| a.start_at == start_at);
            // An armed run of an older definition is armed again with this one.
            let stale = run.is_some_and(|r| {
                r.state == RunState::Scheduled && r.from_file && r.scenario.spec != scenario.spec
            });
            // Left by a halt (or never started while halted): back in on resume.
            let rejoin = same_anchor && known.is_some_and(|a| !a.out) && live.is_none();
            if same_anchor && !stale && !rejoin {
                continue;
            }
            if !same_anchor {
                state.anchors.insert(
                    name.to_owned(),
                    Anchor {
                        start_at,
                        out: false,
                    },
                );
            }
            if state.halted {
                continue;
            }
            if let Some(live) = live {
                let reason = format!(
                    "re-armed: the rule files anchor it at {} ({trigger})",
                    rfc3339_millis(start_at)
                );
                self.end_run(state, live, RunState::Stopped, Some(reason));
            }
            if scenario.end_of_run(start_at, 1.0) <= now {
                if !same_anchor {
                    if let Some(warning) = scenario.start_at_warning(now) {
                        warn!("{warning}");
                    }
                }
                continue;
            }
            if let Err(e) = self.launch(state, scenario, 1.0, Some(start_at), true, trigger) {
                warn!(
                    scenario = name,
                    start_at = rfc3339_millis(start_at),
                    "the rule files' start_at could not arm the run: {e}"
                );
            }
        }
    }

    /// Arms the runs the rule files anchor with `start_at` (at start-up;
    /// reloads and resume do it themselves). Must be called inside a Tokio
    /// runtime.
    pub fn arm_from_files(&self) {
        let mut state = self.lock();
        self.arm_locked(&mut state, "start-up");
        self.publish(&mut state);
    }

    /// Stops a run by hand; its changes are undone at once. An armed run is
    /// called off.
    pub fn stop_scenario(&self, name: &str, caller: &str) -> Result<ScenarioView, ControlError> {
        let mut state = self.lock();
        let run = match state.runs.get(name) {
            Some(run) if run.is_live() => run.id,
            Some(_) => return Err(ControlError::ScenarioNotRunning(name.to_owned())),
            None if state.scenarios.iter().any(|s| s.name() == name) => {
                return Err(ControlError::ScenarioNotRunning(name.to_owned()))
            }
            None => return Err(ControlError::ScenarioNotFound(name.to_owned())),
        };
        self.end_run(
            &mut state,
            run,
            RunState::Stopped,
            Some(format!("stopped by {caller}")),
        );
        // Stopped by hand: the file's anchor does not bring it back.
        if let Some(anchor) = state.anchors.get_mut(name) {
            anchor.out = true;
        }
        self.publish(&mut state);
        let run = state.runs.get(name);
        let scenario = run.map(|r| Arc::clone(&r.scenario));
        match scenario {
            Some(scenario) => Ok(ScenarioView::of(&scenario, run)),
            None => Err(ControlError::ScenarioNotFound(name.to_owned())),
        }
    }

    /// Names of the scenarios running now.
    pub(super) fn running_names(state: &State) -> Vec<String> {
        state
            .runs
            .values()
            .filter(|r| r.is_running())
            .map(|r| r.scenario.name().to_owned())
            .collect()
    }

    /// The running scenario that drives `rule`, if any.
    pub(super) fn driver_of<'a>(state: &'a State, rule: &str) -> Option<&'a str> {
        state
            .runs
            .values()
            .find(|r| r.is_running() && r.scenario.touched.contains(rule))
            .map(|r| r.scenario.name())
    }

    /// Ends every run, armed ones too (the kill switch); the caller
    /// publishes. The files' anchors stay, so resuming rejoins their runs.
    pub(super) fn end_all_runs(&self, state: &mut State, reason: &str) -> Vec<String> {
        let running: Vec<(u64, String)> = state
            .runs
            .values()
            .filter(|r| r.is_live())
            .map(|r| (r.id, r.scenario.name().to_owned()))
            .collect();
        for (id, _) in &running {
            self.end_run(state, *id, RunState::Stopped, Some(reason.to_owned()));
            if let Some(run) = state.runs.values_mut().find(|r| r.id == *id) {
                run.halted = true;
            }
        }
        running.into_iter().map(|(_, name)| name).collect()
    }

    /// On resume: the runs anchored through the API that the halt ended are
    /// joined again at their current step (or armed again), as the files'
    /// anchors are by [`Control::arm_locked`]; a run that is over stays
    /// ended. The caller publishes.
    pub(super) fn rejoin_after_halt(&self, state: &mut State, caller: &str) {
        let halted: Vec<(Arc<Scenario>, f64, SystemTime)> = state
            .runs
            .values()
            .filter(|r| r.halted && !r.from_file)
            .filter_map(|r| Some((Arc::clone(&r.scenario), r.speed, r.start_at?)))
            .collect();
        let now = SystemTime::now();
        for (scenario, speed, start_at) in halted {
            if let Some(run) = state.runs.get_mut(scenario.name()) {
                run.halted = false;
            }
            if scenario.end_of_run(start_at, speed) <= now {
                continue;
            }
            // The files' current definition, when they still have it.
            let Some(current) = state
                .scenarios
                .iter()
                .find(|s| s.name() == scenario.name())
                .cloned()
            else {
                continue;
            };
            if let Err(e) = self.launch(state, &current, speed, Some(start_at), false, caller) {
                warn!(
                    scenario = current.name(),
                    "the run anchored at {} could not rejoin on resume: {e}",
                    rfc3339_millis(start_at)
                );
            }
        }
    }

    /// Ends the runs that drive any of `rules` (changed by a reload); the
    /// caller publishes.
    pub(super) fn abort_runs_touching(&self, state: &mut State, rules: &[String]) {
        let hit: Vec<(u64, String)> = state
            .runs
            .values()
            .filter(|r| r.is_running())
            .filter_map(|r| {
                let rule = rules
                    .iter()
                    .find(|rule| r.scenario.touched.contains(*rule))?;
                Some((r.id, rule.clone()))
            })
            .collect();
        for (id, rule) in hit {
            self.leave_anchor(state, id);
            self.end_run(
                state,
                id,
                RunState::Aborted,
                Some(format!(
                    "the rule files changed rule {rule:?}, which this scenario drives"
                )),
            );
        }
    }

    /// Applies the steps the run's task found due: one, or several as a
    /// whole when it was late for some. `false` once the run is over.
    fn apply_steps(&self, run: u64, steps: RangeInclusive<usize>) -> bool {
        let mut state = self.lock();
        let late = steps.start() != steps.end();
        let applied = self.apply_steps_locked(&mut state, run, steps, late);
        self.publish(&mut state);
        applied
    }

    /// Lays the net effect of `steps` over the rules; the last becomes the
    /// current step. `late`: the replica joins the last step after it was
    /// due, so the step is recorded as begun at its scheduled instant, the
    /// one every replica on time shares.
    fn apply_steps_locked(
        &self,
        state: &mut State,
        run: u64,
        steps: RangeInclusive<usize>,
        late: bool,
    ) -> bool {
        let Some(record) = state.runs.values().find(|r| r.id == run && r.is_running()) else {
            return false;
        };
        let scenario = Arc::clone(&record.scenario);
        let (clock, speed) = (record.clock, record.speed);
        let (first, index) = (*steps.start(), *steps.end());
        let Some(step) = scenario.steps.get(index) else {
            return false;
        };
        let changes = net_changes(&scenario, steps);
        let mark = self.mark(state);
        if let Err(reason) = apply_changes(state, run, &scenario, &changes) {
            self.end_run(state, run, RunState::Aborted, Some(reason));
            return false;
        }
        let started = match clock {
            RunClock::Wall(anchor) if late => anchor + step.at.div_f64(speed),
            _ => mark.at,
        };
        if let Some(record) = state.runs.get_mut(scenario.name()) {
            record.step = Some(index);
            record.step_started = started;
            record.step_marks.push((index, mark));
        }
        self.metrics()
            .set_scenario(scenario.name(), true, Some(index));
        let rules = changes.keys().cloned().collect::<Vec<_>>().join(",");
        let at = humantime::format_duration(step.at).to_string();
        let description = step.description.as_deref().unwrap_or("");
        if first == index {
            info!(
                target: "faultline::audit",
                caller = "scenario",
                scenario = scenario.name(),
                step = index,
                at,
                description,
                rules,
                "scenario step"
            );
        } else {
            info!(
                target: "faultline::audit",
                caller = "scenario",
                scenario = scenario.name(),
                step = index,
                from_step = first,
                at,
                description,
                rules,
                "scenario joined at step {index}: steps {first} to {index} applied as a whole"
            );
        }
        true
    }

    /// The file's anchor of run `run`, if it has one, no longer brings it
    /// back: it was stopped by hand or aborted.
    fn leave_anchor(&self, state: &mut State, run: u64) {
        let Some(record) = state.runs.values().find(|r| r.id == run && r.from_file) else {
            return;
        };
        let name = record.scenario.name().to_owned();
        if let Some(anchor) = state.anchors.get_mut(&name) {
            anchor.out = true;
        }
    }

    /// A run ends on its own: completed, or aborted by its guard.
    fn finish(&self, run: u64, outcome: RunState, reason: Option<String>) {
        let mut state = self.lock();
        if state.runs.values().any(|r| r.id == run && r.is_running()) {
            if outcome == RunState::Aborted {
                self.leave_anchor(&mut state, run);
            }
            self.end_run(&mut state, run, outcome, reason);
            self.publish(&mut state);
        }
    }

    /// Records the end of a run and undoes what it did; the caller publishes.
    fn end_run(&self, state: &mut State, run: u64, outcome: RunState, reason: Option<String>) {
        let mark = self.mark(state);
        let Some(record) = state.runs.values_mut().find(|r| r.id == run) else {
            return;
        };
        record.state = outcome;
        record.ended_at = Some(SystemTime::now());
        record.end_mark = Some(mark);
        record.reason.clone_from(&reason);
        record.stop.cancel();
        let name = record.scenario.name().to_owned();
        for entry in &mut state.entries {
            if let Some(overlay) = entry.overlay.take_if(|o| o.run == run) {
                entry.rule.counters.set_turns(overlay.turns);
            }
        }
        self.metrics().set_scenario(&name, false, None);
        let reason = reason.unwrap_or_default();
        match outcome {
            RunState::Aborted => warn!(
                target: "faultline::audit",
                scenario = name,
                reason,
                "scenario aborted; its changes are undone"
            ),
            _ => info!(
                target: "faultline::audit",
                scenario = name,
                outcome = outcome.as_str(),
                reason,
                "scenario ended; its changes are undone"
            ),
        }
    }

    /// The proxy's counts and every rule's injected faults, now.
    fn mark(&self, state: &State) -> Mark {
        Mark {
            at: SystemTime::now(),
            upstreams: (0..self.upstreams().len())
                .filter_map(|i| self.tally(i).map(|t| t.snapshot()))
                .collect(),
            faults: state
                .entries
                .iter()
                .map(|e| (e.name().to_owned(), e.rule.counters.injected()))
                .collect(),
        }
    }

    fn build_report(&self, state: &State, run: &Run) -> Report {
        let upstreams = self.upstreams();
        let upstreams = upstreams.as_slice();
        let now = self.mark(state);
        let steps = &run.scenario.steps;
        // A replica that joined after the first step has no lead-in: its
        // segments start where it joined.
        let saw_lead_in = run.state != RunState::Scheduled
            && run.step_marks.first().is_none_or(|(index, _)| *index == 0);
        let lead_in = match steps.first() {
            Some(first) if !first.at.is_zero() && saw_lead_in => Some(Segment::between(
                Place {
                    step: None,
                    at: "0s".to_owned(),
                    description: Some("before the first step".to_owned()),
                },
                &run.start_mark,
                run.step_marks
                    .first()
                    .map(|(_, mark)| mark)
                    .or(run.end_mark.as_ref()),
                &now,
                upstreams,
            )),
            _ => None,
        };
        let segments = run
            .step_marks
            .iter()
            .enumerate()
            .map(|(k, (i, mark))| {
                let i = *i;
                let spec = run.scenario.spec.step.get(i);
                Segment::between(
                    Place {
                        step: Some(i),
                        at: spec.map(|s| s.at.clone()).unwrap_or_default(),
                        description: steps.get(i).and_then(|s| s.description.clone()),
                    },
                    mark,
                    run.step_marks
                        .get(k + 1)
                        .map(|(_, mark)| mark)
                        .or(run.end_mark.as_ref()),
                    &now,
                    upstreams,
                )
            })
            .collect();
        Report {
            scenario: run.scenario.name().to_owned(),
            state: run.state.as_str().to_owned(),
            speed: run.speed,
            started_at: rfc3339(run.started_at),
            ended_at: run.ended_at.map(rfc3339),
            reason: run.reason.clone(),
            lead_in,
            steps: segments,
        }
    }
}

/// A scenario and its latest run; while the run lasts, the definition it
/// plays rather than the files' newer one.
fn view_of(state: &State, scenario: &Arc<Scenario>) -> ScenarioView {
    match state.runs.get(scenario.name()) {
        Some(run) if run.is_running() => ScenarioView::of(&run.scenario, Some(run)),
        run => ScenarioView::of(scenario, run),
    }
}

/// The changes of consecutive steps taken together: for each rule and
/// switch, the last step's word. A fault patch already carries the
/// patches of the steps before it.
fn net_changes(scenario: &Scenario, steps: RangeInclusive<usize>) -> BTreeMap<String, RuleChange> {
    let mut net: BTreeMap<String, RuleChange> = BTreeMap::new();
    for step in scenario.steps.get(steps).unwrap_or_default() {
        for (name, change) in &step.changes {
            let into = net.entry(name.clone()).or_default();
            into.enabled = change.enabled.or(into.enabled);
            into.probability = change.probability.or(into.probability);
            if change.fault.is_some() {
                into.fault.clone_from(&change.fault);
            }
        }
    }
    net
}

/// Lays changes (one step's, or several steps' net) over the rules they name.
fn apply_changes(
    state: &mut State,
    run: u64,
    scenario: &Scenario,
    changes: &BTreeMap<String, RuleChange>,
) -> Result<(), String> {
    for (name, change) in changes {
        let Some(entry) = state.entries.iter_mut().find(|e| e.name() == name) else {
            return Err(format!("rule {name:?} no longer exists"));
        };
        let was_enabled = entry.enabled();
        let overlay = entry.overlay.get_or_insert_with(|| Overlay {
            run,
            scenario: scenario.name().to_owned(),
            enabled: None,
            probability: None,
            patched: None,
            turns: entry.rule.counters.turns(),
        });
        if let Some(enabled) = change.enabled {
            overlay.enabled = Some(enabled);
        }
        if let Some(probability) = change.probability {
            overlay.probability = Some(probability);
        }
        if let Some(patched) = &change.fault {
            // Validated with the scenario: the step only lays it over the rule.
            let rule = entry
                .rule
                .with_fault(patched.spec.clone(), patched.fault.clone());
            overlay.patched = Some(Arc::new(rule));
        }
        if entry.enabled() && !was_enabled {
            entry.rule.counters.restart();
        }
    }
    Ok(())
}

/// One run: wait for its start when it is armed for one, sleep to each
/// step's due time and apply it, sample the guard meanwhile, and end the
/// run when its duration is up. `next`: the next step when the run has
/// begun, `None` while it waits for its start.
#[allow(clippy::too_many_arguments)]
async fn drive(
    control: std::sync::Weak<Control>,
    run: u64,
    scenario: Arc<Scenario>,
    speed: f64,
    clock: RunClock,
    next: Option<usize>,
    stop: CancellationToken,
    mut guard: Option<GuardState>,
) {
    let mut next = match next {
        Some(next) => next,
        None => {
            tokio::select! {
                () = stop.cancelled() => return,
                () = clock.reached(Duration::ZERO, speed) => {}
            }
            let Some(control) = control.upgrade() else {
                return;
            };
            let Some(next) = control.begin(run) else {
                return;
            };
            // The guard's baseline is the run's start, not when it was armed.
            guard = control.guard_watch(&scenario).ok().flatten();
            next
        }
    };
    let mut sampler = guard
        .as_ref()
        .map(|(watch, _)| tokio::time::interval(watch.sample_every()));
    loop {
        let offset = match scenario.steps.get(next) {
            Some(step) => step.at,
            None => scenario.duration,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = clock.reached(offset, speed) => {
                let Some(control) = control.upgrade() else { return };
                if next < scenario.steps.len() {
                    // Late for more than one (a suspended process, a clock
                    // stepped forward): the due ones apply as a whole.
                    let last = scenario.steps[next..]
                        .iter()
                        .take_while(|step| clock.until(step.at, speed).is_zero())
                        .count()
                        .max(1)
                        + next
                        - 1;
                    if !control.apply_steps(run, next..=last) {
                        return;
                    }
                    next = last + 1;
                } else {
                    control.finish(run, RunState::Completed, None);
                    return;
                }
            }
            _ = tick(&mut sampler) => {
                let Some((watch, tallies)) = guard.as_mut() else { continue };
                if let Verdict::Tripped { errors, requests, ratio } =
                    watch.observe(Instant::now(), sum_counts(tallies))
                {
                    let reason = format!(
                        "guard tripped: error ratio {ratio:.3} ({errors} of {requests} requests) over the last {} on the watched upstreams, above the {} allowed",
                        humantime::format_duration(watch.window()),
                        watch.max_error_ratio()
                    );
                    if let Some(control) = control.upgrade() {
                        control.finish(run, RunState::Aborted, Some(reason));
                    }
                    return;
                }
            }
        }
    }
}

/// The watched upstreams' counts, together.
fn sum_counts(tallies: &[Arc<Tally>]) -> Counts {
    let mut counts = Counts::default();
    for tally in tallies {
        counts.add(&tally.counts());
    }
    counts
}

/// The next guard sample, or never without a guard.
async fn tick(sampler: &mut Option<tokio::time::Interval>) {
    match sampler {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What the API shows of a run.
impl Run {
    pub(super) fn view(&self) -> RunView {
        let steps = &self.scenario.steps;
        let specs = &self.scenario.spec.step;
        let step_ref = |index: usize| StepRef {
            index,
            at: specs.get(index).map(|s| s.at.clone()).unwrap_or_default(),
            description: steps.get(index).and_then(|s| s.description.clone()),
        };
        let wall = match self.ended_at {
            Some(end) => end.duration_since(self.started_at).unwrap_or_default(),
            None => self.clock.elapsed(),
        };
        let duration = self.scenario.duration;
        let scenario_time = wall.mul_f64(self.speed).min(duration);
        let next_step = if self.is_live() {
            let index = self.step.map_or(0, |i| i + 1);
            steps.get(index).map(|step| {
                let due = self.clock.until(step.at, self.speed);
                (step_ref(index), due.as_secs_f64())
            })
        } else {
            None
        };
        RunView {
            state: self.state.as_str().to_owned(),
            speed: self.speed,
            started_at: rfc3339(self.started_at),
            start_at: self.start_at.map(rfc3339_millis),
            ended_at: self.ended_at.map(rfc3339),
            reason: self.reason.clone(),
            current_step: self.step.map(step_ref),
            next_step_in_seconds: next_step.as_ref().map(|(_, due)| *due),
            next_step: next_step.map(|(step, _)| step),
            scenario_seconds: scenario_time.as_secs_f64(),
            wall_seconds: wall.as_secs_f64(),
            wall_duration_seconds: duration.div_f64(self.speed).as_secs_f64(),
        }
    }

    /// What `GET /api/status` shows of a running run.
    pub(super) fn status(&self) -> RunStatus {
        RunStatus {
            name: self.scenario.name().to_owned(),
            step: self.step,
            step_started_at: rfc3339_millis(self.step_started),
            step_started_unix_ms: unix_ms(self.step_started),
            started_at: rfc3339_millis(self.started_at),
            speed: self.speed,
            start_at: self.start_at.map(rfc3339_millis),
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as fleets compare clocks.
pub(super) fn rfc3339_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Milliseconds since the Unix epoch; 0 before it.
pub(super) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
