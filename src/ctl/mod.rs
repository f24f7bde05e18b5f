//! `faultline ctl`: drives a running proxy through its admin API (SPEC §1,
//! §5). Readable tables by default, the API's JSON with `--json`; a clear
//! one-line error when the proxy is unreachable or refuses the token.
//! The scenario verbs and their tables live in [`scenario`].

mod scenario;

use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::control::{ReloadSummary, RuleView, StatusView};

/// How long one call to the admin API may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Where the admin API is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub admin: String,
    pub token: Option<String>,
    pub json: bool,
    /// The output is a terminal: `--follow` redraws in place.
    pub live: bool,
}

/// Why a `ctl` call failed; the message is the one line the user sees.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach faultline's admin API at {url}: {reason} (is faultline running? --admin sets the address)")]
    Unreachable { url: String, reason: String },
    #[error("the admin API at {url} refused the token: {message} (set --token or FAULTLINE_ADMIN_TOKEN)")]
    Unauthorized { url: String, message: String },
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// One line per problem of a rejected reload.
        details: Vec<String>,
        /// The API's answer as it came, for `--json`.
        body: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

impl CtlError {
    /// The lines to print under the one-line message.
    pub fn details(&self) -> &[String] {
        match self {
            CtlError::Api { details, .. } => details,
            _ => &[],
        }
    }

    /// The API's JSON error, for `--json`.
    pub fn body(&self) -> Option<&str> {
        match self {
            CtlError::Api { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// Runs one verb, writing what it shows to `out`.
pub async fn run(target: &Target, verb: &Verb, out: &mut dyn Write) -> Result<(), CtlError> {
    let api = Api::new(target)?;
    let (method, path, body) = match verb {
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
        Verb::Scenario { verb } => scenario::request(verb),
    };
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
fn render(api: &Api, verb: &Verb, answer: &str) -> Result<String, CtlError> {
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
        Verb::Scenario { verb } => scenario::render(api, verb, answer)?,
    })
}

fn write_all(out: &mut dyn Write, text: &str) -> Result<(), CtlError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CtlError::Usage(format!("cannot write the output: {e}")))
}

/// The admin API at one base URL.
struct Api {
    base: String,
    authorization: Option<HeaderValue>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    fn new(target: &Target) -> Result<Api, CtlError> {
        let base = normalize_base(&target.admin)?;
        let authorization = match &target.token {
            None => None,
            Some(token) => Some(HeaderValue::from_str(&format!("Bearer {token}")).map_err(
                |_| CtlError::Usage("the token has characters a header cannot carry".to_owned()),
            )?),
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        Ok(Api {
            base,
            authorization,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<String, CtlError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| CtlError::Usage(format!("invalid admin URL {url}: {e}")))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let body = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| CtlError::Usage(format!("cannot build the request to {url}: {e}")))?;
        let unreachable = |reason: String| CtlError::Unreachable {
            url: self.base.clone(),
            reason,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(format!("the answer broke off: {e}")))?
                .to_bytes();
            Ok::<_, CtlError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", CALL_TIMEOUT.as_secs())))??;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            return Ok(text);
        }
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
        let message = field("message").unwrap_or_else(|| text.trim().to_owned());
        if status == StatusCode::UNAUTHORIZED {
            return Err(CtlError::Unauthorized {
                url: self.base.clone(),
                message,
            });
        }
        let details = error
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| {
                        e.get("text")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .or_else(|| {
                                let field = e.get("field").and_then(Value::as_str)?;
                                let message = e.get("message").and_then(Value::as_str)?;
                                Some(format!("{field}: {message}"))
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Err(CtlError::Api {
            status: status.as_u16(),
            code: field("error").unwrap_or_else(|| "error".to_owned()),
            message,
            details,
            body: text,
        })
    }

    fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<T, CtlError> {
        serde_json::from_str(text).map_err(|e| CtlError::Protocol {
            url: self.base.clone(),
            reason: format!("not the JSON expected ({e}); is this faultline's admin API?"),
        })
    }
}

/// `http://HOST:PORT` without a trailing slash; a bare `HOST:PORT` is taken as http.
fn normalize_base(admin: &str) -> Result<String, CtlError> {
    let admin = admin.trim().trim_end_matches('/');
    let with_scheme = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| CtlError::Usage(format!("invalid --admin URL {admin:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(CtlError::Usage(format!(
                "--admin {admin:?}: the admin API speaks plain http, not {other}"
            )))
        }
        None => return Err(CtlError::Usage(format!("invalid --admin URL {admin:?}"))),
    }
    if uri.authority().is_none() {
        return Err(CtlError::Usage(format!("--admin {admin:?} has no host")));
    }
    Ok(with_scheme)
}

/// An error with its causes, which name the real problem ("Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
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
        None => fault.kind.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls_default_to_http() {
        assert_eq!(
            normalize_base("127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            normalize_base("http://localhost:9000/").unwrap(),
            "http://localhost:9000"
        );
        assert!(normalize_base("https://x:9000")
            .unwrap_err()
            .to_string()
            .contains("plain http"));
    }
}
