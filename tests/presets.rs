//! Error presets (SPEC §3.3) through a real proxy: each answers with the
//! real service's status, headers and body, and fresh ids per response.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

/// A preset, and what the real service's error looks like on the wire.
struct Expected {
    preset: &'static str,
    status: u16,
    headers: &'static [(&'static str, &'static str)],
}

const EXPECTED: &[Expected] = &[
    Expected {
        preset: "aws.throttling",
        status: 400,
        headers: &[
            ("x-amzn-errortype", "ThrottlingException"),
            ("content-type", "application/x-amz-json-1.1"),
        ],
    },
    Expected {
        preset: "aws.service-unavailable",
        status: 503,
        headers: &[
            ("x-amzn-errortype", "ServiceUnavailable"),
            ("content-type", "application/x-amz-json-1.1"),
        ],
    },
    Expected {
        preset: "aws.internal-error",
        status: 500,
        headers: &[
            ("x-amzn-errortype", "InternalError"),
            ("content-type", "application/x-amz-json-1.1"),
        ],
    },
    Expected {
        preset: "lambda.too-many-requests",
        status: 429,
        headers: &[
            ("x-amzn-errortype", "TooManyRequestsException"),
            ("content-type", "application/json"),
        ],
    },
    Expected {
        preset: "lambda.service-exception",
        status: 500,
        headers: &[
            ("x-amzn-errortype", "ServiceException"),
            ("content-type", "application/json"),
        ],
    },
    Expected {
        preset: "dynamodb.throughput-exceeded",
        status: 400,
        headers: &[
            ("x-amzn-errortype", "ProvisionedThroughputExceededException"),
            ("content-type", "application/x-amz-json-1.0"),
        ],
    },
    Expected {
        preset: "s3.slow-down",
        status: 503,
        headers: &[("content-type", "application/xml"), ("server", "AmazonS3")],
    },
    Expected {
        preset: "s3.internal-error",
        status: 500,
        headers: &[("content-type", "application/xml"), ("server", "AmazonS3")],
    },
    Expected {
        preset: "s3.service-unavailable",
        status: 503,
        headers: &[("content-type", "application/xml"), ("server", "AmazonS3")],
    },
];

/// S3's `Code` and `Message` for each S3 preset (Amazon S3 API Reference,
/// "Error responses").
fn s3_error(preset: &str) -> (&'static str, &'static str) {
    match preset {
        "s3.slow-down" => ("SlowDown", "Please reduce your request rate."),
        "s3.internal-error" => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        "s3.service-unavailable" => ("ServiceUnavailable", "Reduce your request rate."),
        _ => panic!("not an S3 preset: {preset}"),
    }
}

/// One rule per preset, each on the path `/<preset>`.
async fn proxy_with_every_preset(upstream: &TestUpstream) -> TestProxy {
    let rules: String = EXPECTED
        .iter()
        .map(|e| {
            support::rule(
                e.preset,
                "",
                &format!("path = \"/{}\"", e.preset),
                &format!("kind = \"error\"\npreset = \"{}\"", e.preset),
            )
        })
        .collect();
    TestProxy::start(&edge_config(&[upstream], ""), &rules).await
}

fn json(reply: &Reply, preset: &str) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{preset}: body is not JSON ({e}): {}", reply.text()))
}

/// The text between `<tag>` and `</tag>`.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + end])
}

#[tokio::test]
async fn every_preset_answers_in_its_services_wire_format() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_every_preset(&upstream).await;
    for expected in EXPECTED {
        let url = format!("{}/{}", proxy.url("edge"), expected.preset);
        let first = get(&url).await;
        let second = get(&url).await;
        let preset = expected.preset;
        for reply in [&first, &second] {
            assert_eq!(reply.status, expected.status, "{preset}");
            for (name, value) in expected.headers {
                assert_eq!(reply.header(name), Some(*value), "{preset}: {name}");
            }
            assert_eq!(reply.header("x-faultline-rule"), Some(preset));
        }

        if preset.starts_with("s3.") {
            let xml = first.text();
            assert!(
                xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>"),
                "{xml}"
            );
            let (code, message) = s3_error(preset);
            assert_eq!(element(&xml, "Code"), Some(code), "{xml}");
            assert_eq!(element(&xml, "Message"), Some(message), "{xml}");
            let request_id = first.header("x-amz-request-id").unwrap();
            assert_eq!(request_id.len(), 16, "{request_id}");
            assert!(request_id
                .chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
            assert_eq!(element(&xml, "RequestId"), Some(request_id), "{xml}");
            assert_eq!(element(&xml, "HostId"), first.header("x-amz-id-2"), "{xml}");
            assert_ne!(
                first.header("x-amz-request-id"),
                second.header("x-amz-request-id")
            );
            assert_ne!(first.header("x-amz-id-2"), second.header("x-amz-id-2"));
            assert_eq!(first.header("x-amzn-requestid"), None);
            continue;
        }

        let body = json(&first, preset);
        let error_type = first.header("x-amzn-errortype").unwrap();
        let message = body
            .get("message")
            .or_else(|| body.get("Message"))
            .and_then(|m| m.as_str());
        assert!(message.is_some_and(|m| !m.is_empty()), "{preset}: {body}");
        if preset.starts_with("lambda.") {
            // restJson1: the error is named by the header; the body holds the shape's members.
            assert!(body.get("Type").is_some(), "{preset}: {body}");
        } else {
            let kind = body["__type"].as_str().unwrap();
            assert!(
                kind == error_type || kind.ends_with(&format!("#{error_type}")),
                "{preset}: {body}"
            );
        }

        let id = first.header("x-amzn-requestid").unwrap();
        assert_eq!(id.len(), 36, "{preset}: {id}");
        assert_eq!(&id[14..15], "4", "{preset}: {id}");
        assert!(id
            .chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_ne!(
            first.header("x-amzn-requestid"),
            second.header("x-amzn-requestid"),
            "{preset}"
        );
        assert_eq!(first.body, second.body, "{preset}");
    }
    assert_eq!(upstream.requests(), 0, "the upstream must not be called");
    proxy.shutdown().await;
}

#[tokio::test]
async fn preset_bodies_are_the_services_own() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_every_preset(&upstream).await;
    let body = |preset: &str| {
        let url = format!("{}/{preset}", proxy.url("edge"));
        async move { get(&url).await.text() }
    };
    assert_eq!(
        body("aws.throttling").await,
        r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#
    );
    assert_eq!(
        body("lambda.too-many-requests").await,
        r#"{"Reason":"ConcurrentInvocationLimitExceeded","Type":"User","message":"Rate Exceeded."}"#
    );
    assert_eq!(
        body("dynamodb.throughput-exceeded").await,
        r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."}"#
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn dynamodb_checksum_matches_the_body_sent() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = proxy_with_every_preset(&upstream).await;
    let reply = get(&format!(
        "{}/dynamodb.throughput-exceeded",
        proxy.url("edge")
    ))
    .await;
    let crc: u32 = reply.header("x-amz-crc32").unwrap().parse().unwrap();
    assert_eq!(crc, faultline::fault::preset::crc32(&reply.body));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_rule_overrides_its_presets_status_headers_and_body() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = support::rule(
        "slow-lambda",
        "",
        "",
        "kind = \"error\"\npreset = \"lambda.too-many-requests\"\nstatus = 503\nheaders = { \"retry-after\" = \"7\" }\nbody = '{\"message\":\"custom\"}'",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(
        reply.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(reply.text(), r#"{"message":"custom"}"#);
    assert!(reply.header("x-amzn-requestid").is_some());
    proxy.shutdown().await;
}
