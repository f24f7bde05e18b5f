//! Scenario timelines through the admin API and real traffic: steps in
//! order and in the right region, the undo, guards, reports, conflicts.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Two rules off by default, in us-east-1 only, and a scenario that plays
/// them over four minutes: 429s, then 503s, then 502s, then calm.
const DRILL: &str = r#"
[[rule]]
name = "use1-throttle"
enabled = false
[rule.match]
labels = { region = "us-east-1" }
[rule.fault]
kind = "error"
status = 429

[[rule]]
name = "use1-down"
enabled = false
probability = 0.5
[rule.match]
labels = { region = "us-east-1" }
[rule.fault]
kind = "error"
status = 503

[[scenario]]
name = "drill"
duration = "4m"

[[scenario.step]]
at = "0s"
description = "throttled"
enable = ["use1-throttle"]

[[scenario.step]]
at = "1m"
description = "down"
disable = ["use1-throttle"]
enable = ["use1-down"]
set = { "use1-down" = { probability = 1.0 } }

[[scenario.step]]
at = "2m"
description = "bad gateway"
set = { "use1-down" = { fault = { status = 502 } } }

[[scenario.step]]
at = "3m"
description = "recovered"
disable = ["use1-down"]
"#;

struct Stack {
    east: TestUpstream,
    west: TestUpstream,
    proxy: TestProxy,
}

async fn stack(rules: &str) -> Stack {
    let east = TestUpstream::start("orders-use1").await;
    let west = TestUpstream::start("orders-usw2").await;
    let config = edge_config(&[&east, &west], "watch_rules = false");
    let proxy = TestProxy::start(&config, rules).await;
    Stack { east, west, proxy }
}

async fn json(proxy: &TestProxy, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let reply = proxy.admin(method, path, body).await;
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status.as_u16(), value)
}

/// The rules as the API shows them, without the counts that move.
async fn rule_shapes(proxy: &TestProxy) -> Value {
    let (_, mut rules) = json(proxy, "GET", "/api/rules", None).await;
    for rule in rules.as_array_mut().unwrap() {
        let rule = rule.as_object_mut().unwrap();
        rule.remove("injected");
        rule.remove("times_left");
    }
    rules
}

async fn wait_for(proxy: &TestProxy, name: &str, what: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, view) = json(proxy, "GET", &format!("/api/scenarios/{name}"), None).await;
        if what(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "timed out; last state {view:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn current_step(view: &Value) -> Option<u64> {
    view["run"]["current_step"]["index"].as_u64()
}

/// Statuses seen from `n` requests to one upstream.
async fn statuses(proxy: &TestProxy, upstream: &str, n: usize) -> Vec<u16> {
    let url = format!("{}/{upstream}/x", proxy.url("edge"));
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(get(&url).await.status.as_u16());
    }
    seen
}

#[tokio::test]
async fn a_scenario_plays_its_steps_in_one_region_then_undoes_them() {
    let Stack { proxy, east, west } = stack(DRILL).await;
    let before = rule_shapes(&proxy).await;

    let (status, view) = json(
        &proxy,
        "POST",
        "/api/scenarios/drill/start",
        Some(r#"{"speed": 60}"#),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "running");
    // The step at 0s is in force when the start call returns.
    assert_eq!(current_step(&view), Some(0));
    let metrics = get(&format!("{}/metrics", proxy.admin_url())).await.text();
    assert!(metrics.contains("faultline_scenario_running{scenario=\"drill\"} 1"));

    // What each step does to us-east-1; us-west-2 stays healthy throughout.
    let expected: [u16; 4] = [429, 503, 502, 200];
    let mut observed: BTreeMap<(usize, &str), (u64, u64)> = BTreeMap::new();
    for (step, want) in expected.iter().enumerate() {
        wait_for(&proxy, "drill", |v| current_step(v) == Some(step as u64)).await;
        let use1 = statuses(&proxy, "orders-use1", 10).await;
        let usw2 = statuses(&proxy, "orders-usw2", 10).await;
        let view = wait_for(&proxy, "drill", |_| true).await;
        assert_eq!(
            current_step(&view),
            Some(step as u64),
            "the step moved on while it was observed; this machine is too slow for 60x"
        );
        assert!(use1.iter().all(|s| s == want), "step {step}: {use1:?}");
        assert!(usw2.iter().all(|s| *s == 200), "step {step}: {usw2:?}");
        let errors = |seen: &[u16]| seen.iter().filter(|s| **s != 200).count() as u64;
        observed.insert((step, "orders-use1"), (10, errors(&use1)));
        observed.insert((step, "orders-usw2"), (10, errors(&usw2)));
    }

    let done = wait_for(&proxy, "drill", |v| v["state"] == "completed").await;
    assert!(done["run"]["next_step"].is_null());
    assert_eq!(
        rule_shapes(&proxy).await,
        before,
        "the undo left rules changed"
    );
    let metrics = get(&format!("{}/metrics", proxy.admin_url())).await.text();
    assert!(metrics.contains("faultline_scenario_running{scenario=\"drill\"} 0"));
    assert!(metrics.contains("faultline_scenario_step{scenario=\"drill\"} -1"));

    // The report counts what the client saw, step by step.
    let (status, report) = json(&proxy, "GET", "/api/scenarios/drill/report", None).await;
    assert_eq!(status, 200);
    assert_eq!(report["state"], "completed");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    for ((step, upstream), (requests, errors)) in &observed {
        let stats = &steps[*step]["upstreams"][*upstream];
        assert_eq!(
            stats["requests"], *requests,
            "step {step} {upstream}: {stats}"
        );
        assert_eq!(stats["errors"], *errors, "step {step} {upstream}: {stats}");
    }
    assert_eq!(steps[0]["faults"]["use1-throttle"], 10);
    assert_eq!(steps[1]["faults"]["use1-down"], 10);
    assert_eq!(steps[2]["faults"]["use1-down"], 10);
    assert!(steps[3]["faults"].as_object().unwrap().is_empty());
    assert_eq!(steps[1]["regions"]["us-east-1"]["error_ratio"], 1.0);
    assert_eq!(steps[1]["regions"]["us-west-2"]["error_ratio"], 0.0);
    assert!(steps[0]["ended_at"].is_string());
    assert!(steps[3]["regions"]["us-west-2"]["p99_ms"].as_f64().unwrap() > 0.0);
    // Nothing injected reached the upstream; everything else did.
    assert_eq!(east.requests(), 10);
    assert_eq!(west.requests(), 40);
}

#[tokio::test]
async fn stopping_or_halting_undoes_at_once() {
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(DRILL).await;
    let before = rule_shapes(&proxy).await;
    let url = format!("{}/orders-use1/x", proxy.url("edge"));

    json(&proxy, "POST", "/api/scenarios/drill/start", None).await;
    assert_eq!(get(&url).await.status, 429);
    // A rule the run drives cannot be changed by hand meanwhile.
    let (status, body) = json(&proxy, "POST", "/api/rules/use1-throttle/disable", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("rule_in_scenario"))
    );
    let (status, view) = json(&proxy, "POST", "/api/scenarios/drill/stop", None).await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "stopped");
    assert!(view["run"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("stopped by"));
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(rule_shapes(&proxy).await, before);
    let (status, body) = json(&proxy, "POST", "/api/scenarios/drill/stop", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("scenario_not_running"))
    );

    json(&proxy, "POST", "/api/scenarios/drill/start", None).await;
    assert_eq!(get(&url).await.status, 429);
    let (_, status_view) = json(&proxy, "GET", "/api/status", None).await;
    assert_eq!(
        status_view["scenarios_running"],
        serde_json::json!(["drill"])
    );
    json(&proxy, "POST", "/api/halt", None).await;
    let view = wait_for(&proxy, "drill", |_| true).await;
    assert_eq!(view["state"], "stopped");
    assert!(view["run"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("halted by"));
    assert_eq!(get(&url).await.status, 200);
    let (status, body) = json(&proxy, "POST", "/api/scenarios/drill/start", None).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("halted")));
}

#[tokio::test]
async fn two_scenarios_that_drive_one_rule_cannot_run_together() {
    let rules = format!(
        "{DRILL}\n[[scenario]]\nname = \"other\"\nduration = \"1h\"\n[[scenario.step]]\nat = \"30m\"\nenable = [\"use1-down\"]\n"
    );
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(&rules).await;
    let (status, _) = json(&proxy, "POST", "/api/scenarios/other/start", None).await;
    assert_eq!(status, 200);
    let (status, body) = json(&proxy, "POST", "/api/scenarios/drill/start", None).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "scenario_conflict");
    assert!(
        body["message"].as_str().unwrap().contains("use1-down"),
        "{body}"
    );
    let (status, body) = json(&proxy, "POST", "/api/scenarios/other/start", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("scenario_running"))
    );

    // Bad input gets a precise answer.
    let (status, body) = json(&proxy, "POST", "/api/scenarios/nope/start", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("scenario_not_found"))
    );
    for speed in ["0", "1e-300", "-5", "10001"] {
        let body = format!(r#"{{"speed": {speed}}}"#);
        let (status, body) = json(&proxy, "POST", "/api/scenarios/drill/start", Some(&body)).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("speed")),
            "{speed}"
        );
    }
    let (status, body) = json(
        &proxy,
        "POST",
        "/api/scenarios/drill/start",
        Some(r#"{"sped": 2}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = json(&proxy, "GET", "/api/scenarios/drill/report", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("no_report")));
}

/// A scenario that breaks us-east-1 while its guard watches us-west-2.
fn guarded(count_injected: bool, also_west: bool) -> String {
    let west = if also_west { ", \"usw2-down\"" } else { "" };
    format!(
        r#"
[[rule]]
name = "use1-down"
enabled = false
[rule.match]
labels = {{ region = "us-east-1" }}
[rule.fault]
kind = "error"
status = 503

[[rule]]
name = "usw2-down"
enabled = false
[rule.match]
labels = {{ region = "us-west-2" }}
[rule.fault]
kind = "error"
status = 503

[[scenario]]
name = "guarded"
duration = "10s"
[[scenario.step]]
at = "0s"
enable = ["use1-down"{west}]
[scenario.guard]
labels = {{ region = "us-west-2" }}
max_error_ratio = 0.2
window = "2s"
min_requests = 5
count_injected = {count_injected}
"#
    )
}

#[tokio::test]
async fn a_guard_aborts_the_run_when_the_watched_region_fails() {
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(&guarded(false, false)).await;
    let before = rule_shapes(&proxy).await;
    json(&proxy, "POST", "/api/scenarios/guarded/start", None).await;
    // The healthy region's upstream starts failing on its own.
    let failing = format!("{}/orders-usw2/status/500", proxy.url("edge"));
    for _ in 0..10 {
        assert_eq!(get(&failing).await.status, 500);
    }
    let view = wait_for(&proxy, "guarded", |v| v["state"] != "running").await;
    assert_eq!(view["state"], "aborted");
    let reason = view["run"]["reason"].as_str().unwrap();
    // The guard judges as soon as `min_requests` (5) are in its window,
    // which may be before the client has sent all ten.
    let tripped_at = (5..=10).find(|n| {
        reason.starts_with(&format!(
            "guard tripped: error ratio 1.000 ({n} of {n} requests) over the last 2s on the watched upstreams, above the 0.2 allowed"
        ))
    });
    assert!(tripped_at.is_some(), "{reason}");
    assert_eq!(rule_shapes(&proxy).await, before);
    let (_, report) = json(&proxy, "GET", "/api/scenarios/guarded/report", None).await;
    assert_eq!(report["state"], "aborted");
    assert_eq!(report["reason"], reason);
}

#[tokio::test]
async fn a_guard_leaves_a_healthy_run_alone() {
    // us-east-1 fails completely and us-west-2 takes injected faults too,
    // which the guard is told not to count: the run goes to completion.
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(&guarded(false, true)).await;
    json(
        &proxy,
        "POST",
        "/api/scenarios/guarded/start",
        Some(r#"{"speed": 5}"#),
    )
    .await;
    let east = format!("{}/orders-use1/x", proxy.url("edge"));
    let west = format!("{}/orders-usw2/x", proxy.url("edge"));
    for _ in 0..10 {
        assert_eq!(get(&east).await.status, 503);
        assert_eq!(get(&west).await.status, 503);
    }
    let view = wait_for(&proxy, "guarded", |v| v["state"] != "running").await;
    assert_eq!(view["state"], "completed", "{view:#}");

    // The same traffic with injected faults counted trips the guard.
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(&guarded(true, true)).await;
    json(
        &proxy,
        "POST",
        "/api/scenarios/guarded/start",
        Some(r#"{"speed": 5}"#),
    )
    .await;
    let west = format!("{}/orders-usw2/x", proxy.url("edge"));
    for _ in 0..10 {
        get(&west).await;
    }
    let view = wait_for(&proxy, "guarded", |v| v["state"] != "running").await;
    assert_eq!(view["state"], "aborted", "{view:#}");
}

#[tokio::test]
async fn a_reload_that_changes_a_driven_rule_aborts_the_run() {
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(DRILL).await;
    json(&proxy, "POST", "/api/scenarios/drill/start", None).await;
    // An edit elsewhere in the file leaves the run alone…
    let file = proxy.rules_dir().join("test.toml");
    let text = DRILL.replace("description = \"recovered\"", "description = \"calm\"");
    std::fs::write(&file, &text).unwrap();
    let (status, _) = json(&proxy, "POST", "/api/reload", None).await;
    assert_eq!(status, 200);
    let (_, view) = json(&proxy, "GET", "/api/scenarios/drill", None).await;
    assert_eq!(view["state"], "running");
    // …an edit of a rule it drives ends it, undone.
    std::fs::write(&file, text.replace("status = 429", "status = 420")).unwrap();
    let (status, _) = json(&proxy, "POST", "/api/reload", None).await;
    assert_eq!(status, 200);
    let (_, view) = json(&proxy, "GET", "/api/scenarios/drill", None).await;
    assert_eq!(view["state"], "aborted");
    assert!(
        view["run"]["reason"]
            .as_str()
            .unwrap()
            .contains("use1-throttle"),
        "{view}"
    );
    let (_, rule) = json(&proxy, "GET", "/api/rules/use1-throttle", None).await;
    assert_eq!(rule["enabled"], false);
    assert!(rule.get("scenario").is_none());
}

#[tokio::test]
async fn the_undo_puts_a_rules_times_budget_back() {
    let rules = r#"
[[rule]]
name = "twice"
times = 2
[rule.match]
labels = { region = "us-east-1" }
[rule.fault]
kind = "error"
status = 503

[[scenario]]
name = "again"
duration = "2m"
[[scenario.step]]
at = "0s"
disable = ["twice"]
[[scenario.step]]
at = "1m"
enable = ["twice"]
"#;
    let Stack {
        proxy,
        east: _east,
        west: _west,
    } = stack(rules).await;
    // The budget is used up before the run…
    assert_eq!(statuses(&proxy, "orders-use1", 3).await, [503, 503, 200]);
    json(
        &proxy,
        "POST",
        "/api/scenarios/again/start",
        Some(r#"{"speed": 600}"#),
    )
    .await;
    wait_for(&proxy, "again", |v| v["state"] == "completed").await;
    // …and still used up after it, although the run turned the rule on afresh.
    assert_eq!(statuses(&proxy, "orders-use1", 2).await, [200, 200]);
}
