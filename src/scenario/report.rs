//! The report of a run (README "Scenarios"): for each step, its real start and end,
//! and the traffic that passed meanwhile, per region and per upstream, with
//! the faults each rule injected.
//!
//! A run takes a [`Mark`] of the proxy's counts when it starts and at every
//! step; a step's figures are the difference between its marks.
//!
//! Every [`Stats`] carries its latency histogram, so the reports of many
//! replicas merge exactly ([`Report::merge`]): counts are summed and the
//! quantiles are read from the summed histograms, never averaged.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::UpstreamConfig;
use crate::traffic::{Counts, Snapshot};

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
    /// The latency histogram the quantiles come from: `[upper bound in µs,
    /// count]` for each non-empty bucket, ascending. Empty from a proxy that
    /// predates it.
    #[serde(default)]
    pub latency_us: Vec<(u64, u64)>,
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
            latency_us: traffic.latency_us(),
        }
    }

    /// The sum of several spans' traffic (the same step on many replicas):
    /// counts added, quantiles from the added histograms. When one of them
    /// has requests but no histogram (an older proxy), the quantiles are
    /// `null` rather than approximate.
    pub fn merge<'a>(all: impl IntoIterator<Item = &'a Stats>) -> Result<Stats, String> {
        let mut sum = Snapshot::default();
        let mut exact = true;
        for stats in all {
            let counts = Counts {
                requests: stats.requests,
                failures: stats.errors.saturating_sub(stats.injected),
                injected: stats.injected,
            };
            let seen: u64 = stats.latency_us.iter().map(|(_, n)| n).sum();
            exact &= stats.requests == 0 || seen > 0;
            sum.add(&Snapshot::with_latency_us(counts, &stats.latency_us)?);
        }
        let mut merged = Stats::of(&sum);
        if !exact {
            merged.p50_ms = None;
            merged.p99_ms = None;
        }
        Ok(merged)
    }
}

impl Report {
    /// The reports of one scenario's runs on many replicas as one: each
    /// step's traffic summed across them (by region, by upstream, faults by
    /// rule), the step's span from its earliest start to its latest end. A
    /// step some replica has not reached is still shown with the others'.
    pub fn merge(reports: &[Report]) -> Result<Report, String> {
        let Some(first) = reports.first() else {
            return Err("no report to merge".to_owned());
        };
        let lead_ins: Vec<&Segment> = reports.iter().filter_map(|r| r.lead_in.as_ref()).collect();
        let mut steps: BTreeMap<usize, Vec<&Segment>> = BTreeMap::new();
        for segment in reports.iter().flat_map(|r| &r.steps) {
            if let Some(index) = segment.step {
                steps.entry(index).or_default().push(segment);
            }
        }
        let reasons: Vec<&str> = distinct(reports.iter().filter_map(|r| r.reason.as_deref()));
        Ok(Report {
            scenario: first.scenario.clone(),
            state: agreed(reports.iter().map(|r| r.state.as_str())),
            speed: first.speed,
            started_at: earliest(reports.iter().map(|r| r.started_at.as_str())),
            ended_at: latest_end(reports.iter().map(|r| r.ended_at.as_deref())),
            reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            lead_in: if lead_ins.is_empty() {
                None
            } else {
                Some(Segment::merge(&lead_ins)?)
            },
            steps: steps
                .values()
                .map(|segments| Segment::merge(segments))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Segment {
    /// The same step on many replicas (`segments` is not empty).
    fn merge(segments: &[&Segment]) -> Result<Segment, String> {
        let first = segments[0];
        let by_key = |pick: fn(&Segment) -> &BTreeMap<String, Stats>| {
            let mut groups: BTreeMap<&str, Vec<&Stats>> = BTreeMap::new();
            for segment in segments {
                for (key, stats) in pick(segment) {
                    groups.entry(key).or_default().push(stats);
                }
            }
            groups
                .into_iter()
                .map(|(key, all)| Ok((key.to_owned(), Stats::merge(all)?)))
                .collect::<Result<BTreeMap<_, _>, String>>()
        };
        let mut faults: BTreeMap<String, u64> = BTreeMap::new();
        for (rule, n) in segments.iter().flat_map(|s| &s.faults) {
            *faults.entry(rule.clone()).or_default() += n;
        }
        Ok(Segment {
            step: first.step,
            at: first.at.clone(),
            description: first.description.clone(),
            started_at: earliest(segments.iter().map(|s| s.started_at.as_str())),
            ended_at: latest_end(segments.iter().map(|s| s.ended_at.as_deref())),
            wall_seconds: segments.iter().map(|s| s.wall_seconds).fold(0.0, f64::max),
            total: Stats::merge(segments.iter().map(|s| &s.total))?,
            regions: by_key(|s| &s.regions)?,
            upstreams: by_key(|s| &s.upstreams)?,
            faults,
        })
    }
}

/// The values in first-seen order, once each.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    seen
}

/// The one value all replicas give, or `mixed: a, b`.
fn agreed<'a>(values: impl Iterator<Item = &'a str>) -> String {
    match distinct(values).as_slice() {
        [one] => (*one).to_owned(),
        many => format!("mixed: {}", many.join(", ")),
    }
}

/// The earliest of RFC 3339 UTC instants as [`rfc3339`] writes them (same
/// width, so the text sorts as the time does).
fn earliest<'a>(instants: impl Iterator<Item = &'a str>) -> String {
    instants.min().unwrap_or_default().to_owned()
}

/// The latest end, or `None` while any is still open.
fn latest_end<'a>(ends: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    ends.collect::<Option<Vec<&str>>>()?
        .into_iter()
        .max()
        .map(str::to_owned)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::traffic::{Outcome, Tally};

    fn stats(latencies_ms: &[u64], failures: usize) -> Stats {
        let tally = Tally::default();
        for (i, ms) in latencies_ms.iter().enumerate() {
            let outcome = if i < failures {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            tally.record(outcome, Duration::from_millis(*ms));
        }
        Stats::of(&tally.snapshot())
    }

    fn segment(step: Option<usize>, started: &str, ended: Option<&str>, total: Stats) -> Segment {
        Segment {
            step,
            at: "0s".to_owned(),
            description: None,
            started_at: started.to_owned(),
            ended_at: ended.map(str::to_owned),
            wall_seconds: 1.0,
            regions: BTreeMap::from([("us-east-1".to_owned(), total.clone())]),
            upstreams: BTreeMap::new(),
            faults: BTreeMap::from([("use1-503".to_owned(), total.errors)]),
            total,
        }
    }

    fn report(state: &str, steps: Vec<Segment>) -> Report {
        Report {
            scenario: "drill".to_owned(),
            state: state.to_owned(),
            speed: 1.0,
            started_at: "2026-11-29T14:00:00.000Z".to_owned(),
            ended_at: None,
            reason: None,
            lead_in: None,
            steps,
        }
    }

    #[test]
    fn merged_quantiles_come_from_the_merged_histogram() {
        // One fast replica, one slow: averaging their p99s would say ~505 ms;
        // the merged histogram says the slow one's 1000 ms.
        let fast = stats(&[10; 99], 0);
        let slow = stats(&[1000], 1);
        let merged = Stats::merge([&fast, &slow]).unwrap();
        assert_eq!((merged.requests, merged.errors), (100, 1));
        assert!((merged.error_ratio - 0.01).abs() < 1e-9);
        let p99 = merged.p99_ms.unwrap();
        assert!((9.0..=11.0).contains(&p99), "{p99}");
        let all = stats(&[[10; 99].as_slice(), &[1000]].concat(), 1);
        assert_eq!(merged.latency_us, all.latency_us);
        assert_eq!((merged.p50_ms, merged.p99_ms), (all.p50_ms, all.p99_ms));
        let p100 = Stats::merge([&fast, &slow, &stats(&[1000; 2], 0)]).unwrap();
        assert!(p100.p99_ms.unwrap() > 900.0, "{p100:?}");
    }

    #[test]
    fn a_stats_without_histogram_makes_quantiles_unknown() {
        let mut old = stats(&[5, 6], 0);
        old.latency_us.clear();
        let merged = Stats::merge([&old, &stats(&[7], 0)]).unwrap();
        assert_eq!(merged.requests, 3);
        assert_eq!((merged.p50_ms, merged.p99_ms), (None, None));
        let mut alien = stats(&[5], 0);
        alien.latency_us = vec![(17, 1)];
        assert!(Stats::merge([&alien]).is_err());
        // A replica's absurd counts saturate rather than panic.
        let mut huge = stats(&[5], 0);
        huge.requests = u64::MAX;
        huge.latency_us = vec![(huge.latency_us[0].0, u64::MAX)];
        let merged = Stats::merge([&huge, &huge, &stats(&[6], 0)]).unwrap();
        assert_eq!(merged.requests, u64::MAX);
        assert!(merged.p99_ms.is_some());
    }

    #[test]
    fn reports_merge_step_by_step() {
        let a = report(
            "running",
            vec![
                segment(
                    Some(0),
                    "2026-11-29T14:00:00.010Z",
                    Some("2026-11-29T14:01:00.000Z"),
                    stats(&[1, 2], 1),
                ),
                segment(Some(1), "2026-11-29T14:01:00.000Z", None, stats(&[3], 0)),
            ],
        );
        let b = report(
            "completed",
            vec![segment(
                Some(0),
                "2026-11-29T14:00:00.004Z",
                Some("2026-11-29T14:01:00.020Z"),
                stats(&[4], 1),
            )],
        );
        let merged = Report::merge(&[a, b]).unwrap();
        assert_eq!(merged.state, "mixed: running, completed");
        assert_eq!(merged.steps.len(), 2);
        let first = &merged.steps[0];
        assert_eq!(first.started_at, "2026-11-29T14:00:00.004Z");
        assert_eq!(first.ended_at.as_deref(), Some("2026-11-29T14:01:00.020Z"));
        assert_eq!((first.total.requests, first.total.errors), (3, 2));
        assert_eq!(first.regions["us-east-1"].requests, 3);
        assert_eq!(first.faults["use1-503"], 2);
        assert_eq!(merged.steps[1].ended_at, None);
        assert_eq!(merged.steps[1].total.requests, 1);
        assert!(Report::merge(&[]).is_err());
    }
}
