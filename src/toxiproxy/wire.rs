//! Toxiproxy 2.12's JSON, as its `api.go` writes and reads it, and the
//! mapping of its toxics onto faultline's fault kinds (SPEC §9's table).
//!
//! Field order follows Go's `encoding/json` on Toxiproxy's structs, so the
//! bodies are byte-for-byte what its clients have seen.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fault::{FaultKind, FaultSpec, MAX_FAULT_DURATION};

/// The version `GET /version` reports: the Toxiproxy API faultline copies.
pub const TOXIPROXY_VERSION: &str = "2.12.0";

/// `{"error": …, "status": …}`, Toxiproxy's `ApiError`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(rename = "error")]
    pub message: String,
    pub status: u16,
}

impl ApiError {
    pub fn new(message: impl Into<String>, status: u16) -> Self {
        Self {
            message: message.into(),
            status,
        }
    }

    /// Toxiproxy's `joinError`: its message, `": "`, the cause.
    pub fn joined(self, cause: impl std::fmt::Display) -> Self {
        Self::new(format!("{}: {cause}", self.message), self.status)
    }

    pub fn bad_request_body() -> Self {
        Self::new("bad request body", 400)
    }
    pub fn missing_field() -> Self {
        Self::new("missing required field", 400)
    }
    pub fn proxy_not_found() -> Self {
        Self::new("proxy not found", 404)
    }
    pub fn proxy_exists() -> Self {
        Self::new("proxy already exists", 409)
    }
    pub fn invalid_stream() -> Self {
        Self::new(
            "stream was invalid, can be either upstream or downstream",
            400,
        )
    }
    pub fn invalid_toxic_type() -> Self {
        Self::new("invalid toxic type", 400)
    }
    pub fn toxic_exists() -> Self {
        Self::new("toxic already exists", 409)
    }
    pub fn toxic_not_found() -> Self {
        Self::new("toxic not found", 404)
    }
}

/// A proxy as `POST /proxies` and `/populate` read it; absent fields are
/// Go's zero values.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProxyInput {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub upstream: String,
    /// `None`: enabled (create) or unchanged (update).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A proxy as Toxiproxy writes it, with its toxics.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyView {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub enabled: bool,
    pub toxics: Vec<ToxicView>,
}

/// A toxic as Toxiproxy writes it (`ToxicWrapper`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToxicView {
    pub attributes: Value,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub stream: String,
    /// As Go writes a float32: `1`, `0.5`.
    pub toxicity: Value,
}

/// A toxicity as Go's `encoding/json` writes a float32.
pub fn toxicity_json(toxicity: f32) -> Value {
    if toxicity.fract() == 0.0 && toxicity.abs() < 1e15 {
        Value::from(toxicity as i64)
    } else {
        // Through its shortest text, so 0.3 stays 0.3 and not 0.30000001…
        format!("{toxicity}")
            .parse::<f64>()
            .map_or(Value::Null, Value::from)
    }
}

/// The toxic types Toxiproxy 2.12 has, and the attributes each takes
/// (all integers, zero when absent).
const TYPES: [(&str, &[&str]); 8] = [
    ("latency", &["latency", "jitter"]),
    ("bandwidth", &["rate"]),
    ("slicer", &["average_size", "size_variation", "delay"]),
    ("limit_data", &["bytes"]),
    ("reset_peer", &["timeout"]),
    ("timeout", &["timeout"]),
    ("slow_close", &["delay"]),
    ("noop", &[]),
];

/// A toxic's `type` and `attributes`, read as Toxiproxy reads them: the
/// known attributes of the type, as integers, zero when absent; others ignored.
pub fn attributes(kind: &str, given: Option<&Value>) -> Result<Value, ApiError> {
    let Some((_, names)) = TYPES.iter().find(|(name, _)| *name == kind) else {
        return Err(ApiError::invalid_toxic_type());
    };
    let given = match given {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => {
            return Err(ApiError::bad_request_body()
                .joined(format!("attributes must be an object, not {other}")))
        }
    };
    let mut attributes = Map::new();
    for name in *names {
        let value = match given.get(*name) {
            None | Some(Value::Null) => 0,
            Some(value) => value.as_i64().ok_or_else(|| {
                ApiError::bad_request_body().joined(format!(
                    "attribute {name:?} must be an integer, not {value}"
                ))
            })?,
        };
        attributes.insert((*name).to_owned(), Value::from(value));
    }
    Ok(Value::Object(attributes))
}

/// Laid over `attributes` (Toxiproxy's update decodes into the toxic as it is).
pub fn merge_attributes(kind: &str, old: &Value, patch: Option<&Value>) -> Result<Value, ApiError> {
    let mut merged = old.as_object().cloned().unwrap_or_default();
    match patch {
        None | Some(Value::Null) => {}
        Some(Value::Object(patch)) => merged.extend(patch.clone()),
        Some(other) => {
            return Err(ApiError::bad_request_body()
                .joined(format!("attributes must be an object, not {other}")))
        }
    }
    attributes(kind, Some(&Value::Object(merged)))
}

fn int(attributes: &Value, name: &str) -> i64 {
    attributes.get(name).and_then(Value::as_i64).unwrap_or(0)
}

fn millis(value: i64) -> String {
    format!("{}ms", value.max(0))
}

/// The fault a toxic is (SPEC §9), or `None` for `noop`.
pub fn fault(kind: &str, stream: &str, attributes: &Value) -> Result<Option<FaultSpec>, ApiError> {
    let bad = |message: String| ApiError::bad_request_body().joined(message);
    let mut spec = FaultSpec {
        kind: FaultKind::Latency,
        delay: None,
        jitter: None,
        distribution: None,
        side: None,
        status: None,
        headers: None,
        body: None,
        body_file: None,
        preset: None,
        grpc_status: None,
        grpc_message: None,
        mode: None,
        max_hold: None,
        retry_after: None,
        rate: None,
        chunks: None,
        over: None,
        after_bytes: None,
        then: None,
        answer: None,
        addresses: None,
        ttl: None,
        direction: Some(stream.to_owned()),
        average_size: None,
        size_variation: None,
        after: None,
    };
    match kind {
        "noop" => return Ok(None),
        "latency" => {
            spec.delay = Some(millis(int(attributes, "latency")));
            spec.jitter = Some(millis(int(attributes, "jitter")));
        }
        "bandwidth" => {
            // Toxiproxy's rate is KB/s: bytes per millisecond.
            let rate = int(attributes, "rate");
            if rate <= 0 {
                return Err(bad(format!("rate must be at least 1 (KB/s), not {rate}")));
            }
            spec.kind = FaultKind::Bandwidth;
            spec.rate = Some(format!("{rate}KB/s"));
        }
        "slicer" => {
            let average = int(attributes, "average_size");
            let variation = int(attributes, "size_variation");
            if average <= 0 || variation < 0 {
                return Err(bad(format!(
                    "average_size must be at least 1 and size_variation at least 0, not {average} and {variation}"
                )));
            }
            spec.kind = FaultKind::Slice;
            spec.average_size = u64::try_from(average).ok();
            // Toxiproxy clamps the variation below the average the same way.
            spec.size_variation = u64::try_from(variation.min(average - 1)).ok();
            // Microseconds.
            spec.delay = Some(format!("{}us", int(attributes, "delay").max(0)));
        }
        "limit_data" => {
            spec.kind = FaultKind::Truncate;
            spec.after_bytes = u64::try_from(int(attributes, "bytes").max(0)).ok();
            // Toxiproxy closes the connection once the bytes are through.
            spec.then = Some("close".to_owned());
        }
        "reset_peer" => {
            spec.kind = FaultKind::Abort;
            spec.direction = None;
            spec.mode = Some("reset".to_owned());
            let timeout = int(attributes, "timeout");
            if timeout > 0 {
                spec.after = Some(millis(timeout));
            }
        }
        "timeout" => {
            spec.kind = FaultKind::Unavailable;
            spec.direction = None;
            spec.mode = Some("blackhole".to_owned());
            // 0: held until the toxic goes (as long as a fault may last).
            let timeout = int(attributes, "timeout");
            spec.max_hold = Some(if timeout > 0 {
                millis(timeout)
            } else {
                format!("{}s", MAX_FAULT_DURATION.as_secs())
            });
        }
        "slow_close" => {
            spec.kind = FaultKind::SlowClose;
            spec.delay = Some(millis(int(attributes, "delay")));
        }
        _ => return Err(ApiError::invalid_toxic_type()),
    }
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::FieldPath;
    use crate::fault::{BodySource, Fault};

    fn validated(kind: &str, attributes_json: &str) -> Fault {
        let given: Value = serde_json::from_str(attributes_json).unwrap();
        let attributes = attributes(kind, Some(&given)).unwrap();
        let spec = fault(kind, "downstream", &attributes).unwrap().unwrap();
        spec.validate(BodySource::inline(), &FieldPath::root())
            .unwrap()
    }

    #[test]
    fn every_toxic_type_is_a_tcp_fault() {
        for (kind, attributes_json) in [
            ("latency", r#"{"latency": 100, "jitter": 10}"#),
            ("bandwidth", r#"{"rate": 100}"#),
            (
                "slicer",
                r#"{"average_size": 64, "size_variation": 32, "delay": 10}"#,
            ),
            ("limit_data", r#"{"bytes": 10}"#),
            ("reset_peer", r#"{"timeout": 100}"#),
            ("timeout", r#"{"timeout": 0}"#),
            ("slow_close", r#"{"delay": 100}"#),
        ] {
            assert!(validated(kind, attributes_json).fits_tcp(), "{kind}");
        }
        assert!(matches!(
            validated("bandwidth", r#"{"rate": 100}"#),
            Fault::Bandwidth {
                bytes_per_sec: 100_000,
                ..
            }
        ));
    }

    #[test]
    fn attributes_are_read_as_toxiproxy_reads_them() {
        let read = attributes("latency", Some(&serde_json::json!({"latency": 5, "x": 1}))).unwrap();
        assert_eq!(read, serde_json::json!({"latency": 5, "jitter": 0}));
        assert_eq!(
            attributes("explode", None).unwrap_err(),
            ApiError::invalid_toxic_type()
        );
    }
}
