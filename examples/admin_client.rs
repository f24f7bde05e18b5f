//! # admin_client: driving faults from Rust code, as a test suite would
//!
//! A test suite that wants to know how its service behaves when a
//! dependency fails starts faultline in front of that dependency. Then,
//! test by test, it adds the fault it needs through the admin API, checks
//! what its client saw, and removes the fault again. This example does
//! exactly that with [`faultline::client::AdminClient`]:
//!
//! 1. adds an `error` rule with a TTL (a dead man's switch: it turns itself
//!    off if the suite dies) and sees every call fail with that status;
//! 2. lowers the rule's probability and sees about that share fail;
//! 3. adds a `latency` rule and measures the delay;
//! 4. halts (the kill switch), sees the calls pass, finds enabling refused
//!    with the API's error code, resumes, and turns back on what was on
//!    (resuming turns nothing on by itself);
//! 5. deletes its rules, leaving the proxy as it found it.
//!
//! Because of step 4 it refuses to start while the proxy is halted (it
//! would lift someone else's kill switch) or a scenario runs (its halt
//! would stop the scenario).
//!
//! ```sh
//! # Self-contained: starts the demo in-process and drives it.
//! cargo run --release --example admin_client
//! # Against a running `faultline demo`:
//! cargo run --release --example admin_client -- --proxy http://127.0.0.1:8080 --admin http://127.0.0.1:9000
//! ```
//!
//! It calls `/us-west-2/payments/charge`, a route of the demo's healthy
//! region, and exits 1 if anything it checks does not hold.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clap::Parser;
use faultline::client::AdminClient;
use faultline::demo::Demo;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Drive faultline's faults from Rust code, as a test suite would")]
struct Args {
    /// faultline's proxy listener; without it, the demo starts in-process.
    #[arg(long)]
    proxy: Option<String>,
    /// faultline's admin API.
    #[arg(long, env = "FAULTLINE_ADMIN", default_value = "http://127.0.0.1:9000")]
    admin: String,
    /// The admin token, when the proxy has one.
    #[arg(long, env = "FAULTLINE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The call the "service under test" makes, through faultline.
const CHARGE: &str = "/us-west-2/payments/charge";
/// Calls per check.
const CALLS: usize = 40;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => {
            println!("\nall checks held; the proxy is as it was");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (demo, proxy, admin_url) = match &args.proxy {
        Some(proxy) => (
            None,
            proxy.trim_end_matches('/').to_owned(),
            args.admin.clone(),
        ),
        None => {
            let any: SocketAddr = ([127, 0, 0, 1], 0).into();
            let demo = Demo::start(any, any, Path::new("rules")).await?;
            let proxy = format!("http://{}", demo.proxy_addr);
            let admin = format!("http://{}", demo.proxy.admin_addr());
            (Some(demo), proxy, admin)
        }
    };
    let mut admin = AdminClient::new(&admin_url).map_err(|e| e.to_string())?;
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        admin = admin.with_token(token).map_err(|e| e.to_string())?;
    }
    let service = Service::new(&proxy);
    let outcome = match ready(&admin).await {
        Ok(()) => {
            let outcome = drive(&admin, &service).await;
            // Whatever happened, leave no fault behind. `ready` saw no
            // halt, so a halt now is this example's own.
            for name in ["charge-503", "charge-slow"] {
                let _ = admin.delete_rule(name).await;
            }
            if admin.status().await.is_ok_and(|s| s.halted) {
                let _ = admin.resume().await;
            }
            outcome
        }
        Err(refusal) => Err(refusal),
    };
    if let Some(demo) = demo {
        demo.shutdown().await;
    }
    outcome
}

/// The example halts the proxy in step 4, which would lift nobody's halt
/// but would stop a running scenario: it refuses to start in either case.
async fn ready(admin: &AdminClient) -> Result<(), String> {
    let status = admin.status().await.map_err(|e| e.to_string())?;
    if status.halted {
        return Err("faultline is halted; this example will not lift a halt it did not make (`faultline ctl resume` first)".to_owned());
    }
    if !status.scenarios_running.is_empty() {
        return Err(format!(
            "scenario {} is running, and this example's halt would stop it; try again when it is over",
            status.scenarios_running.join(", ")
        ));
    }
    Ok(())
}

/// Every rule's name and switch: what the example must leave as it found.
async fn switches(admin: &AdminClient) -> Result<Vec<(String, bool)>, String> {
    let rules = admin.rules().await.map_err(|e| e.to_string())?;
    Ok(rules.into_iter().map(|r| (r.name, r.enabled)).collect())
}

async fn drive(admin: &AdminClient, service: &Service) -> Result<(), String> {
    let status = admin.status().await.map_err(|e| e.to_string())?;
    let switches_before = switches(admin).await?;
    println!(
        "faultline {} at {}: {} rules, seed {}",
        status.version,
        admin.base(),
        status.rules.total,
        status.seed
    );
    let before = service.calls(CALLS).await;
    check(
        before.failed == 0,
        format!("before any fault: {}", before.summary()),
    )?;

    // 1. An error rule with a TTL, matching only the calls under test.
    let rule = admin
        .add_rule(&json!({
            "name": "charge-503",
            "description": "payments in us-west-2 answer 503",
            "match": { "upstreams": ["payments-usw2"], "path": "/us-west-2/payments/charge" },
            "fault": { "kind": "error", "status": 503, "body": "{\"message\":\"try later\"}" },
            "ttl": "10m",
        }))
        .await
        .map_err(|e| e.to_string())?;
    let seen = service.calls(CALLS).await;
    check(
        seen.failed == CALLS && seen.marked == CALLS,
        format!(
            "1. added {} (error 503, expires {}): {}",
            rule.name,
            rule.expires_at.as_deref().unwrap_or("never"),
            seen.summary()
        ),
    )?;

    // 2. A share of the calls.
    admin
        .set_probability("charge-503", 0.25)
        .await
        .map_err(|e| e.to_string())?;
    let seen = service.calls(CALLS * 5).await;
    // 25% of 200 is 50; 25 and 75 are more than 4 standard deviations away.
    check(
        (25..=75).contains(&seen.failed),
        format!("2. probability 0.25: {}", seen.summary()),
    )?;
    admin
        .disable("charge-503")
        .await
        .map_err(|e| e.to_string())?;

    // 3. Latency: every call waits 200 ms more.
    admin
        .add_rule(&json!({
            "name": "charge-slow",
            "match": { "upstreams": ["payments-usw2"] },
            "fault": { "kind": "latency", "delay": "200ms" },
            "ttl": "10m",
        }))
        .await
        .map_err(|e| e.to_string())?;
    let seen = service.calls(10).await;
    check(
        seen.failed == 0 && seen.median >= Duration::from_millis(200),
        format!("3. added charge-slow (latency 200ms): {}", seen.summary()),
    )?;

    // 4. The kill switch: calls pass at once, enabling is refused. Resuming
    // turns nothing back on, so note what was on to put it back.
    let now = SystemTime::now();
    let on: Vec<(String, Option<String>)> = admin
        .rules()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|rule| rule.enabled)
        .map(|rule| {
            // A rule with a TTL gets back what was left of it.
            let left = rule
                .expires_at
                .as_deref()
                .and_then(|at| humantime::parse_rfc3339(at).ok())
                .and_then(|at| at.duration_since(now).ok())
                .map(|left| format!("{}s", left.as_secs().max(1)));
            (rule.name, left)
        })
        .collect();
    admin.halt().await.map_err(|e| e.to_string())?;
    let seen = service.calls(10).await;
    check(
        seen.failed == 0 && seen.marked == 0,
        format!("4. halted: {}", seen.summary()),
    )?;
    let refused = admin.enable("charge-503", None).await;
    check(
        refused.as_ref().is_err_and(|e| e.code() == Some("halted")),
        format!(
            "   enabling while halted is refused: {}",
            refused.map_or_else(|e| e.to_string(), |_| "it was not".to_owned())
        ),
    )?;
    admin.resume().await.map_err(|e| e.to_string())?;
    for (name, ttl) in &on {
        admin
            .enable(name, ttl.as_deref())
            .await
            .map_err(|e| e.to_string())?;
    }

    // 5. Leave the proxy as it was found.
    admin
        .delete_rule("charge-503")
        .await
        .map_err(|e| e.to_string())?;
    admin
        .delete_rule("charge-slow")
        .await
        .map_err(|e| e.to_string())?;
    let after = admin.status().await.map_err(|e| e.to_string())?;
    let seen = service.calls(CALLS).await;
    check(
        switches(admin).await? == switches_before && seen.failed == 0,
        format!(
            "5. deleted both rules ({} rules, {} on, as before): {}",
            after.rules.total,
            after.rules.enabled,
            seen.summary()
        ),
    )
}

/// Prints the line, marked by whether it held; an error when it did not.
fn check(held: bool, line: String) -> Result<(), String> {
    if held {
        println!("ok    {line}");
        Ok(())
    } else {
        println!("FAIL  {line}");
        Err(format!("check failed: {line}"))
    }
}

/// The service under test's view of its dependency: calls and what came back.
struct Service {
    client: Client<HttpConnector, Empty<Bytes>>,
    url: String,
}

/// What a batch of calls saw.
struct Seen {
    calls: usize,
    failed: usize,
    /// Answers that carried `x-faultline-rule`.
    marked: usize,
    median: Duration,
}

impl Seen {
    fn summary(&self) -> String {
        format!(
            "{} of {} calls failed, {} marked by faultline, median {} ms",
            self.failed,
            self.calls,
            self.marked,
            self.median.as_millis()
        )
    }
}

impl Service {
    fn new(proxy: &str) -> Service {
        Service {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            url: format!("{proxy}{CHARGE}"),
        }
    }

    /// `n` calls one after the other.
    async fn calls(&self, n: usize) -> Seen {
        let mut seen = Seen {
            calls: n,
            failed: 0,
            marked: 0,
            median: Duration::ZERO,
        };
        let mut waited = Vec::with_capacity(n);
        for _ in 0..n {
            let began = Instant::now();
            let ok = match self.url.parse() {
                Ok(uri) => match self.client.get(uri).await {
                    Ok(response) => {
                        if response.headers().contains_key("x-faultline-rule") {
                            seen.marked += 1;
                        }
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            };
            waited.push(began.elapsed());
            if !ok {
                seen.failed += 1;
            }
        }
        waited.sort_unstable();
        seen.median = waited.get(n / 2).copied().unwrap_or_default();
        seen
    }
}
