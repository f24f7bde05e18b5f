//! The admin API from Rust: a typed client for test suites, tools and
//! `faultline ctl`, which is built on it. Every call answers with the same
//! types the API serializes, or a [`ClientError`] whose message is one line
//! a person can act on.
//!
//! ```no_run
//! # async fn rehearse() -> Result<(), faultline::client::ClientError> {
//! use faultline::client::AdminClient;
//! use serde_json::json;
//!
//! let admin = AdminClient::new("http://127.0.0.1:9000")?;
//! admin
//!     .add_rule(&json!({
//!         "name": "checkout-503",
//!         "match": { "path": "/checkout/**" },
//!         "fault": { "kind": "error", "status": 503 },
//!         "ttl": "10m",
//!     }))
//!     .await?;
//! // … exercise your application …
//! admin.delete_rule("checkout-503").await?;
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::control::{ReloadSummary, RuleView, ScenarioView, StatusView};
use crate::scenario::Report;

/// How long one call to the admin API may take, unless
/// [`AdminClient::with_timeout`] says otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed; the message is one line for a person.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The caller's mistake: a bad admin URL or token, an unwritable output.
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach faultline's admin API at {url}: {reason} (is faultline running? --admin sets the address)")]
    Unreachable { url: String, reason: String },
    #[error("the admin API at {url} refused the token: {message} (set --token or FAULTLINE_ADMIN_TOKEN)")]
    Unauthorized { url: String, message: String },
    /// The API answered with an error (`404`, `409`, `422`, …).
    #[error("{message} ({status} {code})")]
    Api {
        status: u16,
        /// The API's error code, such as `not_found` or `rule_in_scenario`.
        code: String,
        message: String,
        /// One line per problem of a rejected reload or an invalid rule.
        details: Vec<String>,
        /// The API's answer as it came.
        body: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    /// Some replicas of a fleet failed (`faultline ctl --admin a,b,c` or
    /// `--fleet`); the others were acted on.
    #[error("{} of {total} replicas failed: {}", .failed.len(), .failed.join(", "))]
    Replicas {
        total: usize,
        /// The failed replicas' URLs.
        failed: Vec<String>,
        /// `URL: error`, one per failed replica.
        lines: Vec<String>,
    },
}

impl ClientError {
    /// The lines to print under the one-line message.
    pub fn details(&self) -> &[String] {
        match self {
            ClientError::Api { details, .. } => details,
            ClientError::Replicas { lines, .. } => lines,
            _ => &[],
        }
    }

    /// The API's JSON error, when the API answered with one.
    pub fn body(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(body),
            _ => None,
        }
    }

    /// The API's error code (`scenario_conflict`, …), when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The admin API of one running faultline.
#[derive(Clone, Debug)]
pub struct AdminClient {
    base: String,
    authorization: Option<HeaderValue>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// For a whole call: connecting, sending, the whole answer.
    timeout: Duration,
}

impl AdminClient {
    /// A client for the admin API at `admin` (`http://HOST:PORT`; a bare
    /// `HOST:PORT` is taken as http). Nothing is sent until the first call.
    pub fn new(admin: &str) -> Result<AdminClient, ClientError> {
        Ok(AdminClient {
            base: normalize_base(admin)?,
            authorization: None,
            client: http_client(CALL_TIMEOUT),
            timeout: CALL_TIMEOUT,
        })
    }

    /// How long a call may take, connecting included (10 seconds unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.client = http_client(timeout);
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer TOKEN` with every call.
    pub fn with_token(mut self, token: &str) -> Result<AdminClient, ClientError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::Usage("the token has characters a header cannot carry".to_owned())
        })?;
        // Kept out of `Debug` output and logs.
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// The admin API's base URL, as calls use it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Version, uptime, halted or not, seed, rule counts, running scenarios.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.get("/api/status").await
    }

    /// Every rule in evaluation order.
    pub async fn rules(&self) -> Result<Vec<RuleView>, ClientError> {
        self.get("/api/rules").await
    }

    pub async fn rule(&self, name: &str) -> Result<RuleView, ClientError> {
        self.get(&format!("/api/rules/{}", segment(name)?)).await
    }

    /// Adds a rule: the rule file's schema as JSON, plus an optional `ttl`.
    pub async fn add_rule(&self, rule: &Value) -> Result<RuleView, ClientError> {
        self.send(Method::POST, "/api/rules", Some(rule.clone()))
            .await
    }

    /// Turns a rule on; with a `ttl` (`"5m"`) it turns itself off again.
    pub async fn enable(&self, name: &str, ttl: Option<&str>) -> Result<RuleView, ClientError> {
        let body = ttl.map(|ttl| json!({ "ttl": ttl }));
        self.send(
            Method::POST,
            &format!("/api/rules/{}/enable", segment(name)?),
            body,
        )
        .await
    }

    pub async fn disable(&self, name: &str) -> Result<RuleView, ClientError> {
        self.send(
            Method::POST,
            &format!("/api/rules/{}/disable", segment(name)?),
            None,
        )
        .await
    }

    pub async fn set_probability(
        &self,
        name: &str,
        probability: f64,
    ) -> Result<RuleView, ClientError> {
        let body = json!({ "probability": probability });
        self.send(
            Method::PATCH,
            &format!("/api/rules/{}", segment(name)?),
            Some(body),
        )
        .await
    }

    /// Removes a rule added through the API (file rules are refused).
    pub async fn delete_rule(&self, name: &str) -> Result<(), ClientError> {
        self.call(
            Method::DELETE,
            &format!("/api/rules/{}", segment(name)?),
            None,
        )
        .await
        .map(drop)
    }

    /// The kill switch: every fault off, enabling refused until [`resume`](Self::resume).
    pub async fn halt(&self) -> Result<StatusView, ClientError> {
        self.send(Method::POST, "/api/halt", None).await
    }

    pub async fn resume(&self) -> Result<StatusView, ClientError> {
        self.send(Method::POST, "/api/resume", None).await
    }

    /// Re-reads the rule files.
    pub async fn reload(&self) -> Result<ReloadSummary, ClientError> {
        self.send(Method::POST, "/api/reload", None).await
    }

    pub async fn scenarios(&self) -> Result<Vec<ScenarioView>, ClientError> {
        self.get("/api/scenarios").await
    }

    pub async fn scenario(&self, name: &str) -> Result<ScenarioView, ClientError> {
        self.get(&format!("/api/scenarios/{}", segment(name)?))
            .await
    }

    /// Starts a run, `speed` times faster than real time (1 when `None`).
    pub async fn start_scenario(
        &self,
        name: &str,
        speed: Option<f64>,
    ) -> Result<ScenarioView, ClientError> {
        let body = speed.map(|speed| json!({ "speed": speed }));
        self.send(
            Method::POST,
            &format!("/api/scenarios/{}/start", segment(name)?),
            body,
        )
        .await
    }

    /// Stops a run; its changes are undone at once.
    pub async fn stop_scenario(&self, name: &str) -> Result<ScenarioView, ClientError> {
        self.send(
            Method::POST,
            &format!("/api/scenarios/{}/stop", segment(name)?),
            None,
        )
        .await
    }

    /// The latest run of a scenario, step by step.
    pub async fn report(&self, name: &str) -> Result<Report, ClientError> {
        self.get(&format!("/api/scenarios/{}/report", segment(name)?))
            .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        self.parse(&self.call(method, path, body).await?)
    }

    /// One raw call: the answer's text on a 2xx, else the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Usage(format!("invalid admin URL {url}: {e}")))?;
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
            .map_err(|e| ClientError::Usage(format!("cannot build the request to {url}: {e}")))?;
        let unreachable = |reason: String| ClientError::Unreachable {
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
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ))
            })??;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            return Ok(text);
        }
        Err(self.api_error(status, text))
    }

    /// A non-2xx answer as an error, with the API's code, message and details.
    fn api_error(&self, status: StatusCode, text: String) -> ClientError {
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
        let message = field("message").unwrap_or_else(|| text.trim().to_owned());
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::Unauthorized {
                url: self.base.clone(),
                message,
            };
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
        ClientError::Api {
            status: status.as_u16(),
            code: field("error").unwrap_or_else(|| "error".to_owned()),
            message,
            details,
            body: text,
        }
    }

    /// An answer's JSON as `T`.
    pub fn parse<T: DeserializeOwned>(&self, text: &str) -> Result<T, ClientError> {
        serde_json::from_str(text).map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            reason: format!("not the JSON expected ({e}); is this faultline's admin API?"),
        })
    }
}

fn http_client(connect_timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A rule or scenario name as a path segment: a clear error for anything
/// that is not a name, rather than a malformed URL or another route.
fn segment(name: &str) -> Result<&str, ClientError> {
    if crate::config::is_valid_name(name) {
        Ok(name)
    } else {
        Err(ClientError::Usage(format!(
            "{name:?} is not a rule or scenario name ([A-Za-z0-9._-]+)"
        )))
    }
}

/// `http://HOST:PORT` without a trailing slash; a bare `HOST:PORT` is taken as http.
fn normalize_base(admin: &str) -> Result<String, ClientError> {
    let admin = admin.trim().trim_end_matches('/');
    let with_scheme = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| ClientError::Usage(format!("invalid admin URL {admin:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(ClientError::Usage(format!(
                "admin URL {admin:?}: the admin API speaks plain http, not {other}"
            )))
        }
        None => return Err(ClientError::Usage(format!("invalid admin URL {admin:?}"))),
    }
    if uri.authority().is_none() {
        return Err(ClientError::Usage(format!(
            "admin URL {admin:?} has no host"
        )));
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
