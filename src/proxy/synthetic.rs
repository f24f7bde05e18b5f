//! Responses the proxy makes itself, and the one place that turns proxy
//! errors into HTTP ([`rescue`]): which status, which `x-faultline-error`.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use crate::fault::SyntheticResponse;
use crate::metrics::UpstreamErrorReason;

/// Names the rule that injected a response.
pub static X_FAULTLINE_RULE: HeaderName = HeaderName::from_static("x-faultline-rule");
/// Marks an error the proxy made itself (never an injected fault).
pub static X_FAULTLINE_ERROR: HeaderName = HeaderName::from_static("x-faultline-error");

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this request")]
    NoRoute,
    #[error("cannot connect to upstream {upstream}")]
    UpstreamConnect {
        upstream: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {upstream} did not answer in time")]
    UpstreamTimeout { upstream: String },
    #[error("upstream {upstream} failed mid-exchange")]
    UpstreamProtocol {
        upstream: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

impl ProxyError {
    /// Classifies an error of the upstream client.
    pub fn from_client(upstream: &str, error: hyper_util::client::legacy::Error) -> Self {
        let upstream = upstream.to_owned();
        // A connect that timed out is still a failure to connect: the
        // upstream is unreachable, not slow.
        if error.is_connect() {
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
            ProxyError::UpstreamConnect { .. } => "upstream_connect",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
        }
    }

    /// The `reason` of `faultline_upstream_errors_total`.
    pub fn reason(&self) -> UpstreamErrorReason {
        match self {
            ProxyError::UpstreamTimeout { .. } => UpstreamErrorReason::Timeout,
            ProxyError::UpstreamConnect { .. } => UpstreamErrorReason::Connect,
            ProxyError::NoRoute | ProxyError::UpstreamProtocol { .. } => {
                UpstreamErrorReason::Protocol
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamProtocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
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

/// The response for a proxy error: 404, 502 or 504, marked and with a JSON body.
pub fn rescue(error: &ProxyError) -> Response<ResponseBody> {
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

/// An injected response, as the rule defined it.
pub fn injected(response: &SyntheticResponse) -> Response<ResponseBody> {
    let mut out = Response::new(ResponseBody::full(response.body.clone()));
    *out.status_mut() = response.status;
    *out.headers_mut() = response.headers.clone();
    out
}

pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
