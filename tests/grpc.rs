//! gRPC through faultline with a real client (tonic over h2c): injected
//! gRPC errors (`grpc_status`, the `grpc.*` presets) and the proxy's own
//! errors reach the client as gRPC statuses, marked as the HTTP ones are,
//! and `faultline_grpc_requests_total` counts every call by its status.
#![allow(clippy::unwrap_used)]

mod support;

use support::grpc::{metadata, GrpcClient};
use support::*;
use tonic::Code;

/// A port nothing listens on: bound, then let go.
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One `edge` listener: `/test.Echo/…` goes to `svc-use1` (`url`),
/// `/test.Gone/…` to `gone-use1`, where nothing listens; any other path
/// has no route.
fn grpc_config(url: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[proxy]
seed = 42
shutdown_grace = "5s"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

[[upstream]]
name = "svc-use1"
url = "{url}"
labels = {{ region = "us-east-1" }}

[[upstream]]
name = "gone-use1"
url = "http://{gone}"
labels = {{ region = "us-east-1" }}

[[route]]
listener = "edge"
path_prefix = "/test.Echo"
upstream = "svc-use1"

[[route]]
listener = "edge"
path_prefix = "/test.Gone"
upstream = "gone-use1"
"#,
        gone = closed_port()
    )
}

fn grpc_rules() -> String {
    [
        rule(
            "echo-unavailable",
            "",
            "path = \"/test.Echo/Preset\"",
            "kind = \"error\"\npreset = \"grpc.unavailable\"",
        ),
        rule(
            "echo-quota",
            "",
            "path = \"/test.Echo/Coded\"",
            "kind = \"error\"\ngrpc_status = 8\ngrpc_message = \"quota for tenant \u{e9}t\u{e9} is 100% used\"\nheaders = { \"retry-pushback-ms\" = \"250\" }",
        ),
        rule(
            "echo-abort",
            "",
            "path = \"/test.Echo/Abort\"",
            "kind = \"abort\"\nmode = \"reset\"",
        ),
    ]
    .concat()
}

fn grpc_series(upstream: &str, status: &str) -> String {
    format!(
        "faultline_grpc_requests_total{{grpc_status=\"{status}\",region=\"us-east-1\",upstream=\"{upstream}\"}}"
    )
}

#[tokio::test]
async fn injected_grpc_errors_reach_the_client_as_their_status() {
    let upstream = TestUpstream::start("svc-use1").await;
    let proxy = TestProxy::start(&grpc_config(&upstream.url()), &grpc_rules()).await;
    let mut client = GrpcClient::connect(&proxy.url("edge")).await;

    let status = client.unary("/test.Echo/Preset", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "The service is currently unavailable.");
    assert_eq!(
        metadata(&status, "x-faultline-rule"),
        Some("echo-unavailable")
    );
    assert_eq!(metadata(&status, "x-faultline-error"), None);

    let status = client.unary("/test.Echo/Coded", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Percent-encoded on the wire, decoded by the client.
    assert_eq!(
        status.message(),
        "quota for tenant \u{e9}t\u{e9} is 100% used"
    );
    assert_eq!(metadata(&status, "x-faultline-rule"), Some("echo-quota"));
    assert_eq!(metadata(&status, "retry-pushback-ms"), Some("250"));

    let status = client
        .unary("/test.Echo/Preset", "again")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        upstream.requests(),
        0,
        "an injected error never reaches the upstream"
    );

    assert_eq!(
        proxy.metric(&grpc_series("svc-use1", "UNAVAILABLE")).await,
        Some(2.0)
    );
    assert_eq!(
        proxy
            .metric(&grpc_series("svc-use1", "RESOURCE_EXHAUSTED"))
            .await,
        Some(1.0)
    );
    assert_eq!(proxy.injected("echo-unavailable").await, 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn proxy_made_errors_answer_grpc_calls_as_grpc() {
    let upstream = TestUpstream::start("svc-use1").await;
    let proxy = TestProxy::start(&grpc_config(&upstream.url()), &grpc_rules()).await;
    let mut client = GrpcClient::connect(&proxy.url("edge")).await;

    // Nothing listens: UNAVAILABLE, which clients retry, marked as the
    // proxy's own so it is never taken for an injected outage.
    let status = client.unary("/test.Gone/Call", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        metadata(&status, "x-faultline-error"),
        Some("upstream_connect")
    );
    assert_eq!(metadata(&status, "x-faultline-rule"), None);
    assert!(
        status
            .message()
            .starts_with("cannot connect to upstream gone-use1"),
        "{status:?}"
    );

    // No route: UNIMPLEMENTED, which no retry will change.
    let status = client.unary("/other.Service/Call", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(metadata(&status, "x-faultline-error"), Some("no_route"));

    assert_eq!(
        proxy.metric(&grpc_series("gone-use1", "UNAVAILABLE")).await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("faultline_upstream_errors_total{reason=\"connect\",upstream=\"gone-use1\"}")
            .await,
        Some(1.0)
    );
    // Counted under the status the error stands for, not the 200 it went
    // out with: error ratios and guards see it as the failure it is.
    assert_eq!(
        proxy
            .metric("faultline_requests_total{code=\"502\",method=\"POST\",region=\"us-east-1\",upstream=\"gone-use1\"}")
            .await,
        Some(1.0)
    );

    // The same failure for a request that is not gRPC stays HTTP.
    let request = http::Request::post(format!("{}/test.Gone/Call", proxy.url("edge")))
        .header("content-type", "application/json")
        .body(full("{}"))
        .unwrap();
    let reply = send(&h2_client(), request).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_connect"));
    assert_eq!(reply.header("grpc-status"), None);
    assert_eq!(
        proxy.metric(&grpc_series("gone-use1", "UNAVAILABLE")).await,
        Some(1.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_aborted_grpc_call_is_reset_and_counted_as_the_client_reads_it() {
    let upstream = TestUpstream::start("svc-use1").await;
    let proxy = TestProxy::start(&grpc_config(&upstream.url()), &grpc_rules()).await;
    let mut client = GrpcClient::connect(&proxy.url("edge")).await;

    let status = client.unary("/test.Echo/Abort", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(
        proxy.metric(&grpc_series("svc-use1", "INTERNAL")).await,
        Some(1.0)
    );
    // Only that stream was reset: the connection carries the next call.
    let status = client.unary("/test.Echo/Preset", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    proxy.shutdown().await;
}
