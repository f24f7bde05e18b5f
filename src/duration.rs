//! Human durations (`250ms`, `1.5s`, `3h45m`) in config, rule and API documents.

use std::time::Duration;

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
