//! Human durations (`250ms`, `1.5s`, `3h45m`) in config, rule and API documents.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a human duration, with a message that shows what is expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    // humantime has no fractional units; accept "1.5s" and friends as users expect.
    if let Some(duration) = parse_fractional(trimmed) {
        return Ok(duration);
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        format!("invalid duration {text:?} ({e}); expected a value like \"250ms\", \"1.5s\" or \"3h45m\"")
    })
}

/// `1.5s`, `0.25m`, `2.5h`: one decimal number followed by one unit.
fn parse_fractional(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    if !number.contains('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let unit_seconds = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(value * unit_seconds).ok()
}

/// Formats a duration the way users write it.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// `#[serde(with = "crate::duration::serde_human")]` for `Duration` fields.
pub mod serde_human {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::duration::serde_human_opt", default)]` for `Option<Duration>`.
pub mod serde_human_opt {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&format(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_in_the_spec() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("3h45m"), Ok(Duration::from_secs(3 * 3600 + 45 * 60)));
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let error = parse("soon").unwrap_err();
        assert!(error.contains("\"soon\""), "{error}");
        assert!(error.contains("250ms"), "{error}");
        assert!(parse("10").is_err(), "a bare number has no unit");
    }
}
