//! The admin listener (`[admin] listen`, loopback by default): the JSON API
//! of README "Runtime control", and the two open endpoints.
//!
//! | verb and path                         | answer                                          |
//! |---------------------------------------|-------------------------------------------------|
//! | `GET /healthz`                        | `200 ok` (no token needed)                      |
//! | `GET /metrics`                        | Prometheus text exposition (no token needed)    |
//! | `GET /api/status`                     | version, uptime, halted, seed, rule counts, last reload |
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
//! | `POST /api/scenarios/{name}/start`    | start a run, with an optional `{"speed": 60}`   |
//! | `POST /api/scenarios/{name}/stop`     | stop a run; its changes are undone at once      |
//! | `GET /api/scenarios/{name}/report`    | the latest run, step by step                    |
//!
//! Errors are `{"error": CODE, "message": …}` (plus `field` for a bad
//! field, `errors` for a rejected reload): `400` bad JSON or schema, `401`
//! no or wrong token, `404` unknown route or rule, `405` wrong method, `408`
//! body too slow, `409` a conflict (name taken, file rule, halted, TTL on a
//! disabled rule, a scenario already running or driving the same rule, a
//! rule a scenario drives), `413` body too large, `422` reload rejected.
//!
//! With a token configured, every `/api/*` call needs `Authorization:
//! Bearer TOKEN`, compared in constant time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
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
/// The largest admin request body: a rule with an inline error body fits.
pub const MAX_BODY_BYTES: usize = 1 << 20;
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
            ControlError::ScenarioConflict { .. } => {
                Failure::new(StatusCode::CONFLICT, "scenario_conflict", message)
            }
            ControlError::DrivenByScenario { .. } => {
                Failure::new(StatusCode::CONFLICT, "rule_in_scenario", message)
            }
            ControlError::GuardWatchesNothing(_) => {
                Failure::new(StatusCode::CONFLICT, "guard_watches_nothing", message)
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
                let body = read_json_object(request).await?;
                let (spec, ttl) = new_rule(body)?;
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
                let body = read_json_object(request).await?;
                let change = patch(body)?;
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
                let body = read_optional_json_object(request).await?;
                // No `ttl`: a TTL already counting down stays; `null` removes it.
                let ttl = match take_fields(body, &["ttl"])?.remove("ttl") {
                    None => None,
                    Some(Value::Null) => Some(None),
                    Some(value) => Some(Some(parse_ttl(&value)?)),
                };
                let change = Change {
                    enabled: Some(true),
                    probability: None,
                    ttl,
                };
                ok(&control.change(name, change, &caller)?)
            }
            (["rules", name, "disable"], &Method::POST) => {
                take_fields(read_optional_json_object(request).await?, &[])?;
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
                let body = read_optional_json_object(request).await?;
                let speed = match take_fields(body, &["speed"])?.remove("speed") {
                    None | Some(Value::Null) => 1.0,
                    Some(value) => value.as_f64().ok_or_else(|| {
                        Failure::bad_request("speed must be a number, such as 60").field("speed")
                    })?,
                };
                ok(&control.start_scenario(name, speed, &caller)?)
            }
            (["scenarios", name, "stop"], &Method::POST) => {
                take_fields(read_optional_json_object(request).await?, &[])?;
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

/// A rule to add: the file schema as JSON, and an optional `ttl`.
fn new_rule(mut body: Map<String, Value>) -> Result<(RuleSpec, Option<Duration>), Failure> {
    let ttl = match body.remove("ttl") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_ttl(&value)?),
    };
    let spec: RuleSpec = serde_path_to_error::deserialize(Value::Object(body)).map_err(|e| {
        let field = e.path().to_string();
        let failure = Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_rule",
            e.inner().to_string(),
        );
        if field == "." {
            failure
        } else {
            failure.field(field)
        }
    })?;
    Ok((spec, ttl))
}

/// `PATCH /api/rules/{name}`: `enabled`, `probability`, `ttl` (`null` removes it).
fn patch(body: Map<String, Value>) -> Result<Change, Failure> {
    let body = take_fields(body, &["enabled", "probability", "ttl"])?;
    if body.is_empty() {
        return Err(Failure::bad_request(
            "nothing to change: give `enabled`, `probability` or `ttl`",
        ));
    }
    let mut change = Change::default();
    for (key, value) in body {
        match key.as_str() {
            "enabled" => {
                change.enabled = Some(value.as_bool().ok_or_else(|| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_rule",
                        "enabled must be true or false",
                    )
                    .field("enabled")
                })?);
            }
            "probability" => {
                change.probability = Some(value.as_f64().ok_or_else(|| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_rule",
                        "probability must be a number from 0 to 1",
                    )
                    .field("probability")
                })?);
            }
            _ => {
                change.ttl = Some(match value {
                    Value::Null => None,
                    value => Some(parse_ttl(&value)?),
                });
            }
        }
    }
    Ok(change)
}

/// Refuses keys other than `allowed`.
fn take_fields(body: Map<String, Value>, allowed: &[&str]) -> Result<Map<String, Value>, Failure> {
    if let Some(unknown) = body.keys().find(|k| !allowed.contains(&k.as_str())) {
        let expected = if allowed.is_empty() {
            "no fields".to_owned()
        } else {
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Failure::bad_request(format!(
            "unknown field `{unknown}`, expected {expected}"
        ))
        .field(unknown));
    }
    Ok(body)
}

fn parse_ttl(value: &Value) -> Result<Duration, Failure> {
    let invalid = |message: String| {
        Failure::new(StatusCode::BAD_REQUEST, "invalid_rule", message).field("ttl")
    };
    let text = value
        .as_str()
        .ok_or_else(|| invalid("ttl must be a duration string such as \"5m\"".to_owned()))?;
    crate::duration::parse(text).map_err(|e| invalid(format!("ttl: {e}")))
}

/// Reads a body of at most [`MAX_BODY_BYTES`] within [`BODY_TIMEOUT`].
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Failure> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
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
            format!("admin request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(e)) => Err(Failure::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

async fn read_json_object(request: Request<Incoming>) -> Result<Map<String, Value>, Failure> {
    let bytes = read_body(request).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request needs a JSON object body",
        ));
    }
    parse_object(&bytes)
}

/// An empty body is an empty object.
async fn read_optional_json_object(
    request: Request<Incoming>,
) -> Result<Map<String, Value>, Failure> {
    let bytes = read_body(request).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    parse_object(&bytes)
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid JSON: {e}"),
        )),
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
