//! Errors blamed on the right side: a broken or abandoned request is the
//! client's (`400`/`408`, `faultline_client_errors_total`), never the
//! upstream's; an upstream that breaks off mid-body is the upstream's.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_PROTOCOL: &str = "faultline_client_errors_total{reason=\"protocol\"}";
const CLIENT_ABORTED: &str = "faultline_client_errors_total{reason=\"aborted\"}";
const CLIENT_TIMEOUT: &str = "faultline_client_errors_total{reason=\"timeout\"}";
const UPSTREAM_PROTOCOL: &str =
    "faultline_upstream_errors_total{reason=\"protocol\",upstream=\"orders-use1\"}";
const UPSTREAM_TIMEOUT: &str =
    "faultline_upstream_errors_total{reason=\"timeout\",upstream=\"orders-use1\"}";

/// Sends raw bytes and reads until the proxy closes or `wait` passes.
async fn exchange(proxy: &TestProxy, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn upstream_errors(proxy: &TestProxy) -> f64 {
    proxy.metric(UPSTREAM_PROTOCOL).await.unwrap_or(0.0)
        + proxy.metric(UPSTREAM_TIMEOUT).await.unwrap_or(0.0)
}

#[tokio::test]
async fn a_request_without_one_host_is_refused_as_the_clients() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    for request in [
        &b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    ] {
        let answer = exchange(&proxy, request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains("x-faultline-error: client_protocol"),
            "{answer}"
        );
    }
    // HTTP/1.0 needs no Host.
    let answer = exchange(&proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert_eq!(
        upstream.requests(),
        1,
        "a request without one Host was forwarded"
    );
    assert_eq!(proxy.metric(CLIENT_PROTOCOL).await, Some(2.0));
    assert_eq!(upstream_errors(&proxy).await, 0.0);
}

#[tokio::test]
async fn a_broken_chunked_body_is_the_clients_fault() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let answer = exchange(
        &proxy,
        b"POST /count HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\nZZZ\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("x-faultline-error: client_protocol"),
        "{answer}"
    );
    assert_eq!(proxy.metric(CLIENT_PROTOCOL).await, Some(1.0));
    assert_eq!(
        upstream_errors(&proxy).await,
        0.0,
        "the upstream was blamed"
    );
}

#[tokio::test]
async fn an_abandoned_upload_is_the_clients() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let mut stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    stream
        .write_all(b"POST /count HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    wait_until("the upload to reach the upstream", async || {
        upstream.requests() == 1
    })
    .await;
    drop(stream);
    wait_until(
        "the abandoned upload to be counted as the client's",
        async || proxy.metric(CLIENT_ABORTED).await == Some(1.0),
    )
    .await;
    assert_eq!(
        upstream_errors(&proxy).await,
        0.0,
        "the upstream was blamed"
    );
}

#[tokio::test]
async fn a_stalled_upload_is_the_clients_timeout() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(
        &edge_config(&[&upstream], "upstream_timeout = \"300ms\""),
        "",
    )
    .await;
    // Ten bytes of a thousand, and then nothing: the socket stays open.
    let answer = exchange(
        &proxy,
        b"POST /count HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-faultline-error: client_timeout"),
        "{answer}"
    );
    assert_eq!(proxy.metric(CLIENT_TIMEOUT).await, Some(1.0));
    assert_eq!(
        upstream_errors(&proxy).await,
        0.0,
        "the upstream was blamed"
    );

    // A slow upstream with a whole request is still the upstream's timeout.
    let reply = get(&format!("{}/sleep/2000", proxy.url("edge"))).await;
    assert_eq!(reply.status, 504);
    assert_eq!(proxy.metric(UPSTREAM_TIMEOUT).await, Some(1.0));
}

#[tokio::test]
async fn an_upstream_that_cuts_its_body_short_is_counted_as_its_protocol_error() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let answer = exchange(&proxy, b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nxxxxxxxxxx"),
        "the client must see the cut body: {answer}"
    );
    wait_until(
        "the cut to count as the upstream's protocol error",
        async || proxy.metric(UPSTREAM_PROTOCOL).await == Some(1.0),
    )
    .await;
}
