//! Gray failures: distributions, response-side latency, broken connections,
//! counted and sticky faults, through real sockets.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use http::Request;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn statuses(proxy: &TestProxy, n: usize) -> Vec<u16> {
    let client = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let request = Request::get(proxy.url("edge")).body(empty()).unwrap();
        out.push(send(&client, request).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn times_fails_exactly_that_many_requests() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule("thrice", "times = 3", "", "kind = \"error\"\nstatus = 500");
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let seen = statuses(&proxy, 10).await;
    assert_eq!(seen, [500, 500, 500, 200, 200, 200, 200, 200, 200, 200]);
}

#[tokio::test]
async fn every_fails_exactly_one_in_n() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule("fourth", "every = 4", "", "kind = \"error\"\nstatus = 500");
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let seen = statuses(&proxy, 20).await;
    for (i, status) in seen.iter().enumerate() {
        let expected = if (i + 1) % 4 == 0 { 500 } else { 200 };
        assert_eq!(*status, expected, "request {}", i + 1);
    }
}

#[tokio::test]
async fn sticky_sampling_gives_each_caller_one_answer() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "sticky",
        "probability = 0.3\nsticky = \"header:x-user-id\"",
        "",
        "kind = \"error\"\nstatus = 503",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let client = client();
    let ask = |user: String| {
        Request::get(proxy.url("edge"))
            .header("x-user-id", user)
            .body(empty())
            .unwrap()
    };
    let first = send(&client, ask("user-7".into())).await.status;
    for _ in 0..100 {
        assert_eq!(send(&client, ask("user-7".into())).await.status, first);
    }
    // About 30% of callers are affected: Binomial(400, 0.3), mean 120, sd ≈ 9.2.
    let mut affected = 0;
    for user in 0..400 {
        if send(&client, ask(format!("user-{user}"))).await.status == 503 {
            affected += 1;
        }
    }
    assert!(
        (83..=157).contains(&affected),
        "{affected} of 400 callers affected"
    );
}

#[tokio::test]
async fn uniform_distribution_delays_within_its_bounds() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "spread",
        "",
        "",
        "kind = \"latency\"\ndistribution = { kind = \"uniform\", min = \"60ms\", max = \"120ms\" }",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(get(&proxy.url("edge")).await.status, 200);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}

#[tokio::test]
async fn response_side_latency_holds_the_answer_not_the_request() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "late",
        "",
        "",
        "kind = \"latency\"\ndelay = \"400ms\"\nside = \"response\"",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    get(&proxy.url("edge")).await; // warm the pools
    let start = Instant::now();
    let reply = get(&proxy.url("edge")).await;
    let took = start.elapsed();
    assert_eq!(reply.header("x-faultline-rule"), Some("late"));
    assert!(took >= Duration::from_millis(400), "{took:?}");
    let reached = upstream.last_seen().at.duration_since(start);
    assert!(
        reached < Duration::from_millis(300),
        "the upstream was reached after {reached:?}"
    );
}

/// Sends a raw request and reads until the server closes or errors.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (std::io::Result<()>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let result = stream.read_to_end(&mut received).await.map(|_| ());
    (result, received)
}

#[tokio::test]
async fn abort_garbage_sends_bytes_that_are_not_http() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule("junk", "", "", "kind = \"abort\"\nmode = \"garbage\"");
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let (result, received) = raw(proxy.addr("edge"), b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert!(result.is_ok(), "{result:?}");
    assert!(!received.is_empty());
    assert!(!received.starts_with(b"HTTP/"));
    let error = client()
        .request(Request::get(proxy.url("edge")).body(empty()).unwrap())
        .await
        .expect_err("a real client must see an error");
    assert!(!error.is_connect(), "{error:?}");
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn abort_empty_reads_the_request_then_closes_without_a_byte() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule("silent", "", "", "kind = \"abort\"\nmode = \"empty\"");
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let mut request = b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 100000\r\n\r\n".to_vec();
    request.extend(vec![b'x'; 100_000]);
    let (result, received) = raw(proxy.addr("edge"), &request).await;
    // The body was read, so the close is a clean FIN, not a reset.
    assert!(result.is_ok(), "{result:?}");
    assert!(received.is_empty());
}

#[tokio::test]
async fn bad_gray_fields_are_reported_with_their_rule() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}{}",
        rule("a", "times = 0\nsticky = \"cookie:x\"", "", "kind = \"latency\"\ndelay = \"1s\""),
        rule("b", "", "", "kind = \"latency\"\ndistribution = { kind = \"lognormal\", median = \"2s\", p99 = \"1s\" }"),
    );
    let error = TestProxy::try_start(&edge_config(&[&upstream], ""), &rules)
        .await
        .err()
        .expect("must not start");
    assert!(
        error.contains("rule \"a\": times must be at least 1"),
        "{error}"
    );
    assert!(
        error.contains("rule \"a\": sticky \"cookie:x\" must be"),
        "{error}"
    );
    assert!(
        error.contains("rule \"b\": a lognormal needs 0 < median < p99"),
        "{error}"
    );
}

/// Downloads `path`, returning (time to the first body byte, total time, body length).
async fn timed_download(url: &str) -> (Duration, Duration, Result<usize, String>) {
    let start = Instant::now();
    let response = client()
        .request(Request::get(url).body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut first = None;
    let mut len = 0;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        match frame {
            Ok(frame) => {
                first.get_or_insert_with(|| start.elapsed());
                len += frame.data_ref().map_or(0, |d| d.len());
            }
            Err(e) => {
                return (
                    first.unwrap_or_default(),
                    start.elapsed(),
                    Err(e.to_string()),
                )
            }
        }
    }
    (first.unwrap_or_default(), start.elapsed(), Ok(len))
}

#[tokio::test]
async fn bandwidth_paces_a_mebibyte_at_the_given_rate() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "slow-link",
        "",
        "",
        "kind = \"bandwidth\"\nrate = \"1MiB/s\"",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let (_, took, len) = timed_download(&format!("{}/bytes/1048576", proxy.url("edge"))).await;
    assert_eq!(len, Ok(1 << 20));
    // 1 MiB at 1 MiB/s: one second, ±10% (a little more allowed above for a loaded machine).
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took <= Duration::from_millis(1300), "{took:?}");
}

#[tokio::test]
async fn dribble_spreads_the_body_over_the_duration() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "drip",
        "",
        "",
        "kind = \"dribble\"\nchunks = 8\nover = \"400ms\"",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    // 200 kB arrives from the upstream in many frames; the pieces follow byte
    // boundaries, not frames: 25 kB every 50 ms, so half is there mid-way.
    let url = format!("{}/bytes/200000", proxy.url("edge"));
    let start = Instant::now();
    let response = client()
        .request(Request::get(&url).body(empty()).unwrap())
        .await
        .unwrap();
    let mut body = response.into_body();
    let (mut received, mut half) = (0, None);
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len());
        if received >= 100_000 {
            half.get_or_insert_with(|| start.elapsed());
        }
    }
    let took = start.elapsed();
    assert_eq!(received, 200_000);
    let half = half.unwrap();
    assert!(
        half < Duration::from_millis(330),
        "half the body after {half:?}"
    );
    assert!(took >= Duration::from_millis(350), "{took:?}");
}

#[tokio::test]
async fn truncate_breaks_the_body_and_keeps_its_length() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "cut",
        "",
        "",
        "kind = \"truncate\"\nafter_bytes = 1000\nthen = \"reset\"",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let (_, _, result) = timed_download(&format!("{}/bytes/100000", proxy.url("edge"))).await;
    assert!(
        result.is_err(),
        "a real client must see a broken body, got {result:?}"
    );

    let (read, received) = raw(
        proxy.addr("edge"),
        b"GET /bytes/100000 HTTP/1.1\r\nhost: t\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&received);
    let head_end = text.find("\r\n\r\n").expect("headers arrive") + 4;
    assert!(
        text.to_ascii_lowercase().contains("content-length: 100000"),
        "{text}"
    );
    assert_eq!(received.len() - head_end, 1000);
    assert_eq!(
        read.expect_err("then = reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );
}

fn refuse_config(upstream: &TestUpstream) -> String {
    edge_config(&[upstream], "").replace(
        "labels = { region = \"us-east-1\" }",
        "labels = { region = \"us-east-1\" }\nlisten = \"127.0.0.1:0\"",
    )
}

const REFUSE: &str = "[[rule]]\nname = \"down\"\n[rule.match]\nupstreams = [\"orders-use1\"]\n[rule.fault]\nkind = \"unavailable\"\nmode = \"refuse\"\n";

#[tokio::test]
async fn refuse_closes_the_dedicated_port_and_reopens_it() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&refuse_config(&upstream), REFUSE).await;
    let addr = proxy.running().upstream_addr("orders-use1").unwrap();
    // The port closes once the rule snapshot is seen, just after start.
    wait_until("the dedicated port to refuse", async || {
        TcpStream::connect(addr)
            .await
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;

    // The rule turns off: the port accepts again within 100 ms.
    let off = Instant::now();
    proxy.admin("POST", "/api/rules/down/disable", None).await;
    let mut stream = loop {
        if let Ok(stream) = TcpStream::connect(addr).await {
            break stream;
        }
        assert!(
            off.elapsed() < Duration::from_millis(100),
            "still refusing after {:?}",
            off.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // On again: the open keep-alive connection is reset, new ones refused.
    proxy.admin("POST", "/api/rules/down/enable", None).await;
    let mut rest = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    let error = result
        .expect("the open connection must end")
        .expect_err("with a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    wait_until("the dedicated port to refuse again", async || {
        TcpStream::connect(addr)
            .await
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
    .await;
}

#[tokio::test]
async fn refuse_on_a_shared_listener_resets_instead() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), REFUSE).await;
    let (result, received) = raw(proxy.addr("edge"), b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(
        result.expect_err("a reset").kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert!(received.is_empty());
}

#[tokio::test]
async fn requests_let_through_by_the_cap_keep_the_times_budget() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}{}",
        rule(
            "hole",
            "",
            "path = \"/hole\"",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\""
        ),
        rule(
            "twice",
            "times = 2",
            "path = \"/t\"",
            "kind = \"error\"\nstatus = 500"
        ),
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], "max_active_faults = 1"), &rules).await;
    let mut held = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    held.write_all(b"GET /hole HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    proxy.until_injected("hole", 1).await;
    let url = format!("{}/t", proxy.url("edge"));
    for _ in 0..3 {
        assert_eq!(get(&url).await.status, 200, "the cap lets it pass");
    }
    drop(held);
    // The proxy saw the client leave: the slot is free again.
    proxy.until_no_request_in_flight("edge").await;
    let seen: Vec<u16> = {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(get(&url).await.status.as_u16());
        }
        seen
    };
    assert_eq!(seen, [500, 500, 200], "both injections are still owed");
}
