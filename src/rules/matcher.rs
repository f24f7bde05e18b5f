//! The `[rule.match]` conditions, compiled.
//!
//! Upstream names and labels depend only on the upstream, so they are decided
//! once per rule snapshot ([`Matcher::applies_to_upstream`]); methods, path
//! and headers are checked per request ([`Matcher::matches_method_and_headers`]),
//! and so is `aws` ([`AwsCondition::matches`]), on the request's
//! [`crate::aws::Facts`], which the planner works out only for a rule that asks.

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::aws::Facts;
use crate::config::UpstreamConfig;
use crate::diagnostic::{FieldError, FieldPath};

/// `[rule.match]` as written. Every condition given must hold; none matches all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Upstream names; globs allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    /// Upstream labels; glob values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Glob on the path: `*` stays within a segment, `**` crosses segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Values: exact, or a glob when they hold `*`, `?`, `[` or `{`;
    /// `"*"` alone means the header is present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// What AWS calls the request (SPEC §8): service, operation, region; globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsMatchSpec>,
    /// DNS queries rather than HTTP requests: a name glob and record types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsMatchSpec>,
}

/// `match.dns`: which DNS queries a rule takes (README "DNS").
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsMatchSpec {
    /// A glob over the query name, case-insensitive, without the final
    /// dot: `*` stays within a label, `**` crosses labels.
    pub name: String,
    /// Record types such as `A`, `AAAA`, `TXT`; none means every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
}

/// `match.dns`, compiled.
#[derive(Debug, Clone)]
pub struct DnsMatcher {
    name: NameMatch,
    /// Record type codes; empty takes every type.
    types: Vec<u16>,
}

/// A name glob; a plain name (the common case) is compared as a string,
/// without the glob's regex.
#[derive(Debug, Clone)]
enum NameMatch {
    Exact(String),
    Glob(GlobMatcher),
}

impl DnsMatcher {
    /// Whether a query for `name` (lowercase, no final dot) of type `qtype` matches.
    pub fn matches(&self, name: &str, qtype: u16) -> bool {
        (self.types.is_empty() || self.types.contains(&qtype))
            && match &self.name {
                NameMatch::Exact(exact) => exact == name,
                NameMatch::Glob(glob) => glob.is_match(name),
            }
    }
}

/// The record types `match.dns.types` may name, with their codes.
const RECORD_TYPES: [(&str, u16); 14] = [
    ("A", 1),
    ("NS", 2),
    ("CNAME", 5),
    ("SOA", 6),
    ("PTR", 12),
    ("MX", 15),
    ("TXT", 16),
    ("AAAA", 28),
    ("SRV", 33),
    ("NAPTR", 35),
    ("DS", 43),
    ("SVCB", 64),
    ("HTTPS", 65),
    ("ANY", 255),
];

impl DnsMatchSpec {
    fn compile(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Option<DnsMatcher> {
        let pattern = self.name.trim_end_matches('.').to_ascii_lowercase();
        if pattern.is_empty() {
            errors.push(FieldError::new(
                at.key("name"),
                "dns.name must name a domain (a glob such as \"*.amazonaws.com\")",
            ));
        }
        let name = GlobBuilder::new(&pattern)
            .literal_separator(false)
            .case_insensitive(true)
            .build()
            .map_err(|e| {
                errors.push(FieldError::new(
                    at.key("name"),
                    format!("invalid name glob {:?}: {}", self.name, e.kind()),
                ))
            })
            .ok()
            .map(|glob| glob.compile_matcher());
        let mut types = Vec::new();
        for (i, text) in self.types.iter().enumerate() {
            match RECORD_TYPES
                .iter()
                .find(|(known, _)| known.eq_ignore_ascii_case(text))
            {
                Some((_, code)) => types.push(*code),
                None => errors.push(FieldError::new(
                    at.key("types").index(i),
                    format!(
                        "unknown record type {text:?}; expected one of {}",
                        RECORD_TYPES.map(|(n, _)| n).join(", ")
                    ),
                )),
            }
        }
        let name = if pattern.contains(['*', '?', '[', '{', '\\']) {
            NameMatch::Glob(name?)
        } else {
            NameMatch::Exact(pattern)
        };
        Some(DnsMatcher { name, types })
    }
}

/// `match.aws` as written; each field optional, each a glob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsMatchSpec {
    /// The SigV4 signing name (`dynamodb`, `s3`, `lambda`), else the host's endpoint prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `PutItem`, `Invoke`, `GetObject`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `match.aws`, compiled: each given glob must match the request's fact;
/// a request with no such fact (not an AWS request) does not match.
#[derive(Debug, Clone)]
pub struct AwsCondition {
    service: Option<GlobMatcher>,
    operation: Option<GlobMatcher>,
    region: Option<GlobMatcher>,
}

impl AwsCondition {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let holds = |glob: &Option<GlobMatcher>, fact: Option<&str>| {
            glob.as_ref()
                .is_none_or(|glob| fact.is_some_and(|fact| glob.is_match(fact)))
        };
        holds(&self.service, facts.service)
            && holds(&self.region, facts.region)
            && holds(&self.operation, facts.operation)
    }

    /// Whether the condition needs the operation, which for the query
    /// protocol may be in a form body.
    pub fn needs_operation(&self) -> bool {
        self.operation.is_some()
    }
}

/// What a rule knows of an upstream: its name and labels.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamIdentity<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// A `tcp://` upstream: only TCP faults, and no request conditions.
    pub tcp: bool,
}

impl<'a> From<&'a UpstreamConfig> for UpstreamIdentity<'a> {
    fn from(upstream: &'a UpstreamConfig) -> Self {
        Self {
            name: &upstream.name,
            labels: &upstream.labels,
            tcp: upstream.is_tcp(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    /// As written, for views and for comparing definitions.
    spec: MatchSpec,
    upstreams: Option<GlobSet>,
    labels: Vec<(String, GlobMatcher)>,
    methods: Vec<Method>,
    /// Kept as a glob so a snapshot can join every rule's path into one set.
    path: Option<Glob>,
    headers: Vec<(HeaderName, HeaderCondition)>,
    dns: Option<DnsMatcher>,
    aws: Option<AwsCondition>,
}

#[derive(Debug, Clone)]
enum HeaderCondition {
    Present,
    Equals(HeaderValue),
    /// Matched against each value that is text (a value that is not
    /// UTF-8 never matches a glob).
    Glob(GlobMatcher),
}

impl MatchSpec {
    /// Compiles the conditions; `upstream_names` catches references to
    /// upstreams that do not exist (plain names only: a glob may match later).
    pub fn compile(
        &self,
        upstream_names: &[&str],
        at: &FieldPath,
    ) -> Result<Matcher, Vec<FieldError>> {
        let mut errors = Vec::new();

        let upstreams = if self.upstreams.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for (i, pattern) in self.upstreams.iter().enumerate() {
                let is_glob = pattern.contains(['*', '?', '[', '{']);
                if !is_glob && !upstream_names.contains(&pattern.as_str()) {
                    errors.push(FieldError::new(
                        at.key("upstreams").index(i),
                        format!("no upstream is named {pattern:?}"),
                    ));
                }
                match Glob::new(pattern) {
                    Ok(glob) => {
                        set.add(glob);
                    }
                    Err(e) => errors.push(FieldError::new(
                        at.key("upstreams").index(i),
                        format!("invalid glob {pattern:?}: {}", e.kind()),
                    )),
                }
            }
            match set.build() {
                Ok(set) => Some(set),
                Err(e) => {
                    errors.push(FieldError::new(
                        at.key("upstreams"),
                        format!(
                            "these upstream globs are too complex together: {}",
                            e.kind()
                        ),
                    ));
                    None
                }
            }
        };

        let mut labels = Vec::new();
        for (key, pattern) in &self.labels {
            match Glob::new(pattern) {
                Ok(glob) => labels.push((key.clone(), glob.compile_matcher())),
                Err(e) => errors.push(FieldError::new(
                    at.key("labels").key(key.as_str()),
                    format!("invalid glob {pattern:?}: {}", e.kind()),
                )),
            }
        }

        let mut methods = Vec::new();
        for (i, method) in self.methods.iter().enumerate() {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => errors.push(FieldError::new(
                    at.key("methods").index(i),
                    format!("invalid method {method:?}"),
                )),
            }
        }

        let path = self.path.as_deref().and_then(|pattern| {
            if !pattern.starts_with('/') && !pattern.starts_with('*') {
                errors.push(FieldError::new(
                    at.key("path"),
                    format!("path glob {pattern:?} must start with '/'"),
                ));
                return None;
            }
            GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    errors.push(FieldError::new(
                        at.key("path"),
                        format!("invalid path glob {pattern:?}: {}", e.kind()),
                    ))
                })
                .ok()
        });

        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let field = at.key("headers").key(name.as_str());
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                errors.push(FieldError::new(
                    field,
                    format!("invalid header name {name:?}"),
                ));
                continue;
            };
            let condition = if value == "*" {
                HeaderCondition::Present
            } else if value.contains(['*', '?', '[', '{']) {
                match Glob::new(value) {
                    Ok(glob) => HeaderCondition::Glob(glob.compile_matcher()),
                    Err(e) => {
                        errors.push(FieldError::new(
                            field,
                            format!(
                                "invalid glob {value:?} for header {name:?}: {} (write [*] for a literal *)",
                                e.kind()
                            ),
                        ));
                        continue;
                    }
                }
            } else {
                match HeaderValue::from_str(value) {
                    Ok(v) => HeaderCondition::Equals(v),
                    Err(_) => {
                        errors.push(FieldError::new(
                            field,
                            format!("invalid value for header {name:?}"),
                        ));
                        continue;
                    }
                }
            };
            headers.push((header, condition));
        }

        let dns = self.dns.as_ref().and_then(|dns| {
            let at = at.key("dns");
            let http = [
                ("upstreams", !self.upstreams.is_empty()),
                ("labels", !self.labels.is_empty()),
                ("methods", !self.methods.is_empty()),
                ("path", self.path.is_some()),
                ("headers", !self.headers.is_empty()),
                ("aws", self.aws.is_some()),
            ];
            for (field, given) in http {
                if given {
                    errors.push(FieldError::new(
                        at.clone(),
                        format!("a DNS query has no {field}: `dns` goes alone in [rule.match]"),
                    ));
                }
            }
            dns.compile(&at, &mut errors)
        });

        let aws = self.aws.as_ref().map(|spec| {
            let at = at.key("aws");
            if *spec == AwsMatchSpec::default() {
                errors.push(FieldError::new(
                    at.clone(),
                    "give at least one of `service`, `operation`, `region`",
                ));
            }
            let mut glob = |field: &str, pattern: &Option<String>| {
                let pattern = pattern.as_deref()?;
                Glob::new(pattern)
                    .map(|glob| glob.compile_matcher())
                    .map_err(|e| {
                        errors.push(FieldError::new(
                            at.key(field),
                            format!("invalid glob {pattern:?}: {}", e.kind()),
                        ))
                    })
                    .ok()
            };
            AwsCondition {
                service: glob("service", &spec.service),
                operation: glob("operation", &spec.operation),
                region: glob("region", &spec.region),
            }
        });

        if errors.is_empty() {
            Ok(Matcher {
                spec: self.clone(),
                upstreams,
                labels,
                methods,
                path,
                headers,
                dns,
                aws,
            })
        } else {
            Err(errors)
        }
    }
}

impl Matcher {
    /// The conditions as written.
    pub fn spec(&self) -> &MatchSpec {
        &self.spec
    }

    /// `match.dns`: a rule for DNS queries, never for an upstream's requests.
    pub fn dns(&self) -> Option<&DnsMatcher> {
        self.dns.as_ref()
    }

    /// The conditions that depend on the upstream alone; a DNS rule
    /// applies to no upstream.
    pub fn applies_to_upstream(&self, upstream: UpstreamIdentity<'_>) -> bool {
        if self.dns.is_some() {
            return false;
        }
        if let Some(set) = &self.upstreams {
            if !set.is_match(upstream.name) {
                return false;
            }
        }
        self.labels.iter().all(|(key, glob)| {
            upstream
                .labels
                .get(key)
                .is_some_and(|value| glob.is_match(value))
        })
    }

    /// Whether the rule takes every request of the upstreams it applies to.
    pub fn takes_every_request(&self) -> bool {
        self.methods.is_empty()
            && self.path.is_none()
            && self.headers.is_empty()
            && self.aws.is_none()
    }

    /// `match.aws`, which the caller checks on the request's facts.
    pub fn aws(&self) -> Option<&AwsCondition> {
        self.aws.as_ref()
    }

    /// The path glob, which [`crate::rules::RuleSet`] matches for all of an
    /// upstream's rules in one pass.
    pub fn path_glob(&self) -> Option<&Glob> {
        self.path.as_ref()
    }

    /// The conditions that depend on the request, but the path: the caller
    /// has matched [`Matcher::path_glob`] already.
    pub fn matches_method_and_headers(&self, method: &Method, headers: &HeaderMap) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers
            .iter()
            .all(|(name, condition)| match condition {
                HeaderCondition::Present => headers.contains_key(name),
                HeaderCondition::Equals(expected) => {
                    headers.get_all(name).iter().any(|v| v == expected)
                }
                HeaderCondition::Glob(glob) => headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|v| glob.is_match(v))),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(spec: MatchSpec) -> Matcher {
        spec.compile(&["lambda-use1", "lambda-usw2"], &FieldPath::root())
            .unwrap()
    }

    impl Matcher {
        fn matches_request(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
            self.path_glob()
                .is_none_or(|g| g.compile_matcher().is_match(path))
                && self.matches_method_and_headers(method, headers)
        }
    }

    fn applies(m: &Matcher, name: &str, region: &str) -> bool {
        let labels = [("region".to_owned(), region.to_owned())].into();
        m.applies_to_upstream(UpstreamIdentity {
            name,
            labels: &labels,
            tcp: false,
        })
    }

    #[test]
    fn upstream_names_and_label_globs() {
        let m = compile(MatchSpec {
            upstreams: vec!["lambda-*".into()],
            labels: [("region".to_owned(), "us-east-*".to_owned())].into(),
            ..Default::default()
        });
        assert!(applies(&m, "lambda-use1", "us-east-1"));
        assert!(!applies(&m, "lambda-usw2", "us-west-2"));
        assert!(!applies(&m, "orders-use1", "us-east-1"));
    }

    #[test]
    fn a_single_star_stays_in_one_segment() {
        let m = compile(MatchSpec {
            path: Some("/2015-03-31/functions/*".into()),
            ..Default::default()
        });
        let headers = HeaderMap::new();
        assert!(m.matches_request(&Method::GET, "/2015-03-31/functions/f", &headers));
        assert!(!m.matches_request(
            &Method::GET,
            "/2015-03-31/functions/f/invocations",
            &headers
        ));
        let m = compile(MatchSpec {
            path: Some("/2015-03-31/**".into()),
            ..Default::default()
        });
        assert!(m.matches_request(
            &Method::GET,
            "/2015-03-31/functions/f/invocations",
            &headers
        ));
    }

    #[test]
    fn methods_and_headers() {
        let m = compile(MatchSpec {
            methods: vec!["post".into()],
            headers: [
                ("x-tenant".to_owned(), "blue".to_owned()),
                ("x-trace".to_owned(), "*".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("blue"));
        assert!(
            !m.matches_request(&Method::POST, "/", &headers),
            "x-trace missing"
        );
        headers.insert("x-trace", HeaderValue::from_static("anything"));
        assert!(m.matches_request(&Method::POST, "/", &headers));
        assert!(!m.matches_request(&Method::GET, "/", &headers));
        headers.insert("x-tenant", HeaderValue::from_static("green"));
        assert!(!m.matches_request(&Method::POST, "/", &headers));
    }

    #[test]
    fn dns_names_match_by_glob_and_type() {
        let m = compile(MatchSpec {
            dns: Some(DnsMatchSpec {
                name: "DynamoDB.*.amazonaws.com.".into(),
                types: vec!["a".into(), "AAAA".into()],
            }),
            ..Default::default()
        });
        let dns = m.dns().unwrap();
        assert!(dns.matches("dynamodb.us-east-1.amazonaws.com", 1));
        assert!(dns.matches("dynamodb.us-east-1.amazonaws.com", 28));
        assert!(!dns.matches("dynamodb.us-east-1.amazonaws.com", 16), "TXT");
        assert!(!dns.matches("sts.us-east-1.amazonaws.com", 1));
        assert!(!applies(&m, "lambda-use1", "us-east-1"), "no upstream");
        let errors = MatchSpec {
            dns: Some(DnsMatchSpec {
                name: "x.test".into(),
                types: vec!["AXFR?".into()],
            }),
            methods: vec!["GET".into()],
            ..Default::default()
        }
        .compile(&[], &FieldPath::root().key("match"))
        .unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages[0],
            "match.dns: a DNS query has no methods: `dns` goes alone in [rule.match]"
        );
        assert!(messages[1].starts_with("match.dns.types[0]: unknown record type \"AXFR?\""));
    }

    #[test]
    fn header_values_may_be_globs() {
        let m = compile(MatchSpec {
            headers: [("x-amz-target".to_owned(), "DynamoDB_*.Put*".to_owned())].into(),
            ..Default::default()
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.PutItem"),
        );
        assert!(m.matches_request(&Method::POST, "/", &headers));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.GetItem"),
        );
        assert!(!m.matches_request(&Method::POST, "/", &headers));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_bytes(b"DynamoDB_\xff.Put").unwrap(),
        );
        assert!(!m.matches_request(&Method::POST, "/", &headers));
        let errors = MatchSpec {
            headers: [("x-a".to_owned(), "[".to_owned())].into(),
            ..Default::default()
        }
        .compile(&[], &FieldPath::root().key("match"))
        .unwrap_err();
        assert!(
            errors[0]
                .to_string()
                .starts_with("match.headers.x-a: invalid glob \"[\" for header \"x-a\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn aws_conditions_match_the_requests_facts() {
        let m = compile(MatchSpec {
            aws: Some(AwsMatchSpec {
                service: Some("dynamodb".into()),
                operation: Some("Put*".into()),
                region: Some("us-east-*".into()),
            }),
            ..Default::default()
        });
        assert!(!m.takes_every_request());
        let aws = m.aws().unwrap();
        assert!(aws.needs_operation());
        let facts = |service, operation, region| Facts {
            service,
            operation,
            region,
        };
        assert!(aws.matches(&facts(Some("dynamodb"), Some("PutItem"), Some("us-east-1"))));
        assert!(!aws.matches(&facts(Some("dynamodb"), Some("GetItem"), Some("us-east-1"))));
        assert!(!aws.matches(&facts(Some("dynamodb"), Some("PutItem"), Some("us-west-2"))));
        assert!(!aws.matches(&facts(Some("dynamodb"), None, Some("us-east-1"))));
        assert!(!aws.matches(&Facts::default()));
        let region_only = compile(MatchSpec {
            aws: Some(AwsMatchSpec {
                region: Some("us-west-2".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let aws = region_only.aws().unwrap();
        assert!(!aws.needs_operation());
        assert!(aws.matches(&facts(Some("sqs"), None, Some("us-west-2"))));
        let errors = MatchSpec {
            aws: Some(AwsMatchSpec {
                operation: Some("Put[".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .compile(&[], &FieldPath::root().key("match"))
        .unwrap_err();
        assert!(errors[0]
            .to_string()
            .starts_with("match.aws.operation: invalid glob \"Put[\""));
        let errors = MatchSpec {
            aws: Some(AwsMatchSpec::default()),
            ..Default::default()
        }
        .compile(&[], &FieldPath::root().key("match"))
        .unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "match.aws: give at least one of `service`, `operation`, `region`"
        );
    }

    #[test]
    fn unknown_upstreams_and_bad_globs_are_reported() {
        let errors = MatchSpec {
            upstreams: vec!["lambda".into()],
            path: Some("/a/[".into()),
            methods: vec!["GE T".into()],
            ..Default::default()
        }
        .compile(&["lambda-use1"], &FieldPath::root().key("match"))
        .unwrap_err();
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert_eq!(
            messages[0],
            "match.upstreams[0]: no upstream is named \"lambda\""
        );
        assert!(messages[1].starts_with("match.methods[0]: invalid method"));
        assert!(messages[2].starts_with("match.path: invalid path glob \"/a/[\""));
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary match conditions compile or are refused, and a compiled
    //! matcher answers any request, never panicking.

    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["\\PC{0,12}", "[a-z*?/{},\\[\\]!-]{0,12}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_conditions_compile_or_are_refused_and_match_anything(
            upstreams in prop::collection::vec(text(), 0..3),
            labels in prop::collection::btree_map(text(), text(), 0..3),
            methods in prop::collection::vec(text(), 0..3),
            path in prop::option::of(text()),
            headers in prop::collection::btree_map(text(), text(), 0..3),
            request_path in "\\PC{0,40}",
            method in text(),
            name in text(),
        ) {
            let spec = MatchSpec { upstreams, labels: labels.clone(), methods, path, headers, dns: None, aws: None };
            let Ok(matcher) = spec.compile(&["a", "b"], &FieldPath::root()) else {
                return Ok(());
            };
            let _ = matcher.applies_to_upstream(UpstreamIdentity { name: &name, labels: &labels, tcp: false });
            if let Some(glob) = matcher.path_glob() {
                let _ = glob.compile_matcher().is_match(&request_path);
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
            let _ = matcher.matches_method_and_headers(&method, &HeaderMap::new());
        }
    }
}
