//! The proxy's own running counts per upstream: requests, errors and a
//! fine latency histogram, kept with plain atomics on the request path and
//! read by scenario guards and reports ([`crate::scenario`]).
//!
//! Prometheus has the same traffic, but split by method and code and with
//! buckets too coarse for a p99 per step; reading these costs a few loads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

/// Latency buckets: 8 per power of two of microseconds (under 13% apart),
/// from 0 µs to 2^36 µs (about 19 hours); longer lands in the last.
const BUCKETS: usize = 272;
const SUB_BUCKETS: u64 = 8;

/// How one request ended, for the error counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Anything the client can use: a 2xx, 3xx or 4xx but 429.
    Success,
    /// A 5xx or 429 from the upstream, or an error the proxy made itself
    /// (502, 504): the system under test failing.
    Failure,
    /// Answered (or cut off) by an injected `error`, `abort` or `unavailable` fault.
    Injected,
}

impl Outcome {
    /// How an answer the upstream or the proxy gave counts.
    pub fn of_status(status: StatusCode) -> Outcome {
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// One upstream's running counts.
#[derive(Debug)]
pub struct Tally {
    requests: AtomicU64,
    failures: AtomicU64,
    injected: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Tally {
    /// Counts one finished request and what the client waited.
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Success => {}
            Outcome::Failure => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Injected => {
                self.injected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// A request already counted as a success turned out a failure: its
    /// upstream cut the response body short.
    pub fn record_cut(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts alone, for a guard's frequent look.
    pub fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            injected: self.injected.load(Ordering::Relaxed),
        }
    }

    /// Everything, for a report.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self.counts(),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Requests and errors since the proxy started (or between two looks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Errors the system made: upstream 5xx and 429, proxy 502 and 504.
    pub failures: u64,
    /// Requests answered by an injected terminal fault.
    pub injected: u64,
}

impl Counts {
    /// The counts between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            failures: self.failures.saturating_sub(earlier.failures),
            injected: self.injected.saturating_sub(earlier.injected),
        }
    }

    /// Saturating: the counts may come from other proxies' reports (`ctl`'s merge).
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        self.injected = self.injected.saturating_add(other.injected);
    }

    /// Every error the clients saw, injected or not.
    pub fn errors(&self) -> u64 {
        self.failures + self.injected
    }
}

/// Counts and the latency histogram at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub counts: Counts,
    latency: Box<[u64]>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            counts: Counts::default(),
            latency: vec![0; BUCKETS].into(),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            counts: self.counts.since(&earlier.counts),
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter())
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
        }
    }

    /// Adds another upstream's traffic (for a region's total).
    pub fn add(&mut self, other: &Snapshot) {
        self.counts.add(&other.counts);
        for (mine, theirs) in self.latency.iter_mut().zip(other.latency.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The latency histogram as `(bucket upper bound in µs, count)`, the
    /// non-empty buckets only, ascending: what a report carries so that the
    /// reports of several proxies merge exactly ([`Snapshot::with_latency_us`]).
    pub fn latency_us(&self) -> Vec<(u64, u64)> {
        self.latency
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(i, count)| (bounds_of(i).1, *count))
            .collect()
    }

    /// Counts with a histogram read back from [`Snapshot::latency_us`]'s
    /// form; an error names a bound that is not one of these buckets' (a
    /// proxy with another layout), so nothing is merged approximately.
    pub fn with_latency_us(counts: Counts, buckets: &[(u64, u64)]) -> Result<Snapshot, String> {
        let mut snapshot = Snapshot {
            counts,
            ..Snapshot::default()
        };
        for &(upper_us, count) in buckets {
            let bucket = bucket_of(upper_us.saturating_sub(1));
            if upper_us == 0 || bounds_of(bucket).1 != upper_us {
                return Err(format!(
                    "{upper_us} µs is not the upper bound of a latency bucket"
                ));
            }
            snapshot.latency[bucket] = snapshot.latency[bucket].saturating_add(count);
        }
        Ok(snapshot)
    }

    /// The latency under which a share `q` of the requests finished, to
    /// within the bucket's width (under 9%); `None` with no requests.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        // Saturating, as the buckets may hold other proxies' counts.
        let total = self
            .latency
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(*n));
        if total == 0 {
            return None;
        }
        // The rank of the request at quantile q, counting from 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen: u64 = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                let (low, high) = bounds_of(i);
                return Some(Duration::from_micros(low + (high - low) / 2));
            }
        }
        None
    }
}

/// The bucket of a latency in microseconds.
fn bucket_of(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let exponent = u64::from(63 - micros.leading_zeros());
    let mantissa = (micros >> (exponent - 3)) & (SUB_BUCKETS - 1);
    (((exponent - 2) * SUB_BUCKETS + mantissa) as usize).min(BUCKETS - 1)
}

/// The microseconds a bucket holds: `low..high`.
fn bounds_of(bucket: usize) -> (u64, u64) {
    let bucket = bucket as u64;
    if bucket < SUB_BUCKETS {
        return (bucket, bucket + 1);
    }
    let exponent = bucket / SUB_BUCKETS + 2;
    let mantissa = bucket % SUB_BUCKETS;
    let width = 1 << (exponent - 3);
    (
        (SUB_BUCKETS + mantissa) * width,
        (SUB_BUCKETS + mantissa + 1) * width,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_lands_in_the_bucket_that_holds_it() {
        for micros in (0..5_000).chain([
            65_535,
            100_000,
            1_000_000,
            3_600_000_000,
            u64::from(u32::MAX),
        ]) {
            let (low, high) = bounds_of(bucket_of(micros));
            assert!(
                low <= micros && micros < high,
                "{micros} not in {low}..{high}"
            );
            assert!((high - low) as f64 <= (low as f64 / 8.0).max(1.0));
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let tally = Tally::default();
        for ms in 1..=100 {
            tally.record(Outcome::Success, Duration::from_millis(ms));
        }
        let snapshot = tally.snapshot();
        let p50 = snapshot.quantile(0.5).unwrap().as_secs_f64();
        let p99 = snapshot.quantile(0.99).unwrap().as_secs_f64();
        assert!((0.046..=0.055).contains(&p50), "{p50}");
        assert!((0.092..=0.105).contains(&p99), "{p99}");
        assert_eq!(Snapshot::default().quantile(0.5), None);
    }

    #[test]
    fn a_difference_holds_what_happened_in_between() {
        let tally = Tally::default();
        tally.record(Outcome::Failure, Duration::from_millis(1));
        let before = tally.snapshot();
        tally.record(Outcome::Injected, Duration::from_millis(200));
        tally.record(Outcome::Success, Duration::from_millis(200));
        let between = tally.snapshot().since(&before);
        assert_eq!(
            between.counts,
            Counts {
                requests: 2,
                failures: 0,
                injected: 1
            }
        );
        let p50 = between.quantile(0.5).unwrap();
        assert!(p50 >= Duration::from_millis(190), "{p50:?}");
    }

    #[test]
    fn a_histogram_survives_its_sparse_form() {
        let tally = Tally::default();
        for micros in [0, 3, 9, 250, 250, 1_000_000, u64::MAX] {
            tally.record(Outcome::Success, Duration::from_micros(micros));
        }
        let snapshot = tally.snapshot();
        let sparse = snapshot.latency_us();
        assert_eq!(sparse.len(), 6, "{sparse:?}");
        assert!(sparse.windows(2).all(|w| w[0].0 < w[1].0), "{sparse:?}");
        assert_eq!(sparse.iter().map(|b| b.1).sum::<u64>(), 7);
        let back = Snapshot::with_latency_us(snapshot.counts, &sparse).unwrap();
        assert_eq!(back, snapshot);
        assert!(Snapshot::with_latency_us(Counts::default(), &[(17, 1)])
            .unwrap_err()
            .contains("17 µs"));
        assert!(Snapshot::with_latency_us(Counts::default(), &[(0, 1)]).is_err());
    }

    #[test]
    fn throttling_and_server_errors_are_failures() {
        assert_eq!(Outcome::of_status(StatusCode::OK), Outcome::Success);
        assert_eq!(Outcome::of_status(StatusCode::NOT_FOUND), Outcome::Success);
        assert_eq!(
            Outcome::of_status(StatusCode::TOO_MANY_REQUESTS),
            Outcome::Failure
        );
        assert_eq!(
            Outcome::of_status(StatusCode::BAD_GATEWAY),
            Outcome::Failure
        );
    }
}
