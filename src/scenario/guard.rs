//! A run's guard: the error ratio of the watched upstreams over a sliding
//! wall-clock window, from samples of the proxy's own counts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::Guard;
use crate::traffic::Counts;

/// The guard's memory of recent samples.
#[derive(Debug)]
pub struct GuardWatch {
    window: Duration,
    max_error_ratio: f64,
    min_requests: u64,
    count_injected: bool,
    /// Oldest first; the first is the window's baseline.
    samples: VecDeque<(Instant, Counts)>,
}

/// What the guard makes of the window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    /// The run must stop.
    Tripped {
        errors: u64,
        requests: u64,
        ratio: f64,
    },
}

impl GuardWatch {
    pub fn new(guard: &Guard) -> GuardWatch {
        GuardWatch {
            window: guard.window,
            max_error_ratio: guard.max_error_ratio,
            min_requests: guard.min_requests,
            count_injected: guard.count_injected,
            samples: VecDeque::new(),
        }
    }

    /// How often to sample: a tenth of the window, so the window slides smoothly.
    pub fn sample_every(&self) -> Duration {
        (self.window / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// Takes the watched upstreams' counts at `now` and judges the window
    /// that ends there.
    pub fn observe(&mut self, now: Instant, counts: Counts) -> Verdict {
        self.samples.push_back((now, counts));
        // Keep one sample at or before the window's start as the baseline.
        while self.samples.len() > 2
            && self.samples[1].0 <= now.checked_sub(self.window).unwrap_or(now)
        {
            self.samples.pop_front();
        }
        let Some((_, baseline)) = self.samples.front() else {
            return Verdict::Healthy;
        };
        let recent = counts.since(baseline);
        // Uncounted injected answers leave both sides of the ratio: the
        // guard judges the requests the system itself answered.
        let (errors, requests) = if self.count_injected {
            (recent.errors(), recent.requests)
        } else {
            (
                recent.failures,
                recent.requests.saturating_sub(recent.injected),
            )
        };
        if requests < self.min_requests || requests == 0 {
            return Verdict::Healthy;
        }
        let ratio = errors as f64 / requests as f64;
        if ratio > self.max_error_ratio {
            Verdict::Tripped {
                errors,
                requests,
                ratio,
            }
        } else {
            Verdict::Healthy
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn max_error_ratio(&self) -> f64 {
        self.max_error_ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::MatchSpec;

    fn watch(count_injected: bool) -> GuardWatch {
        GuardWatch::new(&Guard {
            watch: MatchSpec::default()
                .compile(&[], &Default::default())
                .unwrap(),
            max_error_ratio: 0.1,
            window: Duration::from_secs(10),
            min_requests: 20,
            count_injected,
        })
    }

    fn counts(requests: u64, failures: u64, injected: u64) -> Counts {
        Counts {
            requests,
            failures,
            injected,
        }
    }

    #[test]
    fn trips_only_past_the_ratio_with_enough_requests() {
        let start = Instant::now();
        let mut guard = watch(false);
        assert_eq!(guard.observe(start, counts(0, 0, 0)), Verdict::Healthy);
        let second = start + Duration::from_secs(1);
        // 5 errors in 10 requests: too few requests to judge.
        assert_eq!(guard.observe(second, counts(10, 5, 0)), Verdict::Healthy);
        let third = start + Duration::from_secs(2);
        assert_eq!(
            guard.observe(third, counts(40, 6, 0)),
            Verdict::Tripped {
                errors: 6,
                requests: 40,
                ratio: 0.15
            }
        );
    }

    #[test]
    fn injected_errors_count_only_when_asked() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let mut guard = watch(false);
        guard.observe(start, counts(0, 0, 0));
        assert_eq!(guard.observe(later, counts(100, 0, 50)), Verdict::Healthy);
        let mut guard = watch(true);
        guard.observe(start, counts(0, 0, 0));
        assert!(matches!(
            guard.observe(later, counts(100, 0, 50)),
            Verdict::Tripped { errors: 50, .. }
        ));
        // Uncounted injected answers do not dilute the system's own errors:
        // 10 failures among the 50 requests the system answered is 20%.
        let mut guard = watch(false);
        guard.observe(start, counts(0, 0, 0));
        assert_eq!(
            guard.observe(later, counts(100, 10, 50)),
            Verdict::Tripped {
                errors: 10,
                requests: 50,
                ratio: 0.2
            }
        );
    }

    #[test]
    fn errors_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut guard = watch(false);
        guard.observe(start, counts(0, 0, 0));
        let burst = start + Duration::from_secs(1);
        assert!(matches!(
            guard.observe(burst, counts(100, 50, 0)),
            Verdict::Tripped { .. }
        ));
        // Twenty seconds later, 100 clean requests: the burst has slid out.
        for s in 2..=21 {
            let at = start + Duration::from_secs(s);
            let verdict = guard.observe(at, counts(100 + (s - 1) * 5, 50, 0));
            if s >= 12 {
                assert_eq!(verdict, Verdict::Healthy, "at {s}s");
            }
        }
    }
}
