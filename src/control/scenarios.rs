//! Scenario runs: starting, stepping, guarding, ending and undoing.
//!
//! A run never edits a rule's own switches. Each rule it drives carries an
//! [`Overlay`] that wins over them while the run lasts, so undoing the run
//! is dropping its overlays: the rules are then exactly as they were before
//! it started. One task per run sleeps until each step's absolute due time
//! (`start + at / speed`), so no drift builds up across steps; the same task
//! samples the guard.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::view::{RunView, ScenarioView, StepRef};
use super::{Control, ControlError, State};
use crate::diagnostic::{FieldError, FieldPath};
use crate::rules::Rule;
use crate::scenario::report::{rfc3339, Mark, Place, Report, Segment};
use crate::scenario::{GuardWatch, Scenario, Step, Verdict};
use crate::traffic::{Counts, Tally};

/// The fastest a scenario may be played: four hours in under two seconds.
pub const MAX_SPEED: f64 = 10_000.0;
/// The slowest: a hundred times slower than real time. Below it the timing
/// arithmetic would overflow, and no rehearsal wants it.
pub(super) const MIN_SPEED: f64 = 0.01;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
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
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Stopped => "stopped",
            RunState::Aborted => "aborted",
        }
    }
}

/// A scenario's latest run.
pub(super) struct Run {
    pub(super) id: u64,
    pub(super) scenario: Arc<Scenario>,
    pub(super) speed: f64,
    pub(super) state: RunState,
    started: Instant,
    started_at: SystemTime,
    ended_at: Option<SystemTime>,
    reason: Option<String>,
    /// The last step applied.
    step: Option<usize>,
    start_mark: Mark,
    /// When each step applied, in step order.
    step_marks: Vec<Mark>,
    end_mark: Option<Mark>,
    stop: CancellationToken,
}

impl Run {
    pub(super) fn is_running(&self) -> bool {
        self.state == RunState::Running
    }
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
        self: &Arc<Self>,
        name: &str,
        speed: f64,
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
        if state.runs.get(name).is_some_and(Run::is_running) {
            return Err(ControlError::ScenarioRunning(name.to_owned()));
        }
        for other in state.runs.values().filter(|r| r.is_running()) {
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
        let guard = match &scenario.guard {
            None => None,
            Some(guard) => {
                let watched: Vec<Arc<Tally>> = self
                    .upstreams()
                    .iter()
                    .enumerate()
                    .filter(|(_, upstream)| guard.watch.applies_to_upstream((*upstream).into()))
                    .filter_map(|(i, _)| self.tally(i))
                    .collect();
                if watched.is_empty() {
                    return Err(ControlError::GuardWatchesNothing(name.to_owned()));
                }
                let mut watch = GuardWatch::new(guard);
                // The baseline is taken now, not when the run's task first
                // samples: requests sent as soon as the start call returns
                // are the run's, and a fast client may finish them first.
                watch.observe(Instant::now(), sum_counts(&watched));
                Some((watch, watched))
            }
        };
        state.next_run += 1;
        let id = state.next_run;
        let stop = CancellationToken::new();
        // Read from tokio's clock: steps are due on it, and a test that
        // pauses it plays a whole run in no real time.
        let started = tokio::time::Instant::now();
        let run = Run {
            id,
            scenario: Arc::clone(&scenario),
            speed,
            state: RunState::Running,
            started: started.into_std(),
            started_at: SystemTime::now(),
            ended_at: None,
            reason: None,
            step: None,
            start_mark: self.mark(&state),
            step_marks: Vec::new(),
            end_mark: None,
            stop: stop.clone(),
        };
        state.runs.insert(name.to_owned(), run);
        let metrics = self.metrics();
        metrics.set_scenario(name, true, None);
        info!(
            target: "faultline::audit",
            caller,
            scenario = name,
            speed,
            steps = scenario.steps.len(),
            "scenario started"
        );
        let due_now = scenario
            .steps
            .iter()
            .take_while(|step| step.at.is_zero())
            .count();
        for index in 0..due_now {
            if !self.apply_step_locked(&mut state, id, index) {
                break;
            }
        }
        self.publish(&mut state);
        let view = ScenarioView::of(&scenario, state.runs.get(name));
        drop(state);
        // Called from the admin API, inside the runtime.
        tokio::spawn(drive(
            Arc::downgrade(self),
            id,
            scenario,
            speed,
            started,
            due_now,
            stop,
            guard,
        ));
        Ok(view)
    }

    /// Stops a run by hand; its changes are undone at once.
    pub fn stop_scenario(&self, name: &str, caller: &str) -> Result<ScenarioView, ControlError> {
        let mut state = self.lock();
        let run = match state.runs.get(name) {
            Some(run) if run.is_running() => run.id,
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

    /// Ends every run (the kill switch); the caller publishes.
    pub(super) fn end_all_runs(&self, state: &mut State, reason: &str) -> Vec<String> {
        let running: Vec<(u64, String)> = state
            .runs
            .values()
            .filter(|r| r.is_running())
            .map(|r| (r.id, r.scenario.name().to_owned()))
            .collect();
        for (id, _) in &running {
            self.end_run(state, *id, RunState::Stopped, Some(reason.to_owned()));
        }
        running.into_iter().map(|(_, name)| name).collect()
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

    /// Applies a step the run's task found due. `false` once the run is over.
    fn apply_step(&self, run: u64, index: usize) -> bool {
        let mut state = self.lock();
        let applied = self.apply_step_locked(&mut state, run, index);
        self.publish(&mut state);
        applied
    }

    fn apply_step_locked(&self, state: &mut State, run: u64, index: usize) -> bool {
        let Some(record) = state.runs.values().find(|r| r.id == run && r.is_running()) else {
            return false;
        };
        let scenario = Arc::clone(&record.scenario);
        let Some(step) = scenario.steps.get(index) else {
            return false;
        };
        let mark = self.mark(state);
        if let Err(reason) = apply_changes(state, run, &scenario, step) {
            self.end_run(state, run, RunState::Aborted, Some(reason));
            return false;
        }
        if let Some(record) = state.runs.get_mut(scenario.name()) {
            record.step = Some(index);
            record.step_marks.push(mark);
        }
        self.metrics()
            .set_scenario(scenario.name(), true, Some(index));
        info!(
            target: "faultline::audit",
            caller = "scenario",
            scenario = scenario.name(),
            step = index,
            at = humantime::format_duration(step.at).to_string(),
            description = step.description.as_deref().unwrap_or(""),
            rules = step.changes.keys().cloned().collect::<Vec<_>>().join(","),
            "scenario step"
        );
        true
    }

    /// A run ends on its own: completed, or aborted by its guard.
    fn finish(&self, run: u64, outcome: RunState, reason: Option<String>) {
        let mut state = self.lock();
        if state.runs.values().any(|r| r.id == run && r.is_running()) {
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
        let lead_in = match steps.first() {
            Some(first) if !first.at.is_zero() => Some(Segment::between(
                Place {
                    step: None,
                    at: "0s".to_owned(),
                    description: Some("before the first step".to_owned()),
                },
                &run.start_mark,
                run.step_marks.first().or(run.end_mark.as_ref()),
                &now,
                upstreams,
            )),
            _ => None,
        };
        let segments = run
            .step_marks
            .iter()
            .enumerate()
            .map(|(i, mark)| {
                let spec = run.scenario.spec.step.get(i);
                Segment::between(
                    Place {
                        step: Some(i),
                        at: spec.map(|s| s.at.clone()).unwrap_or_default(),
                        description: steps.get(i).and_then(|s| s.description.clone()),
                    },
                    mark,
                    run.step_marks.get(i + 1).or(run.end_mark.as_ref()),
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

/// Lays one step's changes over the rules it names.
fn apply_changes(
    state: &mut State,
    run: u64,
    scenario: &Scenario,
    step: &Step,
) -> Result<(), String> {
    for (name, change) in &step.changes {
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

/// One run: sleep to each step's due time and apply it, sample the guard
/// meanwhile, and end the run when its duration is up.
#[allow(clippy::too_many_arguments)]
async fn drive(
    control: std::sync::Weak<Control>,
    run: u64,
    scenario: Arc<Scenario>,
    speed: f64,
    started: tokio::time::Instant,
    mut next: usize,
    stop: CancellationToken,
    mut guard: Option<(GuardWatch, Vec<Arc<Tally>>)>,
) {
    let wall = |at: Duration| started + at.div_f64(speed);
    let mut sampler = guard
        .as_ref()
        .map(|(watch, _)| tokio::time::interval(watch.sample_every()));
    loop {
        let due = match scenario.steps.get(next) {
            Some(step) => wall(step.at),
            None => wall(scenario.duration),
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(due) => {
                let Some(control) = control.upgrade() else { return };
                if next < scenario.steps.len() {
                    if !control.apply_step(run, next) {
                        return;
                    }
                    next += 1;
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
            None => self.started.elapsed(),
        };
        let duration = self.scenario.duration;
        let scenario_time = wall.mul_f64(self.speed).min(duration);
        let next_step = if self.is_running() {
            let index = self.step.map_or(0, |i| i + 1);
            steps.get(index).map(|step| {
                let due = step.at.div_f64(self.speed).saturating_sub(wall);
                (step_ref(index), due.as_secs_f64())
            })
        } else {
            None
        };
        RunView {
            state: self.state.as_str().to_owned(),
            speed: self.speed,
            started_at: rfc3339(self.started_at),
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
}
