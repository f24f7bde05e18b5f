//! AWS-aware rules and presets (SPEC §8) with a real SDK, boto3, against
//! a moto server that checks every SigV4 signature, two ways: its endpoint
//! pointed at a reverse listener with `host = "preserve"`, and as an
//! application runs it, calling the real AWS host names through
//! `HTTPS_PROXY` (a forward listener that intercepts them with its CA,
//! `AWS_CA_BUNDLE`) with a destination's `connect_to` sending them to
//! moto over TLS. The Python side is `tests/aws/boto_calls.py` and
//! `tests/aws/moto_server.py`, run from the virtual environment `.ci/run`
//! makes (`FAULTLINE_AWS_PYTHON`, else `target/aws-venv`).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use support::tls::TestCa;
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

/// Proxy settings a client process must not inherit from the environment.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// The one moto server of this test binary (`tests/aws/moto_server.py`),
/// shared by its tests: plain HTTP for reverse listeners, HTTPS for
/// forward destinations, and the access key it checks signatures with.
/// Ends with the process: it serves until its stdin, held here, closes.
struct Moto {
    http: std::net::SocketAddr,
    https: std::net::SocketAddr,
    key_id: String,
    secret: String,
    /// The CA of moto's HTTPS certificate (PEM).
    ca_pem: String,
    _child: std::process::Child,
    _stdin: std::process::ChildStdin,
}

/// The names moto's HTTPS certificate covers: the AWS hosts the forward
/// test calls (a wildcard covers one label) and the emulator's.
const MOTO_NAMES: &[&str] = &[
    "*.amazonaws.com",
    "*.us-east-1.amazonaws.com",
    "*.us-west-2.amazonaws.com",
    "*.s3.amazonaws.com",
    "*.s3.us-east-1.amazonaws.com",
    "*.emulator.test",
];

impl Moto {
    /// The shared server, started by the first test that asks.
    fn get(python: &Path) -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(|| Moto::start(python))
    }

    fn start(python: &Path) -> Moto {
        let ca = TestCa::new("moto test CA");
        let files = tempfile::tempdir().unwrap();
        // moto reads them once, when it binds: removed with `files` below.
        let (cert, key) = ca.leaf(MOTO_NAMES).write(files.path(), "moto");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/moto_server.py");
        let mut command = std::process::Command::new(python);
        command.arg(script).arg(&cert).arg(&key);
        for variable in PROXY_VARIABLES {
            command.env_remove(variable);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut ready = String::new();
        // Blocks until moto listens and the key is made: no polling needed.
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let ready: Value = serde_json::from_str(&ready)
            .unwrap_or_else(|e| panic!("moto_server.py did not start ({e}): {ready:?}"));
        let port = |name: &str| {
            let port = ready[name].as_u64().unwrap();
            std::net::SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()))
        };
        Moto {
            http: port("http"),
            https: port("https"),
            key_id: ready["key_id"].as_str().unwrap().to_owned(),
            secret: ready["secret"].as_str().unwrap().to_owned(),
            ca_pem: ca.pem(),
            _child: child,
            _stdin: stdin,
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
    /// boto3 with `endpoint` (`None`: the real AWS host names) and `env`
    /// besides the key; nothing else from the environment that changes
    /// what botocore does.
    async fn start(
        python: &Path,
        moto: &Moto,
        endpoint: Option<&str>,
        env: &[(&str, &str)],
    ) -> Boto {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/boto_calls.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg(endpoint.unwrap_or("-"))
            .env("AWS_ACCESS_KEY_ID", &moto.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &moto.secret)
            // No config or credentials file of whoever runs the tests.
            .env("AWS_CONFIG_FILE", "/nonexistent/faultline-test")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/faultline-test");
        for variable in PROXY_VARIABLES.iter().chain(&[
            "AWS_PROFILE",
            "AWS_RETRY_MODE",
            "AWS_MAX_ATTEMPTS",
            "AWS_CA_BUNDLE",
            "AWS_ENDPOINT_URL",
            "AWS_SESSION_TOKEN",
        ]) {
            command.env_remove(variable);
        }
        command.envs(env.iter().copied());
        let mut child = command
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

    /// `"SERVICE OPERATION REGION [endpoint=URL] [secret=S]"`: what
    /// botocore made of the answer.
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

    async fn ok(&mut self, call: &str) -> Value {
        let reply = self.call(call).await;
        assert_eq!(reply["ok"], true, "{call}: {reply}");
        reply
    }
}

fn config(moto: &Moto) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nseed = 7\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"moto\"\nurl = \"http://{}\"\nhost = \"preserve\"\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"moto\"\n",
        moto.http
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
    proxy: TestProxy,
    boto: Boto,
}

async fn rig() -> Option<Rig> {
    let python = python()?;
    let moto = tokio::task::block_in_place(|| Moto::get(&python));
    let proxy = TestProxy::start(&config(moto), &rules()).await;
    let mut boto = Boto::start(&python, moto, Some(&proxy.url("edge")), &[]).await;
    for setup in [
        "dynamodb create_table us-east-1",
        "dynamodb create_table us-west-2",
        "s3 create_bucket us-east-1",
        "sqs create_queue us-east-1",
    ] {
        boto.ok(setup).await;
    }
    Some(Rig { proxy, boto })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_pass_and_aws_rules_pick_service_operation_and_region() {
    let Some(Rig { proxy, mut boto }) = rig().await else {
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
    let Some(Rig { proxy, mut boto }) = rig().await else {
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

/// A forward listener that intercepts the AWS names and the emulator's,
/// faultline's CA in `ca_dir`, and two destinations sending them to moto's
/// HTTPS port (its CA in `moto_ca`): `aws` for `*.amazonaws.com`, the
/// region of each request from its host, and `emulator` for a made-up
/// name that says no region.
fn forward_config(moto: &Moto, ca_dir: &Path, moto_ca: &Path) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[proxy]
seed = 7

[[listener]]
name = "egress"
listen = "127.0.0.1:0"
mode = "forward"
intercept = ["*.amazonaws.com", "*.emulator.test"]

[ca]
dir = "{ca_dir}"

[[destination]]
name = "aws"
host = "*.amazonaws.com"
connect_to = "{moto}"
tls = {{ ca = "{moto_ca}" }}

[[destination]]
name = "emulator"
host = "*.emulator.test"
connect_to = "{moto}"
tls = {{ ca = "{moto_ca}" }}
"#,
        ca_dir = ca_dir.display(),
        moto = moto.https,
        moto_ca = moto_ca.display(),
    )
}

fn forward_rules() -> String {
    let mut text = support::rule(
        "put-use1",
        "enabled = false",
        "aws = { service = \"dynamodb\", operation = \"PutItem\", region = \"us-east-1\" }",
        "kind = \"error\"\npreset = \"aws.service-unavailable\"",
    );
    // The query protocol names its operation in the form body.
    text.push_str(&support::rule(
        "sts-denied",
        "enabled = false",
        "aws = { service = \"sts\", operation = \"GetCallerIdentity\" }",
        "kind = \"error\"\nstatus = 403\nheaders = { \"content-type\" = \"text/xml\" }\nbody = '<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>injected</Message></Error></ErrorResponse>'",
    ));
    text.push_str(&support::rule(
        "s3-put",
        "enabled = false",
        "aws = { service = \"s3\", operation = \"PutObject\" }",
        "kind = \"error\"\npreset = \"s3.internal-error\"",
    ));
    text.push_str(&support::rule(
        "s3-list",
        "enabled = false",
        "aws = { service = \"s3\", operation = \"ListObjectsV2\" }",
        "kind = \"error\"\npreset = \"s3.slow-down\"",
    ));
    text
}

/// `faultline_requests_total` of forward traffic: 0 before its first.
async fn forwarded(proxy: &TestProxy, code: &str, upstream: &str, region: &str) -> f64 {
    let series = format!(
        r#"faultline_requests_total{{code="{code}",method="POST",region="{region}",upstream="{upstream}"}}"#
    );
    proxy.metric(&series).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_through_https_proxy_calls_real_aws_names_signed_and_aws_rules_fault_them() {
    let Some(python) = python() else {
        return;
    };
    let moto = tokio::task::block_in_place(|| Moto::get(&python));
    let files = tempfile::tempdir().unwrap();
    let moto_ca = files.path().join("moto-ca.pem");
    std::fs::write(&moto_ca, &moto.ca_pem).unwrap();
    let ca_dir = files.path().join("ca");
    let proxy = TestProxy::start(&forward_config(moto, &ca_dir, &moto_ca), &forward_rules()).await;
    // What an application is given: the proxy and the CA to trust.
    let https_proxy = format!("http://{}", proxy.addr("egress"));
    let ca_bundle = ca_dir.join("ca.pem");
    let mut boto = Boto::start(
        &python,
        moto,
        None,
        &[
            ("HTTPS_PROXY", &https_proxy),
            ("AWS_CA_BUNDLE", ca_bundle.to_str().unwrap()),
        ],
    )
    .await;

    // Signed calls to the real names, decrypted and sent on to moto over
    // verified TLS, their signatures intact.
    for setup in [
        "dynamodb create_table us-east-1",
        "dynamodb create_table us-west-2",
        "s3 create_bucket us-east-1",
    ] {
        boto.ok(setup).await;
    }
    for (call, host) in [
        (
            "dynamodb put_item us-east-1",
            "dynamodb.us-east-1.amazonaws.com",
        ),
        (
            "dynamodb get_item us-east-1",
            "dynamodb.us-east-1.amazonaws.com",
        ),
        (
            "dynamodb put_item us-west-2",
            "dynamodb.us-west-2.amazonaws.com",
        ),
        (
            "s3 put_object us-east-1",
            "rehearsal-bucket.s3.amazonaws.com",
        ),
        (
            "s3 list_objects_v2 us-east-1",
            "rehearsal-bucket.s3.amazonaws.com",
        ),
        (
            "s3 put_object_stream us-east-1",
            "rehearsal-bucket.s3.amazonaws.com",
        ),
        (
            "s3 get_object_stream us-east-1",
            "rehearsal-bucket.s3.amazonaws.com",
        ),
        (
            "sts get_caller_identity us-east-1",
            "sts.us-east-1.amazonaws.com",
        ),
    ] {
        let reply = boto.ok(call).await;
        assert_eq!(reply["host"], host, "{call}: {reply}");
        assert_eq!(reply["retries"], 0, "{call}: {reply}");
    }
    // moto does check: a call signed with another secret is refused, so the
    // calls above passed with the client's own signature.
    let reply = boto.call("dynamodb get_item us-east-1 secret=wrong").await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["status"], 403, "{reply}");
    // moto answers it in XML, which DynamoDB's JSON parser reads as no code.
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("<Code>SignatureDoesNotMatch</Code>")),
        "{reply}"
    );

    // Counted under the destination, in the region each host names.
    let before = forwarded(&proxy, "200", "aws", "us-west-2").await;
    boto.ok("dynamodb get_item us-west-2").await;
    assert_eq!(
        forwarded(&proxy, "200", "aws", "us-west-2").await,
        before + 1.0
    );

    // PutItem in us-east-1 fails, as botocore reads it, retried as its
    // standard mode retries a 503: 3 attempts, each one faulted.
    switch(&proxy, "put-use1", true).await;
    let reply = boto.call("dynamodb put_item us-east-1").await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["code"], "ServiceUnavailable", "{reply}");
    assert_eq!(reply["status"], 503, "{reply}");
    assert_eq!(reply["retries"], STANDARD_ATTEMPTS - 1, "{reply}");
    assert_eq!(proxy.injected("put-use1").await, STANDARD_ATTEMPTS);
    // GetItem, and PutItem in us-west-2, untouched.
    boto.ok("dynamodb get_item us-east-1").await;
    boto.ok("dynamodb put_item us-west-2").await;
    assert_eq!(
        proxy.injected("put-use1").await,
        STANDARD_ATTEMPTS,
        "only PutItem in us-east-1"
    );
    // The faults are counted in the region of the requests they hit.
    let faults = r#"faultline_faults_injected_total{kind="error",region="us-east-1",rule="put-use1",upstream="aws"}"#;
    assert_eq!(proxy.metric(faults).await, Some(STANDARD_ATTEMPTS as f64));
    switch(&proxy, "put-use1", false).await;
    boto.ok("dynamodb put_item us-east-1").await;

    // An S3 preset is an S3 error: S3's code and its two request ids.
    switch(&proxy, "s3-list", true).await;
    let reply = boto.call("s3 list_objects_v2 us-east-1").await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["exception"], "ClientError", "{reply}");
    assert_eq!(reply["code"], "SlowDown", "{reply}");
    assert_eq!(reply["status"], 503, "{reply}");
    assert_eq!(reply["retries"], STANDARD_ATTEMPTS - 1, "{reply}");
    assert_eq!(reply["request_id"].as_str().unwrap().len(), 16, "{reply}");
    assert_eq!(reply["host_id"].as_str().unwrap().len(), 64, "{reply}");
    assert_eq!(proxy.injected("s3-list").await, STANDARD_ATTEMPTS);
    boto.ok("s3 put_object us-east-1").await;
    switch(&proxy, "s3-list", false).await;

    // A streamed upload answered before its body is sent (it waits on
    // `100-continue`): each attempt gets the error, the body is sent
    // again from the start, and the upload goes through once the rule is off.
    switch(&proxy, "s3-put", true).await;
    let reply = boto.call("s3 put_object_stream us-east-1").await;
    assert_eq!(reply["code"], "InternalError", "{reply}");
    assert_eq!(reply["retries"], STANDARD_ATTEMPTS - 1, "{reply}");
    assert_eq!(proxy.injected("s3-put").await, STANDARD_ATTEMPTS);
    switch(&proxy, "s3-put", false).await;
    boto.ok("s3 put_object_stream us-east-1").await;
    boto.ok("s3 get_object_stream us-east-1").await;

    // A rule that reads the form body to find the operation, inside the
    // tunnel: the body is replayed whole (its hash is signed).
    switch(&proxy, "sts-denied", true).await;
    let reply = boto.call("sts get_caller_identity us-east-1").await;
    assert_eq!(reply["code"], "AccessDenied", "{reply}");
    assert_eq!(reply["retries"], 0, "{reply}");
    assert_eq!(proxy.injected("sts-denied").await, 1);
    switch(&proxy, "sts-denied", false).await;
    boto.ok("sts get_caller_identity us-east-1").await;

    // A name that says no region (an emulator's, sent on with
    // `connect_to`): counted in the region the request is signed for.
    let before = forwarded(&proxy, "200", "emulator", "us-west-2").await;
    let reply = boto
        .ok("dynamodb get_item us-west-2 endpoint=https://aws.emulator.test")
        .await;
    assert_eq!(reply["host"], "aws.emulator.test", "{reply}");
    assert_eq!(
        forwarded(&proxy, "200", "emulator", "us-west-2").await,
        before + 1.0,
        "the region from the SigV4 scope"
    );
    proxy.shutdown().await;
}
