//! The admin API of SPEC §5 through a real socket: the rule routes, their
//! errors, the token, the kill switch, TTLs and a toggle storm under load.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use serde_json::Value;
use support::*;

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

/// Asserts a JSON error: status and `error` code.
fn assert_error(reply: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = json(reply);
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

async fn proxy(upstream: &TestUpstream, rules: &str) -> TestProxy {
    // No watcher: these tests count reloads and read their summaries.
    TestProxy::start(&edge_config(&[upstream], "watch_rules = false"), rules).await
}

fn unavailable_503() -> String {
    rule(
        "use1-503",
        "enabled = false",
        "",
        "kind = \"error\"\nstatus = 503",
    )
}

#[tokio::test]
async fn rules_are_listed_added_changed_toggled_and_deleted() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy(&upstream, &unavailable_503()).await;
    let edge = proxy.url("edge");

    let listed = proxy.admin("GET", "/api/rules", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let listed = json(&listed);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let file_rule = &listed[0];
    assert_eq!(file_rule["name"], "use1-503");
    assert_eq!(file_rule["source"], "file");
    assert_eq!(file_rule["enabled"], false);
    assert_eq!(file_rule["probability"], 1.0);
    assert_eq!(file_rule["fault"]["status"], 503);
    assert_eq!(file_rule["expires_at"], Value::Null);
    assert_eq!(file_rule["injected"], 0);

    let added = proxy
        .admin(
            "POST",
            "/api/rules",
            Some(r#"{"name":"teapot","match":{"path":"/tea"},"fault":{"kind":"error","status":418}}"#),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text());
    assert_eq!(added.header("location"), Some("/api/rules/teapot"));
    assert_eq!(json(&added)["source"], "api");

    let tea = get(&format!("{edge}/tea")).await;
    assert_eq!(tea.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(tea.header("x-faultline-rule"), Some("teapot"));
    let shown = json(&proxy.admin("GET", "/api/rules/teapot", None).await);
    assert_eq!(shown["injected"], 1);

    let patched = proxy
        .admin("PATCH", "/api/rules/teapot", Some(r#"{"probability":0}"#))
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(json(&patched)["probability"], 0.0);
    assert_eq!(get(&format!("{edge}/tea")).await.status, StatusCode::OK);

    let enabled = proxy
        .admin("POST", "/api/rules/use1-503/enable", None)
        .await;
    assert_eq!(enabled.status, StatusCode::OK);
    assert_eq!(json(&enabled)["enabled"], true);
    assert_eq!(get(&edge).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let metrics = get(&format!("{}/metrics", proxy.admin_url())).await.text();
    assert!(metrics.contains("faultline_rule_enabled{rule=\"use1-503\"} 1"));

    let disabled = proxy
        .admin("POST", "/api/rules/use1-503/disable", None)
        .await;
    assert_eq!(json(&disabled)["enabled"], false);
    assert_eq!(get(&edge).await.status, StatusCode::OK);

    let deleted = proxy.admin("DELETE", "/api/rules/teapot", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    assert_error(
        &proxy.admin("GET", "/api/rules/teapot", None).await,
        StatusCode::NOT_FOUND,
        "rule_not_found",
    );
    let metrics = get(&format!("{}/metrics", proxy.admin_url())).await.text();
    assert!(
        !metrics.contains("faultline_rule_enabled{rule=\"teapot\"}"),
        "a deleted rule keeps its gauge"
    );
    let status = json(&proxy.admin("GET", "/api/status", None).await);
    assert_eq!(status["rules"]["total"], 1);
    assert_eq!(status["halted"], false);
    assert_eq!(status["seed"], 42);
}

#[tokio::test]
async fn bad_requests_get_a_precise_error_and_change_nothing() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy(&upstream, &unavailable_503()).await;
    let post = |body: &'static str| proxy.admin("POST", "/api/rules", Some(body));

    assert_error(
        &post("{not json").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_error(
        &post("[1, 2]").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    let invalid = assert_error(
        &post(r#"{"name":"x","fault":{"kind":"error","status":1000}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(invalid["field"], "fault.status");
    let unknown = assert_error(
        &post(r#"{"name":"x","probabilty":0.5,"fault":{"kind":"abort"}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert!(
        unknown["message"].as_str().unwrap().contains("probabilty"),
        "{unknown}"
    );
    let bad_upstream = assert_error(
        &post(r#"{"name":"x","match":{"upstreams":["nope"]},"fault":{"kind":"abort"}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(bad_upstream["field"], "match.upstreams[0]");
    let long_name = format!(
        r#"{{"name":"{}","fault":{{"kind":"abort","mode":"reset"}}}}"#,
        "a".repeat(129)
    );
    let too_long = assert_error(
        &proxy.admin("POST", "/api/rules", Some(&long_name)).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(too_long["field"], "name");
    assert_eq!(
        too_long["message"],
        "name: rule name is 129 characters long; at most 128 are allowed"
    );
    let unknown_kind = assert_error(
        &post(r#"{"name":"x","fault":{"kind":"nope"}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(unknown_kind["field"], "fault.kind");
    assert_error(
        &post(r#"{"name":"use1-503","fault":{"kind":"abort"}}"#).await,
        StatusCode::CONFLICT,
        "rule_exists",
    );
    let file = assert_error(
        &post(r#"{"name":"x","fault":{"kind":"error","status":500,"body_file":"/etc/passwd"}}"#)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(file["field"], "fault.body_file");
    let bad_ttl = assert_error(
        &post(r#"{"name":"x","ttl":"soon","fault":{"kind":"abort"}}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(bad_ttl["field"], "ttl");

    assert_error(
        &proxy.admin("DELETE", "/api/rules/use1-503", None).await,
        StatusCode::CONFLICT,
        "file_rule",
    );
    let patch = |body: &'static str| proxy.admin("PATCH", "/api/rules/use1-503", Some(body));
    let out_of_range = assert_error(
        &patch(r#"{"probability":2}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_rule",
    );
    assert_eq!(out_of_range["field"], "probability");
    let colour = assert_error(
        &patch(r#"{"colour":"red"}"#).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_eq!(colour["field"], "colour");
    assert_error(
        &patch("{}").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &patch(r#"{"ttl":"5m"}"#).await,
        StatusCode::CONFLICT,
        "rule_disabled",
    );
    assert_error(
        &proxy.admin("POST", "/api/rules/nope/enable", None).await,
        StatusCode::NOT_FOUND,
        "rule_not_found",
    );
    let wrong_method = assert_error(
        &proxy.admin("PUT", "/api/rules", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert!(wrong_method.is_object());
    assert_eq!(
        proxy.admin("PUT", "/api/rules", None).await.header("allow"),
        Some("GET, POST")
    );
    assert_error(
        &proxy.admin("GET", "/api/nowhere", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let huge = format!(r#"{{"name":"x","description":"{}"}}"#, "x".repeat(2 << 20));
    assert_error(
        &proxy.admin("POST", "/api/rules", Some(&huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );

    // Nothing above changed anything.
    let rules = json(&proxy.admin("GET", "/api/rules", None).await);
    assert_eq!(rules.as_array().unwrap().len(), 1);
    assert_eq!(rules[0]["enabled"], false);
    assert_eq!(rules[0]["probability"], 1.0);
    assert_eq!(get(&proxy.url("edge")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_token_guards_the_api_but_not_health_or_metrics() {
    let upstream = TestUpstream::start("orders-use1").await;
    let config =
        edge_config(&[&upstream], "").replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    let proxy = TestProxy::start(&config, &unavailable_503()).await;

    let without = proxy.admin("GET", "/api/status", None).await;
    assert_error(&without, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(
        without.header("www-authenticate"),
        Some("Bearer realm=\"faultline\"")
    );
    assert_error(
        &proxy
            .admin_as(Some("s3cres"), "POST", "/api/halt", None)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(
        json(&proxy.admin("GET", "/api/status", None).await)["error"],
        "unauthorized"
    );
    let lowercase = Request::get(format!("{}/api/status", proxy.admin_url()))
        .header("authorization", "bearer  s3cret")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), lowercase).await.status, StatusCode::OK);
    let with = proxy
        .admin_as(Some("s3cret"), "GET", "/api/status", None)
        .await;
    assert_eq!(with.status, StatusCode::OK);
    assert_eq!(json(&with)["halted"], false, "the wrong token halted it");

    assert_eq!(
        get(&format!("{}/healthz", proxy.admin_url())).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&format!("{}/metrics", proxy.admin_url())).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn halt_releases_a_request_already_waiting_in_a_30s_delay() {
    let upstream = TestUpstream::start("orders-use1").await;
    let slow = rule("slow", "", "", "kind = \"latency\"\ndelay = \"30s\"");
    let proxy = proxy(&upstream, &slow).await;
    let url = proxy.url("edge");
    let waiting = tokio::spawn(async move {
        let reply = get(&url).await;
        (reply, Instant::now())
    });
    // Inside the delay: the rule counted it, the upstream has not seen it.
    proxy.until_injected("slow", 1).await;
    assert_eq!(upstream.requests(), 0, "the delay did not hold the request");

    let halted = proxy.admin("POST", "/api/halt", None).await;
    let halted_at = Instant::now();
    assert_eq!(halted.status, StatusCode::OK);
    assert_eq!(json(&halted)["halted"], true);
    let (reply, answered_at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the halt did not release the delayed request")
        .unwrap();
    assert!(
        answered_at.duration_since(halted_at) < Duration::from_secs(1),
        "released after {:?}",
        answered_at.duration_since(halted_at)
    );
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-faultline-rule"), None);
    assert_eq!(
        upstream.requests(),
        1,
        "the released request was not forwarded"
    );

    // Halted: everything off, and nothing may be turned on.
    let rules = json(&proxy.admin("GET", "/api/rules", None).await);
    assert_eq!(rules[0]["enabled"], false);
    assert_error(
        &proxy.admin("POST", "/api/rules/slow/enable", None).await,
        StatusCode::CONFLICT,
        "halted",
    );
    assert_error(
        &proxy
            .admin(
                "POST",
                "/api/rules",
                Some(r#"{"name":"more","fault":{"kind":"abort"}}"#),
            )
            .await,
        StatusCode::CONFLICT,
        "halted",
    );
    let metrics = get(&format!("{}/metrics", proxy.admin_url())).await.text();
    assert!(metrics.contains("\nfaultline_halted 1\n"), "{metrics}");

    let resumed = proxy.admin("POST", "/api/resume", None).await;
    assert_eq!(json(&resumed)["halted"], false);
    let rules = json(&proxy.admin("GET", "/api/rules", None).await);
    assert_eq!(rules[0]["enabled"], false, "resume turned a rule back on");
    let enabled = proxy.admin("POST", "/api/rules/slow/enable", None).await;
    assert_eq!(enabled.status, StatusCode::OK);
}

#[tokio::test]
async fn halt_forwards_a_blackholed_upload_whole() {
    let upstream = TestUpstream::start("orders-use1").await;
    let hole = rule(
        "hole",
        "",
        "",
        "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
    );
    let proxy = proxy(&upstream, &hole).await;
    let url = proxy.url("edge");
    let held = tokio::spawn(async move {
        let request = Request::post(url).body(full("the upload")).unwrap();
        send(&client(), request).await
    });
    proxy.until_injected("hole", 1).await;
    assert_eq!(
        upstream.requests(),
        0,
        "the blackhole did not hold the request"
    );
    proxy.admin("POST", "/api/halt", None).await;
    let reply = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("the halt did not release the blackholed request")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "the upload");
}

#[tokio::test]
async fn disabling_a_blackhole_rule_lets_go_of_what_it_holds() {
    let upstream = TestUpstream::start("orders-use1").await;
    let holes = format!(
        "{}{}",
        rule(
            "hole",
            "",
            "path = \"/hole/**\"",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
        ),
        rule(
            "other-hole",
            "",
            "path = \"/other/**\"",
            "kind = \"unavailable\"\nmode = \"blackhole\"\nmax_hold = \"1h\"",
        )
    );
    let proxy = proxy(&upstream, &holes).await;
    let post = |path: &str| {
        let url = format!("{}{path}", proxy.url("edge"));
        tokio::spawn(async move {
            let request = Request::post(url).body(full("the upload")).unwrap();
            send(&client(), request).await
        })
    };
    let held = post("/hole/a");
    let other = post("/other/b");
    proxy.until_injected("hole", 1).await;
    proxy.until_injected("other-hole", 1).await;
    assert_eq!(upstream.requests(), 0, "the blackholes did not hold");

    let disabled = proxy.admin("POST", "/api/rules/hole/disable", None).await;
    assert_eq!(disabled.status, StatusCode::OK);
    let reply = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("disabling the rule did not let its request go")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "the upload");
    assert_eq!(
        reply.header("x-faultline-rule"),
        None,
        "a request let go comes back untouched, as after a halt"
    );
    // The other rule is still on: what it holds stays held.
    assert!(!other.is_finished(), "another rule's request was let go");
    assert_eq!(upstream.requests(), 1);
    other.abort();
}

#[tokio::test]
async fn a_rule_enabled_with_a_ttl_turns_itself_off() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy(&upstream, &unavailable_503()).await;
    let edge = proxy.url("edge");
    let enabled = proxy
        .admin(
            "POST",
            "/api/rules/use1-503/enable",
            Some(r#"{"ttl":"1s"}"#),
        )
        .await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.text());
    let expires_at = json(&enabled)["expires_at"].as_str().unwrap().to_owned();
    assert!(expires_at.ends_with('Z'), "{expires_at}");
    assert_eq!(get(&edge).await.status, StatusCode::SERVICE_UNAVAILABLE);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rule = json(&proxy.admin("GET", "/api/rules/use1-503", None).await);
        if rule["enabled"] == false {
            assert_eq!(rule["expires_at"], Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "the TTL never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&edge).await.status, StatusCode::OK);

    // A PATCH can set and clear a TTL on an enabled rule.
    let patched = proxy
        .admin(
            "PATCH",
            "/api/rules/use1-503",
            Some(r#"{"enabled":true,"ttl":"1h"}"#),
        )
        .await;
    let expires_at = json(&patched)["expires_at"].clone();
    assert!(expires_at.is_string());
    // Enabling again without a TTL leaves the one counting down.
    let again = proxy
        .admin("POST", "/api/rules/use1-503/enable", None)
        .await;
    assert_eq!(json(&again)["expires_at"], expires_at);
    let cleared = proxy
        .admin("PATCH", "/api/rules/use1-503", Some(r#"{"ttl":null}"#))
        .await;
    assert_eq!(json(&cleared)["expires_at"], Value::Null);
    assert_eq!(json(&cleared)["enabled"], true);
}

#[tokio::test]
async fn a_broken_reload_is_rejected_whole_and_the_old_rules_keep_serving() {
    let upstream = TestUpstream::start("orders-use1").await;
    let first = rule(
        "use1-503",
        "",
        "path = \"/a\"",
        "kind = \"error\"\nstatus = 503",
    );
    let proxy = proxy(&upstream, &first).await;
    let edge = proxy.url("edge");
    let dir = proxy.rules_dir();

    // A good edit in one file, a broken one in another: neither applies.
    std::fs::write(
        dir.join("test.toml"),
        rule(
            "use1-503",
            "",
            "path = \"/b\"",
            "kind = \"error\"\nstatus = 503",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        "[[rule]]\nname = \"oops\"\n[rule.fault]\nkind = \"error\"\nstatus = 1000\n",
    )
    .unwrap();
    let rejected = proxy.admin("POST", "/api/reload", None).await;
    let body = assert_error(
        &rejected,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reload_rejected",
    );
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert!(errors[0]["file"].as_str().unwrap().ends_with("broken.toml"));
    assert_eq!(errors[0]["line"], 5);
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("rule \"oops\""));
    assert_eq!(
        get(&format!("{edge}/a")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&format!("{edge}/b")).await.status, StatusCode::OK);
    let status = json(&proxy.admin("GET", "/api/status", None).await);
    assert_eq!(status["last_reload"]["outcome"], "rejected");

    std::fs::remove_file(dir.join("broken.toml")).unwrap();
    let applied = proxy.admin("POST", "/api/reload", None).await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.text());
    let summary = json(&applied);
    assert_eq!(summary["changed"], serde_json::json!(["use1-503"]));
    assert_eq!(get(&format!("{edge}/a")).await.status, StatusCode::OK);
    assert_eq!(
        get(&format!("{edge}/b")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = get(&format!("{}/metrics", proxy.admin_url())).await.text();
    assert!(metrics.contains("faultline_rules_reloads_total{outcome=\"rejected\"} 1"));
    assert!(metrics.contains("faultline_rules_reloads_total{outcome=\"applied\"} 1"));
}

#[tokio::test]
async fn runtime_toggles_survive_a_reload() {
    let upstream = TestUpstream::start("orders-use1").await;
    let on = rule("use1-503", "", "", "kind = \"error\"\nstatus = 503");
    let proxy = proxy(&upstream, &on).await;
    let dir = proxy.rules_dir();
    proxy
        .admin("POST", "/api/rules/use1-503/disable", None)
        .await;
    let added = proxy
        .admin(
            "POST",
            "/api/rules",
            Some(r#"{"name":"from-api","enabled":false,"fault":{"kind":"abort","mode":"reset"}}"#),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text());

    // The file changes the rule's description and adds another rule.
    let edited = format!(
        "{}{}",
        rule(
            "use1-503",
            "description = \"edited\"",
            "",
            "kind = \"error\"\nstatus = 503"
        ),
        rule(
            "extra",
            "enabled = false",
            "",
            "kind = \"abort\"\nmode = \"reset\""
        )
    );
    std::fs::write(dir.join("test.toml"), edited).unwrap();
    let reloaded = proxy.admin("POST", "/api/reload", None).await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    let summary = json(&reloaded);
    assert_eq!(summary["added"], serde_json::json!(["extra"]));
    assert_eq!(summary["changed"], serde_json::json!(["use1-503"]));
    let rules = json(&proxy.admin("GET", "/api/rules", None).await);
    let names: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["use1-503", "extra", "from-api"]);
    assert_eq!(rules[0]["enabled"], false, "the runtime toggle was lost");
    assert_eq!(rules[0]["description"], "edited");
    assert_eq!(get(&proxy.url("edge")).await.status, StatusCode::OK);

    // A file rule may not take a runtime rule's name.
    std::fs::write(
        dir.join("clash.toml"),
        rule("from-api", "", "", "kind = \"abort\"\nmode = \"reset\""),
    )
    .unwrap();
    let clash = proxy.admin("POST", "/api/reload", None).await;
    let body = assert_error(&clash, StatusCode::UNPROCESSABLE_ENTITY, "reload_rejected");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("admin API"));
    assert_eq!(body["errors"][0]["line"], 2, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggling_a_rule_1000_times_under_load_loses_no_request() {
    let upstream = TestUpstream::start("orders-use1").await;
    let flaky = rule("flaky", "", "", "kind = \"error\"\nstatus = 503");
    let proxy = proxy(&upstream, &flaky).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, faulted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, faulted) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&faulted));
        let url = proxy.url("edge");
        load.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url).body(empty()).unwrap();
                let response = client.request(request).await.expect("a request was lost");
                let counter = match response.status() {
                    StatusCode::OK => &ok,
                    StatusCode::SERVICE_UNAVAILABLE => &faulted,
                    other => panic!("unexpected status {other}"),
                };
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .expect("a body was lost");
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let toggles = async {
        for i in 0..1000 {
            let verb = if i % 2 == 0 { "disable" } else { "enable" };
            let reply = proxy
                .admin("POST", &format!("/api/rules/flaky/{verb}"), None)
                .await;
            assert_eq!(reply.status, StatusCode::OK, "toggle {i}: {}", reply.text());
        }
    };
    tokio::time::timeout(Duration::from_secs(120), toggles)
        .await
        .expect("the admin API stalled");
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("a client hung")
            .unwrap();
    }
    let (ok, faulted) = (ok.load(Ordering::Relaxed), faulted.load(Ordering::Relaxed));
    assert!(ok > 0 && faulted > 0, "ok {ok}, faulted {faulted}");
    let rule = json(&proxy.admin("GET", "/api/rules/flaky", None).await);
    assert_eq!(rule["enabled"], true, "the last of 1000 toggles enables it");
    assert_eq!(rule["injected"].as_u64().unwrap() as usize, faulted);
}

#[tokio::test]
async fn halt_forwards_a_request_an_abort_was_still_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = TestUpstream::start("orders-use1").await;
    let empty_abort = rule("hang-up", "", "", "kind = \"abort\"\nmode = \"empty\"");
    let proxy = proxy(&upstream, &empty_abort).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr("edge"))
        .await
        .unwrap();
    // Half the body: the abort reads the whole request before hanging up.
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello")
        .await
        .unwrap();
    // The abort holds the request, reading its body. Had the rule not
    // fired, the request would wait upstream for the rest of its body, and
    // the test would pass all the same.
    proxy.until_injected("hang-up", 1).await;
    assert_eq!(
        upstream.requests(),
        0,
        "the request went upstream unfaulted"
    );
    proxy.admin("POST", "/api/halt", None).await;
    stream.write_all(b"world").await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("no answer after the halt")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("helloworld"), "{response}");
}
