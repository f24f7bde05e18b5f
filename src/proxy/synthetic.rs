//! Responses the proxy makes itself, and the one place that turns proxy
//! errors into HTTP ([`rescue`]): which status, which `x-faultline-error`.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{ClientBodyError, ResponseBody};
use super::dial::DnsFailure;
use super::pool::UpstreamError;
use crate::aws::Protocol;
use crate::fault::preset::{self, X_AMZN_REQUEST_ID, X_AMZ_ID_2, X_AMZ_REQUEST_ID};
use crate::fault::{Rendered, RequestIdStyle, SyntheticResponse};
use crate::grpc::GrpcStatus;
use crate::metrics::{ClientErrorReason, UpstreamErrorReason};

/// Names the rule that injected a response.
pub static X_FAULTLINE_RULE: HeaderName = HeaderName::from_static("x-faultline-rule");
/// Marks an error the proxy made itself (never an injected fault).
pub static X_FAULTLINE_ERROR: HeaderName = HeaderName::from_static("x-faultline-error");

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this request")]
    NoRoute,
    /// The upstream's name did not resolve.
    #[error("the name of upstream {upstream} does not resolve")]
    UpstreamDns {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    #[error("cannot connect to upstream {upstream}")]
    UpstreamConnect {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// The upstream's TLS handshake failed (its certificate, its name, or
    /// its TLS itself).
    #[error("cannot make a TLS connection to upstream {upstream}")]
    UpstreamTls {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    #[error("upstream {upstream} did not answer in time")]
    UpstreamTimeout { upstream: String },
    #[error("upstream {upstream} failed mid-exchange")]
    UpstreamProtocol {
        upstream: String,
        #[source]
        source: UpstreamError,
    },
    /// The request is not valid HTTP (RFC 9112 §3.2: one `Host`, no fewer,
    /// no more), or its body broke off or was malformed.
    #[error("the client's request is not valid HTTP: {reason}")]
    ClientProtocol { reason: String },
    /// The client left while its request body was still being sent on.
    #[error("the client left before its request body was whole")]
    ClientAborted,
    /// The client's request body stalled: `upstream_timeout` passed before
    /// it was whole.
    #[error("the client's request body stalled: it was not whole within upstream_timeout")]
    ClientTimeout,
    /// A `CONNECT` on a reverse listener: faultline forwards requests to
    /// its upstreams, it opens no tunnels to where a client asks.
    #[error("CONNECT is not served here: this listener is a reverse proxy")]
    ConnectNotSupported,
    /// A forward listener's `CONNECT` to a port it does not allow: a
    /// forward proxy is not an open tunnel.
    #[error("CONNECT to port {port} is not allowed: 443, the listener's allow_ports and destinations' connect_to ports are")]
    ConnectPortDenied { port: u16 },
    /// A forward request that already went through faultline (its `Via`
    /// says so): sent on, it would come back again and again.
    #[error("this request already went through faultline (Via): a forward proxy pointed at itself loops")]
    ForwardLoop,
}

/// Whose failure a [`ProxyError`] is, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// No route: the configuration's.
    Config,
    Upstream(UpstreamErrorReason),
    Client(ClientErrorReason),
}

impl ProxyError {
    /// Classifies an error of the upstream client. A failure of the
    /// client's own request body is the client's, not the upstream's.
    pub fn from_upstream(upstream: &str, error: UpstreamError) -> Self {
        if let Some(client) = client_body_error(&error) {
            return if client.is_abandoned() {
                ProxyError::ClientAborted
            } else {
                ProxyError::ClientProtocol {
                    reason: error_message(client),
                }
            };
        }
        let upstream = upstream.to_owned();
        // A connect that timed out is still a failure to connect: the
        // upstream is unreachable, not slow.
        if matches!(error, UpstreamError::Tls(_)) {
            ProxyError::UpstreamTls {
                upstream,
                source: error,
            }
        } else if is_dns_failure(&error) {
            ProxyError::UpstreamDns {
                upstream,
                source: error,
            }
        } else if matches!(error, UpstreamError::Connect(_)) {
            ProxyError::UpstreamConnect {
                upstream,
                source: error,
            }
        } else if is_timeout(&error) {
            ProxyError::UpstreamTimeout { upstream }
        } else {
            ProxyError::UpstreamProtocol {
                upstream,
                source: error,
            }
        }
    }

    /// The code of `x-faultline-error` and of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::UpstreamDns { .. } => "upstream_dns",
            ProxyError::UpstreamConnect { .. } => "upstream_connect",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::ClientProtocol { .. } | ProxyError::ClientAborted => "client_protocol",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::ConnectNotSupported => "connect_not_supported",
            ProxyError::ConnectPortDenied { .. } => "connect_port_denied",
            ProxyError::ForwardLoop => "forward_loop",
        }
    }

    /// Whose failure it is: `faultline_upstream_errors_total` or
    /// `faultline_client_errors_total`, and which reason.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute => Blame::Config,
            ProxyError::UpstreamTimeout { .. } => Blame::Upstream(UpstreamErrorReason::Timeout),
            ProxyError::UpstreamDns { .. } => Blame::Upstream(UpstreamErrorReason::Dns),
            ProxyError::UpstreamConnect { .. } => Blame::Upstream(UpstreamErrorReason::Connect),
            ProxyError::UpstreamTls { .. } => Blame::Upstream(UpstreamErrorReason::Tls),
            ProxyError::UpstreamProtocol { .. } => Blame::Upstream(UpstreamErrorReason::Protocol),
            ProxyError::ClientProtocol { .. } => Blame::Client(ClientErrorReason::Protocol),
            ProxyError::ClientAborted => Blame::Client(ClientErrorReason::Aborted),
            ProxyError::ClientTimeout => Blame::Client(ClientErrorReason::Timeout),
            ProxyError::ConnectNotSupported | ProxyError::ConnectPortDenied { .. } => {
                Blame::Client(ClientErrorReason::Connect)
            }
            // The setup's mistake (a proxy pointed at itself), as no route is.
            ProxyError::ForwardLoop => Blame::Config,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UpstreamDns { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientProtocol { .. } | ProxyError::ClientAborted => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ConnectPortDenied { .. } => StatusCode::FORBIDDEN,
            ProxyError::ForwardLoop => StatusCode::LOOP_DETECTED,
        }
    }
}

/// The client's request body failing, as hyper's client reports it when it
/// could not read the body it was sending on.
fn client_body_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a ClientBodyError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(client) = e.downcast_ref::<ClientBodyError>() {
            return Some(client);
        }
        current = e.source();
    }
    None
}

/// Whether the upstream's name failed to resolve: the resolver's
/// [`DnsFailure`] somewhere in the error's chain.
fn is_dns_failure(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<DnsFailure>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether a connect timeout is somewhere in the error's chain.
fn is_timeout(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return true;
            }
        }
        current = e.source();
    }
    false
}

impl ProxyError {
    /// The status a gRPC call gets for this error, answered as gRPC:
    /// what a client would get from a real gRPC server or load balancer in
    /// the same place, so its retry policy reacts as it would for real.
    pub fn grpc_status(&self) -> GrpcStatus {
        match self {
            // The upstream could not be reached, or broke the exchange: the
            // transient failure UNAVAILABLE stands for, which clients retry.
            ProxyError::UpstreamDns { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamProtocol { .. } => GrpcStatus::UNAVAILABLE,
            ProxyError::UpstreamTimeout { .. } => GrpcStatus::DEADLINE_EXCEEDED,
            // Nothing serves this call here, and retrying will not change
            // that: UNIMPLEMENTED, as a gRPC server says of a method it does
            // not have (and as clients read the plain 404). UNAVAILABLE
            // would make clients retry a configuration mistake.
            ProxyError::NoRoute => GrpcStatus::UNIMPLEMENTED,
            // A CONNECT is never a gRPC call; should one claim to be, this
            // listener does not serve it.
            ProxyError::ConnectNotSupported => GrpcStatus::UNIMPLEMENTED,
            ProxyError::ConnectPortDenied { .. } => GrpcStatus::PERMISSION_DENIED,
            ProxyError::ForwardLoop => GrpcStatus::UNIMPLEMENTED,
            // Not valid HTTP/2 (one `Host`), or a body that broke: the
            // protocol error INTERNAL stands for (clients read 400 so).
            ProxyError::ClientProtocol { .. } => GrpcStatus::INTERNAL,
            // The client left, or its messages stopped coming for
            // `upstream_timeout`: the call was given up, not failed.
            ProxyError::ClientAborted | ProxyError::ClientTimeout => GrpcStatus::CANCELLED,
        }
    }
}

/// The response for a proxy error, marked with `x-faultline-error`: 404,
/// 405, 408, 400, 502 or 504 with a JSON body; for a gRPC call (`grpc`), a trailers-only
/// gRPC error ([`ProxyError::grpc_status`]) whose `grpc-message` names
/// the cause, since a gRPC client reads nothing else.
pub fn rescue(error: &ProxyError, grpc: bool) -> Response<ResponseBody> {
    if grpc {
        let mut response = Response::new(ResponseBody::full(Bytes::new()));
        let headers = response.headers_mut();
        *headers = crate::grpc::trailers_only(error.grpc_status(), &error_message(error));
        headers.insert(
            X_FAULTLINE_ERROR.clone(),
            HeaderValue::from_static(error.code()),
        );
        return response;
    }
    let body = serde_json::json!({
        "error": error.code(),
        "message": error_message(error),
    });
    let mut response = json_response(error.status(), body.to_string());
    response.headers_mut().insert(
        X_FAULTLINE_ERROR.clone(),
        HeaderValue::from_static(error.code()),
    );
    response
}

/// What an injected `unavailable` `refuse` answers a `CONNECT`: the `502`
/// a refused dial gets, without `x-faultline-error` (the fault's marks go
/// on it instead).
pub(super) fn refused_connect() -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": "upstream_connect",
        "message": "the tunnel's target refused the connection (an injected fault)",
    });
    json_response(StatusCode::BAD_GATEWAY, body.to_string())
}

/// The error and its sources on one line.
fn error_message(error: &(dyn StdError + 'static)) -> String {
    let mut message = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        message.push_str(": ");
        message.push_str(&e.to_string());
        current = e.source();
    }
    message
}

/// An injected response, as the rule defined it; a preset's gets request
/// ids of its own, and an `aws.*` preset's speaks `protocol` (the
/// request's, [`crate::aws::Protocol::of`]) when it is known.
pub fn injected(
    response: &SyntheticResponse,
    protocol: Option<Protocol>,
) -> Response<ResponseBody> {
    if let (Some(adaptive), Some(protocol)) = (&response.adaptive, protocol) {
        let Rendered {
            status,
            mut headers,
            body,
        } = adaptive.error.render(protocol);
        // The rule's own status and headers, over the preset's.
        headers.extend(adaptive.headers.clone());
        let mut out = Response::new(ResponseBody::full(body));
        *out.status_mut() = adaptive.status.unwrap_or(status);
        *out.headers_mut() = headers;
        return out;
    }
    let mut headers = response.headers.clone();
    let body = match &response.request_ids {
        None => response.body.clone(),
        Some(style) => stamp_request_ids(style, &mut headers, &response.body),
    };
    let mut out = Response::new(ResponseBody::full(body));
    *out.status_mut() = response.status;
    *out.headers_mut() = headers;
    out
}

/// Adds fresh request ids, as the real service gives every response, and
/// returns the body, which for S3 repeats them. An id the rule set itself
/// in `headers` is kept.
fn stamp_request_ids(style: &RequestIdStyle, headers: &mut HeaderMap, body: &Bytes) -> Bytes {
    match style {
        RequestIdStyle::Amzn => {
            headers
                .entry(&X_AMZN_REQUEST_ID)
                .or_insert_with(preset::amzn_request_id);
            body.clone()
        }
        RequestIdStyle::S3 { echo } => {
            let request_id = headers
                .entry(&X_AMZ_REQUEST_ID)
                .or_insert_with(preset::s3_request_id)
                .clone();
            let host_id = headers
                .entry(&X_AMZ_ID_2)
                .or_insert_with(preset::s3_host_id)
                .clone();
            match echo {
                Some(error) => error.render(
                    request_id.to_str().unwrap_or_default(),
                    host_id.to_str().unwrap_or_default(),
                ),
                None => body.clone(),
            }
        }
    }
}

pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {

    use http_body_util::BodyExt;

    use super::*;
    use crate::diagnostic::FieldPath;
    use crate::fault::{BodySource, Fault, FaultSpec};

    fn preset_response(toml_text: &str) -> SyntheticResponse {
        let spec: FaultSpec = toml::from_str(toml_text).unwrap();
        match spec.validate(BodySource::inline(), &FieldPath::root().key("fault")) {
            Ok(Fault::Respond(response)) => (*response).clone(),
            other => panic!("expected a response fault, got {other:?}"),
        }
    }

    async fn parts(response: Response<ResponseBody>) -> (HeaderMap, Bytes) {
        let (parts, body) = response.into_parts();
        (parts.headers, body.collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn each_injected_preset_response_gets_a_fresh_request_id() {
        let response = preset_response("kind = \"error\"\npreset = \"aws.throttling\"");
        let (first, body) = parts(injected(&response, None)).await;
        let (second, _) = parts(injected(&response, None)).await;
        assert_eq!(body, response.body);
        assert_eq!(first["x-amzn-errortype"], "ThrottlingException");
        assert_eq!(first["x-amzn-requestid"].len(), 36);
        assert_ne!(first["x-amzn-requestid"], second["x-amzn-requestid"]);
        // The template itself is never stamped.
        assert!(!response.headers.contains_key("x-amzn-requestid"));
    }

    #[tokio::test]
    async fn s3_bodies_repeat_the_ids_of_their_headers() {
        let response = preset_response("kind = \"error\"\npreset = \"s3.slow-down\"");
        let (first, body) = parts(injected(&response, None)).await;
        let (second, second_body) = parts(injected(&response, None)).await;
        let request_id = first["x-amz-request-id"].to_str().unwrap();
        let host_id = first["x-amz-id-2"].to_str().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>")
        );
        assert_ne!(first["x-amz-request-id"], second["x-amz-request-id"]);
        assert_ne!(first["x-amz-id-2"], second["x-amz-id-2"]);
        assert_ne!(body, second_body);
        assert!(!first.contains_key("x-amzn-requestid"));
    }

    #[tokio::test]
    async fn ids_the_rule_sets_itself_are_kept() {
        let response = preset_response(
            "kind = \"error\"\npreset = \"s3.slow-down\"\nheaders = { \"x-amz-request-id\" = \"0123456789ABCDEF\" }",
        );
        let (headers, body) = parts(injected(&response, None)).await;
        assert_eq!(headers["x-amz-request-id"], "0123456789ABCDEF");
        assert!(String::from_utf8_lossy(&body).contains("<RequestId>0123456789ABCDEF</RequestId>"));

        let response = preset_response(
            "kind = \"error\"\npreset = \"aws.internal-error\"\nheaders = { \"x-amzn-RequestId\" = \"fixed\" }",
        );
        let (headers, _) = parts(injected(&response, None)).await;
        assert_eq!(headers.get_all("x-amzn-requestid").iter().count(), 1);
        assert_eq!(headers["x-amzn-requestid"], "fixed");
    }

    #[tokio::test]
    async fn grpc_calls_get_proxy_errors_as_grpc() {
        let error = ProxyError::UpstreamTimeout {
            upstream: "orders".into(),
        };
        let response = rescue(&error, true);
        assert_eq!(response.status(), StatusCode::OK);
        let (headers, body) = parts(response).await;
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "4");
        assert_eq!(
            headers["grpc-message"],
            "upstream orders did not answer in time"
        );
        assert_eq!(headers["x-faultline-error"], "upstream_timeout");
        assert!(body.is_empty());

        let (headers, _) = parts(rescue(&ProxyError::NoRoute, true)).await;
        assert_eq!(headers["grpc-status"], "12");
        assert_eq!(headers["x-faultline-error"], "no_route");
        let (headers, body) = parts(rescue(&ProxyError::NoRoute, false)).await;
        assert_eq!(headers["content-type"], "application/json");
        assert!(!headers.contains_key("grpc-status"));
        assert!(!body.is_empty());
        assert_eq!(
            ProxyError::ClientAborted.grpc_status(),
            GrpcStatus::CANCELLED
        );
    }

    #[tokio::test]
    async fn responses_without_a_preset_go_out_as_built() {
        let response = preset_response("kind = \"error\"\nstatus = 503\nbody = \"down\"");
        let (headers, body) = parts(injected(&response, None)).await;
        assert!(headers.is_empty());
        assert_eq!(&body[..], b"down");
    }
}
