//! gRPC through faultline with a real client (tonic over h2c): injected
//! gRPC errors (`grpc_status`, the `grpc.*` presets) and the proxy's own
//! errors reach the client as gRPC statuses, marked as the HTTP ones are,
//! and `faultline_grpc_requests_total` counts every call by its status.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use support::grpc::{metadata, Codec, GrpcClient, GrpcUpstream};
use support::tls::{client_config, server_config, TestCa};
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

/// The fixture itself, straight to the upstream: the reference the
/// passthrough tests hold the proxy to.
#[tokio::test]
async fn the_grpc_upstream_answers_every_call_kind_directly() {
    let upstream = GrpcUpstream::start().await;
    let mut client = GrpcClient::connect(&upstream.url()).await;
    let reply = client.unary("/test.Echo/Unary", "hi").await.unwrap();
    assert_eq!(reply.into_inner().message, "hi");
    let status = client.unary("/test.Echo/Fail", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(metadata(&status, "x-detail"), Some("kept"));
    assert_eq!(upstream.calls(), 2);
}

// ---------------------------------------------------------------------------
// Passthrough: a real gRPC upstream behind the proxy, h2c both ways.

/// The gRPC upstream behind the proxy, and a tonic client in front.
async fn through_proxy(rules: &str) -> (GrpcUpstream, TestProxy, GrpcClient) {
    let upstream = GrpcUpstream::start().await;
    let proxy = TestProxy::start(&grpc_config(&upstream.url()), rules).await;
    let client = GrpcClient::connect(&proxy.url("edge")).await;
    (upstream, proxy, client)
}

/// Unary (with metadata both ways), an upstream failure, server, client
/// and bidirectional streaming, through `client` to `upstream`: three calls
/// end OK, one FAILED_PRECONDITION, one ABORTED.
async fn every_call_kind(client: &mut GrpcClient, upstream: &GrpcUpstream) {
    // Unary, with metadata both ways.
    let mut request = tonic::Request::new(support::grpc::request("hi"));
    request
        .metadata_mut()
        .insert("x-custom", "blue".parse().unwrap());
    let reply = client
        .unary_request("/test.Echo/Unary", request)
        .await
        .unwrap();
    assert_eq!(
        reply
            .metadata()
            .get("x-custom-echo")
            .unwrap()
            .to_str()
            .unwrap(),
        "blue"
    );
    assert_eq!(reply.into_inner().message, "hi");
    let seen = upstream.last_seen();
    assert_eq!(seen["content-type"], "application/grpc");
    assert_eq!(seen["x-custom"], "blue");
    // How gRPC tells that no proxy on the way drops trailers.
    assert_eq!(seen["te"], "trailers");

    // The upstream's own failure, trailers-only, its metadata intact and
    // not mistaken for the proxy's.
    let status = client.unary("/test.Echo/Fail", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "the upstream's own failure");
    assert_eq!(metadata(&status, "x-detail"), Some("kept"));
    assert_eq!(metadata(&status, "x-faultline-error"), None);

    // Server streaming: messages, then a status in real trailers.
    client.inner().ready().await.unwrap();
    let mut stream = client
        .inner()
        .server_streaming(
            tonic::Request::new(support::grpc::request("fail:3")),
            PathAndQuery::from_static("/test.Echo/Stream"),
            Codec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(reply)) => got.push(reply.message),
            Ok(None) => panic!("the stream ended without its failure"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, ["0", "1", "2"]);
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(metadata(&status, "x-detail"), Some("trailer"));

    // Client streaming.
    let messages = ["a", "b", "c"].map(support::grpc::request);
    client.inner().ready().await.unwrap();
    let reply = client
        .inner()
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            PathAndQuery::from_static("/test.Echo/Collect"),
            Codec::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "a,b,c");

    // Bidirectional.
    let messages = ["x", "y"].map(support::grpc::request);
    client.inner().ready().await.unwrap();
    let mut replies = client
        .inner()
        .streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            PathAndQuery::from_static("/test.Echo/Chat"),
            Codec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        got.push(reply.message);
    }
    assert_eq!(got, ["echo:x", "echo:y"]);
}

#[tokio::test]
async fn every_call_kind_passes_through_with_its_metadata_and_trailers() {
    let (upstream, proxy, mut client) = through_proxy("").await;
    every_call_kind(&mut client, &upstream).await;

    // Counted by the upstream's own statuses, from headers and trailers.
    for (status, n) in [("OK", 3.0), ("FAILED_PRECONDITION", 1.0), ("ABORTED", 1.0)] {
        let series = grpc_series("svc-use1", status);
        let what = format!("{series} to reach {n}");
        wait_until(&what, async || proxy.metric(&series).await == Some(n)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_10_mib_stream_arrives_whole() {
    let (_upstream, proxy, mut client) = through_proxy("").await;
    const TOTAL: usize = 10 * 1024 * 1024;
    client.inner().ready().await.unwrap();
    let mut stream = client
        .inner()
        .server_streaming(
            tonic::Request::new(support::grpc::request(&format!("bytes:{TOTAL}"))),
            PathAndQuery::from_static("/test.Echo/Stream"),
            Codec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut messages) = (0, 0);
    while let Some(reply) = stream.message().await.unwrap() {
        bytes += reply.message.len();
        messages += 1;
    }
    assert_eq!(bytes, TOTAL);
    assert_eq!(messages, TOTAL / (64 * 1024));
    let series = grpc_series("svc-use1", "OK");
    wait_until("the stream to be counted OK", async || {
        proxy.metric(&series).await == Some(1.0)
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_deadline_reaches_the_upstream_and_is_honoured() {
    let (upstream, proxy, mut client) = through_proxy("").await;
    let mut request = tonic::Request::new(support::grpc::request("20000"));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client
        .unary_request("/test.Echo/Slow", request)
        .await
        .unwrap_err();
    // The upstream's own answer (it gives up at half the deadline), so
    // the deadline reached it.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "deadline passed at the upstream");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(upstream.last_seen().contains_key("grpc-timeout"));
    assert_eq!(
        proxy
            .metric(&grpc_series("svc-use1", "DEADLINE_EXCEEDED"))
            .await,
        Some(1.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_slower_than_upstream_timeout_is_deadline_exceeded_from_the_proxy() {
    let upstream = GrpcUpstream::start().await;
    let config = grpc_config(&upstream.url()).replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\nupstream_timeout = \"200ms\"",
    );
    let proxy = TestProxy::start(&config, "").await;
    let mut client = GrpcClient::connect(&proxy.url("edge")).await;
    let status = client.unary("/test.Echo/Slow", "20000").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        metadata(&status, "x-faultline-error"),
        Some("upstream_timeout")
    );
    assert_eq!(status.message(), "upstream svc-use1 did not answer in time");
    assert_eq!(
        proxy
            .metric(&grpc_series("svc-use1", "DEADLINE_EXCEEDED"))
            .await,
        Some(1.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_abort_on_one_call_leaves_a_concurrent_call_on_the_connection_untouched() {
    let (upstream, proxy, mut client) = through_proxy(&grpc_rules()).await;
    // A bidirectional call in flight on the client's one connection: it
    // has had an answer, and its stream stays open.
    let (send, messages) = tokio::sync::mpsc::channel(4);
    send.send(support::grpc::request("before")).await.unwrap();
    client.inner().ready().await.unwrap();
    let mut replies = client
        .inner()
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(messages)),
            PathAndQuery::from_static("/test.Echo/Chat"),
            Codec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replies.message().await.unwrap().unwrap().message,
        "echo:before"
    );

    // Another call on the same connection is aborted: its stream alone is reset.
    let status = client.unary("/test.Echo/Abort", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    send.send(support::grpc::request("after")).await.unwrap();
    assert_eq!(
        replies.message().await.unwrap().unwrap().message,
        "echo:after"
    );
    drop(send);
    assert!(replies.message().await.unwrap().is_none());
    // One connection carried both calls; the other was `auto`'s h2c probe.
    assert_eq!(upstream.connections(), 2);
    assert_eq!(
        proxy.metric(&grpc_series("svc-use1", "INTERNAL")).await,
        Some(1.0)
    );
    let series = grpc_series("svc-use1", "OK");
    wait_until("the chat to be counted OK", async || {
        proxy.metric(&series).await == Some(1.0)
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn every_demo_upstream_serves_the_grpc_health_check() {
    let any = "127.0.0.1:0".parse().unwrap();
    let demo = faultline::demo::Demo::start(any, any, std::path::Path::new("rules"))
        .await
        .unwrap();
    let (name, addr) = demo.upstreams[0];
    let reply = support::grpc::health_check(&format!("http://{addr}"), "anything")
        .await
        .unwrap();
    assert_eq!(
        reply
            .metadata()
            .get("x-upstream")
            .unwrap()
            .to_str()
            .unwrap(),
        name
    );
    assert_eq!(reply.into_inner().status, 1, "SERVING");
    let mut client = GrpcClient::connect(&format!("http://{addr}")).await;
    let status = client.unary("/test.Echo/Unary", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // Through the proxy, routed by the call's authority as by `Host`.
    let proxy = format!("http://{}", demo.proxy_addr);
    let reply = support::grpc::health_check(&proxy, "payments.us-west-2.demo")
        .await
        .unwrap();
    let answered = reply.metadata();
    assert_eq!(
        answered.get("x-region").unwrap().to_str().unwrap(),
        "us-west-2"
    );
    assert_eq!(
        answered.get("x-upstream").unwrap().to_str().unwrap(),
        "payments-usw2"
    );
    assert_eq!(reply.into_inner().status, 1, "SERVING");

    // us-east-1 browns out (rules/us-east-1-brownout.toml, on from the
    // start): a quarter of its calls get the rule's HTTP 503. gRPC's
    // mapping says UNAVAILABLE, and so the metric counts it; tonic reads
    // the JSON body first and says INTERNAL. Either way the call failed,
    // marked by the rule.
    let mut calls = 0;
    let status = loop {
        calls += 1;
        assert!(calls <= 60, "60 calls to us-east-1 and no brownout");
        match support::grpc::health_check(&proxy, "payments.us-east-1.demo").await {
            Ok(reply) => assert_eq!(reply.into_inner().status, 1),
            Err(status) => break status,
        }
    };
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Internal),
        "{status:?}"
    );
    let rules: Vec<_> = status
        .metadata()
        .get_all("x-faultline-rule")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(rules.iter().any(|r| r == "use1-brownout-503"), "{rules:?}");
    demo.shutdown().await;
}

#[tokio::test]
async fn latency_delays_a_call_and_truncate_cuts_its_stream_alone() {
    let rules = [
        rule(
            "echo-slow",
            "",
            "path = \"/test.Echo/Unary\"",
            "kind = \"latency\"\ndelay = \"200ms\"\nside = \"response\"",
        ),
        rule(
            "stream-cut",
            "",
            "path = \"/test.Echo/Stream\"",
            "kind = \"truncate\"\nafter_bytes = 1048576",
        ),
    ]
    .concat();
    let (_upstream, proxy, mut client) = through_proxy(&rules).await;
    let started = Instant::now();
    let reply = client.unary("/test.Echo/Unary", "hi").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        reply
            .metadata()
            .get("x-faultline-rule")
            .unwrap()
            .to_str()
            .unwrap(),
        "echo-slow"
    );

    client.inner().ready().await.unwrap();
    let mut stream = client
        .inner()
        .server_streaming(
            tonic::Request::new(support::grpc::request("bytes:10485760")),
            PathAndQuery::from_static("/test.Echo/Stream"),
            Codec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut bytes = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(reply)) => bytes += reply.message.len(),
            Ok(None) => panic!("the stream ended whole after {bytes} bytes"),
            Err(status) => break status,
        }
    };
    assert!(bytes < 1024 * 1024, "{bytes}");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    // The cut reset that stream alone: the connection carries the next call.
    assert_eq!(
        client
            .unary("/test.Echo/Unary", "again")
            .await
            .unwrap()
            .into_inner()
            .message,
        "again"
    );
    let series = grpc_series("svc-use1", "INTERNAL");
    wait_until("the cut call to be counted INTERNAL", async || {
        proxy.metric(&series).await == Some(1.0)
    })
    .await;
    assert_eq!(
        proxy.metric(&grpc_series("svc-use1", "OK")).await,
        Some(2.0)
    );
    proxy.shutdown().await;
}

/// A TLS listener for `edge.test` and an `https://` gRPC upstream for
/// `echo.internal` that offers h2 alone, both from `ca`; the config that
/// joins them (`protocol` as given, none for `auto`).
fn tls_both_ways(
    dir: &std::path::Path,
    ca: &TestCa,
    upstream: &GrpcUpstream,
    protocol: &str,
) -> String {
    let (cert, key) = ca.leaf(&["edge.test"]).write(dir, "edge");
    let ca_file = ca.write(dir);
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nshutdown_grace = \"1s\"\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
         [[upstream]]\nname = \"svc-use1\"\nurl = \"https://{}\"\n{protocol}\n\
         tls = {{ ca = \"{}\", server_name = \"echo.internal\" }}\n\
         labels = {{ region = \"us-east-1\" }}\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"svc-use1\"\n",
        cert.display(),
        key.display(),
        upstream.addr,
        ca_file.display(),
    )
}

#[tokio::test]
async fn every_call_kind_passes_over_tls_both_ways_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("grpc CA");
    let mut config = (*server_config(&ca.leaf(&["echo.internal"]), None)).clone();
    // As gRPC servers do: h2 or nothing.
    config.alpn_protocols = vec![b"h2".to_vec()];
    let upstream = GrpcUpstream::start_tls(std::sync::Arc::new(config)).await;
    for protocol in ["", "protocol = \"h2\""] {
        let proxy =
            TestProxy::start(&tls_both_ways(dir.path(), &ca, &upstream, protocol), "").await;
        let addr = proxy.addr("edge");
        let mut client = GrpcClient::connect_tls(
            &format!("https://edge.test:{}", addr.port()),
            addr,
            client_config(&ca, &[b"h2"]),
        )
        .await;
        let before = upstream.connections();
        every_call_kind(&mut client, &upstream).await;
        // Every call a stream on one h2 connection (ALPN agreed h2: an
        // HTTP/1.1 request would not have reached this h2-only server).
        assert_eq!(upstream.connections() - before, 1, "{protocol}");
        for (status, n) in [("OK", 3.0), ("FAILED_PRECONDITION", 1.0), ("ABORTED", 1.0)] {
            let series = grpc_series("svc-use1", status);
            let what = format!("{series} to reach {n}");
            wait_until(&what, async || proxy.metric(&series).await == Some(n)).await;
        }
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn an_upstream_goaway_loses_no_call() {
    let (upstream, proxy, client) = through_proxy("").await;
    // Calls in flight on the upstream connection, held there.
    let held: Vec<_> = (0..5)
        .map(|i| {
            let mut client = GrpcClient::clone(&client);
            tokio::spawn(async move { client.unary("/test.Echo/Hold", &format!("held {i}")).await })
        })
        .collect();
    wait_until("5 held calls at the upstream", async || {
        upstream.calls() == 5
    })
    .await;
    // `auto`'s h2c probe was one connection; the calls share the next.
    let connections = upstream.connections();

    // The upstream goes away from that connection (GOAWAY) and keeps
    // accepting new ones. Calls made while the held ones still run on the
    // old connection must all reach the upstream, on a fresh connection.
    upstream.go_away();
    let mut made = 0;
    let mut client = GrpcClient::clone(&client);
    while upstream.connections() == connections || made < 20 {
        made += 1;
        let reply = client
            .unary("/test.Echo/Unary", &format!("after {made}"))
            .await;
        match reply {
            Ok(reply) => assert_eq!(reply.into_inner().message, format!("after {made}")),
            Err(status) => panic!("call {made} after the GOAWAY was lost: {status:?}"),
        }
        assert!(made < 10_000, "no fresh connection after the GOAWAY");
    }
    assert_eq!(
        upstream.connections(),
        connections + 1,
        "one fresh connection, not one per call"
    );

    // The held calls finish on the old connection.
    upstream.release();
    for (i, call) in held.into_iter().enumerate() {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply.into_inner().message, format!("held {i}"));
    }
    assert_eq!(upstream.calls(), 5 + made);
    proxy.shutdown().await;
}
