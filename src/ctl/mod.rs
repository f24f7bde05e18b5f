//! `faultline ctl`: drives a running proxy through its admin API (README
//! "Runtime control"). Readable tables by default, the API's JSON with `--json`; a clear
//! one-line error when the proxy is unreachable or refuses the token.
//! The scenario verbs and their tables live in [`scenario`]; many replicas
//! at once (`--admin a,b,c`, `--fleet HOST:PORT`) in [`fleet`], and their
//! tables side by side in [`agree`].

mod agree;
mod fleet;
mod scenario;

use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

use http::Method;
use serde_json::{json, Value};

use crate::client::{AdminClient, ClientError, CALL_TIMEOUT};
use crate::control::{ReloadSummary, RuleView, StatusView};

/// What to ask of the proxy.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Verb {
    /// Version, uptime, halted or not, rule counts, the last reload.
    Status,
    /// Every rule: source, switch, probability, fault, injected count, TTL.
    Rules,
    /// One rule, in full.
    Rule { name: String },
    /// Turn a rule on, optionally for a limited time.
    Enable {
        name: String,
        /// Turn it off again after this long (`30s`, `5m`, `1h`).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Turn a rule off.
    Disable { name: String },
    /// Change a rule's probability.
    Set {
        name: String,
        #[arg(long)]
        probability: f64,
    },
    /// The kill switch: every fault off, enabling refused until `resume`.
    Halt,
    /// Lift the halt (nothing turns back on by itself).
    Resume,
    /// Re-read the rule files.
    Reload,
    /// Rehearsal timelines: list, start (and follow), stop, status, report.
    Scenario {
        #[command(subcommand)]
        verb: ScenarioVerb,
    },
}

pub use scenario::ScenarioVerb;

pub use fleet::FLEET_TIMEOUT;

/// Which proxies to drive.
#[derive(Debug, Clone)]
pub enum Replicas {
    /// `--admin URL[,URL…]`: one URL is driven as always; several are a fleet.
    Admin(Vec<String>),
    /// `--fleet HOST:PORT`: every address the name resolves to (a Kubernetes
    /// headless Service), each as `http://ADDR:PORT`.
    Fleet(String),
}

/// Where the admin API is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub replicas: Replicas,
    pub token: Option<String>,
    pub json: bool,
    /// The output is a terminal: `--follow` redraws in place.
    pub live: bool,
    /// How long each replica may take to answer; `None`: 10 seconds for a
    /// single `--admin`, [`FLEET_TIMEOUT`] per replica for a fleet.
    pub timeout: Option<Duration>,
}

/// Runs one verb, writing what it shows to `out`: on one proxy as it always
/// did, or fanned out to a fleet ([`fleet`]).
pub async fn run(target: &Target, verb: &Verb, out: &mut dyn Write) -> Result<(), ClientError> {
    // Made once, so `--at +30s` is the same instant for every replica.
    let request = request(verb, SystemTime::now())?;
    let urls = match &target.replicas {
        Replicas::Admin(urls) if urls.len() == 1 => {
            return single(target, &urls[0], verb, request, out).await
        }
        Replicas::Admin(urls) => urls.clone(),
        Replicas::Fleet(name) => fleet::resolve(name).await?,
    };
    fleet::run(target, &urls, verb, request, out).await
}

/// One replica, with its API client.
fn client(target: &Target, admin: &str, timeout: Duration) -> Result<AdminClient, ClientError> {
    let mut api = AdminClient::new(admin)?.with_timeout(timeout);
    if let Some(token) = &target.token {
        api = api.with_token(token)?;
    }
    Ok(api)
}

/// The API call a verb makes.
fn request(verb: &Verb, now: SystemTime) -> Result<(Method, String, Option<Value>), ClientError> {
    Ok(match verb {
        Verb::Status => (Method::GET, "/api/status".to_owned(), None),
        Verb::Rules => (Method::GET, "/api/rules".to_owned(), None),
        Verb::Rule { name } => (Method::GET, format!("/api/rules/{name}"), None),
        Verb::Enable { name, ttl } => {
            let body = ttl.as_ref().map(|ttl| json!({ "ttl": ttl }));
            (Method::POST, format!("/api/rules/{name}/enable"), body)
        }
        Verb::Disable { name } => (Method::POST, format!("/api/rules/{name}/disable"), None),
        Verb::Set { name, probability } => (
            Method::PATCH,
            format!("/api/rules/{name}"),
            Some(json!({ "probability": probability })),
        ),
        Verb::Halt => (Method::POST, "/api/halt".to_owned(), None),
        Verb::Resume => (Method::POST, "/api/resume".to_owned(), None),
        Verb::Reload => (Method::POST, "/api/reload".to_owned(), None),
        Verb::Scenario { verb } => scenario::request(verb, now)?,
    })
}

/// The verb on one proxy: its answer as a table, or as the API's JSON.
async fn single(
    target: &Target,
    admin: &str,
    verb: &Verb,
    (method, path, body): (Method, String, Option<Value>),
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let api = client(target, admin, target.timeout.unwrap_or(CALL_TIMEOUT))?;
    let answer = api.call(method, &path, body).await?;
    if target.json {
        write_all(out, &answer)?;
    } else {
        write_all(out, &render(&api, verb, &answer)?)?;
    }
    if let Verb::Scenario {
        verb: ScenarioVerb::Start {
            name, follow: true, ..
        },
    } = verb
    {
        scenario::follow(&api, name, target.live && !target.json, out).await?;
    }
    Ok(())
}

/// A successful answer as text.
fn render(api: &AdminClient, verb: &Verb, answer: &str) -> Result<String, ClientError> {
    let now = SystemTime::now();
    Ok(match verb {
        Verb::Status => status_text(&api.parse::<StatusView>(answer)?),
        Verb::Rules => rules_table(&api.parse::<Vec<RuleView>>(answer)?, now),
        Verb::Rule { .. } => rule_text(&api.parse::<RuleView>(answer)?, now),
        Verb::Enable { .. } | Verb::Disable { .. } | Verb::Set { .. } => {
            format!("{}\n", rule_line(&api.parse::<RuleView>(answer)?, now))
        }
        Verb::Halt => {
            "halted: every fault is off; enabling is refused until `faultline ctl resume`\n"
                .to_owned()
        }
        Verb::Resume => {
            "resumed: rules may be enabled again (none was turned back on)\n".to_owned()
        }
        Verb::Reload => reload_text(&api.parse::<ReloadSummary>(answer)?),
        Verb::Scenario { verb } => scenario::render(api, verb, answer, now)?,
    })
}

fn write_all(out: &mut dyn Write, text: &str) -> Result<(), ClientError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| ClientError::Usage(format!("cannot write the output: {e}")))
}

fn status_text(status: &StatusView) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "faultline {}, up {}, seed {}",
        status.version,
        humantime::format_duration(Duration::from_secs(status.uptime_seconds)),
        status.seed
    );
    let halted = if status.halted {
        "YES: every fault is off; `faultline ctl resume` lifts it"
    } else {
        "no"
    };
    let _ = writeln!(text, "halted       {halted}");
    let r = &status.rules;
    let _ = writeln!(
        text,
        "rules        {} ({} enabled; {} from files, {} from the API)",
        r.total, r.enabled, r.file, r.api
    );
    let scenarios = if status.scenarios_running.is_empty() {
        "none running".to_owned()
    } else {
        status.scenarios_running.join(", ")
    };
    let _ = writeln!(text, "scenarios    {scenarios}");
    match &status.last_reload {
        None => {
            let _ = writeln!(text, "last reload  none since start");
        }
        Some(reload) => {
            let _ = writeln!(
                text,
                "last reload  {} at {} ({})",
                reload.outcome, reload.at, reload.trigger
            );
            for error in &reload.errors {
                let _ = writeln!(text, "  {error}");
            }
        }
    }
    text
}

/// Columns of `ctl rules`.
fn rules_table(rules: &[RuleView], now: SystemTime) -> String {
    if rules.is_empty() {
        return "no rules\n".to_owned();
    }
    let header = [
        "NAME", "SOURCE", "ENABLED", "PROB", "FAULT", "INJECTED", "EXPIRES",
    ];
    let rows: Vec<[String; 7]> = rules
        .iter()
        .map(|rule| {
            [
                rule.name.clone(),
                rule.source.clone(),
                if rule.enabled { "yes" } else { "no" }.to_owned(),
                format!("{}", rule.probability),
                fault_summary(rule),
                rule.injected.to_string(),
                expires_in(rule, now).unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[i]);
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    text
}

fn rule_text(rule: &RuleView, now: SystemTime) -> String {
    let mut text = format!("{}\n", rule_line(rule, now));
    if let Some(description) = &rule.description {
        let _ = writeln!(text, "  {description}");
    }
    if let Some(file) = &rule.file {
        let _ = writeln!(text, "  file      {file}");
    }
    let matcher = serde_json::to_string(&rule.matcher).unwrap_or_default();
    let _ = writeln!(text, "  match     {matcher}");
    let fault = serde_json::to_string(&rule.fault).unwrap_or_default();
    let _ = writeln!(text, "  fault     {fault}");
    let _ = writeln!(text, "  injected  {}", rule.injected);
    if let Some(left) = rule.times_left {
        let _ = writeln!(text, "  times left {left}");
    }
    text
}

/// `NAME: enabled, probability P, FAULT, expires in …`.
fn rule_line(rule: &RuleView, now: SystemTime) -> String {
    let mut line = format!(
        "{}: {}, probability {}, {}",
        rule.name,
        if rule.enabled { "enabled" } else { "disabled" },
        rule.probability,
        fault_summary(rule)
    );
    if let Some(expires) = expires_in(rule, now) {
        let _ = write!(line, ", turns off in {expires}");
    }
    line
}

/// The kind and its main parameter: `error 503`, `latency 250ms`, `abort reset`.
fn fault_summary(rule: &RuleView) -> String {
    let fault = &rule.fault;
    let detail = fault
        .status
        .map(|s| s.to_string())
        .or_else(|| fault.delay.clone())
        .or_else(|| fault.mode.clone())
        .or_else(|| fault.rate.clone())
        .or_else(|| fault.after_bytes.map(|b| format!("after {b} B")))
        .or_else(|| fault.chunks.map(|c| format!("{c} chunks")));
    match detail {
        Some(detail) => format!("{} {detail}", fault.kind),
        None => fault.kind.to_string(),
    }
}

fn expires_in(rule: &RuleView, now: SystemTime) -> Option<String> {
    let at = humantime::parse_rfc3339(rule.expires_at.as_deref()?).ok()?;
    let left = at.duration_since(now).unwrap_or_default();
    Some(humantime::format_duration(Duration::from_secs(left.as_secs())).to_string())
}

fn reload_text(summary: &ReloadSummary) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    };
    format!(
        "reloaded: {} added{}, {} changed{}, {} removed{}, {} unchanged; {} rules in force\n",
        summary.added.len(),
        list(&summary.added),
        summary.changed.len(),
        list(&summary.changed),
        summary.removed.len(),
        list(&summary.removed),
        summary.unchanged,
        summary.rules
    )
}
