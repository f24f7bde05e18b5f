//! How long a latency fault waits: a fixed delay with jitter, or a sample
//! from a distribution (README "Rules"). Sampling is a pure function of the
//! rule's seeded random stream, so a seeded run replays its delays.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::diagnostic::{FieldError, FieldPath};

/// The 99th percentile of the standard normal distribution.
const Z_99: f64 = 2.326_347_874_040_841;

/// `distribution = { kind = "lognormal", median, p99, max }` or
/// `{ kind = "uniform", min, max }`, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionSpec {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// When the wait happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Before the request is forwarded.
    Request,
    /// After the upstream answered, before its response headers go back.
    Response,
}

/// A validated delay model.
#[derive(Debug, Clone, PartialEq)]
pub enum Delay {
    /// `delay`, moved uniformly within ±`jitter`.
    Fixed {
        delay: Duration,
        jitter: Duration,
    },
    /// exp(N(mu, sigma)) seconds, capped at `max`.
    LogNormal {
        mu: f64,
        sigma: f64,
        max: Option<Duration>,
    },
    Uniform {
        min: Duration,
        max: Duration,
    },
}

impl Delay {
    /// From a median and a 99th percentile: mu = ln(median),
    /// sigma = (ln(p99) − mu) / z₉₉.
    pub fn lognormal(
        median: Duration,
        p99: Duration,
        max: Option<Duration>,
    ) -> Result<Self, String> {
        if median.is_zero() || p99 <= median {
            return Err("a lognormal needs 0 < median < p99".to_owned());
        }
        let mu = median.as_secs_f64().ln();
        let sigma = (p99.as_secs_f64().ln() - mu) / Z_99;
        Ok(Delay::LogNormal { mu, sigma, max })
    }

    /// Whether sampling takes a random number.
    pub fn is_random(&self) -> bool {
        match self {
            Delay::Fixed { jitter, .. } => !jitter.is_zero(),
            Delay::LogNormal { .. } => true,
            Delay::Uniform { min, max } => min != max,
        }
    }

    /// One delay; `rng` is the rule's stream for this request (`None` when
    /// [`Delay::is_random`] is false).
    pub fn sample(&self, rng: Option<&mut SmallRng>) -> Duration {
        let Some(rng) = rng else {
            return match self {
                Delay::Fixed { delay, .. } => *delay,
                Delay::Uniform { min, .. } => *min,
                Delay::LogNormal { mu, max, .. } => cap(mu.exp(), *max),
            };
        };
        match self {
            Delay::Fixed { delay, jitter } if jitter.is_zero() => *delay,
            Delay::Fixed { delay, jitter } => {
                let offset = rng.random_range(-jitter.as_secs_f64()..=jitter.as_secs_f64());
                seconds(delay.as_secs_f64() + offset)
            }
            Delay::LogNormal { mu, sigma, max } => {
                cap((mu + sigma * standard_normal(rng)).exp(), *max)
            }
            Delay::Uniform { min, max } => {
                seconds(rng.random_range(min.as_secs_f64()..=max.as_secs_f64()))
            }
        }
    }
}

/// Box–Muller: one standard normal from two uniforms.
fn standard_normal(rng: &mut SmallRng) -> f64 {
    // 1 − u keeps the logarithm's argument in (0, 1].
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn cap(secs: f64, max: Option<Duration>) -> Duration {
    let sample = seconds(secs);
    max.map_or(sample, |max| sample.min(max))
}

/// Seconds as a duration, clamped to what a fault may last.
fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.clamp(0.0, super::MAX_FAULT_DURATION.as_secs_f64()))
        .unwrap_or(super::MAX_FAULT_DURATION)
}

impl DistributionSpec {
    /// Validates the distribution; `duration` parses and caps one field.
    pub fn validate(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> Option<Delay> {
        let duration = |value: &Option<String>, field: &str, errors: &mut Vec<FieldError>| {
            super::fault_duration(value, at, field, errors)
        };
        let given = |field: &Option<String>| field.is_some();
        let reject = |errors: &mut Vec<FieldError>, field: &str, kind: &str| {
            errors.push(FieldError::new(
                at.key(field),
                format!("`{field}` does not apply to a {kind} distribution"),
            ));
        };
        match self.kind.as_str() {
            "lognormal" => {
                if given(&self.min) {
                    reject(errors, "min", "lognormal");
                }
                let median = duration(&self.median, "median", errors);
                let p99 = duration(&self.p99, "p99", errors);
                let max = duration(&self.max, "max", errors);
                match (median, p99) {
                    (Some(median), Some(p99)) => Delay::lognormal(median, p99, max)
                        .map_err(|e| errors.push(FieldError::new(at.key("p99"), e)))
                        .ok(),
                    _ => {
                        if !given(&self.median) || !given(&self.p99) {
                            errors.push(FieldError::new(
                                at.key("kind"),
                                "a lognormal distribution needs `median` and `p99`",
                            ));
                        }
                        None
                    }
                }
            }
            "uniform" => {
                for field in ["median", "p99"] {
                    let value = if field == "median" {
                        &self.median
                    } else {
                        &self.p99
                    };
                    if given(value) {
                        reject(errors, field, "uniform");
                    }
                }
                let min = duration(&self.min, "min", errors);
                let max = duration(&self.max, "max", errors);
                match (min, max) {
                    (Some(min), Some(max)) if min <= max => Some(Delay::Uniform { min, max }),
                    (Some(_), Some(_)) => {
                        errors.push(FieldError::new(at.key("max"), "max must not be below min"));
                        None
                    }
                    _ => {
                        if !given(&self.min) || !given(&self.max) {
                            errors.push(FieldError::new(
                                at.key("kind"),
                                "a uniform distribution needs `min` and `max`",
                            ));
                        }
                        None
                    }
                }
            }
            other => {
                errors.push(FieldError::new(
                    at.key("kind"),
                    format!("unknown distribution {other:?}; expected lognormal or uniform"),
                ));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn quantile(sorted: &[Duration], q: f64) -> f64 {
        sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64()
    }

    fn samples(delay: &Delay, n: u64) -> Vec<Duration> {
        let mut all: Vec<Duration> = (0..n)
            .map(|i| delay.sample(Some(&mut SmallRng::seed_from_u64(i))))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn lognormal_quantiles_follow_median_and_p99() {
        let delay =
            Delay::lognormal(Duration::from_millis(100), Duration::from_millis(900), None).unwrap();
        let sorted = samples(&delay, 10_000);
        let (median, p99) = (quantile(&sorted, 0.5), quantile(&sorted, 0.99));
        assert!((median - 0.1).abs() / 0.1 < 0.05, "median {median}");
        assert!((p99 - 0.9).abs() / 0.9 < 0.05, "p99 {p99}");
    }

    #[test]
    fn lognormal_samples_respect_the_cap() {
        let max = Duration::from_millis(300);
        let delay = Delay::lognormal(
            Duration::from_millis(100),
            Duration::from_secs(2),
            Some(max),
        )
        .unwrap();
        assert!(samples(&delay, 2_000).iter().all(|d| *d <= max));
    }

    #[test]
    fn uniform_samples_stay_within_bounds_and_spread() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(80));
        let sorted = samples(&Delay::Uniform { min, max }, 10_000);
        assert!(sorted[0] >= min && sorted[sorted.len() - 1] <= max);
        assert!((quantile(&sorted, 0.5) - 0.05).abs() < 0.0025);
    }

    #[test]
    fn the_same_stream_gives_the_same_delay() {
        let delay =
            Delay::lognormal(Duration::from_millis(10), Duration::from_millis(50), None).unwrap();
        let a = delay.sample(Some(&mut SmallRng::seed_from_u64(9)));
        let b = delay.sample(Some(&mut SmallRng::seed_from_u64(9)));
        assert_eq!(a, b);
    }
}
