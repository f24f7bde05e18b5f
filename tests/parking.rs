//! Idle HTTP/1.1 connections park: hyper's per-connection state is given
//! back between requests and a fresh hyper connection serves the next one,
//! on the same socket. Driven through `server::serve` with a plain service
//! (`/upgrade` switches to an echo of the raw bytes), so a test can watch
//! each connection's park count.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faultline::server::{self, ConnControl, ConnInfo, Ending, Limits, Stop, TlsDoor};
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use rustls::pki_types::ServerName;
use support::tls::{client_config, server_config, TestCa};
use support::wait_until;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
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
        Server::start_with(header_timeout, None).await
    }

    /// A server on a TLS listener when `tls` is given.
    async fn start_with(header_timeout: Duration, tls: Option<TlsDoor>) -> Server {
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
        let make_service = move |conn: ConnInfo| {
            seen.lock().unwrap().push(conn.control);
            hyper::service::service_fn(|request: Request<Incoming>| async {
                if request.uri().path() == "/upgrade" {
                    return Ok::<_, Infallible>(echo_upgraded(request));
                }
                Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
            })
        };
        let limits = Limits { header_timeout };
        let task = match tls {
            None => tokio::spawn(server::serve(listener, make_service, limits, stop)),
            Some(door) => tokio::spawn(server::serve_tls(
                listener,
                door,
                make_service,
                limits,
                stop,
            )),
        };
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

/// Answers `101` and echoes the upgraded connection's bytes until the
/// client half-closes, then half-closes too.
fn echo_upgraded(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        tokio::io::copy(&mut reader, &mut writer).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

const UPGRADE: &[u8] =
    b"GET /upgrade HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";

/// Reads the `101`'s head, and nothing past it.
async fn read_switching(stream: &mut TcpStream) {
    let read = async {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut byte).await.unwrap();
            assert_ne!(read, 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.push(byte[0]);
        }
        seen
    };
    let seen = tokio::time::timeout(LOOSE, read).await.expect("no answer");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
}

/// Reads `n` whole `hello` responses; panics on anything else.
async fn read_responses(stream: &mut (impl AsyncRead + Unpin), n: usize) {
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

#[tokio::test]
async fn a_parked_connection_upgrades_and_its_tunnel_outlives_the_sweeps() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(GET).await.unwrap();
    read_responses(&mut client, 1).await;
    server.until_parked(1).await;
    client.write_all(UPGRADE).await.unwrap();
    read_switching(&mut client).await;
    // Many sweeps: none may take the tunnel's socket for an idle connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for message in [&b"ping"[..], b"pong"] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(LOOSE, client.read_exact(&mut echoed))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(echoed, message);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.parks(), 1, "an upgraded connection parked");
    // The echo's half-close reaches the client: the socket's shutdown is
    // not the skipped one of a park.
    client.shutdown().await.unwrap();
    until_closed(&mut client).await.unwrap();
}

#[tokio::test]
async fn an_upgrade_pipelined_behind_a_request_is_not_lost_to_a_park() {
    let server = Server::start(Duration::from_secs(30)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(&[GET, UPGRADE].concat()).await.unwrap();
    // Byte by byte, so as not to read into the `101`.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"hello") {
        tokio::time::timeout(LOOSE, client.read_exact(&mut byte))
            .await
            .expect("no answer")
            .unwrap();
        seen.push(byte[0]);
    }
    read_switching(&mut client).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(LOOSE, client.read_exact(&mut echoed))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&echoed, b"still here");
    assert_eq!(server.parks(), 0);
}

#[tokio::test]
async fn tls_connections_do_not_park_and_keep_serving() {
    let ca = TestCa::new("parking test CA");
    let leaf = ca.leaf(&["edge.test"]);
    let door = TlsDoor {
        acceptor: TlsAcceptor::from(server_config(&leaf, None)),
        failures: std::array::from_fn(|i| IntCounter::new(format!("failures_{i}"), "-").unwrap()),
    };
    let server = Server::start_with(Duration::from_secs(30), Some(door)).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("edge.test").unwrap();
        let mut stream = TlsConnector::from(client_config(&ca, &[alpn]))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
        if alpn == b"h2" {
            let io = TokioIo::new(stream);
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            for _ in 0..2 {
                let request = Request::get("https://edge.test/hello")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"hello");
                // Many sweeps' worth of idleness.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        } else {
            for _ in 0..2 {
                stream.write_all(GET).await.unwrap();
                read_responses(&mut stream, 1).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let controls = server.controls.lock().unwrap();
    assert_eq!(controls.len(), 2, "one connection per protocol");
    assert!(controls.iter().all(|control| control.parks() == 0));
}
