//! Which requests are affected: the rule schema of SPEC §3, its validation,
//! and the immutable [`RuleSet`] snapshot the request path reads.
//!
//! A snapshot resolves, once, which enabled rules can apply to each upstream
//! (upstream names and labels are static), so a request only checks the
//! rules of its own upstream, in evaluation order.

mod load;
mod matcher;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};
use http::{HeaderName, HeaderValue};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::{is_valid_name, UpstreamConfig};
use crate::diagnostic::{FieldError, FieldPath};
use crate::fault::{Fault, FaultSpec};
use crate::metrics::Metrics;
use crate::scenario::{Scenario, ScenarioSpec};

pub use load::{load_dir, load_dir_reserving, load_sources, load_sources_reserving, RuleText};
pub use matcher::{MatchSpec, Matcher};

/// A rule file: `[[rule]]` tables, and `[[scenario]]` tables that drive them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub rule: Vec<RuleSpec>,
    #[serde(default)]
    pub scenario: Vec<ScenarioSpec>,
}

/// Everything the rule files define, validated.
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    /// In evaluation order: files sorted by path, rules in file order.
    pub rules: Vec<Arc<Rule>>,
    pub scenarios: Vec<Arc<Scenario>>,
}

/// One rule as written, in a file or (later) an API body.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Decided per request.
    #[serde(default = "default_probability")]
    pub probability: f64,
    #[serde(rename = "match", default)]
    pub matcher: MatchSpec,
    pub fault: FaultSpec,
    /// Inject at most this many times, then go quiet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Only every Nth matching request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// `"header:NAME"` or `"client_ip"`: the same caller, the same decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
}

fn default_enabled() -> bool {
    true
}

fn default_probability() -> f64 {
    1.0
}

/// Where a rule came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    File(PathBuf),
    Api,
}

/// A validated rule.
#[derive(Debug)]
pub struct Rule {
    pub spec: RuleSpec,
    pub source: RuleSource,
    pub matcher: Matcher,
    pub fault: Fault,
    pub times: Option<u64>,
    pub every: Option<u64>,
    pub sticky: Option<Sticky>,
    /// The rule's name as a header value, for `x-faultline-rule`.
    pub(crate) name_header: HeaderValue,
    /// Keeps each rule's random stream apart and stable across edits of other rules.
    pub(crate) salt: u64,
    /// Shared by every snapshot's copy of the rule, so a toggle or a reload
    /// that leaves the rule as it was keeps its counts.
    pub counters: Arc<RuleCounters>,
}

/// What a sticky rule hashes to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(HeaderName),
    ClientIp,
}

/// A rule's running counts.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Probability draws made: the position in the rule's random stream.
    pub(crate) draws: AtomicU64,
    /// Requests that matched, for `every`.
    matched: AtomicU64,
    /// Faults injected, for `times`; starts again when the rule is re-enabled.
    fired: AtomicU64,
    /// Faults injected over the rule's life.
    injected: AtomicU64,
}

impl RuleCounters {
    /// Counts a matching request; whether it is the rule's turn (`every`).
    pub fn take_turn(&self, every: Option<u64>) -> bool {
        match every {
            None => true,
            Some(every) => (self.matched.fetch_add(1, Ordering::Relaxed) + 1) % every == 0,
        }
    }

    /// Counts an injection; `false` once `times` are used up.
    pub fn take_one(&self, times: Option<u64>) -> bool {
        match times {
            None => {
                self.fired.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(times) => self
                .fired
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < times).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// Returns an injection that did not happen (the blast-radius cap).
    pub fn give_back(&self, times: Option<u64>) {
        if times.is_some() {
            let _ = self
                .fired
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Counts a fault that was injected.
    pub fn record_injected(&self) {
        self.injected.fetch_add(1, Ordering::Relaxed);
    }

    /// Faults injected since the rule was last enabled (what `times` counts).
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }

    /// Faults injected over the rule's life.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// A re-enabled rule starts its `times` and `every` counts afresh.
    pub fn restart(&self) {
        self.fired.store(0, Ordering::Relaxed);
        self.matched.store(0, Ordering::Relaxed);
    }

    /// Where `times` and `every` stand, to put back later ([`RuleCounters::set_turns`]).
    pub fn turns(&self) -> (u64, u64) {
        (
            self.fired.load(Ordering::Relaxed),
            self.matched.load(Ordering::Relaxed),
        )
    }

    /// Puts `times` and `every` back where [`RuleCounters::turns`] saw them.
    pub fn set_turns(&self, (fired, matched): (u64, u64)) {
        self.fired.store(fired, Ordering::Relaxed);
        self.matched.store(matched, Ordering::Relaxed);
    }
}

impl Rule {
    /// Whether this rule makes the upstream refuse every connection: an
    /// enabled `refuse` fault that takes every request, every time.
    pub fn refuses(&self, upstream: &UpstreamConfig) -> bool {
        matches!(self.fault, Fault::Refuse)
            && self.enabled()
            && self.probability() >= 1.0
            && self.times.is_none()
            && self.every.is_none()
            && self.matcher.takes_every_request()
            && self.matcher.applies_to_upstream(upstream)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn enabled(&self) -> bool {
        self.spec.enabled
    }

    pub fn probability(&self) -> f64 {
        self.spec.probability
    }

    /// The same rule with another fault (a scenario's `set`); it shares
    /// this one's counters.
    pub fn with_fault(&self, spec: FaultSpec, fault: Fault) -> Rule {
        let mut rule = self.with_switches(self.enabled(), self.probability());
        rule.spec.fault = spec;
        rule.fault = fault;
        rule
    }

    /// The same rule, switched on or off and with another probability;
    /// it shares this one's counters.
    pub fn with_switches(&self, enabled: bool, probability: f64) -> Rule {
        Rule {
            spec: RuleSpec {
                enabled,
                probability,
                ..self.spec.clone()
            },
            source: self.source.clone(),
            matcher: self.matcher.clone(),
            fault: self.fault.clone(),
            times: self.times,
            every: self.every,
            sticky: self.sticky.clone(),
            name_header: self.name_header.clone(),
            salt: self.salt,
            counters: Arc::clone(&self.counters),
        }
    }
}

impl RuleSpec {
    /// Validates the rule. `base_dir` resolves `body_file`; `upstream_names`
    /// catches references to upstreams that do not exist.
    pub fn validate(
        self,
        source: RuleSource,
        base_dir: &Path,
        upstream_names: &[&str],
        at: &FieldPath,
    ) -> Result<Rule, Vec<FieldError>> {
        let mut errors = Vec::new();
        let label = format!("rule {:?}", self.name);
        if self.name.is_empty()
            || !is_valid_name(&self.name)
            || self.name.bytes().any(|b| b.is_ascii_uppercase())
        {
            errors.push(FieldError::new(
                at.key("name"),
                format!(
                    "invalid rule name {:?}: use a-z, 0-9, '.', '_' and '-'",
                    self.name
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.probability) {
            errors.push(FieldError::new(
                at.key("probability"),
                format!(
                    "{label}: probability {} is not between 0 and 1",
                    self.probability
                ),
            ));
        }
        for (field, value) in [("times", self.times), ("every", self.every)] {
            if value == Some(0) {
                errors.push(FieldError::new(
                    at.key(field),
                    format!("{label}: {field} must be at least 1"),
                ));
            }
        }
        let sticky = match self.sticky.as_deref() {
            None => None,
            Some("client_ip") => Some(Sticky::ClientIp),
            Some(text) => match text
                .strip_prefix("header:")
                .map(|name| HeaderName::from_bytes(name.as_bytes()))
            {
                Some(Ok(name)) => Some(Sticky::Header(name)),
                _ => {
                    errors.push(FieldError::new(
                        at.key("sticky"),
                        format!(
                            "{label}: sticky {text:?} must be \"header:NAME\" or \"client_ip\""
                        ),
                    ));
                    None
                }
            },
        };
        let matcher = self.matcher.compile(upstream_names, &at.key("match"));
        let fault = self.fault.validate(base_dir, &at.key("fault"));
        // Name the rule in every message: a reader of `check` output looks for it.
        let mut named = |result_errors: Vec<FieldError>| {
            errors.extend(
                result_errors
                    .into_iter()
                    .map(|e| FieldError::new(e.field, format!("{label}: {}", e.message))),
            );
        };
        let (matcher, fault) = match (matcher, fault) {
            (Ok(m), Ok(f)) => (Some(m), Some(f)),
            (m, f) => {
                if let Err(e) = &m {
                    named(e.clone());
                }
                if let Err(e) = &f {
                    named(e.clone());
                }
                (m.ok(), f.ok())
            }
        };
        match (matcher, fault) {
            (Some(matcher), Some(fault)) if errors.is_empty() => Ok(Rule {
                name_header: HeaderValue::from_str(&self.name)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                salt: stable_hash(&self.name),
                counters: Arc::default(),
                times: self.times,
                every: self.every,
                sticky,
                spec: self,
                source,
                matcher,
                fault,
            }),
            _ => Err(errors),
        }
    }
}

/// FNV-1a: stable across runs and builds, unlike the std hasher.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The immutable rule snapshot one request reads.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    /// Per upstream index: the enabled rules that can apply to it.
    by_upstream: Vec<UpstreamRules>,
    /// Per upstream index: whether its dedicated port must refuse connections.
    refused: Vec<bool>,
    seed: u64,
    /// Fired by the kill switch: requests inside a fault of this snapshot
    /// stop waiting and are forwarded.
    release: Arc<Release>,
}

/// The kill switch's signal to the requests inside a snapshot's faults.
/// Checking it is one atomic load and sharing it one `Arc` count, so a
/// faulted request takes no lock unless it actually waits.
#[derive(Debug, Default)]
pub struct Release {
    released: AtomicBool,
    token: CancellationToken,
}

impl Release {
    /// Lets every waiting request go; later checks see it at once.
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Completes when the requests are let go.
    pub async fn released(&self) {
        self.token.cancelled().await;
    }

    /// [`Release::released`] as a future a body can keep.
    pub fn released_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

/// The enabled rules that can apply to one upstream, in evaluation order,
/// with their path globs joined into one set: a request's path is matched
/// once, however many rules there are.
#[derive(Debug, Default)]
pub struct UpstreamRules {
    rules: Box<[Candidate]>,
    /// Glob `i` is the path of `rules[path_owner[i]]`.
    paths: PathIndex,
    path_owner: Box<[usize]>,
    /// Indices of the rules with no path condition.
    pathless: Box<[usize]>,
}

/// A rule that can apply to an upstream, with its injected-fault counter
/// for that upstream resolved when the snapshot was built.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub rule: Arc<Rule>,
    pub injected: IntCounter,
}

impl UpstreamRules {
    fn new(rules: Vec<Candidate>) -> Self {
        let mut set = GlobSetBuilder::new();
        let mut path_owner = Vec::new();
        let mut pathless = Vec::new();
        for (i, candidate) in rules.iter().enumerate() {
            match candidate.rule.matcher.path_glob() {
                Some(glob) => {
                    set.add(glob.clone());
                    path_owner.push(i);
                }
                None => pathless.push(i),
            }
        }
        let paths = if path_owner.is_empty() {
            PathIndex::None
        } else {
            match set.build() {
                Ok(set) => PathIndex::Set(set),
                // Too large for one automaton: match glob by glob instead.
                Err(_) => PathIndex::Each(
                    path_owner
                        .iter()
                        .filter_map(|&i| rules[i].rule.matcher.path_glob())
                        .map(|glob| glob.compile_matcher())
                        .collect(),
                ),
            }
        };
        Self {
            rules: rules.into(),
            paths,
            path_owner: path_owner.into(),
            pathless: pathless.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules whose path condition holds for `path`, or that have none,
    /// in evaluation order.
    pub fn for_path(&self, path: &str) -> impl Iterator<Item = &Candidate> {
        // The common case, no path glob matching, walks the pathless rules
        // without allocating.
        let globs: Vec<usize> = match &self.paths {
            PathIndex::None => Vec::new(),
            PathIndex::Set(set) if set.is_match(path) => set.matches(path),
            PathIndex::Set(_) => Vec::new(),
            PathIndex::Each(matchers) => (0..matchers.len())
                .filter(|&i| matchers[i].is_match(path))
                .collect(),
        };
        let matched: Vec<usize> = if globs.is_empty() {
            globs
        } else {
            let mut owners: Vec<usize> = globs
                .into_iter()
                .map(|glob| self.path_owner[glob])
                .chain(self.pathless.iter().copied())
                .collect();
            owners.sort_unstable();
            owners
        };
        let indices = if matched.is_empty() {
            Indices::Pathless(self.pathless.iter())
        } else {
            Indices::Matched(matched.into_iter())
        };
        indices.map(|i| &self.rules[i])
    }
}

/// The path globs of an upstream's rules, ready to match.
#[derive(Debug, Default)]
enum PathIndex {
    #[default]
    None,
    Set(GlobSet),
    Each(Vec<globset::GlobMatcher>),
}

/// Rule indices to walk, without boxing an iterator per request.
enum Indices<'a> {
    Pathless(std::slice::Iter<'a, usize>),
    Matched(std::vec::IntoIter<usize>),
}

impl Iterator for Indices<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Indices::Pathless(indices) => indices.next().copied(),
            Indices::Matched(indices) => indices.next(),
        }
    }
}

impl RuleSet {
    /// `rules` in evaluation order: files sorted by path, rules in file order.
    /// Resolves each rule's metric handles and sets `faultline_rule_enabled`.
    pub fn new(
        rules: Vec<Arc<Rule>>,
        upstreams: &[UpstreamConfig],
        seed: u64,
        metrics: &Metrics,
    ) -> Self {
        for rule in &rules {
            metrics.set_rule_enabled(rule.name(), rule.enabled());
        }
        let by_upstream = upstreams
            .iter()
            .map(|upstream| {
                UpstreamRules::new(
                    rules
                        .iter()
                        .filter(|rule| rule.enabled() && rule.matcher.applies_to_upstream(upstream))
                        .map(|rule| Candidate {
                            injected: metrics.faults_injected(
                                rule.name(),
                                rule.fault.kind(),
                                upstream,
                            ),
                            rule: Arc::clone(rule),
                        })
                        .collect(),
                )
            })
            .collect();
        let refused = upstreams
            .iter()
            .map(|upstream| rules.iter().any(|rule| rule.refuses(upstream)))
            .collect();
        Self {
            rules,
            by_upstream,
            refused,
            seed,
            release: Arc::default(),
        }
    }

    /// The snapshot with the kill switch's signal: halting fires it.
    pub fn released_by(mut self, release: Arc<Release>) -> Self {
        self.release = release;
        self
    }

    /// Fired when the requests inside this snapshot's faults must be let go.
    pub fn release(&self) -> &Arc<Release> {
        &self.release
    }

    /// Every rule, enabled or not, in evaluation order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// The enabled rules that can apply to requests for this upstream.
    pub fn candidates(&self, upstream: usize) -> Option<&UpstreamRules> {
        self.by_upstream
            .get(upstream)
            .filter(|rules| !rules.is_empty())
    }

    /// Whether the upstream's dedicated port must refuse connections now.
    pub fn refuses(&self, upstream: usize) -> bool {
        self.refused.get(upstream).copied().unwrap_or(false)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_names_are_lowercase_slugs() {
        let spec: RuleSpec =
            toml::from_str("name = \"Bad Name\"\n[fault]\nkind = \"abort\"\nmode = \"reset\"")
                .unwrap();
        let errors = spec
            .validate(RuleSource::Api, Path::new("."), &[], &FieldPath::root())
            .unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "name: invalid rule name \"Bad Name\": use a-z, 0-9, '.', '_' and '-'"
        );
    }

    #[test]
    fn messages_name_the_rule() {
        let spec: RuleSpec = toml::from_str(
            "name = \"slow\"\nprobability = 1.5\n[fault]\nkind = \"error\"\nstatus = 1000",
        )
        .unwrap();
        let errors = spec
            .validate(RuleSource::Api, Path::new("."), &[], &FieldPath::root())
            .unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            vec![
                "probability: rule \"slow\": probability 1.5 is not between 0 and 1",
                "fault.status: rule \"slow\": status 1000 is not an HTTP status from 200 to 599",
            ]
        );
    }

    #[test]
    fn hashes_are_stable() {
        // Seeded runs replay only while these stay the same.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("use1-brownout-503"), 0x7a39_d393_ad99_f4b5);
        assert_ne!(stable_hash("a"), stable_hash("b"));
    }
}
