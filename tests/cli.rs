//! The `faultline` binary: `check` output, `run` start-up errors, shutdown
//! draining, the demo, and memory that stays flat while 1 GiB streams through.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

fn faultline(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const CONFIG: &str = r#"[[listener]]
name = "edge"
listen = "127.0.0.1:0"

[[upstream]]
name = "orders-use1"
url = "http://127.0.0.1:9"
labels = { region = "us-east-1" }

[[route]]
listener = "edge"
upstream = "orders-use1"
"#;

#[test]
fn check_accepts_a_good_config_and_its_rules() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "faultline.toml", CONFIG);
    write(
        dir.path(),
        "rules/east/slow.toml",
        "[[rule]]\nname = \"slow\"\n[rule.match]\nlabels = { region = \"us-east-1\" }\n[rule.fault]\nkind = \"latency\"\ndelay = \"100ms\"\n",
    );
    let out = faultline(&["check"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "faultline.toml: ok (1 listeners, 1 upstreams, 1 routes, 1 rules, 0 scenarios)\n"
    );
}

#[test]
fn check_warns_when_refuse_can_only_reset() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "faultline.toml", CONFIG);
    write(
        dir.path(),
        "rules/down.toml",
        "[[rule]]\nname = \"down\"\n[rule.fault]\nkind = \"unavailable\"\nmode = \"refuse\"\n",
    );
    let out = faultline(&["check"], dir.path());
    assert!(out.status.success(), "a warning is not an error");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rules/down.toml: warning: rule \"down\": upstream \"orders-use1\" has no dedicated port (`listen`), so mode = \"refuse\" resets its connections instead"),
        "{stdout}"
    );
}

#[test]
fn check_prints_every_problem_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "faultline.toml", CONFIG);
    write(
        dir.path(),
        "rules/a.toml",
        "[[rule]]\nname = \"throttle\"\nprobability = 2.0\n[rule.match]\nupstreams = [\"lambda-use1\"]\n[rule.fault]\nkind = \"error\"\nstatus = 429\n",
    );
    write(
        dir.path(),
        "rules/b.toml",
        "[[rule]]\nname = \"throttle\"\n[rule.fault]\nkind = \"abort\"\nmode = \"reset\"\n\n[[rule]]\nname = \"slow\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"soon\"\n",
    );
    write(
        dir.path(),
        "rules/c.toml",
        "[[rule]]\nname = \"typo\"\nenabeld = true\n",
    );
    let out = faultline(&["check", "-c", "faultline.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "rules/a.toml:3:1: error: rule[0].probability: rule \"throttle\": probability 2 is not between 0 and 1",
            "rules/a.toml:5:14: error: rule[0].match.upstreams[0]: rule \"throttle\": no upstream is named \"lambda-use1\"",
            "rules/b.toml:2:1: error: rule \"throttle\" is defined twice; first at rules/a.toml:2:1",
            "rules/b.toml:11:1: error: rule[1].fault.delay: rule \"slow\": invalid duration \"soon\" (expected number at 0); expected a value like \"250ms\", \"1.5s\" or \"3h45m\"",
            "rules/c.toml:3:1: error: rule \"typo\": unknown field `enabeld`, expected one of `name`, `description`, `enabled`, `probability`, `match`, `fault`, `times`, `every`, `sticky`",
            "5 problems found",
        ],
        "{stdout}"
    );
}

#[test]
fn check_reports_config_problems_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = CONFIG.replace("upstream = \"orders-use1\"", "upstream = \"orders\"");
    write(dir.path(), "faultline.toml", &broken);
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let out = faultline(&["check"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "faultline.toml:12:1: error: route[0].upstream: route 0 names upstream \"orders\", which is not defined (known: orders-use1)\n1 problem found\n"
    );
}

#[test]
fn check_names_the_scenario_a_schema_error_is_in() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "faultline.toml", CONFIG);
    write(
        dir.path(),
        "rules/a.toml",
        "[[rule]]\nname = \"r1\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"1s\"\n\n[[scenario]]\nname = \"s1\"\nduration = \"1m\"\nbogus = 1\n[[scenario.step]]\nat = \"0s\"\nenable = [\"r1\"]\n",
    );
    let out = faultline(&["check"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "rules/a.toml:10:1: error: scenario \"s1\": unknown field `bogus`, expected one of `name`, `description`, `duration`, `start_at`, `step`, `guard`\n1 problem found\n"
    );
}

#[test]
fn check_refuses_a_body_file_that_is_a_fifo_or_too_large_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "faultline.toml", CONFIG);
    let fifo = dir.path().join("rules/pipe.json");
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(dir.path().join("rules/big.json"), vec![b' '; (1 << 20) + 1]).unwrap();
    let rule = |name: &str, file: &str| {
        format!("[[rule]]\nname = \"{name}\"\n[rule.fault]\nkind = \"error\"\nstatus = 503\nbody_file = \"{file}\"\n")
    };
    write(
        dir.path(),
        "rules/a.toml",
        &format!("{}{}", rule("piped", "pipe.json"), rule("big", "big.json")),
    );
    // A FIFO opened for reading would block until a writer came: `check` must not.
    let mut child = Command::new(BIN)
        .arg("check")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`faultline check` hangs on a FIFO body_file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with(
            "rules/a.toml:6:1: error: rule[0].fault.body_file: rule \"piped\": body_file "
        ) && lines[0].ends_with("pipe.json\" is not a regular file"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(
            "rules/a.toml:12:1: error: rule[1].fault.body_file: rule \"big\": body_file "
        ) && lines[1]
            .ends_with("big.json\" is larger than 1024 KiB, the most a body_file may hold"),
        "{stdout}"
    );
    assert_eq!(lines[2], "2 problems found");
}

#[test]
fn run_without_a_config_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = faultline(&["run", "-c", "missing.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("missing.toml: error: cannot read config file:"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until something accepts connections on `port`.
async fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("faultline exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "faultline never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `faultline run` in front of `upstream`; returns the child and its port.
async fn run_binary(upstream: &TestUpstream, dir: &Path) -> (Child, u16) {
    let port = free_port();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nshutdown_grace = \"5s\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:{port}\"\n\n[[upstream]]\nname = \"orders-use1\"\nurl = \"{}\"\n\n[[route]]\nlistener = \"edge\"\nupstream = \"orders-use1\"\n",
        upstream.url()
    );
    write(dir, "faultline.toml", &config);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    let log = std::fs::File::create(dir.join("faultline.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c", "faultline.toml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child).await;
    (child, port)
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_in_flight_requests() {
    let upstream = TestUpstream::start("orders-use1").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = run_binary(&upstream, dir.path()).await;

    let in_flight = tokio::spawn(get_owned(format!("http://127.0.0.1:{port}/sleep/3000")));
    wait_until("the request to reach the upstream", async || {
        upstream.requests() == 1
    })
    .await;
    terminate(&child);
    wait_until("new connections to be refused", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    // Refused while the request is still in flight: the listener closed
    // when shutdown started, not when the process exited.
    assert!(
        !in_flight.is_finished(),
        "the listener stayed open until the in-flight request finished"
    );
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request must finish");
    assert_eq!(reply.text(), "slept");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_gibibyte_streams_both_ways_in_flat_memory() {
    const GIB: u64 = 1 << 30;
    let upstream = TestUpstream::start("orders-use1").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = run_binary(&upstream, dir.path()).await;
    let before = vm_hwm_kib(child.id());

    // Download: count the bytes as they arrive, never holding the body.
    let response = client()
        .request(
            Request::get(format!("http://127.0.0.1:{port}/bytes/{GIB}"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, GIB);

    // Upload: a body generated on the fly; the upstream counts what it got.
    let upload = Request::post(format!("http://127.0.0.1:{port}/count"))
        .body(http_body_util::BodyExt::boxed(RepeatBody::new(GIB, true)))
        .unwrap();
    let reply = send(&client(), upload).await;
    assert_eq!(reply.text(), GIB.to_string());

    let after = vm_hwm_kib(child.id());
    terminate(&child);
    child.wait().unwrap();
    // Buffering would show as hundreds of MiB; streaming stays within a few.
    assert!(
        after < before + 64 * 1024,
        "peak memory grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn random_bytes_never_make_the_proxy_panic() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = TestUpstream::start("orders-use1").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = run_binary(&upstream, dir.path()).await;
    let mut rng = SmallRng::seed_from_u64(1);
    let prefixes: [&[u8]; 4] = [
        b"",
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for _ in 0..200 {
        let mut input = prefixes[rng.random_range(0..prefixes.len())].to_vec();
        let len = rng.random_range(0..512);
        input.extend((0..len).map(|_| rng.random::<u8>()));
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = stream.write_all(&input).await;
        let _ = stream.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut sink)).await;
    }
    let reply = get(&format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(reply.status, 200, "the proxy must still serve");
    terminate(&child);
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("faultline.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn the_demo_starts_and_shows_one_region_browning_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--rules",
            "no-such-dir",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (proxy, dns) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let mut field = |name: &str| {
            lines.by_ref().find_map(|line| {
                line.trim()
                    .strip_prefix(name)
                    .map(|rest| rest.trim().to_owned())
            })
        };
        (field("proxy"), field("dns"))
    })
    .await
    .unwrap();
    let proxy = proxy.expect("the demo printed no proxy address");

    // Its DNS server answers the AWS endpoints of the demo with the proxy's address.
    let dns: std::net::SocketAddr = dns
        .expect("the demo printed no dns address")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut ask = hickory_proto::op::Message::new();
    ask.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("dynamodb.us-east-1.amazonaws.com.").unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&ask.to_vec().unwrap(), dns).await.unwrap();
    let mut buffer = [0u8; 512];
    let n = socket.recv(&mut buffer).await.unwrap();
    let answer = hickory_proto::op::Message::from_vec(&buffer[..n]).unwrap();
    assert_eq!(answer.answers().len(), 1, "{answer:?}");

    let west = get(&format!("{proxy}/us-west-2/orders/42")).await;
    assert_eq!(west.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&west.body).unwrap();
    assert_eq!(body["region"], "us-west-2");
    assert_eq!(west.header("x-faultline-rule"), None);

    let mut statuses = Vec::new();
    for _ in 0..12 {
        let start = Instant::now();
        let east = get(&format!("{proxy}/us-east-1/orders/42")).await;
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "us-east-1 must be slow"
        );
        statuses.push(east.status.as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    terminate(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn check_validates_scenarios_against_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "faultline.toml", CONFIG);
    write(
        dir.path(),
        "rules/a.toml",
        "[[rule]]\nname = \"slow\"\nenabled = false\n[rule.fault]\nkind = \"latency\"\ndelay = \"1s\"\n",
    );
    write(
        dir.path(),
        "rules/outage.toml",
        "[[scenario]]\nname = \"outage\"\nduration = \"1h\"\n[[scenario.step]]\nat = \"0s\"\nenable = [\"slow\", \"fast\"]\n[[scenario.step]]\nat = \"2h\"\nset = { slow = { probability = 0.5 } }\n",
    );
    let out = faultline(&["check"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "rules/outage.toml:6:19: error: scenario[0].step[0].enable[1]: scenario \"outage\": no rule file defines a rule named \"fast\"",
            "rules/outage.toml:8:1: error: scenario[0].step[1].at: scenario \"outage\": at = \"2h\" is not before the end of the scenario (1h)",
            "2 problems found",
        ]
    );
}

#[test]
fn check_refuses_http_conditions_and_kinds_on_rules_for_tcp_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "faultline.toml",
        &format!("{CONFIG}\n[[upstream]]\nname = \"db-use1\"\nurl = \"tcp://127.0.0.1:5432\"\nlisten = \"127.0.0.1:0\"\nlabels = {{ region = \"us-east-1\", service = \"postgres\" }}\n"),
    );
    // A regional rule fits both kinds; these two fit no upstream they select.
    write(
        dir.path(),
        "rules/db.toml",
        "[[rule]]\nname = \"region-slow\"\n[rule.match]\nlabels = { region = \"us-east-1\" }\n[rule.fault]\nkind = \"latency\"\ndelay = \"100ms\"\n\n\
         [[rule]]\nname = \"db-path\"\n[rule.match]\nupstreams = [\"db-use1\"]\npath = \"/x\"\n[rule.fault]\nkind = \"latency\"\ndelay = \"1s\"\n\n\
         [[rule]]\nname = \"db-503\"\n[rule.match]\nlabels = { service = \"postgres\" }\n[rule.fault]\nkind = \"error\"\nstatus = 503\n",
    );
    let out = faultline(&["check"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    // Problems go where `check` prints them; either stream will do here.
    let stderr = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stderr.contains("rule \"db-path\" selects only tcp:// upstreams, which have no HTTP requests: match.path cannot match"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rule \"db-503\" selects only tcp:// upstreams, and kind = \"error\" (an HTTP answer) does not apply to a TCP connection"),
        "{stderr}"
    );
    assert!(!stderr.contains("region-slow"), "{stderr}");
}
