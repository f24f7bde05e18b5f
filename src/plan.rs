//! Decide, then do: turning the rules that match a request into one
//! [`Decision`], a pure function of a rule snapshot, a view of the request
//! and a seeded random stream.
//!
//! Pure but for one counter per rule: a rule's n-th matching request draws
//! from a random stream seeded by (seed, rule name, n), so with a fixed seed
//! the same sequence of requests gets the same decisions, and adding or
//! removing one rule does not reshuffle the others. Doing it (sleeping,
//! answering, dropping) is [`crate::proxy`]'s.

use std::cell::OnceCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::aws::{self, Facts, RequestParts};
use crate::fault::{
    AbortMode, Delay, Direction, DnsFault, Fault, Shaping, Side, SyntheticResponse,
};
use crate::rules::{fnv1a, Candidate, RuleSet, Sticky};

/// What the planner looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The URI's authority (absolute-form, HTTP/2); else the `Host` header
    /// names the host, looked up only when a rule asks.
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The client's address as text, for `sticky = "client_ip"`.
    pub client_ip: &'a [u8],
    /// A form-urlencoded body the proxy read because a rule asks for the
    /// AWS operation ([`crate::rules::UpstreamRules::reads_form`]).
    pub form: Option<&'a [u8]>,
}

impl<'a> RequestView<'a> {
    /// What AWS calls this request. Not free (header parsing): the planner
    /// works it out once, for the first rule that has `match.aws`.
    pub fn aws_facts(&self) -> Facts<'a> {
        let host = self.authority.or_else(|| {
            self.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        });
        aws::facts(&RequestParts {
            method: self.method,
            host,
            path: self.path,
            query: self.query,
            headers: self.headers,
            form: self.form,
        })
    }
}

/// What must happen to one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Injected latency before the request is forwarded (latencies add up).
    pub delay: Duration,
    /// Injected latency after the upstream answered, before its headers go back.
    pub response_delay: Duration,
    /// How the response body is paced or cut.
    pub shaping: Shaping,
    /// The rules that injected something, in evaluation order, as indices
    /// into the upstream's rules in the snapshot ([`crate::rules::UpstreamRules::get`]).
    pub fired: Vec<usize>,
    pub action: Action,
}

/// The step after the delay: forward, or the first terminal fault.
#[derive(Debug, Clone)]
pub enum Action {
    Forward,
    Respond(Arc<SyntheticResponse>),
    Abort(AbortMode),
    /// `unavailable` with `mode = "refuse"`: the connection is refused. A
    /// request on a shared connection is reset (as `abort` `reset`); a
    /// `CONNECT` is answered as a refused dial is (`502`).
    Refuse,
    Blackhole {
        max_hold: Duration,
    },
}

/// Decides for one request; `None` when no rule injects anything (the fast path).
pub fn decide(rules: &RuleSet, upstream: usize, request: &RequestView<'_>) -> Option<Decision> {
    let candidates = rules.candidates(upstream)?;
    let mut decided: Option<Decision> = None;
    // Worked out for the first rule with `match.aws`, then reused.
    let facts = OnceCell::new();
    for (index, candidate) in candidates.for_path(request.path) {
        let rule = &candidate.rule;
        if !rule
            .matcher
            .matches_method_and_headers(request.method, request.headers)
        {
            continue;
        }
        if let Some(condition) = rule.matcher.aws() {
            if !condition.matches(facts.get_or_init(|| request.aws_facts())) {
                continue;
            }
        }
        let Some(mut rng) = fires(rules.seed(), candidate, sticky_key(candidate, request)) else {
            continue;
        };
        let decision = decided.get_or_insert_with(|| Decision {
            delay: Duration::ZERO,
            response_delay: Duration::ZERO,
            shaping: Shaping::default(),
            fired: Vec::new(),
            action: Action::Forward,
        });
        decision.fired.push(index);
        let action = match &rule.fault {
            Fault::Latency { delay, side, .. } => {
                let delay = delay.sample(rng.as_mut());
                let total = match side {
                    Side::Request => &mut decision.delay,
                    Side::Response => &mut decision.response_delay,
                };
                *total = total.saturating_add(delay);
                continue;
            }
            Fault::Bandwidth { .. } | Fault::Dribble { .. } | Fault::Truncate { .. } => {
                decision.shaping.add(&rule.fault);
                continue;
            }
            Fault::Respond(response) => Action::Respond(Arc::clone(response)),
            Fault::Abort { mode, .. } => Action::Abort(*mode),
            Fault::Refuse => Action::Refuse,
            Fault::Blackhole { max_hold } => Action::Blackhole {
                max_hold: *max_hold,
            },
            // A snapshot gives an HTTP upstream no TCP-only fault, and a
            // DNS rule is never an upstream's candidate.
            Fault::Slice { .. } | Fault::SlowClose { .. } | Fault::Dns(_) => continue,
        };
        // The first terminal fault ends the evaluation.
        decision.action = action;
        break;
    }
    decided
}

/// Whether a matching rule fires for this request (its turn under `every`,
/// its probability, `times` left), and the random stream it drew from.
fn fires(seed: u64, candidate: &Candidate, sticky_key: Option<&[u8]>) -> Option<Option<SmallRng>> {
    let rule = &candidate.rule;
    if !rule.counters.take_turn(rule.turns.every) {
        return None;
    }
    let mut rng = needs_randomness(candidate).then(|| {
        let draw = rule.counters.draws.fetch_add(1, Ordering::Relaxed);
        stream(seed, rule.salt, draw)
    });
    let hit = match sticky_key {
        Some(key) => sticky_hits(seed, rule.salt, key, candidate.probability),
        None => rng.as_mut().map_or(candidate.probability >= 1.0, |rng| {
            hits(candidate.probability, rng)
        }),
    };
    (hit && rule.counters.take_one(rule.turns.times)).then_some(rng)
}

/// What one DNS query gets from the DNS rules.
#[derive(Debug, Clone)]
pub struct DnsDecision {
    /// Injected latency before the answer (latencies add up).
    pub delay: Duration,
    /// The rules that fired, in evaluation order, as indices into
    /// [`RuleSet::dns_candidates`].
    pub fired: Vec<usize>,
    /// The first `dns` fault's answer; `None`: the true answer, after `delay`.
    pub answer: Option<DnsFault>,
}

/// Decides for one DNS query for `name` (lowercase, no final dot) of type
/// `qtype`, asked by `client_ip` (for `sticky = "client_ip"`; a sticky
/// header falls back to a draw); `None` when no rule fires. The same rules
/// decide for a client's query to faultline's DNS server and for the
/// proxy's own resolution of an upstream's name.
pub fn decide_dns(
    rules: &RuleSet,
    name: &str,
    qtype: u16,
    client_ip: &[u8],
) -> Option<DnsDecision> {
    let mut decided: Option<DnsDecision> = None;
    for (index, candidate) in rules.dns_candidates().iter().enumerate() {
        let rule = &candidate.rule;
        if !rule
            .matcher
            .dns()
            .is_some_and(|dns| dns.matches(name, qtype))
        {
            continue;
        }
        let sticky = match rule.sticky {
            Some(Sticky::ClientIp) => Some(client_ip),
            Some(Sticky::Header(_)) | None => None,
        };
        let Some(mut rng) = fires(rules.seed(), candidate, sticky) else {
            continue;
        };
        let decision = decided.get_or_insert_with(|| DnsDecision {
            delay: Duration::ZERO,
            fired: Vec::new(),
            answer: None,
        });
        decision.fired.push(index);
        match &rule.fault {
            Fault::Latency { delay, .. } => {
                decision.delay = decision.delay.saturating_add(delay.sample(rng.as_mut()));
            }
            Fault::Dns(fault) => {
                // The first answer ends the evaluation, as a terminal fault does.
                decision.answer = Some(fault.clone());
                break;
            }
            // Validation lets a DNS rule take no other kind.
            _ => {}
        }
    }
    decided
}

/// What must happen to one TCP connection (SPEC §9), decided once when it
/// is accepted.
#[derive(Debug, Clone, Default)]
pub struct ConnectionDecision {
    /// The rules that fired, as in [`Decision::fired`].
    pub fired: Vec<usize>,
    /// What happens to the client's bytes on their way to the upstream.
    pub upstream: StreamFaults,
    /// What happens to the upstream's bytes on their way back.
    pub downstream: StreamFaults,
    /// The connection is ended this way this long after it opened
    /// (`abort` with `after`); the earliest wins.
    pub end_after: Option<(Duration, AbortMode)>,
    pub action: ConnectionAction,
    /// Seeds the per-piece draws of a jittered latency.
    pub seed: u64,
}

/// What a TCP connection gets, after its faults are known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnectionAction {
    /// Dial the upstream and copy, through the stream faults.
    #[default]
    Forward,
    /// End it at once (`abort` without `after`).
    End(AbortMode),
    /// Reset it: a refusing rule that does not close the port.
    Refuse,
    /// Hold it, dialling nothing and passing nothing, then close.
    Blackhole { max_hold: Duration },
}

/// The faults on one direction of a TCP connection; stacked faults add
/// (latency) or the strictest wins (rate, cut, piece size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamFaults {
    /// Every piece waits this long (latencies add up)…
    pub delay: Duration,
    /// …give or take this much, drawn per piece.
    pub jitter: Duration,
    pub bytes_per_sec: Option<u64>,
    /// Pieces of (average_size, size_variation), (delay) apart.
    pub slice: Option<(u64, u64, Duration)>,
    /// After this many bytes, the connection is ended this way.
    pub truncate: Option<(u64, AbortMode)>,
    /// The close of the sending side reaches the other this late.
    pub slow_close: Option<Duration>,
}

impl StreamFaults {
    /// Whether the bytes go as they come: the cheap copy.
    pub fn is_none(&self) -> bool {
        *self == StreamFaults::default()
    }
}

/// Decides for one TCP connection, from its client's address; `None`
/// when no rule injects anything (the plain copy). Probabilities are drawn
/// once per connection; only rules that fit a TCP upstream are candidates
/// ([`crate::rules::Rule::fits`]).
pub fn decide_connection(
    rules: &RuleSet,
    upstream: usize,
    client_ip: &[u8],
) -> Option<ConnectionDecision> {
    let candidates = rules.candidates(upstream)?;
    let mut decided: Option<ConnectionDecision> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        let rule = &candidate.rule;
        let sticky = match rule.sticky {
            Some(Sticky::ClientIp) => Some(client_ip),
            Some(Sticky::Header(_)) | None => None,
        };
        let Some(mut rng) = fires(rules.seed(), candidate, sticky) else {
            continue;
        };
        let decision = decided.get_or_insert_with(|| ConnectionDecision {
            seed: rng.as_mut().map_or(rule.salt, |rng| rng.random()),
            ..ConnectionDecision::default()
        });
        decision.fired.push(index);
        let action = match &rule.fault {
            Fault::Latency {
                delay, direction, ..
            } => {
                let faults = stream_of(decision, *direction);
                match delay {
                    // Jitter is drawn per piece, as Toxiproxy does.
                    Delay::Fixed { delay, jitter } => {
                        faults.delay = faults.delay.saturating_add(*delay);
                        faults.jitter = faults.jitter.saturating_add(*jitter);
                    }
                    // A distribution is drawn once for the connection.
                    random => {
                        let delay = random.sample(rng.as_mut());
                        faults.delay = faults.delay.saturating_add(delay);
                    }
                }
                continue;
            }
            Fault::Bandwidth {
                bytes_per_sec,
                direction,
            } => {
                let faults = stream_of(decision, *direction);
                faults.bytes_per_sec = Some(
                    faults
                        .bytes_per_sec
                        .map_or(*bytes_per_sec, |r| r.min(*bytes_per_sec)),
                );
                continue;
            }
            Fault::Slice {
                average_size,
                size_variation,
                delay,
                direction,
            } => {
                let faults = stream_of(decision, *direction);
                if faults.slice.is_none_or(|(size, _, _)| *average_size < size) {
                    faults.slice = Some((*average_size, *size_variation, *delay));
                }
                continue;
            }
            Fault::Truncate {
                after_bytes,
                then,
                direction,
            } => {
                let faults = stream_of(decision, *direction);
                if faults
                    .truncate
                    .is_none_or(|(after, _)| *after_bytes < after)
                {
                    faults.truncate = Some((*after_bytes, *then));
                }
                continue;
            }
            Fault::SlowClose { delay, direction } => {
                let faults = stream_of(decision, *direction);
                faults.slow_close = Some(faults.slow_close.map_or(*delay, |d| d.max(*delay)));
                continue;
            }
            Fault::Abort {
                mode,
                after: Some(after),
            } if !after.is_zero() => {
                if decision.end_after.is_none_or(|(at, _)| *after < at) {
                    decision.end_after = Some((*after, *mode));
                }
                continue;
            }
            Fault::Abort { mode, .. } => ConnectionAction::End(*mode),
            Fault::Refuse => ConnectionAction::Refuse,
            Fault::Blackhole { max_hold } => ConnectionAction::Blackhole {
                max_hold: *max_hold,
            },
            // A snapshot gives a TCP upstream no HTTP-only fault, and no DNS rule.
            Fault::Respond(_) | Fault::Dribble { .. } | Fault::Dns(_) => continue,
        };
        // The first terminal fault ends the evaluation.
        decision.action = action;
        break;
    }
    decided
}

/// The faults of one direction; `downstream` unless the rule says.
fn stream_of(decision: &mut ConnectionDecision, direction: Option<Direction>) -> &mut StreamFaults {
    match direction.unwrap_or(Direction::Downstream) {
        Direction::Upstream => &mut decision.upstream,
        Direction::Downstream => &mut decision.downstream,
    }
}

/// Whether deciding for this rule takes a random number: not for a sure
/// hit with a fixed delay, the common case, which then touches no shared counter.
fn needs_randomness(candidate: &Candidate) -> bool {
    let p = candidate.probability;
    let random_delay =
        matches!(&candidate.rule.fault, Fault::Latency { delay, .. } if delay.is_random());
    // A sticky rule decides by its caller's hash, but falls back to a draw
    // for a request that lacks the sticky header.
    (p > 0.0 && p < 1.0) || random_delay
}

/// The value a sticky rule hashes, when the request has it.
fn sticky_key<'a>(candidate: &Candidate, request: &RequestView<'a>) -> Option<&'a [u8]> {
    match candidate.rule.sticky.as_ref()? {
        Sticky::Header(name) => request.headers.get(name).map(|v| v.as_bytes()),
        Sticky::ClientIp => Some(request.client_ip),
    }
}

/// A sticky decision: the same caller, seed and rule always decide the same.
pub fn sticky_hits(seed: u64, salt: u64, key: &[u8], probability: f64) -> bool {
    let hash = fnv1a(key);
    let unit = (splitmix64(seed ^ splitmix64(salt ^ hash)) >> 11) as f64 / (1u64 << 53) as f64;
    unit < probability
}

/// The random stream of a rule's n-th draw.
pub fn stream(seed: u64, salt: u64, draw: u64) -> SmallRng {
    SmallRng::seed_from_u64(splitmix64(
        seed ^ splitmix64(salt ^ draw.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    ))
}

/// Whether a draw with this probability injects.
pub fn hits(probability: f64, rng: &mut SmallRng) -> bool {
    if probability >= 1.0 {
        true
    } else if probability <= 0.0 {
        false
    } else {
        rng.random::<f64>() < probability
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::diagnostic::FieldPath;
    use crate::fault::BodySource;
    use crate::rules::{LiveRule, RuleSource, RuleSpec, UpstreamIdentity};

    /// `[[rule]]` tables, validated: the planner needs no file, config or metrics.
    #[derive(serde::Deserialize)]
    struct Rules {
        rule: Vec<RuleSpec>,
    }

    fn rule_set(text: &str, seed: u64) -> RuleSet {
        rule_set_over(text, seed, false)
    }

    /// The same upstreams, as tcp:// ones when `tcp`.
    fn rule_set_over(text: &str, seed: u64, tcp: bool) -> RuleSet {
        let east: BTreeMap<String, String> = [("region".into(), "us-east-1".into())].into();
        let west: BTreeMap<String, String> = [("region".into(), "us-west-2".into())].into();
        let upstreams = [
            UpstreamIdentity {
                name: "orders-use1",
                labels: &east,
                tcp,
            },
            UpstreamIdentity {
                name: "orders-usw2",
                labels: &west,
                tcp,
            },
        ];
        let source = BodySource::inline();
        let specs: Rules = toml::from_str(text).unwrap();
        let rules = specs
            .rule
            .into_iter()
            .map(|spec| {
                let rule = spec
                    .validate(RuleSource::Api, source, &[], &FieldPath::root())
                    .unwrap();
                LiveRule::as_defined(Arc::new(rule))
            })
            .collect();
        RuleSet::new(rules, upstreams, seed)
    }

    /// The names of the rules a decision fired, for upstream 0.
    fn fired(rules: &RuleSet, decision: &Decision) -> Vec<String> {
        let candidates = rules.candidates(0).unwrap();
        decision
            .fired
            .iter()
            .map(|&i| candidates.get(i).unwrap().rule.name().to_owned())
            .collect()
    }

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &Method::GET,
            path,
            query: None,
            authority: None,
            headers,
            client_ip: b"127.0.0.1",
            form: None,
        }
    }

    fn plan_get(rules: &RuleSet, upstream: usize) -> Option<Decision> {
        decide(rules, upstream, &view("/", &HeaderMap::new()))
    }

    const MIXED: &str = r#"
[[rule]]
name = "slow"
[rule.match]
labels = { region = "us-east-1" }
[rule.fault]
kind = "latency"
delay = "100ms"

[[rule]]
name = "slower"
[rule.fault]
kind = "latency"
delay = "50ms"

[[rule]]
name = "fail"
[rule.match]
labels = { region = "us-east-1" }
[rule.fault]
kind = "error"
status = 503

[[rule]]
name = "never-reached"
[rule.fault]
kind = "abort"
mode = "reset"
"#;

    #[test]
    fn latencies_add_up_and_the_first_terminal_fault_wins() {
        let rules = rule_set(MIXED, 1);
        let plan = plan_get(&rules, 0).unwrap();
        assert_eq!(plan.delay, Duration::from_millis(150));
        assert_eq!(fired(&rules, &plan), ["slow", "slower", "fail"]);
        assert!(matches!(plan.action, Action::Respond(ref r) if r.status == 503));
    }

    #[test]
    fn path_rules_keep_their_place_in_the_evaluation_order() {
        let rules = rule_set(
            "[[rule]]\nname = \"a\"\n[rule.match]\npath = \"/x/**\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"1ms\"\n\
             [[rule]]\nname = \"b\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"1ms\"\n\
             [[rule]]\nname = \"c\"\n[rule.match]\npath = \"/x/*\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"1ms\"\n\
             [[rule]]\nname = \"d\"\n[rule.match]\npath = \"/y\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"1ms\"\n",
            1,
        );
        let names = |path: &str| -> Vec<String> {
            decide(&rules, 0, &view(path, &HeaderMap::new()))
                .map(|decision| fired(&rules, &decision))
                .unwrap_or_default()
        };
        assert_eq!(names("/x/1"), ["a", "b", "c"]);
        assert_eq!(names("/x/1/2"), ["a", "b"]);
        assert_eq!(names("/y"), ["b", "d"]);
        assert_eq!(names("/z"), ["b"]);
    }

    #[test]
    fn rules_apply_only_to_their_upstreams() {
        let rules = rule_set(MIXED, 1);
        let plan = plan_get(&rules, 1).unwrap();
        assert_eq!(plan.delay, Duration::from_millis(50));
        assert!(matches!(plan.action, Action::Abort(AbortMode::Reset)));
    }

    #[test]
    fn refuse_is_decided_as_such_for_the_door_to_carry_out() {
        let rules = rule_set(
            "[[rule]]\nname = \"down\"\n[rule.fault]\nkind = \"unavailable\"\nmode = \"refuse\"\n",
            1,
        );
        let plan = plan_get(&rules, 0).unwrap();
        assert!(matches!(plan.action, Action::Refuse));
    }

    #[test]
    fn disabled_and_zero_probability_rules_never_inject() {
        let rules = rule_set(
            "[[rule]]\nname = \"off\"\nenabled = false\n[rule.fault]\nkind = \"abort\"\nmode = \"close\"\n\
             [[rule]]\nname = \"zero\"\nprobability = 0.0\n[rule.fault]\nkind = \"abort\"\nmode = \"close\"\n",
            1,
        );
        assert!((0..1000).all(|_| plan_get(&rules, 0).is_none()));
    }

    const THIRTY: &str = "[[rule]]\nname = \"thirty\"\nprobability = 0.3\n[rule.fault]\nkind = \"error\"\nstatus = 500\n";

    fn decisions(seed: u64, n: usize) -> Vec<bool> {
        let rules = rule_set(THIRTY, seed);
        (0..n).map(|_| plan_get(&rules, 0).is_some()).collect()
    }

    #[test]
    fn a_fixed_seed_gives_the_same_decisions() {
        assert_eq!(decisions(42, 200), decisions(42, 200));
        assert_ne!(decisions(42, 200), decisions(43, 200));
    }

    #[test]
    fn the_share_follows_the_probability() {
        // 10,000 draws at p = 0.3: sd ≈ 46, so ±5 sd is 2,770..3,230.
        let hits = decisions(7, 10_000).iter().filter(|hit| **hit).count();
        assert!((2770..=3230).contains(&hits), "{hits}");
    }

    const DNS: &str = r#"
[[rule]]
name = "slow-dns"
[rule.match]
dns = { name = "*.us-east-1.amazonaws.com" }
[rule.fault]
kind = "latency"
delay = "20ms"

[[rule]]
name = "empty"
times = 2
[rule.match]
dns = { name = "dynamodb.us-east-1.amazonaws.com", types = ["A", "AAAA"] }
[rule.fault]
kind = "dns"
answer = "nodata"

[[rule]]
name = "http"
[rule.fault]
kind = "error"
status = 500
"#;

    #[test]
    fn dns_rules_decide_dns_queries_only() {
        let rules = rule_set(DNS, 1);
        let names = |decision: &DnsDecision| -> Vec<&str> {
            decision
                .fired
                .iter()
                .map(|&i| rules.dns_candidates()[i].rule.name())
                .collect()
        };
        let ddb = "dynamodb.us-east-1.amazonaws.com";
        let first = decide_dns(&rules, ddb, 1, b"").unwrap();
        assert_eq!(names(&first), ["slow-dns", "empty"]);
        assert_eq!(first.delay, Duration::from_millis(20));
        assert_eq!(first.answer.unwrap().answer.name(), "nodata");
        // TXT is not taken; `times = 2` runs out after the second.
        assert!(decide_dns(&rules, ddb, 16, b"").unwrap().answer.is_none());
        assert!(decide_dns(&rules, ddb, 28, b"").unwrap().answer.is_some());
        let third = decide_dns(&rules, ddb, 1, b"").unwrap();
        assert_eq!(names(&third), ["slow-dns"]);
        assert!(decide_dns(&rules, "example.com", 1, b"").is_none());
        // The DNS rules are no upstream's candidates; the HTTP rule is.
        let plan = plan_get(&rules, 0).unwrap();
        assert_eq!(fired(&rules, &plan), ["http"]);
    }

    #[test]
    fn aws_rules_take_only_the_requests_aws_names_so() {
        let rules = rule_set(
            "[[rule]]\nname = \"put-use1\"\n[rule.match]\naws = { service = \"dynamodb\", operation = \"PutItem\", region = \"us-east-1\" }\n[rule.fault]\nkind = \"error\"\nstatus = 500\n\
             [[rule]]\nname = \"sqs-send\"\n[rule.match]\naws = { operation = \"SendMessage\" }\n[rule.fault]\nkind = \"error\"\nstatus = 503\n",
            1,
        );
        let signed = |region: &str, target: &str| {
            let mut headers = HeaderMap::new();
            let auth = format!("AWS4-HMAC-SHA256 Credential=AKID/20250101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0");
            headers.insert("authorization", auth.parse().unwrap());
            headers.insert("x-amz-target", target.parse().unwrap());
            headers
        };
        let fires = |headers: &HeaderMap, form: Option<&[u8]>| {
            let view = RequestView {
                method: &Method::POST,
                form,
                ..view("/", headers)
            };
            decide(&rules, 0, &view).map(|decision| fired(&rules, &decision))
        };
        let put = signed("us-east-1", "DynamoDB_20120810.PutItem");
        assert_eq!(fires(&put, None).unwrap(), ["put-use1"]);
        assert!(fires(&signed("us-east-1", "DynamoDB_20120810.GetItem"), None).is_none());
        assert!(fires(&signed("us-west-2", "DynamoDB_20120810.PutItem"), None).is_none());
        assert!(fires(&HeaderMap::new(), None).is_none());
        // The query protocol's operation, from a body the proxy read.
        let mut sqs = HeaderMap::new();
        sqs.insert("host", "sqs.us-east-1.amazonaws.com".parse().unwrap());
        assert_eq!(
            fires(&sqs, Some(b"Action=SendMessage&QueueUrl=q")).unwrap(),
            ["sqs-send"]
        );
        assert!(fires(&sqs, Some(b"Action=ReceiveMessage")).is_none());
        assert!(rules.candidates(0).unwrap().reads_form());
    }

    #[test]
    fn a_connection_stacks_stream_faults_per_direction_and_stops_at_a_terminal_one() {
        let rules = rule_set_over(
            "[[rule]]\nname = \"slow\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"100ms\"\n\
             [[rule]]\nname = \"slow-up\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"5ms\"\ndirection = \"upstream\"\n\
             [[rule]]\nname = \"cut\"\n[rule.fault]\nkind = \"truncate\"\nafter_bytes = 10\n\
             [[rule]]\nname = \"later\"\n[rule.fault]\nkind = \"abort\"\nmode = \"reset\"\nafter = \"1s\"\n\
             [[rule]]\nname = \"hole\"\n[rule.fault]\nkind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"2s\"\n\
             [[rule]]\nname = \"never\"\n[rule.fault]\nkind = \"abort\"\nmode = \"close\"\n",
            1,
            true,
        );
        let plan = decide_connection(&rules, 0, b"127.0.0.1").unwrap();
        assert_eq!(plan.fired, [0, 1, 2, 3, 4]);
        assert_eq!(plan.downstream.delay, Duration::from_millis(100));
        assert_eq!(plan.upstream.delay, Duration::from_millis(5));
        assert_eq!(plan.downstream.truncate, Some((10, AbortMode::Reset)));
        assert_eq!(
            plan.end_after,
            Some((Duration::from_secs(1), AbortMode::Reset))
        );
        assert_eq!(
            plan.action,
            ConnectionAction::Blackhole {
                max_hold: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn zero_probability_never_fires_on_a_connection() {
        let rules = rule_set(
            "[[rule]]\nname = \"zero\"\nprobability = 0.0\n[rule.fault]\nkind = \"abort\"\nmode = \"reset\"\n",
            1,
        );
        assert!((0..1000).all(|_| decide_connection(&rules, 0, b"127.0.0.1").is_none()));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let (delay, jitter) = (Duration::from_millis(100), Duration::from_millis(20));
        let samples: Vec<Duration> = (0..1000)
            .map(|n| Delay::Fixed { delay, jitter }.sample(Some(&mut stream(1, 2, n))))
            .collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_millis(80) && *d <= Duration::from_millis(120)));
        let below = samples.iter().filter(|d| **d < delay).count();
        assert!((400..=600).contains(&below), "{below}");
    }
}
