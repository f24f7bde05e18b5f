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
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use super::SyntheticResponse;
use crate::aws::Protocol;
use crate::grpc::GrpcStatus;

/// The request id of the AWS JSON protocols (awsJson1_0, awsJson1_1, restJson1).
pub static X_AMZN_REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
/// The error's name in the JSON protocols.
pub static X_AMZN_ERRORTYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");
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
    /// An error every AWS service can give, answered in the protocol of the
    /// service asked ([`AwsError::render`]); this text when it is unknown.
    Aws(&'static AwsError, &'static str),
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

/// An error any AWS service can give, by protocol: what each says.
///
/// Checked against botocore (`parsers.py`): the JSON protocols read the code
/// from the body's `__type` (awsJson) or `x-amzn-ErrorType` (restJson1),
/// the query protocol from `<ErrorResponse><Error><Code>`, EC2 from
/// `<Response><Errors><Error><Code>`, S3 from `<Error><Code>`; the
/// message from `message` or `Message`.
#[derive(Debug, PartialEq, Eq)]
pub struct AwsError {
    /// awsJson and restJson1.
    pub json: (&'static str, StatusCode),
    /// awsQuery (STS, SNS, IAM, SQS's query SDKs).
    pub query: (&'static str, StatusCode),
    /// ec2Query.
    pub ec2: (&'static str, StatusCode),
    /// S3.
    pub s3: (&'static str, StatusCode),
    pub message: &'static str,
    pub s3_message: &'static str,
    /// The caller's fault (throttling: `Type` `User` / `Sender`), else
    /// the service's (`Service` / `Receiver`).
    pub sender: bool,
}

const THROTTLING: AwsError = AwsError {
    json: ("ThrottlingException", StatusCode::BAD_REQUEST),
    query: ("Throttling", StatusCode::BAD_REQUEST),
    // EC2's throttling is a 503 (EC2 API Reference, "Request throttling").
    ec2: ("RequestLimitExceeded", StatusCode::SERVICE_UNAVAILABLE),
    s3: ("SlowDown", StatusCode::SERVICE_UNAVAILABLE),
    message: "Rate exceeded",
    s3_message: "Please reduce your request rate.",
    sender: true,
};

const SERVICE_UNAVAILABLE: AwsError = AwsError {
    json: ("ServiceUnavailable", StatusCode::SERVICE_UNAVAILABLE),
    query: ("ServiceUnavailable", StatusCode::SERVICE_UNAVAILABLE),
    ec2: ("Unavailable", StatusCode::SERVICE_UNAVAILABLE),
    s3: ("ServiceUnavailable", StatusCode::SERVICE_UNAVAILABLE),
    message: "The request has failed due to a temporary failure of the server.",
    s3_message: "Reduce your request rate.",
    sender: false,
};

const INTERNAL_ERROR: AwsError = AwsError {
    json: ("InternalError", StatusCode::INTERNAL_SERVER_ERROR),
    query: ("InternalError", StatusCode::INTERNAL_SERVER_ERROR),
    ec2: ("InternalError", StatusCode::INTERNAL_SERVER_ERROR),
    s3: ("InternalError", StatusCode::INTERNAL_SERVER_ERROR),
    message: "We encountered an internal error. Please try again.",
    s3_message: "We encountered an internal error. Please try again.",
    sender: false,
};

/// Every preset, by name.
///
/// Sources: the AWS JSON protocols (Smithy `awsJson1_0`, `awsJson1_1`,
/// `restJson1`) name the error in `x-amzn-ErrorType` and in the body
/// (`__type`, or the shape's members for restJson1) and send
/// `x-amzn-RequestId`. The `aws.*` presets answer in the protocol of the
/// service asked ([`AwsError`]), with the codes services send for an
/// outage: `ServiceUnavailable` (503) and `InternalError` (500), as the
/// query services, EC2 and S3 spell them, `ThrottlingException` (JSON),
/// `Throttling` (query), `RequestLimitExceeded` (EC2), `SlowDown` (S3).
pub const PRESETS: &[Preset] = &[
    aws_preset(
        "aws.throttling",
        &THROTTLING,
        r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        &[
            ("content-type", AWS_JSON_1_1),
            ("x-amzn-errortype", "ThrottlingException"),
        ],
    ),
    aws_preset(
        "aws.service-unavailable",
        &SERVICE_UNAVAILABLE,
        r#"{"__type":"ServiceUnavailable","message":"The request has failed due to a temporary failure of the server."}"#,
        &[
            ("content-type", AWS_JSON_1_1),
            ("x-amzn-errortype", "ServiceUnavailable"),
        ],
    ),
    aws_preset(
        "aws.internal-error",
        &INTERNAL_ERROR,
        r#"{"__type":"InternalError","message":"We encountered an internal error. Please try again."}"#,
        &[
            ("content-type", AWS_JSON_1_1),
            ("x-amzn-errortype", "InternalError"),
        ],
    ),
    // Lambda is restJson1; TooManyRequestsException's body members are
    // `Type`, `message` and `Reason` (Lambda API Reference, Invoke, Errors).
    // No `Retry-After`: the model binds `retryAfterSeconds` to it, but no
    // SDK's retry reads it (botocore's standard mode backs off on its own,
    // and reads only `x-amz-retry-after`, in milliseconds, and only with
    // its new retries switched on); a rule may add either header.
    Preset {
        name: "lambda.too-many-requests",
        status: StatusCode::TOO_MANY_REQUESTS,
        headers: &[
            ("content-type", REST_JSON),
            ("x-amzn-errortype", "TooManyRequestsException"),
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
    s3_preset("s3.internal-error", &INTERNAL_ERROR),
    s3_preset("s3.service-unavailable", &SERVICE_UNAVAILABLE),
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

/// An AWS error that answers in the protocol of the service asked, and as
/// `awsJson1_1` (`json`) when the request does not say.
const fn aws_preset(
    name: &'static str,
    error: &'static AwsError,
    json: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Preset {
    Preset {
        name,
        status: error.json.1,
        headers,
        body: PresetBody::Aws(error, json),
        request_ids: Some(RequestIdStyle::Amzn),
        crc32: false,
    }
}

/// An S3 error (S3's `Code`, status and message of `error`).
const fn s3_preset(name: &'static str, error: &'static AwsError) -> Preset {
    Preset {
        name,
        status: error.s3.1,
        headers: &[("content-type", "application/xml"), ("server", "AmazonS3")],
        body: PresetBody::S3(S3Error {
            code: error.s3.0,
            message: error.s3_message,
        }),
        request_ids: Some(RequestIdStyle::S3 { echo: None }),
        crc32: false,
    }
}

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
            PresetBody::Fixed(_) | PresetBody::Aws(..) | PresetBody::S3(_) => None,
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
        let mut adaptive = None;
        let body = match (body, self.body) {
            (Some(body), _) => body,
            (None, PresetBody::Fixed(text)) => Bytes::from_static(text.as_bytes()),
            (None, PresetBody::Aws(error, text)) => {
                adaptive = Some(error);
                Bytes::from_static(text.as_bytes())
            }
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
            adaptive: adaptive.map(|error| super::Adaptive {
                error,
                status: None,
                headers: HeaderMap::new(),
            }),
        }
    }
}

/// An error answered in a protocol, ids and all: what goes back.
#[derive(Debug)]
pub struct Rendered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl AwsError {
    /// The error as `protocol` says it, with fresh request ids.
    pub fn render(&self, protocol: Protocol) -> Rendered {
        let mut headers = HeaderMap::new();
        let (code, status) = match protocol {
            Protocol::AwsJson1_0 | Protocol::AwsJson1_1 | Protocol::RestJson => self.json,
            Protocol::Query => self.query,
            Protocol::Ec2Query => self.ec2,
            Protocol::S3Xml => self.s3,
        };
        let body = match protocol {
            Protocol::AwsJson1_0 | Protocol::AwsJson1_1 => {
                let content_type = match protocol {
                    Protocol::AwsJson1_0 => AWS_JSON_1_0,
                    _ => AWS_JSON_1_1,
                };
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                headers.insert(X_AMZN_ERRORTYPE.clone(), HeaderValue::from_static(code));
                headers.insert(X_AMZN_REQUEST_ID.clone(), amzn_request_id());
                Bytes::from(
                    serde_json::json!({ "__type": code, "message": self.message }).to_string(),
                )
            }
            Protocol::RestJson => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(REST_JSON));
                headers.insert(X_AMZN_ERRORTYPE.clone(), HeaderValue::from_static(code));
                headers.insert(X_AMZN_REQUEST_ID.clone(), amzn_request_id());
                let kind = if self.sender { "User" } else { "Service" };
                Bytes::from(
                    serde_json::json!({ "Type": kind, "message": self.message }).to_string(),
                )
            }
            Protocol::Query | Protocol::Ec2Query => {
                let id = amzn_request_id();
                let text = id.to_str().unwrap_or_default().to_owned();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
                headers.insert(X_AMZN_REQUEST_ID.clone(), id);
                let mut xml = String::with_capacity(256);
                xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
                if protocol == Protocol::Ec2Query {
                    xml.push_str("<Response><Errors><Error><Code>");
                } else {
                    let kind = if self.sender { "Sender" } else { "Receiver" };
                    xml.push_str("<ErrorResponse><Error><Type>");
                    xml.push_str(kind);
                    xml.push_str("</Type><Code>");
                }
                push_escaped(&mut xml, code);
                xml.push_str("</Code><Message>");
                push_escaped(&mut xml, self.message);
                if protocol == Protocol::Ec2Query {
                    xml.push_str("</Message></Error></Errors><RequestID>");
                    push_escaped(&mut xml, &text);
                    xml.push_str("</RequestID></Response>");
                } else {
                    xml.push_str("</Message></Error><RequestId>");
                    push_escaped(&mut xml, &text);
                    xml.push_str("</RequestId></ErrorResponse>");
                }
                Bytes::from(xml)
            }
            Protocol::S3Xml => {
                let (request_id, host_id) = (s3_request_id(), s3_host_id());
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
                headers.insert(http::header::SERVER, HeaderValue::from_static("AmazonS3"));
                let body = S3Error {
                    code,
                    message: self.s3_message,
                }
                .render(
                    request_id.to_str().unwrap_or_default(),
                    host_id.to_str().unwrap_or_default(),
                );
                headers.insert(X_AMZ_REQUEST_ID.clone(), request_id);
                headers.insert(X_AMZ_ID_2.clone(), host_id);
                body
            }
        };
        Rendered {
            status,
            headers,
            body,
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
            let (PresetBody::Fixed(body) | PresetBody::Aws(_, body)) = preset.body else {
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

    /// The code, status and the text of the body in each protocol.
    #[test]
    fn aws_errors_speak_the_protocol_of_the_service_asked() {
        let Some(preset) = find("aws.throttling") else {
            panic!("missing preset")
        };
        let PresetBody::Aws(error, _) = preset.body else {
            panic!("aws.throttling adapts")
        };
        let json = error.render(Protocol::AwsJson1_0);
        assert_eq!(json.status, 400);
        assert_eq!(json.headers["content-type"], AWS_JSON_1_0);
        assert_eq!(
            &json.body[..],
            br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
        );
        assert!(json.headers.contains_key(&X_AMZN_REQUEST_ID));
        let rest = error.render(Protocol::RestJson);
        assert_eq!(rest.headers["x-amzn-errortype"], "ThrottlingException");
        assert_eq!(
            &rest.body[..],
            br#"{"Type":"User","message":"Rate exceeded"}"#
        );
        let query = error.render(Protocol::Query);
        let id = query.headers[&X_AMZN_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            String::from_utf8_lossy(&query.body),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>{id}</RequestId></ErrorResponse>")
        );
        let ec2 = error.render(Protocol::Ec2Query);
        assert_eq!(ec2.status, 503);
        let id = ec2.headers[&X_AMZN_REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(
            String::from_utf8_lossy(&ec2.body),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Rate exceeded</Message></Error></Errors><RequestID>{id}</RequestID></Response>")
        );
        let s3 = error.render(Protocol::S3Xml);
        assert_eq!(s3.status, 503);
        let request_id = s3.headers[&X_AMZ_REQUEST_ID].to_str().unwrap().to_owned();
        assert!(String::from_utf8_lossy(&s3.body).contains(&format!("<Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>{request_id}</RequestId>")));
        assert!(!s3.headers.contains_key(&X_AMZN_REQUEST_ID));
        let Some(PresetBody::Aws(unavailable, _)) = find("aws.service-unavailable").map(|p| p.body)
        else {
            panic!("aws.service-unavailable adapts")
        };
        assert!(
            String::from_utf8_lossy(&unavailable.render(Protocol::Query).body)
                .contains("<Type>Receiver</Type><Code>ServiceUnavailable</Code>")
        );
        assert_eq!(unavailable.render(Protocol::Ec2Query).status, 503);
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
