//! The upstream connection pool: connections are reused, given back only
//! when they can carry the next request, dropped when the upstream ends
//! them, and closed after `pool_idle_timeout`.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], ""), "").await;
    let client = client();
    for i in 0..20 {
        let reply = get_on(&client, format!("{}/hello/{i}", proxy.url("edge"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(east.requests(), 20);
    assert_eq!(east.connections(), 1);
}

#[tokio::test]
async fn a_streamed_response_gives_its_connection_back_once_read() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], ""), "").await;
    let client = client();
    // 4 MiB in 64 KiB chunks: the connection is still busy when the head
    // arrives, and free only once the client has read the body.
    for path in ["/bytes/4194304", "/chunked/4194304", "/hello", "/hello"] {
        let reply = get_on(&client, format!("{}{path}", proxy.url("edge"))).await;
        assert_eq!(reply.status, 200, "{path}");
        // The body is read; the pool takes the connection back from a task
        // of its own, and shows no state a test can wait on, so this gives it
        // a moment. A wait cannot hide a leak: a connection never given
        // back makes the next request dial, and the count below fail.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(east.connections(), 1);
}

#[tokio::test]
async fn a_connection_busy_with_a_body_is_not_handed_to_another_request() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], ""), "").await;
    // 64 MiB, left unread: its connection stays busy, the body stuck in
    // the socket buffers.
    let slow = client()
        .request(
            Request::get(format!("{}/bytes/67108864", proxy.url("edge")))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let other = tokio::time::timeout(Duration::from_secs(10), get(&proxy.url("edge")))
        .await
        .expect("queued behind the unread body");
    assert_eq!(other.status, 200);
    assert_eq!(east.connections(), 2);
    drop(slow);
}

#[tokio::test]
async fn concurrent_workers_reuse_connections() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], ""), "").await;
    let base = proxy.url("edge");
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let client = client();
                for _ in 0..25 {
                    let reply = get_on(&client, format!("{base}/sleep/2")).await;
                    assert_eq!(reply.status, 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(east.requests(), 200);
    // About one connection per worker: a connection whose response body is
    // still in flight goes back a moment later, so a worker may now and
    // then find none idle and dial. Without reuse this would be 200.
    assert!(
        (1..=16).contains(&east.connections()),
        "{} connections",
        east.connections()
    );
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_loses_no_request() {
    let upstream = RawUpstream::start(Ending::CloseWhenIdle(Duration::from_millis(50))).await;
    let proxy = TestProxy::start(&raw_config(upstream.addr, ""), "").await;
    let client = client();
    for _ in 0..5 {
        let reply = get_on(&client, proxy.url("edge")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        // The time passing is the test: idle past the upstream's own
        // keep-alive timeout (50 ms), and long enough for the proxy to see
        // the close (a request racing the close in flight is a different
        // case). Five connections below prove each idle one was ended.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_honoured() {
    let upstream = RawUpstream::start(Ending::ConnectionClose).await;
    let proxy = TestProxy::start(&raw_config(upstream.addr, ""), "").await;
    let client = client();
    for _ in 0..5 {
        let reply = get_on(&client, proxy.url("edge")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test]
async fn idle_connections_are_closed_after_pool_idle_timeout() {
    let upstream = RawUpstream::start(Ending::KeepAlive).await;
    let proxy = TestProxy::start(
        &raw_config(upstream.addr, "pool_idle_timeout = \"200ms\""),
        "",
    )
    .await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while upstream.closed_by_proxy() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request dials again.
    assert_eq!(get(&proxy.url("edge")).await.status, 200);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn idle_connections_stay_open_within_pool_idle_timeout() {
    let upstream = RawUpstream::start(Ending::KeepAlive).await;
    let proxy = TestProxy::start(&raw_config(upstream.addr, ""), "").await;
    assert_eq!(get(&proxy.url("edge")).await.status, 200);
    // The time passing is the test: idle for a while, well within the
    // default timeout; the checks below say the connection stayed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&proxy.url("edge")).await.status, 200);
    assert_eq!(upstream.closed_by_proxy(), 0);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn upstream_timeout_holds_on_a_reused_connection() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], "upstream_timeout = \"1s\""), "").await;
    let client = client();
    let at = |path: &str| get_on(&client, format!("{}{path}", proxy.url("edge")));
    assert_eq!(at("/sleep/1").await.status, 200);
    // Idle for longer than the timeout: each request gets a deadline of
    // its own, not one counted from the connection's last use. The time
    // passing is the test; the two connections counted below say the idle
    // one was reused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reply = at("/sleep/50").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = at("/sleep/50").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = at("/sleep/3000").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_timeout"));
    // The timed-out connection is closed, not given to the next request.
    assert_eq!(at("/sleep/1").await.status, 200);
    assert_eq!(east.connections(), 2);
}

/// A GET on `client`, whose connections to the proxy outlive the call
/// (`support::get` opens a new client each time).
async fn get_on(client: &Client<HttpConnector, TestBody>, url: String) -> Reply {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

/// How [`RawUpstream`] ends a connection after each answer.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Closes it when no request came within this long, without warning,
    /// as a keep-alive timeout does.
    CloseWhenIdle(Duration),
    /// Says `connection: close`, then closes it.
    ConnectionClose,
}

/// An upstream written on raw sockets, so that when its connections end is
/// up to the test. It answers every request head with `200 ok`.
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    closed_by_peer: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start(ending: Ending) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed_by_peer = Arc::new(AtomicUsize::new(0));
        let (accepted, closed) = (connections.clone(), closed_by_peer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, ending, closed.clone()));
            }
        });
        RawUpstream {
            addr,
            connections,
            closed_by_peer,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections the proxy closed while they were idle.
    fn closed_by_proxy(&self) -> usize {
        self.closed_by_peer.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw(mut stream: TcpStream, ending: Ending, closed_by_peer: Arc<AtomicUsize>) {
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head (the proxy forwards bodiless GETs here).
        let head_end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let read = match ending {
                Ending::CloseWhenIdle(idle) if pending.is_empty() => {
                    match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                        Ok(read) => read,
                        // Idle too long: hang up, as the upstream's own
                        // keep-alive timeout would.
                        Err(_) => return,
                    }
                }
                _ => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => {
                    closed_by_peer.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        pending.drain(..head_end);
        let answer: &[u8] = match ending {
            Ending::ConnectionClose => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            }
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
        if let Ending::ConnectionClose = ending {
            return;
        }
    }
}

fn raw_config(upstream: SocketAddr, extra_proxy: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[proxy]
{extra_proxy}

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

[[upstream]]
name = "raw"
url = "http://{upstream}"
labels = {{ region = "us-east-1" }}

[[route]]
listener = "edge"
upstream = "raw"
"#
    )
}
