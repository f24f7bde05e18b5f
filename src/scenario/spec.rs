//! `[[scenario]]` as written (README "Scenarios") and its validation against the rules
//! it drives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::diagnostic::{FieldError, FieldPath};
use crate::fault::{BodyFiles, BodySource, Fault, FaultSpec};
use crate::rules::{check_name, MatchSpec, Matcher, Rule, RuleSource};

/// The longest a scenario may last: longer than any outage worth rehearsing.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A scenario as written in a rule file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// At the end every change the scenario made is undone.
    pub duration: String,
    /// RFC 3339: every replica that loads the file starts the run at this
    /// wall-clock instant, or joins it mid-run (README "Scenarios").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "start_at_text"
    )]
    pub start_at: Option<String>,
    #[serde(default)]
    pub step: Vec<StepSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSpec>,
}

/// One step: at an offset from the start, rules switched and changed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub at: String,
    /// What this moment of the outage is, for status and reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enable: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Rule name → the fields to change.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, SetSpec>,
}

/// The fields of a rule a step may change.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Fault fields laid over the rule's own; with `kind` it replaces the
    /// whole fault instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<toml::Table>,
}

/// `[scenario.guard]`: when the run must stop, judged from the proxy's own
/// traffic to the upstreams it watches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// Watch upstreams with these labels (glob values)…
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// …and, or instead, with these names (globs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    pub max_error_ratio: f64,
    /// Wall-clock time: the guard judges real traffic, whatever the speed.
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Whether injected faults on the watched upstreams count as errors.
    #[serde(default)]
    pub count_injected: bool,
}

fn default_window() -> String {
    "30s".to_owned()
}

fn default_min_requests() -> u64 {
    20
}

/// A validated scenario.
#[derive(Debug)]
pub struct Scenario {
    pub spec: ScenarioSpec,
    pub source: PathBuf,
    pub duration: Duration,
    /// `start_at`, read.
    pub start_at: Option<SystemTime>,
    pub steps: Vec<Step>,
    pub guard: Option<Guard>,
    /// Every rule a step changes, sorted: two runs that share one conflict.
    pub touched: BTreeSet<String>,
}

impl Scenario {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// When a run anchored at `start_at` and played at `speed` ends.
    pub fn end_of_run(&self, start_at: SystemTime, speed: f64) -> SystemTime {
        start_at + self.duration.div_f64(speed)
    }

    /// A warning when the file's `start_at` run is already over at `now`:
    /// such a run is not started.
    pub fn start_at_warning(&self, now: SystemTime) -> Option<String> {
        let start_at = self.start_at?;
        let end = self.end_of_run(start_at, 1.0);
        (end <= now).then(|| {
            format!(
                "{}: warning: scenario {:?}: start_at = {:?}: its run ended at {}, so it is not started",
                self.source.display(),
                self.name(),
                self.spec.start_at.as_deref().unwrap_or_default(),
                humantime::format_rfc3339_seconds(end)
            )
        })
    }
}

/// `start_at` as written: a string, or a TOML date-time written bare
/// (`start_at = 2026-12-01T14:00:00Z`), kept as its text; checked by
/// [`parse_start_at`] with the rest of the scenario.
fn start_at_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 time such as \"2026-12-01T14:00:00Z\"")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_owned())
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
            let at = toml::value::Datetime::deserialize(
                serde::de::value::MapAccessDeserializer::new(map),
            )?;
            Ok(at.to_string())
        }
    }
    deserializer.deserialize_any(Text).map(Some)
}

/// Reads an RFC 3339 time (`2026-12-01T14:00:00Z`, `2026-12-01T15:00:00.5+01:00`).
pub fn parse_start_at(text: &str) -> Result<SystemTime, String> {
    let expected = "expected an RFC 3339 time such as \"2026-12-01T14:00:00Z\"";
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("start_at {text:?} is not a valid time ({e}); {expected}"))?;
    let seconds = u64::try_from(at.unix_timestamp())
        .map_err(|_| format!("start_at {text:?} is before 1970; {expected}"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::new(seconds, at.nanosecond()))
}

/// A validated step.
#[derive(Debug)]
pub struct Step {
    pub at: Duration,
    pub description: Option<String>,
    /// What happens to each rule the step names, by rule name.
    pub changes: BTreeMap<String, RuleChange>,
}

/// One step's change to one rule.
#[derive(Debug, Clone, Default)]
pub struct RuleChange {
    pub enabled: Option<bool>,
    pub probability: Option<f64>,
    /// The rule's fault once this step's patch is laid over the patches of
    /// the steps before it: validated with the scenario, not when it plays.
    pub fault: Option<Arc<PatchedFault>>,
}

/// A fault as a scenario's patches leave it.
#[derive(Debug)]
pub struct PatchedFault {
    pub spec: FaultSpec,
    pub fault: Fault,
}

/// A validated guard.
#[derive(Debug)]
pub struct Guard {
    pub watch: Matcher,
    pub max_error_ratio: f64,
    pub window: Duration,
    pub min_requests: u64,
    pub count_injected: bool,
}

/// The fault a rule has after fault patches: the patch's fields over the
/// rule's, or the patch alone when it names a `kind`.
pub fn patched_fault(base: &FaultSpec, patch: &toml::Table) -> Result<FaultSpec, String> {
    let mut table = if patch.contains_key("kind") {
        toml::Table::new()
    } else {
        toml::Table::try_from(base).map_err(|e| e.to_string())?
    };
    for (key, value) in patch {
        table.insert(key.clone(), value.clone());
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_owned())
}

/// Lays a later patch over an earlier one.
pub fn merge_patch(earlier: &mut toml::Table, later: &toml::Table) {
    if later.contains_key("kind") {
        earlier.clear();
    }
    for (key, value) in later {
        earlier.insert(key.clone(), value.clone());
    }
}

/// The fault a rule has under a scenario's accumulated patch. A
/// `body_file` is resolved against the rule's own file, as the rule's is.
pub fn patch_fault(
    rule: &Rule,
    patch: &toml::Table,
    bodies: &BodyFiles,
    at: &FieldPath,
) -> Result<PatchedFault, Vec<FieldError>> {
    let spec = patched_fault(&rule.fault_spec, patch)
        .map_err(|message| vec![FieldError::new(at.clone(), message)])?;
    let base_dir = match &rule.source {
        RuleSource::File(path) => path.parent().unwrap_or(Path::new(".")),
        RuleSource::Api => Path::new("."),
    };
    let source = BodySource {
        base_dir,
        files: bodies,
    };
    let fault = spec.validate(source, at)?;
    Ok(PatchedFault { spec, fault })
}

fn duration(text: &str, at: FieldPath, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match crate::duration::parse(text) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(FieldError::new(at, e));
            None
        }
    }
}

impl ScenarioSpec {
    /// Validates the scenario against the file rules it may drive.
    pub fn validate(
        self,
        source: &Path,
        rules: &[Arc<Rule>],
        bodies: &BodyFiles,
        upstream_names: &[&str],
        at: &FieldPath,
    ) -> Result<Scenario, Vec<FieldError>> {
        let mut errors = Vec::new();
        let label = format!("scenario {:?}", self.name);
        if let Err(message) = check_name("scenario", &self.name) {
            errors.push(FieldError::new(at.key("name"), message));
        }
        let total = duration(&self.duration, at.key("duration"), &mut errors);
        if let Some(total) = total {
            if total.is_zero() || total > MAX_DURATION {
                errors.push(FieldError::new(
                    at.key("duration"),
                    format!(
                        "duration must be more than 0 and at most {}",
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        let start_at = self.start_at.as_deref().and_then(|text| {
            parse_start_at(text)
                .map_err(|message| errors.push(FieldError::new(at.key("start_at"), message)))
                .ok()
        });
        if self.step.is_empty() {
            errors.push(FieldError::new(
                at.key("name"),
                "a scenario needs at least one [[scenario.step]]",
            ));
        }
        let find = |name: &str| rules.iter().find(|r| r.name() == name);
        let mut steps = Vec::new();
        let mut touched = BTreeSet::new();
        // Each rule's fault patch so far, to check every step's result.
        let mut patches: BTreeMap<String, toml::Table> = BTreeMap::new();
        let mut previous = Duration::ZERO;
        for (i, step) in self.step.iter().enumerate() {
            let here = at.key("step").index(i);
            let offset = duration(&step.at, here.key("at"), &mut errors);
            if let Some(offset) = offset {
                if offset < previous {
                    errors.push(FieldError::new(
                        here.key("at"),
                        format!(
                            "steps must be in time order: at = {:?} comes before the step above it",
                            step.at
                        ),
                    ));
                }
                if total.is_some_and(|total| offset >= total) {
                    errors.push(FieldError::new(
                        here.key("at"),
                        format!(
                            "at = {:?} is not before the end of the scenario ({})",
                            step.at, self.duration
                        ),
                    ));
                }
                previous = previous.max(offset);
            }
            let mut changes: BTreeMap<String, RuleChange> = BTreeMap::new();
            for (field, names, enabled) in [
                ("enable", &step.enable, true),
                ("disable", &step.disable, false),
            ] {
                for (k, name) in names.iter().enumerate() {
                    if find(name).is_none() {
                        errors.push(FieldError::new(
                            here.key(field).index(k),
                            format!("no rule file defines a rule named {name:?}"),
                        ));
                        continue;
                    }
                    if names[..k].contains(name) {
                        errors.push(FieldError::new(
                            here.key(field).index(k),
                            format!("rule {name:?} is named twice in `{field}`"),
                        ));
                    }
                    let change = changes.entry(name.clone()).or_default();
                    if change.enabled.is_some_and(|e| e != enabled) {
                        errors.push(FieldError::new(
                            here.key(field).index(k),
                            format!("rule {name:?} is both enabled and disabled in this step"),
                        ));
                    }
                    change.enabled = Some(enabled);
                }
            }
            for (name, set) in &step.set {
                let set_at = here.key("set").key(name.as_str());
                let Some(rule) = find(name) else {
                    errors.push(FieldError::new(
                        set_at,
                        format!("no rule file defines a rule named {name:?}"),
                    ));
                    continue;
                };
                if set.probability.is_none() && set.fault.is_none() {
                    errors.push(FieldError::new(
                        set_at.clone(),
                        format!("`set` for rule {name:?} changes nothing: give `probability` or `fault`"),
                    ));
                }
                if let Some(p) = set.probability {
                    if !(0.0..=1.0).contains(&p) {
                        errors.push(FieldError::new(
                            set_at.key("probability"),
                            format!("probability {p} is not between 0 and 1"),
                        ));
                    }
                }
                let mut patched = None;
                if let Some(fault) = &set.fault {
                    let patch = patches.entry(name.clone()).or_default();
                    merge_patch(patch, fault);
                    match patch_fault(rule, patch, bodies, &set_at.key("fault")) {
                        Ok(fault) => patched = Some(Arc::new(fault)),
                        Err(problems) => errors.extend(problems.into_iter().map(|e| {
                            FieldError::new(e.field, format!("rule {name:?}: {}", e.message))
                        })),
                    }
                }
                let change = changes.entry(name.clone()).or_default();
                change.probability = set.probability;
                change.fault = patched;
            }
            if step.enable.is_empty() && step.disable.is_empty() && step.set.is_empty() {
                errors.push(FieldError::new(
                    here.key("at"),
                    "this step changes nothing: give `enable`, `disable` or `set`",
                ));
            }
            touched.extend(changes.keys().cloned());
            steps.push(Step {
                at: offset.unwrap_or_default(),
                description: step.description.clone(),
                changes,
            });
        }
        let guard = self
            .guard
            .as_ref()
            .and_then(|g| g.validate(upstream_names, &at.key("guard"), &mut errors));
        if errors.is_empty() {
            Ok(Scenario {
                duration: total.unwrap_or_default(),
                start_at,
                steps,
                guard,
                touched,
                source: source.to_path_buf(),
                spec: self,
            })
        } else {
            Err(errors
                .into_iter()
                .map(|e| FieldError::new(e.field, format!("{label}: {}", e.message)))
                .collect())
        }
    }
}

impl GuardSpec {
    fn validate(
        &self,
        upstream_names: &[&str],
        at: &FieldPath,
        errors: &mut Vec<FieldError>,
    ) -> Option<Guard> {
        let before = errors.len();
        if self.labels.is_empty() && self.upstreams.is_empty() {
            errors.push(FieldError::new(
                at.clone(),
                "a guard watches upstreams: give `labels` or `upstreams`",
            ));
        }
        if !(0.0..=1.0).contains(&self.max_error_ratio) {
            errors.push(FieldError::new(
                at.key("max_error_ratio"),
                format!(
                    "max_error_ratio {} is not between 0 and 1",
                    self.max_error_ratio
                ),
            ));
        }
        let window = duration(&self.window, at.key("window"), errors);
        if window.is_some_and(|w| w < Duration::from_millis(100) || w > Duration::from_secs(3600)) {
            errors.push(FieldError::new(
                at.key("window"),
                "window must be from 100ms to 1h",
            ));
        }
        if self.min_requests == 0 {
            errors.push(FieldError::new(
                at.key("min_requests"),
                "min_requests must be at least 1",
            ));
        }
        let watch = MatchSpec {
            upstreams: self.upstreams.clone(),
            labels: self.labels.clone(),
            ..MatchSpec::default()
        }
        .compile(upstream_names, at);
        let watch = match watch {
            Ok(watch) => watch,
            Err(problems) => {
                errors.extend(problems);
                return None;
            }
        };
        (errors.len() == before).then(|| Guard {
            watch,
            max_error_ratio: self.max_error_ratio,
            window: window.unwrap_or_default(),
            min_requests: self.min_requests,
            count_injected: self.count_injected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::{load_sources, RuleText};

    const RULES: &str = "[[rule]]\nname = \"slow\"\nenabled = false\n[rule.fault]\nkind = \"latency\"\ndelay = \"100ms\"\n\n[[rule]]\nname = \"fail\"\nenabled = false\n[rule.fault]\nkind = \"error\"\nstatus = 503\n";

    fn load(scenario: &str) -> Result<Vec<Arc<Scenario>>, Vec<String>> {
        let text = RuleText {
            path: PathBuf::from("r.toml"),
            text: format!("{RULES}\n{scenario}"),
        };
        load_sources(&[text], &["orders"])
            .map(|book| book.scenarios)
            .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn steps_become_changes_per_rule() {
        let scenarios = load(
            "[[scenario]]\nname = \"outage\"\nduration = \"1h\"\n[[scenario.step]]\nat = \"0s\"\nenable = [\"slow\"]\n[[scenario.step]]\nat = \"10m\"\nenable = [\"fail\"]\nset = { slow = { probability = 0.5, fault = { delay = \"2s\" } } }\n",
        )
        .unwrap();
        let outage = &scenarios[0];
        assert_eq!(outage.duration, Duration::from_secs(3600));
        assert_eq!(outage.steps[1].at, Duration::from_secs(600));
        assert_eq!(outage.steps[1].changes["slow"].probability, Some(0.5),);
        assert_eq!(outage.steps[1].changes["fail"].enabled, Some(true));
        assert_eq!(outage.touched.iter().collect::<Vec<_>>(), ["fail", "slow"]);
    }

    #[test]
    fn problems_carry_line_and_column() {
        let errors = load(
            "[[scenario]]\nname = \"outage\"\nduration = \"1h\"\n[[scenario.step]]\nat = \"5m\"\nenable = [\"nope\"]\n[[scenario.step]]\nat = \"1m\"\nset = { slow = { fault = { delay = \"soon\" } } }\n[[scenario.step]]\nat = \"2h\"\ndisable = [\"slow\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "r.toml:20:11: error: scenario[0].step[0].enable[0]: scenario \"outage\": no rule file defines a rule named \"nope\"",
                "r.toml:22:1: error: scenario[0].step[1].at: scenario \"outage\": steps must be in time order: at = \"1m\" comes before the step above it",
                "r.toml:23:28: error: scenario[0].step[1].set.slow.fault.delay: scenario \"outage\": rule \"slow\": invalid duration \"soon\" (expected number at 0); expected a value like \"250ms\", \"1.5s\" or \"3h45m\"",
                "r.toml:25:1: error: scenario[0].step[2].at: scenario \"outage\": at = \"2h\" is not before the end of the scenario (1h)",
            ]
        );
    }

    #[test]
    fn a_patch_with_a_kind_replaces_the_fault() {
        let base: FaultSpec = toml::from_str("kind = \"latency\"\ndelay = \"1s\"").unwrap();
        let patch: toml::Table = toml::from_str("kind = \"error\"\nstatus = 503").unwrap();
        let fault = patched_fault(&base, &patch).unwrap();
        assert_eq!(fault.kind, crate::fault::FaultKind::Error);
        assert_eq!(fault.delay, None);
        let patch: toml::Table = toml::from_str("delay = \"3s\"").unwrap();
        assert_eq!(
            patched_fault(&base, &patch).unwrap().delay.as_deref(),
            Some("3s")
        );
    }

    #[test]
    fn start_at_is_rfc3339_with_any_offset() {
        let utc = parse_start_at("2026-12-01T14:00:00Z").unwrap();
        assert_eq!(
            utc,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_133_600)
        );
        assert_eq!(parse_start_at("2026-12-01T15:00:00.000+01:00"), Ok(utc));
        let error = parse_start_at("2026-12-01 14:00").unwrap_err();
        assert!(
            error.starts_with("start_at \"2026-12-01 14:00\" is not a valid time ("),
            "{error}"
        );
        assert!(parse_start_at("1969-12-31T23:59:59Z")
            .unwrap_err()
            .contains("is before 1970"));
        let scenarios = load(
            "[[scenario]]\nname = \"outage\"\nduration = \"1h\"\nstart_at = \"2026-12-01T14:00:00Z\"\n[[scenario.step]]\nat = \"0s\"\nenable = [\"slow\"]\n",
        )
        .unwrap();
        assert_eq!(scenarios[0].start_at, Some(utc));
        // A bare TOML date-time is taken as well.
        let bare = load(
            "[[scenario]]\nname = \"outage\"\nduration = \"1h\"\nstart_at = 2026-12-01T14:00:00Z\n[[scenario.step]]\nat = \"0s\"\nenable = [\"slow\"]\n",
        )
        .unwrap();
        assert_eq!(bare[0].start_at, Some(utc));
        let over = utc + Duration::from_secs(3600);
        assert!(scenarios[0].start_at_warning(over).is_some());
        assert!(scenarios[0]
            .start_at_warning(over - Duration::from_millis(1))
            .is_none());
    }

    #[test]
    fn a_guard_needs_something_to_watch() {
        let errors = load(
            "[[scenario]]\nname = \"outage\"\nduration = \"1h\"\n[[scenario.step]]\nat = \"0s\"\nenable = [\"slow\"]\n[scenario.guard]\nmax_error_ratio = 1.5\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].ends_with("a guard watches upstreams: give `labels` or `upstreams`"));
        assert!(errors[1].contains("max_error_ratio 1.5 is not between 0 and 1"));
    }
}
