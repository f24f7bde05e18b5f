//! The runnable examples, run as the README runs them: on their own (they
//! start the demo in-process) and against a running `faultline demo`.
//! `cargo test` builds them next to the test binaries.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

mod support;

use support::example;

const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");

fn run(name: &str, args: &[&str]) -> (Output, String) {
    let output = Command::new(example(name))
        .args(args)
        .env_remove("FAULTLINE_ADMIN")
        .env_remove("FAULTLINE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (output, stdout)
}

/// `faultline demo` on free ports, and the proxy and admin URLs it printed.
struct RunningDemo {
    child: Child,
    proxy: String,
    admin: String,
}

impl RunningDemo {
    fn start() -> RunningDemo {
        let mut child = Command::new(FAULTLINE)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--dns",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut field = |name: &str| {
            lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|line| line.trim().strip_prefix(name).map(|r| r.trim().to_owned()))
                .unwrap_or_else(|| panic!("the demo printed no {name} line"))
        };
        let proxy = field("proxy");
        let metrics = field("metrics");
        let admin = metrics.trim_end_matches("/metrics").to_owned();
        RunningDemo {
            child,
            proxy,
            admin,
        }
    }
}

impl Drop for RunningDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The step rows of regional_failover's table: (step, use1 tried, usw2 answered, lost).
fn step_rows(stdout: &str) -> Vec<(usize, u64, u64, u64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let step: usize = line.split_whitespace().next()?.parse().ok()?;
            // From the right: p99 and p50 ("12 ms", or "-" without calls),
            // then lost, usw2 ans, use1 fail, use1 try, calls.
            let mut words: Vec<&str> = line.split_whitespace().collect();
            for _ in 0..2 {
                if words.pop() == Some("ms") {
                    words.pop();
                }
            }
            let mut number = || words.pop().and_then(|w| w.parse::<u64>().ok());
            let lost = number()?;
            let west = number()?;
            let _east_failed_share = number();
            let tried = number()?;
            Some((step, tried, west, lost))
        })
        .collect()
}

#[test]
fn regional_failover_plays_the_lambda_outage_and_the_failover_holds() {
    let (_, stdout) = run("regional_failover", &["--speed", "2400"]);
    assert!(
        stdout.contains("scenario:    us-east-1-lambda-capacity (4h) at 2400x"),
        "{stdout}"
    );
    let rows = step_rows(&stdout);
    let steps: Vec<usize> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        steps,
        (1..=8).collect::<Vec<_>>(),
        "a row per step:\n{stdout}"
    );
    for description in [
        "capacity subsystem starts failing",
        "plateau: most invocations throttled",
        "all clear",
    ] {
        assert!(stdout.contains(description), "{description}:\n{stdout}");
    }
    assert!(
        rows.iter().map(|r| r.2).sum::<u64>() > 0,
        "us-west-2 answered some calls:\n{stdout}"
    );
    assert!(stdout.contains("\nscenario completed after"), "{stdout}");
    assert!(stdout.contains("\nfailover held: "), "{stdout}");
}

#[test]
fn regional_failover_drives_a_running_demo() {
    let demo = RunningDemo::start();
    let (_, stdout) = run(
        "regional_failover",
        &[
            "--proxy",
            &demo.proxy,
            "--admin",
            &demo.admin,
            "--speed",
            "4000",
        ],
    );
    assert!(
        stdout.contains(&format!("through {}", demo.proxy)),
        "{stdout}"
    );
    assert_eq!(step_rows(&stdout).len(), 8, "{stdout}");
    assert!(stdout.contains("\nscenario completed after"), "{stdout}");

    // The scenario is over and undone: the demo's brownout is back on.
    let status = Command::new(FAULTLINE)
        .args(["ctl", "--admin", &demo.admin, "scenario", "status"])
        .arg("us-east-1-lambda-capacity")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("completed"), "{status}");
    let rule = Command::new(FAULTLINE)
        .args([
            "ctl",
            "--admin",
            &demo.admin,
            "--json",
            "rule",
            "use1-brownout-503",
        ])
        .output()
        .unwrap();
    let rule: serde_json::Value = serde_json::from_slice(&rule.stdout).unwrap();
    assert_eq!(rule["enabled"], true, "{rule}");
}

/// The one-line error and exit status 1 of a regional_failover run.
fn failure(args: &[&str]) -> String {
    let output = Command::new(example("regional_failover"))
        .args(args)
        .env_remove("FAULTLINE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn regional_failover_says_what_is_missing() {
    let nowhere = "http://127.0.0.1:1";
    let stderr = failure(&["--proxy", nowhere, "--admin", nowhere]);
    assert!(
        stderr.starts_with("error: cannot reach the proxy at http://127.0.0.1:1/us-east-1/lambda/"),
        "{stderr}"
    );

    let demo = RunningDemo::start();
    let stderr = failure(&[
        "--proxy",
        &demo.proxy,
        "--admin",
        &demo.admin,
        "--service",
        "nope",
    ]);
    assert!(
        stderr.starts_with(&format!(
            "error: faultline has no route for {}/us-east-1/nope/",
            demo.proxy
        )),
        "{stderr}"
    );
    let stderr = failure(&["--proxy", &demo.proxy, "--admin", nowhere]);
    assert!(
        stderr.starts_with("error: cannot start scenario us-east-1-lambda-capacity: cannot reach faultline's admin API at http://127.0.0.1:1"),
        "{stderr}"
    );
}

const ADMIN_CLIENT_STEPS: [&str; 6] = [
    "ok    before any fault: 0 of 40 calls failed",
    "ok    1. added charge-503 (error 503, expires ",
    "ok    2. probability 0.25: ",
    "ok    3. added charge-slow (latency 200ms): 0 of 10 calls failed, 10 marked",
    "ok    4. halted: 0 of 10 calls failed, 0 marked",
    "ok    5. deleted both rules",
];

#[test]
fn admin_client_drives_faults_from_rust() {
    let (_, stdout) = run("admin_client", &[]);
    for step in ADMIN_CLIENT_STEPS {
        assert!(stdout.contains(step), "{step}:\n{stdout}");
    }
    assert!(stdout.contains("(409 halted)"), "{stdout}");
    assert!(stdout.ends_with("all checks held; the proxy is as it was\n"));
}

#[test]
fn admin_client_drives_a_running_demo_and_leaves_it_as_it_was() {
    let demo = RunningDemo::start();
    let rules_before = Command::new(FAULTLINE)
        .args(["ctl", "--admin", &demo.admin, "--json", "rules"])
        .output()
        .unwrap();
    let (_, stdout) = run(
        "admin_client",
        &["--proxy", &demo.proxy, "--admin", &demo.admin],
    );
    for step in ADMIN_CLIENT_STEPS {
        assert!(stdout.contains(step), "{step}:\n{stdout}");
    }
    let rules_after = Command::new(FAULTLINE)
        .args(["ctl", "--admin", &demo.admin, "--json", "rules"])
        .output()
        .unwrap();
    let names = |output: &Output| -> Vec<String> {
        let rules: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        rules
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r["name"], r["enabled"]))
            .collect()
    };
    assert_eq!(names(&rules_before), names(&rules_after));
}

#[test]
fn admin_client_refuses_to_touch_a_halt_or_a_scenario_it_did_not_make() {
    let demo = RunningDemo::start();
    let ctl = |args: &[&str]| {
        let output = Command::new(FAULTLINE)
            .args(["ctl", "--admin", &demo.admin])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "ctl {args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let admin_client = || {
        let output = Command::new(example("admin_client"))
            .args(["--proxy", &demo.proxy, "--admin", &demo.admin])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    ctl(&["scenario", "start", "us-east-1-lambda-capacity"]);
    let stderr = admin_client();
    assert!(
        stderr.starts_with("error: scenario us-east-1-lambda-capacity is running"),
        "{stderr}"
    );
    assert!(ctl(&["scenario", "status", "us-east-1-lambda-capacity"]).contains("running"));

    ctl(&["halt"]);
    let stderr = admin_client();
    assert!(stderr.starts_with("error: faultline is halted"), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&ctl(&["--json", "status"])).unwrap();
    assert_eq!(status["halted"], true, "the halt is still there");
}

#[test]
fn grpc_call_calls_the_demos_health_service_through_the_proxy() {
    let (_, stdout) = run(
        "grpc_call",
        &[
            "--region",
            "us-west-2",
            "--service",
            "orders",
            "--calls",
            "3",
            "--expect",
            "OK",
        ],
    );
    assert_eq!(
        stdout.matches("OK SERVING from us-west-2").count(),
        3,
        "{stdout}"
    );
}

#[test]
fn grpc_call_drives_a_running_demo() {
    let demo = RunningDemo::start();
    let (_, stdout) = run(
        "grpc_call",
        &[
            "--proxy",
            &demo.proxy,
            "--region",
            "us-west-2",
            "--calls",
            "2",
            "--expect",
            "OK",
        ],
    );
    assert_eq!(
        stdout.matches("OK SERVING from us-west-2").count(),
        2,
        "{stdout}"
    );
}

/// `grpc_echo_server` on a free port; the URL it printed.
struct EchoServer {
    child: Child,
    url: String,
}

impl EchoServer {
    fn start() -> EchoServer {
        let mut child = Command::new(example("grpc_echo_server"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines
            .find_map(|line| line.ok()?.strip_prefix("listening on ").map(str::to_owned))
            .expect("grpc_echo_server printed no address");
        EchoServer {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grpc_bench_loads_the_echo_server_and_reports_calls_and_latency() {
    let server = EchoServer::start();
    let (_, stdout) = run("grpc_bench", &["--target", &server.url, "--check"]);
    assert!(
        stdout.starts_with("ok: /bench.Echo/Unary answered"),
        "{stdout}"
    );

    let (_, stdout) = run(
        "grpc_bench",
        &[
            "--target",
            &server.url,
            "--duration",
            "300ms",
            "--concurrency",
            "4",
            "--connections",
            "2",
        ],
    );
    // calls=N errors=0 seconds=S calls_per_sec=X p50_ms=Y p99_ms=Z
    let field = |name: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .parse()
            .unwrap()
    };
    assert!(field("calls") > 0.0, "{stdout}");
    assert_eq!(field("errors"), 0.0, "{stdout}");
    assert!(field("calls_per_sec") > 0.0, "{stdout}");
    assert!(field("p50_ms") > 0.0, "{stdout}");
    assert!(field("p99_ms") >= field("p50_ms"), "{stdout}");

    // Nothing listening: the check fails, and says why.
    let output = Command::new(example("grpc_bench"))
        .args(["--target", "http://127.0.0.1:1", "--check"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot connect"),
        "{output:?}"
    );
}
