//! The admin API's request bodies through a real socket: each body's size
//! limit, a bad field named by its path, and arbitrary bodies on every
//! route that takes one answered with a JSON `4xx` or a success, never a
//! `5xx`.
#![allow(clippy::unwrap_used)]

mod support;

use http::{Method, Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use support::*;

const RULES: &str = "[[rule]]\nname = \"use1-503\"\nenabled = false\n[rule.fault]\nkind = \"error\"\nstatus = 503\n";

async fn proxy(upstream: &TestUpstream) -> TestProxy {
    TestProxy::start(&edge_config(&[upstream], "watch_rules = false"), RULES).await
}

/// Sends `body` (any bytes) to the admin API.
async fn call(proxy: &TestProxy, method: &Method, path: &str, body: Vec<u8>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", proxy.admin_url()))
        .body(full(body))
        .unwrap();
    send(&client(), request).await
}

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

#[tokio::test]
async fn a_mistyped_field_is_named_by_its_path() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy(&upstream).await;

    // The README's example, word for word.
    let reply = proxy
        .admin("PATCH", "/api/rules/use1-503", Some(r#"{"ttl":5}"#))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json(&reply),
        json!({
            "error": "invalid_rule",
            "field": "ttl",
            "message": "ttl: invalid type: integer `5`, expected a duration string such as \"5m\"",
        })
    );

    let reply = proxy
        .admin(
            "POST",
            "/api/rules",
            Some(
                r#"{"name":"x","match":{"upstreams":["orders-use1", 7]},"fault":{"kind":"abort"}}"#,
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let body = json(&reply);
    assert_eq!(body["field"], "match.upstreams[1]", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("match.upstreams[1]: invalid type: integer `7`"),
        "{body}"
    );

    let reply = proxy
        .admin(
            "POST",
            "/api/scenarios/drill/start",
            Some(r#"{"speed":60,"speed":1}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        json(&reply)["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field `speed`"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn each_body_has_its_own_size_limit() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy(&upstream).await;

    // A switch is a few fields: 5 KiB of them is refused before it is parsed.
    let padded = format!(r#"{{"probability":0.5{}}}"#, " ".repeat(5 << 10));
    for (method, path) in [
        (Method::PATCH, "/api/rules/use1-503"),
        (Method::POST, "/api/rules/use1-503/enable"),
        (Method::POST, "/api/rules/use1-503/disable"),
        (Method::POST, "/api/scenarios/drill/start"),
        (Method::POST, "/api/scenarios/drill/stop"),
    ] {
        let reply = call(&proxy, &method, path, padded.clone().into_bytes()).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(json(&reply)["error"], "body_too_large", "{path}");
    }
    let rule = json(&proxy.admin("GET", "/api/rules/use1-503", None).await);
    assert_eq!(
        (rule["enabled"].clone(), rule["probability"].clone()),
        (json!(false), json!(1.0))
    );

    // A rule carries its error body inline, so 64 KiB of it is fine.
    let big = json!({
        "name": "big",
        "match": { "path": "/big" },
        "fault": { "kind": "error", "status": 503, "body": "x".repeat(64 << 10) },
    })
    .to_string();
    let reply = proxy.admin("POST", "/api/rules", Some(&big)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let answer = get(&format!("{}/big", proxy.url("edge"))).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body.len(), 64 << 10);
}

/// Keys the bodies and the rule schema know, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "name", "ttl", "enabled", "probability", "speed", "match", "fault", "kind",
            "status", "path", "upstreams", "body", "delay", "mode", "times", "every",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z]{1,6}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0.0..=2.0f64).prop_map(Value::from),
        prop::sample::select(vec![
            "5m",
            "1.5s",
            "soon",
            "error",
            "abort",
            "latency",
            "reset",
            "/tea",
            "orders-use1",
        ])
        .prop_map(Value::from),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A body: mostly an object near a schema, sometimes any JSON or any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec((key(), json_value()), 0..6).prop_map(|fields| {
            serde_json::to_vec(&Value::Object(fields.into_iter().collect())).unwrap()
        }),
        1 => json_value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Every route that reads a body.
fn route() -> impl Strategy<Value = (Method, &'static str)> {
    prop::sample::select(vec![
        (Method::POST, "/api/rules"),
        (Method::PATCH, "/api/rules/use1-503"),
        (Method::POST, "/api/rules/use1-503/enable"),
        (Method::POST, "/api/rules/use1-503/disable"),
        (Method::POST, "/api/scenarios/drill/start"),
        (Method::POST, "/api/scenarios/drill/stop"),
    ])
}

/// proptest drives the cases, so the proxy runs on a runtime of its own.
#[test]
fn arbitrary_bodies_never_get_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (upstream, proxy) = runtime.block_on(async {
        let upstream = TestUpstream::start("orders-use1").await;
        let proxy = proxy(&upstream).await;
        (upstream, proxy)
    });
    let mut runner = TestRunner::new(Config::with_cases(48));
    let outcome = runner.run(&(route(), body()), |((method, path), body)| {
        let reply = runtime.block_on(call(&proxy, &method, path, body.clone()));
        let shown = || {
            format!(
                "{method} {path} {:?} -> {}",
                String::from_utf8_lossy(&body),
                reply.text()
            )
        };
        prop_assert!(!reply.status.is_server_error(), "{}", shown());
        if !reply.status.is_success() {
            prop_assert!(reply.status.is_client_error(), "{}", shown());
            let error: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            prop_assert!(error["error"].is_string(), "{}", shown());
            prop_assert!(error["message"].is_string(), "{}", shown());
        }
        Ok(())
    });
    // The admin API still answers after all of them.
    let health = runtime.block_on(get(&format!("{}/healthz", proxy.admin_url())));
    runtime.block_on(proxy.shutdown());
    drop(upstream);
    outcome.unwrap();
    assert_eq!(health.status, StatusCode::OK);
}
