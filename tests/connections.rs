//! Client connections the proxy must not keep: silent ones, slowloris ones,
//! idle keep-alive ones (`[proxy] header_timeout`), and what happens when
//! the process runs out of file descriptors.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::ErrorKind;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above `header_timeout` below, far below hyper's own 30 s.
const LOOSE: Duration = Duration::from_secs(10);

async fn proxy_with_header_timeout(upstream: &TestUpstream) -> TestProxy {
    TestProxy::start(&edge_config(&[upstream], "header_timeout = \"300ms\""), "").await
}

/// Reads until the proxy ends the connection, discarding whatever it sent
/// first; panics if it is still open after [`LOOSE`].
async fn until_closed(stream: &mut (impl AsyncRead + Unpin), what: &str) {
    let read_to_end = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
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
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_header_timeout(&upstream).await;
    let mut silent = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    until_closed(&mut silent, "a silent client").await;
    // The admin listener is held to the same limit.
    let mut silent = TcpStream::connect(proxy.running().admin_addr())
        .await
        .unwrap();
    until_closed(&mut silent, "a silent admin client").await;
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
        until_closed(&mut read, what).await;
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
        .send_request(
            Request::get("/x")
                .header("host", "orders")
                .body(empty())
                .unwrap(),
        )
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
            .send_request(
                Request::get(path)
                    .header("host", "orders")
                    .body(empty())
                    .unwrap(),
            )
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

#[tokio::test]
async fn listeners_ask_for_the_systems_longest_accept_queue() {
    let Ok(somaxconn) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
        eprintln!("SKIPPED: no /proc/sys/net/core/somaxconn");
        return;
    };
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_header_timeout(&upstream).await;
    let port = proxy.addr("edge").port();
    let ss = match Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
    {
        Ok(ss) if ss.status.success() => String::from_utf8(ss.stdout).unwrap(),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "ss is missing: install iproute2"
            );
            eprintln!("SKIPPED: ss (iproute2) not installed");
            return;
        }
    };
    // State, Recv-Q, Send-Q (a listener's backlog), local, peer.
    let backlog = ss
        .split_whitespace()
        .nth(2)
        .expect("no listener in ss output");
    assert_eq!(backlog, somaxconn.trim(), "{ss}");
}

// ---------------------------------------------------------------------------
// Out of file descriptors: the binary under a low RLIMIT_NOFILE.

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

/// The binary's file descriptor limit: a few dozen above what it opens
/// at start.
const NOFILE: u32 = 64;

/// Kills the child when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits, polling, until `done` holds; panics after `within`.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_lines(log: &Path, port: u16, text: &str) -> usize {
    let listener = format!("127.0.0.1:{port}");
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|line| line.contains(text) && line.contains(&listener))
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let upstream = TestUpstream::start("orders-use1").await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The default header_timeout (30 s): only the client closes these.
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nworkers = 1\nwatch_rules = false\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:{port}\"\n\n[[upstream]]\nname = \"orders-use1\"\nurl = \"{}\"\n\n[[route]]\nlistener = \"edge\"\nupstream = \"orders-use1\"\n",
        upstream.url()
    );
    std::fs::write(dir.path().join("faultline.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let log = dir.path().join("faultline.log");
    let child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -n {NOFILE} && exec \"$0\" run -c faultline.toml"),
            BIN,
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut faultline = Running(child);
    let pid = faultline.0.id();
    eventually("faultline serves", LOOSE, || {
        assert!(
            faultline.0.try_wait().unwrap().is_none(),
            "faultline exited"
        );
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("faultline is serving")
    })
    .await;
    let at_rest = open_fds(pid);

    // More silent connections than it has descriptors left; the rest wait
    // in the accept queue.
    let mut silent = Vec::new();
    for _ in 0..NOFILE * 2 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    eventually("an accept fails", LOOSE, || {
        log_lines(&log, port, "accept failed") > 0
    })
    .await;
    // Not a synchronisation: time for a few retries (every 100 ms), which
    // must not log a line each. The assertions hold however many there were.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(silent);
    eventually("the connections are closed", LOOSE, || {
        open_fds(pid) <= at_rest
    })
    .await;

    let reply = tokio::time::timeout(LOOSE, get(&format!("http://127.0.0.1:{port}/after")))
        .await
        .expect("no answer after the descriptors came back");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.requests(), 1);
    // One line per run of failures, whatever the number of retries, and
    // one when accepting works again.
    let failed = log_lines(&log, port, "accept failed");
    let recovered = log_lines(&log, port, "accepting connections again");
    assert_eq!(
        failed,
        recovered,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
