//! What a fleet's answers look like together: one line per replica (named
//! by its URL, or the reason it gave no answer), then whether the replicas
//! that answered agree, on what they do not, and for `status` the drift
//! between their step starts; `scenario report` merged exactly. `--json`
//! gives the per-replica results instead, with the drift or the merged
//! report beside them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

use super::fleet::{replica_json, Reply};
use super::scenario::{clock, countdown, report_text, start_of, LAST_RFC3339_SECOND};
use super::{fault_summary, rule_line, ScenarioVerb, Verb};
use crate::client::ClientError;
use crate::control::{ReloadSummary, RuleView, ScenarioView, StatusView};
use crate::scenario::report::{Report, Stats};

/// What to print, and an error to end with beyond the replicas' own.
pub(super) struct Shown {
    pub text: String,
    pub problem: Option<ClientError>,
}

impl From<String> for Shown {
    fn from(text: String) -> Shown {
        Shown {
            text,
            problem: None,
        }
    }
}

/// The answers as tables.
pub(super) fn render(verb: &Verb, replies: &mut [Reply], now: SystemTime) -> Shown {
    match verb {
        Verb::Status => status(replies).into(),
        Verb::Rules => rules(replies).into(),
        Verb::Rule { .. } | Verb::Enable { .. } | Verb::Disable { .. } | Verb::Set { .. } => {
            one_rule(replies, now).into()
        }
        Verb::Halt => switch(replies, true).into(),
        Verb::Resume => switch(replies, false).into(),
        Verb::Reload => reload(replies).into(),
        Verb::Scenario { verb } => match verb {
            ScenarioVerb::List => scenario_list(replies).into(),
            ScenarioVerb::Report { .. } => report(replies),
            ScenarioVerb::Start { .. }
            | ScenarioVerb::Stop { .. }
            | ScenarioVerb::Status { .. } => scenario_states(replies, now).into(),
        },
    }
}

/// `{"replicas": [...]}`, with `"drift"` for `status` and `"merged"` for
/// `scenario report`.
pub(super) fn json(verb: &Verb, replies: &mut [Reply]) -> Shown {
    let mut extra = None;
    let mut problem = None;
    match verb {
        Verb::Status => {
            let clocks: Vec<Option<Clocks>> = replies.iter_mut().map(clocks).collect();
            let drift = Drift::of(&clocks).map(|d| {
                json!({ "ms": d.ms, "scenario": d.scenario, "step": d.step, "replicas": d.replicas })
            });
            extra = Some(("drift", drift.unwrap_or(Value::Null)));
        }
        Verb::Scenario {
            verb: ScenarioVerb::Report { .. },
        } => {
            let reports: Vec<Report> = replies.iter_mut().filter_map(Reply::parse).collect();
            let merged = match merge(&reports) {
                Ok(merged) => merged.map_or(Value::Null, |m| json!(m)),
                Err(e) => {
                    problem = Some(e);
                    Value::Null
                }
            };
            extra = Some(("merged", merged));
        }
        _ => {}
    }
    let mut document = json!({ "replicas": replica_json(replies) });
    if let Some((key, value)) = extra {
        document[key] = value;
    }
    let text = serde_json::to_string_pretty(&document).unwrap_or_default() + "\n";
    Shown { text, problem }
}

/// A table's line: a replica's cells, or a replica and why it gave none.
enum Row {
    Cells(Vec<String>),
    Failed(String, String),
}

impl Row {
    /// The replica's cells from its value, or its failure.
    fn of<T>(reply: &Reply, value: Option<&T>, cells: impl FnOnce(&T) -> Vec<String>) -> Row {
        match (value, &reply.result) {
            (Some(value), _) => {
                let mut row = vec![reply.replica.clone()];
                row.extend(cells(value));
                Row::Cells(row)
            }
            (None, Err(failure)) => Row::Failed(reply.replica.clone(), failure.brief.clone()),
            (None, Ok(_)) => Row::Failed(reply.replica.clone(), "no answer".to_owned()),
        }
    }
}

/// Columns padded to their widest cell; a failed row is its URL and reason.
fn table(header: &[&str], rows: &[Row]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        let cells = match row {
            Row::Cells(cells) => cells.as_slice(),
            Row::Failed(replica, _) => std::slice::from_ref(replica),
        };
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(
                out,
                "{cell:<width$}  ",
                width = widths.get(i).copied().unwrap_or(0)
            );
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header);
    for row in rows {
        match row {
            Row::Cells(cells) => line(&cells.iter().map(String::as_str).collect::<Vec<_>>()),
            Row::Failed(replica, reason) => line(&[replica, &format!("error: {reason}")]),
        }
    }
    text
}

/// Each distinct value, in first-seen order, with how many gave it.
fn tally(values: impl IntoIterator<Item = String>) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for value in values {
        match counts.iter_mut().find(|(v, _)| *v == value) {
            Some((_, n)) => *n += 1,
            None => counts.push((value, 1)),
        }
    }
    counts
}

/// Whether the replicas that answered agree, thing by thing.
#[derive(Default)]
struct Verdict {
    same: Vec<String>,
    differ: Vec<String>,
}

impl Verdict {
    /// One thing, as each answering replica gave it. Agreement is noted
    /// with the value when `show_same`; a difference always, with each value
    /// and on how many replicas.
    fn check(&mut self, what: &str, values: impl IntoIterator<Item = String>, show_same: bool) {
        match tally(values).as_slice() {
            [] => {}
            [(value, _)] => {
                if show_same {
                    self.same.push(format!("{what} {value}"));
                }
            }
            many => {
                let each: Vec<String> = many.iter().map(|(v, n)| format!("{v} on {n}")).collect();
                self.differ.push(format!("{what} ({})", each.join(", ")));
            }
        }
    }

    /// `agree  yes, on 3 replicas: …` or `agree  NO: …`.
    fn line(&self, answered: usize, total: usize) -> String {
        let of = if answered < total {
            format!(" ({answered} of {total} answered)")
        } else {
            String::new()
        };
        if answered == 0 {
            return "agree     -: no replica answered\n".to_owned();
        }
        if self.differ.is_empty() {
            let what = if self.same.is_empty() {
                String::new()
            } else {
                format!(": {}", self.same.join(", "))
            };
            let replicas = if answered == 1 { "replica" } else { "replicas" };
            format!("agree     yes, on {answered} {replicas}{of}{what}\n")
        } else {
            format!("agree     NO{of}: {}\n", self.differ.join("; "))
        }
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

/// What `/api/status` says of runs for drift (SPEC §11); read apart from
/// [`StatusView`] so a proxy without these fields still answers `status`.
#[derive(Debug, Deserialize)]
struct Clocks {
    /// `None` from a proxy that predates it.
    runs: Option<Vec<RunClock>>,
}

#[derive(Debug, Deserialize)]
struct RunClock {
    name: String,
    /// The current step's index; `null` before the first step.
    #[serde(default)]
    step: Option<usize>,
    #[serde(default)]
    step_started_unix_ms: Option<u64>,
}

impl RunClock {
    /// `drill step 2` (counted from 1, as `scenario report` does) or `drill lead-in`.
    fn label(&self) -> String {
        match self.step {
            Some(index) => format!("{} step {}", self.name, index + 1),
            None => format!("{} lead-in", self.name),
        }
    }
}

fn clocks(reply: &mut Reply) -> Option<Clocks> {
    reply.parse::<StatusView>()?;
    serde_json::from_str(reply.result.as_ref().ok()?).ok()
}

/// The largest difference between replicas' starts of the same step.
struct Drift {
    ms: u64,
    scenario: String,
    step: Option<usize>,
    replicas: usize,
}

impl Drift {
    fn of(clocks: &[Option<Clocks>]) -> Option<Drift> {
        let mut starts: BTreeMap<(&str, Option<usize>), Vec<u64>> = BTreeMap::new();
        for runs in clocks.iter().flatten().filter_map(|c| c.runs.as_ref()) {
            for run in runs {
                if let Some(ms) = run.step_started_unix_ms {
                    starts.entry((&run.name, run.step)).or_default().push(ms);
                }
            }
        }
        starts
            .into_iter()
            .map(|((scenario, step), all)| Drift {
                ms: all.iter().max().copied().unwrap_or(0) - all.iter().min().copied().unwrap_or(0),
                scenario: scenario.to_owned(),
                step,
                replicas: all.len(),
            })
            .max_by_key(|d| (d.ms, d.replicas))
    }
}

/// `HH:MM:SS.mmm` in UTC (the milliseconds as they came past the year 9999).
fn time_of_day(unix_ms: u64) -> String {
    if unix_ms / 1000 >= LAST_RFC3339_SECOND {
        return format!("{unix_ms} ms");
    }
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let text = humantime::format_rfc3339_millis(at).to_string();
    text.get(11..23).unwrap_or(&text).to_owned()
}

fn status(replies: &mut [Reply]) -> String {
    let views: Vec<Option<StatusView>> = replies.iter_mut().map(Reply::parse).collect();
    let clocks: Vec<Option<Clocks>> = replies.iter_mut().map(clocks).collect();
    let running = |view: &StatusView, clocks: Option<&Clocks>| -> Vec<String> {
        match clocks.and_then(|c| c.runs.as_ref()) {
            Some(runs) => runs.iter().map(RunClock::label).collect(),
            None => view.scenarios_running.clone(),
        }
    };
    let rows: Vec<Row> = replies
        .iter()
        .zip(&views)
        .zip(&clocks)
        .map(|((reply, view), clocks)| {
            Row::of(reply, view.as_ref(), |view| {
                let runs = running(view, clocks.as_ref());
                let started: Vec<String> = clocks
                    .as_ref()
                    .and_then(|c| c.runs.as_ref())
                    .map(|runs| {
                        runs.iter()
                            .filter_map(|r| r.step_started_unix_ms.map(time_of_day))
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    view.version.clone(),
                    yes_no(view.halted),
                    view.rules.total.to_string(),
                    view.rules.enabled.to_string(),
                    if runs.is_empty() {
                        "-".to_owned()
                    } else {
                        runs.join(", ")
                    },
                    if started.is_empty() {
                        "-".to_owned()
                    } else {
                        started.join(", ")
                    },
                ]
            })
        })
        .collect();
    let mut text = table(
        &[
            "REPLICA",
            "VERSION",
            "HALTED",
            "RULES",
            "ENABLED",
            "RUNNING",
            "STEP STARTED",
        ],
        &rows,
    );
    let answered: Vec<(&StatusView, Option<&Clocks>)> = views
        .iter()
        .zip(&clocks)
        .filter_map(|(v, c)| Some((v.as_ref()?, c.as_ref())))
        .collect();
    let mut verdict = Verdict::default();
    verdict.check(
        "version",
        answered.iter().map(|(v, _)| v.version.clone()),
        true,
    );
    verdict.check(
        "halted",
        answered.iter().map(|(v, _)| yes_no(v.halted)),
        true,
    );
    verdict.check(
        "rules",
        answered
            .iter()
            .map(|(v, _)| format!("{} of {} enabled", v.rules.enabled, v.rules.total)),
        true,
    );
    verdict.check(
        "running",
        answered.iter().map(|(v, c)| {
            let mut runs = running(v, *c);
            runs.sort();
            if runs.is_empty() {
                "none".to_owned()
            } else {
                runs.join(" + ")
            }
        }),
        true,
    );
    text.push_str(&verdict.line(answered.len(), replies.len()));
    // Only a replica running something has step starts to miss.
    let unreported = answered
        .iter()
        .filter(|(v, c)| {
            !v.scenarios_running.is_empty() && c.and_then(|c| c.runs.as_ref()).is_none()
        })
        .count();
    let drift = match Drift::of(&clocks) {
        Some(d) => format!(
            "{} ms between the starts of {} on {} replica{}",
            d.ms,
            RunClock {
                name: d.scenario,
                step: d.step,
                step_started_unix_ms: None
            }
            .label(),
            d.replicas,
            if d.replicas == 1 { "" } else { "s" }
        ),
        None if unreported > 0 => "unknown".to_owned(),
        None => "- (no scenario running)".to_owned(),
    };
    let _ = write!(text, "drift     {drift}");
    if unreported > 0 {
        let _ = write!(
            text,
            "; {unreported} replica{} report{} no step starts (a faultline older than fleets)",
            if unreported == 1 { "" } else { "s" },
            if unreported == 1 { "s" } else { "" }
        );
    }
    text.push('\n');
    text
}

fn rules(replies: &mut [Reply]) -> String {
    let lists: Vec<Option<Vec<RuleView>>> = replies.iter_mut().map(Reply::parse).collect();
    let rows: Vec<Row> = replies
        .iter()
        .zip(&lists)
        .map(|(reply, rules)| {
            Row::of(reply, rules.as_ref(), |rules| {
                vec![
                    rules.len().to_string(),
                    rules.iter().filter(|r| r.enabled).count().to_string(),
                    rules.iter().map(|r| r.injected).sum::<u64>().to_string(),
                ]
            })
        })
        .collect();
    let mut text = table(&["REPLICA", "RULES", "ENABLED", "INJECTED"], &rows);
    let answered: Vec<&Vec<RuleView>> = lists.iter().flatten().collect();
    // Every rule any replica has, in the first replica's order.
    let mut names: Vec<&str> = Vec::new();
    for rule in answered.iter().flat_map(|rules| rules.iter()) {
        if !names.contains(&rule.name.as_str()) {
            names.push(&rule.name);
        }
    }
    let mut verdict = Verdict::default();
    let mut rule_rows = Vec::new();
    for name in &names {
        let each: Vec<Option<&RuleView>> = answered
            .iter()
            .map(|rules| rules.iter().find(|r| r.name == *name))
            .collect();
        let present: Vec<&RuleView> = each.iter().flatten().copied().collect();
        let Some(first) = present.first() else {
            continue;
        };
        let switch =
            |rule: Option<&&RuleView>| rule.map_or("absent".to_owned(), |r| yes_no(r.enabled));
        let probability = |rule: Option<&&RuleView>| {
            rule.map_or("absent".to_owned(), |r| r.probability.to_string())
        };
        let mut one = Verdict::default();
        one.check(
            &format!("{name} enabled"),
            each.iter().map(|r| switch(r.as_ref())),
            false,
        );
        one.check(
            &format!("{name} probability"),
            each.iter().map(|r| probability(r.as_ref())),
            false,
        );
        let on = present.iter().filter(|r| r.enabled).count();
        let enabled = if on == 0 || on == answered.len() {
            yes_no(on > 0)
        } else {
            format!("{on}/{}", answered.len())
        };
        let probabilities: Vec<String> =
            present.iter().map(|r| r.probability.to_string()).collect();
        let prob = if probabilities.iter().all(|p| *p == probabilities[0]) {
            probabilities[0].clone()
        } else {
            "mixed".to_owned()
        };
        rule_rows.push(Row::Cells(vec![
            (*name).to_owned(),
            first.source.clone(),
            enabled,
            prob,
            fault_summary(first),
            present.iter().map(|r| r.injected).sum::<u64>().to_string(),
            if one.differ.is_empty() { "yes" } else { "NO" }.to_owned(),
        ]));
        verdict.differ.extend(one.differ);
    }
    text.push('\n');
    if names.is_empty() {
        text.push_str("no rules\n");
    } else {
        text.push_str(&table(
            &[
                "NAME", "SOURCE", "ENABLED", "PROB", "FAULT", "INJECTED", "AGREE",
            ],
            &rule_rows,
        ));
    }
    if verdict.differ.is_empty() && !names.is_empty() {
        verdict
            .same
            .push("every rule's switch and probability".to_owned());
    }
    text.push_str(&verdict.line(answered.len(), replies.len()));
    text
}

fn one_rule(replies: &mut [Reply], now: SystemTime) -> String {
    let rules: Vec<Option<RuleView>> = replies.iter_mut().map(Reply::parse).collect();
    let rows: Vec<Row> = replies
        .iter()
        .zip(&rules)
        .map(|(reply, rule)| Row::of(reply, rule.as_ref(), |rule| vec![rule_line(rule, now)]))
        .collect();
    let mut text = table(&["REPLICA", "RULE"], &rows);
    let answered: Vec<&RuleView> = rules.iter().flatten().collect();
    let mut verdict = Verdict::default();
    verdict.check("enabled", answered.iter().map(|r| yes_no(r.enabled)), true);
    verdict.check(
        "probability",
        answered.iter().map(|r| r.probability.to_string()),
        true,
    );
    text.push_str(&verdict.line(answered.len(), replies.len()));
    text
}

/// `halt` and `resume`: where it took, and where it did not.
fn switch(replies: &mut [Reply], halt: bool) -> String {
    let views: Vec<Option<StatusView>> = replies.iter_mut().map(Reply::parse).collect();
    let rows: Vec<Row> = replies
        .iter()
        .zip(&views)
        .map(|(reply, view)| Row::of(reply, view.as_ref(), |view| vec![yes_no(view.halted)]))
        .collect();
    let mut text = table(&["REPLICA", "HALTED"], &rows);
    let done = views.iter().flatten().filter(|v| v.halted == halt).count();
    let (done_word, what) = if halt {
        (
            "halted",
            "every fault is off; enabling is refused until `faultline ctl resume`",
        )
    } else {
        (
            "resumed",
            "rules may be enabled again (none was turned back on)",
        )
    };
    let _ = writeln!(
        text,
        "{done_word} on {done} of {} replicas: {what}",
        replies.len()
    );
    let missed: Vec<&str> = replies
        .iter()
        .zip(&views)
        .filter(|(_, v)| v.as_ref().is_none_or(|v| v.halted != halt))
        .map(|(r, _)| r.replica.as_str())
        .collect();
    if !missed.is_empty() {
        let _ = writeln!(text, "NOT {done_word}: {}", missed.join(", "));
    }
    text
}

fn reload(replies: &mut [Reply]) -> String {
    let summaries: Vec<Option<ReloadSummary>> = replies.iter_mut().map(Reply::parse).collect();
    let rows: Vec<Row> = replies
        .iter()
        .zip(&summaries)
        .map(|(reply, summary)| {
            Row::of(reply, summary.as_ref(), |s| {
                vec![
                    s.added.len().to_string(),
                    s.changed.len().to_string(),
                    s.removed.len().to_string(),
                    s.unchanged.to_string(),
                    s.rules.to_string(),
                ]
            })
        })
        .collect();
    let mut text = table(
        &[
            "REPLICA",
            "ADDED",
            "CHANGED",
            "REMOVED",
            "UNCHANGED",
            "RULES",
        ],
        &rows,
    );
    let answered: Vec<&ReloadSummary> = summaries.iter().flatten().collect();
    let names = |list: &[String]| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    let mut verdict = Verdict::default();
    verdict.check(
        "rules in force",
        answered.iter().map(|s| s.rules.to_string()),
        true,
    );
    verdict.check("added", answered.iter().map(|s| names(&s.added)), false);
    verdict.check("changed", answered.iter().map(|s| names(&s.changed)), false);
    verdict.check("removed", answered.iter().map(|s| names(&s.removed)), false);
    text.push_str(&verdict.line(answered.len(), replies.len()));
    text
}

fn scenario_list(replies: &mut [Reply]) -> String {
    let lists: Vec<Option<Vec<ScenarioView>>> = replies.iter_mut().map(Reply::parse).collect();
    let rows: Vec<Row> = replies
        .iter()
        .zip(&lists)
        .map(|(reply, list)| {
            Row::of(reply, list.as_ref(), |list| {
                let running: Vec<String> = list
                    .iter()
                    .filter_map(|s| match s.state.as_str() {
                        "running" => Some(s.name.clone()),
                        "scheduled" => Some(format!("{} (scheduled)", s.name)),
                        _ => None,
                    })
                    .collect();
                vec![
                    list.len().to_string(),
                    if running.is_empty() {
                        "-".to_owned()
                    } else {
                        running.join(", ")
                    },
                ]
            })
        })
        .collect();
    let mut text = table(&["REPLICA", "SCENARIOS", "RUNNING"], &rows);
    let answered: Vec<&Vec<ScenarioView>> = lists.iter().flatten().collect();
    let mut names: Vec<&str> = Vec::new();
    for scenario in answered.iter().flat_map(|list| list.iter()) {
        if !names.contains(&scenario.name.as_str()) {
            names.push(&scenario.name);
        }
    }
    let mut verdict = Verdict::default();
    let mut scenario_rows = Vec::new();
    for name in &names {
        let states: Vec<String> = answered
            .iter()
            .map(|list| {
                list.iter()
                    .find(|s| s.name == *name)
                    .map_or("absent".to_owned(), |s| s.state.clone())
            })
            .collect();
        let mut one = Verdict::default();
        one.check(name, states.clone(), false);
        let Some(first) = answered
            .iter()
            .find_map(|list| list.iter().find(|s| s.name == *name))
        else {
            continue;
        };
        let state = match tally(states).as_slice() {
            [(state, _)] => state.clone(),
            many => many
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        scenario_rows.push(Row::Cells(vec![
            (*name).to_owned(),
            state,
            first.duration.clone(),
            first.steps.len().to_string(),
            first.description.clone().unwrap_or_default(),
        ]));
        verdict.differ.extend(one.differ);
    }
    text.push('\n');
    if names.is_empty() {
        text.push_str("no scenarios: add [[scenario]] tables to a rule file\n");
    } else {
        text.push_str(&table(
            &["NAME", "STATE", "DURATION", "STEPS", "DESCRIPTION"],
            &scenario_rows,
        ));
        if verdict.differ.is_empty() {
            verdict.same.push("every scenario's state".to_owned());
        }
    }
    text.push_str(&verdict.line(answered.len(), replies.len()));
    text
}

/// `scenario start`, `stop` and `status`: where the run is on each replica.
/// `START` is the run's anchor (its `start_at`, to come while `scheduled`);
/// `TIME` the scenario's clock, or how long until a scheduled start.
fn scenario_states(replies: &mut [Reply], now: SystemTime) -> String {
    let views: Vec<Option<ScenarioView>> = replies.iter_mut().map(Reply::parse).collect();
    let step = |view: &ScenarioView| -> String {
        let current = view.run.as_ref().and_then(|r| r.current_step.as_ref());
        match current {
            Some(step) => format!("{}/{}", step.index + 1, view.steps.len()),
            None if view.run.is_some() => format!("0/{}", view.steps.len()),
            None => "-".to_owned(),
        }
    };
    let rows: Vec<Row> = replies
        .iter()
        .zip(&views)
        .map(|(reply, view)| {
            Row::of(reply, view.as_ref(), |view| {
                let run = view.run.as_ref();
                vec![
                    view.state.clone(),
                    step(view),
                    run.map_or("-".to_owned(), |r| format!("{}x", r.speed)),
                    run.map_or("-".to_owned(), |r| start_of(r).to_owned()),
                    run.map_or("-".to_owned(), |r| {
                        if r.state == "scheduled" {
                            format!("starts {}", countdown(r, now))
                        } else {
                            clock(r.scenario_seconds)
                        }
                    }),
                    run.and_then(|r| r.next_step_in_seconds)
                        .map_or("-".to_owned(), |s| format!("in {}", clock(s))),
                ]
            })
        })
        .collect();
    let mut text = table(
        &[
            "REPLICA",
            "STATE",
            "STEP",
            "SPEED",
            "START",
            "TIME",
            "NEXT STEP",
        ],
        &rows,
    );
    let answered: Vec<&ScenarioView> = views.iter().flatten().collect();
    let mut verdict = Verdict::default();
    verdict.check("state", answered.iter().map(|v| v.state.clone()), true);
    verdict.check("step", answered.iter().map(|v| step(v)), true);
    verdict.check(
        "speed",
        answered.iter().map(|v| {
            v.run
                .as_ref()
                .map_or("-".to_owned(), |r| format!("{}x", r.speed))
        }),
        false,
    );
    // Replicas anchored at different instants play different timelines; a
    // run started without `start_at` has no anchor to compare.
    verdict.check(
        "start_at",
        answered.iter().map(|v| {
            v.run
                .as_ref()
                .and_then(|r| r.start_at.clone())
                .unwrap_or_else(|| "none".to_owned())
        }),
        false,
    );
    text.push_str(&verdict.line(answered.len(), replies.len()));
    text
}

/// The reports of every replica that answered, as one.
fn merge(reports: &[Report]) -> Result<Option<Report>, ClientError> {
    if reports.is_empty() {
        return Ok(None);
    }
    Report::merge(reports)
        .map(Some)
        .map_err(|e| ClientError::Usage(format!("cannot merge the replicas' reports: {e}")))
}

fn report(replies: &mut [Reply]) -> Shown {
    let reports: Vec<Option<Report>> = replies.iter_mut().map(Reply::parse).collect();
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms"));
    let rows: Vec<Row> = replies
        .iter()
        .zip(&reports)
        .map(|(reply, report)| {
            Row::of(reply, report.as_ref(), |report| {
                let whole =
                    Stats::merge(report.lead_in.iter().chain(&report.steps).map(|s| &s.total));
                match whole {
                    Ok(whole) => vec![
                        report.state.clone(),
                        whole.requests.to_string(),
                        whole.errors.to_string(),
                        ms(whole.p50_ms),
                        ms(whole.p99_ms),
                    ],
                    Err(e) => vec![report.state.clone(), format!("unreadable: {e}")],
                }
            })
        })
        .collect();
    let mut text = table(
        &["REPLICA", "STATE", "REQUESTS", "ERRORS", "P50", "P99"],
        &rows,
    );
    let answered: Vec<Report> = reports.into_iter().flatten().collect();
    let mut verdict = Verdict::default();
    verdict.check("state", answered.iter().map(|r| r.state.clone()), true);
    verdict.check(
        "speed",
        answered.iter().map(|r| format!("{}x", r.speed)),
        false,
    );
    text.push_str(&verdict.line(answered.len(), replies.len()));
    match merge(&answered) {
        Ok(Some(merged)) => {
            let _ = write!(
                text,
                "\nmerged from {} of {} replicas: counts summed, quantiles from the summed latency histograms\n{}",
                answered.len(),
                replies.len(),
                report_text(&merged)
            );
            text.into()
        }
        Ok(None) => text.into(),
        Err(problem) => Shown {
            text,
            problem: Some(problem),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_names_what_differs_and_where() {
        let mut verdict = Verdict::default();
        verdict.check("version", vec!["0.9.0".to_owned(); 3], true);
        assert_eq!(
            verdict.line(3, 3),
            "agree     yes, on 3 replicas: version 0.9.0\n"
        );
        verdict.check("halted", ["yes", "no", "yes"].map(str::to_owned), true);
        assert_eq!(
            verdict.line(3, 4),
            "agree     NO (3 of 4 answered): halted (yes on 2, no on 1)\n"
        );
        assert_eq!(
            Verdict::default().line(1, 1),
            "agree     yes, on 1 replica\n"
        );
        assert_eq!(
            Verdict::default().line(0, 2),
            "agree     -: no replica answered\n"
        );
    }

    #[test]
    fn drift_is_the_widest_spread_of_one_step() {
        let clocks = |runs: &[(&str, Option<usize>, u64)]| {
            Some(Clocks {
                runs: Some(
                    runs.iter()
                        .map(|(name, step, ms)| RunClock {
                            name: (*name).to_owned(),
                            step: *step,
                            step_started_unix_ms: Some(*ms),
                        })
                        .collect(),
                ),
            })
        };
        let fleet = [
            clocks(&[("drill", Some(1), 1_000), ("other", None, 50)]),
            clocks(&[("drill", Some(1), 1_012), ("other", None, 55)]),
            clocks(&[("drill", Some(0), 900)]),
            None,
        ];
        let drift = Drift::of(&fleet).unwrap();
        assert_eq!(
            (
                drift.ms,
                drift.scenario.as_str(),
                drift.step,
                drift.replicas
            ),
            (12, "drill", Some(1), 2)
        );
        assert!(Drift::of(&[Some(Clocks { runs: Some(vec![]) })]).is_none());
        assert_eq!(time_of_day(1_796_048_998_004), "14:29:58.004");
        assert_eq!(time_of_day(u64::MAX), format!("{} ms", u64::MAX));
    }

    #[test]
    fn a_table_names_a_failed_replica_in_its_row() {
        let rows = [
            Row::Cells(vec!["http://10.0.0.1:9000".to_owned(), "no".to_owned()]),
            Row::Failed(
                "http://10.0.0.2:9000".to_owned(),
                "unreachable: refused".to_owned(),
            ),
        ];
        assert_eq!(
            table(&["REPLICA", "HALTED"], &rows),
            "REPLICA               HALTED\nhttp://10.0.0.1:9000  no\nhttp://10.0.0.2:9000  error: unreachable: refused\n"
        );
    }
}
