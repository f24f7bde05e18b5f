//! The report of a run (README "Scenarios"): for each step, its real start and end,
//! and the traffic that passed meanwhile, per region and per upstream, with
//! the faults each rule injected.
//!
//! A run takes a [`Mark`] of the proxy's counts when it starts and at every
//! step; a step's figures are the difference between its marks.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::UpstreamConfig;
use crate::traffic::Snapshot;

/// The proxy's counts at one moment.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: SystemTime,
    /// By upstream index.
    pub upstreams: Vec<Snapshot>,
    /// Faults injected so far, by rule.
    pub faults: BTreeMap<String, u64>,
}

/// `GET /api/scenarios/{name}/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// `running`, `completed`, `stopped` or `aborted`.
    pub state: String,
    pub speed: f64,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Why the run ended early, when it did.
    pub reason: Option<String>,
    /// Traffic between the start and the first step, when that is not at `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_in: Option<Segment>,
    /// In step order; a step the run never reached is absent.
    pub steps: Vec<Segment>,
}

/// One step of a run, or the lead-in before the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The step's index in the scenario; `null` for the lead-in.
    pub step: Option<usize>,
    /// The step's offset as written.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub started_at: String,
    /// `null` while the step is current.
    pub ended_at: Option<String>,
    pub wall_seconds: f64,
    /// Every upstream together.
    pub total: Stats,
    pub regions: BTreeMap<String, Stats>,
    pub upstreams: BTreeMap<String, Stats>,
    /// Faults injected during the step, by rule; rules that injected none are left out.
    pub faults: BTreeMap<String, u64>,
}

/// Traffic over a span of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    /// Every error a client saw: upstream 5xx and 429, proxy 502 and 504,
    /// and answers made by injected `error`, `abort` and `unavailable` faults.
    pub errors: u64,
    /// Of which injected.
    pub injected: u64,
    pub error_ratio: f64,
    /// What clients waited, injected delay included; `null` with no requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Stats {
    fn of(traffic: &Snapshot) -> Stats {
        let counts = traffic.counts;
        let ms = |q| {
            traffic
                .quantile(q)
                // To the microsecond: a local upstream answers in tens of them.
                .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
        };
        Stats {
            requests: counts.requests,
            errors: counts.errors(),
            injected: counts.injected,
            error_ratio: if counts.requests == 0 {
                0.0
            } else {
                counts.errors() as f64 / counts.requests as f64
            },
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// Where a segment sits in its scenario.
#[derive(Debug, Clone)]
pub struct Place {
    pub step: Option<usize>,
    pub at: String,
    pub description: Option<String>,
}

impl Segment {
    /// The traffic between two marks; `end` is `None` while the segment is
    /// open, and `now` stands in for it.
    pub fn between(
        place: Place,
        start: &Mark,
        end: Option<&Mark>,
        now: &Mark,
        upstreams: &[UpstreamConfig],
    ) -> Segment {
        let last = end.unwrap_or(now);
        let mut total = Snapshot::default();
        let mut regions: BTreeMap<String, Snapshot> = BTreeMap::new();
        let mut by_upstream = BTreeMap::new();
        for (i, upstream) in upstreams.iter().enumerate() {
            let (Some(then), Some(later)) = (start.upstreams.get(i), last.upstreams.get(i)) else {
                continue;
            };
            let traffic = later.since(then);
            if traffic.counts.requests == 0 {
                continue;
            }
            total.add(&traffic);
            let region = upstream.labels.get("region").map_or("", String::as_str);
            regions.entry(region.to_owned()).or_default().add(&traffic);
            by_upstream.insert(upstream.name.clone(), Stats::of(&traffic));
        }
        let faults = last
            .faults
            .iter()
            .filter_map(|(rule, n)| {
                let before = start.faults.get(rule).copied().unwrap_or(0);
                let during = n.saturating_sub(before);
                (during > 0).then(|| (rule.clone(), during))
            })
            .collect();
        Segment {
            step: place.step,
            at: place.at,
            description: place.description,
            started_at: rfc3339(start.at),
            ended_at: end.map(|end| rfc3339(end.at)),
            wall_seconds: last
                .at
                .duration_since(start.at)
                .unwrap_or_default()
                .as_secs_f64(),
            total: Stats::of(&total),
            regions: regions
                .iter()
                .map(|(region, traffic)| (region.clone(), Stats::of(traffic)))
                .collect(),
            upstreams: by_upstream,
            faults,
        }
    }
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
