//! Which requests are affected: the rule schema (README "Rules"), its pure
//! validation into a [`Rule`], matching ([`Matcher`]), and the immutable
//! [`RuleSet`] snapshot the request path reads.
//!
//! A snapshot resolves, once, which enabled rules can apply to each upstream
//! (upstream names and labels are static), so a request only checks the
//! rules of its own upstream, in evaluation order. Reading rule files is the
//! load step's ([`crate::book`]); runtime switches are [`crate::control`]'s,
//! and reach the snapshot as [`LiveRule`]s, never written into a [`Rule`].

mod matcher;
mod snapshot;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::config::is_valid_name;
use crate::diagnostic::{FieldError, FieldPath};
use crate::fault::{BodySource, Fault, FaultKind, FaultSpec};

pub use matcher::{
    AwsCondition, AwsMatchSpec, DnsMatchSpec, DnsMatcher, MatchSpec, Matcher, UpstreamIdentity,
};
pub use snapshot::{Candidate, LiveRule, RuleSet, UpstreamRules};

/// The longest rule name: it rides on responses as `x-faultline-rule`, in
/// URLs of the admin API and in metric labels.
pub const MAX_NAME_LEN: usize = 128;

/// One rule as written, in a file or an API body.
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

/// A validated rule, as defined. Runtime switches never change it: they
/// live in [`crate::control`] and reach requests through [`LiveRule`].
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub source: RuleSource,
    /// The definition's own switch and probability, before any runtime change.
    pub enabled: bool,
    pub probability: f64,
    pub matcher: Matcher,
    pub fault: Fault,
    /// The fault as written: what the API shows, and what a scenario's
    /// patch is laid over.
    pub fault_spec: FaultSpec,
    pub turns: Turns,
    pub sticky: Option<Sticky>,
    /// The rule's name as a header value, for `x-faultline-rule`.
    pub(crate) name_header: HeaderValue,
    /// Keeps each rule's random stream apart and stable across edits of other rules.
    pub(crate) salt: u64,
    /// Shared by every snapshot's copy of the rule, so a toggle or a reload
    /// that leaves the rule as it was keeps its counts.
    pub counters: Arc<RuleCounters>,
}

/// Which matching requests a rule may take: `times` and `every`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turns {
    /// Inject at most this many times since the rule was last enabled.
    pub times: Option<u64>,
    /// Only every Nth matching request.
    pub every: Option<u64>,
}

/// What a sticky rule hashes to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(HeaderName),
    ClientIp,
}

impl fmt::Display for Sticky {
    /// As written in a rule file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Header(name) => write!(f, "header:{name}"),
            Sticky::ClientIp => f.write_str("client_ip"),
        }
    }
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
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same rule with another fault (a scenario's `set`); it shares
    /// this one's counters.
    pub fn with_fault(&self, fault_spec: FaultSpec, fault: Fault) -> Rule {
        Rule {
            fault_spec,
            fault,
            ..self.clone_sharing_counters()
        }
    }

    /// A copy that shares this rule's counters.
    fn clone_sharing_counters(&self) -> Rule {
        Rule {
            name: self.name.clone(),
            description: self.description.clone(),
            source: self.source.clone(),
            enabled: self.enabled,
            probability: self.probability,
            matcher: self.matcher.clone(),
            fault: self.fault.clone(),
            fault_spec: self.fault_spec.clone(),
            turns: self.turns,
            sticky: self.sticky.clone(),
            name_header: self.name_header.clone(),
            salt: self.salt,
            counters: Arc::clone(&self.counters),
        }
    }

    /// The same definition with `counters`: a reloaded rule keeps its counts.
    pub fn with_counters(&self, counters: Arc<RuleCounters>) -> Rule {
        Rule {
            counters,
            ..self.clone_sharing_counters()
        }
    }

    /// Whether `other` defines the same rule: the same text, and for an
    /// `error` fault the same body (a `body_file` may have changed).
    pub fn same_definition(&self, other: &Rule) -> bool {
        let same_body = match (&self.fault, &other.fault) {
            (Fault::Respond(mine), Fault::Respond(theirs)) => mine.body == theirs.body,
            _ => true,
        };
        self.name == other.name
            && self.description == other.description
            && self.source == other.source
            && self.enabled == other.enabled
            && self.probability == other.probability
            && self.matcher.spec() == other.matcher.spec()
            && self.fault_spec == other.fault_spec
            && self.turns == other.turns
            && self.sticky == other.sticky
            && same_body
    }
}

impl Rule {
    /// Whether the rule means something to `upstream`'s traffic: a TCP
    /// upstream takes TCP faults from rules without request conditions
    /// (path, methods, headers, a sticky header); an HTTP one takes every
    /// fault but the TCP-only ones. A rule that selects both kinds of
    /// upstream (a region's label) acts where it fits.
    pub fn fits(&self, upstream: UpstreamIdentity<'_>) -> bool {
        if upstream.tcp {
            self.matcher.takes_every_request()
                && !matches!(self.sticky, Some(Sticky::Header(_)))
                && self.fault.fits_tcp()
        } else {
            self.fault.fits_http()
        }
    }

    /// What keeps this rule from acting on any upstream it selects, when
    /// it selects some and fits none of them (SPEC §9: rules that select
    /// TCP upstreams match on `upstreams` and `labels` only, and take TCP
    /// kinds); `None` when it fits one, or selects none.
    pub fn misfit(&self, upstreams: &[UpstreamIdentity<'_>]) -> Option<String> {
        let selected: Vec<&UpstreamIdentity<'_>> = upstreams
            .iter()
            .filter(|u| self.matcher.applies_to_upstream(**u))
            .collect();
        if selected.is_empty() || selected.iter().any(|u| self.fits(**u)) {
            return None;
        }
        let label = format!("rule {:?}", shorten(&self.name));
        if selected.iter().all(|u| u.tcp) {
            let spec = self.matcher.spec();
            let mut http_only: Vec<&str> = Vec::new();
            if !spec.methods.is_empty() {
                http_only.push("match.methods");
            }
            if spec.path.is_some() {
                http_only.push("match.path");
            }
            if !spec.headers.is_empty() {
                http_only.push("match.headers");
            }
            if matches!(self.sticky, Some(Sticky::Header(_))) {
                http_only.push("sticky = \"header:…\"");
            }
            if !http_only.is_empty() {
                return Some(format!(
                    "{label} selects only tcp:// upstreams, which have no HTTP requests: {} cannot match (a TCP rule matches on `upstreams` and `labels` only)",
                    http_only.join(", ")
                ));
            }
            return Some(format!(
                "{label} selects only tcp:// upstreams, and kind = \"{}\" {} does not apply to a TCP connection (TCP takes latency, bandwidth, slice, truncate, abort reset or close, unavailable blackhole or refuse, slow_close)",
                self.fault.kind(),
                tcp_misfit_detail(&self.fault)
            ));
        }
        if selected.iter().all(|u| !u.tcp) {
            return Some(format!(
                "{label} selects only HTTP upstreams, and its fault (kind = \"{}\"{}) is for tcp:// upstreams",
                self.fault.kind(),
                if matches!(self.fault, Fault::Slice { .. } | Fault::SlowClose { .. }) {
                    ""
                } else {
                    ", with `direction` or `after`"
                }
            ));
        }
        Some(format!(
            "{label} fits none of the upstreams it selects: its fault is for HTTP where they are TCP, and for TCP where they are HTTP"
        ))
    }
}

/// Why a fault does not fit TCP, in the words of its fields.
fn tcp_misfit_detail(fault: &Fault) -> &'static str {
    match fault {
        Fault::Latency { .. } => "with side = \"response\"",
        Fault::Abort { .. } => "with this mode",
        Fault::Respond(_) => "(an HTTP answer)",
        _ => "",
    }
}

/// Whether `name` may name a rule or a scenario: a lowercase slug of at most
/// [`MAX_NAME_LEN`] characters. The message says why not.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ));
    }
    if name.is_empty() || !is_valid_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "invalid {what} name {name:?}: use a-z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl RuleSpec {
    /// Validates the rule. Pure: `bodies` holds the `body_file`s the load
    /// step read; `upstream_names` catches references to upstreams that do
    /// not exist.
    pub fn validate(
        self,
        source: RuleSource,
        bodies: BodySource<'_>,
        upstream_names: &[&str],
        at: &FieldPath,
    ) -> Result<Rule, Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Err(message) = check_name("rule", &self.name) {
            errors.push(FieldError::new(at.key("name"), message));
        }
        // A name too long to print whole is cut in every later message.
        let label = format!("rule {:?}", shorten(&self.name));
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
        // Name the rule in every message: a reader of `check` output looks for it.
        let named = |problems: Vec<FieldError>| {
            problems
                .into_iter()
                .map(|e| FieldError::new(e.field, format!("{label}: {}", e.message)))
        };
        let matcher = self
            .matcher
            .compile(upstream_names, &at.key("match"))
            .map_err(|problems| errors.extend(named(problems)))
            .ok();
        let fault = self
            .fault
            .validate(bodies, &at.key("fault"))
            .map_err(|problems| errors.extend(named(problems)))
            .ok();
        // A DNS query takes a `dns` answer or a delay; an HTTP request never a `dns` answer.
        match (self.matcher.dns.is_some(), self.fault.kind) {
            (false, FaultKind::Dns) => errors.push(FieldError::new(
                at.key("match"),
                format!("{label}: kind = \"dns\" needs `dns = {{ name = \"…\" }}` in [rule.match]"),
            )),
            (true, kind) if kind != FaultKind::Dns && kind != FaultKind::Latency => {
                errors.push(FieldError::new(
                    at.key("fault").key("kind"),
                    format!("{label}: a rule that matches `dns` takes kind = \"dns\" or \"latency\", not {kind:?}", kind = kind.name()),
                ))
            }
            _ => {}
        }
        match (matcher, fault) {
            (Some(matcher), Some(fault)) if errors.is_empty() => Ok(Rule {
                name_header: HeaderValue::from_str(&self.name)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                salt: fnv1a(self.name.as_bytes()),
                counters: Arc::default(),
                turns: Turns {
                    times: self.times,
                    every: self.every,
                },
                sticky,
                enabled: self.enabled,
                probability: self.probability,
                name: self.name,
                description: self.description,
                source,
                matcher,
                fault,
                fault_spec: self.fault,
            }),
            _ => Err(errors),
        }
    }
}

/// At most the first 40 characters of a name, for messages.
fn shorten(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    }
}

/// FNV-1a: stable across runs and builds, unlike the std hasher. Seeded
/// decisions replay only while it stays the same.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    fn validate(text: &str) -> Result<Rule, Vec<String>> {
        let spec: RuleSpec = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let source = BodySource::inline();
        spec.validate(RuleSource::Api, source, &[], &FieldPath::root())
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn rule_names_are_lowercase_slugs() {
        let errors = validate("name = \"Bad Name\"\n[fault]\nkind = \"abort\"\nmode = \"reset\"")
            .unwrap_err();
        assert_eq!(
            errors[0],
            "name: invalid rule name \"Bad Name\": use a-z, 0-9, '.', '_' and '-'"
        );
    }

    #[test]
    fn rule_names_have_a_length_limit() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let errors = validate(&format!(
            "name = \"{long}\"\n[fault]\nkind = \"abort\"\nmode = \"reset\""
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            vec![format!(
                "name: rule name is {} characters long; at most {MAX_NAME_LEN} are allowed",
                MAX_NAME_LEN + 1
            )]
        );
        let longest = "a".repeat(MAX_NAME_LEN);
        assert!(validate(&format!(
            "name = \"{longest}\"\n[fault]\nkind = \"abort\"\nmode = \"reset\""
        ))
        .is_ok());
    }

    #[test]
    fn messages_name_the_rule() {
        let errors = validate(
            "name = \"slow\"\nprobability = 1.5\n[fault]\nkind = \"error\"\nstatus = 1000",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "probability: rule \"slow\": probability 1.5 is not between 0 and 1",
                "fault.status: rule \"slow\": status 1000 is not an HTTP status from 200 to 599",
            ]
        );
    }

    #[test]
    fn validation_reads_no_file() {
        let errors = validate(
            "name = \"teapot\"\n[fault]\nkind = \"error\"\nstatus = 418\nbody_file = \"Cargo.toml\"",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec!["fault.body_file: rule \"teapot\": body_file \"./Cargo.toml\" was not read with the rule file"]
        );
    }

    #[test]
    fn dns_rules_take_dns_answers_and_delays_only() {
        assert!(validate(
            "name = \"d\"\n[match]\ndns = { name = \"*.test\" }\n[fault]\nkind = \"latency\"\ndelay = \"1s\""
        )
        .is_ok());
        assert_eq!(
            validate("name = \"d\"\n[fault]\nkind = \"dns\"\nanswer = \"nodata\"").unwrap_err(),
            ["match: rule \"d\": kind = \"dns\" needs `dns = { name = \"…\" }` in [rule.match]"]
        );
        assert_eq!(
            validate("name = \"d\"\n[match]\ndns = { name = \"*.test\" }\n[fault]\nkind = \"error\"\nstatus = 500")
                .unwrap_err(),
            ["fault.kind: rule \"d\": a rule that matches `dns` takes kind = \"dns\" or \"latency\", not \"error\""]
        );
    }

    #[test]
    fn hashes_are_stable() {
        // Seeded runs replay only while these stay the same.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"use1-brownout-503"), 0x7a39_d393_ad99_f4b5);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
