//! AWS-aware matching and protocol-answering presets through a real proxy,
//! with hand-made requests (no SDK needed; `tests/aws.rs` has boto3):
//! header-value globs, `match.aws` from the host name and a form body
//! (forwarded intact after it was read), and `aws.*` presets answering in
//! the protocol each request speaks.

#![allow(clippy::unwrap_used)]

mod support;

use http::{Method, Request};
use support::*;

fn request(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Request<TestBody> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(full(body.to_owned())).unwrap()
}

#[tokio::test]
async fn header_globs_and_aws_names_pick_requests() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = [
        support::rule(
            "put-by-glob",
            "",
            "headers = { \"x-amz-target\" = \"DynamoDB_*.Put*\" }",
            "kind = \"error\"\nstatus = 418",
        ),
        support::rule(
            "sqs-send-use1",
            "",
            "aws = { service = \"sqs\", operation = \"SendMessage\", region = \"us-east-1\" }",
            "kind = \"error\"\nstatus = 503",
        ),
    ]
    .concat();
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let url = proxy.url("edge");
    let client = client();

    let target = |op: &'static str| [("x-amz-target", op)];
    let put = send(
        &client,
        request(
            Method::POST,
            &url,
            &target("DynamoDB_20120810.PutItem"),
            "{}",
        ),
    )
    .await;
    assert_eq!(put.status, 418);
    let get = send(
        &client,
        request(
            Method::POST,
            &url,
            &target("DynamoDB_20120810.GetItem"),
            "{}",
        ),
    )
    .await;
    assert_eq!(get.status, 200);

    // The query protocol's operation is in the form body: read to decide,
    // then forwarded as it came (the upstream echoes it).
    let form = |host: &'static str| {
        [
            ("host", host),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ]
    };
    let send_message = "Action=SendMessage&QueueUrl=https%3A%2F%2Fq&MessageBody=hi";
    let east = send(
        &client,
        request(
            Method::POST,
            &url,
            &form("sqs.us-east-1.amazonaws.com"),
            send_message,
        ),
    )
    .await;
    assert_eq!(east.status, 503);
    assert_eq!(east.header("x-faultline-rule"), Some("sqs-send-use1"));
    let receive = "Action=ReceiveMessage&QueueUrl=https%3A%2F%2Fq";
    let other = send(
        &client,
        request(
            Method::POST,
            &url,
            &form("sqs.us-east-1.amazonaws.com"),
            receive,
        ),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(
        other.text(),
        receive,
        "the body read to decide is forwarded whole"
    );
    let west = send(
        &client,
        request(
            Method::POST,
            &url,
            &form("sqs.us-west-2.amazonaws.com"),
            send_message,
        ),
    )
    .await;
    assert_eq!(west.status, 200);
    assert_eq!(west.text(), send_message);
    // A signed request is named by its scope, whatever its host.
    let signed = [
        ("host", "127.0.0.1"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0"),
    ];
    let scoped = send(&client, request(Method::POST, &url, &signed, send_message)).await;
    assert_eq!(scoped.status, 503);
    proxy.shutdown().await;
}

#[tokio::test]
async fn aws_presets_answer_in_the_protocol_of_the_request() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = support::rule(
        "unavailable",
        "",
        "headers = { \"x-chaos\" = \"on\" }",
        "kind = \"error\"\npreset = \"aws.service-unavailable\"",
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let url = proxy.url("edge");
    let client = client();
    let call = |method: Method, path: &str, headers: &[(&str, &str)], body: &str| {
        let mut all = vec![("x-chaos", "on")];
        all.extend_from_slice(headers);
        request(method, &format!("{url}{path}"), &all, body)
    };

    let json = send(
        &client,
        call(
            Method::POST,
            "/",
            &[
                ("x-amz-target", "DynamoDB_20120810.GetItem"),
                ("content-type", "application/x-amz-json-1.0"),
            ],
            "{}",
        ),
    )
    .await;
    assert_eq!(json.status, 503);
    assert_eq!(
        json.header("content-type"),
        Some("application/x-amz-json-1.0")
    );
    let body: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(body["__type"], "ServiceUnavailable");
    assert!(json.header("x-amzn-requestid").is_some());

    let rest = send(
        &client,
        call(
            Method::POST,
            "/2015-03-31/functions/f/invocations",
            &[("host", "lambda.us-east-1.amazonaws.com")],
            "{}",
        ),
    )
    .await;
    assert_eq!(rest.header("x-amzn-errortype"), Some("ServiceUnavailable"));
    let body: serde_json::Value = serde_json::from_slice(&rest.body).unwrap();
    assert_eq!(body["Type"], "Service");

    let query = send(
        &client,
        call(
            Method::POST,
            "/",
            &[
                ("host", "sts.amazonaws.com"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "Action=GetCallerIdentity&Version=2011-06-15",
        ),
    )
    .await;
    assert_eq!(query.status, 503);
    let xml = query.text();
    let id = query.header("x-amzn-requestid").unwrap();
    assert!(
        xml.contains("<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("<RequestId>{id}</RequestId>")),
        "{xml}"
    );

    let ec2 = send(
        &client,
        call(
            Method::POST,
            "/",
            &[
                ("host", "ec2.us-east-1.amazonaws.com"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "Action=DescribeInstances",
        ),
    )
    .await;
    let xml = ec2.text();
    assert!(
        xml.contains("<Response><Errors><Error><Code>Unavailable</Code>"),
        "{xml}"
    );

    let s3 = send(
        &client,
        call(
            Method::GET,
            "/photos/cat.jpg",
            &[("host", "s3.us-east-1.amazonaws.com")],
            "",
        ),
    )
    .await;
    assert_eq!(s3.status, 503);
    let xml = s3.text();
    let id = s3.header("x-amz-request-id").unwrap();
    assert!(
        xml.contains("<Error><Code>ServiceUnavailable</Code>"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("<RequestId>{id}</RequestId>")),
        "{xml}"
    );
    assert_eq!(s3.header("server"), Some("AmazonS3"));

    // Nothing tells: awsJson1_1, as the preset is written.
    let unknown = send(&client, call(Method::GET, "/", &[], "")).await;
    assert_eq!(
        unknown.header("content-type"),
        Some("application/x-amz-json-1.1")
    );
    assert_eq!(
        unknown.header("x-amzn-errortype"),
        Some("ServiceUnavailable")
    );
    assert_eq!(upstream.requests(), 0);
    proxy.shutdown().await;
}
