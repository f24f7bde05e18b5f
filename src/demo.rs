//! `faultline demo`: small upstreams on loopback (your `orders` and
//! `payments`, and the cloud services the shipped scenarios break, each in
//! `us-east-1` and `us-west-2`), the proxy in front of them with the rules
//! and scenarios under `rules/`, and a printed list of what to try. Also
//! the upstream alone, for `faultline demo-upstream` (the compose stack's
//! zone containers). Every upstream answers HTTP with JSON and gRPC calls
//! with the standard health check ([`HEALTH_CHECK`]), over HTTP/1.1 or h2c.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Running};
use crate::book::{self, RuleText};
use crate::config::Config;
use crate::grpc::{self, GrpcStatus};
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

/// The AWS endpoints the demo's DNS server answers, in both regions
/// (`NAME.REGION.amazonaws.com`), with the proxy's address.
pub const DNS_NAMES: [&str; 6] = ["dynamodb", "ec2", "sts", "lambda", "ecs", "connect"];

/// The demo's TCP upstreams: (name, region, zone), each a `cache` (a tiny
/// key-value line protocol, [`serve_kv`]) behind its own port.
pub const TCP_UPSTREAMS: [(&str, &str, &str); 2] = [
    ("cache-use1", "us-east-1", "use1-az1"),
    ("cache-usw2", "us-west-2", "usw2-az1"),
];

/// The longest line the demo cache reads; a longer one closes the connection.
pub const KV_MAX_LINE: usize = 1024;
/// The most keys one demo cache keeps; a `SET` of a new key past it is refused.
pub const KV_MAX_KEYS: usize = 10_000;

/// Rule files compiled in, for a demo started outside a checkout.
const BUILTIN_RULES: [(&str, &str); 5] = [
    (
        "rules/us-east-1-brownout.toml",
        include_str!("../rules/us-east-1-brownout.toml"),
    ),
    (
        "rules/us-east-1-dynamodb-dns.toml",
        include_str!("../rules/us-east-1-dynamodb-dns.toml"),
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
    /// The TCP upstreams' ports on the proxy (name, address).
    pub tcp_ports: Vec<(&'static str, SocketAddr)>,
    pub rules_from: PathBuf,
    upstream_shutdown: CancellationToken,
}

impl Demo {
    /// Starts the demo upstreams and the proxy on `listen`, its DNS server
    /// on any free loopback port. Rules come from `rules_dir` when it
    /// exists, else from the copies built in.
    pub async fn start(
        listen: SocketAddr,
        admin: SocketAddr,
        rules_dir: &Path,
    ) -> Result<Demo, String> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_with_dns(listen, admin, any, rules_dir).await
    }

    /// [`Demo::start`], with the DNS server on `dns` (UDP and TCP).
    pub async fn start_with_dns(
        listen: SocketAddr,
        admin: SocketAddr,
        dns: SocketAddr,
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
        let mut caches = Vec::new();
        for (name, _, _) in TCP_UPSTREAMS {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot start demo upstream {name}: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(serve_kv(listener, upstream_shutdown.clone()));
            caches.push((name, addr));
        }

        let mut config = Config::parse(
            &config_text(listen, admin, dns, &upstreams, &caches),
            Path::new("."),
        )
        .map_err(|e| format!("demo config: {e}"))?;
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        let identities: Vec<_> = config.upstreams.iter().map(Into::into).collect();
        let (app, rules_from) = if rules_dir.is_dir() {
            let rules = book::load_dir(rules_dir, &names)
                .and_then(|book| book.fitted(&identities))
                .map_err(|d| crate::diagnostic::render(&d))?;
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
            let rules = book::load_sources(&texts, &names)
                .and_then(|book| book.fitted(&identities))
                .map_err(|d| crate::diagnostic::render(&d))?;
            let app = App::new(config, rules).with_fixed_rules(texts);
            (app, PathBuf::from("(built-in rules)"))
        };
        let proxy = app.start().await.map_err(|e| e.to_string())?;
        let proxy_addr = proxy
            .listener_addr("edge")
            .ok_or("the demo's edge listener did not start")?;
        let tcp_ports = TCP_UPSTREAMS
            .iter()
            .filter_map(|(name, _, _)| Some((*name, proxy.upstream_addr(name)?)))
            .collect();
        Ok(Demo {
            proxy,
            proxy_addr,
            upstreams,
            tcp_ports,
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
        for (name, addr) in &self.tcp_ports {
            text.push_str(&format!(
                "  tcp        {name} (a key-value cache) on {addr}: printf 'SET k v\\nGET k\\n' | nc {} {}\n",
                addr.ip(),
                addr.port()
            ));
        }
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
        if let Some(dns) = self.proxy.dns_addr() {
            text.push_str(&format!(
                "  dns        {dns} (UDP and TCP): {}.<region>.amazonaws.com, the rest from the system\n",
                DNS_NAMES.join("|")
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
            "  cargo run --release --example grpc_call -- --proxy {proxy} --region us-east-1   # gRPC health checks\n"
        ));
        text.push_str(&format!(
            "  grpcurl -plaintext -import-path examples/grpc -proto health.proto -authority orders.us-east-1.demo {} grpc.health.v1.Health/Check\n",
            self.proxy_addr
        ));
        text.push_str(&format!(
            "  curl -s {admin}/metrics | grep -E '^faultline_(requests|grpc_requests|faults_injected)_total'\n\n"
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
        if let (Some(dns), true) = (
            self.proxy.dns_addr(),
            scenarios.iter().any(|s| s.name == "us-east-1-dynamodb-dns"),
        ) {
            text.push_str("Replay the 19-20 Oct 2025 us-east-1 outage, DNS first:\n");
            text.push_str(&format!(
                "  dig @{} -p {} dynamodb.us-east-1.amazonaws.com A    # NOERROR, one A record\n",
                dns.ip(),
                dns.port()
            ));
            text.push_str(&format!(
                "  {ctl} scenario start us-east-1-dynamodb-dns --speed 600 --follow\n"
            ));
            text.push_str(&format!(
                "  dig @{} -p {} dynamodb.us-east-1.amazonaws.com A    # during the first step: NOERROR, no records (5s TTL)\n\n",
                dns.ip(),
                dns.port()
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
fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
    upstreams: &[(&str, SocketAddr)],
    caches: &[(&str, SocketAddr)],
) -> String {
    let mut text = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[proxy]\nshutdown_grace = \"2s\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"{listen}\"\n"
    );
    // The demo's DNS: the AWS endpoints of its services answer with the
    // proxy's address; every other name is the system's.
    text.push_str(&format!(
        "\n[dns]\nlisten = \"{dns}\"\nupstream = [\"system\"]\n[dns.records]\n"
    ));
    for name in DNS_NAMES {
        for region in ["us-east-1", "us-west-2"] {
            text.push_str(&format!(
                "\"{name}.{region}.amazonaws.com\" = [\"{}\"]\n",
                listen.ip()
            ));
        }
    }
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
    for ((name, region, zone), (_, addr)) in TCP_UPSTREAMS.iter().zip(caches) {
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"{name}\"\nurl = \"tcp://{addr}\"\nlisten = \"127.0.0.1:0\"\nlabels = {{ region = \"{region}\", zone = \"{zone}\", service = \"cache\" }}\n"
        ));
    }
    text
}

/// Serves the demo cache until `stop`: one line per command, one line per
/// answer. `SET KEY VALUE` answers `OK`, `GET KEY` answers `VALUE V` or
/// `NONE`, anything else `ERR unknown command`. A line longer than
/// [`KV_MAX_LINE`] closes the connection; past [`KV_MAX_KEYS`] keys a new
/// key's `SET` answers `ERR full`.
pub async fn serve_kv(listener: TcpListener, stop: CancellationToken) {
    let store = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        String,
    >::new()));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let store = Arc::clone(&store);
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = kv_connection(stream, &store) => {}
            }
        });
    }
}

async fn kv_connection(
    stream: tokio::net::TcpStream,
    store: &std::sync::Mutex<std::collections::HashMap<String, String>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(u64::MAX));
    let mut line = String::new();
    loop {
        line.clear();
        // At most one line and a byte: a longer one is refused, not read on.
        let limit = u64::try_from(KV_MAX_LINE + 1).unwrap_or(u64::MAX);
        lines.get_mut().set_limit(limit);
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line.len() > KV_MAX_LINE || !line.ends_with('\n') {
            write.write_all(b"ERR line too long\n").await?;
            return Ok(());
        }
        let answer = kv_answer(line.trim_end(), store);
        write.write_all(answer.as_bytes()).await?;
    }
}

/// The answer to one command line, with its newline.
fn kv_answer(
    line: &str,
    store: &std::sync::Mutex<std::collections::HashMap<String, String>>,
) -> String {
    let mut words = line.splitn(3, ' ');
    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
    match (words.next(), words.next(), words.next()) {
        (Some("SET"), Some(key), Some(value)) => {
            if store.len() >= KV_MAX_KEYS && !store.contains_key(key) {
                return "ERR full\n".to_owned();
            }
            store.insert(key.to_owned(), value.to_owned());
            "OK\n".to_owned()
        }
        (Some("GET"), Some(key), None) => match store.get(key) {
            Some(value) => format!("VALUE {value}\n"),
            None => "NONE\n".to_owned(),
        },
        _ => "ERR unknown command\n".to_owned(),
    }
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

/// A demo upstream's answer: who it is and what it was asked; a gRPC call
/// is answered by the gRPC health service ([`health_check`]).
async fn answer(
    identity: Arc<serde_json::Value>,
    request: Request<Incoming>,
) -> Result<Response<DemoBody>, Infallible> {
    if grpc::is_call(request.version(), request.headers()) {
        return Ok(health_check(&identity, request).await);
    }
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
    let mut response = Response::new(DemoBody::data(Bytes::from(format!("{body}\n"))));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The gRPC method every demo upstream serves.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The largest request message the health service reads: a service name.
const HEALTH_REQUEST_LIMIT: usize = 4096;

/// The standard gRPC health service's `Check` (grpc.health.v1,
/// `health.proto`), written out by hand: the demo needs one unary method,
/// not a gRPC stack. A request for the whole server (`service` empty) or
/// for this upstream's service name is `SERVING`; any other service is
/// NOT_FOUND, as the protocol says; any other method UNIMPLEMENTED. The
/// answer names the upstream and region in its metadata (`x-upstream`,
/// `x-region`), as the JSON answers do in their body.
async fn health_check(
    identity: &serde_json::Value,
    request: Request<Incoming>,
) -> Response<DemoBody> {
    if request.uri().path() != HEALTH_CHECK {
        let message = format!(
            "{} is not served here; try {HEALTH_CHECK}",
            request.uri().path()
        );
        return grpc_failure(GrpcStatus::UNIMPLEMENTED, &message);
    }
    let body = http_body_util::Limited::new(request.into_body(), HEALTH_REQUEST_LIMIT);
    let Ok(body) = http_body_util::BodyExt::collect(body).await else {
        return grpc_failure(
            GrpcStatus::RESOURCE_EXHAUSTED,
            "the request is too large or broke off",
        );
    };
    let Some(service) = health_request_service(&body.to_bytes()) else {
        return grpc_failure(
            GrpcStatus::INTERNAL,
            "the request is not one HealthCheckRequest",
        );
    };
    let ours = identity.get("service").and_then(|s| s.as_str());
    if !service.is_empty() && Some(service.as_str()) != ours {
        return grpc_failure(
            GrpcStatus::NOT_FOUND,
            &format!("unknown service {service:?}"),
        );
    }
    // HealthCheckResponse { status: SERVING (1) }, in one uncompressed frame.
    const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];
    let mut trailers = http::HeaderMap::new();
    trailers.insert(grpc::GRPC_STATUS.clone(), GrpcStatus::OK.header_value());
    let mut response = Response::new(DemoBody {
        data: Some(Bytes::from_static(&SERVING)),
        trailers: Some(trailers),
    });
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(grpc::CONTENT_TYPE_GRPC),
    );
    for (name, field) in [("x-upstream", "upstream"), ("x-region", "region")] {
        let value = identity.get(field).and_then(|v| v.as_str());
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    response
}

/// The `service` of a HealthCheckRequest in one uncompressed gRPC frame:
/// protobuf field 1, a string; other fields are skipped only if they are
/// varints or strings too (the message has no others).
fn health_request_service(frame: &[u8]) -> Option<String> {
    let (&compressed, rest) = frame.split_first()?;
    let (length, mut message) = rest.split_first_chunk::<4>()?;
    if compressed != 0 || usize::try_from(u32::from_be_bytes(*length)).ok()? != message.len() {
        return None;
    }
    let mut service = String::new();
    while let Some((key, rest)) = varint(message) {
        message = rest;
        match key & 7 {
            0 => message = varint(message)?.1,
            2 => {
                let (len, rest) = varint(message)?;
                let len = usize::try_from(len).ok()?;
                let value = rest.get(..len)?;
                if key >> 3 == 1 {
                    service = String::from_utf8(value.to_vec()).ok()?;
                }
                message = &rest[len..];
            }
            _ => return None,
        }
    }
    message.is_empty().then_some(service)
}

/// A protobuf varint, and what follows it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// A failed gRPC call, trailers-only.
fn grpc_failure(status: GrpcStatus, message: &str) -> Response<DemoBody> {
    let mut response = Response::new(DemoBody {
        data: None,
        trailers: None,
    });
    *response.headers_mut() = grpc::trailers_only(status, message);
    response
}

/// A demo upstream's body: JSON, or a gRPC message and its trailers.
#[derive(Debug)]
pub struct DemoBody {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl DemoBody {
    fn data(data: Bytes) -> Self {
        DemoBody {
            data: Some(data),
            trailers: None,
        }
    }
}

impl hyper::body::Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let frame = match (this.data.take(), this.trailers.take()) {
            (Some(data), trailers) => {
                this.trailers = trailers;
                Some(hyper::body::Frame::data(data))
            }
            (None, Some(trailers)) => Some(hyper::body::Frame::trailers(trailers)),
            (None, None) => None,
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.data, &self.trailers) {
            (Some(data), None) => hyper::body::SizeHint::with_exact(data.len() as u64),
            (None, None) => hyper::body::SizeHint::with_exact(0),
            // With trailers: chunked on HTTP/1.1, no content-length.
            _ => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_cache_answers_one_line_per_command() {
        let store = std::sync::Mutex::default();
        assert_eq!(kv_answer("GET k", &store), "NONE\n");
        assert_eq!(kv_answer("SET k a value", &store), "OK\n");
        assert_eq!(kv_answer("GET k", &store), "VALUE a value\n");
        assert_eq!(kv_answer("DEL k", &store), "ERR unknown command\n");
    }

    #[test]
    fn health_requests_are_read_by_hand() {
        // HealthCheckRequest {} and { service: "orders" }, framed.
        assert_eq!(
            health_request_service(&[0, 0, 0, 0, 0]),
            Some(String::new())
        );
        let mut frame = vec![0, 0, 0, 0, 8, 0x0a, 6];
        frame.extend_from_slice(b"orders");
        assert_eq!(health_request_service(&frame), Some("orders".to_owned()));
        // Compressed, a wrong length, a cut string, no frame at all.
        assert_eq!(health_request_service(&[1, 0, 0, 0, 0]), None);
        assert_eq!(health_request_service(&[0, 0, 0, 0, 3, 0x0a]), None);
        assert_eq!(health_request_service(&[0, 0, 0, 0, 2, 0x0a, 6]), None);
        assert_eq!(health_request_service(&[]), None);
    }
}
