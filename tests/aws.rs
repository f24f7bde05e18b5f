//! AWS-aware rules and presets (SPEC §8) with a real SDK: boto3, its
//! endpoint pointed at a reverse listener with `host = "preserve"`, in
//! front of a moto server that checks every SigV4 signature. The Python
//! side is `tests/aws/boto_calls.py`, run from the virtual environment
//! `.ci/run` makes (`FAULTLINE_AWS_PYTHON`, else `target/aws-venv`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The Python with boto3 and moto: `FAULTLINE_AWS_PYTHON`, else the venv
/// `.ci/run` makes under `target/`. Missing: the test fails under CI and
/// is skipped (with a message) elsewhere.
fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAULTLINE_AWS_PYTHON") {
        return Some(path.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/aws-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no Python with boto3 and moto: .ci/run makes target/aws-venv and sets FAULTLINE_AWS_PYTHON"
    );
    eprintln!("skipped: no Python with boto3 and moto (set FAULTLINE_AWS_PYTHON)");
    None
}

/// A moto server on a free port; killed when dropped.
struct Moto {
    _child: Child,
    addr: std::net::SocketAddr,
}

impl Moto {
    async fn start(python: &Path) -> Moto {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            // Three unsigned actions to make a user and its key; every
            // call after them must be signed with that key.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Moto {
            _child: child,
            addr,
        }
    }
}

/// boto3, one call per line (`tests/aws/boto_calls.py`).
struct Boto {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Boto {
    async fn start(python: &Path, moto: &Moto, faultline: &str) -> Boto {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/boto_calls.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(format!("http://{}", moto.addr))
            .arg(faultline)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_RETRY_MODE")
            .env_remove("AWS_MAX_ATTEMPTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = stdout
            .next_line()
            .await
            .unwrap()
            .expect("boto_calls.py ended");
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(ready["ready"], true, "{ready}");
        Boto {
            _child: child,
            stdin,
            stdout,
        }
    }

    /// `"SERVICE OPERATION REGION"`: what botocore made of the answer.
    async fn call(&mut self, call: &str) -> Value {
        self.stdin
            .write_all(format!("{call}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{call}: no answer in 60 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("{call}: boto_calls.py ended"));
        serde_json::from_str(&line).unwrap()
    }

    async fn ok(&mut self, call: &str) {
        let reply = self.call(call).await;
        assert_eq!(reply["ok"], true, "{call}: {reply}");
    }
}

fn config(moto: &Moto) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nseed = 7\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"moto\"\nurl = \"http://{}\"\nhost = \"preserve\"\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"moto\"\n",
        moto.addr
    )
}

/// One preset raised through one service, and what boto3 must see.
struct Case {
    preset: &'static str,
    call: &'static str,
    service: &'static str,
    code: &'static str,
    status: u64,
}

/// Every AWS preset, in every protocol it speaks. botocore's standard
/// mode makes 3 attempts for each: throttling codes, 429 and 5xx are all
/// retried (`botocore/retries/standard.py`).
const CASES: &[Case] = &[
    // awsJson1_0 (DynamoDB, SQS), awsQuery (STS), restJson1 (Lambda), EC2, S3.
    case(
        "aws.throttling",
        "dynamodb get_item us-east-1",
        "dynamodb",
        "ThrottlingException",
        400,
    ),
    case(
        "aws.throttling",
        "sqs list_queues us-east-1",
        "sqs",
        "ThrottlingException",
        400,
    ),
    case(
        "aws.throttling",
        "sts get_caller_identity us-east-1",
        "sts",
        "Throttling",
        400,
    ),
    case(
        "aws.throttling",
        "lambda list_functions us-east-1",
        "lambda",
        "ThrottlingException",
        400,
    ),
    case(
        "aws.throttling",
        "ec2 describe_regions us-east-1",
        "ec2",
        "RequestLimitExceeded",
        503,
    ),
    case(
        "aws.throttling",
        "s3 list_objects_v2 us-east-1",
        "s3",
        "SlowDown",
        503,
    ),
    case(
        "aws.service-unavailable",
        "dynamodb get_item us-east-1",
        "dynamodb",
        "ServiceUnavailable",
        503,
    ),
    case(
        "aws.service-unavailable",
        "sts get_caller_identity us-east-1",
        "sts",
        "ServiceUnavailable",
        503,
    ),
    case(
        "aws.service-unavailable",
        "lambda list_functions us-east-1",
        "lambda",
        "ServiceUnavailable",
        503,
    ),
    case(
        "aws.service-unavailable",
        "ec2 describe_regions us-east-1",
        "ec2",
        "Unavailable",
        503,
    ),
    case(
        "aws.service-unavailable",
        "s3 list_objects_v2 us-east-1",
        "s3",
        "ServiceUnavailable",
        503,
    ),
    case(
        "aws.internal-error",
        "dynamodb get_item us-east-1",
        "dynamodb",
        "InternalError",
        500,
    ),
    case(
        "aws.internal-error",
        "sqs list_queues us-east-1",
        "sqs",
        "InternalError",
        500,
    ),
    case(
        "aws.internal-error",
        "sts get_caller_identity us-east-1",
        "sts",
        "InternalError",
        500,
    ),
    case(
        "aws.internal-error",
        "lambda list_functions us-east-1",
        "lambda",
        "InternalError",
        500,
    ),
    case(
        "aws.internal-error",
        "ec2 describe_regions us-east-1",
        "ec2",
        "InternalError",
        500,
    ),
    case(
        "aws.internal-error",
        "s3 list_objects_v2 us-east-1",
        "s3",
        "InternalError",
        500,
    ),
    case(
        "lambda.too-many-requests",
        "lambda list_functions us-east-1",
        "lambda",
        "TooManyRequestsException",
        429,
    ),
    case(
        "lambda.service-exception",
        "lambda list_functions us-east-1",
        "lambda",
        "ServiceException",
        500,
    ),
    case(
        "dynamodb.throughput-exceeded",
        "dynamodb get_item us-east-1",
        "dynamodb",
        "ProvisionedThroughputExceededException",
        400,
    ),
    case(
        "s3.slow-down",
        "s3 list_objects_v2 us-east-1",
        "s3",
        "SlowDown",
        503,
    ),
    case(
        "s3.internal-error",
        "s3 list_objects_v2 us-east-1",
        "s3",
        "InternalError",
        500,
    ),
    case(
        "s3.service-unavailable",
        "s3 list_objects_v2 us-east-1",
        "s3",
        "ServiceUnavailable",
        503,
    ),
];

const fn case(
    preset: &'static str,
    call: &'static str,
    service: &'static str,
    code: &'static str,
    status: u64,
) -> Case {
    Case {
        preset,
        call,
        service,
        code,
        status,
    }
}

/// botocore's standard retry mode: 3 attempts in all.
const STANDARD_ATTEMPTS: u64 = 3;

/// The rules: one per case, and the PutItem rule, all off until a test
/// turns one on.
fn rules() -> String {
    let mut text = support::rule(
        "put-use1",
        "enabled = false",
        "aws = { service = \"dynamodb\", operation = \"PutItem\", region = \"us-east-1\" }",
        "kind = \"error\"\nstatus = 400\nheaders = { \"content-type\" = \"application/x-amz-json-1.0\" }\nbody = '{\"__type\":\"ValidationException\",\"message\":\"injected\"}'",
    );
    // The query protocol names its operation in a form body: read it.
    text.push_str(&support::rule(
        "sts-identity",
        "enabled = false",
        "aws = { service = \"sts\", operation = \"GetCallerIdentity\" }",
        "kind = \"error\"\npreset = \"aws.throttling\"",
    ));
    text.push_str(&support::rule(
        "sts-assume-role",
        "enabled = false",
        "aws = { operation = \"AssumeRole\" }",
        "kind = \"error\"\npreset = \"aws.throttling\"",
    ));
    for (i, case) in CASES.iter().enumerate() {
        text.push_str(&support::rule(
            &format!("case-{i}"),
            "enabled = false",
            &format!("aws = {{ service = \"{}\" }}", case.service),
            &format!("kind = \"error\"\npreset = \"{}\"", case.preset),
        ));
    }
    text
}

async fn switch(proxy: &TestProxy, rule: &str, on: bool) {
    let action = if on { "enable" } else { "disable" };
    let reply = proxy
        .admin("POST", &format!("/api/rules/{rule}/{action}"), Some("{}"))
        .await;
    assert_eq!(reply.status, 200, "{rule} {action}: {}", reply.text());
}

struct Rig {
    _moto: Moto,
    proxy: TestProxy,
    boto: Boto,
}

async fn rig() -> Option<Rig> {
    let python = python()?;
    let moto = Moto::start(&python).await;
    let proxy = TestProxy::start(&config(&moto), &rules()).await;
    let mut boto = Boto::start(&python, &moto, &proxy.url("edge")).await;
    for setup in [
        "dynamodb create_table us-east-1",
        "dynamodb create_table us-west-2",
        "s3 create_bucket us-east-1",
        "sqs create_queue us-east-1",
    ] {
        boto.ok(setup).await;
    }
    Some(Rig {
        _moto: moto,
        proxy,
        boto,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_pass_and_aws_rules_pick_service_operation_and_region() {
    // `_moto` is bound, not left out: moto must outlive the calls.
    let Some(Rig {
        _moto,
        proxy,
        mut boto,
    }) = rig().await
    else {
        return;
    };
    // No rule on: every call goes through, its signature intact.
    for call in [
        "dynamodb put_item us-east-1",
        "dynamodb get_item us-east-1",
        "dynamodb put_item us-west-2",
        "s3 put_object us-east-1",
        "s3 list_objects_v2 us-east-1",
        "sqs list_queues us-east-1",
        "sts get_caller_identity us-east-1",
        "ec2 describe_regions us-east-1",
    ] {
        boto.ok(call).await;
    }

    switch(&proxy, "put-use1", true).await;
    let reply = boto.call("dynamodb put_item us-east-1").await;
    assert_eq!(reply["code"], "ValidationException", "{reply}");
    assert_eq!(
        reply["retries"], 0,
        "a 400 that is no throttling is not retried: {reply}"
    );
    assert_eq!(proxy.injected("put-use1").await, 1);
    boto.ok("dynamodb get_item us-east-1").await;
    boto.ok("dynamodb put_item us-west-2").await;
    assert_eq!(
        proxy.injected("put-use1").await,
        1,
        "only PutItem in us-east-1"
    );
    switch(&proxy, "put-use1", false).await;

    // STS's operation is in its form body: read to decide, then forwarded
    // whole (moto checks the body's hash in the signature).
    switch(&proxy, "sts-assume-role", true).await;
    boto.ok("sts get_caller_identity us-east-1").await;
    switch(&proxy, "sts-assume-role", false).await;
    switch(&proxy, "sts-identity", true).await;
    let reply = boto.call("sts get_caller_identity us-east-1").await;
    assert_eq!(reply["code"], "Throttling", "{reply}");
    assert_eq!(reply["type"], "Sender", "{reply}");
    assert_eq!(proxy.injected("sts-identity").await, STANDARD_ATTEMPTS);
    boto.ok("dynamodb get_item us-east-1").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aws_preset_reads_right_in_boto3_and_is_retried_as_botocore_retries_it() {
    // `_moto` is bound, not left out: moto must outlive the calls.
    let Some(Rig {
        _moto,
        proxy,
        mut boto,
    }) = rig().await
    else {
        return;
    };
    for (i, case) in CASES.iter().enumerate() {
        let rule = format!("case-{i}");
        let what = format!("{} via {}", case.preset, case.call);
        switch(&proxy, &rule, true).await;
        let reply = boto.call(case.call).await;
        switch(&proxy, &rule, false).await;
        assert_eq!(reply["ok"], false, "{what}: {reply}");
        assert_eq!(reply["code"], case.code, "{what}: {reply}");
        assert_eq!(reply["status"], case.status, "{what}: {reply}");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && !m.starts_with('<') && !m.starts_with('{')),
            "{what}: the message is parsed out: {reply}"
        );
        assert_eq!(
            reply["retries"],
            STANDARD_ATTEMPTS - 1,
            "{what}: botocore's retries: {reply}"
        );
        assert_eq!(
            proxy.injected(&rule).await,
            STANDARD_ATTEMPTS,
            "{what}: attempts seen by faultline"
        );
        let request_id = reply["request_id"].as_str().unwrap_or_default();
        if case.service == "s3" {
            // Parsed as an S3 error: S3's ids, in the headers and the body.
            assert_eq!(request_id.len(), 16, "{what}: {reply}");
            assert!(
                reply["host_id"].as_str().is_some_and(|h| h.len() == 64),
                "{what}: {reply}"
            );
        } else {
            assert_eq!(request_id.len(), 36, "{what}: {reply}");
        }
        // The service still answers once the rule is off (moto checks
        // Lambda's signatures wrongly, so Lambda's calls are left out).
        if case.service != "lambda" {
            boto.ok(case.call).await;
        }
    }
    proxy.shutdown().await;
}
