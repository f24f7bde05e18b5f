//! `faultline demo`: small upstreams on loopback (your `orders` and
//! `payments`, and the cloud services the shipped scenarios break, each in
//! `us-east-1` and `us-west-2`), the proxy in front of them with the rules
//! and scenarios under `rules/`, and a printed list of what to try. Also
//! the upstream alone, for `faultline demo-upstream` (the compose stack's
//! zone containers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Running};
use crate::book::{self, RuleText};
use crate::config::Config;
use crate::server;

/// The demo's upstreams: (name, service, region, zone). Your own services
/// (`orders`, `payments`) and the cloud services they call, in two regions,
/// with the labels the shipped scenarios match on.
pub const UPSTREAMS: [(&str, &str, &str, &str); 18] = [
    ("orders-use1", "orders", "us-east-1", "use1-az1"),
    ("payments-use1", "payments", "us-east-1", "use1-az2"),
    ("lambda-use1", "lambda", "us-east-1", "use1-az4"),
    ("console-use1", "console", "us-east-1", "use1-az1"),
    ("sagemaker-use1", "sagemaker", "us-east-1", "use1-az2"),
    ("glue-use1", "glue", "us-east-1", "use1-az4"),
    ("connect-use1", "connect", "us-east-1", "use1-az1"),
    ("ecs-use1", "ecs", "us-east-1", "use1-az2"),
    ("guardduty-use1", "guardduty", "us-east-1", "use1-az4"),
    ("orders-usw2", "orders", "us-west-2", "usw2-az1"),
    ("payments-usw2", "payments", "us-west-2", "usw2-az2"),
    ("lambda-usw2", "lambda", "us-west-2", "usw2-az3"),
    ("console-usw2", "console", "us-west-2", "usw2-az1"),
    ("sagemaker-usw2", "sagemaker", "us-west-2", "usw2-az2"),
    ("glue-usw2", "glue", "us-west-2", "usw2-az3"),
    ("connect-usw2", "connect", "us-west-2", "usw2-az1"),
    ("ecs-usw2", "ecs", "us-west-2", "usw2-az2"),
    ("guardduty-usw2", "guardduty", "us-west-2", "usw2-az3"),
];

/// Rule files compiled in, for a demo started outside a checkout.
const BUILTIN_RULES: [(&str, &str); 4] = [
    (
        "rules/us-east-1-brownout.toml",
        include_str!("../rules/us-east-1-brownout.toml"),
    ),
    (
        "rules/us-east-1-lambda-capacity.toml",
        include_str!("../rules/us-east-1-lambda-capacity.toml"),
    ),
    (
        "rules/us-east-1-region-down.toml",
        include_str!("../rules/us-east-1-region-down.toml"),
    ),
    (
        "rules/use1-az1-power-loss.toml",
        include_str!("../rules/use1-az1-power-loss.toml"),
    ),
];

/// A running demo: its upstreams and the proxy in front of them.
pub struct Demo {
    pub proxy: Running,
    pub proxy_addr: SocketAddr,
    pub upstreams: Vec<(&'static str, SocketAddr)>,
    pub rules_from: PathBuf,
    upstream_shutdown: CancellationToken,
}

impl Demo {
    /// Starts the demo upstreams and the proxy on `listen`. Rules come from
    /// `rules_dir` when it exists, else from the copies built in.
    pub async fn start(
        listen: SocketAddr,
        admin: SocketAddr,
        rules_dir: &Path,
    ) -> Result<Demo, String> {
        let upstream_shutdown = CancellationToken::new();
        let mut upstreams = Vec::new();
        for (name, service, region, _) in UPSTREAMS {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot start demo upstream {name}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(serve_upstream(
                listener,
                serde_json::json!({ "service": service, "region": region, "upstream": name }),
                server::Stop::draining(upstream_shutdown.clone(), Duration::from_secs(1)),
            ));
            upstreams.push((name, addr));
        }

        let mut config = Config::parse(&config_text(listen, admin, &upstreams), Path::new("."))
            .map_err(|e| format!("demo config: {e}"))?;
        let names: Vec<&str> = UPSTREAMS.iter().map(|u| u.0).collect();
        let (app, rules_from) = if rules_dir.is_dir() {
            let rules =
                book::load_dir(rules_dir, &names).map_err(|d| crate::diagnostic::render(&d))?;
            // Reloads and the watcher read the same folder.
            config.proxy.rules_dir = rules_dir.to_path_buf();
            (App::new(config, rules), rules_dir.to_path_buf())
        } else {
            let texts: Vec<RuleText> = BUILTIN_RULES
                .iter()
                .map(|(path, text)| RuleText {
                    path: PathBuf::from(path),
                    text: (*text).to_owned(),
                })
                .collect();
            let rules =
                book::load_sources(&texts, &names).map_err(|d| crate::diagnostic::render(&d))?;
            let app = App::new(config, rules).with_fixed_rules(texts);
            (app, PathBuf::from("(built-in rules)"))
        };
        let proxy = app.start().await.map_err(|e| e.to_string())?;
        let proxy_addr = proxy
            .listener_addr("edge")
            .ok_or("the demo's edge listener did not start")?;
        Ok(Demo {
            proxy,
            proxy_addr,
            upstreams,
            rules_from,
            upstream_shutdown,
        })
    }

    /// What to try next, printed when the demo starts.
    pub fn instructions(&self) -> String {
        let proxy = format!("http://{}", self.proxy_addr);
        let mut text = String::new();
        text.push_str("faultline demo is running.\n\n");
        text.push_str(&format!("  proxy      {proxy}\n"));
        let admin = format!("http://{}", self.proxy.admin_addr());
        text.push_str(&format!("  metrics    {admin}/metrics\n"));
        let mut services: Vec<&str> = Vec::new();
        for (_, service, _, _) in UPSTREAMS {
            if !services.contains(&service) {
                services.push(service);
            }
        }
        text.push_str(&format!(
            "  upstreams  {} on loopback: {} in us-east-1 and us-west-2\n",
            self.upstreams.len(),
            services.join(", ")
        ));
        let snapshot = self.proxy.proxy().published().load_full();
        let rules = &snapshot.rules;
        text.push_str(&format!(
            "  rules      {} rules from {}\n",
            rules.rules().len(),
            self.rules_from.display()
        ));
        let mut off = 0;
        for live in rules.rules() {
            let rule = &live.rule;
            if !live.enabled {
                off += 1;
                continue;
            }
            text.push_str(&format!(
                "             {} (on, p={}): {}\n",
                rule.name(),
                live.probability,
                rule.description
                    .as_deref()
                    .unwrap_or(rule.fault.kind().name())
            ));
        }
        if off > 0 {
            text.push_str(&format!(
                "             and {off} more, off until a scenario or `ctl enable` turns them on\n"
            ));
        }
        let scenarios = self.proxy.control().scenarios();
        for scenario in &scenarios {
            text.push_str(&format!(
                "  scenario   {} ({}): {}\n",
                scenario.name,
                scenario.duration,
                scenario.description.as_deref().unwrap_or("")
            ));
        }
        text.push_str(&format!("  seed       {}\n\n", self.proxy.seed()));
        text.push_str(
            "Routes: /<region>/<service>/... by path, or Host: <service>.<region>.demo\n\n",
        );
        text.push_str("Try:\n");
        text.push_str(&format!(
            "  curl -si {proxy}/us-east-1/orders/42      # us-east-1 browns out: slow, sometimes 503\n"
        ));
        text.push_str(&format!(
            "  curl -si {proxy}/us-west-2/orders/42      # us-west-2 stays healthy\n"
        ));
        text.push_str(&format!(
            "  curl -si -H 'Host: payments.us-east-1.demo' {proxy}/charge\n"
        ));
        text.push_str(&format!(
            "  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}s\\n' {proxy}/us-east-1/orders; done\n\n"
        ));
        text.push_str(&format!(
            "  curl -s {admin}/metrics | grep -E '^faultline_(requests|faults_injected)_total'\n\n"
        ));
        // `ctl` needs --admin only when the demo's admin address is not the default.
        let admin_flag = if self.proxy.admin_addr().to_string() == "127.0.0.1:9000" {
            String::new()
        } else {
            format!(" --admin {admin}")
        };
        let ctl = format!("cargo run --release -q -- ctl{admin_flag}");
        let toggled = rules
            .rules()
            .iter()
            .find(|live| live.enabled)
            .map_or("RULE", |live| live.rule.name());
        text.push_str("Drive it live from another terminal:\n");
        text.push_str(&format!(
            "  {ctl} rules                          # every rule: switch, probability, injected count\n"
        ));
        text.push_str(&format!("  {ctl} disable {toggled}\n"));
        text.push_str(&format!(
            "  {ctl} enable {toggled} --ttl 5m     # turns itself off after 5 minutes\n"
        ));
        text.push_str(&format!(
            "  {ctl} halt                           # the kill switch; `ctl resume` lifts it\n"
        ));
        text.push_str(&format!(
            "  edit rules/*.toml: saved changes apply at once (or `{ctl} reload`)\n\n"
        ));
        if scenarios
            .iter()
            .any(|s| s.name == "us-east-1-lambda-capacity")
        {
            text.push_str(
                "Rehearse the model incident, four hours in two minutes, with traffic running:\n",
            );
            text.push_str(&format!(
                "  while true; do for u in us-east-1/lambda us-west-2/lambda us-east-1/console us-west-2/console; do curl -s -o /dev/null -w '%{{http_code}} ' {proxy}/$u/x; done; echo; sleep 0.2; done\n"
            ));
            text.push_str(&format!(
                "  cargo run --release --example regional_failover -- --proxy {proxy} --admin {admin} --forever   # or an application with failover\n"
            ));
            text.push_str(&format!(
                "  {ctl} scenario start us-east-1-lambda-capacity --speed 120 --follow\n"
            ));
            text.push_str(&format!(
                "  {ctl} scenario report us-east-1-lambda-capacity   # step by step, per region and upstream\n\n"
            ));
        }
        text.push_str("Injected responses carry x-faultline-rule; errors the proxy makes itself carry x-faultline-error.\n");
        text.push_str("Press Ctrl-C to stop.\n");
        text
    }

    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.upstream_shutdown.cancel();
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_signal(self) {
        let upstreams = self.upstream_shutdown.clone();
        self.proxy.run_until_signal().await;
        upstreams.cancel();
    }
}

/// The demo's config: host and path routes on one edge listener.
fn config_text(listen: SocketAddr, admin: SocketAddr, upstreams: &[(&str, SocketAddr)]) -> String {
    let mut text = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[proxy]\nshutdown_grace = \"2s\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"{listen}\"\n"
    );
    for ((name, service, region, zone), (_, addr)) in UPSTREAMS.iter().zip(upstreams) {
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"{name}\"\nurl = \"http://{addr}\"\nlabels = {{ region = \"{region}\", zone = \"{zone}\", service = \"{service}\" }}\n"
        ));
        text.push_str(&format!(
            "\n[[route]]\nlistener = \"edge\"\npath_prefix = \"/{region}/{service}\"\nupstream = \"{name}\"\n"
        ));
        text.push_str(&format!(
            "\n[[route]]\nlistener = \"edge\"\nhost = \"{service}.{region}.*\"\nupstream = \"{name}\"\n"
        ));
    }
    text
}

/// Serves one demo upstream until `stop`: every request gets a small JSON
/// answer with `identity`'s fields and what it was asked (method, path,
/// `Host`). `faultline demo` runs eighteen in-process; `faultline
/// demo-upstream` runs one on its own, as the compose stack's zones do.
pub async fn serve_upstream(
    listener: TcpListener,
    identity: serde_json::Value,
    stop: server::Stop,
) {
    let identity = Arc::new(identity);
    server::serve(
        listener,
        move |_conn| {
            let identity = Arc::clone(&identity);
            hyper::service::service_fn(move |request| answer(Arc::clone(&identity), request))
        },
        server::Limits::default(),
        stop,
    )
    .await;
}

/// A demo upstream's answer: who it is and what it was asked.
async fn answer(
    identity: Arc<serde_json::Value>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = (*identity).clone();
    if let Some(fields) = body.as_object_mut() {
        fields.insert("method".into(), request.method().as_str().into());
        fields.insert("path".into(), request.uri().path().into());
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        fields.insert("host".into(), host.into());
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
