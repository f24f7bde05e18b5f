//! `/metrics` on the admin listener: counters that equal what clients saw,
//! an exposition `promtool` accepts, and a real Prometheus scraping it.
//!
//! The `promtool` and Prometheus tests need the Debian package `prometheus`
//! (`.ci/run` installs it); without it they fail under CI and are skipped,
//! loudly, elsewhere.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// `name{labels}` → value, from the text exposition.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn metrics_of(proxy: &TestProxy) -> (String, HashMap<String, f64>) {
    let reply = get(&format!("{}/metrics", proxy.admin_url())).await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = reply.text();
    let series = scrape(&text);
    (text, series)
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    *series.get(key).unwrap_or_else(|| panic!("no series {key}"))
}

const MIX_RULES: &str = r#"
[[rule]]
name = "thirty"
probability = 0.3
[rule.match]
path = "/mix/**"
[rule.fault]
kind = "error"
status = 503

[[rule]]
name = "slow"
[rule.match]
path = "/slow"
[rule.fault]
kind = "latency"
delay = "50ms"
"#;

/// Sends the known mix; returns how many 503s and 200s the client saw.
async fn known_mix(proxy: &TestProxy) -> (usize, usize) {
    let client = client();
    let (mut failed, mut ok) = (0, 0);
    for _ in 0..1000 {
        let request = http::Request::get(format!("{}/mix/x", proxy.url("edge")))
            .body(empty())
            .unwrap();
        match send(&client, request).await.status.as_u16() {
            503 => failed += 1,
            200 => ok += 1,
            other => panic!("unexpected {other}"),
        }
    }
    for _ in 0..10 {
        let request = http::Request::get(format!("{}/slow", proxy.url("edge")))
            .body(empty())
            .unwrap();
        assert_eq!(send(&client, request).await.status, 200);
    }
    (failed, ok)
}

#[tokio::test]
async fn counters_equal_what_the_client_saw() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), MIX_RULES).await;
    let (failed, ok) = known_mix(&proxy).await;
    assert!(failed > 200 && ok > 600, "{failed} failed, {ok} ok");
    let (_, m) = metrics_of(&proxy).await;

    let requests = |code: &str| {
        value(
            &m,
            &format!(
                r#"faultline_requests_total{{code="{code}",method="GET",region="us-east-1",upstream="orders-use1"}}"#
            ),
        )
    };
    assert_eq!(requests("503"), failed as f64);
    assert_eq!(requests("200"), (ok + 10) as f64);
    let injected = |rule: &str, kind: &str| {
        value(
            &m,
            &format!(
                r#"faultline_faults_injected_total{{kind="{kind}",region="us-east-1",rule="{rule}",upstream="orders-use1"}}"#
            ),
        )
    };
    assert_eq!(injected("thirty", "error"), failed as f64);
    assert_eq!(injected("slow", "latency"), 10.0);

    let labels = r#"{region="us-east-1",upstream="orders-use1"}"#;
    assert_eq!(
        value(
            &m,
            &format!("faultline_request_duration_seconds_count{labels}")
        ),
        1010.0
    );
    let forwarded = (ok + 10) as f64;
    let upstream_labels = r#"{upstream="orders-use1"}"#;
    assert_eq!(
        value(
            &m,
            &format!("faultline_upstream_duration_seconds_count{upstream_labels}")
        ),
        forwarded
    );
    // What the client waited minus what the upstream took: at least the injected 10 × 50 ms.
    let added = value(
        &m,
        &format!("faultline_request_duration_seconds_sum{labels}"),
    ) - value(
        &m,
        &format!("faultline_upstream_duration_seconds_sum{upstream_labels}"),
    );
    assert!(added >= 0.5, "the proxy added {added}s");
    let slow_bucket = value(
        &m,
        r#"faultline_request_duration_seconds_bucket{region="us-east-1",upstream="orders-use1",le="0.05"}"#,
    );
    assert!(
        slow_bucket <= 1000.0,
        "the 50 ms requests must land above le=0.05"
    );

    assert_eq!(value(&m, r#"faultline_rule_enabled{rule="thirty"}"#), 1.0);
    assert_eq!(
        value(&m, r#"faultline_inflight_requests{listener="edge"}"#),
        0.0
    );
    assert_eq!(value(&m, "faultline_halted"), 0.0);
    assert_eq!(value(&m, r#"faultline_build_info{version="0.1.0"}"#), 1.0);
}

#[tokio::test]
async fn proxy_errors_count_as_upstream_errors_never_as_faults() {
    let upstream = TestUpstream::start("orders-use1").await;
    let (closed, _kept) = refused_addr();
    let dead = format!("http://{closed}");
    let proxy = TestProxy::start(
        &edge_config(&[&upstream], "").replace(&upstream.url(), &dead),
        "",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("edge")).await.status, 502);
    }
    let (text, m) = metrics_of(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"faultline_upstream_errors_total{reason="connect",upstream="orders-use1"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            r#"faultline_requests_total{code="502",method="GET",region="us-east-1",upstream="orders-use1"}"#
        ),
        3.0
    );
    assert!(!text.contains("faultline_faults_injected_total{"), "{text}");
}

#[tokio::test]
async fn the_admin_listener_answers_health_and_unknown_routes() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let health = get(&format!("{}/healthz", proxy.admin_url())).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok\n")
    );
    let missing = get(&format!("{}/nope", proxy.admin_url())).await;
    assert_eq!(missing.status, 404);
    let body: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Some(promtool) = prometheus_tool("promtool") else {
        return;
    };
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), MIX_RULES).await;
    known_mix(&proxy).await;
    let (text, _) = metrics_of(&proxy).await;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_real_prometheus_scrapes_what_was_injected() {
    let Some(prometheus) = prometheus_tool("prometheus") else {
        return;
    };
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), MIX_RULES).await;
    let (failed, ok) = known_mix(&proxy).await;

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: faultline\n    static_configs:\n      - targets: ['{}']\n",
        proxy.running().admin_addr()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let query = |q: &str| format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
    let injected = query("faultline_faults_injected_total%7Brule%3D%22thirty%22%7D");
    let requests = query("sum%20by%20(code)(faultline_requests_total)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus never showed the series"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Ok(response)) = tokio::time::timeout(
            Duration::from_secs(5),
            client().request(http::Request::get(&injected).body(empty()).unwrap()),
        )
        .await
        else {
            continue;
        };
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(first) = json["data"]["result"].get(0) {
            break first.clone();
        }
    };
    assert_eq!(seen["metric"]["kind"], "error");
    assert_eq!(seen["metric"]["upstream"], "orders-use1");
    assert_eq!(seen["metric"]["region"], "us-east-1");
    assert_eq!(seen["value"][1], failed.to_string());

    let reply = get(&requests).await;
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let by_code: HashMap<String, String> = json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["code"].as_str().unwrap().to_owned(),
                r["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(by_code["503"], failed.to_string());
    assert_eq!(by_code["200"], (ok + 10).to_string());
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn the_blast_radius_cap_lets_requests_pass_and_counts_them() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = "[[rule]]\nname = \"hole\"\n[rule.fault]\nkind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"\n";
    let proxy = TestProxy::start(&edge_config(&[&upstream], "max_active_faults = 1"), rules).await;
    // The first request takes the only slot and is held…
    let mut held = tokio::net::TcpStream::connect(proxy.addr("edge"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut held, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    proxy.until_injected("hole", 1).await;
    // …so the next ones pass unharmed, and are counted.
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("edge")).await.status, 200);
    }
    let (_, m) = metrics_of(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"faultline_faults_overflow_total{upstream="orders-use1"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            r#"faultline_faults_injected_total{kind="unavailable",region="us-east-1",rule="hole",upstream="orders-use1"}"#
        ),
        1.0
    );
    drop(held);
}

#[tokio::test]
async fn requests_that_get_no_response_count_with_code_zero() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = "[[rule]]\nname = \"rst\"\n[rule.fault]\nkind = \"abort\"\nmode = \"reset\"\n";
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), rules).await;
    for _ in 0..2 {
        let result = client()
            .request(http::Request::get(proxy.url("edge")).body(empty()).unwrap())
            .await;
        assert!(result.is_err());
    }
    let (_, m) = metrics_of(&proxy).await;
    assert_eq!(
        value(
            &m,
            r#"faultline_requests_total{code="0",method="GET",region="us-east-1",upstream="orders-use1"}"#
        ),
        2.0
    );
}
