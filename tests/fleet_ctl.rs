//! `faultline ctl` driving a fleet (SPEC §11, README "Runtime control"):
//! `--admin a,b,c` and `--fleet HOST:PORT` fan every verb out to real
//! proxies on loopback, name a replica that is down and exit non-zero
//! after acting on the others, merge the replicas' scenario reports
//! exactly, arm one `start_at` on every replica (`scenario start --at`),
//! follow a run through `scheduled`, and show the drift between the
//! replicas' step starts. Every replica is a real faultline: no stand-in
//! API is needed, since a `start_at` already past makes a replica report a
//! chosen step start exactly.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::ToSocketAddrs;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

/// `tea` for the switch verbs; `fail` and `slow` by path, `fail` driven by
/// the `drill` scenario.
const RULES: &str = r#"
[[rule]]
name = "tea"
enabled = false
[rule.match]
path = "/tea"
[rule.fault]
kind = "error"
status = 418

[[rule]]
name = "fail"
enabled = false
[rule.match]
path = "/fail"
[rule.fault]
kind = "error"
status = 503

[[rule]]
name = "slow"
[rule.match]
path = "/slow"
[rule.fault]
kind = "latency"
delay = "250ms"

[[scenario]]
name = "drill"
duration = "1h"
[[scenario.step]]
at = "0s"
description = "fail on"
enable = ["fail"]

[[scenario]]
name = "blip"
duration = "20m"
[[scenario.step]]
at = "0s"
enable = ["tea"]
[[scenario.step]]
at = "10m"
disable = ["tea"]

[[scenario]]
name = "sync"
duration = "1h"
[[scenario.step]]
at = "0s"
enable = ["tea"]
[[scenario.step]]
at = "1m"
set = { "tea" = { probability = 0.5 } }
"#;

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `faultline ctl ARGS` off the runtime (the proxies it talks to run on it).
async fn ctl(args: &[&str]) -> Ran {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("ctl")
            .args(&args)
            .env_remove("FAULTLINE_ADMIN")
            .env_remove("FAULTLINE_FLEET")
            .env_remove("FAULTLINE_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn fleet(n: usize, upstream: &TestUpstream) -> Vec<TestProxy> {
    let mut proxies = Vec::new();
    for _ in 0..n {
        proxies
            .push(TestProxy::start(&edge_config(&[upstream], "watch_rules = false"), RULES).await);
    }
    proxies
}

async fn api(proxy: &TestProxy, method: &str, path: &str) -> Value {
    let reply = proxy.admin(method, path, None).await;
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", reply.text()))
}

/// Checks one fleet command's output when `down` is among the replicas:
/// every replica named, the down one with its reason, exit status 1.
fn named_down(ran: &Ran, up: &[String], down: &str) {
    assert_eq!(
        ran.code,
        Some(1),
        "stdout: {}\nstderr: {}",
        ran.stdout,
        ran.stderr
    );
    for url in up {
        let row = ran.stdout.lines().find(|l| l.starts_with(url.as_str()));
        let row = row.unwrap_or_else(|| panic!("no line for {url}:\n{}", ran.stdout));
        assert!(!row.contains("error:"), "{row}");
    }
    let row = ran
        .stdout
        .lines()
        .find(|l| l.starts_with(down))
        .unwrap_or_else(|| panic!("{}", ran.stdout));
    assert!(
        row.contains("error: unreachable") && row.contains("refused"),
        "{row}"
    );
    let total = up.len() + 1;
    assert!(
        ran.stderr
            .starts_with(&format!("error: 1 of {total} replicas failed: {down}\n")),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains(&format!("  {down}: cannot reach faultline's admin API")),
        "{}",
        ran.stderr
    );
}

#[tokio::test]
async fn every_verb_reaches_every_replica_and_names_the_one_down() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(3, &upstream).await;
    let (down_addr, _keep) = refused_addr();
    let down = format!("http://{down_addr}");
    let up: Vec<String> = proxies.iter().map(TestProxy::admin_url).collect();
    // The one down sits among the others: the command still acts on those after it.
    let list = format!("{},{down},{},{}", up[0], up[1], up[2]);
    let run = |verb: &'static [&'static str]| {
        let list = list.clone();
        async move {
            let mut args = vec!["--admin", list.as_str()];
            args.extend_from_slice(verb);
            ctl(&args).await
        }
    };
    let each = async |path: &str, key: &str| -> Vec<Value> {
        let mut values = Vec::new();
        for proxy in &proxies {
            values.push(api(proxy, "GET", path).await[key].clone());
        }
        values
    };

    let status = run(&["status"]).await;
    named_down(&status, &up, &down);
    assert!(status.stdout.starts_with("REPLICA "), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("agree     yes, on 3 replicas (3 of 4 answered): version "),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("halted no, rules 1 of 3 enabled, running none"),
        "{}",
        status.stdout
    );

    let rules = run(&["rules"]).await;
    named_down(&rules, &up, &down);
    assert!(rules.stdout.contains("NAME  SOURCE"), "{}", rules.stdout);
    let tea: Vec<&str> = rules
        .stdout
        .lines()
        .find(|l| l.starts_with("tea "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(tea[..4], ["tea", "file", "no", "1"], "{}", rules.stdout);
    assert_eq!(tea.last(), Some(&"yes"), "{}", rules.stdout);

    named_down(&run(&["rule", "tea"]).await, &up, &down);

    let enabled = run(&["enable", "tea", "--ttl", "5m"]).await;
    named_down(&enabled, &up, &down);
    assert!(
        enabled.stdout.contains("tea: enabled, probability 1"),
        "{}",
        enabled.stdout
    );
    assert_eq!(each("/api/rules/tea", "enabled").await, [true, true, true]);

    named_down(
        &run(&["set", "tea", "--probability", "0.5"]).await,
        &up,
        &down,
    );
    assert_eq!(each("/api/rules/tea", "probability").await, [0.5, 0.5, 0.5]);

    let disabled = run(&["disable", "tea"]).await;
    named_down(&disabled, &up, &down);
    assert!(
        disabled.stdout.contains(
            "agree     yes, on 3 replicas (3 of 4 answered): enabled no, probability 0.5"
        ),
        "{}",
        disabled.stdout
    );
    assert_eq!(
        each("/api/rules/tea", "enabled").await,
        [false, false, false]
    );

    let reloaded = run(&["reload"]).await;
    named_down(&reloaded, &up, &down);
    assert!(
        reloaded.stdout.contains("rules in force 3"),
        "{}",
        reloaded.stdout
    );

    let listed = run(&["scenario", "list"]).await;
    named_down(&listed, &up, &down);
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with("drill ") && l.contains("idle")),
        "{}",
        listed.stdout
    );

    let started = run(&["scenario", "start", "drill"]).await;
    named_down(&started, &up, &down);
    assert!(
        started
            .stdout
            .contains("agree     yes, on 3 replicas (3 of 4 answered): state running"),
        "{}",
        started.stdout
    );
    assert_eq!(each("/api/scenarios/drill", "state").await, ["running"; 3]);
    let status = run(&["scenario", "status", "drill"]).await;
    named_down(&status, &up, &down);
    assert!(status.stdout.contains("step 1/1"), "{}", status.stdout);

    let report = run(&["scenario", "report", "drill"]).await;
    named_down(&report, &up, &down);
    assert!(
        report.stdout.contains("merged from 3 of 4 replicas"),
        "{}",
        report.stdout
    );

    named_down(&run(&["scenario", "stop", "drill"]).await, &up, &down);
    assert_eq!(each("/api/scenarios/drill", "state").await, ["stopped"; 3]);

    // The kill switch reaches every replica that can be reached, and says
    // which it could not.
    let halted = run(&["halt"]).await;
    named_down(&halted, &up, &down);
    assert!(
        halted
            .stdout
            .contains(&format!("halted on 3 of 4 replicas: every fault is off; enabling is refused until `faultline ctl resume`\nNOT halted: {down}\n")),
        "{}",
        halted.stdout
    );
    assert_eq!(each("/api/status", "halted").await, [true, true, true]);
    named_down(&run(&["resume"]).await, &up, &down);
    assert_eq!(each("/api/status", "halted").await, [false, false, false]);

    // All up: exit 0. A replica switched apart is shown as a disagreement.
    let all = up.join(",");
    let status = ctl(&["--admin", &all, "status"]).await;
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert!(
        status.stdout.contains("agree     yes, on 3 replicas: "),
        "{}",
        status.stdout
    );
    api(&proxies[1], "POST", "/api/rules/tea/enable").await;
    let rules = ctl(&["--admin", &all, "rules"]).await;
    assert_eq!(rules.code, Some(0), "{}", rules.stderr);
    let tea = rules
        .stdout
        .lines()
        .find(|l| l.starts_with("tea "))
        .unwrap();
    assert!(
        tea.contains(" 1/3 ") && tea.ends_with("NO"),
        "{}",
        rules.stdout
    );
    assert!(
        rules
            .stdout
            .contains("agree     NO: tea enabled (no on 2, yes on 1)\n"),
        "{}",
        rules.stdout
    );

    api(&proxies[0], "POST", "/api/scenarios/drill/start").await;
    let listed = ctl(&["--admin", &all, "scenario", "list"]).await;
    let drill = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("drill "))
        .unwrap();
    assert!(drill.contains("running 1, stopped 2"), "{}", listed.stdout);
    assert!(
        listed
            .stdout
            .contains("agree     NO: drill (running on 1, stopped on 2)\n"),
        "{}",
        listed.stdout
    );
}

#[tokio::test]
async fn json_gives_each_replica_its_result_or_error() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(2, &upstream).await;
    let (down_addr, _keep) = refused_addr();
    let down = format!("http://{down_addr}");
    let list = format!(
        "{},{},{down}",
        proxies[0].admin_url(),
        proxies[1].admin_url()
    );
    let ran = ctl(&["--admin", &list, "--json", "status"]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let document: Value = serde_json::from_str(&ran.stdout).unwrap();
    let replicas = document["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3);
    for (reply, proxy) in replicas.iter().zip(&proxies) {
        assert_eq!(reply["replica"], proxy.admin_url());
        assert_eq!(reply["ok"], true);
        assert_eq!(reply["result"]["halted"], false);
    }
    assert_eq!(replicas[2]["replica"], down);
    assert_eq!(replicas[2]["ok"], false);
    let error = replicas[2]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("cannot reach faultline's admin API at {down}")),
        "{error}"
    );
    // Nothing runs, so there is no drift to show.
    assert_eq!(document["drift"], Value::Null);
    assert!(
        ran.stderr
            .starts_with(&format!("error: 1 of 3 replicas failed: {down}")),
        "{}",
        ran.stderr
    );

    // An API error is a replica's failure too, with its status and code.
    let all = format!("{},{}", proxies[0].admin_url(), proxies[1].admin_url());
    let ran = ctl(&["--admin", &all, "--json", "enable", "nope"]).await;
    assert_eq!(ran.code, Some(1));
    let document: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(document["replicas"][0]["status"], 404);
    assert_eq!(document["replicas"][1]["code"], "rule_not_found");
}

#[tokio::test]
async fn a_fleet_name_reaches_every_address_it_resolves_to() {
    let upstream = TestUpstream::start("orders-use1").await;
    let first = TestProxy::start(&edge_config(&[&upstream], ""), RULES).await;
    let port = first.running().admin_addr().port();
    // A replica on every address `localhost` has here (127.0.0.1, and ::1
    // where the resolver gives it too), all on one port as a headless
    // Service's pods are: the fleet is exactly those.
    let mut expected = vec![first.admin_url()];
    let mut others = Vec::new();
    for addr in ("localhost", port).to_socket_addrs().unwrap() {
        let url = format!("http://{addr}");
        if expected.contains(&url) {
            continue;
        }
        let config = edge_config(&[&upstream], "").replace(
            "listen = \"127.0.0.1:0\"\n\n[proxy]",
            &format!("listen = \"{addr}\"\n\n[proxy]"),
        );
        others.push(TestProxy::start(&config, RULES).await);
        expected.push(url);
    }
    let fleet = format!("localhost:{port}");
    let ran = ctl(&["--fleet", &fleet, "--json", "status"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let document: Value = serde_json::from_str(&ran.stdout).unwrap();
    let mut seen: Vec<String> = document["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "{r}");
            r["replica"].as_str().unwrap().to_owned()
        })
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);

    let halted = ctl(&["--fleet", &fleet, "halt"]).await;
    assert_eq!(halted.code, Some(0), "{}", halted.stderr);
    assert_eq!(api(&first, "GET", "/api/status").await["halted"], true);

    let unknown = ctl(&["--fleet", "no-such-replica.invalid:9000", "status"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown
            .stderr
            .starts_with("error: --fleet no-such-replica.invalid:9000: cannot resolve the name"),
        "{}",
        unknown.stderr
    );
    let both = ctl(&["--fleet", &fleet, "--admin", &first.admin_url(), "status"]).await;
    assert_eq!(both.code, Some(2), "{}", both.stderr);
}

#[tokio::test]
async fn the_merged_report_is_what_clients_saw_across_the_replicas() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(3, &upstream).await;
    let all: Vec<String> = proxies.iter().map(TestProxy::admin_url).collect();
    let all = all.join(",");
    let started = ctl(&["--admin", &all, "scenario", "start", "drill"]).await;
    assert_eq!(started.code, Some(0), "{}", started.stderr);
    for proxy in &proxies {
        wait_until("the drill's first step", async || {
            api(proxy, "GET", "/api/scenarios/drill").await["run"]["current_step"]["index"] == 0
        })
        .await;
    }

    // 50 requests a replica; 2, 0 and 3 of them fail (503), and one on the
    // second replica waits 250 ms. That replica's own p99 is slow; of the
    // 150 together, the 149th is fast. Averaging the replicas' p99s would
    // say about 85 ms, taking the worst 250 ms; the merged histogram says
    // what the clients saw.
    let plan = [(2, 0), (0, 1), (3, 0)];
    let mut sent = Vec::new();
    let (mut requests, mut errors) = (0, 0);
    let mut waits = Vec::new();
    for (proxy, (fails, slow)) in proxies.iter().zip(plan) {
        let edge = proxy.url("edge");
        for i in 0..50 {
            let path = if i < fails {
                "/fail"
            } else if i < fails + slow {
                "/slow"
            } else {
                "/"
            };
            let began = std::time::Instant::now();
            let reply = get(&format!("{edge}{path}")).await;
            waits.push(began.elapsed());
            requests += 1;
            if reply.status.is_server_error() {
                errors += 1;
            }
        }
        sent.push(50);
    }
    assert_eq!((requests, errors), (150, 5));
    waits.sort();
    let client_p99 = waits[148].as_secs_f64() * 1e3;
    // Each replica has counted what it answered (a request is counted as it ends).
    for (proxy, n) in proxies.iter().zip(&sent) {
        wait_until("the report to count every request", async || {
            api(proxy, "GET", "/api/scenarios/drill/report").await["steps"][0]["total"]["requests"]
                == *n
        })
        .await;
    }

    let ran = ctl(&["--admin", &all, "--json", "scenario", "report", "drill"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let document: Value = serde_json::from_str(&ran.stdout).unwrap();
    let merged = &document["merged"]["steps"][0]["total"];
    assert_eq!(merged["requests"], requests);
    assert_eq!(merged["errors"], errors);
    assert_eq!(document["merged"]["steps"][0]["faults"]["fail"], 5);
    let p99 = merged["p99_ms"].as_f64().unwrap();
    let p99_of = |i: usize| {
        document["replicas"][i]["result"]["steps"][0]["total"]["p99_ms"]
            .as_f64()
            .unwrap()
    };
    assert!(
        p99_of(1) >= 240.0,
        "the slow replica's own p99: {}",
        p99_of(1)
    );
    assert!(
        p99 < 100.0 && client_p99 < 100.0,
        "merged p99 {p99} ms, the clients' {client_p99} ms"
    );
    let averaged = (p99_of(0) + p99_of(1) + p99_of(2)) / 3.0;
    assert!(
        averaged > 80.0 && p99 < averaged,
        "merged {p99}, averaged {averaged}"
    );
    // The histogram it came from is the replicas' histograms summed.
    let buckets = |total: &Value| -> Vec<(u64, u64)> {
        serde_json::from_value(total["latency_us"].clone()).unwrap()
    };
    let summed: u64 = buckets(merged).iter().map(|b| b.1).sum();
    assert_eq!(summed, 150);

    let text = ctl(&["--admin", &all, "scenario", "report", "drill"]).await;
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert!(
        text.stdout.contains("merged from 3 of 3 replicas"),
        "{}",
        text.stdout
    );
    let step = text.stdout.lines().find(|l| l.starts_with("1 ")).unwrap();
    let cells: Vec<&str> = step.split_whitespace().collect();
    assert!(cells.contains(&"150") && cells.contains(&"5"), "{step}");
}

#[tokio::test]
async fn start_at_is_one_instant_for_every_replica() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(2, &upstream).await;
    let list = admins(&proxies);
    let before = SystemTime::now();
    let ran = ctl(&[
        "--admin", &list, "--json", "scenario", "start", "drill", "--at", "+30s", "--speed", "60",
    ])
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let document: Value = serde_json::from_str(&ran.stdout).unwrap();
    let armed: Vec<&Value> = document["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["result"])
        .collect();
    assert_eq!(armed.len(), 2);
    // Both replicas armed the run for the one instant ctl computed once.
    let start_at = armed[0]["run"]["start_at"].as_str().unwrap().to_owned();
    for view in &armed {
        assert_eq!(view["state"], "scheduled", "{view}");
        assert_eq!(view["run"]["start_at"], start_at.as_str());
        assert_eq!(view["run"]["speed"], 60.0);
    }
    let at = humantime::parse_rfc3339(&start_at).unwrap();
    let ahead = at.duration_since(before).unwrap();
    assert!(
        ahead >= Duration::from_secs(30) && ahead < Duration::from_secs(40),
        "{ahead:?}"
    );
    for proxy in &proxies {
        let view = api(proxy, "GET", "/api/scenarios/drill").await;
        assert_eq!(view["state"], "scheduled");
        assert_eq!(view["run"]["start_at"], start_at.as_str());
    }

    // The tables say when it starts: one line per replica, and one proxy's.
    let shown = ctl(&["--admin", &list, "scenario", "status", "drill"]).await;
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    for proxy in &proxies {
        let row = shown
            .stdout
            .lines()
            .find(|l| l.starts_with(&proxy.admin_url()))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells[1..6],
            ["scheduled", "0/1", "60x", start_at.as_str(), "starts"]
        );
        assert!(cells[6] == "in", "{row}");
    }
    assert!(
        shown
            .stdout
            .contains("agree     yes, on 2 replicas: state scheduled, step 0/1\n"),
        "{}",
        shown.stdout
    );
    let one = ctl(&[
        "--admin",
        &proxies[0].admin_url(),
        "scenario",
        "status",
        "drill",
    ])
    .await;
    assert!(
        one.stdout.starts_with("drill: scheduled\n"),
        "{}",
        one.stdout
    );
    assert!(
        one.stdout
            .contains(&format!("  run     at 60x from {start_at} (in ")),
        "{}",
        one.stdout
    );
    let listed = ctl(&["--admin", &list, "scenario", "list"]).await;
    assert!(
        listed.stdout.contains("drill (scheduled)"),
        "{}",
        listed.stdout
    );

    // An exact instant is sent to the millisecond.
    let tomorrow = humantime::format_rfc3339_seconds(before + Duration::from_secs(86_400));
    let tomorrow = tomorrow.to_string();
    let exact = ctl(&[
        "--admin",
        &proxies[0].admin_url(),
        "--json",
        "scenario",
        "start",
        "blip",
        "--at",
        &tomorrow,
    ])
    .await;
    assert_eq!(exact.code, Some(0), "{}", exact.stderr);
    let view: Value = serde_json::from_str(&exact.stdout).unwrap();
    assert_eq!(view["state"], "scheduled");
    assert_eq!(view["run"]["start_at"], tomorrow.replace('Z', ".000Z"));
    let bad = ctl(&[
        "--admin",
        &proxies[0].admin_url(),
        "scenario",
        "start",
        "drill",
        "--at",
        "noon",
    ])
    .await;
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("--at \"noon\""), "{}", bad.stderr);
}

#[tokio::test]
async fn a_replica_that_never_answers_is_cut_off_at_the_timeout() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(2, &upstream).await;
    // Bound and listening, never accepting: connecting succeeds (the
    // kernel's backlog), then no answer comes.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let list = format!(
        "{},{hung_url},{}",
        proxies[0].admin_url(),
        proxies[1].admin_url()
    );
    let ran = ctl(&["--admin", &list, "--timeout", "500ms", "halt"]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "{hung_url}: cannot reach faultline's admin API at {hung_url}: no answer within 500ms"
        )),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stdout.contains(&format!("NOT halted: {hung_url}\n")),
        "{}",
        ran.stdout
    );
    for proxy in &proxies {
        assert_eq!(api(proxy, "GET", "/api/status").await["halted"], true);
    }
}

/// `HH:MM:SS.mmm` of `at` in UTC, as `ctl status` shows a step's start.
fn time_of_day(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()[11..23].to_owned()
}

#[tokio::test]
async fn status_shows_the_drift_between_step_starts() {
    // Real replicas, each started at a `start_at` already past, a few ms
    // apart: each joins late and reports the step's scheduled instant
    // (anchor + offset), so the drift is exactly the ms chosen here,
    // whatever this machine's timing. No stand-in is needed.
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(4, &upstream).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // Eleven minutes ago, on a whole second: blip's step 2 (at 10m) began
    // a minute ago, and the run lasts nine more.
    let anchor = UNIX_EPOCH + Duration::from_secs(now.as_secs() - 11 * 60);
    let start = |proxy: &TestProxy, at: SystemTime| {
        let (admin, at) = (
            proxy.admin_url(),
            humantime::format_rfc3339_millis(at).to_string(),
        );
        async move {
            let ran = ctl(&["--admin", &admin, "scenario", "start", "blip", "--at", &at]).await;
            assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        }
    };
    for (proxy, late_ms) in proxies.iter().zip([0, 12, 3]) {
        start(proxy, anchor + Duration::from_millis(late_ms)).await;
    }
    let three = admins(&proxies[..3]);
    let ran = ctl(&["--admin", &three, "status"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let second = ran
        .stdout
        .lines()
        .find(|l| l.starts_with(&proxies[1].admin_url()))
        .unwrap();
    let step_2 = anchor + Duration::from_secs(600);
    assert!(
        second.ends_with(&format!(
            "blip step 2  {}",
            time_of_day(step_2 + Duration::from_millis(12))
        )),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("running blip step 2\n"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("drift     12 ms between the starts of blip step 2 on 3 replicas\n"),
        "{}",
        ran.stdout
    );
    let json = ctl(&["--admin", &three, "--json", "status"]).await;
    let document: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        document["drift"],
        serde_json::json!({ "ms": 12, "scenario": "blip", "step": 1, "replicas": 3 })
    );

    // One replica a step behind (anchored a minute ago): they disagree,
    // and drift is within a step.
    start(&proxies[3], anchor + Duration::from_secs(10 * 60)).await;
    let ran = ctl(&["--admin", &admins(&proxies), "status"]).await;
    assert!(
        ran.stdout
            .contains("running (blip step 2 on 3, blip step 1 on 1)"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("drift     12 ms"), "{}", ran.stdout);
}

/// The issue's test: `ctl --admin a,b,c scenario start --at` arms one run on
/// three replicas for one instant; they start it, and step to the next
/// step, together, as their status shows.
#[tokio::test]
async fn an_anchored_start_plays_in_step_on_every_replica() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(3, &upstream).await;
    let all = admins(&proxies);
    // At 60x, `sync`'s second step (at 1m) is due a second after the start.
    let started = ctl(&[
        "--admin", &all, "scenario", "start", "sync", "--at", "+3s", "--speed", "60",
    ])
    .await;
    assert_eq!(started.code, Some(0), "{}", started.stderr);
    assert!(
        started
            .stdout
            .contains("agree     yes, on 3 replicas: state scheduled, step 0/2\n"),
        "{}",
        started.stdout
    );
    let start_at = api(&proxies[0], "GET", "/api/scenarios/sync").await["run"]["start_at"].clone();
    for proxy in &proxies {
        wait_until("the second step", async || {
            let status = api(proxy, "GET", "/api/status").await;
            status["runs"][0]["step"] == 1
        })
        .await;
    }

    let json = ctl(&["--admin", &all, "--json", "status"]).await;
    assert_eq!(json.code, Some(0), "{}", json.stderr);
    let document: Value = serde_json::from_str(&json.stdout).unwrap();
    let anchor = humantime::parse_rfc3339(start_at.as_str().unwrap()).unwrap();
    let due = u64::try_from(
        (anchor + Duration::from_secs(1))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for reply in document["replicas"].as_array().unwrap() {
        let run = &reply["result"]["runs"][0];
        assert_eq!(run["name"], "sync", "{reply}");
        assert_eq!(run["start_at"], start_at, "{reply}");
        // The step began when it was due on the wall clock, never before
        // (how late the timer was is what drift compares).
        let began = run["step_started_unix_ms"].as_u64().unwrap();
        assert!((due..due + 1000).contains(&began), "{began} vs due {due}");
    }
    let drift = &document["drift"];
    assert_eq!(
        (&drift["scenario"], &drift["step"], &drift["replicas"]),
        (&Value::from("sync"), &Value::from(1), &Value::from(3)),
        "{drift}"
    );
    assert!(drift["ms"].as_u64().unwrap() <= 50, "{drift}");

    let text = ctl(&["--admin", &all, "status"]).await;
    assert!(
        text.stdout.contains("running sync step 2\n")
            && text.stdout.contains("drift     ")
            && text
                .stdout
                .contains(" between the starts of sync step 2 on 3 replicas\n"),
        "{}",
        text.stdout
    );
    let states = ctl(&["--admin", &all, "scenario", "status", "sync"]).await;
    assert!(
        states
            .stdout
            .contains("agree     yes, on 3 replicas: state running, step 2/2\n"),
        "{}",
        states.stdout
    );
    let stopped = ctl(&["--admin", &all, "scenario", "stop", "sync"]).await;
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
}

#[tokio::test]
async fn follow_watches_the_run_on_every_replica_then_merges_the_report() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxies = fleet(2, &upstream).await;
    let all = format!("{},{}", proxies[0].admin_url(), proxies[1].admin_url());
    // 20 minutes at 600x: two seconds.
    let args = [
        "--admin", &all, "scenario", "start", "blip", "--speed", "600", "--follow",
    ];
    let ran = ctl(&args).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("state running"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("state completed, step 2/2"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("merged from 2 of 2 replicas"),
        "{}",
        ran.stdout
    );
    for proxy in &proxies {
        assert_eq!(
            api(proxy, "GET", "/api/scenarios/blip").await["state"],
            "completed"
        );
    }

    // Anchored a second ahead, the run is `scheduled` first: followed
    // through the wait, on the fleet and on one replica alike.
    let args = [
        "--admin", &all, "scenario", "start", "blip", "--speed", "600", "--at", "+1s", "--follow",
    ];
    let ran = ctl(&args).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("state scheduled"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("state completed, step 2/2"),
        "{}",
        ran.stdout
    );
    let one = proxies[0].admin_url();
    let args = [
        "--admin", &one, "scenario", "start", "blip", "--speed", "600", "--at", "+1s", "--follow",
    ];
    let ran = ctl(&args).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("  scheduled for "), "{}", ran.stdout);
    assert!(ran.stdout.contains("left\n"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("scenario blip: completed at 600x"),
        "{}",
        ran.stdout
    );
}

/// Every proxy's admin URL, comma-separated, for `--admin`.
fn admins(proxies: &[TestProxy]) -> String {
    let urls: Vec<String> = proxies.iter().map(TestProxy::admin_url).collect();
    urls.join(",")
}
