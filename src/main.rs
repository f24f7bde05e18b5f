//! The `faultline` command: parses the command line and calls into the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use faultline::app::{self, App};
use faultline::ctl;
use faultline::demo::Demo;
use faultline::diagnostic::Diagnostic;
use faultline::server::Stop;
use tokio_util::sync::CancellationToken;

/// hyper reserves a fresh 8 KiB read buffer on each side of every proxied
/// request while the previous one is still shared. glibc serves that size
/// outside its thread cache; mimalloc serves it from a per-thread free list.
/// Measured with `scripts/loadtest.sh` and instruction counts (README, Speed).
///
/// Built without transparent huge pages (`no_thp` in Cargo.toml): mimalloc
/// otherwise asks for them on its arenas, the kernel then backs each 2 MiB
/// with memory whether touched or not, and an idle keep-alive connection
/// held 31.7 KB of resident memory instead of 19.5 KB
/// (`MEMORY=1 scripts/loadtest.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "faultline",
    version,
    about = "A chaos-engineering fault-injection reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(short, long, default_value = "faultline.toml")]
        config: PathBuf,
    },
    /// Validate the config and every rule file; exit 0 when all is well, 1 otherwise.
    Check {
        #[arg(short, long, default_value = "faultline.toml")]
        config: PathBuf,
    },
    /// A self-contained demo: upstreams in two regions behind the proxy, with outages to replay.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API and /metrics listen.
        #[arg(long, default_value = "127.0.0.1:9000")]
        admin: SocketAddr,
        /// Rule files for the demo; the built-in copies when the folder is missing.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Where the demo's DNS server listens (UDP and TCP).
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
    },
    /// One demo upstream on its own, as the docker-compose stack runs one
    /// per zone: it answers every request with JSON naming itself and the
    /// Host, method and path it was asked.
    DemoUpstream {
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Its name in the answers, such as the zone it stands for.
        #[arg(long)]
        name: String,
        /// The region it reports.
        #[arg(long)]
        region: Option<String>,
        /// The availability zone it reports.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Show faultline's CA (made on first use in `[ca] dir`) and how to make
    /// clients trust it, for intercepted HTTPS.
    Ca {
        /// The config whose `[ca] dir` to use; without the file, ./faultline-ca.
        #[arg(short, long, default_value = "faultline.toml")]
        config: PathBuf,
        /// Print the CA certificate (PEM) alone.
        #[arg(long)]
        pem: bool,
    },
    /// Toxiproxy's server, with its own flags: the Toxiproxy 2.12 API on
    /// -host (localhost) and -port (8474), the proxies of -config (a JSON
    /// array) created at start; faultline's admin API on -admin
    /// (127.0.0.1:9000). Also -seed N; -proxy-metrics and -runtime-metrics
    /// are accepted (faultline's metrics are on the admin API's /metrics).
    #[command(disable_help_flag = true)]
    ToxiproxyServer {
        /// Go-style flags, as toxiproxy-server takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        flags: Vec<String>,
    },
    /// Drive a running proxy through its admin API.
    Ctl {
        /// The admin API's address; several, comma-separated, drive them all
        /// as a fleet.
        #[arg(
            long,
            env = "FAULTLINE_ADMIN",
            default_value = "http://127.0.0.1:9000",
            value_delimiter = ',',
            value_name = "URL[,URL…]"
        )]
        admin: Vec<String>,
        /// Drive every replica behind a name: each address HOST resolves to
        /// (a Kubernetes headless Service) on PORT. Instead of --admin.
        #[arg(long, env = "FAULTLINE_FLEET", value_name = "HOST:PORT")]
        fleet: Option<String>,
        /// How long each replica may take to answer (default 2s for a
        /// fleet, 10s for one --admin).
        #[arg(long, value_name = "DURATION", value_parser = faultline::duration::parse)]
        timeout: Option<std::time::Duration>,
        /// The admin token, when the proxy has one.
        #[arg(long, env = "FAULTLINE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        verb: ctl::Verb,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Ca { config, pem } => ca(&config, pem),
        Command::Demo {
            listen,
            admin,
            rules,
            dns,
        } => demo(listen, admin, dns, &rules),
        Command::DemoUpstream {
            listen,
            name,
            region,
            zone,
        } => demo_upstream(listen, name, region, zone),
        Command::ToxiproxyServer { flags } => toxiproxy_server(&flags),
        Command::Ctl {
            admin,
            fleet,
            timeout,
            token,
            json,
            verb,
        } => ctl(
            &ctl::Target {
                replicas: match ctl_replicas(&matches, admin, fleet) {
                    Ok(replicas) => replicas,
                    Err(e) => e.exit(),
                },
                token: token.filter(|t| !t.is_empty()),
                json,
                live: std::io::stdout().is_terminal(),
                timeout,
            },
            &verb,
        ),
    }
}

/// `--admin` or `--fleet`: what the command line says beats the
/// environment (`FAULTLINE_ADMIN`, `FAULTLINE_FLEET`) and the default; both
/// on the command line is a usage error.
fn ctl_replicas(
    matches: &clap::ArgMatches,
    admin: Vec<String>,
    fleet: Option<String>,
) -> Result<ctl::Replicas, clap::Error> {
    use clap::parser::ValueSource::CommandLine;
    let Some(matches) = matches.subcommand_matches("ctl") else {
        return Ok(ctl::Replicas::Admin(admin));
    };
    let admin_given = matches.value_source("admin") == Some(CommandLine);
    let fleet_given = matches.value_source("fleet") == Some(CommandLine);
    Ok(match fleet.filter(|f| !f.is_empty()) {
        Some(_) if admin_given && fleet_given => {
            let command = Cli::command();
            let mut ctl = command.find_subcommand("ctl").cloned().unwrap_or(command);
            return Err(ctl.error(
                clap::error::ErrorKind::ArgumentConflict,
                "--admin and --fleet name the replicas two ways; give one",
            ));
        }
        Some(fleet) if !admin_given => ctl::Replicas::Fleet(fleet),
        _ => ctl::Replicas::Admin(admin),
    })
}

fn ctl(target: &ctl::Target, verb: &ctl::Verb) -> ExitCode {
    let runtime = match app::runtime(Some(1)) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(ctl::run(target, verb, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let (true, Some(body)) = (target.json, error.body()) {
                print!("{body}");
            }
            eprintln!("error: {error}");
            for detail in error.details() {
                eprintln!("  {detail}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: &Path) -> ExitCode {
    let app = match App::load(config_path) {
        Ok(app) => app,
        Err(problems) => return report(&problems),
    };
    let runtime = match app::runtime(app.config().proxy.workers) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        match app.start().await {
            Ok(running) => {
                running.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        }
    })
}

/// `faultline toxiproxy-server`: the Toxiproxy API on `-host`:`-port`,
/// the proxies of `-config` created at start, faultline's admin API on `-admin`.
fn toxiproxy_server(args: &[String]) -> ExitCode {
    use faultline::toxiproxy::cli::{self, ArgsError};
    let args = match cli::parse(args) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::Invalid(message)) => {
            eprintln!("{message}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let config = match faultline::config::Config::parse(&cli::config_text(&args), Path::new(".")) {
        Ok(config) => config,
        Err(e) => return fail(&format!("toxiproxy-server: {e}")),
    };
    let proxies = match &args.config {
        None => None,
        Some(path) => match std::fs::read(path) {
            Ok(text) => Some(text),
            // Toxiproxy logs an unreadable config and serves on.
            Err(e) => {
                tracing::error!(config = %path.display(), error = %e, "Error reading config file");
                None
            }
        },
    };
    let runtime = match app::runtime(config.proxy.workers) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let app =
            App::new(config, faultline::book::RuleBook::default()).with_fixed_rules(Vec::new());
        let running = match app.start().await {
            Ok(running) => running,
            Err(e) => return fail(&e.to_string()),
        };
        if let (Some(text), Some(api)) = (proxies, running.toxiproxy()) {
            match api.populate_from(&text).await {
                Ok(n) => tracing::info!(proxies = n, "Populated proxies from file"),
                Err(e) => tracing::error!(error = %e, "Failed to populate proxies from file"),
            }
        }
        running.run_until_signal().await;
        ExitCode::SUCCESS
    })
}

fn check(config_path: &Path) -> ExitCode {
    match App::load(config_path) {
        Ok(app) => {
            let config = app.config();
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes, {} rules, {} scenarios)",
                config_path.display(),
                config.listeners.len(),
                config.upstreams.iter().filter(|u| !u.ad_hoc).count(),
                config.routes.len(),
                app.rules().len(),
                app.scenarios().len()
            );
            for warning in app.warnings() {
                println!("{warning}");
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            // On the same stream as the problems, so that every line stays
            // whole however the two streams are merged.
            for problem in &problems {
                println!("{problem}");
            }
            match problems.len() {
                1 => println!("1 problem found"),
                n => println!("{n} problems found"),
            }
            ExitCode::FAILURE
        }
    }
}

fn demo(listen: SocketAddr, admin: SocketAddr, dns: SocketAddr, rules: &Path) -> ExitCode {
    let runtime = match app::runtime(None) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        match Demo::start_with_dns(listen, admin, dns, rules).await {
            Ok(demo) => {
                print!("{}", demo.instructions());
                demo.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    })
}

fn demo_upstream(
    listen: SocketAddr,
    name: String,
    region: Option<String>,
    zone: Option<String>,
) -> ExitCode {
    let runtime = match app::runtime(Some(1)) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => return fail(&format!("cannot listen on {listen}: {e}")),
        };
        let addr = listener.local_addr().map_or(listen, |addr| addr);
        println!("demo upstream {name} listening on http://{addr}");
        let identity = serde_json::json!({ "upstream": name, "region": region, "zone": zone });
        let stop = CancellationToken::new();
        let serving = tokio::spawn(faultline::demo::serve_upstream(
            listener,
            identity,
            Stop::draining(stop.clone(), Duration::from_secs(2)),
        ));
        app::shutdown_signal().await;
        stop.cancel();
        let _ = serving.await;
        ExitCode::SUCCESS
    })
}

fn report(problems: &[Diagnostic]) -> ExitCode {
    for problem in problems {
        eprintln!("{problem}");
    }
    ExitCode::FAILURE
}

fn ca(config_path: &Path, pem: bool) -> ExitCode {
    let dir = if config_path.exists() {
        match faultline::config::Config::load(config_path) {
            Ok(config) => config.ca.dir,
            Err(problems) => {
                for problem in &problems {
                    eprintln!("{problem}");
                }
                return ExitCode::FAILURE;
            }
        }
    } else {
        PathBuf::from(faultline::config::DEFAULT_CA_DIR)
    };
    match faultline::ca::Ca::open(&dir) {
        Ok(ca) if pem => {
            print!("{}", ca.pem());
            ExitCode::SUCCESS
        }
        Ok(ca) => {
            print!("{}", faultline::ca::trust_instructions(ca.cert_path()));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAULTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
