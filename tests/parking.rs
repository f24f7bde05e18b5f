//! Idle HTTP/1.1 connections park: hyper's per-connection state is given
//! back between requests and a fresh hyper connection serves the next one,
//! on the same socket. Driven through `server::serve` with a plain service,
//! so a test can watch each connection's park count.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline::server::{self, ConnControl, ConnInfo, Ending, Limits, Stop};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use support::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Far above any deadline below.
const LOOSE: Duration = Duration::from_secs(10);

const GET: &[u8] = b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n";

/// A server whose every response is `hello`, keeping each connection's control.
struct Server {
    addr: SocketAddr,
    controls: Arc<Mutex<Vec<Arc<ConnControl>>>>,
    drain: CancellationToken,
    reset: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(header_timeout: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let controls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&controls);
        let stop = Stop {
            drain: CancellationToken::new(),
            reset: CancellationToken::new(),
            grace: Duration::from_secs(30),
        };
        let (drain, reset) = (stop.drain.clone(), stop.reset.clone());
        let task = tokio::spawn(server::serve(
            listener,
            move |conn: ConnInfo| {
                seen.lock().unwrap().push(conn.control);
                hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
                })
            },
            Limits { header_timeout },
            stop,
        ));
        Server {
            addr,
            controls,
            drain,
            reset,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.controls.lock().unwrap().len()
    }

    fn parks(&self) -> u64 {
        self.controls.lock().unwrap()[0].parks()
    }

    /// Waits until the only connection has parked `n` times in all.
    async fn until_parked(&self, n: u64) {
        wait_until(&format!("the connection to park {n} times"), async || {
            self.parks() >= n
        })
        .await;
    }
}

/// Reads `n` whole `hello` responses; panics on anything else.
async fn read_responses(stream: &mut TcpStream, n: usize) {
    let read = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while count(&seen, b"hello") < n {
            let read = stream.read(&mut buf).await.unwrap();
            assert_ne!(read, 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..read]);
        }
        seen
    };
    let seen = tokio::time::timeout(LOOSE, read).await.expect("no answer");
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert_eq!(count(&seen, b"HTTP/1.1 200 OK\r\n"), n, "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

/// Waits for the server to end the connection: `Ok` for a FIN, the error
/// otherwise.
async fn until_closed(stream: &mut TcpStream) -> std::io::Result<()> {
    let read = async {
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf).await {
            Ok(0) => Ok(()),
            Ok(read) => panic!("unexpected bytes: {:?}", &buf[..read]),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(LOOSE, read)
        .await
        .expect("the server kept the connection open")
}

#[tokio::test]
async fn a_keep_alive_client_idle_between_requests_gets_every_answer_on_one_connection() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    for parked in 1..=3 {
        client.write_all(GET).await.unwrap();
        read_responses(&mut client, 1).await;
        server.until_parked(parked).await;
    }
    client.write_all(GET).await.unwrap();
    read_responses(&mut client, 1).await;
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_across_parks() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(&GET.repeat(3)).await.unwrap();
    read_responses(&mut client, 3).await;
    server.until_parked(1).await;
    // Three at once wake a parked connection.
    client.write_all(&GET.repeat(3)).await.unwrap();
    read_responses(&mut client, 3).await;
    server.until_parked(2).await;
    // A request and the start of the next in one write: hyper has read
    // part of a head when the connection parks, and hands it back.
    let (head, rest) = GET.split_at(10);
    client.write_all(&[GET, head].concat()).await.unwrap();
    read_responses(&mut client, 1).await;
    server.until_parked(3).await;
    client.write_all(rest).await.unwrap();
    read_responses(&mut client, 1).await;
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_parked_connection_that_stays_silent_is_closed_after_the_header_timeout() {
    let header_timeout = Duration::from_millis(1500);
    let server = Server::start(header_timeout).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(GET).await.unwrap();
    read_responses(&mut client, 1).await;
    let answered = Instant::now();
    server.until_parked(1).await;
    assert!(
        answered.elapsed() < header_timeout,
        "parked only after the header timeout; the test proves nothing"
    );
    until_closed(&mut client).await.unwrap();
    // Never before the client had the whole header timeout to speak.
    assert!(answered.elapsed() >= header_timeout);
}

#[tokio::test]
async fn a_drain_closes_a_parked_connection_at_once() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(GET).await.unwrap();
    read_responses(&mut client, 1).await;
    server.until_parked(1).await;
    let started = Instant::now();
    server.drain.cancel();
    until_closed(&mut client).await.unwrap();
    tokio::time::timeout(LOOSE, server.task)
        .await
        .expect("the accept loop waited for the parked connection")
        .unwrap();
    // Far less than the 30 s grace period.
    assert!(started.elapsed() < LOOSE);
}

#[tokio::test]
async fn an_abort_ends_a_parked_connection_as_it_asks() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(GET).await.unwrap();
    read_responses(&mut client, 1).await;
    server.until_parked(1).await;
    server.controls.lock().unwrap()[0].abort(Ending::Reset);
    let ended = until_closed(&mut client).await;
    assert_eq!(ended.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_reset_of_the_accept_loop_resets_parked_connections() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(GET).await.unwrap();
    read_responses(&mut client, 1).await;
    server.until_parked(1).await;
    server.reset.cancel();
    let ended = until_closed(&mut client).await;
    assert_eq!(ended.unwrap_err().kind(), ErrorKind::ConnectionReset);
}
