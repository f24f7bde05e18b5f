//! `faultline ctl` against a running proxy, and SIGHUP reloading the
//! rules of a running `faultline run`.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

/// Runs `faultline ctl ARGS` off the runtime (the proxy it talks to runs on it).
async fn ctl(args: &[&str], token_env: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let token_env = token_env.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BIN);
        command
            .arg("ctl")
            .args(&args)
            .env_remove("FAULTLINE_ADMIN_TOKEN");
        if let Some(token) = token_env {
            command.env("FAULTLINE_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", stderr(out));
    stdout(out)
}

const RULES: &str = "[[rule]]\nname = \"use1-503\"\nenabled = false\n[rule.fault]\nkind = \"error\"\nstatus = 503\n";

#[tokio::test]
async fn ctl_drives_a_running_proxy() {
    let upstream = TestUpstream::start("orders-use1").await;
    let config = edge_config(&[&upstream], "watch_rules = false")
        .replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    let proxy = TestProxy::start(&config, RULES).await;
    let admin = proxy.admin_url();
    let edge = proxy.url("edge");
    let with_token = |verb: &[&str]| {
        let mut args = vec!["--admin", admin.as_str(), "--token", "s3cret"];
        args.extend_from_slice(verb);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |verb: &[&str]| {
        let args = with_token(verb);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl(&args, None).await
        }
    };

    let table = assert_ok(&run(&["rules"]).await);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME"), "{table}");
    assert!(
        header.contains("ENABLED") && header.contains("INJECTED"),
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["use1-503", "file", "no", "1"], "{table}");

    let enabled = assert_ok(&run(&["enable", "use1-503", "--ttl", "5m"]).await);
    assert!(enabled.starts_with("use1-503: enabled"), "{enabled}");
    assert!(enabled.contains("turns off in 4m"), "{enabled}");
    assert_eq!(get(&edge).await.status, StatusCode::SERVICE_UNAVAILABLE);

    assert_ok(&run(&["set", "use1-503", "--probability", "0"]).await);
    assert_eq!(get(&edge).await.status, StatusCode::OK);

    let raw = assert_ok(&run(&["--json", "rules"]).await);
    let rules: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(rules[0]["probability"], 0.0);
    assert_eq!(rules[0]["injected"], 1);

    assert_ok(&run(&["halt"]).await);
    let status = assert_ok(&run(&["status"]).await);
    assert!(status.contains("halted       YES"), "{status}");
    let refused = run(&["enable", "use1-503"]).await;
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("halted") && message.contains("409"),
        "{message}"
    );
    assert_ok(&run(&["resume"]).await);

    let reloaded = assert_ok(&run(&["reload"]).await);
    assert!(reloaded.starts_with("reloaded: 0 added"), "{reloaded}");

    let unknown = run(&["disable", "nope"]).await;
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("no rule is named \"nope\""));

    // The token may come from the environment; a wrong one is named as such.
    let from_env = ctl(&["--admin", &admin, "status"], Some("s3cret")).await;
    assert_ok(&from_env);
    let wrong = ctl(&["--admin", &admin, "status"], Some("guess")).await;
    assert!(!wrong.status.success());
    let message = stderr(&wrong);
    assert!(message.contains("refused the token"), "{message}");
    assert!(message.contains("FAULTLINE_ADMIN_TOKEN"), "{message}");
}

#[tokio::test]
async fn ctl_says_so_when_the_proxy_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("http://127.0.0.1:{port}");
    let out = ctl(&["--admin", &admin, "status"], None).await;
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!(
            "error: cannot reach faultline's admin API at {admin}"
        )),
        "{message}"
    );
    assert!(message.contains("refused"), "{message}");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_rule_files() {
    let upstream = TestUpstream::start("orders-use1").await;
    let dir = tempfile::tempdir().unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[proxy]\nwatch_rules = false\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:{port}\"\n\n[[upstream]]\nname = \"orders-use1\"\nurl = \"{}\"\n\n[[route]]\nlistener = \"edge\"\nupstream = \"orders-use1\"\n",
        upstream.url()
    );
    std::fs::write(dir.path().join("faultline.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c", "faultline.toml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let edge = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "faultline never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&edge).await.status, StatusCode::OK);

    let on = RULES.replace("enabled = false\n", "");
    std::fs::write(dir.path().join("rules/outage.toml"), on).unwrap();
    let hangup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&edge).await.status != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the rules");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = format!("http://127.0.0.1:{admin_port}");
    let status = assert_ok(&ctl(&["--admin", &admin, "--json", "status"], None).await);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_reload"]["trigger"], "SIGHUP");
    assert_eq!(child.try_wait().unwrap(), None, "SIGHUP stopped faultline");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn ctl_starts_follows_and_reports_a_scenario() {
    let upstream = TestUpstream::start("orders-use1").await;
    let rules = format!(
        "{RULES}\n[[scenario]]\nname = \"blip\"\ndescription = \"a short blip\"\nduration = \"20m\"\n[[scenario.step]]\nat = \"0s\"\ndescription = \"down\"\nenable = [\"use1-503\"]\n[[scenario.step]]\nat = \"10m\"\ndescription = \"back\"\ndisable = [\"use1-503\"]\n"
    );
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), &rules).await;
    let admin = proxy.admin_url();

    let list = assert_ok(&ctl(&["--admin", &admin, "scenario", "list"], None).await);
    assert!(list.contains("blip"), "{list}");
    assert!(list.contains("idle"), "{list}");

    // Traffic for as long as the run plays, so the report has something
    // to show; the sleep only paces it.
    let url = proxy.url("edge");
    let done = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut codes = Vec::new();
            while !done.load(Ordering::Relaxed) {
                codes.push(get(&url).await.status.as_u16());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            codes
        }
    });
    let args = [
        "--admin", &admin, "scenario", "start", "blip", "--speed", "600", "--follow",
    ];
    let out = assert_ok(&ctl(&args, None).await);
    done.store(true, Ordering::Relaxed);
    assert!(out.contains("blip: running"), "{out}");
    assert!(out.contains("completed"), "{out}");
    assert!(out.contains("STEP"), "{out}");
    assert!(out.contains("down"), "{out}");
    let codes = traffic.await.unwrap();
    assert!(codes.contains(&503), "{codes:?}");

    let status = assert_ok(&ctl(&["--admin", &admin, "scenario", "status", "blip"], None).await);
    assert!(status.starts_with("blip: completed"), "{status}");
    let report = assert_ok(
        &ctl(
            &["--admin", &admin, "--json", "scenario", "report", "blip"],
            None,
        )
        .await,
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["state"], "completed");
    assert_eq!(report["steps"].as_array().unwrap().len(), 2);

    let stop = ctl(&["--admin", &admin, "scenario", "stop", "blip"], None).await;
    assert!(!stop.status.success());
    assert!(
        stderr(&stop).contains("scenario \"blip\" is not running (409 scenario_not_running)"),
        "{}",
        stderr(&stop)
    );
}
