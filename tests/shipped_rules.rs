//! Every rule file under `rules/` and every config under `examples/`
//! parses and validates, so the examples cannot rot.
#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn every_shipped_rule_file_is_valid() {
    let names: Vec<&str> = faultline::demo::UPSTREAMS.iter().map(|u| u.0).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = faultline::book::load_dir(&dir, &names)
        .unwrap_or_else(|problems| panic!("{}", faultline::diagnostic::render(&problems)));
    assert!(!rules.rules.is_empty(), "rules/ ships no rule");
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/faultline.toml");
    let app = faultline::app::App::load(&path)
        .unwrap_or_else(|problems| panic!("{}", faultline::diagnostic::render(&problems)));
    assert_eq!(app.config().upstreams.len(), 4);
    assert!(!app.rules().is_empty());
}

/// The compose stack's config, checked as its container would be started:
/// with the token in the environment and `rules/` beside it (a symlink in
/// the repository, a mount in the container).
#[test]
fn the_compose_config_is_valid() {
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["check", "-c", "examples/compose/faultline.toml"])
        .env("FAULTLINE_ADMIN_TOKEN", "rehearsal")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(
        stdout.starts_with(
            "examples/compose/faultline.toml: ok (1 listeners, 18 upstreams, 36 routes, "
        ),
        "{stdout}"
    );
}

/// Every shipped scenario plays to completion at high speed in the demo,
/// leaves us-west-2 untouched, and leaves the rules as they were.
#[tokio::test]
async fn every_shipped_scenario_runs_to_completion() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let any = "127.0.0.1:0".parse().unwrap();
    let demo = faultline::demo::Demo::start(any, any, &dir).await.unwrap();
    let control = demo.proxy.control();
    let shipped: Vec<String> = control.scenarios().into_iter().map(|s| s.name).collect();
    assert_eq!(
        shipped,
        [
            "aws-us-east-1-lambda-capacity",
            "us-east-1-dynamodb-dns",
            "us-east-1-lambda-capacity",
            "us-east-1-region-down",
            "use1-az1-power-loss"
        ]
    );
    let before = control.rules();
    let west = format!("http://{}/us-west-2/lambda/invoke", demo.proxy_addr);
    for name in &shipped {
        let view = control
            .start_scenario(name, faultline::control::MAX_SPEED, "test")
            .unwrap();
        assert_eq!(view.state, "running");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            assert_eq!(support_get(&west).await, 200, "{name}: us-west-2 was hit");
            let state = control.scenario(name).unwrap().state;
            if state != "running" {
                assert_eq!(state, "completed", "{name}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not finish"
            );
        }
        let report = control.report(name).unwrap();
        let steps = control.scenario(name).unwrap().steps.len();
        assert_eq!(report.steps.len(), steps, "{name}: every step ran");
        let after = control.rules();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(
                (&b.name, b.enabled, b.probability, &b.fault),
                (&a.name, a.enabled, a.probability, &a.fault),
                "{name} left a rule changed"
            );
        }
    }
    demo.shutdown().await;
}

/// The 19-20 Oct 2025 scenario played at full speed in the demo with
/// traffic: DNS queries for DynamoDB's name and HTTP calls to the us-east-1
/// services it breaks, each step's faults in the report, in AWS's order;
/// us-west-2 answers throughout and the guard never trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_dns_outage_plays_in_the_demo() {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let any = "127.0.0.1:0".parse().unwrap();
    let demo = faultline::demo::Demo::start(any, any, &dir).await.unwrap();
    let dns = demo.proxy.dns_addr().unwrap();
    let control = demo.proxy.control();
    let name = "us-east-1-dynamodb-dns";
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut ask = Message::new();
    ask.set_recursion_desired(true).add_query(Query::query(
        Name::from_ascii("dynamodb.us-east-1.amazonaws.com.").unwrap(),
        RecordType::A,
    ));
    let packet = ask.to_vec().unwrap();
    let mut buffer = vec![0u8; 1500];
    // Before the run: the demo's record.
    socket.send_to(&packet, dns).await.unwrap();
    let n = socket.recv(&mut buffer).await.unwrap();
    assert_eq!(Message::from_vec(&buffer[..n]).unwrap().answers().len(), 1);

    control
        .start_scenario(name, faultline::control::MAX_SPEED, "test")
        .unwrap();
    let (mut empty, mut west) = (0, 0);
    let http = format!("http://{}", demo.proxy_addr);
    loop {
        socket.send_to(&packet, dns).await.unwrap();
        let n = socket.recv(&mut buffer).await.unwrap();
        let answer = Message::from_vec(&buffer[..n]).unwrap();
        if answer.answers().is_empty() {
            empty += 1;
        }
        for service in ["lambda", "ecs", "connect", "orders"] {
            // An NLB reset fails the request itself: that is the point.
            let _ = try_get(&format!("{http}/us-east-1/{service}/x")).await;
        }
        assert_eq!(
            support_get(&format!("{http}/us-west-2/lambda/x")).await,
            200
        );
        west += 1;
        if control.scenario(name).unwrap().state != "running" {
            break;
        }
    }
    assert_eq!(control.scenario(name).unwrap().state, "completed");
    assert!(empty > 0, "no query saw DynamoDB's empty name");
    let report = control.report(name).unwrap();
    assert_eq!(report.steps.len(), 7);
    for step in &report.steps {
        eprintln!(
            "step {:?} at {} ({}): faults {:?}; us-east-1 {:?} errors of {:?}; us-west-2 errors {:?} of {:?}",
            step.step,
            step.at,
            step.description.as_deref().unwrap_or(""),
            step.faults,
            step.regions.get("us-east-1").map(|s| s.errors),
            step.regions.get("us-east-1").map(|s| s.requests),
            step.regions.get("us-west-2").map(|s| s.errors),
            step.regions.get("us-west-2").map(|s| s.requests),
        );
        if let Some(west) = step.regions.get("us-west-2") {
            assert_eq!(west.errors, 0, "us-west-2 in step {:?}", step.step);
        }
    }
    // Each fault shows in the step that turns it on, in AWS's order.
    let fired = |step: usize, rule: &str| report.steps[step].faults.get(rule).copied().unwrap_or(0);
    assert!(fired(0, "use1-dynamodb-dns-empty") > 0);
    assert!(fired(0, "use1-ddb-dependents-errors") > 0);
    assert_eq!(fired(1, "use1-dynamodb-dns-empty"), 0, "DNS restored");
    assert!(fired(1, "use1-ec2-launch-errors") > 0);
    assert!(fired(2, "use1-nlb-health-check-resets") > 0);
    assert!(fired(2, "use1-lambda-launch-errors") > 0);
    assert_eq!(fired(3, "use1-nlb-health-check-resets"), 0, "NLB recovered");
    // Recovery in AWS's order: Connect, then EC2 launches, then Lambda.
    assert_eq!(fired(4, "use1-connect-errors"), 0);
    assert_eq!(fired(5, "use1-ec2-launch-errors"), 0);
    assert_eq!(fired(6, "use1-lambda-launch-errors"), 0);
    assert!(report.steps[6].faults.is_empty(), "all clear");
    assert!(west > 0);
    demo.shutdown().await;
}

/// A GET's status, or `None` when the connection failed (an injected reset).
async fn try_get(url: &str) -> Option<u16> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.ok()?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Some(status)
}

/// The AWS scenario's rules, all on at probability 1, take calls to the
/// real endpoints in us-east-1 by service and operation, and never one in
/// us-west-2: by host name, and by SigV4 scope when the host does not say
/// (a global endpoint, or an endpoint URL pointed at faultline).
#[test]
fn the_aws_rules_take_us_east_1_calls_by_their_aws_names() {
    use faultline::plan::{decide, RequestView};
    use faultline::rules::{LiveRule, RuleSet, UpstreamIdentity};
    use http::{HeaderMap, Method};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let book = faultline::book::load_dir(&dir, &["aws"]).unwrap();
    let rules: Vec<LiveRule> = book
        .rules
        .iter()
        .filter(|rule| rule.name.starts_with("aws-use1-"))
        .map(|rule| LiveRule {
            rule: std::sync::Arc::clone(rule),
            enabled: true,
            probability: 1.0,
        })
        .collect();
    assert_eq!(rules.len(), 6);
    let labels = Default::default();
    let set = RuleSet::new(
        rules,
        [UpstreamIdentity {
            name: "aws",
            labels: &labels,
            tcp: false,
        }],
        1,
    );
    fn names(
        set: &RuleSet,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Vec<String> {
        let mut map = HeaderMap::new();
        map.insert("host", host.parse().unwrap());
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let view = RequestView {
            method: &method,
            path,
            query: None,
            authority: None,
            headers: &map,
            client_ip: b"127.0.0.1",
            form: None,
        };
        decide(set, 0, &view).map_or_else(Vec::new, |decision| {
            let candidates = set.candidates(0).unwrap();
            decision
                .fired
                .iter()
                .map(|&i| candidates.get(i).unwrap().rule.name().to_owned())
                .collect()
        })
    }
    let fired =
        |method, host, path, headers: &[(&str, &str)]| names(&set, method, host, path, headers);
    let invoke = "/2015-03-31/functions/checkout/invocations";
    assert_eq!(
        fired(Method::POST, "lambda.us-east-1.amazonaws.com", invoke, &[]),
        ["aws-use1-lambda-throttle"]
    );
    assert_eq!(
        fired(
            Method::GET,
            "lambda.us-east-1.amazonaws.com",
            "/2015-03-31/functions/",
            &[]
        ),
        ["aws-use1-lambda-latency"]
    );
    assert!(fired(Method::POST, "lambda.us-west-2.amazonaws.com", invoke, &[]).is_empty());
    let put = [("x-amz-target", "DynamoDB_20120810.PutItem")];
    assert_eq!(
        fired(Method::POST, "dynamodb.us-east-1.amazonaws.com", "/", &put),
        ["aws-use1-dependents-latency", "aws-use1-dependents-errors"]
    );
    assert!(fired(Method::POST, "dynamodb.us-west-2.amazonaws.com", "/", &put).is_empty());
    // STS's global endpoint: the region is the signature's.
    let signed = |region: &str| {
        format!("AWS4-HMAC-SHA256 Credential=AKID/20260101/{region}/sts/aws4_request, SignedHeaders=host, Signature=0")
    };
    let east = signed("us-east-1");
    let west = signed("us-west-2");
    assert_eq!(
        fired(
            Method::POST,
            "sts.amazonaws.com",
            "/",
            &[("authorization", &east)]
        )
        .len(),
        2
    );
    assert!(fired(
        Method::POST,
        "sts.amazonaws.com",
        "/",
        &[("authorization", &west)]
    )
    .is_empty());
    assert!(fired(Method::GET, "example.com", "/", &[]).is_empty());
}

async fn support_get(url: &str) -> u16 {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}
