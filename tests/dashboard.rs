//! The monitoring stack shipped in `examples/`: the Grafana dashboard, its
//! provisioned data source, and the Prometheus config. A real Prometheus,
//! started from the shipped `prometheus.yml`, scrapes the demo while traffic
//! runs and a scenario plays, and every query of the dashboard (every panel,
//! rows included, every template variable and annotation) must return data.
//!
//! Like tests/metrics.rs this needs the Debian package `prometheus`
//! (`.ci/run` installs it); without it the Prometheus tests fail under CI
//! and are skipped, loudly, elsewhere.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline::demo::Demo;
use serde_json::Value;
use support::*;

const DASHBOARD: &str = "examples/grafana/dashboards/faultline.json";
const DATASOURCE: &str = "examples/grafana/provisioning/datasources/prometheus.yml";
const PROMETHEUS_CONFIG: &str = "examples/prometheus/prometheus.yml";
const SCENARIO: &str = "us-east-1-lambda-capacity";
const REGIONS: [&str; 2] = ["us-east-1", "us-west-2"];

/// What Grafana would put in for its built-in variables with the 1 s scrape
/// interval of the test: `$__rate_interval` is at least four scrapes
/// (`max(4 × scrape, $__interval + scrape)`); 10 s leaves room for scrapes
/// a loaded machine delays.
const BUILTINS: [(&str, &str); 4] = [
    ("__rate_interval", "10s"),
    ("__interval", "5s"),
    ("__range", "15m"),
    ("__range_s", "900"),
];

/// The path of a tool from the `prometheus` package, or `None` outside CI
/// when it is not installed.
fn tool(name: &str) -> Option<&'static str> {
    let path = match name {
        "promtool" => "/usr/bin/promtool",
        _ => "/usr/bin/prometheus",
    };
    if Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: .ci/run installs the Debian package prometheus"
    );
    eprintln!("SKIPPED: {path} not installed (apt-get install prometheus)");
    None
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap()
}

/// Every panel, those inside rows (collapsed rows keep theirs) included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

/// A query of the dashboard, with where it comes from.
struct Query {
    /// `panel "TITLE"`, `variable NAME` or `annotation NAME`.
    source: String,
    /// As written in the dashboard.
    expr: String,
    /// What Prometheus is asked, variables substituted.
    promql: String,
    /// The panel's legend (`{{region}}`), empty elsewhere.
    legend: String,
    /// Whether it must return series (annotations only mark what changed).
    must_have_data: bool,
}

/// Template variable names of the dashboard.
fn variable_names(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Substitutes Grafana variables the way Grafana does with "All" selected
/// (`allValue` is `.*`): `$name`, `${name}`, `${name:format}` and
/// `[[name]]`. An unknown variable fails the test.
fn substitute(expr: &str, variables: &[String]) -> String {
    let value = |name: &str| -> String {
        if let Some((_, v)) = BUILTINS.iter().find(|(n, _)| *n == name) {
            return (*v).to_owned();
        }
        assert!(
            variables.iter().any(|v| v == name),
            "unknown variable ${name} in {expr}"
        );
        ".*".to_owned()
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(inner) = tail.strip_prefix("${") {
            let end = inner
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {expr}"));
            let name = inner[..end].split(':').next().unwrap();
            out.push_str(&value(name));
            rest = &inner[end + 1..];
        } else if let Some(inner) = tail.strip_prefix('$') {
            let end = inner.find(|c| !is_name(c)).unwrap_or(inner.len());
            assert!(end > 0, "a lone $ in {expr}");
            out.push_str(&value(&inner[..end]));
            rest = &inner[end..];
        } else if let Some(inner) = tail.strip_prefix("[[").filter(|inner| {
            inner
                .find("]]")
                .is_some_and(|end| inner[..end].chars().all(is_name))
        }) {
            let end = inner.find("]]").unwrap();
            out.push_str(&value(&inner[..end]));
            rest = &inner[end + 2..];
        } else {
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A variable query in PromQL: `label_values(SELECTOR, LABEL)` lists the
/// values of LABEL on SELECTOR's series, so `count by (LABEL) (SELECTOR)`
/// returns one series per value.
fn variable_promql(query: &str) -> (String, Option<String>) {
    let query = query.trim();
    if let Some(args) = query
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    {
        let (selector, label) = match args.rsplit_once(',') {
            Some((selector, label)) => (selector.trim().to_owned(), label.trim().to_owned()),
            None => (format!("{{{}!=\"\"}}", args.trim()), args.trim().to_owned()),
        };
        return (format!("count by ({label}) ({selector})"), Some(label));
    }
    if let Some(inner) = query
        .strip_prefix("query_result(")
        .and_then(|a| a.strip_suffix(')'))
    {
        return (inner.to_owned(), None);
    }
    panic!("a variable query this test cannot evaluate: {query}");
}

/// Every query of the dashboard: panel targets, variables, annotations.
fn queries(dashboard: &Value) -> Vec<Query> {
    let variables = variable_names(dashboard);
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without expr", title(panel)));
            out.push(Query {
                source: format!("panel {:?}", title(panel)),
                expr: expr.to_owned(),
                promql: substitute(expr, &variables),
                legend: target["legendFormat"].as_str().unwrap_or("").to_owned(),
                must_have_data: true,
            });
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = match &variable["query"] {
            Value::String(q) => q.as_str(),
            other => other["query"].as_str().unwrap(),
        };
        let (promql, label) = variable_promql(query);
        out.push(Query {
            source: format!("variable {}", variable["name"].as_str().unwrap()),
            expr: query.to_owned(),
            promql: substitute(&promql, &variables),
            legend: label.map(|l| format!("{{{{{l}}}}}")).unwrap_or_default(),
            must_have_data: true,
        });
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["expr"].as_str() {
            out.push(Query {
                source: format!("annotation {}", annotation["name"].as_str().unwrap()),
                expr: expr.to_owned(),
                promql: substitute(expr, &variables),
                legend: String::new(),
                must_have_data: false,
            });
        }
    }
    out
}

/// The `uid:` the provisioning file gives the Prometheus data source.
fn provisioned_uid() -> String {
    let text = std::fs::read_to_string(DATASOURCE).unwrap();
    assert!(text.contains("type: prometheus"), "{text}");
    assert!(text.contains("url: http://prometheus:9090"), "{text}");
    let uids: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().trim_matches(['"', '\'']))
        .collect();
    assert_eq!(uids.len(), 1, "one data source with a uid: {text}");
    uids[0].to_owned()
}

#[test]
fn the_dashboard_has_the_panels_and_the_provisioned_data_source() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "faultline");
    assert_eq!(dashboard["title"], "faultline: regional outage rehearsal");
    assert_eq!(dashboard["refresh"], "5s");
    assert_eq!(dashboard["time"]["from"], "now-15m");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);

    let uid = provisioned_uid();
    let panels = panels(&dashboard);
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = title(panel);
        assert_eq!(panel["datasource"]["uid"], uid.as_str(), "panel {title:?}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], uid.as_str(), "panel {title:?}");
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("$__rate_interval") || !expr.contains("rate("),
                "panel {title:?}: rates over $__rate_interval: {expr}"
            );
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        assert_eq!(variable["datasource"]["uid"], uid.as_str(), "{variable}");
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if annotation["expr"].is_string() {
            assert_eq!(
                annotation["datasource"]["uid"],
                uid.as_str(),
                "{annotation}"
            );
        }
    }

    // The variables: multi-value, with an All that matches everything.
    let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for name in ["region", "upstream"] {
        let variable = variables
            .get(name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        assert_eq!(variable["multi"], true, "{name}");
        assert_eq!(variable["includeAll"], true, "{name}");
        assert_eq!(variable["allValue"], ".*", "{name}");
    }

    // Every query on a metric with region and upstream labels filters by both.
    for query in queries(&dashboard) {
        let expr = &query.expr;
        for metric in [
            "faultline_requests_total",
            "faultline_request_duration_seconds",
            "faultline_faults_injected_total",
        ] {
            if query.source.starts_with("panel") && expr.contains(metric) {
                for filter in [r#"region=~"$region""#, r#"upstream=~"$upstream""#] {
                    assert!(
                        expr.matches(metric).count() == expr.matches(filter).count(),
                        "{}: every {metric} must filter by {filter}: {expr}",
                        query.source
                    );
                }
            }
        }
        if expr.contains("faultline_upstream_errors_total") {
            assert!(
                expr.contains(r#"upstream=~"$upstream""#),
                "{}: {expr}",
                query.source
            );
        }
    }

    // The panels the dashboard is for, found by title.
    let find = |words: &[&str]| -> &Value {
        panels
            .iter()
            .find(|p| {
                let t = title(p).to_lowercase();
                p["type"] != "row" && words.iter().all(|w| t.contains(w))
            })
            .unwrap_or_else(|| panic!("no panel titled with {words:?}"))
    };
    let unit = |panel: &Value| panel["fieldConfig"]["defaults"]["unit"].clone();
    for by in ["region", "upstream"] {
        let rate = find(&["request rate", by]);
        assert_eq!(unit(rate), "reqps", "{}", title(rate));
        let errors = find(&["error ratio", by]);
        assert_eq!(unit(errors), "percentunit", "{}", title(errors));
        let expr = errors["targets"][0]["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"code=~"5..|429|0""#),
            "{}: {expr}",
            title(errors)
        );
        let p99 = find(&["p99", by]);
        assert_eq!(unit(p99), "s", "{}", title(p99));
        let expr = p99["targets"][0]["expr"].as_str().unwrap();
        assert!(
            expr.contains("histogram_quantile(0.99")
                && expr.contains(&format!("by (le, {by})"))
                && expr.contains("faultline_request_duration_seconds_bucket"),
            "{}: {expr}",
            title(p99)
        );
    }
    let by_rule = find(&["faults injected", "rule"]);
    assert!(by_rule["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .contains("sum by (rule)"));
    let active = find(&["active scenario"]);
    assert!(active["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .contains("faultline_scenario_running"));
    let steps = find(&["scenario step"]);
    assert_eq!(steps["type"], "timeseries");
    assert_eq!(
        steps["fieldConfig"]["defaults"]["custom"]["lineInterpolation"],
        "stepAfter"
    );
    let halted = find(&["halted"]);
    assert_eq!(halted["type"], "stat");
    assert_eq!(halted["targets"][0]["expr"], "faultline_halted");
    let mappings = &halted["fieldConfig"]["defaults"]["mappings"][0]["options"];
    assert_eq!(mappings["0"]["text"], "serving");
    assert_eq!(mappings["1"]["text"], "HALTED");
    assert_eq!(mappings["1"]["color"], "red");

    // Grafana lays panels on a 24-column grid.
    for panel in panels {
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && pos["h"].as_u64().unwrap() > 0,
            "{}",
            title(panel)
        );
    }
}

#[test]
fn promtool_accepts_the_shipped_prometheus_config() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "config", PROMETHEUS_CONFIG])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prometheus, killed when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped config, pointed at `admin` and scraping every second.
fn test_config(admin: SocketAddr) -> String {
    let shipped = std::fs::read_to_string(PROMETHEUS_CONFIG).unwrap();
    let mut config = shipped.clone();
    for (from, to) in [
        ("faultline:9000", admin.to_string()),
        ("scrape_interval: 5s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 5s",
            "evaluation_interval: 1s".to_owned(),
        ),
    ] {
        assert!(
            config.contains(from),
            "{PROMETHEUS_CONFIG} has no {from}:\n{shipped}"
        );
        config = config.replace(from, &to);
    }
    config
}

/// `application/x-www-form-urlencoded` / query-string escaping.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus' answer to an instant query, or why there is none.
async fn instant_query(port: u16, promql: &str) -> Result<Value, String> {
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/query?query={}",
        encode(promql)
    );
    let request = http::Request::get(url).body(empty()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))
}

/// What is wrong with a query's answer, if anything.
fn problem(query: &Query, answer: &Result<Value, String>) -> Option<String> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => return Some(format!("no answer: {e}")),
    };
    if answer["status"] != "success" {
        return Some(format!("not a success: {answer}"));
    }
    if !query.must_have_data {
        return None;
    }
    let data = &answer["data"];
    if data["resultType"] == "scalar" {
        return None;
    }
    let result = data["result"].as_array().cloned().unwrap_or_default();
    if result.is_empty() {
        return Some("no data".to_owned());
    }
    // A panel drawn per region shows both; the error ratio shows the
    // healthy region at 0 rather than dropping it.
    if query.legend.trim() == "{{region}}" {
        let values: BTreeMap<&str, &str> = result
            .iter()
            .filter_map(|r| Some((r["metric"]["region"].as_str()?, r["value"][1].as_str()?)))
            .collect();
        if REGIONS.iter().any(|r| !values.contains_key(r)) {
            return Some(format!("not every region: {result:?}"));
        }
        if query.source.to_lowercase().contains("error ratio") && values["us-west-2"] != "0" {
            return Some(format!("us-west-2 has no faults, yet: {result:?}"));
        }
    }
    None
}

/// Sends `path` through the proxy again and again until aborted.
fn traffic(proxy: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = client();
        loop {
            let request = http::Request::get(format!("http://{proxy}{path}"))
                .body(empty())
                .unwrap();
            let exchange = async {
                let response = client.request(request).await.ok()?;
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), exchange).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    let started = Instant::now();

    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let demo = Demo::start(any, any, Path::new("rules")).await.unwrap();
    let admin = demo.proxy.admin_addr();
    let senders: Vec<_> = [
        "/us-east-1/lambda/x",
        "/us-west-2/lambda/x",
        "/us-east-1/orders/1",
        "/us-west-2/orders/1",
        "/us-east-1/payments/1",
        "/us-west-2/payments/1",
        "/us-east-1/console/x",
        "/us-west-2/console/x",
    ]
    .into_iter()
    .map(|path| traffic(demo.proxy_addr, path))
    .collect();

    // At speed 1 the run stays on its first step for ten minutes.
    let reply = send(
        &client(),
        http::Request::post(format!("http://{admin}/api/scenarios/{SCENARIO}/start"))
            .header("content-type", "application/json")
            .body(full(r#"{"speed":1}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, test_config(admin)).unwrap();
    let log = dir.path().join("prometheus.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    // A few scrapes first, so rates have samples to work with.
    let scrapes = "count_over_time(faultline_halted[1m])";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = instant_query(port, scrapes).await;
        let count = answer.as_ref().ok().and_then(|a| {
            a["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<u32>()
                .ok()
        });
        if count.is_some_and(|c| c >= 5) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the demo five times: {answer:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Then every query, again until all of them answer or time runs out.
    let deadline = Instant::now() + Duration::from_secs(90);
    let answers = loop {
        let mut answers = Vec::new();
        for query in &queries {
            answers.push(instant_query(port, &query.promql).await);
        }
        let all_good = queries
            .iter()
            .zip(&answers)
            .all(|(q, a)| problem(q, a).is_none());
        if all_good || Instant::now() > deadline {
            break answers;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let failures: Vec<String> = queries
        .iter()
        .zip(&answers)
        .filter_map(|(q, a)| {
            let problem = problem(q, a)?;
            Some(format!(
                "{}: {problem}\n  expr: {}\n  sent: {}",
                q.source, q.expr, q.promql
            ))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );

    // A few answers checked for what they mean, not just that they exist.
    let answer_of = |source: &str| -> &Value {
        let at = queries.iter().position(|q| q.source == source).unwrap();
        answers[at].as_ref().unwrap()
    };
    let active = answer_of(r#"panel "Active scenario: step""#);
    let running: Vec<(&str, &str)> = active["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metric"]["scenario"].as_str().unwrap(),
                r["value"][1].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(running, [(SCENARIO, "1")], "{active}");
    assert_eq!(
        answer_of(r#"panel "Halted""#)["data"]["result"][0]["value"][1],
        "0"
    );
    let regions: BTreeSet<&str> = answer_of("variable region")["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, BTreeSet::from(REGIONS));

    for sender in senders {
        sender.abort();
    }
    demo.shutdown().await;
    eprintln!(
        "{} dashboard queries answered in {:.1}s",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
}
