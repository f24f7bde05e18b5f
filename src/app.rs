//! The only place where the pieces are wired together: load and validate
//! (binding nothing), bind every listener, spawn the accept loops, wait for
//! the signal, drain.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::book::{self, RuleBook, RuleText};
use crate::ca::Ca;
use crate::config::Config;
use crate::control::{Control, HaltFile, HaltFileError, Published, RuleFiles, Snapshot, Wiring};
use crate::diagnostic::Diagnostic;
use crate::dns::DnsSockets;
use crate::fault::Fault;
use crate::metrics::Metrics;
use crate::proxy::ForwardTls;
use crate::proxy::{Entry, Proxy};
use crate::reload;
use crate::rules::{LiveRule, Rule, RuleSource};
use crate::scenario::Scenario;
use crate::server::{self, Limits, Stop, TlsDoor};
use crate::tcp::{self, TcpDoor};
use crate::tls::{ServedCertificate, UpstreamTls, UpstreamTlsSettings};
use crate::toxiproxy::{Toxiproxy, ToxiproxyWiring};

/// A validated configuration and its rules, not yet bound to any port.
#[derive(Debug)]
pub struct App {
    config: Config,
    files: RuleFiles,
    book: RuleBook,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        addr: SocketAddr,
        what: String,
        #[source]
        source: io::Error,
    },
    /// A certificate, key or CA file could not be used.
    #[error("{0}")]
    Tls(String),
    #[error(transparent)]
    HaltFile(#[from] HaltFileError),
}

impl App {
    /// Reads the config file and every rule file; reports every problem.
    pub fn load(config_path: &Path) -> Result<App, Vec<Diagnostic>> {
        let config = Config::load(config_path)?;
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        let identities: Vec<_> = config.upstreams.iter().map(Into::into).collect();
        let book = book::load_dir(&config.proxy.rules_dir, &names)?.fitted(&identities)?;
        Ok(App::new(config, book))
    }

    /// Rules and scenarios read from the config's `rules_dir`, which reloads read again.
    pub fn new(config: Config, book: RuleBook) -> App {
        let files = RuleFiles::Dir(config.proxy.rules_dir.clone());
        App {
            config,
            files,
            book,
        }
    }

    /// Rules that come from these texts rather than from `rules_dir`:
    /// reloads read the same texts again, and nothing is watched.
    pub fn with_fixed_rules(mut self, texts: Vec<RuleText>) -> App {
        self.files = RuleFiles::Fixed(texts);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.book.rules
    }

    pub fn scenarios(&self) -> &[Arc<Scenario>] {
        &self.book.scenarios
    }

    /// Things that are valid but may not do what the author meant, one line
    /// each, as `PATH: warning: MESSAGE`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for upstream in &self.config.upstreams {
            if upstream.tls.as_ref().is_some_and(|tls| !tls.verify) {
                warnings.push(format!(
                    "warning: upstream {:?}: tls.verify = false: its certificate is not checked, so anything on the path can pose as it",
                    upstream.name
                ));
            }
        }
        if let Some(path) = &self.config.admin.halt_file {
            match HaltFile::open(path.clone()) {
                Ok((_, Some(note))) => warnings.push(format!(
                    "warning: admin.halt_file {} says {note:?}: `faultline run` starts halted, until `faultline ctl resume`",
                    path.display()
                )),
                Ok((_, None)) => {}
                Err(e) => warnings.push(format!(
                    "warning: {e}: `faultline run` will refuse to start"
                )),
            }
        }
        let now = std::time::SystemTime::now();
        warnings.extend(
            self.book
                .scenarios
                .iter()
                .filter_map(|scenario| scenario.start_at_warning(now)),
        );
        for rule in &self.book.rules {
            if !matches!(rule.fault, Fault::Refuse) {
                continue;
            }
            let path = match &rule.source {
                RuleSource::File(path) => path.display().to_string(),
                RuleSource::Api => "api".to_owned(),
            };
            for upstream in &self.config.upstreams {
                if !rule.matcher.applies_to_upstream(upstream.into()) {
                    continue;
                }
                let why = if upstream.listen.is_none() {
                    "has no dedicated port (`listen`)"
                } else if !LiveRule::as_defined(Arc::clone(rule)).refuses(upstream.into()) {
                    "is refused only by a rule that takes every request, every time"
                } else {
                    continue;
                };
                warnings.push(format!(
                    "{path}: warning: rule {:?}: upstream {:?} {why}, so mode = \"refuse\" resets its connections instead",
                    rule.name(),
                    upstream.name
                ));
            }
        }
        warnings
    }

    /// Binds every listener, then starts serving. Nothing serves unless all bind.
    pub async fn start(self) -> Result<Running, StartError> {
        let config = self.config;
        let seed = config.proxy.seed.unwrap_or_else(random_seed);
        let metrics = Metrics::new();
        let tls = TlsMaterial::load(&config)?;
        // Empty until the control publishes the rules, before anything binds.
        let published = Arc::new(Published::new(Snapshot::empty(&config.upstreams)));
        let proxy = Arc::new(Proxy::new(
            &config,
            &tls.upstreams,
            tls.forward(),
            Arc::clone(&published),
            metrics.clone(),
        ));
        // Read before anything binds: a halt kept from the last run holds.
        let (halt_file, halted) = match config.admin.halt_file.clone() {
            Some(path) => {
                let (file, note) = HaltFile::open(path)?;
                (Some(file), note)
            }
            None => (None, None),
        };
        let wiring = Wiring {
            upstreams: config.upstreams.clone(),
            metrics: metrics.clone(),
            tallies: proxy.tallies(),
            published,
            certificates: tls.served(),
            halt_file,
        };
        let control = Control::new(wiring, self.files.clone(), self.book, seed);
        if let Some(note) = halted {
            control.start_halted(&note);
        }
        // Runs the rule files anchor with `start_at`: armed, or joined mid-run.
        control.arm_from_files();

        let admin = bind(config.admin.listen, "the admin API")?;
        let mut bound = Vec::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let what = format!("listener {:?}", listener.name);
            let entry = match listener.forward {
                Some(_) => Entry::Forward(i),
                None => Entry::Listener(i),
            };
            bound.push((
                bind(listener.listen, &what)?,
                entry,
                listener.name.clone(),
                tls.listeners[i].clone(),
            ));
        }
        let mut tcp_bound = Vec::new();
        for (i, upstream) in config.upstreams.iter().enumerate() {
            if let (Some(addr), true) = (upstream.listen, upstream.is_tcp()) {
                let what = format!("the dedicated port of tcp upstream {:?}", upstream.name);
                tcp_bound.push((bind(addr, &what)?, i));
                continue;
            }
            if let Some(addr) = upstream.listen {
                let what = format!("the dedicated port of upstream {:?}", upstream.name);
                bound.push((
                    bind(addr, &what)?,
                    Entry::Upstream(i),
                    upstream.name.clone(),
                    tls.dedicated[i].clone(),
                ));
            }
        }

        let dns = match config
            .dns
            .as_ref()
            .and_then(|dns| dns.listen.map(|addr| (dns, addr)))
        {
            Some((dns, addr)) => Some((
                dns.clone(),
                DnsSockets::bind(addr).map_err(|source| StartError::Bind {
                    addr,
                    what: "the DNS server (UDP and TCP)".to_owned(),
                    source,
                })?,
            )),
            None => None,
        };

        let shutdown = CancellationToken::new();
        let grace = config.proxy.shutdown_grace;
        let limits = Limits {
            header_timeout: config.proxy.header_timeout,
        };
        let mut listeners = Vec::new();
        let mut tasks = Vec::new();
        for (listener, entry, name, certificate) in bound {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                what: name.clone(),
                source,
            })?;
            let door = certificate.map(|certificate| TlsDoor {
                acceptor: TlsAcceptor::from(certificate.server_config()),
                // Named as faultline_inflight_requests names the door.
                failures: metrics.tls_handshake_errors(&match entry {
                    Entry::Listener(_) | Entry::Forward(_) => name.clone(),
                    Entry::Upstream(_) => format!("upstream:{name}"),
                }),
            });
            let scheme = if door.is_some() { "https" } else { "http" };
            info!(%addr, name, kind = entry_kind(entry), scheme, "listening");
            listeners.push(BoundListener { name, entry, addr });
            let proxy = Arc::clone(&proxy);
            let stop = Stop::draining(shutdown.clone(), grace);
            let task = match (entry, door) {
                (Entry::Listener(_) | Entry::Forward(_), None) => tokio::spawn(server::serve(
                    listener,
                    move |conn| proxy.service(entry, conn),
                    limits,
                    stop,
                )),
                (Entry::Listener(_) | Entry::Forward(_), Some(door)) => {
                    tokio::spawn(server::serve_tls(
                        listener,
                        door,
                        move |conn| proxy.service(entry, conn),
                        limits,
                        stop,
                    ))
                }
                (Entry::Upstream(upstream), door) => tokio::spawn(serve_dedicated(
                    listener, addr, upstream, door, proxy, limits, stop,
                )),
            };
            tasks.push(task);
        }
        let mut dns_addr = None;
        if let Some((dns, sockets)) = dns {
            dns_addr = sockets.local_addr().ok();
            tasks.extend(sockets.serve(
                dns,
                Arc::clone(proxy.published()),
                &metrics,
                shutdown.clone(),
            ));
        }
        let tallies = proxy.tallies();
        for (listener, i) in tcp_bound {
            let upstream = &config.upstreams[i];
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                what: upstream.name.clone(),
                source,
            })?;
            info!(%addr, name = upstream.name, kind = "tcp upstream", "listening");
            listeners.push(BoundListener {
                name: upstream.name.clone(),
                entry: Entry::Upstream(i),
                addr,
            });
            let door = Arc::new(TcpDoor {
                upstream: i,
                config: upstream.clone(),
                published: Arc::clone(proxy.published()),
                metrics: metrics.tcp(upstream, Arc::clone(&tallies[i])),
                connect_timeout: config.proxy.connect_timeout,
                listening: tokio::sync::watch::Sender::new(true),
            });
            let stop = Stop::draining(shutdown.clone(), grace);
            tasks.push(tokio::spawn(tcp::serve(listener, addr, door, stop)));
        }
        let mut toxiproxy = None;
        if let Some(addr) = config.toxiproxy {
            let listener = bind(addr, "the Toxiproxy API")?;
            let bound = listener.local_addr().map_err(|source| StartError::Bind {
                addr,
                what: "the Toxiproxy API".to_owned(),
                source,
            })?;
            info!(addr = %bound, "Toxiproxy API listening");
            let api = Toxiproxy::new(ToxiproxyWiring {
                control: Arc::clone(&control),
                published: Arc::clone(proxy.published()),
                metrics: metrics.clone(),
                connect_timeout: config.proxy.connect_timeout,
                shutdown: shutdown.clone(),
                grace,
            });
            let service_api = Arc::clone(&api);
            tasks.push(tokio::spawn(server::serve(
                listener,
                move |_conn| {
                    let api = Arc::clone(&service_api);
                    hyper::service::service_fn(move |request| Arc::clone(&api).handle(request))
                },
                limits,
                Stop::draining(shutdown.clone(), grace),
            )));
            toxiproxy = Some((api, bound));
        }
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: config.admin.listen,
            what: "the admin API".to_owned(),
            source,
        })?;
        info!(addr = %admin_addr, "admin API and /metrics listening");
        let api = Arc::new(Admin::new(
            Arc::clone(&control),
            metrics,
            config.admin.token.clone(),
        ));
        tasks.push(tokio::spawn(server::serve(
            admin,
            move |conn| {
                let api = Arc::clone(&api);
                hyper::service::service_fn(move |request| {
                    Arc::clone(&api).handle(conn.peer, request)
                })
            },
            limits,
            Stop::draining(shutdown.clone(), grace),
        )));
        if let (RuleFiles::Dir(dir), true) = (&self.files, config.proxy.watch_rules) {
            match reload::watch(dir, Arc::clone(&control), shutdown.clone()) {
                Ok(task) => tasks.push(task),
                Err(e) => warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch the rule files; reload with SIGHUP or POST /api/reload"
                ),
            }
        }
        #[cfg(unix)]
        match reload::on_hangup(Arc::clone(&control), shutdown.clone()) {
            Ok(task) => tasks.push(task),
            Err(e) => warn!(error = %e, "cannot listen for SIGHUP"),
        }
        info!(
            seed,
            rules = proxy.published().load().rules.rules().len(),
            "faultline is serving"
        );
        Ok(Running {
            proxy,
            toxiproxy,
            control,
            listeners,
            admin_addr,
            dns_addr,
            shutdown,
            tasks,
            seed,
        })
    }
}

/// An upstream's dedicated port, served while no rule refuses it. While one
/// does, the port is closed, so connections are refused for real, and the
/// connections already open are reset; it opens again as soon as the rule
/// snapshot stops refusing (the snapshot's change wakes this task).
async fn serve_dedicated(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: usize,
    tls: Option<TlsDoor>,
    proxy: Arc<Proxy>,
    limits: Limits,
    stop: Stop,
) {
    let published = Arc::clone(proxy.published());
    let mut changes = published.subscribe();
    let mut listener = Some(listener);
    let name = proxy.upstreams()[upstream].name.clone();
    loop {
        let refused = || published.load().rules.refuses(upstream);
        let Some(socket) = server::open_unless_refused(
            &mut listener,
            addr,
            &name,
            refused,
            || {},
            &mut changes,
            &stop,
        )
        .await
        else {
            return;
        };
        let serving = Stop {
            drain: stop.drain.clone(),
            reset: CancellationToken::new(),
            grace: stop.grace,
        };
        let reset = serving.reset.clone();
        let proxy_for_service = Arc::clone(&proxy);
        let service = move |conn| proxy_for_service.service(Entry::Upstream(upstream), conn);
        let mut task = match tls.clone() {
            None => tokio::spawn(server::serve(socket, service, limits, serving)),
            Some(door) => tokio::spawn(server::serve_tls(socket, door, service, limits, serving)),
        };
        loop {
            tokio::select! {
                _ = &mut task => return,
                changed = changes.changed() => {
                    if changed.is_err() || published.load().rules.refuses(upstream) {
                        break;
                    }
                }
            }
        }
        reset.cancel();
        let _ = task.await;
    }
}

/// The TLS a start reads: every listener's and dedicated port's
/// certificate, every `https://` upstream's client side.
struct TlsMaterial {
    /// By listener index.
    listeners: Vec<Option<Arc<ServedCertificate>>>,
    /// By upstream index: the dedicated port's certificate.
    dedicated: Vec<Option<Arc<ServedCertificate>>>,
    /// By upstream index.
    upstreams: Vec<Option<UpstreamTls>>,
    /// faultline's CA, when a listener intercepts or generates.
    ca: Option<Arc<Ca>>,
    /// By upstream index: intercepted traffic's TLS to each destination
    /// (and `other`), when a listener intercepts.
    forward_clients: Vec<Option<Arc<rustls::ClientConfig>>>,
}

impl TlsMaterial {
    fn load(config: &Config) -> Result<TlsMaterial, StartError> {
        let served = |tls: Option<&crate::config::ServedTls>, what: &str| {
            tls.map(|tls| ServedCertificate::load(&tls.cert, &tls.key))
                .transpose()
                .map_err(|e| StartError::Tls(format!("{what}: {e}")))
        };
        let intercepts = config
            .listeners
            .iter()
            .any(|l| l.forward.as_ref().is_some_and(|f| !f.intercept.is_empty()));
        let generates = config.listeners.iter().any(|l| l.generate.is_some());
        let ca = match intercepts || generates {
            true => {
                Some(Ca::open(&config.ca.dir).map_err(|e| StartError::Tls(format!("[ca]: {e}")))?)
            }
            false => None,
        };
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let what = format!("listener {:?}", listener.name);
            if let (Some(names), Some(ca)) = (&listener.generate, &ca) {
                let pair = ca
                    .leaf_for(names)
                    .map_err(|e| StartError::Tls(format!("{what}: tls.generate: {e}")))?;
                listeners.push(Some(ServedCertificate::generated(pair, ca.cert_path())));
                continue;
            }
            listeners.push(served(listener.tls.as_ref(), &what)?);
        }
        let mut dedicated = Vec::new();
        let mut upstreams = Vec::new();
        for upstream in &config.upstreams {
            let what = format!("upstream {:?}: listen_tls", upstream.name);
            dedicated.push(served(upstream.listen_tls.as_ref(), &what)?);
            let Some(settings) = &upstream.tls else {
                upstreams.push(None);
                continue;
            };
            if !settings.verify {
                warn!(
                    upstream = upstream.name,
                    "tls.verify = false: the upstream's certificate is not checked"
                );
            }
            let tls = UpstreamTls::new(settings, upstream.authority.host(), &[b"http/1.1"])
                .map_err(|e| StartError::Tls(format!("upstream {:?}: {e}", upstream.name)))?;
            upstreams.push(Some(tls));
        }
        let mut forward_clients = vec![None; config.upstreams.len()];
        if intercepts {
            for (i, upstream) in config.upstreams.iter().enumerate() {
                if !upstream.ad_hoc {
                    continue;
                }
                let destination = config.destinations.iter().find(|d| d.upstream == i);
                let settings = UpstreamTlsSettings {
                    ca: destination.and_then(|d| d.ca.clone()),
                    verify: true,
                    ..UpstreamTlsSettings::default()
                };
                // The name is each request's; this one is a placeholder.
                let tls = UpstreamTls::new(&settings, "localhost", &[b"h2", b"http/1.1"]).map_err(
                    |e| StartError::Tls(format!("destination {:?}: {e}", upstream.name)),
                )?;
                forward_clients[i] = Some(tls.config);
            }
        }
        Ok(TlsMaterial {
            listeners,
            dedicated,
            upstreams,
            ca,
            forward_clients,
        })
    }

    /// What the proxy needs for forward traffic's TLS.
    fn forward(&self) -> ForwardTls {
        ForwardTls {
            ca: self.ca.clone(),
            clients: self.forward_clients.clone(),
        }
    }

    /// Every certificate served, which reloads read again.
    fn served(&self) -> Vec<Arc<ServedCertificate>> {
        self.listeners
            .iter()
            .chain(&self.dedicated)
            .flatten()
            .cloned()
            .collect()
    }
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    server::bind(addr).map_err(|source| StartError::Bind {
        addr,
        what: what.to_owned(),
        source,
    })
}

fn entry_kind(entry: Entry) -> &'static str {
    match entry {
        Entry::Listener(_) => "listener",
        Entry::Forward(_) => "forward listener",
        Entry::Upstream(_) => "upstream",
    }
}

/// A seed for runs without `[proxy] seed`; logged so a run can be replayed.
fn random_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[derive(Debug, Clone)]
struct BoundListener {
    name: String,
    entry: Entry,
    addr: SocketAddr,
}

/// A proxy that is serving.
pub struct Running {
    proxy: Arc<Proxy>,
    /// The Toxiproxy API and where it listens, with `[toxiproxy]`.
    toxiproxy: Option<(Arc<Toxiproxy>, SocketAddr)>,
    control: Arc<Control>,
    listeners: Vec<BoundListener>,
    admin_addr: SocketAddr,
    /// The DNS server's address (UDP and TCP), when `[dns] listen` is set.
    dns_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    seed: u64,
}

impl Running {
    /// The bound address of a `[[listener]]`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.find(name, |e| {
            matches!(e, Entry::Listener(_) | Entry::Forward(_))
        })
    }

    /// The bound address of an upstream's dedicated port.
    pub fn upstream_addr(&self, name: &str) -> Option<SocketAddr> {
        self.find(name, |e| matches!(e, Entry::Upstream(_)))
    }

    fn find(&self, name: &str, kind: impl Fn(Entry) -> bool) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name && kind(l.entry))
            .map(|l| l.addr)
    }

    /// The bound address of the Toxiproxy API, with `[toxiproxy]`.
    pub fn toxiproxy_addr(&self) -> Option<SocketAddr> {
        self.toxiproxy.as_ref().map(|(_, addr)| *addr)
    }

    /// The Toxiproxy API, with `[toxiproxy]`.
    pub fn toxiproxy(&self) -> Option<&Arc<Toxiproxy>> {
        self.toxiproxy.as_ref().map(|(api, _)| api)
    }

    /// The bound address of the admin API and `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound address of the DNS server (UDP and TCP on the same port).
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The rules while the proxy runs: what the admin API drives.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The seed fault decisions are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Stops accepting, lets in-flight requests finish within the grace
    /// period, and returns when every listener is done.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        info!("shutting down: no new connections, draining in-flight requests");
        self.shutdown().await;
        info!("stopped");
    }
}

impl Drop for Running {
    /// A proxy dropped without [`Running::shutdown`] still stops what it
    /// started: the listeners close and drain in the background, and the
    /// watcher, the SIGHUP listener and the admin API end with them.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Builds the runtime: `workers` threads, or one per core.
///
/// One worker runs everything on the calling thread: with no second thread
/// to hand work to, the multi-thread scheduler only adds cross-thread
/// wake-ups to every request.
pub fn runtime(workers: Option<usize>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}
