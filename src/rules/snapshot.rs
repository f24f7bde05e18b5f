//! The immutable rule snapshot one request reads: for each upstream, the
//! enabled rules that can apply to it, in evaluation order, with their path
//! globs joined into one set.

use std::sync::Arc;

use globset::{GlobSet, GlobSetBuilder};

use super::{Rule, Turns, UpstreamIdentity};
use crate::fault::Fault;

/// The immutable rule snapshot one request reads.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<LiveRule>,
    /// Per upstream index: the enabled rules that can apply to it.
    by_upstream: Vec<UpstreamRules>,
    /// Per upstream index: whether its dedicated port must refuse connections.
    refused: Vec<bool>,
    /// The enabled rules that match DNS queries (`match.dns`), in evaluation order.
    dns: Box<[Candidate]>,
    seed: u64,
}

/// A rule as the request path sees it: the definition, and the switches
/// in force now (the definition's own, a runtime change or a scenario's).
#[derive(Debug, Clone)]
pub struct LiveRule {
    pub rule: Arc<Rule>,
    pub enabled: bool,
    pub probability: f64,
}

impl LiveRule {
    /// The rule with the switches its definition gives.
    pub fn as_defined(rule: Arc<Rule>) -> Self {
        Self {
            enabled: rule.enabled,
            probability: rule.probability,
            rule,
        }
    }

    /// Whether this rule makes the upstream refuse every connection: an
    /// enabled `refuse` fault that takes every request, every time.
    pub fn refuses(&self, upstream: UpstreamIdentity<'_>) -> bool {
        matches!(self.rule.fault, Fault::Refuse)
            && self.enabled
            && self.probability >= 1.0
            && self.rule.turns == Turns::default()
            && self.rule.matcher.takes_every_request()
            && self.rule.matcher.applies_to_upstream(upstream)
            && self.rule.fits(upstream)
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
    /// Whether a rule asks for the AWS operation, which the query protocol
    /// carries in a form body: only then does the proxy read one.
    reads_form: bool,
}

/// An enabled rule that can apply to an upstream, with the probability in force.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub rule: Arc<Rule>,
    pub probability: f64,
    /// The rule's position in [`RuleSet::rules`].
    pub index: usize,
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
        let reads_form = rules.iter().any(|candidate| {
            candidate
                .rule
                .matcher
                .aws()
                .is_some_and(|aws| aws.needs_operation())
        });
        Self {
            rules: rules.into(),
            paths,
            path_owner: path_owner.into(),
            pathless: pathless.into(),
            reads_form,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule here matches on the AWS operation: a form-urlencoded
    /// request body is then read before deciding (README "AWS-aware rules").
    pub fn reads_form(&self) -> bool {
        self.reads_form
    }

    /// Every rule that can apply to the upstream, in evaluation order (the
    /// order of [`UpstreamRules::get`]'s indices).
    pub fn iter(&self) -> impl Iterator<Item = &Candidate> {
        self.rules.iter()
    }

    /// The `i`-th rule, in evaluation order.
    pub fn get(&self, i: usize) -> Option<&Candidate> {
        self.rules.get(i)
    }

    /// The rules whose path condition holds for `path`, or that have none,
    /// in evaluation order, each with its index.
    pub fn for_path(&self, path: &str) -> impl Iterator<Item = (usize, &Candidate)> {
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
        indices.map(|i| (i, &self.rules[i]))
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
    /// `rules` in evaluation order: files sorted by path, rules in file
    /// order, then rules added through the API. Pure: metric handles are
    /// resolved apart from it, by whoever publishes the snapshot.
    pub fn new<'a>(
        rules: Vec<LiveRule>,
        upstreams: impl IntoIterator<Item = UpstreamIdentity<'a>>,
        seed: u64,
    ) -> Self {
        let upstreams: Vec<UpstreamIdentity<'a>> = upstreams.into_iter().collect();
        let by_upstream = upstreams
            .iter()
            .map(|&upstream| {
                UpstreamRules::new(
                    rules
                        .iter()
                        .enumerate()
                        .filter(|(_, live)| {
                            live.enabled
                                && live.rule.matcher.applies_to_upstream(upstream)
                                && live.rule.fits(upstream)
                        })
                        .map(|(index, live)| Candidate {
                            rule: Arc::clone(&live.rule),
                            probability: live.probability,
                            index,
                        })
                        .collect(),
                )
            })
            .collect();
        let refused = upstreams
            .iter()
            .map(|&upstream| rules.iter().any(|live| live.refuses(upstream)))
            .collect();
        let dns = rules
            .iter()
            .enumerate()
            .filter(|(_, live)| live.enabled && live.rule.matcher.dns().is_some())
            .map(|(index, live)| Candidate {
                rule: Arc::clone(&live.rule),
                probability: live.probability,
                index,
            })
            .collect();
        Self {
            rules,
            by_upstream,
            refused,
            dns,
            seed,
        }
    }

    /// Every rule, enabled or not, in evaluation order.
    pub fn rules(&self) -> &[LiveRule] {
        &self.rules
    }

    /// The enabled rules that can apply to requests for this upstream.
    pub fn candidates(&self, upstream: usize) -> Option<&UpstreamRules> {
        self.by_upstream
            .get(upstream)
            .filter(|rules| !rules.is_empty())
    }

    /// The enabled rules that match DNS queries, in evaluation order; empty
    /// (one length check) while no DNS rule is on.
    pub fn dns_candidates(&self) -> &[Candidate] {
        &self.dns
    }

    /// Whether the upstream's dedicated port must refuse connections now.
    pub fn refuses(&self, upstream: usize) -> bool {
        self.refused.get(upstream).copied().unwrap_or(false)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }
}
