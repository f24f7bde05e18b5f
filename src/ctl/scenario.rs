//! `faultline ctl scenario …`: list, start (and follow live), stop, status
//! and the report of the latest run, as tables.

use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde_json::{json, Value};

use crate::client::{AdminClient, ClientError};
use crate::control::{RunView, ScenarioView};
use crate::scenario::report::{rfc3339, Report, Segment, Stats};

/// How often `--follow` looks at the run.
pub(super) const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Width of the `--follow` progress bar, in characters.
const BAR_WIDTH: usize = 32;

/// What to do with scenarios.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ScenarioVerb {
    /// Every scenario the rule files define, with its state.
    List,
    /// Start a run.
    Start {
        name: String,
        /// Play this many times faster than real time (`120` plays 4h in 2m).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Start at this wall-clock instant, not now: RFC 3339 in UTC
        /// (`2026-12-01T14:00:00Z`) or a delay from now (`+30s`, resolved
        /// once, so every replica gets the same instant).
        #[arg(long, value_name = "RFC3339|+DELAY", allow_hyphen_values = true)]
        at: Option<String>,
        /// Show the run live until it ends, then its report.
        #[arg(long)]
        follow: bool,
    },
    /// Stop a run; its changes are undone at once.
    Stop { name: String },
    /// Where a run is: state, step, time, next step.
    Status { name: String },
    /// The latest run, step by step: requests, errors, latency, faults.
    Report { name: String },
}

/// The API call a verb makes; `now` is what `--at +30s` counts from.
pub(super) fn request(
    verb: &ScenarioVerb,
    now: SystemTime,
) -> Result<(Method, String, Option<Value>), ClientError> {
    Ok(match verb {
        ScenarioVerb::List => (Method::GET, "/api/scenarios".to_owned(), None),
        ScenarioVerb::Start {
            name, speed, at, ..
        } => {
            let mut body = json!({ "speed": speed });
            if let Some(at) = at {
                body["start_at"] = json!(start_at(at, now)?);
            }
            (
                Method::POST,
                format!("/api/scenarios/{name}/start"),
                Some(body),
            )
        }
        ScenarioVerb::Stop { name } => (Method::POST, format!("/api/scenarios/{name}/stop"), None),
        ScenarioVerb::Status { name } => (Method::GET, format!("/api/scenarios/{name}"), None),
        ScenarioVerb::Report { name } => {
            (Method::GET, format!("/api/scenarios/{name}/report"), None)
        }
    })
}

/// RFC 3339 stops at the year 9999 (and humantime refuses to write past it).
fn writable(instant: SystemTime) -> bool {
    instant
        .duration_since(UNIX_EPOCH)
        .is_ok_and(|since| since.as_secs() < LAST_RFC3339_SECOND)
}

/// The first second of the year 10000, in seconds since the Unix epoch.
pub(super) const LAST_RFC3339_SECOND: u64 = 253_402_300_800;

/// `--at`: an RFC 3339 instant in UTC, or `+DELAY` from `now`, as the
/// RFC 3339 text (to the millisecond) the start API takes.
fn start_at(at: &str, now: SystemTime) -> Result<String, ClientError> {
    let at = at.trim();
    let instant = match at.strip_prefix('+') {
        Some(delay) => {
            let delay = crate::duration::parse(delay)
                .map_err(|e| ClientError::Usage(format!("--at {at}: {e}")))?;
            now.checked_add(delay)
                .filter(|instant| writable(*instant))
                .ok_or_else(|| ClientError::Usage(format!("--at {at}: too far ahead")))?
        }
        None => humantime::parse_rfc3339(at).map_err(|e| {
            ClientError::Usage(format!(
                "--at {at:?}: {e}; expected an RFC 3339 instant in UTC such as \"2026-12-01T14:00:00Z\", or a delay from now such as \"+30s\""
            ))
        })?,
    };
    Ok(rfc3339(instant))
}

/// The answer as text; `now` is what a scheduled run's start counts down from.
pub(super) fn render(
    api: &AdminClient,
    verb: &ScenarioVerb,
    answer: &str,
    now: SystemTime,
) -> Result<String, ClientError> {
    Ok(match verb {
        ScenarioVerb::List => list_table(&api.parse::<Vec<ScenarioView>>(answer)?),
        ScenarioVerb::Report { .. } => report_text(&api.parse::<Report>(answer)?),
        _ => status_text(&api.parse::<ScenarioView>(answer)?, now),
    })
}

/// A run's state that is over: `idle` (none yet), `completed`, `stopped`,
/// `aborted`. Anything else (`running`, `scheduled` for a `start_at` to
/// come, a state a newer proxy adds) is still to follow.
pub(super) fn has_ended(state: &str) -> bool {
    matches!(state, "idle" | "completed" | "stopped" | "aborted")
}

/// When a run starts or started: its `start_at` (to the millisecond) when
/// anchored, else when it was told to start.
pub(super) fn start_of(run: &RunView) -> &str {
    run.start_at.as_deref().unwrap_or(&run.started_at)
}

/// How long until a scheduled run's start (`None` once it has passed, or
/// when the proxy's time cannot be read).
fn starts_in(run: &RunView, now: SystemTime) -> Option<Duration> {
    let start = humantime::parse_rfc3339(start_of(run)).ok()?;
    start.duration_since(now).ok()
}

/// `in 28s` until a scheduled run's start, `now` once due.
pub(super) fn countdown(run: &RunView, now: SystemTime) -> String {
    starts_in(run, now).map_or_else(
        || "now".to_owned(),
        |left| format!("in {}", clock(left.as_secs_f64())),
    )
}

/// Shows a run until it ends (through a `scheduled` wait for its
/// `start_at`): in place on a terminal (`live`), else a frame at each
/// change of state or step. Then the report.
pub(super) async fn follow(
    api: &AdminClient,
    name: &str,
    live: bool,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let mut drawn_lines = 0;
    let mut last = None;
    loop {
        let view = api.scenario(name).await?;
        let report = api.report(name).await?;
        let frame = follow_frame(&view, &report, SystemTime::now());
        let step = view
            .run
            .as_ref()
            .and_then(|r| r.current_step.as_ref().map(|s| s.index));
        // A scheduled run is followed through its wait for `start_at`.
        let running = !has_ended(&view.state);
        let place = Some((view.state.clone(), step));
        if live {
            // Up over the last frame, clear it, draw the new one.
            if drawn_lines > 0 {
                write!(out, "\x1b[{drawn_lines}A\x1b[J").map_err(io)?;
            }
            write!(out, "{frame}").map_err(io)?;
            drawn_lines = frame.lines().count();
        } else if place != last || !running {
            write!(out, "{frame}").map_err(io)?;
        }
        out.flush().map_err(io)?;
        last = place;
        if !running {
            break;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
    let report = api.report(name).await?;
    write!(out, "\n{}", report_text(&report)).map_err(io)?;
    Ok(())
}

fn io(error: std::io::Error) -> ClientError {
    ClientError::Usage(format!("cannot write the output: {error}"))
}

/// The progress bar, the step, time left (or, while scheduled, when it
/// starts), and the error ratio per region during the current step.
fn follow_frame(view: &ScenarioView, report: &Report, now: SystemTime) -> String {
    let mut text = String::new();
    let Some(run) = &view.run else {
        return format!("{}: idle\n", view.name);
    };
    let progress = if view.duration_seconds > 0.0 {
        (run.scenario_seconds / view.duration_seconds).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let filled = (progress * BAR_WIDTH as f64).round() as usize;
    let left = (run.wall_duration_seconds - run.wall_seconds).max(0.0);
    let _ = write!(
        text,
        "{} [{}{}] {:>3.0}%  {} / {}",
        view.name,
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        progress * 100.0,
        clock(run.scenario_seconds),
        view.duration,
    );
    if run.state == "running" {
        let _ = write!(text, "  {} left", clock(left));
    } else if run.state == "scheduled" {
        let _ = write!(
            text,
            "  scheduled for {} ({})",
            start_of(run),
            countdown(run, now)
        );
    } else {
        let _ = write!(text, "  {}", run.state);
    }
    text.push('\n');
    let _ = writeln!(text, "  step    {}", step_line(view, run));
    if let Some(segment) = report.steps.last().or(report.lead_in.as_ref()) {
        let regions: Vec<String> = segment
            .regions
            .iter()
            .map(|(region, stats)| {
                format!(
                    "{} {:.1}% of {}",
                    if region.is_empty() { "(none)" } else { region },
                    stats.error_ratio * 100.0,
                    stats.requests
                )
            })
            .collect();
        let regions = if regions.is_empty() {
            "no traffic yet".to_owned()
        } else {
            regions.join("   ")
        };
        let _ = writeln!(text, "  errors  {regions}");
    }
    if let Some(reason) = &run.reason {
        let _ = writeln!(text, "  reason  {reason}");
    }
    text
}

pub(super) fn step_line(view: &ScenarioView, run: &RunView) -> String {
    let mut line = match &run.current_step {
        Some(step) => format!(
            "{}/{} at {}{}",
            step.index + 1,
            view.steps.len(),
            step.at,
            step.description
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        None => format!("0/{} (before the first step)", view.steps.len()),
    };
    if let (Some(next), Some(due)) = (&run.next_step, run.next_step_in_seconds) {
        let _ = write!(line, "; next at {} in {}", next.at, clock(due));
    }
    line
}

/// `1h02m03s`, `4m05s`, `12s`, or `0.4s` under a second.
pub(super) fn clock(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{seconds:.1}s");
    }
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn list_table(scenarios: &[ScenarioView]) -> String {
    if scenarios.is_empty() {
        return "no scenarios: add [[scenario]] tables to a rule file\n".to_owned();
    }
    let mut text = format!(
        "{:<30} {:<10} {:>8} {:>5}  {}\n",
        "NAME", "STATE", "DURATION", "STEPS", "DESCRIPTION"
    );
    for s in scenarios {
        let _ = writeln!(
            text,
            "{:<30} {:<10} {:>8} {:>5}  {}",
            s.name,
            s.state,
            s.duration,
            s.steps.len(),
            s.description.as_deref().unwrap_or("")
        );
    }
    text
}

fn status_text(view: &ScenarioView, now: SystemTime) -> String {
    let mut text = format!("{}: {}\n", view.name, view.state);
    if let Some(description) = &view.description {
        let _ = writeln!(text, "  {description}");
    }
    let _ = writeln!(
        text,
        "  {} steps over {}, driving {}",
        view.steps.len(),
        view.duration,
        view.rules.join(", ")
    );
    if let Some(run) = view.run.as_ref().filter(|r| r.state == "scheduled") {
        let _ = writeln!(
            text,
            "  run     at {}x from {} ({}); step 1 at {}",
            run.speed,
            start_of(run),
            countdown(run, now),
            view.steps.first().map_or("-", |s| s.at.as_str())
        );
    } else if let Some(run) = &view.run {
        let _ = writeln!(
            text,
            "  run     at {}x since {}{}",
            run.speed,
            run.started_at,
            run.ended_at
                .as_ref()
                .map(|e| format!(", ended {e}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            text,
            "  time    {} of {} on the scenario's clock ({} of {} wall)",
            clock(run.scenario_seconds),
            view.duration,
            clock(run.wall_seconds),
            clock(run.wall_duration_seconds)
        );
        let _ = writeln!(text, "  step    {}", step_line(view, run));
        if let Some(reason) = &run.reason {
            let _ = writeln!(text, "  reason  {reason}");
        }
    }
    text
}

pub(super) fn report_text(report: &Report) -> String {
    let mut text = format!(
        "scenario {}: {} at {}x, {} to {}\n",
        report.scenario,
        report.state,
        report.speed,
        report.started_at,
        report.ended_at.as_deref().unwrap_or("now")
    );
    if let Some(reason) = &report.reason {
        let _ = writeln!(text, "reason: {reason}");
    }
    let _ = writeln!(
        text,
        "\n{:<6} {:<8} {:<24} {:>8} {:>8} {:>7} {:>9} {:>9}  FAULTS",
        "STEP", "AT", "WHERE", "REQUESTS", "ERRORS", "RATIO", "P50", "P99"
    );
    for segment in report.lead_in.iter().chain(&report.steps) {
        segment_rows(&mut text, segment);
    }
    text
}

fn segment_rows(text: &mut String, segment: &Segment) {
    let step = segment
        .step
        .map_or_else(|| "-".to_owned(), |i| (i + 1).to_string());
    let faults: Vec<String> = segment
        .faults
        .iter()
        .map(|(rule, n)| format!("{rule}={n}"))
        .collect();
    let title = segment.description.as_deref().unwrap_or("all traffic");
    row(text, &step, &segment.at, title, &segment.total);
    let _ = writeln!(text, "  {}", faults.join(" "));
    for (region, stats) in &segment.regions {
        let region = if region.is_empty() {
            "(no region)"
        } else {
            region
        };
        row(text, "", "", &format!("  {region}"), stats);
        text.push('\n');
    }
    for (upstream, stats) in &segment.upstreams {
        row(text, "", "", &format!("    {upstream}"), stats);
        text.push('\n');
    }
}

fn row(text: &mut String, step: &str, at: &str, title: &str, stats: &Stats) {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms"));
    let title: String = title.chars().take(24).collect();
    let _ = write!(
        text,
        "{:<6} {:<8} {:<24} {:>8} {:>8} {:>6.1}% {:>9} {:>9}",
        step,
        at,
        title,
        stats.requests,
        stats.errors,
        stats.error_ratio * 100.0,
        ms(stats.p50_ms),
        ms(stats.p99_ms)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_takes_an_instant_or_a_delay() {
        let now = humantime::parse_rfc3339("2026-11-29T14:30:00Z").unwrap();
        assert_eq!(start_at("+30s", now).unwrap(), "2026-11-29T14:30:30.000Z");
        assert_eq!(start_at("+1.5s", now).unwrap(), "2026-11-29T14:30:01.500Z");
        assert_eq!(
            start_at("2026-12-01T14:00:00Z", now).unwrap(),
            "2026-12-01T14:00:00.000Z"
        );
        let bad = start_at("tomorrow", now).unwrap_err().to_string();
        assert!(bad.contains("RFC 3339"), "{bad}");
        let far = start_at("+10000000000h", now).unwrap_err().to_string();
        assert!(far.contains("too far ahead"), "{far}");
        let bad = start_at("+soon", now).unwrap_err().to_string();
        assert!(bad.starts_with("--at +soon: invalid duration"), "{bad}");
    }

    #[test]
    fn clocks_read_like_durations() {
        assert_eq!(clock(0.25), "0.2s");
        assert_eq!(clock(12.0), "12s");
        assert_eq!(clock(245.0), "4m05s");
        assert_eq!(clock(3723.0), "1h02m03s");
    }
}
