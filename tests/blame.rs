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
const CLIENT_CONNECT: &str = "faultline_client_errors_total{reason=\"connect\"}";
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
async fn connect_is_refused_by_faultline_itself_and_never_forwarded() {
    let upstream = TestUpstream::start("orders-use1").await;
    // A rule that would answer anything it saw: CONNECT never reaches rules.
    let proxy = TestProxy::start(
        &edge_config(&[&upstream], ""),
        &rule("everything", "", "", "kind = \"error\"\nstatus = 503"),
    )
    .await;
    for request in [
        &b"CONNECT orders.example:443 HTTP/1.1\r\nhost: orders.example:443\r\nconnection: close\r\n\r\n"[..],
        // Routed by path or not, it is the same answer.
        b"CONNECT orders-use1.example:80 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ] {
        let answer = exchange(&proxy, request).await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(
            answer.contains("x-faultline-error: connect_not_supported"),
            "{answer}"
        );
        assert!(!answer.contains("x-faultline-rule"), "{answer}");
    }
    assert_eq!(upstream.requests(), 0, "a CONNECT was forwarded");
    assert_eq!(upstream.connections(), 0);
    assert_eq!(proxy.metric(CLIENT_CONNECT).await, Some(2.0));
    assert_eq!(proxy.metric(CLIENT_PROTOCOL).await, Some(0.0));
    assert_eq!(upstream_errors(&proxy).await, 0.0);
    assert_eq!(proxy.injected("everything").await, 0);
    // The listener still serves everything else.
    assert_eq!(get(&proxy.url("edge")).await.status, 503);
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

#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_is_the_upstreams_timeout() {
    // Accepts, never reads: the proxy's sending of the body stalls on the
    // upstream, not on the client.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = deaf.accept().await {
            sockets.push(socket);
        }
    });
    let upstream = TestUpstream::start("orders-use1").await;
    let config = edge_config(&[&upstream], "upstream_timeout = \"500ms\"")
        .replace(&upstream.url(), &format!("http://{deaf_addr}"));
    let proxy = TestProxy::start(&config, "").await;
    let size = 64 << 20;
    let stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..size / chunk.len() {
            write.write_all(&chunk).await?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        answer.contains("x-faultline-error: upstream_timeout"),
        "{answer}"
    );
    assert_eq!(
        proxy.metric(CLIENT_TIMEOUT).await,
        Some(0.0),
        "the client was blamed"
    );
    writer.abort();
    held.abort();
}

#[tokio::test]
async fn a_held_upload_let_go_to_a_slow_upstream_is_the_upstreams_timeout() {
    let upstream = TestUpstream::start("orders-use1").await;
    let hole = rule(
        "hole",
        "",
        "",
        "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
    );
    let proxy = TestProxy::start(
        &edge_config(&[&upstream], "upstream_timeout = \"500ms\""),
        &hole,
    )
    .await;
    let url = format!("{}/sleep/3000", proxy.url("edge"));
    let held = tokio::spawn(async move {
        let request = http::Request::post(url).body(full("hello")).unwrap();
        send(&client(), request).await
    });
    proxy.until_injected("hole", 1).await;
    proxy.admin("POST", "/api/halt", None).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the halt did not let the upload go")
        .unwrap();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_timeout"));
    assert_eq!(
        proxy.metric(CLIENT_TIMEOUT).await,
        Some(0.0),
        "the client was blamed"
    );
}
