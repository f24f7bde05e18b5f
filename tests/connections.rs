//! Client connections the proxy must not keep: silent ones, slowloris ones,
//! idle keep-alive ones (`[proxy] header_timeout`).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::ErrorKind;
use std::time::Duration;

use http::Request;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above `header_timeout` below, far below hyper's own 30 s.
const LOOSE: Duration = Duration::from_secs(10);

async fn proxy_with_header_timeout(upstream: &TestUpstream) -> TestProxy {
    TestProxy::start(&edge_config(&[upstream], "header_timeout = \"300ms\""), "").await
}

/// Reads until the proxy ends the connection, discarding whatever it sent
/// first; panics if it is still open after [`LOOSE`].
async fn until_closed(stream: &mut TcpStream) {
    let read_to_end = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("unexpected read error: {e}"),
            }
        }
    };
    tokio::time::timeout(LOOSE, read_to_end)
        .await
        .expect("the proxy kept the connection open");
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_header_timeout(&upstream).await;
    let mut silent = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    until_closed(&mut silent).await;
    // The admin listener is held to the same limit.
    let mut silent = TcpStream::connect(proxy.running().admin_addr())
        .await
        .unwrap();
    until_closed(&mut silent).await;
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn a_slowloris_is_closed_however_it_starts() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_header_timeout(&upstream).await;
    let http1_head = format!(
        "GET / HTTP/1.1\r\nhost: orders\r\nx-slow: {}\r\n\r\n",
        "a".repeat(200)
    );
    let trickles = [
        ("an HTTP/1.1 head", http1_head.into_bytes()),
        // Read byte by byte by hyper-util to tell h2c from HTTP/1.1.
        (
            "the h2c preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in trickles {
        let stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let trickle = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            for byte in bytes {
                every.tick().await;
                if write.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
            // Dropping the write half would send a FIN: silence instead.
            std::future::pending::<()>().await;
        });
        let read_to_end = async {
            let mut buf = [0u8; 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("{what}: unexpected read error: {e}"),
                }
            }
        };
        tokio::time::timeout(LOOSE, read_to_end)
            .await
            .unwrap_or_else(|_| panic!("{what}: the proxy kept the connection open"));
        trickle.abort();
        let _ = trickle.await;
    }
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_header_timeout(&upstream).await;
    let stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(Request::get("/x").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // The client keeps the connection; the proxy closes it once idle.
    tokio::time::timeout(LOOSE, connection)
        .await
        .expect("the proxy kept an idle connection open")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_keep_alive_client_is_unaffected() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_header_timeout(&upstream).await;
    let stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    // A response slower than header_timeout is not a slow head.
    for path in ["/first", "/sleep/700", "/third"] {
        sender.ready().await.unwrap();
        let response = sender
            .send_request(Request::get(path).body(empty()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(response.status(), 200, "{path}");
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    assert!(!connection.is_finished(), "one connection for all three");
    assert_eq!(upstream.requests(), 3);
    // h2c: a request whose answer takes longer than header_timeout.
    let reply = send(
        &h2_client(),
        Request::get(format!("{}/sleep/700", proxy.url("edge")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
}
