//! HTTP/1.1 trailers pass through faultline both ways: a chunked
//! response's trailer reaches a client that accepts trailers, and a chunked
//! request's trailer reaches the upstream.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A body of the given frames, data and trailers, of unknown length (so
/// it is sent chunked).
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// What the upstream saw of a request: its headers and its trailers.
type Seen = Arc<Mutex<Vec<(HeaderMap, Option<HeaderMap>)>>>;

/// An HTTP/1.1 upstream: `/out` answers `hello` with the trailer
/// `x-checksum: 5d41402a`, announced by `Trailer`; anything else reads the
/// request body and answers it with the request's trailer `x-sum`.
async fn trailer_upstream() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let kept = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = Arc::clone(&kept);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let out = request.uri().path() == "/out";
                        let headers = request.headers().clone();
                        let collected = request.into_body().collect().await.unwrap();
                        let trailers = collected.trailers().cloned();
                        let sum = trailers
                            .as_ref()
                            .and_then(|t| t.get("x-sum"))
                            .map(|v| v.to_str().unwrap().to_owned());
                        seen.lock().unwrap().push((headers, trailers));
                        let response = if out {
                            let mut trailer = HeaderMap::new();
                            trailer.insert("x-checksum", HeaderValue::from_static("5d41402a"));
                            Response::builder()
                                .header("trailer", "x-checksum")
                                .body(
                                    Frames(VecDeque::from([
                                        Frame::data(Bytes::from_static(b"hello")),
                                        Frame::trailers(trailer),
                                    ]))
                                    .boxed(),
                                )
                                .unwrap()
                        } else {
                            let body = format!(
                                "{}|{}",
                                String::from_utf8_lossy(&collected.to_bytes()),
                                sum.unwrap_or_default()
                            );
                            Response::new(full(body))
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn config(upstream: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"orders-use1\"\nurl = \"http://{upstream}\"\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"orders-use1\"\n"
    )
}

/// Sends raw bytes and reads the whole answer (the request says `close`).
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy did not finish its answer")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_chunked_responses_trailer_reaches_a_client_that_accepts_trailers() {
    let (upstream, seen) = trailer_upstream().await;
    let proxy = TestProxy::start(&config(upstream), "").await;
    let answer = exchange(
        proxy.addr("edge"),
        "GET /out HTTP/1.1\r\nhost: orders\r\nconnection: close, te\r\nte: gzip, trailers\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\ntrailer: x-checksum\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n5\r\nhello\r\n0\r\nx-checksum: 5d41402a\r\n\r\n"),
        "{answer}"
    );
    // The upstream was told trailers are welcome, and nothing else of `TE`.
    let (headers, _) = seen.lock().unwrap().last().cloned().unwrap();
    let te: Vec<_> = headers.get_all("te").iter().collect();
    assert_eq!(te, ["trailers"]);

    // A client that does not accept trailers gets the body without them
    // (hyper's server writes trailers only after `TE: trailers`).
    let answer = exchange(
        proxy.addr("edge"),
        "GET /out HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("\r\n5\r\nhello\r\n0\r\n\r\n"), "{answer}");
    let (headers, _) = seen.lock().unwrap().last().cloned().unwrap();
    assert!(!headers.contains_key("te"));
}

#[tokio::test]
async fn a_chunked_requests_trailer_reaches_the_upstream() {
    let (upstream, seen) = trailer_upstream().await;
    let proxy = TestProxy::start(&config(upstream), "").await;
    let answer = exchange(
        proxy.addr("edge"),
        "POST /in HTTP/1.1\r\nhost: orders\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\
         trailer: x-sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello world|42"), "{answer}");
    let (headers, trailers) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers["trailer"], "x-sum");
    assert_eq!(trailers.unwrap()["x-sum"], "42");
}
