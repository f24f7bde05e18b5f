//! What happens to a matched request: the fault kinds of SPEC §3.1, as
//! written ([`FaultSpec`]) and validated ([`Fault`]), and the pure planning
//! step ([`plan`]) that turns matched rules into one [`Plan`].

pub mod plan;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::diagnostic::{FieldError, FieldPath};
use crate::duration::{serde_human, serde_human_opt};

pub use plan::{plan, Action, Plan};

/// How long a blackhole holds a request when the rule does not say.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(300);
/// `retry-after` of an `unavailable` `status` fault when the rule does not say.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A fault as written in a rule file or an API body.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FaultSpec {
    /// The request waits before it is forwarded.
    Latency {
        #[serde(with = "serde_human")]
        delay: Duration,
        /// Uniform ± around `delay`.
        #[serde(
            default,
            with = "serde_human_opt",
            skip_serializing_if = "Option::is_none"
        )]
        jitter: Option<Duration>,
    },
    /// The proxy answers instead of the upstream.
    Error {
        status: u16,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// Read once when the rule is loaded; relative to the rule file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_file: Option<String>,
    },
    /// The connection fails.
    Abort { mode: AbortMode },
    /// The upstream looks gone.
    Unavailable {
        #[serde(default)]
        mode: UnavailableMode,
        /// `blackhole`: how long a request is held before its connection closes.
        #[serde(
            default,
            with = "serde_human_opt",
            skip_serializing_if = "Option::is_none"
        )]
        max_hold: Option<Duration>,
        /// `status`: the `retry-after` the 503 carries.
        #[serde(
            default,
            with = "serde_human_opt",
            skip_serializing_if = "Option::is_none"
        )]
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AbortMode {
    /// TCP RST: the client sees "connection reset by peer".
    Reset,
    /// FIN with no response: the client sees the connection closed.
    Close,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnavailableMode {
    /// `503` with `retry-after`.
    #[default]
    Status,
    /// Accept and never answer, up to `max_hold`, then close.
    Blackhole,
}

/// A validated fault, ready for the request path.
#[derive(Debug, Clone)]
pub enum Fault {
    Latency { delay: Duration, jitter: Duration },
    Respond(Arc<SyntheticResponse>),
    Abort(AbortMode),
    Blackhole { max_hold: Duration },
}

impl Fault {
    /// The kind as users write it, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Latency { .. } => "latency",
            Fault::Respond(response) if response.unavailable => "unavailable",
            Fault::Respond(_) => "error",
            Fault::Abort(_) => "abort",
            Fault::Blackhole { .. } => "unavailable",
        }
    }
}

/// A response the proxy makes itself, built once when the rule loads.
#[derive(Debug, Clone)]
pub struct SyntheticResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Made by an `unavailable` fault rather than an `error` fault.
    pub unavailable: bool,
}

impl FaultSpec {
    /// Validates the fault; `base_dir` resolves `body_file`.
    pub fn validate(&self, base_dir: &Path, at: &FieldPath) -> Result<Fault, Vec<FieldError>> {
        let mut errors = Vec::new();
        let fault = match self {
            FaultSpec::Latency { delay, jitter } => Fault::Latency {
                delay: *delay,
                jitter: jitter.unwrap_or_default(),
            },
            FaultSpec::Error {
                status,
                headers,
                body,
                body_file,
            } => {
                let status = match StatusCode::from_u16(*status) {
                    Ok(s) if (200..=599).contains(status) => s,
                    _ => {
                        errors.push(FieldError::new(
                            at.key("status"),
                            format!("status {status} is not an HTTP status from 200 to 599"),
                        ));
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                let headers = header_map(headers, &at.key("headers"), &mut errors);
                let body = match (body, body_file) {
                    (Some(_), Some(_)) => {
                        errors.push(FieldError::new(
                            at.key("body_file"),
                            "give either `body` or `body_file`, not both",
                        ));
                        Bytes::new()
                    }
                    (Some(body), None) => Bytes::from(body.clone()),
                    (None, Some(file)) => match std::fs::read(base_dir.join(file)) {
                        Ok(bytes) => Bytes::from(bytes),
                        Err(e) => {
                            errors.push(FieldError::new(
                                at.key("body_file"),
                                format!("cannot read body_file {:?}: {e}", base_dir.join(file)),
                            ));
                            Bytes::new()
                        }
                    },
                    (None, None) => Bytes::new(),
                };
                Fault::Respond(Arc::new(SyntheticResponse {
                    status,
                    headers,
                    body,
                    unavailable: false,
                }))
            }
            FaultSpec::Abort { mode } => Fault::Abort(*mode),
            FaultSpec::Unavailable {
                mode,
                max_hold,
                retry_after,
            } => match mode {
                UnavailableMode::Status => {
                    if max_hold.is_some() {
                        errors.push(FieldError::new(
                            at.key("max_hold"),
                            "max_hold applies to mode = \"blackhole\" only",
                        ));
                    }
                    Fault::Respond(Arc::new(service_unavailable(
                        retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                    )))
                }
                UnavailableMode::Blackhole => {
                    if retry_after.is_some() {
                        errors.push(FieldError::new(
                            at.key("retry_after"),
                            "retry_after applies to mode = \"status\" only",
                        ));
                    }
                    let max_hold = max_hold.unwrap_or(DEFAULT_MAX_HOLD);
                    if max_hold.is_zero() {
                        errors.push(FieldError::new(
                            at.key("max_hold"),
                            "max_hold must be more than zero",
                        ));
                    }
                    Fault::Blackhole { max_hold }
                }
            },
        };
        if errors.is_empty() {
            Ok(fault)
        } else {
            Err(errors)
        }
    }
}

/// The 503 an `unavailable` `status` fault answers with.
fn service_unavailable(retry_after: Duration) -> SyntheticResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // retry-after is whole seconds; round up so "500ms" does not become "0".
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    SyntheticResponse {
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers,
        body: Bytes::from_static(
            br#"{"error":"service_unavailable","message":"the upstream is unavailable"}"#,
        ),
        unavailable: true,
    }
}

fn header_map(
    headers: &BTreeMap<String, String>,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let parsed_name = HeaderName::from_bytes(name.as_bytes());
        let parsed_value = HeaderValue::from_str(value);
        match (parsed_name, parsed_value) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            (Err(_), _) => errors.push(FieldError::new(
                at.key(name.as_str()),
                format!("invalid header name {name:?}"),
            )),
            (_, Err(_)) => errors.push(FieldError::new(
                at.key(name.as_str()),
                format!("invalid value for header {name:?}"),
            )),
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(toml_text: &str) -> Result<Fault, Vec<String>> {
        let spec: FaultSpec =
            toml::from_str(toml_text).map_err(|e| vec![e.message().to_owned()])?;
        spec.validate(Path::new("."), &FieldPath::root().key("fault"))
            .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn error_faults_build_their_response_once() {
        let Ok(Fault::Respond(response)) = fault(
            "kind = \"error\"\nstatus = 429\nheaders = { \"content-type\" = \"application/json\" }\nbody = '{\"message\":\"Rate Exceeded.\"}'",
        ) else {
            panic!("expected a response fault")
        };
        assert_eq!(response.status, 429);
        assert_eq!(response.headers["content-type"], "application/json");
        assert_eq!(&response.body[..], br#"{"message":"Rate Exceeded."}"#);
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        let errors = fault("kind = \"latency\"\ndelay = \"1s\"\nstatus = 500").unwrap_err();
        assert!(errors[0].contains("unknown field `status`"), "{errors:?}");
        let errors = fault("kind = \"explode\"").unwrap_err();
        assert!(
            errors[0].contains("unknown variant `explode`"),
            "{errors:?}"
        );
    }

    #[test]
    fn invalid_values_name_their_field() {
        let errors = fault("kind = \"error\"\nstatus = 42").unwrap_err();
        assert_eq!(
            errors,
            vec!["fault.status: status 42 is not an HTTP status from 200 to 599"]
        );
        let errors =
            fault("kind = \"unavailable\"\nmode = \"status\"\nmax_hold = \"1s\"").unwrap_err();
        assert_eq!(
            errors,
            vec!["fault.max_hold: max_hold applies to mode = \"blackhole\" only"]
        );
    }

    #[test]
    fn unavailable_status_rounds_retry_after_up() {
        let Ok(Fault::Respond(response)) = fault("kind = \"unavailable\"\nretry_after = \"1.5s\"")
        else {
            panic!("expected a response fault")
        };
        assert_eq!(response.status, 503);
        assert_eq!(response.headers["retry-after"], "2");
    }
}
