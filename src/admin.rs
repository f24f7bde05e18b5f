//! The admin listener (`[admin] listen`, loopback by default): the JSON API
//! of README "Runtime control", and the two open endpoints.
//!
//! | verb and path                         | answer                                          |
//! |---------------------------------------|-------------------------------------------------|
//! | `GET /healthz`                        | `200 ok` (no token needed)                      |
//! | `GET /metrics`                        | Prometheus text exposition (no token needed)    |
//! | `GET /api/status`                     | version, uptime, halted, seed, rule counts, last reload, clock, runs |
//! | `GET /api/rules`                      | every rule, in evaluation order                 |
//! | `POST /api/rules`                     | add a runtime rule (the file schema as JSON, optional `ttl`) → `201` |
//! | `GET /api/rules/{name}`               | one rule                                        |
//! | `PATCH /api/rules/{name}`             | change `enabled`, `probability`, `ttl` (`null` removes it) |
//! | `POST /api/rules/{name}/enable`       | enable, with an optional `{"ttl":"5m"}`         |
//! | `POST /api/rules/{name}/disable`      | disable                                         |
//! | `DELETE /api/rules/{name}`            | remove a runtime rule → `204`                   |
//! | `POST /api/reload`                    | re-read the rule files: `200` with what changed, or `422` with every problem |
//! | `POST /api/halt`, `POST /api/resume`  | the kill switch (it also stops every scenario), and lifting it |
//! | `GET /api/scenarios`                  | every scenario: definition and state            |
//! | `GET /api/scenarios/{name}`           | one scenario: state, current and next step, times |
//! | `POST /api/scenarios/{name}/start`    | start or arm a run: optional `{"speed": 60, "start_at": "RFC 3339"}` |
//! | `POST /api/scenarios/{name}/stop`     | stop a run; its changes are undone at once      |
//! | `GET /api/scenarios/{name}/report`    | the latest run, step by step                    |
//!
//! Errors are `{"error": CODE, "message": …}` (plus `field` for a bad
//! field, `errors` for a rejected reload): `400` bad JSON or schema, `401`
//! no or wrong token, `404` unknown route or rule, `405` wrong method, `408`
//! body too slow, `409` a conflict (name taken, file rule, halted, TTL on a
//! disabled rule, a scenario already running, armed or driving the same
//! rule, a `start_at` whose run is over, a rule a scenario drives), `413`
//! body too large, `422` reload rejected.
//!
//! Each body is one struct (a `Body`): unknown fields are refused, and
//! a bad value is named by its path: `"field": "fault.status"`, and a
//! message that starts `fault.status: `. A rule may take
//! [`MAX_BODY_BYTES`], the other bodies [`MAX_SWITCH_BODY_BYTES`]; routes
//! that take no body (`reload`, `halt`, `resume`, `DELETE`) never read one.
//!
//! With a token configured, every `/api/*` call needs `Authorization:
//! Bearer TOKEN`, compared in constant time.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::control::Trigger;
use crate::control::{Change, Control, ControlError};
use crate::diagnostic::FieldError;
use crate::metrics::Metrics;
use crate::reload;
use crate::rules::RuleSpec;
use tracing::warn;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The largest body of `POST /api/rules`: a rule with an inline error body fits.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The largest body of the other routes that take one (a rule's switches,
/// a scenario's speed): a few fields, with room to spare.
pub const MAX_SWITCH_BODY_BYTES: usize = 4 << 10;
/// How long a client may take to send an admin request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin listener serves.
pub struct Admin {
    control: Arc<Control>,
    metrics: Metrics,
    token: Option<String>,
}

type AdminResponse = Response<Full<Bytes>>;

/// An answer that is not a success, as JSON.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    body: Value,
    /// The methods a path takes, for a `405`.
    allow: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            body: json!({ "error": code, "message": message.into() }),
            allow: None,
        }
    }

    fn into_response(self) -> AdminResponse {
        let mut response = json_response(self.status, &self.body);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"faultline\""),
            );
        }
        response
    }

    fn field(mut self, field: impl ToString) -> Failure {
        self.body["field"] = Value::String(field.to_string());
        self
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<ControlError> for Failure {
    fn from(error: ControlError) -> Failure {
        let message = error.to_string();
        match error {
            ControlError::NotFound(_) => {
                Failure::new(StatusCode::NOT_FOUND, "rule_not_found", message)
            }
            ControlError::NameTaken(_) => {
                Failure::new(StatusCode::CONFLICT, "rule_exists", message)
            }
            ControlError::FileRule(_) => Failure::new(StatusCode::CONFLICT, "file_rule", message),
            ControlError::Halted => Failure::new(StatusCode::CONFLICT, "halted", message),
            ControlError::NotEnabled(_) => {
                Failure::new(StatusCode::CONFLICT, "rule_disabled", message)
            }
            ControlError::Invalid(errors) => invalid_rule(&errors),
            ControlError::ScenarioNotFound(_) => {
                Failure::new(StatusCode::NOT_FOUND, "scenario_not_found", message)
            }
            ControlError::NoReport(_) => Failure::new(StatusCode::NOT_FOUND, "no_report", message),
            ControlError::ScenarioRunning(_) => {
                Failure::new(StatusCode::CONFLICT, "scenario_running", message)
            }
            ControlError::ScenarioNotRunning(_) => {
                Failure::new(StatusCode::CONFLICT, "scenario_not_running", message)
            }
            ControlError::ScenarioScheduled { .. } => {
                Failure::new(StatusCode::CONFLICT, "scenario_scheduled", message)
            }
            ControlError::ScenarioOver { .. } => {
                Failure::new(StatusCode::CONFLICT, "scenario_over", message)
            }
            ControlError::NoRuntime(_) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            ControlError::ScenarioConflict { .. } => {
                Failure::new(StatusCode::CONFLICT, "scenario_conflict", message)
            }
            ControlError::DrivenByScenario { .. } => {
                Failure::new(StatusCode::CONFLICT, "rule_in_scenario", message)
            }
            ControlError::GuardWatchesNothing(_) => {
                Failure::new(StatusCode::CONFLICT, "guard_watches_nothing", message)
            }
            // Only the Toxiproxy API adds upstreams; answered here for completeness.
            ControlError::UpstreamTaken(_) | ControlError::TooManyUpstreams => {
                Failure::new(StatusCode::CONFLICT, "upstream_conflict", message)
            }
            ControlError::Rejected(problems) => {
                let mut failure =
                    Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "reload_rejected", message);
                failure.body["errors"] = problems
                    .iter()
                    .map(|p| {
                        json!({
                            "file": p.path.display().to_string(),
                            "line": p.line,
                            "column": p.column,
                            "message": p.message,
                            "text": p.to_string(),
                        })
                    })
                    .collect();
                failure
            }
        }
    }
}

fn invalid_rule(errors: &[FieldError]) -> Failure {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut failure = Failure::new(StatusCode::BAD_REQUEST, "invalid_rule", message);
    if let Some(first) = errors.first() {
        failure = failure.field(&first.field);
    }
    failure.body["errors"] = errors
        .iter()
        .map(|e| json!({ "field": e.field.to_string(), "message": e.message }))
        .collect();
    failure
}

impl Admin {
    pub fn new(control: Arc<Control>, metrics: Metrics, token: Option<String>) -> Admin {
        Admin {
            control,
            metrics,
            token,
        }
    }

    /// Answers one admin request from `peer`.
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<AdminResponse, Infallible> {
        let path = request.uri().path().to_owned();
        let response = if let Some(api) = path.strip_prefix("/api/") {
            match self.authorize(&request, peer) {
                Ok(()) => self.api(api, peer, request).await,
                Err(failure) => Err(failure),
            }
        } else {
            Ok(self.open(&path, request.method()))
        };
        Ok(response.unwrap_or_else(Failure::into_response))
    }

    /// `/healthz`, `/metrics` and anything outside `/api/`.
    fn open(&self, path: &str, method: &Method) -> AdminResponse {
        let result = match (method, path) {
            (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
            (&Method::GET, "/metrics") => {
                Ok(text(StatusCode::OK, PROMETHEUS_TEXT, self.metrics.render()))
            }
            (_, "/healthz" | "/metrics") => Err(method_not_allowed("GET")),
            (_, path) => Err(not_found(path)),
        };
        result.unwrap_or_else(Failure::into_response)
    }

    fn authorize(&self, request: &Request<Incoming>, peer: SocketAddr) -> Result<(), Failure> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| bearer_token(value.as_bytes()));
        let verdict = match given {
            None => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin API needs `Authorization: Bearer TOKEN`",
            )),
            Some(given) if bool::from(given.ct_eq(token.as_bytes())) => Ok(()),
            Some(_) => Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is wrong",
            )),
        };
        if verdict.is_err() {
            warn!(
                target: "faultline::audit",
                caller = %peer,
                path = request.uri().path(),
                "admin call refused: no or wrong token"
            );
        }
        verdict
    }

    async fn api(
        &self,
        path: &str,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<AdminResponse, Failure> {
        let caller = peer.to_string();
        let control = &self.control;
        let segments: Vec<&str> = path.split('/').collect();
        let method = request.method().clone();
        match (segments.as_slice(), &method) {
            (["status"], &Method::GET) => ok(&control.status()),
            (["status"], _) => Err(method_not_allowed("GET")),
            (["rules"], &Method::GET) => ok(&control.rules()),
            (["rules"], &Method::POST) => {
                let (spec, ttl) = read::<NewRule>(request).await?.into_parts()?;
                let view = control.add(spec, ttl, &caller)?;
                let mut response = json_response(StatusCode::CREATED, &view);
                if let Ok(location) = HeaderValue::from_str(&format!("/api/rules/{}", view.name)) {
                    response.headers_mut().insert(LOCATION, location);
                }
                Ok(response)
            }
            (["rules"], _) => Err(method_not_allowed("GET, POST")),
            (["rules", name], &Method::GET) => ok(&control.rule(name)?),
            (["rules", name], &Method::PATCH) => {
                let change = read::<RulePatch>(request).await?.into_change()?;
                ok(&control.change(name, change, &caller)?)
            }
            (["rules", name], &Method::DELETE) => {
                control.delete(name, &caller)?;
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            (["rules", _], _) => Err(method_not_allowed("GET, PATCH, DELETE")),
            (["rules", name, "enable"], &Method::POST) => {
                let Enable { ttl } = read(request).await?;
                let change = Change {
                    enabled: Some(true),
                    probability: None,
                    ttl,
                };
                ok(&control.change(name, change, &caller)?)
            }
            (["rules", name, "disable"], &Method::POST) => {
                let NoFields {} = read(request).await?;
                let change = Change {
                    enabled: Some(false),
                    ..Change::default()
                };
                ok(&control.change(name, change, &caller)?)
            }
            (["rules", _, "enable" | "disable"], _) => Err(method_not_allowed("POST")),
            (["reload"], &Method::POST) => {
                let summary = reload::in_background(control, Trigger::Api(caller)).await?;
                ok(&json!({
                    "outcome": "applied",
                    "added": summary.added,
                    "changed": summary.changed,
                    "removed": summary.removed,
                    "unchanged": summary.unchanged,
                    "rules": summary.rules,
                }))
            }
            (["halt"], &Method::POST) => ok(&control.halt(&caller)),
            (["resume"], &Method::POST) => ok(&control.resume(&caller)),
            (["reload" | "halt" | "resume"], _) => Err(method_not_allowed("POST")),
            (["scenarios"], &Method::GET) => ok(&control.scenarios()),
            (["scenarios"], _) => Err(method_not_allowed("GET")),
            (["scenarios", name], &Method::GET) => ok(&control.scenario(name)?),
            (["scenarios", _], _) => Err(method_not_allowed("GET")),
            (["scenarios", name, "start"], &Method::POST) => {
                let Start { speed, start_at } = read(request).await?;
                ok(&control.start_scenario_at(name, speed.unwrap_or(1.0), start_at, &caller)?)
            }
            (["scenarios", name, "stop"], &Method::POST) => {
                let NoFields {} = read(request).await?;
                ok(&control.stop_scenario(name, &caller)?)
            }
            (["scenarios", _, "start" | "stop"], _) => Err(method_not_allowed("POST")),
            (["scenarios", name, "report"], &Method::GET) => ok(&control.report(name)?),
            (["scenarios", _, "report"], _) => Err(method_not_allowed("GET")),
            _ => Err(not_found(&format!("/api/{path}"))),
        }
    }
}

/// The token of `Bearer TOKEN` (the scheme in any case, RFC 9110 §11.1).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !token.first()?.is_ascii_whitespace() {
        return None;
    }
    Some(token.trim_ascii())
}

// ---------------------------------------------------------------------------
// Request bodies: one struct per route, parsed with `serde_path_to_error` so
// that a bad field is named by its path.

/// An admin request body: its schema, how large it may be, and the `error`
/// code a bad value in it gets.
trait Body: DeserializeOwned {
    /// The most bytes it may take; past it the answer is `413`.
    const LIMIT: usize;
    /// Whether no body (or only whitespace) stands for `{}`.
    const OPTIONAL: bool;
    /// The code of a field with a value it does not take; an unknown field
    /// is `invalid_request`.
    const INVALID: &'static str;
}

/// `POST /api/rules`: a rule in the file schema, and an optional `ttl`.
///
/// Every other field is the rule's, and [`RuleSpec`] (itself
/// `deny_unknown_fields`) refuses those it does not know. It is read in a
/// second step, from [`rule`](Self::rule), so that its errors keep their
/// paths (`fault.status`); a flattened `RuleSpec` would lose them.
#[derive(Debug, Deserialize)]
struct NewRule {
    #[serde(default, deserialize_with = "optional_ttl")]
    ttl: Option<Duration>,
    #[serde(flatten)]
    rule: Map<String, Value>,
}

impl Body for NewRule {
    const LIMIT: usize = MAX_BODY_BYTES;
    const OPTIONAL: bool = false;
    const INVALID: &'static str = "invalid_rule";
}

impl NewRule {
    fn into_parts(self) -> Result<(RuleSpec, Option<Duration>), Failure> {
        let spec = serde_path_to_error::deserialize(Value::Object(self.rule)).map_err(|e| {
            // An unknown field of a rule is an invalid rule, as in a file.
            at_path("invalid_rule", e.path(), without_position(e.inner()))
        })?;
        Ok((spec, self.ttl))
    }
}

/// `PATCH /api/rules/{name}`: any of `enabled`, `probability`, `ttl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulePatch {
    #[serde(default, deserialize_with = "not_null")]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    probability: Option<f64>,
    #[serde(default, deserialize_with = "ttl_switch")]
    ttl: Option<Option<Duration>>,
}

impl Body for RulePatch {
    const LIMIT: usize = MAX_SWITCH_BODY_BYTES;
    const OPTIONAL: bool = false;
    const INVALID: &'static str = "invalid_rule";
}

impl RulePatch {
    fn into_change(self) -> Result<Change, Failure> {
        let RulePatch {
            enabled,
            probability,
            ttl,
        } = self;
        if enabled.is_none() && probability.is_none() && ttl.is_none() {
            return Err(Failure::bad_request(
                "nothing to change: give `enabled`, `probability` or `ttl`",
            ));
        }
        Ok(Change {
            enabled,
            probability,
            ttl,
        })
    }
}

/// `POST /api/rules/{name}/enable`: an optional `ttl`. Without one a TTL
/// already counting down stays; `null` removes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Enable {
    #[serde(default, deserialize_with = "ttl_switch")]
    ttl: Option<Option<Duration>>,
}

impl Body for Enable {
    const LIMIT: usize = MAX_SWITCH_BODY_BYTES;
    const OPTIONAL: bool = true;
    const INVALID: &'static str = "invalid_rule";
}

/// `POST /api/scenarios/{name}/start`: an optional `speed` (1 when absent or
/// `null`; its range is the control's to check) and an optional `start_at`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    #[serde(default)]
    speed: Option<f64>,
    /// RFC 3339: the run is anchored at this wall-clock instant.
    #[serde(default, deserialize_with = "start_at")]
    start_at: Option<SystemTime>,
}

/// `"start_at": "2026-12-01T14:00:00Z"` or `null` (start now).
fn start_at<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SystemTime>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| crate::scenario::spec::parse_start_at(&text).map_err(de::Error::custom))
        .transpose()
}

impl Body for Start {
    const LIMIT: usize = MAX_SWITCH_BODY_BYTES;
    const OPTIONAL: bool = true;
    const INVALID: &'static str = "invalid_request";
}

/// `POST .../disable` and `POST .../stop`: nothing, or `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl Body for NoFields {
    const LIMIT: usize = MAX_SWITCH_BODY_BYTES;
    const OPTIONAL: bool = true;
    const INVALID: &'static str = "invalid_request";
}

/// A duration string such as `"5m"`.
struct Ttl(Duration);

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Ttl, D::Error> {
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = Ttl;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"5m\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Ttl, E> {
                crate::duration::parse(text).map(Ttl).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// `"ttl": "5m"` or `null` (none).
fn optional_ttl<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<Ttl>::deserialize(deserializer)?.map(|Ttl(ttl)| ttl))
}

/// `"ttl": "5m"` sets a TTL and `"ttl": null` removes it; the field's
/// absence (the `default`, `None`) leaves it as it is.
fn ttl_switch<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<Duration>>, D::Error> {
    optional_ttl(deserializer).map(Some)
}

/// A switch that may be absent but not `null`.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Reads a body of at most `B::LIMIT` bytes and parses it.
async fn read<B: Body>(request: Request<Incoming>) -> Result<B, Failure> {
    let bytes = read_body(request, B::LIMIT).await?;
    parse(&bytes)
}

/// A whole body as `B`: `invalid_json` unless it is one JSON object (or
/// nothing, where `B` allows that), then `B`'s schema, with the path of the
/// first field that does not fit it.
fn parse<B: Body>(bytes: &[u8]) -> Result<B, Failure> {
    let invalid_json =
        |message: String| Failure::new(StatusCode::BAD_REQUEST, "invalid_json", message);
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None if B::OPTIONAL => b"{}",
        None => return Err(invalid_json("the request needs a JSON object body".into())),
        Some(_) => bytes,
    };
    // The syntax first, so that a broken document is `invalid_json` wherever
    // it breaks, not an error at the first field that came before.
    serde_json::from_slice::<de::IgnoredAny>(bytes)
        .map_err(|e| invalid_json(format!("invalid JSON: {e}")))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // serde would take a struct from an array too.
        return Err(invalid_json(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(
        |e: serde_path_to_error::Error<serde_json::Error>| {
            let message = without_position(e.inner());
            let code = if message.starts_with("unknown field") {
                "invalid_request"
            } else {
                B::INVALID
            };
            at_path(code, e.path(), message)
        },
    )
}

/// A `400` about the field at `path`: `field` names it, and so does the
/// message, as a rule file's errors do (`ttl: invalid duration …`).
fn at_path(code: &str, path: &serde_path_to_error::Path, message: String) -> Failure {
    let field = path.to_string();
    if field == "." {
        Failure::new(StatusCode::BAD_REQUEST, code, message)
    } else {
        Failure::new(StatusCode::BAD_REQUEST, code, format!("{field}: {message}")).field(field)
    }
}

/// serde_json's message without its ` at line L column C`: the path says
/// where, and a one-line body has no lines to speak of.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Reads a body of at most `limit` bytes within [`BODY_TIMEOUT`].
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, Failure> {
    let body = Limited::new(request.into_body(), limit);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("this request's body is limited to {limit} bytes"),
        )),
        Ok(Err(e)) => Err(Failure::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn method_not_allowed(allow: &'static str) -> Failure {
    Failure {
        allow: Some(allow),
        ..Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("use {allow}"),
        )
    }
}

fn not_found(path: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no admin route {path}"),
    )
}

fn ok(value: &impl Serialize) -> Result<AdminResponse, Failure> {
    Ok(json_response(StatusCode::OK, value))
}

fn json_response(status: StatusCode, value: &impl Serialize) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A failure's status, `error`, `field` and `message`.
    fn answer(failure: &Failure) -> (u16, &str, Option<&str>, &str) {
        (
            failure.status.as_u16(),
            failure.body["error"].as_str().unwrap_or_default(),
            failure.body["field"].as_str(),
            failure.body["message"].as_str().unwrap_or_default(),
        )
    }

    fn refused<B: Body + fmt::Debug>(body: &str) -> Failure {
        parse::<B>(body.as_bytes()).expect_err(body)
    }

    fn new_rule(body: &str) -> Result<(RuleSpec, Option<Duration>), Failure> {
        parse::<NewRule>(body.as_bytes()).and_then(NewRule::into_parts)
    }

    fn patch(body: &str) -> Result<Change, Failure> {
        parse::<RulePatch>(body.as_bytes()).and_then(RulePatch::into_change)
    }

    #[test]
    fn a_mistyped_field_is_named_by_its_path() {
        let failure = refused::<RulePatch>(r#"{"ttl": 5}"#);
        assert_eq!(
            answer(&failure),
            (
                400,
                "invalid_rule",
                Some("ttl"),
                "ttl: invalid type: integer `5`, expected a duration string such as \"5m\""
            )
        );
        let failure = refused::<RulePatch>(r#"{"enabled": "yes"}"#);
        assert_eq!(
            answer(&failure),
            (
                400,
                "invalid_rule",
                Some("enabled"),
                "enabled: invalid type: string \"yes\", expected a boolean"
            )
        );
        let failure = refused::<Start>(r#"{"speed": "fast"}"#);
        assert_eq!(
            answer(&failure),
            (
                400,
                "invalid_request",
                Some("speed"),
                "speed: invalid type: string \"fast\", expected f64"
            )
        );
        let failure = new_rule(r#"{"name":"x","fault":{"kind":"error","status":"teapot"}}"#)
            .expect_err("a string status");
        let (status, code, field, message) = answer(&failure);
        assert_eq!(
            (status, code, field),
            (400, "invalid_rule", Some("fault.status"))
        );
        assert!(
            message.starts_with("fault.status: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_ttl_says_what_a_duration_looks_like() {
        for body in [
            r#"{"name":"x","ttl":"soon","fault":{"kind":"abort"}}"#,
            r#"{"name":"x","ttl":true,"fault":{"kind":"abort"}}"#,
        ] {
            let failure = new_rule(body).expect_err(body);
            let (status, code, field, message) = answer(&failure);
            assert_eq!(
                (status, code, field),
                (400, "invalid_rule", Some("ttl")),
                "{body}"
            );
            assert!(message.starts_with("ttl: "), "{message}");
        }
        let Enable { ttl } = parse(br#"{"ttl": "1.5s"}"#).unwrap();
        assert_eq!(ttl, Some(Some(Duration::from_millis(1500))));
        assert_eq!(
            answer(&refused::<Enable>(r#"{"ttl": "soon"}"#)).2,
            Some("ttl")
        );
    }

    #[test]
    fn an_unknown_field_is_refused_with_the_fields_there_are() {
        let failure = refused::<RulePatch>(r#"{"colour": "red"}"#);
        let (status, code, field, message) = answer(&failure);
        assert_eq!(
            (status, code, field),
            (400, "invalid_request", Some("colour"))
        );
        assert!(
            message.contains("expected one of `enabled`, `probability`, `ttl`"),
            "{message}"
        );
        let failure = refused::<NoFields>(r#"{"force": true}"#);
        assert_eq!(
            answer(&failure),
            (
                400,
                "invalid_request",
                Some("force"),
                "force: unknown field `force`, there are no fields"
            )
        );
        assert_eq!(answer(&refused::<Start>(r#"{"sped": 2}"#)).2, Some("sped"));
        // A rule's own fields are the rule schema's to refuse.
        let failure = new_rule(r#"{"name":"x","probabilty":0.5,"fault":{"kind":"abort"}}"#)
            .expect_err("a typo");
        let (status, code, field, message) = answer(&failure);
        assert_eq!(
            (status, code, field),
            (400, "invalid_rule", Some("probabilty"))
        );
        assert!(message.contains("expected one of `name`"), "{message}");
    }

    #[test]
    fn the_bodies_of_the_spec_parse() {
        let (spec, ttl) =
            new_rule(r#"{"name":"tea","match":{"path":"/tea"},"fault":{"kind":"error","status":418},"ttl":"10m"}"#)
                .unwrap();
        assert_eq!(
            (spec.name.as_str(), ttl),
            ("tea", Some(Duration::from_secs(600)))
        );
        let (_, ttl) = new_rule(r#"{"name":"tea","fault":{"kind":"abort"},"ttl":null}"#).unwrap();
        assert_eq!(ttl, None);

        let change = patch(r#"{"enabled": true, "probability": 0.5, "ttl": "1h"}"#).unwrap();
        assert_eq!(change.enabled, Some(true));
        assert_eq!(change.probability, Some(0.5));
        assert_eq!(change.ttl, Some(Some(Duration::from_secs(3600))));
        assert_eq!(patch(r#"{"ttl": null}"#).unwrap().ttl, Some(None));
        assert_eq!(patch(r#"{"probability": 0}"#).unwrap().ttl, None);

        let Enable { ttl } = parse(b"").unwrap();
        assert_eq!(ttl, None, "no body keeps a TTL counting down");
        let Enable { ttl } = parse(br#"{"ttl": null}"#).unwrap();
        assert_eq!(ttl, Some(None));
        let Start { speed, start_at } = parse(br#"{"speed": 60}"#).unwrap();
        assert_eq!((speed, start_at), (Some(60.0), None));
        let Start { speed, start_at } = parse(b" \r\n").unwrap();
        assert_eq!((speed, start_at), (None, None));
        let Start { speed, start_at } =
            parse(br#"{"speed": 600, "start_at": "2026-12-01T15:00:00.250+01:00"}"#).unwrap();
        assert_eq!(speed, Some(600.0));
        assert_eq!(
            start_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_133_600_250))
        );
        let Start { start_at, .. } = parse(br#"{"start_at": null}"#).unwrap();
        assert_eq!(start_at, None);
        let NoFields {} = parse(b"{}").unwrap();
    }

    #[test]
    fn a_patch_must_change_something_and_a_switch_cannot_be_null() {
        let failure = patch("{}").expect_err("nothing to change");
        assert_eq!(answer(&failure).1, "invalid_request");
        for body in [r#"{"enabled": null}"#, r#"{"probability": null}"#] {
            let failure = patch(body).expect_err(body);
            assert_eq!(answer(&failure).1, "invalid_rule", "{body}");
            assert!(answer(&failure).2.is_some(), "{body}");
        }
        let failure = patch(r#"{"enabled": true, "enabled": false}"#).expect_err("twice");
        assert!(answer(&failure).3.contains("duplicate field `enabled`"));
    }

    #[test]
    fn only_a_json_object_is_a_body() {
        for (body, message) in [
            ("", "the request needs a JSON object body"),
            ("[true, 0.5]", "the request body must be a JSON object"),
            ("\"enabled\"", "the request body must be a JSON object"),
        ] {
            let failure = refused::<RulePatch>(body);
            assert_eq!(
                answer(&failure),
                (400, "invalid_json", None, message),
                "{body:?}"
            );
        }
        for body in ["{not json", r#"{"ttl": 5"#, r#"{"colour": 1, "#, "{} {}"] {
            let failure = refused::<RulePatch>(body);
            let (status, code, _, message) = answer(&failure);
            assert_eq!((status, code), (400, "invalid_json"), "{body:?}");
            assert!(message.starts_with("invalid JSON: "), "{message}");
        }
    }

    #[test]
    fn a_number_past_f64_is_named_by_its_path() {
        let failure = refused::<RulePatch>(r#"{"probability": 1e400}"#);
        assert_eq!(answer(&failure).2, Some("probability"));
        let failure = new_rule(r#"{"name":"x","fault":{"kind":"latency","delay":1e400}}"#)
            .expect_err("out of range");
        assert_eq!(answer(&failure).0, 400);
    }

    /// What any body gives when it is refused: a `400` with a code and a message.
    fn assert_refusal(failure: &Failure) {
        let (status, code, _, message) = answer(failure);
        assert_eq!(status, 400, "{}", failure.body);
        assert!(!code.is_empty() && !message.is_empty(), "{}", failure.body);
    }

    /// Parses `bytes` as every admin body; each is a value or a refusal.
    fn every_body(bytes: &[u8]) {
        let results = [
            parse::<NewRule>(bytes).and_then(NewRule::into_parts).err(),
            parse::<RulePatch>(bytes)
                .and_then(RulePatch::into_change)
                .err(),
            parse::<Enable>(bytes).err(),
            parse::<Start>(bytes).err(),
            parse::<NoFields>(bytes).err(),
        ];
        for failure in results.iter().flatten() {
            assert_refusal(failure);
        }
    }

    /// Keys the bodies and the rule schema know, and others.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "name", "ttl", "enabled", "probability", "speed", "description", "match",
                "fault", "kind", "status", "path", "upstreams", "headers", "body", "delay",
                "mode", "rate", "preset", "times", "every", "sticky", "chunks", "over",
            ])
            .prop_map(str::to_owned),
            1 => ".{0,8}",
        ]
    }

    /// JSON values that come near the schemas: durations, fault kinds,
    /// numbers of every JSON kind, nested objects with known keys.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            (0.0..=1.0f64).prop_map(Value::from),
            prop::sample::select(vec![
                "5m",
                "1.5s",
                "250ms",
                "soon",
                "",
                "error",
                "abort",
                "latency",
                "reset",
                "aws.throttling",
                "/tea",
                "header:x-user",
                "64KiB/s",
            ])
            .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_give_a_value_or_a_refusal(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            every_body(&bytes);
        }

        #[test]
        fn arbitrary_objects_give_a_value_or_a_refusal(
            fields in prop::collection::vec((key(), json_value()), 0..8),
        ) {
            let body = Value::Object(fields.into_iter().collect());
            every_body(&serde_json::to_vec(&body).unwrap());
        }

        #[test]
        fn arbitrary_json_gives_a_value_or_a_refusal(value in json_value(), cut in any::<prop::sample::Index>()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            every_body(&bytes);
            // And the same document cut short.
            every_body(&bytes[..cut.index(bytes.len() + 1)]);
        }
    }
}
