//! The admin listener (`[admin] listen`, loopback by default).
//!
//! | verb and path   | answer                                   |
//! |-----------------|------------------------------------------|
//! | `GET /healthz`  | `200 ok`                                 |
//! | `GET /metrics`  | Prometheus text exposition (SPEC §6)     |
//!
//! Anything else is a JSON error: `404 not_found`, or `405
//! method_not_allowed` for a known path. The rest of the admin API (SPEC §5)
//! arrives with runtime control.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::metrics::Metrics;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers one admin request.
pub async fn handle(
    metrics: Metrics,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/metrics") => text(StatusCode::OK, PROMETHEUS_TEXT, metrics.render()),
        (_, "/healthz" | "/metrics") => {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            response
        }
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin route {path}"),
        ),
    };
    Ok(response)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = text(status, "application/json", body);
    *response.status_mut() = status;
    response
}
