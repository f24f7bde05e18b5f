//! TCP upstreams (SPEC §9) through real sockets: a real `redis-server`
//! (Debian `redis-server`, installed by `.ci/run`) behind a `tcp://`
//! upstream, spoken to in RESP over a plain `TcpStream`, and small echo
//! and sink servers for half-close and volume.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{rule, wait_until, TestProxy};

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis {
    addr: SocketAddr,
    child: Child,
}

impl Redis {
    /// `None` (the test is skipped) only outside CI when redis-server is
    /// not installed; under `CI=true` a missing server fails the test.
    async fn start() -> Option<Redis> {
        let binary = std::env::var("FAULTLINE_REDIS_SERVER")
            .unwrap_or_else(|_| "/usr/bin/redis-server".to_owned());
        if !std::path::Path::new(&binary).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{binary} is missing: .ci/run installs the Debian package redis-server"
            );
            eprintln!("SKIPPED: {binary} not installed (apt-get install redis-server)");
            return None;
        }
        // A port the system just gave out and took back: free for redis.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let redis = Redis { addr, child };
        wait_until(
            "redis-server to answer PING",
            async || match TcpStream::connect(addr).await {
                Ok(mut s) => ping(&mut s).await.is_ok(),
                Err(_) => false,
            },
        )
        .await;
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with one `tcp://` upstream `cache` (region us-east-1) on its own port.
fn tcp_config(upstream: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nseed = 7\nshutdown_grace = \"2s\"\n\n\
         [[upstream]]\nname = \"cache\"\nurl = \"tcp://{upstream}\"\nlisten = \"127.0.0.1:0\"\n\
         labels = {{ region = \"us-east-1\", service = \"redis\" }}\n"
    )
}

fn port(proxy: &TestProxy) -> SocketAddr {
    proxy.running().upstream_addr("cache").unwrap()
}

/// Sends `PING` and reads `+PONG\r\n`.
async fn ping(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"+PONG\r\n");
    Ok(())
}

/// One RESP command, and its whole reply (one read: replies here are small).
async fn command(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut text = format!("*{}\r\n", args.len());
    for arg in args {
        text.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut reply = vec![0u8; 512];
    let n = stream.read(&mut reply).await.unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

#[tokio::test]
async fn redis_goes_through_untouched_and_is_counted() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let proxy = TestProxy::start(&tcp_config(redis.addr), "").await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    assert_eq!(command(&mut client, &["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(command(&mut client, &["GET", "k"]).await, "$1\r\nv\r\n");
    drop(client);
    let closed = "faultline_tcp_connections_total{outcome=\"closed\",region=\"us-east-1\",upstream=\"cache\"}";
    wait_until("the connection to be counted", async || {
        proxy.metric(closed).await == Some(1.0)
    })
    .await;
    let down = proxy
        .metric("faultline_tcp_bytes_total{direction=\"downstream\",region=\"us-east-1\",upstream=\"cache\"}")
        .await;
    assert_eq!(down, Some(12.0), "+OK\\r\\n and $1\\r\\nv\\r\\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_command() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule(
        "slow-cache",
        "",
        "upstreams = [\"cache\"]",
        "kind = \"latency\"\ndelay = \"200ms\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    for _ in 0..3 {
        let start = Instant::now();
        ping(&mut client).await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    assert_eq!(
        proxy.injected("slow-cache").await,
        1,
        "decided once per connection"
    );
    let injected = "faultline_faults_injected_total{kind=\"latency\",region=\"us-east-1\",rule=\"slow-cache\",upstream=\"cache\"}";
    assert_eq!(proxy.metric(injected).await, Some(1.0));
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_latency_delays_what_the_client_sends() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule(
        "slow-writes",
        "",
        "labels = { service = \"redis\" }",
        "kind = \"latency\"\ndelay = \"150ms\"\ndirection = \"upstream\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    let start = Instant::now();
    ping(&mut client).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(150));
    proxy.shutdown().await;
}

#[tokio::test]
async fn truncate_cuts_the_connection_after_n_bytes() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule("cut", "", "", "kind = \"truncate\"\nafter_bytes = 3");
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    client.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buffer = [0u8; 64];
    loop {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
        }
    }
    assert_eq!(got, b"+PO");
    proxy.shutdown().await;
}

#[tokio::test]
async fn abort_resets_the_client() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule(
        "reset",
        "",
        "",
        "kind = \"abort\"\nmode = \"reset\"\nafter = \"100ms\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    // Works until the reset comes.
    ping(&mut client).await.unwrap();
    let mut buffer = [0u8; 16];
    let error = client.read(&mut buffer).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    let injected = "faultline_tcp_connections_total{outcome=\"injected\",region=\"us-east-1\",upstream=\"cache\"}";
    wait_until("the reset to be counted", async || {
        proxy.metric(injected).await == Some(1.0)
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn refuse_closes_the_port_until_the_rule_goes() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule(
        "down",
        "",
        "upstreams = [\"cache\"]",
        "kind = \"unavailable\"\nmode = \"refuse\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let addr = port(&proxy);
    wait_until("the port to refuse", async || {
        matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
    })
    .await;
    proxy.admin("POST", "/api/rules/down/disable", None).await;
    wait_until("the port to accept again", async || {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    ping(&mut client).await.unwrap();
    proxy.shutdown().await;
}

#[tokio::test]
async fn blackhole_holds_then_closes_and_a_halt_lets_go() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule(
        "hole",
        "",
        "",
        "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"300ms\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    let start = Instant::now();
    client.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let mut buffer = [0u8; 16];
    let read = client.read(&mut buffer).await;
    assert!(
        matches!(read, Ok(0)),
        "{read:?}: nothing comes back, then the close"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));

    // A long hold, let go by the kill switch: the held command reaches redis.
    proxy.shutdown().await;
    let rules = rule(
        "hole",
        "",
        "",
        "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    client.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    proxy.until_injected("hole", 1).await;
    proxy.admin("POST", "/api/halt", None).await;
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut reply))
        .await
        .expect("the halt releases the held connection")
        .unwrap();
    assert_eq!(&reply, b"+PONG\r\n");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_halt_lifts_latency_on_an_open_connection() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule("slow", "", "", "kind = \"latency\"\ndelay = \"1h\"");
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    client.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    proxy.until_injected("slow", 1).await;
    proxy.admin("POST", "/api/halt", None).await;
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut reply))
        .await
        .expect("the halt lifts the delay")
        .unwrap();
    assert_eq!(&reply, b"+PONG\r\n");
    proxy.shutdown().await;
}

/// An upstream that reads until the client's FIN, then answers what it
/// read (or how much, for `count`) and closes.
async fn reply_after_fin(count: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut total = 0u64;
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) => break,
                        Ok(n) if count => total += n as u64,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                        Err(_) => return,
                    }
                }
                let answer = if count {
                    total.to_string().into_bytes()
                } else {
                    seen
                };
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_half_close_reaches_the_upstream_and_the_reply_comes_back() {
    let upstream = reply_after_fin(false).await;
    let proxy = TestProxy::start(&tcp_config(upstream), "").await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    client.write_all(b"hello, half-closed").await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"hello, half-closed");
    proxy.shutdown().await;
}

/// The resident set of this process (the proxy runs in it), from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_gibibyte_goes_through_without_memory_growing_with_it() {
    const GIB: u64 = 1 << 30;
    let upstream = reply_after_fin(true).await;
    let proxy = TestProxy::start(&tcp_config(upstream), "").await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    let before = rss_bytes();
    let chunk = vec![7u8; 256 * 1024];
    let mut sent = 0u64;
    let mut peak = before;
    while sent < GIB {
        client.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
        if sent % (64 << 20) == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    client.shutdown().await.unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, GIB.to_string());
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 64 << 20,
        "RSS grew by {} MiB moving 1 GiB",
        growth >> 20
    );
    let up = proxy
        .metric("faultline_tcp_bytes_total{direction=\"upstream\",region=\"us-east-1\",upstream=\"cache\"}")
        .await;
    assert_eq!(up, Some(GIB as f64));
    proxy.shutdown().await;
}

#[tokio::test]
async fn http_conditions_on_a_tcp_only_rule_are_refused_at_load() {
    let rules = rule(
        "bad",
        "",
        "upstreams = [\"cache\"]\npath = \"/x\"",
        "kind = \"latency\"\ndelay = \"1s\"",
    );
    let error = TestProxy::try_start(&tcp_config("127.0.0.1:1".parse().unwrap()), &rules)
        .await
        .err()
        .unwrap();
    assert!(
        error.contains("selects only tcp:// upstreams") && error.contains("match.path"),
        "{error}"
    );
    let rules = rule(
        "bad",
        "",
        "upstreams = [\"cache\"]",
        "kind = \"error\"\nstatus = 503",
    );
    let error = TestProxy::try_start(&tcp_config("127.0.0.1:1".parse().unwrap()), &rules)
        .await
        .err()
        .unwrap();
    assert!(
        error.contains("does not apply to a TCP connection"),
        "{error}"
    );
}

#[tokio::test]
async fn times_counts_connections() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let rules = rule(
        "once",
        "times = 1",
        "",
        "kind = \"abort\"\nmode = \"reset\"",
    );
    let proxy = TestProxy::start(&tcp_config(redis.addr), &rules).await;
    let mut first = TcpStream::connect(port(&proxy)).await.unwrap();
    let mut buffer = [0u8; 16];
    let read = first.read(&mut buffer).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let mut second = TcpStream::connect(port(&proxy)).await.unwrap();
    ping(&mut second).await.unwrap();
    assert_eq!(proxy.injected("once").await, 1);
    proxy.shutdown().await;
}

/// One `SET`/`GET` exchange with the demo cache, the client's FIN after it.
async fn kv_exchange(port: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(port).await?;
    stream.write_all(b"SET region up\nGET region\n").await?;
    stream.shutdown().await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

#[tokio::test]
async fn the_demo_cache_of_us_east_1_goes_down_with_the_region() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let demo = faultline::demo::Demo::start(any, any, std::path::Path::new("rules"))
        .await
        .unwrap();
    let port = |name: &str| demo.tcp_ports.iter().find(|(n, _)| *n == name).unwrap().1;
    let (east, west) = (port("cache-use1"), port("cache-usw2"));
    assert_eq!(kv_exchange(east).await.unwrap(), "OK\nVALUE up\n");
    // The shipped region-down rules: a refusing rule for every us-east-1 upstream.
    let on = faultline::control::Change {
        enabled: Some(true),
        ..Default::default()
    };
    demo.proxy
        .control()
        .change("use1-region-refuse", on, "test")
        .unwrap();
    wait_until("the us-east-1 cache to refuse", async || {
        matches!(TcpStream::connect(east).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
    })
    .await;
    assert_eq!(kv_exchange(west).await.unwrap(), "OK\nVALUE up\n");
    demo.shutdown().await;
}

/// An upstream that sends `bytes` bytes as soon as a client connects, then closes.
async fn sends_then_closes(bytes: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(&vec![b'x'; bytes]).await;
            });
        }
    });
    addr
}

/// Reads to the end; the bytes, and when the first and the last came.
async fn read_all(stream: &mut TcpStream) -> (Vec<u8>, Instant, Instant) {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut first = None;
    loop {
        let n = stream.read(&mut buffer).await.unwrap();
        if n == 0 {
            return (got, first.unwrap_or_else(Instant::now), Instant::now());
        }
        first.get_or_insert_with(Instant::now);
        got.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test]
async fn bandwidth_paces_a_direction() {
    let upstream = sends_then_closes(40 * 1024).await;
    let rules = rule("narrow", "", "", "kind = \"bandwidth\"\nrate = \"80KiB/s\"");
    let proxy = TestProxy::start(&tcp_config(upstream), &rules).await;
    let start = Instant::now();
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    let (got, _, end) = read_all(&mut client).await;
    assert_eq!(got.len(), 40 * 1024);
    // Half a second at 80 KiB/s, less the first slice that goes at once.
    let took = end - start;
    assert!(took >= Duration::from_millis(400), "{took:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slice_sends_small_pieces_apart() {
    let upstream = sends_then_closes(100).await;
    let rules = rule(
        "pieces",
        "",
        "",
        "kind = \"slice\"\naverage_size = 10\nsize_variation = 5\ndelay = \"20ms\"",
    );
    let proxy = TestProxy::start(&tcp_config(upstream), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    let (got, first, last) = read_all(&mut client).await;
    assert_eq!(got, vec![b'x'; 100]);
    // At least 100 / 15 = 7 pieces, so at least 6 gaps of 20 ms.
    let spread = last - first;
    assert!(spread >= Duration::from_millis(120), "{spread:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_close_passes_the_close_on_late() {
    let upstream = sends_then_closes(3).await;
    let rules = rule(
        "lingering",
        "",
        "",
        "kind = \"slow_close\"\ndelay = \"300ms\"",
    );
    let proxy = TestProxy::start(&tcp_config(upstream), &rules).await;
    let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
    let (got, first, closed) = read_all(&mut client).await;
    assert_eq!(got, b"xxx");
    let late = closed - first;
    assert!(late >= Duration::from_millis(250), "{late:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_guard_counts_failed_connections() {
    // An upstream that is down: its port refuses.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let rules = r#"
[[rule]]
name = "slow-cache"
enabled = false
[rule.match]
labels = { service = "redis" }
[rule.fault]
kind = "latency"
delay = "10ms"

[[scenario]]
name = "cache-drill"
duration = "1h"
[[scenario.step]]
at = "0s"
enable = ["slow-cache"]
[scenario.guard]
labels = { service = "redis" }
max_error_ratio = 0.2
window = "5s"
min_requests = 5
"#;
    let proxy = TestProxy::start(&tcp_config(dead), rules).await;
    let started = proxy
        .admin("POST", "/api/scenarios/cache-drill/start", None)
        .await;
    assert_eq!(started.status, 200, "{}", started.text());
    for _ in 0..10 {
        let mut client = TcpStream::connect(port(&proxy)).await.unwrap();
        let mut buffer = [0u8; 8];
        // The upstream cannot be reached: faultline closes the connection.
        assert!(matches!(client.read(&mut buffer).await, Ok(0) | Err(_)));
    }
    wait_until("the guard to stop the drill", async || {
        let view = proxy.admin("GET", "/api/scenarios/cache-drill", None).await;
        let view: serde_json::Value = serde_json::from_slice(&view.body).unwrap();
        view["state"] == "aborted"
            && view["run"]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("guard tripped: error ratio 1.000"))
    })
    .await;
    let failed = "faultline_tcp_connections_total{outcome=\"upstream_connect\",region=\"us-east-1\",upstream=\"cache\"}";
    assert_eq!(proxy.metric(failed).await, Some(10.0));
    proxy.shutdown().await;
}
