//! The monitoring stack shipped in `examples/`: the Grafana dashboard, its
//! provisioned data source, and the Prometheus config. A real Prometheus,
//! started from the shipped `prometheus.yml` (its 5 s scrape interval
//! included), scrapes the demo while traffic runs, the kill switch is
//! thrown and lifted, and a scenario starts; every query of the dashboard
//! (every panel, rows included, every template variable) must return data,
//! and every annotation must mark what changed, once, the way Grafana
//! evaluates it: a range query over the time on screen.
//!
//! A second test scrapes two replicas and reads the per-replica panels: a
//! scenario started on one of them shows as a replica apart.
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

/// The scrape interval of the shipped `prometheus.yml`, which is also the
/// data source's `timeInterval`. The test scrapes at this very interval
/// rather than faster: what `$__interval` and `$__rate_interval` cover is
/// only honest in scrapes, and a faster scrape once hid annotations
/// (`changes(…[$__interval])`) that never show on the real stack.
const SCRAPE: &str = "5s";

/// What Grafana puts in for its built-in variables on the shipped stack,
/// the default 15 minutes on screen: `$__interval` is the range over the
/// width in pixels (under a second), raised to the data source's
/// `timeInterval`, 5 s; `$__rate_interval` is
/// `max(4 × scrape, $__interval + scrape)`, 20 s. An annotation query gets
/// the same `$__interval`, and its range query the same step.
const BUILTINS: [(&str, &str); 4] = [
    ("__rate_interval", "20s"),
    ("__interval", "5s"),
    ("__range", "15m"),
    ("__range_s", "900"),
];

/// `$__interval`: the step of the annotations' range queries.
fn interval() -> Duration {
    let (_, interval) = BUILTINS.iter().find(|(n, _)| *n == "__interval").unwrap();
    humantime::parse_duration(interval).unwrap()
}

/// Seconds since the epoch, as Prometheus counts time.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
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
    /// An annotation's `titleFormat` and `textFormat`; an annotation is
    /// asked over a range, the rest at an instant.
    annotation: Option<(String, String)>,
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
                annotation: None,
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
            annotation: None,
        });
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["expr"].as_str() {
            out.push(Query {
                source: format!("annotation {}", annotation["name"].as_str().unwrap()),
                expr: expr.to_owned(),
                promql: substitute(expr, &variables),
                legend: String::new(),
                annotation: Some((
                    annotation["titleFormat"].as_str().unwrap_or("").to_owned(),
                    annotation["textFormat"].as_str().unwrap_or("").to_owned(),
                )),
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
    assert!(
        text.contains(&format!("timeInterval: {SCRAPE}")),
        "the data source's timeInterval is the scrape interval, {SCRAPE}: {text}"
    );
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
            // Asked with `$__interval` as its step, as the test asks it: a
            // change is marked at the one step whose window, back to the
            // step before (`offset $__interval`), holds it.
            assert_eq!(annotation["step"], "$__interval", "{annotation}");
        }
    }

    // The variables: multi-value, with an All that matches everything.
    let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    for name in ["region", "upstream", "instance"] {
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
        // Many replicas: every panel sums over the replicas the instance
        // variable selects, and can show them apart.
        if query.source.starts_with("panel") {
            assert_eq!(
                expr.matches("faultline_").count(),
                expr.matches(r#"instance=~"$instance""#).count(),
                "{}: every faultline metric must filter by instance: {expr}",
                query.source
            );
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
    let steps = find(&["scenario step", "replica"]);
    assert_eq!(steps["type"], "timeseries");
    assert_eq!(
        steps["fieldConfig"]["defaults"]["custom"]["lineInterpolation"],
        "stepAfter"
    );
    // One line per replica and scenario, not summed: drift shows.
    let legend = steps["targets"][0]["legendFormat"].as_str().unwrap();
    assert!(legend.contains("{{instance}}") && legend.contains("{{scenario}}"));
    let expr = steps["targets"][0]["expr"].as_str().unwrap();
    assert!(!expr.contains("sum") && !expr.contains("max"), "{expr}");
    let apart = find(&["steps apart", "replicas"]);
    let expr = apart["targets"][0]["expr"].as_str().unwrap();
    assert!(
        expr.contains("max by (scenario) (faultline_scenario_step")
            && expr.contains("- min by (scenario) (faultline_scenario_step"),
        "{expr}"
    );
    let by_replica = find(&["request rate", "replica"]);
    assert!(by_replica["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .contains("sum by (instance)"));
    let replicas = find(&["replicas"]);
    assert_eq!(replicas["type"], "stat");
    let halted = find(&["halted"]);
    assert_eq!(halted["type"], "stat");
    // Halted when any replica is.
    assert_eq!(
        halted["targets"][0]["expr"],
        r#"max(faultline_halted{instance=~"$instance"})"#
    );
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
    let Some(promtool) = prometheus_tool("promtool") else {
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

/// The shipped config, pointed at `admins` (one scrape target each, as
/// the replicas of a fleet); its intervals stay as shipped.
fn test_config(admins: &[SocketAddr]) -> String {
    let shipped = std::fs::read_to_string(PROMETHEUS_CONFIG).unwrap();
    for interval in ["scrape_interval", "evaluation_interval"] {
        let line = format!("{interval}: {SCRAPE}");
        assert!(
            shipped.contains(&line),
            "{PROMETHEUS_CONFIG} has no {line}:\n{shipped}"
        );
    }
    let target = "faultline:9000";
    assert!(
        shipped.contains(target),
        "{PROMETHEUS_CONFIG} has no {target}:\n{shipped}"
    );
    let targets: Vec<String> = admins.iter().map(|a| a.to_string()).collect();
    // `['faultline:9000']` becomes `['A', 'B', …]`.
    shipped.replace(target, &targets.join("', '"))
}

/// Prometheus on a free loopback port, with `config`; killed on drop.
/// Returns it, its port and its log.
fn start_prometheus(
    prometheus: &str,
    config: &str,
    dir: &Path,
) -> (Server, u16, std::path::PathBuf) {
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let log = dir.join("prometheus.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(prometheus)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    (server, port, log)
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
    prometheus_get(port, &format!("/api/v1/query?query={}", encode(promql))).await
}

/// Prometheus' answer to a range query from `start` to `end` (seconds
/// since the epoch), as Grafana asks it for an annotation: `start` aligned
/// to a multiple of `step`, so that the points fall on the same grid.
async fn range_query(
    port: u16,
    promql: &str,
    start: f64,
    end: f64,
    step: Duration,
) -> Result<Value, String> {
    let step = step.as_secs_f64();
    let start = (start / step).floor() * step;
    prometheus_get(
        port,
        &format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            encode(promql)
        ),
    )
    .await
}

/// A GET of Prometheus' HTTP API, its JSON answer.
async fn prometheus_get(port: u16, path_and_query: &str) -> Result<Value, String> {
    let url = format!("http://127.0.0.1:{port}{path_and_query}");
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

/// An annotation as Grafana draws it: a mark at `time`, or a region up to
/// `end`.
#[derive(Debug)]
struct Event {
    time: f64,
    end: f64,
    title: String,
    text: String,
}

/// `{{label}}` in `format` replaced by the series' label; a label the
/// series lacks is an error (Grafana would leave a blank).
fn render(format: &str, labels: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = format;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let inner = &rest[at + 2..];
        let end = inner
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in {format:?}"))?;
        let name = inner[..end].trim();
        let value = labels[name]
            .as_str()
            .ok_or_else(|| format!("{format:?} names {name}, which {labels} lacks"))?;
        out.push_str(value);
        rest = &inner[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The annotations Grafana's Prometheus data source draws from the answer
/// to an annotation's range query (`processEvents`): per series, the points
/// whose value is above 0, those at most one step apart joined into one
/// region; title and text are the formats filled with the series' labels.
/// Sorted by time.
fn events(query: &Query, answer: &Value) -> Result<Vec<Event>, String> {
    let (title, text) = query.annotation.as_ref().unwrap();
    let step = interval().as_secs_f64();
    let data = &answer["data"];
    if data["resultType"] != "matrix" {
        return Err(format!("not a range answer: {answer}"));
    }
    let mut events: Vec<Event> = Vec::new();
    for series in data["result"].as_array().unwrap() {
        let mut open: Option<Event> = None;
        for point in series["values"].as_array().unwrap() {
            let time = point[0].as_f64().unwrap();
            let value: f64 = point[1].as_str().unwrap().parse().unwrap();
            if value <= 0.0 {
                continue;
            }
            if let Some(event) = open.as_mut().filter(|e| e.end + step >= time - 1e-6) {
                event.end = time;
                continue;
            }
            events.extend(open.take());
            open = Some(Event {
                time,
                end: time,
                title: render(title, &series["metric"])?,
                text: render(text, &series["metric"])?,
            });
        }
        events.extend(open);
    }
    events.sort_by(|a, b| a.time.total_cmp(&b.time));
    Ok(events)
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
    if query.annotation.is_some() {
        return match events(query, answer) {
            Err(e) => Some(e),
            Ok(events) if events.is_empty() => {
                Some(format!("no annotation: {}", answer["data"]["result"]))
            }
            Ok(_) => None,
        };
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

/// POSTs `body` (JSON) or nothing to the admin API; it must answer 200.
async fn admin_post(admin: SocketAddr, path: &str, body: Option<&str>) {
    let request = http::Request::post(format!("http://{admin}{path}"));
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(full(body.to_owned())),
        None => request.body(empty()),
    };
    let reply = send(&client(), request.unwrap()).await;
    assert_eq!(reply.status, 200, "POST {path}: {}", reply.text());
}

/// Waits until Prometheus has scraped `promql` (one series) at `value`;
/// returns when it saw it, in seconds since the epoch.
async fn scraped(port: u16, promql: &str, value: &str, log: &Path) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = instant_query(port, promql).await;
        let now = unix_now();
        let result = answer.as_ref().ok().map(|a| &a["data"]["result"]);
        if result.is_some_and(|r| r[0]["value"][1] == value) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape {promql} at {value}: {answer:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// Calls the demo's gRPC health service at `authority` through the proxy
/// again and again until aborted, for the gRPC row.
fn grpc_traffic(proxy: SocketAddr, authority: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let url = format!("http://{proxy}");
        loop {
            let call = support::grpc::health_check(&url, authority);
            let _ = tokio::time::timeout(Duration::from_secs(30), call).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Talks to the demo cache behind a TCP upstream's port, one connection
/// per exchange, again and again until aborted, for the TCP row.
fn tcp_traffic(port: SocketAddr) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let exchange = async {
                let mut stream = tokio::net::TcpStream::connect(port).await.ok()?;
                stream.write_all(b"SET k v\nGET k\n").await.ok()?;
                stream.shutdown().await.ok()?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), exchange).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(prometheus) = prometheus_tool("prometheus") else {
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
    .chain(
        ["lambda.us-east-1.demo", "lambda.us-west-2.demo"]
            .map(|authority| grpc_traffic(demo.proxy_addr, authority)),
    )
    .chain(demo.tcp_ports.iter().map(|(_, port)| tcp_traffic(*port)))
    .collect();

    let dir = tempfile::tempdir().unwrap();
    let since = unix_now();
    let (_server, port, log) = start_prometheus(prometheus, &test_config(&[admin]), dir.path());

    // The annotations mark changes Prometheus saw, so each change comes
    // after a scrape of the state before it and waits for a scrape of its
    // own: the kill switch thrown and lifted (a halt stops every scenario,
    // hence first), then the scenario started. At speed 1 the run stays on
    // its first step for ten minutes.
    let halted = "faultline_halted";
    let step = format!("faultline_scenario_step{{scenario=\"{SCENARIO}\"}}");
    scraped(port, halted, "0", &log).await;
    let mut changes = BTreeMap::new();
    for (what, path, body, metric, value) in [
        ("halt", "/api/halt".to_owned(), None, halted, "1"),
        ("resume", "/api/resume".to_owned(), None, halted, "0"),
        (
            "start",
            format!("/api/scenarios/{SCENARIO}/start"),
            Some(r#"{"speed":1}"#),
            step.as_str(),
            "0",
        ),
    ] {
        let sent = unix_now();
        admin_post(admin, &path, body).await;
        let seen = scraped(port, metric, value, &log).await;
        changes.insert(what, (sent, seen));
    }

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

    // Then every query, again until all of them answer or time runs out:
    // panels and variables at an instant, annotations over the time since
    // Prometheus started, with `$__interval` as the step, as Grafana asks.
    let deadline = Instant::now() + Duration::from_secs(90);
    let answers = loop {
        let mut answers = Vec::new();
        for query in &queries {
            answers.push(match query.annotation {
                Some(_) => range_query(port, &query.promql, since, unix_now(), interval()).await,
                None => instant_query(port, &query.promql).await,
            });
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
    // One replica here: it is the one replica, on step 1, 0 steps apart
    // from itself, and its line is named by its address.
    assert_eq!(
        answer_of(r#"panel "Replicas""#)["data"]["result"][0]["value"][1],
        "1"
    );
    let apart = answer_of(r#"panel "Steps apart across replicas""#);
    assert_eq!(
        apart["data"]["result"][0]["metric"]["scenario"], SCENARIO,
        "{apart}"
    );
    assert_eq!(apart["data"]["result"][0]["value"][1], "0", "{apart}");
    let per_replica = answer_of(r#"panel "Scenario step by replica""#);
    let line = per_replica["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"]["scenario"] == SCENARIO)
        .unwrap();
    assert_eq!(
        line["metric"]["instance"],
        admin.to_string(),
        "{per_replica}"
    );
    assert_eq!(line["value"][1], "1", "{per_replica}");
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

    // Each change is marked once, a single point (not a region of points a
    // step apart), between the request and one step after the scrape that
    // saw it; the halt and the resume apart, though one scrape apart.
    let step = interval().as_secs_f64();
    let events_of = |source: &str| -> Vec<Event> {
        let at = queries.iter().position(|q| q.source == source).unwrap();
        events(&queries[at], answers[at].as_ref().unwrap()).unwrap()
    };
    for (source, expected) in [
        ("annotation Halt and resume", ["halt", "resume"].as_slice()),
        ("annotation Scenario steps", ["start"].as_slice()),
    ] {
        let events = events_of(source);
        assert_eq!(events.len(), expected.len(), "{source}: {events:?}");
        for (event, what) in events.iter().zip(expected) {
            let (sent, seen) = changes[what];
            assert!(
                event.time == event.end && event.time >= sent - 1.0 && event.time <= seen + step,
                "{source}: {what} requested at {sent:.3}, scraped by {seen:.3}: {event:?}"
            );
        }
    }
    let marks = |source: &str| -> Vec<String> {
        events_of(source)
            .into_iter()
            .map(|e| format!("{} {}", e.title, e.text).to_lowercase())
            .collect()
    };
    let kill_switch = marks("annotation Halt and resume");
    assert!(
        kill_switch[0].contains("halted") && kill_switch[1].contains("resumed"),
        "{kill_switch:?}"
    );
    let steps = marks("annotation Scenario steps");
    assert!(
        steps[0].contains(SCENARIO) && steps[0].contains("step 1"),
        "{steps:?}"
    );

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

/// A fleet of two replicas scraped by one Prometheus, the way the
/// dashboard reads it: the Replicas stat counts both, and a scenario
/// started on one replica only shows as one line apart in "Scenario step
/// by replica" and as a step apart in "Steps apart across replicas",
/// until the other replica starts it too. The panels' own queries, with
/// the instance variable at All.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_panels_show_a_replica_that_drifted_from_a_real_prometheus() {
    let Some(prometheus) = prometheus_tool("prometheus") else {
        return;
    };
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    let promql = |source: &str| -> String {
        queries
            .iter()
            .find(|q| q.source == source)
            .unwrap_or_else(|| panic!("no {source}"))
            .promql
            .clone()
    };

    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{}\n[[scenario]]\nname = \"drill\"\nduration = \"2h\"\n\
         [[scenario.step]]\nat = \"0s\"\nenable = [\"drill-latency\"]\n\
         [[scenario.step]]\nat = \"1h\"\ndisable = [\"drill-latency\"]\n",
        rule(
            "drill-latency",
            "enabled = false",
            "upstreams = [\"orders-use1\"]",
            "kind = \"latency\"\ndelay = \"1ms\"",
        )
    );
    let config = edge_config(&[&upstream], "");
    let replicas = [
        TestProxy::start(&config, &rules).await,
        TestProxy::start(&config, &rules).await,
    ];
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.running().admin_addr()).collect();

    let dir = tempfile::tempdir().unwrap();
    let (_server, port, log) = start_prometheus(prometheus, &test_config(&admins), dir.path());

    let count = promql(r#"panel "Replicas""#);
    let apart = promql(r#"panel "Steps apart across replicas""#);
    let per_replica = promql(r#"panel "Scenario step by replica""#);
    scraped(port, &count, "2", &log).await;

    // The drill on the first replica only: one step apart.
    start(&replicas[0]).await;
    scraped(port, &apart, "1", &log).await;
    let lines = |answer: Value| -> BTreeMap<String, String> {
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["metric"]["scenario"] == "drill")
            .map(|r| {
                (
                    r["metric"]["instance"].as_str().unwrap().to_owned(),
                    r["value"][1].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let seen = lines(instant_query(port, &per_replica).await.unwrap());
    assert_eq!(
        seen,
        BTreeMap::from([
            (admins[0].to_string(), "1".to_owned()),
            (admins[1].to_string(), "0".to_owned()),
        ]),
        "step 1 on the first replica, not running on the second"
    );

    // Then on the second: together again.
    start(&replicas[1]).await;
    scraped(port, &apart, "0", &log).await;
    let seen = lines(instant_query(port, &per_replica).await.unwrap());
    assert!(
        seen.values().all(|step| step == "1") && seen.len() == 2,
        "{seen:?}"
    );

    for replica in replicas {
        replica.shutdown().await;
    }
}

/// Starts the scenario `drill` on one replica.
async fn start(replica: &TestProxy) {
    let reply = replica
        .admin("POST", "/api/scenarios/drill/start", None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}
