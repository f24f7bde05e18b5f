//! Error presets (README "Error presets"): the documented wire format of real cloud API
//! errors (status, headers, body) as one table, and the fresh request ids
//! each injected response carries, so an SDK's retry and error
//! classification code sees what it would see in a real outage.
//!
//! A preset is turned into a [`SyntheticResponse`] once, when the rule
//! loads; only the ids are made per response (see [`RequestIdStyle`]).

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::SyntheticResponse;
use crate::grpc::GrpcStatus;

/// The request id of the AWS JSON protocols (awsJson1_0, awsJson1_1, restJson1).
pub static X_AMZN_REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
/// S3's request id: 16 uppercase hex digits.
pub static X_AMZ_REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");
/// S3's extended request id ("host id"): base64.
pub static X_AMZ_ID_2: HeaderName = HeaderName::from_static("x-amz-id-2");
/// DynamoDB's checksum of the response body.
pub static X_AMZ_CRC32: HeaderName = HeaderName::from_static("x-amz-crc32");

const AWS_JSON_1_0: &str = "application/x-amz-json-1.0";
const AWS_JSON_1_1: &str = "application/x-amz-json-1.1";
const REST_JSON: &str = "application/json";

/// One preset: what the real service sends for this error.
#[derive(Debug)]
pub struct Preset {
    /// As written in `preset = "…"`.
    pub name: &'static str,
    pub status: StatusCode,
    /// Fixed headers; the fresh ids of `request_ids` come on top.
    pub headers: &'static [(&'static str, &'static str)],
    pub body: PresetBody,
    /// `None`: the real service's response carries no id of its own.
    pub request_ids: Option<RequestIdStyle>,
    /// DynamoDB: `x-amz-crc32` carries the CRC32 of the body.
    pub crc32: bool,
}

/// The body of a preset.
#[derive(Debug, Clone, Copy)]
pub enum PresetBody {
    Fixed(&'static str),
    /// S3's XML error document, which repeats the response's ids.
    S3(S3Error),
    /// A gRPC error: no body at all (trailers-only), the status and its
    /// message in the headers, HTTP 200.
    Grpc {
        status: GrpcStatus,
        message: &'static str,
    },
}

/// How an injected response gets ids of its own, made per response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestIdStyle {
    /// `x-amzn-RequestId`: a lowercase UUID v4.
    Amzn,
    /// S3's `x-amz-request-id` and `x-amz-id-2`; with `echo`, the body is
    /// that XML error document rendered per response with the same ids.
    S3 { echo: Option<S3Error> },
}

/// The `Code` and `Message` of an S3 XML error document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Error {
    pub code: &'static str,
    pub message: &'static str,
}

/// Every preset, by name.
///
/// Sources: the AWS JSON protocols (Smithy `awsJson1_0`, `awsJson1_1`,
/// `restJson1`) name the error in `x-amzn-ErrorType` and in the body
/// (`__type`, or the shape's members for restJson1) and send
/// `x-amzn-RequestId`. `ThrottlingException` (400) and `InternalFailure`
/// (500) are on the "Common Errors" page of the AWS API references; that page
/// calls the 503 `ServiceUnavailable`, while the services that model it
/// themselves (API Gateway, for one) name it `ServiceUnavailableException`.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "aws.throttling",
        status: StatusCode::BAD_REQUEST,
        headers: &[
            ("content-type", AWS_JSON_1_1),
            ("x-amzn-errortype", "ThrottlingException"),
        ],
        body: PresetBody::Fixed(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: false,
    },
    Preset {
        name: "aws.service-unavailable",
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers: &[
            ("content-type", AWS_JSON_1_1),
            ("x-amzn-errortype", "ServiceUnavailableException"),
        ],
        body: PresetBody::Fixed(
            r#"{"__type":"ServiceUnavailableException","message":"Service is unavailable"}"#,
        ),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: false,
    },
    Preset {
        name: "aws.internal-error",
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers: &[
            ("content-type", AWS_JSON_1_1),
            ("x-amzn-errortype", "InternalFailure"),
        ],
        body: PresetBody::Fixed(
            r#"{"__type":"InternalFailure","message":"The request processing has failed because of an unknown error, exception or failure."}"#,
        ),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: false,
    },
    // Lambda is restJson1. The model binds TooManyRequestsException's
    // `retryAfterSeconds` to the `Retry-After` header; its body members are
    // `Type`, `message` and `Reason` (Lambda API Reference, Invoke, Errors).
    Preset {
        name: "lambda.too-many-requests",
        status: StatusCode::TOO_MANY_REQUESTS,
        headers: &[
            ("content-type", REST_JSON),
            ("x-amzn-errortype", "TooManyRequestsException"),
            ("retry-after", "1"),
        ],
        body: PresetBody::Fixed(
            r#"{"Reason":"ConcurrentInvocationLimitExceeded","Type":"User","message":"Rate Exceeded."}"#,
        ),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: false,
    },
    // ServiceException's members are `Type` and `Message`, capital M, unlike
    // TooManyRequestsException's `message` (the Lambda model as shown in the
    // botocore reference, Lambda.Client.exceptions.ServiceException).
    // SDKs read the message under either spelling.
    Preset {
        name: "lambda.service-exception",
        status: StatusCode::INTERNAL_SERVER_ERROR,
        headers: &[
            ("content-type", REST_JSON),
            ("x-amzn-errortype", "ServiceException"),
        ],
        body: PresetBody::Fixed(
            r#"{"Type":"Service","Message":"The AWS Lambda service encountered an internal error."}"#,
        ),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: false,
    },
    // DynamoDB is awsJson1_0 and also sends `x-amz-crc32`, the CRC32 of the
    // body, which SDKs check when present (DynamoDB Developer Guide,
    // "DynamoDB low-level API", Response format; aws-sdk-go-v2
    // service/dynamodb/internal/customizations).
    Preset {
        name: "dynamodb.throughput-exceeded",
        status: StatusCode::BAD_REQUEST,
        headers: &[
            ("content-type", AWS_JSON_1_0),
            ("x-amzn-errortype", "ProvisionedThroughputExceededException"),
        ],
        body: PresetBody::Fixed(
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."}"#,
        ),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: true,
    },
    // S3 is restXml: no x-amzn-* headers, its own ids, and `Server: AmazonS3`
    // on every response (Amazon S3 API Reference, "Common Response Headers"
    // and "Error responses", SlowDown: 503).
    Preset {
        name: "s3.slow-down",
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers: &[("content-type", "application/xml"), ("server", "AmazonS3")],
        body: PresetBody::S3(S3Error {
            code: "SlowDown",
            message: "Please reduce your request rate.",
        }),
        request_ids: Some(RequestIdStyle::S3 { echo: None }),
        crc32: false,
    },
    // gRPC errors answer trailers-only (gRPC PROTOCOL-HTTP2.md). The
    // messages are those Google's APIs send with each code ("Errors" in
    // the Google Cloud API design guide), the most common gRPC servers a
    // client meets in the wild.
    grpc_preset(
        "grpc.unavailable",
        GrpcStatus::UNAVAILABLE,
        "The service is currently unavailable.",
    ),
    grpc_preset(
        "grpc.deadline-exceeded",
        GrpcStatus::DEADLINE_EXCEEDED,
        "Deadline expired before operation could complete.",
    ),
    grpc_preset(
        "grpc.resource-exhausted",
        GrpcStatus::RESOURCE_EXHAUSTED,
        "Resource has been exhausted (e.g. check quota).",
    ),
    grpc_preset(
        "grpc.internal",
        GrpcStatus::INTERNAL,
        "Internal error encountered.",
    ),
];

const fn grpc_preset(name: &'static str, status: GrpcStatus, message: &'static str) -> Preset {
    Preset {
        name,
        status: StatusCode::OK,
        headers: &[],
        body: PresetBody::Grpc { status, message },
        request_ids: None,
        crc32: false,
    }
}

/// The preset of that name.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|preset| preset.name == name)
}

/// The names of every preset, for error messages.
pub fn names() -> String {
    let names: Vec<&str> = PRESETS.iter().map(|preset| preset.name).collect();
    names.join(", ")
}

/// The names of the gRPC presets, for error messages.
pub fn grpc_names() -> String {
    let names: Vec<&str> = PRESETS
        .iter()
        .filter(|preset| preset.grpc().is_some())
        .map(|preset| preset.name)
        .collect();
    names.join(", ")
}

impl Preset {
    /// A gRPC preset's status and message; `None` for an HTTP error.
    pub fn grpc(&self) -> Option<(GrpcStatus, &'static str)> {
        match self.body {
            PresetBody::Grpc { status, message } => Some((status, message)),
            PresetBody::Fixed(_) | PresetBody::S3(_) => None,
        }
    }

    /// The response this preset answers with; `body`, when given, replaces
    /// the preset's (and an S3 body then no longer repeats the ids). A
    /// gRPC preset takes no body (validation says so).
    pub fn response(&self, body: Option<Bytes>) -> SyntheticResponse {
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut request_ids = self.request_ids;
        let body = match (body, self.body) {
            (Some(body), _) => body,
            (None, PresetBody::Fixed(text)) => Bytes::from_static(text.as_bytes()),
            (None, PresetBody::S3(error)) => {
                request_ids = Some(RequestIdStyle::S3 { echo: Some(error) });
                // The document's shape; the ids are filled in per response.
                error.render("", "")
            }
            (None, PresetBody::Grpc { status, message }) => {
                headers.extend(crate::grpc::trailers_only(status, message));
                Bytes::new()
            }
        };
        if self.crc32 {
            headers.insert(X_AMZ_CRC32.clone(), HeaderValue::from(crc32(&body)));
        }
        SyntheticResponse {
            status: self.status,
            headers,
            body,
            unavailable: false,
            request_ids,
        }
    }
}

impl S3Error {
    /// The XML error document S3 sends, with these ids.
    pub fn render(&self, request_id: &str, host_id: &str) -> Bytes {
        let mut xml = String::with_capacity(256);
        xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
        push_escaped(&mut xml, self.code);
        xml.push_str("</Code><Message>");
        push_escaped(&mut xml, self.message);
        xml.push_str("</Message><RequestId>");
        push_escaped(&mut xml, request_id);
        xml.push_str("</RequestId><HostId>");
        push_escaped(&mut xml, host_id);
        xml.push_str("</HostId></Error>");
        Bytes::from(xml)
    }
}

/// A fresh `x-amzn-RequestId`: a lowercase UUID v4.
pub fn amzn_request_id() -> HeaderValue {
    let mut bytes: [u8; 16] = random_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut text = Vec::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push(b'-');
        }
        push_hex(&mut text, *byte, b"0123456789abcdef");
    }
    header_value(text)
}

/// A fresh S3 `x-amz-request-id`: 16 uppercase hex digits.
pub fn s3_request_id() -> HeaderValue {
    let bytes: [u8; 8] = random_bytes();
    let mut text = Vec::with_capacity(16);
    for byte in bytes {
        push_hex(&mut text, byte, b"0123456789ABCDEF");
    }
    header_value(text)
}

/// A fresh S3 `x-amz-id-2`: 48 random bytes in base64, 64 characters, the
/// length of the host ids in S3's documentation.
pub fn s3_host_id() -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: [u8; 48] = random_bytes();
    let mut text = Vec::with_capacity(64);
    for group in bytes.chunks_exact(3) {
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for shift in [18, 12, 6, 0] {
            text.push(ALPHABET[(n >> shift & 0x3f) as usize]);
        }
    }
    header_value(text)
}

/// CRC-32 (IEEE 802.3, as zlib), the checksum of DynamoDB's `x-amz-crc32`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

thread_local! {
    /// Ids need to be unique, not reproducible, so they do not come from the
    /// seeded planning streams: one generator per thread, seeded from the
    /// process's random hasher keys.
    static ID_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::seed_from_u64(
        RandomState::new().hash_one((std::thread::current().id(), std::time::SystemTime::now())),
    ));
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ID_RNG.with(|rng| rng.borrow_mut().fill_bytes(&mut bytes));
    bytes
}

fn push_hex(text: &mut Vec<u8>, byte: u8, digits: &[u8; 16]) {
    text.push(digits[usize::from(byte >> 4)]);
    text.push(digits[usize::from(byte & 0x0f)]);
}

fn header_value(text: Vec<u8>) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .expect("hex digits, '-' and base64 are valid in a header value")
}

fn push_escaped(xml: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => xml.push_str("&amp;"),
            '<' => xml.push_str("&lt;"),
            '>' => xml.push_str("&gt;"),
            _ => xml.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_names_are_unique_and_every_preset_has_a_body_and_ids() {
        for (i, preset) in PRESETS.iter().enumerate() {
            assert!(
                PRESETS[i + 1..].iter().all(|p| p.name != preset.name),
                "{} twice",
                preset.name
            );
            let response = preset.response(None);
            // gRPC errors are trailers-only: no body, no ids of their own.
            let grpc = preset.grpc().is_some();
            assert_eq!(grpc, preset.name.starts_with("grpc."), "{}", preset.name);
            assert_eq!(response.body.is_empty(), grpc, "{}", preset.name);
            assert_eq!(response.request_ids.is_none(), grpc, "{}", preset.name);
            assert!(
                response.headers.contains_key("content-type"),
                "{}",
                preset.name
            );
        }
        assert!(find("aws.throttling").is_some());
        assert!(find("aws.nope").is_none());
    }

    #[test]
    fn grpc_presets_answer_trailers_only() {
        let expected = [
            ("grpc.unavailable", "14"),
            ("grpc.deadline-exceeded", "4"),
            ("grpc.resource-exhausted", "8"),
            ("grpc.internal", "13"),
        ];
        for (name, code) in expected {
            let Some(preset) = find(name) else {
                panic!("missing preset {name}")
            };
            let response = preset.response(None);
            assert_eq!(response.status, StatusCode::OK, "{name}");
            assert_eq!(response.headers["content-type"], "application/grpc");
            assert_eq!(response.headers["grpc-status"], code, "{name}");
            assert!(!response.headers["grpc-message"].is_empty(), "{name}");
        }
        assert_eq!(
            grpc_names(),
            "grpc.unavailable, grpc.deadline-exceeded, grpc.resource-exhausted, grpc.internal"
        );
    }

    #[test]
    fn json_preset_bodies_parse_and_name_their_error() {
        for preset in PRESETS {
            let PresetBody::Fixed(body) = preset.body else {
                continue;
            };
            let json: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{}: {e}", preset.name));
            let error_type = preset
                .headers
                .iter()
                .find(|(name, _)| *name == "x-amzn-errortype")
                .map(|(_, value)| *value);
            match json.get("__type").and_then(|t| t.as_str()) {
                // DynamoDB qualifies the type with its namespace.
                Some(kind) => assert!(
                    error_type.is_some_and(|e| kind.ends_with(e)),
                    "{}",
                    preset.name
                ),
                None => assert!(json.get("Type").is_some(), "{}", preset.name),
            }
        }
    }

    #[test]
    fn amzn_request_ids_are_fresh_lowercase_uuid_v4() {
        let a = amzn_request_id();
        let b = amzn_request_id();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 36, "{text}");
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "{text}");
        assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{text}");
        assert!(text
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }

    #[test]
    fn s3_ids_look_like_s3s() {
        let id = s3_request_id();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 16);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
        assert_ne!(s3_request_id(), s3_request_id());
        let host = s3_host_id();
        let host = host.to_str().unwrap();
        assert_eq!(host.len(), 64);
        assert!(host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'));
        assert_ne!(s3_host_id(), s3_host_id());
    }

    #[test]
    fn s3_error_document_carries_its_ids() {
        let error = S3Error {
            code: "SlowDown",
            message: "Please reduce your request rate.",
        };
        assert_eq!(
            &error.render("ABC", "h/s+t=")[..],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>ABC</RequestId><HostId>h/s+t=</HostId></Error>"
        );
        assert!(String::from_utf8_lossy(&error.render("<&>", "")).contains("&lt;&amp;&gt;"));
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn dynamodb_checksum_follows_the_body() {
        let Some(preset) = find("dynamodb.throughput-exceeded") else {
            panic!("missing preset")
        };
        let response = preset.response(None);
        assert_eq!(
            response.headers[&X_AMZ_CRC32],
            crc32(&response.body).to_string()
        );
        let replaced = preset.response(Some(Bytes::from_static(b"{}")));
        assert_eq!(replaced.headers[&X_AMZ_CRC32], crc32(b"{}").to_string());
    }
}
