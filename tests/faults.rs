//! Every fault kind of the foundation, through real sockets.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use http::Request;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rule(name: &str, matcher: &str, fault: &str) -> String {
    support::rule(name, "", matcher, fault)
}

async fn proxy_with(upstream: &TestUpstream, rules: &str) -> TestProxy {
    TestProxy::start(&edge_config(&[upstream], ""), rules).await
}

/// Sends one raw HTTP/1.1 GET and reads until the server closes or errors.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (std::io::Result<usize>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (Ok(received.len()), received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => return (Err(e), received),
        }
    }
}

#[tokio::test]
async fn latency_delays_the_request_by_the_configured_time() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule("slow", "", "kind = \"latency\"\ndelay = \"100ms\""),
    )
    .await;
    let url = proxy.url("edge");
    get(&url).await; // warm the connection pools
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let reply = get(&url).await;
        samples.push(start.elapsed());
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-faultline-rule"), Some("slow"));
    }
    samples.sort();
    // Bounds that hold on a loaded machine; accuracy is measured by the benchmark.
    assert!(samples[0] >= Duration::from_millis(100), "{samples:?}");
    assert!(samples[2] < Duration::from_millis(600), "{samples:?}");
}

#[tokio::test]
async fn jitter_spreads_delays_around_the_median() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule(
            "jittery",
            "",
            "kind = \"latency\"\ndelay = \"60ms\"\njitter = \"50ms\"",
        ),
    )
    .await;
    let url = proxy.url("edge");
    let mut samples = Vec::new();
    for _ in 0..12 {
        let start = Instant::now();
        get(&url).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    assert!(samples[0] >= Duration::from_millis(10), "{samples:?}");
    assert!(
        samples[11] - samples[0] >= Duration::from_millis(20),
        "no spread: {samples:?}"
    );
}

#[tokio::test]
async fn error_faults_answer_instead_of_the_upstream() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = rule(
        "throttle",
        "methods = [\"POST\"]\npath = \"/2015-03-31/functions/*\"",
        "kind = \"error\"\nstatus = 429\nheaders = { \"content-type\" = \"application/json\", \"x-amzn-ErrorType\" = \"TooManyRequestsException\" }\nbody = '{\"message\":\"Rate Exceeded.\"}'",
    );
    let proxy = proxy_with(&upstream, &rules).await;
    let url = format!("{}/2015-03-31/functions/f", proxy.url("edge"));
    let reply = send(&client(), Request::post(&url).body(full("{}")).unwrap()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-faultline-rule"), Some("throttle"));
    assert_eq!(reply.text(), r#"{"message":"Rate Exceeded."}"#);
    assert_eq!(upstream.requests(), 0, "the upstream must not be called");

    // Other methods and paths pass through.
    assert_eq!(get(&url).await.status, 200);
    let other = format!("{}/2015-03-31/functions/f/invocations", proxy.url("edge"));
    assert_eq!(
        send(&client(), Request::post(&other).body(full("{}")).unwrap())
            .await
            .status,
        200
    );
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn error_bodies_can_come_from_a_file() {
    let upstream = TestUpstream::start("orders-use1").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slowdown.xml"),
        "<Error><Code>SlowDown</Code></Error>",
    )
    .unwrap();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir(&rules_dir).unwrap();
    std::fs::write(
        rules_dir.join("s3.toml"),
        rule(
            "s3-slowdown",
            "",
            "kind = \"error\"\nstatus = 503\nbody_file = \"../slowdown.xml\"",
        ),
    )
    .unwrap();
    let rules = faultline::book::load_dir(&rules_dir, &["orders-use1"]).unwrap();
    let config =
        faultline::config::Config::parse(&edge_config(&[&upstream], ""), dir.path()).unwrap();
    let running = faultline::app::App::new(config, rules)
        .start()
        .await
        .unwrap();
    let reply = get(&format!(
        "http://{}/",
        running.listener_addr("edge").unwrap()
    ))
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "<Error><Code>SlowDown</Code></Error>");
    running.shutdown().await;
}

#[tokio::test]
async fn abort_reset_makes_the_client_see_a_tcp_reset() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule("rst", "", "kind = \"abort\"\nmode = \"reset\""),
    )
    .await;
    let (result, received) = raw_get(proxy.addr("edge"), "/").await;
    let error = result.expect_err("expected a reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    assert!(received.is_empty());
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn abort_close_closes_the_connection_without_a_response() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule("fin", "", "kind = \"abort\"\nmode = \"close\""),
    )
    .await;
    let (result, received) = raw_get(proxy.addr("edge"), "/").await;
    assert_eq!(result.expect("a clean close, not a reset"), 0);
    assert!(received.is_empty());
    // A real HTTP client sees an error, not a response.
    let error = client()
        .request(Request::get(proxy.url("edge")).body(empty()).unwrap())
        .await
        .expect_err("no response expected");
    assert!(!error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn unavailable_status_answers_503_with_retry_after() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule(
            "gone",
            "",
            "kind = \"unavailable\"\nmode = \"status\"\nretry_after = \"30s\"",
        ),
    )
    .await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(reply.header("x-faultline-rule"), Some("gone"));
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn blackhole_holds_then_closes_without_an_answer() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule(
            "hole",
            "",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"300ms\"",
        ),
    )
    .await;
    let start = Instant::now();
    let (result, received) = raw_get(proxy.addr("edge"), "/").await;
    let held = start.elapsed();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(held >= Duration::from_millis(300), "{held:?}");
    assert!(held < Duration::from_secs(3), "{held:?}");
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn a_client_leaving_an_injected_delay_frees_everything() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with(
        &upstream,
        &rule("slow", "", "kind = \"latency\"\ndelay = \"700ms\""),
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    proxy.until_injected("slow", 1).await;
    drop(stream);
    // The proxy saw the client leave: it dropped the request.
    proxy.until_no_request_in_flight("edge").await;
    // A negative check, so a sleep: had the request survived its client
    // (say, in a task of its own), it would reach the upstream when the
    // delay ends, at most 700 ms from now. The request was inside the delay
    // before the client left, so this cannot pass by accident.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        upstream.requests(),
        0,
        "the abandoned request was forwarded"
    );
}

/// Holds a request in a blackhole at `max_active_faults = 1`, lets its
/// client send `request` and leave, then checks the slot came back: had
/// the held request leaked, the next faulted request would pass unmarked.
async fn assert_leaving_frees_the_blackhole(request: &[u8]) {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}{}",
        rule(
            "hole",
            "path = \"/hole\"",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\""
        ),
        rule("cap", "", "kind = \"latency\"\ndelay = \"1ms\"")
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], "max_active_faults = 1"), &rules).await;
    let mut stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
    stream.write_all(request).await.unwrap();
    proxy.until_injected("hole", 1).await;
    drop(stream);
    // The proxy saw the client leave: it dropped the held request.
    proxy.until_no_request_in_flight("edge").await;
    let reply = get(&format!("{}/other", proxy.url("edge"))).await;
    assert_eq!(
        reply.header("x-faultline-rule"),
        Some("cap"),
        "the blackholed request still counts as active"
    );
}

#[tokio::test]
async fn a_client_leaving_a_blackhole_frees_everything() {
    assert_leaving_frees_the_blackhole(b"GET /hole HTTP/1.1\r\nhost: test\r\n\r\n").await;
}

#[tokio::test]
async fn a_client_leaving_a_blackhole_mid_upload_frees_everything() {
    // Two of the announced 4 MiB arrive, then the client gives up.
    let mut request =
        b"POST /hole HTTP/1.1\r\nhost: test\r\ncontent-length: 4194304\r\n\r\n".to_vec();
    request.extend(vec![b'x'; 2 << 20]);
    assert_leaving_frees_the_blackhole(&request).await;
}

#[tokio::test]
async fn on_http2_an_abort_fails_only_its_own_stream() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}{}",
        rule(
            "rst",
            "path = \"/rst\"",
            "kind = \"abort\"\nmode = \"reset\""
        ),
        rule(
            "hole",
            "path = \"/hole\"",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"300ms\""
        )
    );
    let proxy = proxy_with(&upstream, &rules).await;
    let client = h2_client();
    let url = proxy.url("edge");
    let slow_ok = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move {
            send(
                &client,
                Request::get(format!("{url}/sleep/600"))
                    .body(empty())
                    .unwrap(),
            )
            .await
        }
    });
    // On the connection before the streams that fail: the upstream has it.
    wait_until("the slow request to reach the upstream", async || {
        upstream.requests() == 1
    })
    .await;
    for path in ["/rst", "/hole"] {
        let result = client
            .request(Request::get(format!("{url}{path}")).body(empty()).unwrap())
            .await;
        assert!(
            result.is_err(),
            "{path}: the stream must fail, got {result:?}"
        );
    }
    let reply = slow_ok.await.unwrap();
    assert_eq!(
        reply.status, 200,
        "the other stream on the connection must survive"
    );
}

#[tokio::test]
async fn shutdown_drops_what_the_grace_period_did_not_finish() {
    let upstream = TestUpstream::start("orders-use1").await;
    let config = edge_config(&[&upstream], "")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"200ms\"");
    let proxy = TestProxy::start(
        &config,
        &rule(
            "hole",
            "",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
        ),
    )
    .await;
    let held = tokio::spawn(raw_get(proxy.addr("edge"), "/"));
    proxy.until_injected("hole", 1).await;
    let start = Instant::now();
    proxy.shutdown().await;
    let (_, received) = tokio::time::timeout(Duration::from_secs(3), held)
        .await
        .expect("the held connection must be closed after the grace period")
        .unwrap();
    assert!(received.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn probability_zero_never_and_one_always() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}{}",
        rule(
            "never",
            "path = \"/never\"",
            "kind = \"error\"\nstatus = 500"
        )
        .replace("name = \"never\"", "name = \"never\"\nprobability = 0.0"),
        rule(
            "always",
            "path = \"/always\"",
            "kind = \"error\"\nstatus = 500"
        )
    );
    let proxy = proxy_with(&upstream, &rules).await;
    let client = client();
    for _ in 0..50 {
        let never = send(
            &client,
            Request::get(format!("{}/never", proxy.url("edge")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(never.status, 200);
        let always = send(
            &client,
            Request::get(format!("{}/always", proxy.url("edge")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(always.status, 500);
    }
}

async fn thirty_percent_run(seed: u64, n: usize) -> Vec<bool> {
    let upstream = TestUpstream::start("orders-use1").await;
    let config = edge_config(&[&upstream], "").replace("seed = 42", &format!("seed = {seed}"));
    let rules =
        "[[rule]]\nname = \"thirty\"\nprobability = 0.3\n[rule.fault]\nkind = \"error\"\nstatus = 503\n";
    let proxy = TestProxy::start(&config, rules).await;
    let client = client();
    let mut outcomes = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = send(
            &client,
            Request::get(proxy.url("edge")).body(empty()).unwrap(),
        )
        .await;
        outcomes.push(reply.status == 503);
    }
    outcomes
}

#[tokio::test]
async fn a_seeded_thirty_percent_mix_is_binomial_and_reproducible() {
    let n = 1000;
    let first = thirty_percent_run(7, n).await;
    let failed = first.iter().filter(|f| **f).count();
    // Binomial(1000, 0.3): mean 300, sd ≈ 14.5; ±4 sd.
    assert!((242..=358).contains(&failed), "{failed} of {n} failed");
    let again = thirty_percent_run(7, n).await;
    assert_eq!(first, again, "the same seed must give the same decisions");
    let other = thirty_percent_run(8, n).await;
    assert_ne!(first, other);
}

#[tokio::test]
async fn latencies_add_up_before_the_terminal_fault() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}{}{}",
        rule("slow-a", "", "kind = \"latency\"\ndelay = \"100ms\""),
        rule("slow-b", "", "kind = \"latency\"\ndelay = \"100ms\""),
        rule("fail", "", "kind = \"error\"\nstatus = 500"),
    );
    let proxy = proxy_with(&upstream, &rules).await;
    let start = Instant::now();
    let reply = get(&proxy.url("edge")).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.status, 500);
    let marks: Vec<&str> = reply
        .headers
        .get_all("x-faultline-rule")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(marks, ["slow-a", "slow-b", "fail"]);
}

#[tokio::test]
async fn mark_faults_off_leaves_responses_unmarked() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(
        &edge_config(&[&upstream], "mark_faults = false"),
        &rule("fail", "", "kind = \"error\"\nstatus = 500"),
    )
    .await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("x-faultline-rule"), None);
}

#[tokio::test]
async fn rules_match_by_label_and_header() {
    let east = TestUpstream::start("orders-use1").await;
    let west = TestUpstream::start("orders-usw2").await;
    let rules = rule(
        "east-blue",
        "labels = { region = \"us-east-*\" }\nheaders = { \"x-tenant\" = \"blue\" }",
        "kind = \"error\"\nstatus = 500",
    );
    let proxy = TestProxy::start(&edge_config(&[&east, &west], ""), &rules).await;
    let client = client();
    let ask = |path: &str, tenant: &str| {
        Request::get(format!("{}{path}", proxy.url("edge")))
            .header("x-tenant", tenant)
            .body(empty())
            .unwrap()
    };
    assert_eq!(
        send(&client, ask("/orders-use1/x", "blue")).await.status,
        500
    );
    assert_eq!(
        send(&client, ask("/orders-use1/x", "green")).await.status,
        200
    );
    assert_eq!(
        send(&client, ask("/orders-usw2/x", "blue")).await.status,
        200
    );
}
