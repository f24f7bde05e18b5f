//! # regional_failover: does your failover hold when us-east-1 fails?
//!
//! An application that invokes a Lambda function in us-east-1 and, like a
//! real one, fails over to us-west-2. A call that fails in us-east-1 (a 5xx
//! or 429, a broken connection, or no answer within `--timeout`) is tried
//! once more in us-west-2. After `--trip` failures in a row a circuit
//! breaker sends every call straight to us-west-2 for `--cooldown`, then
//! lets one call probe us-east-1 again.
//!
//! It talks through faultline while the `us-east-1-lambda-capacity`
//! scenario plays at high speed. Then it prints what the application saw
//! in each step of the outage: calls, how many us-east-1 attempts failed,
//! how many calls us-west-2 answered, calls lost (both regions failed) and
//! the latency the application waited.
//!
//! ```sh
//! # Self-contained: starts the demo in-process and plays 4h in 12s.
//! cargo run --release --example regional_failover
//! cargo run --release --example regional_failover -- --speed 240   # 4h in a minute
//!
//! # Against a running `faultline demo` (or a proxy with the demo's routes):
//! cargo run --release --example regional_failover -- \
//!     --proxy http://127.0.0.1:8080 --admin http://127.0.0.1:9000
//!
//! # The compose stack's load generator: traffic only, one line every 10s;
//! # start scenarios from elsewhere and watch the lines change.
//! regional_failover --proxy http://faultline:8080 --admin http://faultline:9000 --forever
//! ```
//!
//! The exit status is 1 when the proxy or the admin API cannot be reached,
//! when faultline does not route the calls, or when the scenario cannot
//! start; and after the run, when more than `--max-lost` of the calls were
//! lost or the run did not complete (its guard aborted it: the healthy
//! region suffered). A failover that did not hold fails the run, so the
//! example doubles as a check in a pipeline. SIGINT or SIGTERM stops the
//! run (and the scenario) and prints what was seen so far.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use faultline::client::AdminClient;
use faultline::control::ScenarioView;
use faultline::demo::Demo;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Parser, Debug)]
#[command(
    about = "An application with client-side failover, talking through faultline during an outage"
)]
struct Args {
    /// faultline's proxy listener; without it, the demo starts in-process.
    #[arg(long)]
    proxy: Option<String>,
    /// faultline's admin API, to start the scenario and follow its steps
    /// (with `--proxy`; the in-process demo has its own).
    #[arg(long, env = "FAULTLINE_ADMIN", default_value = "http://127.0.0.1:9000")]
    admin: String,
    /// The admin token, when the proxy has one.
    #[arg(long, env = "FAULTLINE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The scenario to play.
    #[arg(long, default_value = "us-east-1-lambda-capacity")]
    scenario: String,
    /// How much faster than real time it plays (1200: 4h in 12s).
    #[arg(long, default_value_t = 1200.0)]
    speed: f64,
    /// Send traffic until stopped, one summary line every `--every`; start
    /// no scenario (`--scenario` and `--speed` are not used).
    #[arg(long)]
    forever: bool,
    /// How often `--forever` prints.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// The service the application calls, in both regions.
    #[arg(long, default_value = "lambda")]
    service: String,
    /// Calls per second, over all workers.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Calls in flight at once, at most.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// How long one attempt may take before the application gives up on it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Failures in a row in us-east-1 that open the circuit breaker.
    #[arg(long, default_value_t = 5)]
    trip: u32,
    /// How long an open breaker sends everything to us-west-2.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    cooldown: Duration,
    /// Exit 1 when more than this share of calls was lost.
    #[arg(long, default_value_t = 0.01)]
    max_lost: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

async fn run(args: Args) -> Result<ExitCode, String> {
    // Without --proxy, the demo runs in this process on free ports.
    let (demo, proxy, admin) = match &args.proxy {
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
    let mut admin = AdminClient::new(&admin).map_err(|e| e.to_string())?;
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        admin = admin.with_token(token).map_err(|e| e.to_string())?;
    }
    let app = Arc::new(App::new(&args, &proxy)?);
    println!(
        "application: calls {service} in us-east-1 through {proxy}, fails over to us-west-2 \
         (timeout {timeout}, breaker after {trip} failures in a row for {cooldown}), {rate} calls/s",
        service = args.service,
        timeout = humantime::format_duration(args.timeout),
        trip = args.trip,
        cooldown = humantime::format_duration(args.cooldown),
        rate = args.rate,
    );

    let outcome = if args.forever {
        forever(&args, &app, &admin)
            .await
            .map(|()| ExitCode::SUCCESS)
    } else {
        rehearse(&args, &app, &admin).await
    };
    if let Some(demo) = demo {
        demo.shutdown().await;
    }
    outcome
}

/// Starts the scenario, sends traffic until the run ends, prints the table.
async fn rehearse(args: &Args, app: &Arc<App>, admin: &AdminClient) -> Result<ExitCode, String> {
    app.preflight().await?;
    let started = admin
        .start_scenario(&args.scenario, Some(args.speed))
        .await
        .map_err(|e| format!("cannot start scenario {}: {e}", args.scenario))?;
    let wall = started
        .run
        .as_ref()
        .map_or(0.0, |run| run.wall_duration_seconds);
    println!(
        "scenario:    {} ({}) at {}x: {:.1}s of wall time\n",
        started.name, started.duration, args.speed, wall
    );
    let workers = app.spawn_workers(args);

    // Follow the run: every call is counted under the step in force. A
    // signal stops the run rather than leave it playing on its own.
    let signal = faultline::app::shutdown_signal();
    tokio::pin!(signal);
    let ended = loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = &mut signal => {
                if let Err(e) = admin.stop_scenario(&args.scenario).await {
                    eprintln!("error: cannot stop scenario {}: {e}", args.scenario);
                }
            }
        }
        let view = match admin.scenario(&args.scenario).await {
            Ok(view) => view,
            Err(e) => {
                app.stop();
                return Err(format!("lost the admin API while following the run: {e}"));
            }
        };
        if let Some(step) = view.run.as_ref().and_then(|r| r.current_step.as_ref()) {
            app.step.store(step.index, Ordering::Relaxed);
        }
        if view.state != "running" {
            break view;
        }
    };
    app.stop();
    for worker in workers {
        let _ = worker.await;
    }

    let steps = app.steps.lock().map_err(|_| "a worker panicked")?;
    print!("{}", table(&ended, &steps));
    let total = steps.iter().fold(Window::default(), |mut all, step| {
        all.add(step);
        all
    });
    let run = ended.run.as_ref();
    println!(
        "\nscenario {} {}{}",
        ended.state,
        run.map_or(String::new(), |r| format!("after {:.1}s", r.wall_seconds)),
        run.and_then(|r| r.reason.as_deref())
            .map_or(String::new(), |reason| format!(": {reason}")),
    );
    let lost_share = total.lost as f64 / total.calls.max(1) as f64;
    let held = total.calls > 0 && lost_share <= args.max_lost;
    println!(
        "failover {}: {} of {} calls answered ({} lost, {:.2}%); us-west-2 answered {}",
        if held { "held" } else { "did NOT hold" },
        total.calls - total.lost,
        total.calls,
        total.lost,
        lost_share * 100.0,
        total.to_west,
    );
    // A run the guard aborted hurt the healthy region: that fails too.
    Ok(if held && ended.state == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Traffic until SIGINT or SIGTERM, one line per `--every`, naming the
/// scenario running.
async fn forever(args: &Args, app: &Arc<App>, admin: &AdminClient) -> Result<(), String> {
    app.preflight().await?;
    let _workers = app.spawn_workers(args);
    let mut ticks = tokio::time::interval(args.every);
    ticks.tick().await;
    let signal = faultline::app::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut signal => break,
        }
        let window = match app.steps.lock() {
            Ok(mut steps) => std::mem::take(&mut steps[0]),
            Err(_) => break,
        };
        let running = match admin.status().await {
            Ok(status) if status.scenarios_running.is_empty() => "no scenario".to_owned(),
            Ok(status) => format!("running {}", status.scenarios_running.join(", ")),
            Err(e) => format!("admin API: {e}"),
        };
        println!("{}  {running}", window.line());
    }
    app.stop();
    Ok(())
}

/// The application: where it calls, its breaker and what it saw.
struct App {
    client: Client<HttpConnector, Full<Bytes>>,
    east: Uri,
    west: Uri,
    timeout: Duration,
    breaker: Breaker,
    /// The scenario step in force: the window calls are counted in.
    step: AtomicUsize,
    steps: Mutex<Vec<Window>>,
    stopping: AtomicBool,
}

/// Which region answered a call, if any.
enum Outcome {
    East,
    West { tried_east: bool },
    Lost { tried_east: bool },
}

impl App {
    fn new(args: &Args, proxy: &str) -> Result<App, String> {
        let uri = |region: &str| -> Result<Uri, String> {
            let url = format!(
                "{proxy}/{region}/{}/2015-03-31/functions/checkout/invocations",
                args.service
            );
            url.parse()
                .map_err(|e| format!("invalid --proxy {proxy:?}: {e}"))
        };
        Ok(App {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            east: uri("us-east-1")?,
            west: uri("us-west-2")?,
            timeout: args.timeout,
            breaker: Breaker {
                trip: args.trip.max(1),
                cooldown: args.cooldown,
                state: Mutex::new(BreakerState::Closed { failures: 0 }),
            },
            step: AtomicUsize::new(0),
            steps: Mutex::new(vec![Window::default()]),
            stopping: AtomicBool::new(false),
        })
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `--concurrency` workers sharing `--rate` calls a second.
    fn spawn_workers(self: &Arc<Self>, args: &Args) -> Vec<tokio::task::JoinHandle<()>> {
        let workers = args.concurrency.max(1);
        let each = Duration::from_secs_f64(f64::from(workers) / f64::from(args.rate.max(1)));
        (0..workers)
            .map(|_| {
                let app = Arc::clone(self);
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(each);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !app.stopping.load(Ordering::Relaxed) {
                        ticks.tick().await;
                        let step = app.step.load(Ordering::Relaxed);
                        let began = Instant::now();
                        let outcome = app.call().await;
                        app.record(step, &outcome, began.elapsed());
                    }
                })
            })
            .collect()
    }

    /// One call through faultline before the run: a clear error when the
    /// proxy is not there or does not route the calls.
    async fn preflight(&self) -> Result<(), String> {
        for uri in [&self.east, &self.west] {
            let request = Request::get(uri.clone())
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let response =
                tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
                    .await
                    .map_err(|_| format!("no answer from the proxy at {uri} within 10s"))?
                    .map_err(|e| format!("cannot reach the proxy at {uri}: {e}"))?;
            if response
                .headers()
                .get("x-faultline-error")
                .is_some_and(|v| v == "no_route")
            {
                return Err(format!(
                    "faultline has no route for {uri}: it needs the demo's routes, /<region>/<service>/..."
                ));
            }
        }
        Ok(())
    }

    /// One call: us-east-1 unless the breaker keeps it away, then us-west-2
    /// on failure.
    async fn call(&self) -> Outcome {
        let tried_east = self.breaker.allows_east();
        if tried_east {
            if self.attempt(&self.east).await {
                self.breaker.succeeded();
                return Outcome::East;
            }
            self.breaker.failed();
        }
        if self.attempt(&self.west).await {
            Outcome::West { tried_east }
        } else {
            Outcome::Lost { tried_east }
        }
    }

    /// An attempt succeeds with a 2xx read to the end in time.
    async fn attempt(&self, uri: &Uri) -> bool {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{\"cart\":42}")));
        let Ok(request) = request else {
            return false;
        };
        let exchange = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status();
            response.into_body().collect().await.ok()?;
            Some(status.is_success())
        };
        matches!(
            tokio::time::timeout(self.timeout, exchange).await,
            Ok(Some(true))
        )
    }

    fn record(&self, step: usize, outcome: &Outcome, waited: Duration) {
        let Ok(mut steps) = self.steps.lock() else {
            return;
        };
        if steps.len() <= step {
            steps.resize_with(step + 1, Window::default);
        }
        let window = &mut steps[step];
        window.calls += 1;
        window.waited.push(waited);
        match outcome {
            Outcome::East => window.east_tried += 1,
            Outcome::West { tried_east } => {
                window.to_west += 1;
                if *tried_east {
                    window.east_tried += 1;
                    window.east_failed += 1;
                }
            }
            Outcome::Lost { tried_east } => {
                window.lost += 1;
                if *tried_east {
                    window.east_tried += 1;
                    window.east_failed += 1;
                }
            }
        }
    }
}

/// The application's circuit breaker on us-east-1.
struct Breaker {
    trip: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

enum BreakerState {
    /// Calls go to us-east-1; `failures` in a row so far.
    Closed { failures: u32 },
    /// Every call goes to us-west-2 until then.
    Open { until: Instant },
    /// One call is probing us-east-1; the others go to us-west-2.
    Probing,
}

impl Breaker {
    /// Whether this call may try us-east-1. After the cooldown, the first
    /// call to ask is the probe.
    fn allows_east(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        match *state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if Instant::now() < until => false,
            BreakerState::Open { .. } => {
                *state = BreakerState::Probing;
                true
            }
            BreakerState::Probing => false,
        }
    }

    fn succeeded(&self) {
        if let Ok(mut state) = self.state.lock() {
            // A call begun before the breaker opened does not close it.
            if !matches!(*state, BreakerState::Open { .. }) {
                *state = BreakerState::Closed { failures: 0 };
            }
        }
    }

    fn failed(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let open = BreakerState::Open {
            until: Instant::now() + self.cooldown,
        };
        *state = match *state {
            BreakerState::Closed { failures } if failures + 1 < self.trip => BreakerState::Closed {
                failures: failures + 1,
            },
            BreakerState::Closed { .. } | BreakerState::Probing => open,
            BreakerState::Open { until } => BreakerState::Open { until },
        };
    }
}

/// What the application saw over a stretch of time.
#[derive(Default)]
struct Window {
    calls: u64,
    east_tried: u64,
    east_failed: u64,
    to_west: u64,
    lost: u64,
    waited: Vec<Duration>,
}

impl Window {
    fn add(&mut self, other: &Window) {
        self.calls += other.calls;
        self.east_tried += other.east_tried;
        self.east_failed += other.east_failed;
        self.to_west += other.to_west;
        self.lost += other.lost;
        self.waited.extend_from_slice(&other.waited);
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        let mut waited = self.waited.clone();
        waited.sort_unstable();
        let last = waited.len().checked_sub(1)?;
        waited.get(((last as f64) * q).round() as usize).copied()
    }

    fn east_failed_share(&self) -> String {
        if self.east_tried == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.0}%",
                self.east_failed as f64 * 100.0 / self.east_tried as f64
            )
        }
    }

    /// The columns of the step table, from `calls` on.
    fn columns(&self) -> String {
        format!(
            "{:>6}  {:>9}  {:>9}  {:>9}  {:>5}  {:>8}  {:>8}",
            self.calls,
            self.east_tried,
            self.east_failed_share(),
            self.to_west,
            self.lost,
            millis(self.quantile(0.5)),
            millis(self.quantile(0.99)),
        )
    }

    /// One `--forever` line.
    fn line(&self) -> String {
        format!(
            "{} calls: us-east-1 tried {} (failed {}), us-west-2 answered {}, lost {}, p50 {} p99 {}",
            self.calls,
            self.east_tried,
            self.east_failed_share(),
            self.to_west,
            self.lost,
            millis(self.quantile(0.5)).trim(),
            millis(self.quantile(0.99)).trim(),
        )
    }
}

fn millis(waited: Option<Duration>) -> String {
    waited.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
    )
}

/// Step by step, then the total.
fn table(scenario: &ScenarioView, steps: &[Window]) -> String {
    let mut text = format!(
        "{:<4}  {:<6}  {:<40}  {:>6}  {:>9}  {:>9}  {:>9}  {:>5}  {:>8}  {:>8}\n",
        "step",
        "at",
        "what happened",
        "calls",
        "use1 try",
        "use1 fail",
        "usw2 ans",
        "lost",
        "p50",
        "p99"
    );
    let mut total = Window::default();
    let none = Window::default();
    for (index, step) in scenario.steps.iter().enumerate() {
        let window = steps.get(index).unwrap_or(&none);
        let what: String = step
            .description
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect();
        // Numbered from 1, as `ctl scenario status` and the dashboard show steps.
        text.push_str(&format!(
            "{:<4}  {:<6}  {what:<40}  {}\n",
            index + 1,
            step.at,
            window.columns()
        ));
        total.add(window);
    }
    text.push_str(&format!(
        "{:<4}  {:<6}  {:<40}  {}\n",
        "all",
        "",
        "",
        total.columns()
    ));
    text
}
