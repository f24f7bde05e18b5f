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
            .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
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

/// The step rows of regional_failover's table: (index, use1 tried, usw2 answered, lost).
fn step_rows(stdout: &str) -> Vec<(usize, u64, u64, u64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let index: usize = line.split_whitespace().next()?.parse().ok()?;
            // calls, use1 try, use1 fail, usw2 ans, lost, p50 (2 words), p99 (2 words)
            let tail: Vec<&str> = line.split_whitespace().rev().take(9).collect();
            let number = |i: usize| tail[i].parse::<u64>().unwrap();
            Some((index, number(7), number(5), number(4)))
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
    let indexes: Vec<usize> = rows.iter().map(|r| r.0).collect();
    assert_eq!(
        indexes,
        (0..8).collect::<Vec<_>>(),
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
}

#[test]
fn regional_failover_fails_when_faultline_is_not_there() {
    let output = Command::new(example("regional_failover"))
        .args([
            "--proxy",
            "http://127.0.0.1:1",
            "--admin",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
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
