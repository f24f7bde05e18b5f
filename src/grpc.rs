//! gRPC's wire vocabulary, as faultline needs it (README "gRPC"): the
//! status codes, the `grpc-status` and `grpc-message` headers, telling a
//! gRPC call from other HTTP/2 traffic, and the headers of a trailers-only
//! response (the whole answer of a call that fails before any message: on
//! HTTP/2, one HEADERS frame that ends the stream).
//!
//! Nothing here does I/O or knows about rules: faults (`grpc_status`, the
//! `grpc.*` presets), the proxy's own errors and the metrics build on it.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

/// The status of a call, in the trailers (or the headers of a trailers-only response).
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The status's message, percent-encoded (see [`encode_message`]).
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// `content-type` of every gRPC request and response.
pub const CONTENT_TYPE_GRPC: &str = "application/grpc";

/// The canonical names of the status codes, by number (the gRPC core
/// `statuscodes.md`).
const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The codes as they go on the wire, by number: no formatting per response.
const DIGITS: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// A gRPC status code, 0 to 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcStatus(u8);

impl GrpcStatus {
    pub const OK: GrpcStatus = GrpcStatus(0);
    pub const CANCELLED: GrpcStatus = GrpcStatus(1);
    pub const UNKNOWN: GrpcStatus = GrpcStatus(2);
    pub const DEADLINE_EXCEEDED: GrpcStatus = GrpcStatus(4);
    pub const NOT_FOUND: GrpcStatus = GrpcStatus(5);
    pub const PERMISSION_DENIED: GrpcStatus = GrpcStatus(7);
    pub const RESOURCE_EXHAUSTED: GrpcStatus = GrpcStatus(8);
    pub const UNIMPLEMENTED: GrpcStatus = GrpcStatus(12);
    pub const INTERNAL: GrpcStatus = GrpcStatus(13);
    pub const UNAVAILABLE: GrpcStatus = GrpcStatus(14);
    pub const UNAUTHENTICATED: GrpcStatus = GrpcStatus(16);

    /// How many codes there are: [`GrpcStatus::index`] is below this.
    pub const COUNT: usize = NAMES.len();

    /// The code numbered `code`, if gRPC has one.
    pub fn new(code: u64) -> Option<GrpcStatus> {
        u8::try_from(code)
            .ok()
            .filter(|c| usize::from(*c) < Self::COUNT)
            .map(GrpcStatus)
    }

    /// Every code, by number.
    pub fn all() -> impl Iterator<Item = GrpcStatus> {
        (0..Self::COUNT as u8).map(GrpcStatus)
    }

    pub fn code(self) -> u8 {
        self.0
    }

    /// 0 to 16, for tables indexed by code.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The canonical name, such as `UNAVAILABLE`.
    pub fn name(self) -> &'static str {
        NAMES[self.index()]
    }

    /// The `grpc-status` value: the number in decimal.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(DIGITS[self.index()])
    }

    /// The code of a `grpc-status` value; `None` for anything else.
    pub fn from_header(value: &HeaderValue) -> Option<GrpcStatus> {
        let digits = value.as_bytes();
        if digits.is_empty() || digits.len() > 2 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let code = digits
            .iter()
            .fold(0u64, |code, d| code * 10 + u64::from(d - b'0'));
        GrpcStatus::new(code)
    }

    /// What a gRPC client makes of an HTTP status that came without a
    /// `grpc-status` (gRPC core, `http-grpc-status-mapping.md`).
    pub fn of_http(status: StatusCode) -> GrpcStatus {
        match status.as_u16() {
            400 => GrpcStatus::INTERNAL,
            401 => GrpcStatus::UNAUTHENTICATED,
            403 => GrpcStatus::PERMISSION_DENIED,
            404 => GrpcStatus::UNIMPLEMENTED,
            429 | 502..=504 => GrpcStatus::UNAVAILABLE,
            _ => GrpcStatus::UNKNOWN,
        }
    }

    /// The codes' names, for error messages.
    pub fn names() -> String {
        GrpcStatus::all()
            .map(|s| format!("{} {}", s.code(), s.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for GrpcStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// Whether a request is a gRPC call: HTTP/2 with a `content-type` of
/// `application/grpc`, alone or with a `+format` or parameters.
///
/// Runs for every request: an HTTP/1.1 request (no gRPC client speaks it)
/// is ruled out by its version alone, before any header is looked up.
/// gRPC-Web (`application/grpc-web…`, which carries its trailers in the
/// body and runs over HTTP/1.1 as well) is not gRPC here.
pub fn is_call(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_2
        && headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| is_grpc_content_type(value.as_bytes()))
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    let prefix = CONTENT_TYPE_GRPC.as_bytes();
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The headers of a trailers-only response with `status` and `message`
/// (empty: no `grpc-message`): `content-type: application/grpc`,
/// `grpc-status`, `grpc-message`. The HTTP status is 200.
pub fn trailers_only(status: GrpcStatus, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_GRPC));
    headers.insert(GRPC_STATUS.clone(), status.header_value());
    if !message.is_empty() {
        headers.insert(GRPC_MESSAGE.clone(), encode_message(message));
    }
    headers
}

/// `grpc-message` as the gRPC spec writes it (PROTOCOL-HTTP2.md,
/// "Responses"): UTF-8, with every byte outside printable ASCII, and `%`
/// itself, as `%XX`.
pub fn encode_message(message: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = Vec::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte);
        } else {
            encoded.extend_from_slice(&[
                b'%',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        }
    }
    HeaderValue::from_bytes(&encoded).expect("printable ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_canonical_names_and_digits() {
        assert_eq!(GrpcStatus::all().count(), 17);
        for status in GrpcStatus::all() {
            assert_eq!(status.header_value(), status.code().to_string().as_str());
            assert_eq!(
                GrpcStatus::from_header(&status.header_value()),
                Some(status)
            );
        }
        assert_eq!(GrpcStatus::UNAVAILABLE.name(), "UNAVAILABLE");
        assert_eq!(GrpcStatus::DEADLINE_EXCEEDED.code(), 4);
        assert_eq!(GrpcStatus::RESOURCE_EXHAUSTED.name(), "RESOURCE_EXHAUSTED");
        assert_eq!(
            GrpcStatus::new(16).map(GrpcStatus::name),
            Some("UNAUTHENTICATED")
        );
        assert_eq!(GrpcStatus::new(17), None);
        assert_eq!(GrpcStatus::new(300), None);
        for odd in ["", "17", "-1", "1a", "007", " 1"] {
            assert_eq!(
                GrpcStatus::from_header(&HeaderValue::from_static(odd)),
                None,
                "{odd:?}"
            );
        }
    }

    #[test]
    fn http_statuses_map_as_grpc_clients_map_them() {
        let of = |code: u16| GrpcStatus::of_http(StatusCode::from_u16(code).unwrap());
        assert_eq!(of(400), GrpcStatus::INTERNAL);
        assert_eq!(of(404), GrpcStatus::UNIMPLEMENTED);
        assert_eq!(of(429), GrpcStatus::UNAVAILABLE);
        assert_eq!(of(503), GrpcStatus::UNAVAILABLE);
        assert_eq!(of(500), GrpcStatus::UNKNOWN);
    }

    #[test]
    fn calls_are_http2_with_a_grpc_content_type() {
        let with = |ct: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            headers
        };
        assert!(is_call(Version::HTTP_2, &with("application/grpc")));
        assert!(is_call(Version::HTTP_2, &with("application/grpc+proto")));
        assert!(is_call(
            Version::HTTP_2,
            &with("Application/GRPC; charset=utf-8")
        ));
        assert!(!is_call(Version::HTTP_2, &with("application/grpc-web")));
        assert!(!is_call(
            Version::HTTP_2,
            &with("application/grpc-web+proto")
        ));
        assert!(!is_call(Version::HTTP_2, &with("application/json")));
        assert!(!is_call(Version::HTTP_2, &HeaderMap::new()));
        assert!(!is_call(Version::HTTP_11, &with("application/grpc")));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("plain text"), "plain text");
        assert_eq!(encode_message("100% down"), "100%25 down");
        assert_eq!(encode_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn trailers_only_headers_carry_the_status() {
        let headers = trailers_only(GrpcStatus::UNAVAILABLE, "gone");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "gone");
        assert!(!trailers_only(GrpcStatus::OK, "").contains_key("grpc-message"));
    }
}
