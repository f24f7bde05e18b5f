//! How the process runs: listeners, upstreams, routes and proxy settings
//! (README "Running it in front of your services"), parsed from `faultline.toml` and validated before anything binds.
//!
//! [`ConfigFile`] mirrors the TOML; [`Config::from_wire`] turns it into the
//! validated model, collecting every problem rather than stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use serde::Deserialize;

use crate::diagnostic::{Diagnostic, FieldError, FieldPath};
use crate::tls::UpstreamTlsSettings;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9000";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_ACTIVE_FAULTS: usize = 10_000;
/// One connection carries every stream, as browsers and gRPC clients do;
/// the server's `max_concurrent_streams` queues the rest.
pub const DEFAULT_H2_CONNECTIONS: usize = 1;
pub const MAX_H2_CONNECTIONS: usize = 64;
/// Where a forward listener binds without `listen`: loopback, Squid's port.
pub const DEFAULT_FORWARD_LISTEN: &str = "127.0.0.1:3128";
/// The port every forward listener lets `CONNECT` reach (HTTPS).
pub const HTTPS_PORT: u16 = 443;
/// The upstream forward traffic is counted under, and its rules name, when
/// no configured `[[upstream]]` has the request's authority (SPEC §8: the
/// name forward traffic gets when no destination matches).
pub const FORWARD_OTHER: &str = "other";
/// The scheme of a TCP upstream's `url` (SPEC §9).
pub const TCP_SCHEME: &str = "tcp";
/// Where `[toxiproxy]` listens without `listen`: Toxiproxy's own port.
pub const DEFAULT_TOXIPROXY_LISTEN: &str = "127.0.0.1:8474";

// ---------------------------------------------------------------------------
// Wire types: exactly the TOML schema.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub listener: Vec<ListenerSection>,
    #[serde(default)]
    pub upstream: Vec<UpstreamSection>,
    #[serde(default)]
    pub route: Vec<RouteSection>,
    #[serde(default)]
    pub ca: CaSection,
    #[serde(default)]
    pub destination: Vec<DestinationSection>,
    pub toxiproxy: Option<ToxiproxySection>,
    pub dns: Option<DnsSection>,
}

/// `[ca]`: where faultline's own certificate authority lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    pub dir: Option<PathBuf>,
}

/// `[[destination]]`: how forward traffic to some hosts is named and sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSection {
    pub name: String,
    /// A glob on the target host.
    pub host: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `host:port` to dial instead of the host the client names.
    pub connect_to: Option<String>,
    pub tls: Option<DestinationTlsSection>,
}

/// `tls = { ca }` on a destination: trusted besides the system's roots.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTlsSection {
    pub ca: Option<PathBuf>,
}

/// `[toxiproxy]`: Toxiproxy 2.x's REST API, for its client libraries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToxiproxySection {
    pub listen: Option<String>,
    /// The API may listen beyond loopback (it has no authentication).
    pub allow_remote: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub halt_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub rules_dir: Option<PathBuf>,
    pub seed: Option<u64>,
    pub workers: Option<usize>,
    pub max_active_faults: Option<usize>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub h2_connections: Option<usize>,
    pub shutdown_grace: Option<String>,
    pub mark_faults: Option<bool>,
    pub watch_rules: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: String,
    /// Required for a reverse listener; a forward one binds
    /// [`DEFAULT_FORWARD_LISTEN`] without it.
    pub listen: Option<String>,
    pub tls: Option<ServedTlsSection>,
    #[serde(default)]
    pub mode: ListenerMode,
    /// A forward listener may bind beyond loopback.
    pub allow_remote: Option<bool>,
    /// Ports a forward listener's `CONNECT` may reach besides 443.
    pub allow_ports: Option<Vec<u16>>,
    /// Host globs whose `CONNECT`s a forward listener terminates with
    /// faultline's CA (SPEC §8); other `CONNECT`s are byte tunnels.
    pub intercept: Option<Vec<String>>,
}

/// What a listener is: a reverse proxy in front of the upstreams its
/// routes name, or a forward proxy clients set as `HTTP_PROXY` /
/// `HTTPS_PROXY`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    #[default]
    Reverse,
    Forward,
}

/// `tls = { cert, key }` on a listener (or `listen_tls` on an upstream's
/// dedicated port): the PEM chain and key it serves; or, on a listener,
/// `tls = { generate = [names] }`: a certificate for those names, signed
/// by faultline's CA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedTlsSection {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub generate: Option<Vec<String>>,
}

/// `tls = { … }` on an `https://` upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub listen: Option<String>,
    #[serde(default)]
    pub host: HostMode,
    #[serde(default)]
    pub protocol: Protocol,
    pub tls: Option<UpstreamTlsSection>,
    /// TLS on the dedicated port (`listen`).
    pub listen_tls: Option<ServedTlsSection>,
}

/// Which HTTP version faultline speaks to an upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Over `https://`, what ALPN agrees (h2 preferred); over `http://`,
    /// the version the client spoke (an h2c client gets h2c).
    #[default]
    Auto,
    /// HTTP/1.1 always.
    Http1,
    /// HTTP/2 over TLS (`https://` only).
    H2,
    /// HTTP/2 without TLS, by prior knowledge (`http://` only).
    H2c,
}

/// Which `Host` an upstream is sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostMode {
    /// The upstream's own authority, from its `url` (the default): what a
    /// server behind a reverse proxy usually expects.
    #[default]
    Upstream,
    /// The client's `Host` (or HTTP/2 `:authority`), unchanged: requests
    /// signed over `Host` (AWS SigV4) still verify, and virtual hosts and
    /// absolute URLs the upstream builds name what the client asked for.
    Preserve,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub listener: String,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: String,
}

// ---------------------------------------------------------------------------
// The validated model.

#[derive(Debug, Clone)]
pub struct Config {
    pub admin: AdminConfig,
    pub proxy: ProxyConfig,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[dns]`: faultline's DNS server and the names it answers itself.
    pub dns: Option<DnsConfig>,
    /// In file order: the first whose host matches names forward traffic.
    pub destinations: Vec<DestinationConfig>,
    pub ca: CaConfig,
    /// Where the Toxiproxy API listens, when `[toxiproxy]` is given.
    pub toxiproxy: Option<SocketAddr>,
}

/// Where faultline's CA lives: `ca.pem` and `ca-key.pem` in `dir`,
/// created on first use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// Absolute, or relative to the directory of the config file.
    pub dir: PathBuf,
}

/// The folder of faultline's CA when `[ca] dir` is not given.
pub const DEFAULT_CA_DIR: &str = "faultline-ca";

/// A `[[destination]]`, validated.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    pub host: HostPattern,
    /// Index into [`Config::upstreams`] of the ad-hoc upstream its traffic
    /// is counted under (named as the destination).
    pub upstream: usize,
    /// Dialled instead of the host the client names, which still goes in
    /// `Host` and SNI.
    pub connect_to: Option<Authority>,
    /// PEM certificates trusted besides the system's roots, for
    /// intercepted traffic's TLS to it.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Where a halt is kept across restarts (relative paths from the
    /// config file's folder); `None`: a halt lives in memory only.
    pub halt_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Absolute, or relative to the directory of the config file.
    pub rules_dir: PathBuf,
    /// `None`: a random seed is drawn at start and logged.
    pub seed: Option<u64>,
    /// `None`: one worker thread per core.
    pub workers: Option<usize>,
    pub max_active_faults: usize,
    pub connect_timeout: Duration,
    /// How long the upstream may take to send response headers.
    pub upstream_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// How long a client may take to send a request's head: from connecting
    /// for the first, from the previous response for the next (HTTP/1.1).
    /// A connection that does not is closed.
    pub header_timeout: Duration,
    /// The most HTTP/2 connections kept to one upstream; requests share
    /// them as streams.
    pub h2_connections: usize,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    pub mark_faults: bool,
    /// Reload the rule files when they change (SIGHUP and `POST
    /// /api/reload` work either way).
    pub watch_rules: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Serves TLS with this certificate.
    pub tls: Option<ServedTls>,
    /// Serves TLS with a certificate for these names, signed by faultline's
    /// CA (`tls = { generate = [...] }`); `tls` is then `None`.
    pub generate: Option<Vec<String>>,
    /// A forward listener's settings; `None` for a reverse listener.
    pub forward: Option<ForwardSettings>,
}

/// What a forward listener lets through.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The ports `CONNECT` may reach: 443, `allow_ports` and the ports of
    /// destinations' `connect_to`, sorted, once each.
    pub connect_ports: Vec<u16>,
    /// Hosts whose `CONNECT`s are terminated with faultline's CA.
    pub intercept: Vec<HostPattern>,
}

impl ForwardSettings {
    pub fn allows_connect_to(&self, port: u16) -> bool {
        self.connect_ports.binary_search(&port).is_ok()
    }

    /// Whether a `CONNECT` to `host` is decrypted (else tunnelled as bytes).
    pub fn intercepts(&self, host: &str) -> bool {
        self.intercept.iter().any(|pattern| pattern.matches(host))
    }
}

/// The certificate a TLS listener or dedicated port serves; paths resolved
/// against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The `Host` header sent upstream: the upstream's authority.
    pub host_header: HeaderValue,
    /// Whether requests keep their own `Host` instead.
    pub host: HostMode,
    /// The HTTP version spoken to it.
    pub protocol: Protocol,
    pub labels: BTreeMap<String, String>,
    /// A dedicated port whose every request goes to this upstream.
    pub listen: Option<SocketAddr>,
    /// TLS on the dedicated port.
    pub listen_tls: Option<ServedTls>,
    /// For an `https://` upstream: how it is verified and who faultline
    /// says it is.
    pub tls: Option<UpstreamTlsSettings>,
    /// The stand-in for forward traffic no configured upstream has
    /// ([`FORWARD_OTHER`]): each request goes to its own authority, and
    /// `scheme`, `authority` and `host_header` are placeholders nothing dials.
    pub ad_hoc: bool,
    /// What its dedicated port carries: HTTP requests, or bytes (a
    /// `tcp://` url).
    pub transport: Transport,
}

/// What an upstream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP requests (`http://`, `https://`).
    Http,
    /// A byte stream (`tcp://`): each connection to its dedicated port is
    /// copied to it (SPEC §9).
    Tcp,
}

impl Transport {
    fn of(scheme: &Scheme) -> Self {
        if scheme.as_str() == TCP_SCHEME {
            Transport::Tcp
        } else {
            Transport::Http
        }
    }
}

impl UpstreamConfig {
    /// The upstream forward traffic with no configured upstream is counted
    /// under: named [`FORWARD_OTHER`], no labels, HTTP/1.1.
    fn forward_other() -> Self {
        Self::ad_hoc(FORWARD_OTHER)
    }

    /// An upstream with no address of its own, for forward traffic: each
    /// request goes to its own authority.
    fn ad_hoc(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            scheme: Scheme::HTTP,
            authority: Authority::from_static(FORWARD_OTHER),
            host_header: HeaderValue::from_static(FORWARD_OTHER),
            host: HostMode::Upstream,
            protocol: Protocol::Http1,
            labels: BTreeMap::new(),
            listen: None,
            listen_tls: None,
            tls: None,
            ad_hoc: true,
            transport: Transport::Http,
        }
    }

    /// A `tcp://` upstream reached through `listen`, as the Toxiproxy API
    /// makes them: no labels but those given.
    pub fn tcp(
        name: &str,
        authority: Authority,
        listen: SocketAddr,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            scheme: Scheme::try_from(TCP_SCHEME).unwrap_or(Scheme::HTTP),
            host_header: HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            authority,
            host: HostMode::Upstream,
            protocol: Protocol::Http1,
            labels,
            listen: Some(listen),
            listen_tls: None,
            tls: None,
            ad_hoc: false,
            transport: Transport::Tcp,
        }
    }

    pub fn is_tcp(&self) -> bool {
        self.transport == Transport::Tcp
    }

    /// Whether a request for `host:port` over `scheme` (port already made
    /// explicit) is for this upstream: the same host, case aside, and port.
    pub fn has_authority(&self, host: &str, port: u16) -> bool {
        // A TCP upstream carries no HTTP: forward traffic never goes to it.
        !self.ad_hoc
            && !self.is_tcp()
            && self.authority.host().eq_ignore_ascii_case(host)
            && self.port() == port
    }

    /// The port its url names, or its scheme's.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == Scheme::HTTPS {
                443
            } else {
                80
            })
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Index into [`Config::listeners`].
    pub listener: usize,
    pub host: Option<HostPattern>,
    pub path_prefix: Option<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
}

/// A glob over the request's host name (port ignored, case-insensitive).
#[derive(Debug, Clone)]
pub struct HostPattern {
    pub glob: String,
    matcher: GlobMatcher,
}

impl HostPattern {
    pub fn new(glob: &str) -> Result<Self, String> {
        let matcher = GlobBuilder::new(&glob.to_ascii_lowercase())
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("invalid host glob {glob:?}: {}", e.kind()))?
            .compile_matcher();
        Ok(Self {
            glob: glob.to_owned(),
            matcher,
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        self.matcher.is_match(host)
    }
}

impl RouteConfig {
    /// Whether this route takes a request for `host` (port already removed) and `path`.
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(pattern) = &self.host {
            match host {
                Some(host) if pattern.matches(host) => {}
                _ => return false,
            }
        }
        match &self.path_prefix {
            Some(prefix) => path_has_prefix(path, prefix),
            None => true,
        }
    }
}

/// Segment-aware prefix: `/orders` takes `/orders` and `/orders/1`, not `/ordersx`.
/// A prefix ending in `/` is a plain string prefix.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// Reads and validates a config file; every problem is reported.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diagnostic::whole_file(
                path,
                format!("cannot read config file: {e}"),
            )]
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        // The load step reads the environment; validation reads what it was given.
        let variables = Variables::from_process(&text);
        let at_lines = |errors: Vec<FieldError>| {
            errors
                .iter()
                .map(|e| Diagnostic::from_field(path, &text, e))
                .collect()
        };
        let config =
            Self::parse_with(&text, base_dir, &variables).map_err(|errors| match errors {
                ParseError::Toml(e) => vec![Diagnostic::from_toml(path, &text, &e)],
                ParseError::Invalid(errors) => at_lines(errors),
            })?;
        // The load step also reads the certificates and keys the config
        // names, so a bad one is reported at its line before anything binds.
        match config.check_tls_files() {
            problems if problems.is_empty() => Ok(config),
            problems => Err(at_lines(problems)),
        }
    }

    /// Reads every certificate, key and CA file the config names and checks
    /// them as a start would: unreadable, not PEM, a key that does not
    /// match its certificate, a certificate out of its validity period.
    pub fn check_tls_files(&self) -> Vec<FieldError> {
        let root = FieldPath::root();
        let mut errors = Vec::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            if let Some(tls) = &listener.tls {
                if let Err(e) = crate::tls::load_certified_key(&tls.cert, &tls.key) {
                    let at = root.key("listener").index(i).key("tls");
                    errors.push(FieldError::new(
                        at,
                        format!("listener {:?}: {e}", listener.name),
                    ));
                }
            }
        }
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let at = root.key("upstream").index(i);
            if let Some(tls) = &upstream.listen_tls {
                if let Err(e) = crate::tls::load_certified_key(&tls.cert, &tls.key) {
                    let message = format!("upstream {:?}: listen_tls: {e}", upstream.name);
                    errors.push(FieldError::new(at.key("listen_tls"), message));
                }
            }
            if let Some(settings) = &upstream.tls {
                let host = upstream.authority.host();
                if let Err(e) = crate::tls::UpstreamTls::new(settings, host, &[]) {
                    let message = format!("upstream {:?}: {e}", upstream.name);
                    errors.push(FieldError::new(at.key("tls"), message));
                }
            }
        }
        for (i, destination) in self.destinations.iter().enumerate() {
            if let Some(ca) = &destination.ca {
                if let Err(e) = crate::tls::read_certificates(ca, "tls.ca") {
                    let name = &self.upstreams[destination.upstream].name;
                    let at = root.key("destination").index(i).key("tls");
                    errors.push(FieldError::new(at, format!("destination {name:?}: {e}")));
                }
            }
        }
        errors
    }

    /// Parses and validates config text; relative paths are taken from
    /// `base_dir`. Pure: no file and no environment variable is read (an
    /// `admin.token_env` finds nothing: use [`Config::parse_with`]).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ParseError> {
        Self::parse_with(text, base_dir, &Variables::default())
    }

    /// [`Config::parse`], with the environment variables the load step read.
    pub fn parse_with(
        text: &str,
        base_dir: &Path,
        variables: &Variables,
    ) -> Result<Config, ParseError> {
        let wire: ConfigFile = toml::from_str(text).map_err(ParseError::Toml)?;
        Self::from_wire(wire, base_dir, variables).map_err(ParseError::Invalid)
    }

    pub fn from_wire(
        wire: ConfigFile,
        base_dir: &Path,
        variables: &Variables,
    ) -> Result<Config, Vec<FieldError>> {
        let mut errors = Vec::new();
        let root = FieldPath::root();

        let admin = validate_admin(
            &wire.admin,
            base_dir,
            variables,
            &root.key("admin"),
            &mut errors,
        );
        let proxy = validate_proxy(&wire.proxy, base_dir, &root.key("proxy"), &mut errors);

        let mut listen_addrs: HashMap<SocketAddr, FieldPath> = HashMap::new();
        let mut claim_addr = |addr: SocketAddr, at: FieldPath, errors: &mut Vec<FieldError>| {
            if addr.port() == 0 {
                return;
            }
            if let Some(first) = listen_addrs.get(&addr) {
                errors.push(FieldError::new(
                    at,
                    format!("address {addr} is already used by {first}"),
                ));
            } else {
                listen_addrs.insert(addr, at);
            }
        };

        let mut listeners = Vec::new();
        let mut listener_index = HashMap::new();
        for (i, section) in wire.listener.iter().enumerate() {
            let at = root.key("listener").index(i);
            check_name(&section.name, "listener", &at.key("name"), &mut errors);
            if listener_index.insert(section.name.clone(), i).is_some() {
                errors.push(FieldError::new(
                    at.key("name"),
                    format!("duplicate listener name {:?}", section.name),
                ));
            }
            let forward = section.mode == ListenerMode::Forward;
            let listen = match (&section.listen, forward) {
                (Some(text), _) => parse_addr(text, &at.key("listen"), &mut errors),
                (None, true) => DEFAULT_FORWARD_LISTEN.parse().ok(),
                (None, false) => {
                    errors.push(FieldError::new(
                        at.key("name"),
                        format!(
                            "listener {:?} needs `listen` (an address such as \"127.0.0.1:8080\")",
                            section.name
                        ),
                    ));
                    None
                }
            };
            if let Some(addr) = listen {
                claim_addr(addr, at.key("listen"), &mut errors);
            }
            let forward = validate_forward(section, listen, &at, &mut errors);
            let (tls, generate) = match &section.tls {
                Some(tls) => served_tls(tls, base_dir, true, &at.key("tls"), &mut errors),
                None => (None, None),
            };
            listeners.push(ListenerConfig {
                name: section.name.clone(),
                listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                tls,
                generate,
                forward,
            });
        }

        let mut upstreams = Vec::new();
        let mut upstream_index = HashMap::new();
        for (i, section) in wire.upstream.iter().enumerate() {
            let at = root.key("upstream").index(i);
            check_name(&section.name, "upstream", &at.key("name"), &mut errors);
            if upstream_index.insert(section.name.clone(), i).is_some() {
                errors.push(FieldError::new(
                    at.key("name"),
                    format!("duplicate upstream name {:?}", section.name),
                ));
            }
            for (key, value) in &section.labels {
                if key.is_empty() || value.is_empty() {
                    errors.push(FieldError::new(
                        at.key("labels"),
                        format!(
                            "upstream {:?}: label keys and values must not be empty",
                            section.name
                        ),
                    ));
                }
            }
            let listen = section.listen.as_deref().and_then(|text| {
                let addr = parse_addr(text, &at.key("listen"), &mut errors)?;
                claim_addr(addr, at.key("listen"), &mut errors);
                Some(addr)
            });
            if let Some(upstream) =
                parse_upstream_url(&section.url, &at.key("url"), &section.name, &mut errors)
            {
                let (scheme, authority, host_header) = upstream;
                let transport = Transport::of(&scheme);
                if transport == Transport::Tcp {
                    check_tcp_upstream(section, &at, &mut errors);
                }
                let tls = upstream_tls(section, &scheme, base_dir, &at, &mut errors);
                match (section.protocol, scheme == Scheme::HTTPS) {
                    (Protocol::H2, false) => errors.push(FieldError::new(
                        at.key("protocol"),
                        format!(
                            "upstream {:?}: protocol \"h2\" is HTTP/2 over TLS and needs an https:// url; use \"h2c\" for HTTP/2 without TLS",
                            section.name
                        ),
                    )),
                    (Protocol::H2c, true) => errors.push(FieldError::new(
                        at.key("protocol"),
                        format!(
                            "upstream {:?}: protocol \"h2c\" is HTTP/2 without TLS and needs an http:// url; use \"h2\" over https://",
                            section.name
                        ),
                    )),
                    _ => {}
                }
                if section.listen_tls.is_some() && listen.is_none() {
                    errors.push(FieldError::new(
                        at.key("listen_tls"),
                        format!(
                            "upstream {:?}: listen_tls needs a dedicated port: set `listen` too",
                            section.name
                        ),
                    ));
                }
                upstreams.push(UpstreamConfig {
                    name: section.name.clone(),
                    scheme,
                    authority,
                    host_header,
                    host: section.host,
                    protocol: section.protocol,
                    labels: section.labels.clone(),
                    listen,
                    listen_tls: section.listen_tls.as_ref().and_then(|tls| {
                        served_tls(tls, base_dir, false, &at.key("listen_tls"), &mut errors).0
                    }),
                    tls,
                    ad_hoc: false,
                    transport,
                });
            }
        }
        let destinations = validate_destinations(
            &wire.destination,
            base_dir,
            &mut upstreams,
            &mut upstream_index,
            &mut errors,
        );
        if listeners.iter().any(|l| l.forward.is_some()) {
            // `connect_to` targets are always reachable through CONNECT.
            for listener in &mut listeners {
                if let Some(forward) = &mut listener.forward {
                    forward.connect_ports.extend(
                        destinations
                            .iter()
                            .filter_map(|d| d.connect_to.as_ref()?.port_u16()),
                    );
                    forward.connect_ports.sort_unstable();
                    forward.connect_ports.dedup();
                }
            }
            if let Some(i) = wire.upstream.iter().position(|u| u.name == FORWARD_OTHER) {
                errors.push(FieldError::new(
                    root.key("upstream").index(i).key("name"),
                    format!(
                        "upstream name {FORWARD_OTHER:?} is taken by forward traffic that no upstream has; choose another name"
                    ),
                ));
            } else if let Some(i) = wire
                .destination
                .iter()
                .position(|d| d.name == FORWARD_OTHER)
            {
                errors.push(FieldError::new(
                    root.key("destination").index(i).key("name"),
                    format!(
                        "destination name {FORWARD_OTHER:?} is taken by forward traffic that no destination matches; choose another name"
                    ),
                ));
            } else {
                upstreams.push(UpstreamConfig::forward_other());
            }
        } else if !wire.destination.is_empty() {
            errors.push(FieldError::new(
                root.key("destination").index(0),
                "destinations name forward traffic: add a [[listener]] with mode = \"forward\"",
            ));
        }
        let ca = CaConfig {
            dir: base_dir.join(wire.ca.dir.as_deref().unwrap_or(Path::new(DEFAULT_CA_DIR))),
        };

        let mut routes = Vec::new();
        for (i, section) in wire.route.iter().enumerate() {
            let at = root.key("route").index(i);
            let listener = listener_index.get(&section.listener).copied();
            if listener.is_none() {
                errors.push(FieldError::new(
                    at.key("listener"),
                    format!(
                        "route {i} names listener {:?}, which is not defined{}",
                        section.listener,
                        known(listener_index.keys())
                    ),
                ));
            }
            let upstream = upstream_index.get(&section.upstream).copied();
            if upstream.is_none() {
                errors.push(FieldError::new(
                    at.key("upstream"),
                    format!(
                        "route {i} names upstream {:?}, which is not defined{}",
                        section.upstream,
                        known(upstream_index.keys())
                    ),
                ));
            }
            let host = section.host.as_deref().and_then(|glob| {
                HostPattern::new(glob)
                    .map_err(|e| errors.push(FieldError::new(at.key("host"), e)))
                    .ok()
            });
            if let Some(prefix) = &section.path_prefix {
                if !prefix.starts_with('/') {
                    errors.push(FieldError::new(
                        at.key("path_prefix"),
                        format!("path_prefix {prefix:?} must start with '/'"),
                    ));
                }
            }
            if let Some(l) = listener.filter(|&l| listeners[l].forward.is_some()) {
                errors.push(FieldError::new(
                    at.key("listener"),
                    format!(
                        "route {i} names listener {:?}, a forward listener: it routes by each request's own host, not by routes",
                        listeners[l].name
                    ),
                ));
            }
            if let Some(u) = upstream.filter(|&u| upstreams.get(u).is_some_and(|u| u.ad_hoc)) {
                errors.push(FieldError::new(
                    at.key("upstream"),
                    format!(
                        "route {i} names {:?}, a destination: destinations name forward traffic and have no address to route to",
                        upstreams[u].name
                    ),
                ));
            }
            if let Some(u) = upstream.filter(|&u| {
                upstreams
                    .iter()
                    .any(|c| c.name == wire.upstream[u].name && c.is_tcp())
            }) {
                errors.push(FieldError::new(
                    at.key("upstream"),
                    format!(
                        "route {i} names upstream {:?}, a tcp:// upstream: it is reached through its own `listen` port, not through routes",
                        wire.upstream[u].name
                    ),
                ));
            }
            if let (Some(listener), Some(upstream)) = (listener, upstream) {
                routes.push(RouteConfig {
                    listener,
                    host,
                    path_prefix: section.path_prefix.clone(),
                    upstream,
                });
            }
        }

        for (i, listener) in listeners.iter().enumerate() {
            if listener.forward.is_none() && !wire.route.iter().any(|r| r.listener == listener.name)
            {
                errors.push(FieldError::new(
                    root.key("listener").index(i).key("name"),
                    format!(
                        "listener {:?} has no routes; add a [[route]] with listener = {:?}",
                        listener.name, listener.name
                    ),
                ));
            }
        }
        let dns = wire.dns.as_ref().map(|section| {
            let at = root.key("dns");
            let dns = validate_dns(section, &at, &mut errors);
            if let Some(addr) = dns.listen {
                claim_addr(addr, at.key("listen"), &mut errors);
            }
            dns
        });
        let serves_dns = dns.as_ref().is_some_and(|dns| dns.listen.is_some());
        let toxiproxy = wire.toxiproxy.as_ref().and_then(|section| {
            let at = root.key("toxiproxy").key("listen");
            let text = section.listen.as_deref().unwrap_or(DEFAULT_TOXIPROXY_LISTEN);
            let addr = parse_addr(text, &at, &mut errors)?;
            if !addr.ip().is_loopback() && section.allow_remote != Some(true) {
                // Like the admin API: it changes what the proxy does.
                errors.push(FieldError::new(
                    at.clone(),
                    format!("toxiproxy listener {addr} is not loopback: Toxiproxy's API has no authentication; set allow_remote = true if it is meant"),
                ));
            }
            claim_addr(addr, at, &mut errors);
            Some(addr)
        });
        if wire.listener.is_empty()
            && !wire.upstream.iter().any(|u| u.listen.is_some())
            && wire.toxiproxy.is_none()
            && !serves_dns
        {
            errors.push(FieldError::new(
                root,
                "nothing to listen on: define a [[listener]] with routes, give an [[upstream]] a dedicated `listen` address, add [toxiproxy], or give [dns] a `listen`",
            ));
        }

        if errors.is_empty() {
            Ok(Config {
                admin,
                proxy,
                listeners,
                upstreams,
                routes,
                dns,
                destinations,
                ca,
                toxiproxy,
            })
        } else {
            Err(errors)
        }
    }
}

/// Why config text was not accepted.
#[derive(Debug)]
pub enum ParseError {
    /// Not TOML, or not the schema (unknown key, wrong type).
    Toml(toml::de::Error),
    /// Well-formed, but the values do not hold together.
    Invalid(Vec<FieldError>),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Toml(e) => write!(f, "{}", e.message().trim()),
            ParseError::Invalid(errors) => {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", lines.join("; "))
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The environment variables a config names (`admin.token_env`), read by
/// the load step so that validation reads none.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: HashMap<String, String>,
}

impl Variables {
    /// Reads the variables `text` names from this process's environment; a
    /// text that does not parse names none.
    pub fn from_process(text: &str) -> Self {
        let mut values = HashMap::new();
        let named = toml::from_str::<ConfigFile>(text)
            .ok()
            .and_then(|wire| wire.admin.token_env);
        if let Some(name) = named {
            if let Ok(value) = std::env::var(&name) {
                values.insert(name, value);
            }
        }
        Self { values }
    }

    /// A variable set to `value`, as if in the environment.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.values.insert(name.to_owned(), value.to_owned());
        self
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

fn validate_admin(
    section: &AdminSection,
    base_dir: &Path,
    variables: &Variables,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> AdminConfig {
    let listen = parse_addr(
        section.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        &at.key("listen"),
        errors,
    )
    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let token = match (&section.token, &section.token_env) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                at.key("token_env"),
                "give either `token` or `token_env`, not both",
            ));
            None
        }
        (Some(token), None) => Some(token.clone()),
        (None, Some(var)) => match variables.get(var) {
            Some(token) if !token.is_empty() => Some(token.to_owned()),
            _ => {
                errors.push(FieldError::new(
                    at.key("token_env"),
                    format!("environment variable {var} (token_env) is not set or empty"),
                ));
                None
            }
        },
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        errors.push(FieldError::new(
            at.key("token"),
            "the admin token must not be empty",
        ));
    }
    if !listen.ip().is_loopback() && token.is_none() && section.token_env.is_none() {
        errors.push(FieldError::new(
            at.key("listen"),
            format!("admin listener {listen} is not loopback: set `token` or `token_env` so the admin API is not open to the network"),
        ));
    }
    if section
        .halt_file
        .as_ref()
        .is_some_and(|path| path.file_name().is_none())
    {
        errors.push(FieldError::new(
            at.key("halt_file"),
            "must name a file, e.g. \"/var/lib/faultline/halted\"",
        ));
    }
    let halt_file = section.halt_file.as_ref().map(|path| base_dir.join(path));
    AdminConfig {
        listen,
        token,
        halt_file,
    }
}

/// The longest timeout or grace period a setting may ask for.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn validate_proxy(
    section: &ProxySection,
    base_dir: &Path,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> ProxyConfig {
    let mut duration = |value: &Option<String>, key: &str, default: Duration| match value {
        None => default,
        Some(text) => match crate::duration::parse(text) {
            Ok(d) if !d.is_zero() && d <= MAX_SETTING_DURATION => d,
            Ok(d) if d.is_zero() => {
                errors.push(FieldError::new(
                    at.key(key),
                    format!("{key} must be more than zero"),
                ));
                default
            }
            Ok(_) => {
                // Deadlines are added to the clock: past this they overflow.
                errors.push(FieldError::new(
                    at.key(key),
                    format!("{key} {text:?} is longer than 10 years, the longest a setting may be"),
                ));
                default
            }
            Err(e) => {
                errors.push(FieldError::new(at.key(key), e));
                default
            }
        },
    };
    let connect_timeout = duration(
        &section.connect_timeout,
        "connect_timeout",
        DEFAULT_CONNECT_TIMEOUT,
    );
    let upstream_timeout = duration(
        &section.upstream_timeout,
        "upstream_timeout",
        DEFAULT_UPSTREAM_TIMEOUT,
    );
    let pool_idle_timeout = duration(
        &section.pool_idle_timeout,
        "pool_idle_timeout",
        DEFAULT_POOL_IDLE_TIMEOUT,
    );
    let header_timeout = duration(
        &section.header_timeout,
        "header_timeout",
        DEFAULT_HEADER_TIMEOUT,
    );
    let shutdown_grace = duration(
        &section.shutdown_grace,
        "shutdown_grace",
        DEFAULT_SHUTDOWN_GRACE,
    );
    if section.workers == Some(0) {
        errors.push(FieldError::new(
            at.key("workers"),
            "workers must be at least 1",
        ));
    }
    if let Some(n) = section.h2_connections {
        if !(1..=MAX_H2_CONNECTIONS).contains(&n) {
            errors.push(FieldError::new(
                at.key("h2_connections"),
                format!("h2_connections must be from 1 to {MAX_H2_CONNECTIONS}"),
            ));
        }
    }
    if section.max_active_faults == Some(0) {
        errors.push(FieldError::new(
            at.key("max_active_faults"),
            "max_active_faults must be at least 1",
        ));
    }
    let rules_dir = section
        .rules_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("rules"));
    ProxyConfig {
        rules_dir: base_dir.join(rules_dir),
        seed: section.seed,
        workers: section.workers,
        max_active_faults: section
            .max_active_faults
            .unwrap_or(DEFAULT_MAX_ACTIVE_FAULTS),
        connect_timeout,
        upstream_timeout,
        pool_idle_timeout,
        header_timeout,
        h2_connections: section
            .h2_connections
            .unwrap_or(DEFAULT_H2_CONNECTIONS)
            .clamp(1, MAX_H2_CONNECTIONS),
        shutdown_grace,
        mark_faults: section.mark_faults.unwrap_or(true),
        watch_rules: section.watch_rules.unwrap_or(true),
    }
}

/// A forward listener's settings, and the keys that only it takes.
fn validate_forward(
    section: &ListenerSection,
    listen: Option<SocketAddr>,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> Option<ForwardSettings> {
    let name = &section.name;
    if section.mode != ListenerMode::Forward {
        for (key, given) in [
            ("allow_remote", section.allow_remote.is_some()),
            ("allow_ports", section.allow_ports.is_some()),
            ("intercept", section.intercept.is_some()),
        ] {
            if given {
                errors.push(FieldError::new(
                    at.key(key),
                    format!("listener {name:?}: `{key}` applies to forward listeners (mode = \"forward\")"),
                ));
            }
        }
        return None;
    }
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && section.allow_remote != Some(true) {
            errors.push(FieldError::new(
                at.key("listen"),
                format!("forward listener {name:?} on {addr} is not loopback: anyone who reaches it can send traffic through it; set `allow_remote = true` to mean it"),
            ));
        }
    }
    if section.tls.is_some() {
        errors.push(FieldError::new(
            at.key("tls"),
            format!("listener {name:?}: a forward listener speaks plain HTTP to its clients (TLS to the proxy itself is not supported)"),
        ));
    }
    let mut intercept = Vec::new();
    for (i, glob) in section.intercept.iter().flatten().enumerate() {
        match HostPattern::new(glob) {
            Ok(pattern) => intercept.push(pattern),
            Err(e) => errors.push(FieldError::new(at.key("intercept").index(i), e)),
        }
    }
    let mut connect_ports = vec![HTTPS_PORT];
    for (i, &port) in section.allow_ports.iter().flatten().enumerate() {
        if port == 0 {
            errors.push(FieldError::new(
                at.key("allow_ports").index(i),
                "port 0 cannot be connected to",
            ));
        }
        connect_ports.push(port);
    }
    connect_ports.sort_unstable();
    connect_ports.dedup();
    Some(ForwardSettings {
        connect_ports,
        intercept,
    })
}

/// The `[[destination]]`s: each gets an ad-hoc upstream of its name (rules,
/// metrics and tallies index it like any upstream), added to `upstreams`.
fn validate_destinations(
    sections: &[DestinationSection],
    base_dir: &Path,
    upstreams: &mut Vec<UpstreamConfig>,
    upstream_index: &mut HashMap<String, usize>,
    errors: &mut Vec<FieldError>,
) -> Vec<DestinationConfig> {
    let mut destinations = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let at = FieldPath::root().key("destination").index(i);
        let name = &section.name;
        check_name(name, "destination", &at.key("name"), errors);
        if upstream_index.contains_key(name) {
            errors.push(FieldError::new(
                at.key("name"),
                format!("destination name {name:?} is already an upstream's or a destination's; rules name both alike, so choose another"),
            ));
        }
        for (key, value) in &section.labels {
            if key.is_empty() || value.is_empty() {
                errors.push(FieldError::new(
                    at.key("labels"),
                    format!("destination {name:?}: label keys and values must not be empty"),
                ));
            }
        }
        let host = HostPattern::new(&section.host)
            .map_err(|e| errors.push(FieldError::new(at.key("host"), e)))
            .ok();
        let connect_to = section.connect_to.as_deref().and_then(|text| {
            match text.parse::<Authority>() {
                Ok(a) if a.port_u16().is_some_and(|p| p != 0) && !a.host().is_empty() && !text.contains('@') => Some(a),
                _ => {
                    errors.push(FieldError::new(
                        at.key("connect_to"),
                        format!("destination {name:?}: connect_to {text:?} must be host:port, such as \"127.0.0.1:4566\""),
                    ));
                    None
                }
            }
        });
        let ca = section
            .tls
            .as_ref()
            .and_then(|tls| tls.ca.as_ref())
            .map(|ca| base_dir.join(ca));
        let Some(host) = host else { continue };
        upstream_index.insert(name.clone(), upstreams.len());
        destinations.push(DestinationConfig {
            host,
            upstream: upstreams.len(),
            connect_to,
            ca,
        });
        upstreams.push(UpstreamConfig {
            labels: section.labels.clone(),
            ..UpstreamConfig::ad_hoc(name)
        });
    }
    destinations
}

fn parse_addr(text: &str, at: &FieldPath, errors: &mut Vec<FieldError>) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.push(FieldError::new(
                at.clone(),
                format!("invalid address {text:?}: expected IP:PORT such as \"127.0.0.1:8080\""),
            ));
            None
        }
    }
}

fn parse_upstream_url(
    text: &str,
    at: &FieldPath,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(Scheme, Authority, HeaderValue)> {
    let mut fail = |message: String| {
        errors.push(FieldError::new(
            at.clone(),
            format!("upstream {name:?}: {message}"),
        ));
        None
    };
    let uri: Uri = match text.parse() {
        Ok(uri) => uri,
        Err(e) => return fail(format!("invalid url {text:?}: {e}")),
    };
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        Some(TCP_SCHEME) => Scheme::try_from(TCP_SCHEME).ok()?,
        _ => {
            return fail(format!(
                "url {text:?} must start with http://, https:// or tcp://"
            ))
        }
    };
    let Some(authority) = uri.authority().cloned() else {
        return fail(format!("url {text:?} has no host"));
    };
    if scheme.as_str() == TCP_SCHEME && authority.port_u16().is_none() {
        return fail(format!(
            "url {text:?} needs a port: a tcp:// upstream has no default one"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return fail(format!(
            "url {text:?} must be scheme, host and port only; requests keep their own path"
        ));
    }
    let host_header = match HeaderValue::from_str(authority.as_str()) {
        Ok(value) => value,
        Err(_) => return fail(format!("url {text:?} has an invalid host")),
    };
    Some((scheme, authority, host_header))
}

/// What a `tcp://` upstream must have (its own port) and may not have
/// (the HTTP settings).
fn check_tcp_upstream(section: &UpstreamSection, at: &FieldPath, errors: &mut Vec<FieldError>) {
    let name = &section.name;
    if section.listen.is_none() {
        errors.push(FieldError::new(
            at.key("url"),
            format!(
                "upstream {name:?}: a tcp:// upstream needs `listen`, the port its clients connect to (such as \"127.0.0.1:15432\")"
            ),
        ));
    }
    for (field, given) in [
        ("listen_tls", section.listen_tls.is_some()),
        ("protocol", section.protocol != Protocol::Auto),
        ("host", section.host != HostMode::Upstream),
    ] {
        if given {
            errors.push(FieldError::new(
                at.key(field),
                format!("upstream {name:?}: `{field}` is for HTTP upstreams; a tcp:// upstream copies bytes as they are"),
            ));
        }
    }
}

/// A served certificate's files: `cert` and `key`, both given, or (where
/// `generate` is allowed, on a listener) a list of names for faultline's
/// CA to sign. Gives the files or the names.
fn served_tls(
    section: &ServedTlsSection,
    base_dir: &Path,
    generate_allowed: bool,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> (Option<ServedTls>, Option<Vec<String>>) {
    match (&section.cert, &section.key, &section.generate) {
        (Some(cert), Some(key), None) => (
            Some(ServedTls {
                cert: base_dir.join(cert),
                key: base_dir.join(key),
            }),
            None,
        ),
        (None, None, Some(names)) if generate_allowed => {
            if names.is_empty() {
                errors.push(FieldError::new(
                    at.key("generate"),
                    "tls.generate needs at least one name (such as \"localhost\")",
                ));
            }
            for (i, name) in names.iter().enumerate() {
                if crate::tls::server_name(name).is_err() {
                    errors.push(FieldError::new(
                        at.key("generate").index(i),
                        format!("{name:?} is not a DNS name or an IP address"),
                    ));
                }
            }
            (None, Some(names.clone()))
        }
        (_, _, Some(_)) if !generate_allowed => {
            errors.push(FieldError::new(
                at.key("generate"),
                "`generate` is for a listener's tls; give cert and key here",
            ));
            (None, None)
        }
        _ => {
            let or_generate = if generate_allowed {
                ", or `generate = [names]` alone"
            } else {
                ""
            };
            errors.push(FieldError::new(
                at.clone(),
                format!("tls needs both `cert` and `key`{or_generate}"),
            ));
            (None, None)
        }
    }
}

/// The TLS settings of an `https://` upstream (the defaults when it has
/// no `tls` table); `None` for `http://`, where a `tls` table is an error.
fn upstream_tls(
    section: &UpstreamSection,
    scheme: &Scheme,
    base_dir: &Path,
    at: &FieldPath,
    errors: &mut Vec<FieldError>,
) -> Option<UpstreamTlsSettings> {
    if *scheme != Scheme::HTTPS {
        if section.tls.is_some() {
            errors.push(FieldError::new(
                at.key("tls"),
                format!(
                    "upstream {:?}: `tls` applies to https:// upstreams; its url is {:?}",
                    section.name, section.url
                ),
            ));
        }
        return None;
    }
    let default = UpstreamTlsSection::default();
    let wire = section.tls.as_ref().unwrap_or(&default);
    if wire.client_cert.is_some() != wire.client_key.is_some() {
        errors.push(FieldError::new(
            at.key("tls"),
            format!(
                "upstream {:?}: give both tls.client_cert and tls.client_key, or neither",
                section.name
            ),
        ));
    }
    if let Some(name) = &wire.server_name {
        if let Err(e) = crate::tls::server_name(name) {
            errors.push(FieldError::new(
                at.key("tls"),
                format!("upstream {:?}: tls.server_name {e}", section.name),
            ));
        }
    }
    Some(UpstreamTlsSettings {
        ca: wire.ca.as_ref().map(|path| base_dir.join(path)),
        server_name: wire.server_name.clone(),
        client_cert: wire.client_cert.as_ref().map(|path| base_dir.join(path)),
        client_key: wire.client_key.as_ref().map(|path| base_dir.join(path)),
        verify: wire.verify.unwrap_or(true),
    })
}

/// Names of listeners, upstreams and rules: `[A-Za-z0-9._-]+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(name: &str, what: &str, at: &FieldPath, errors: &mut Vec<FieldError>) {
    if !is_valid_name(name) {
        errors.push(FieldError::new(
            at.clone(),
            format!("invalid {what} name {name:?}: use letters, digits, '.', '_' and '-'"),
        ));
    }
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        return String::new();
    }
    names.sort_unstable();
    format!(" (known: {})", names.join(", "))
}

// ---------------------------------------------------------------------------
// [dns] (README "DNS").

/// The most addresses one name of `[dns] records` may have: they must fit
/// a 512-byte UDP answer.
pub const MAX_RECORD_ADDRESSES: usize = 16;
/// The most names `[dns] records` may hold.
pub const MAX_RECORDS: usize = 10_000;
/// The most resolvers `[dns] upstream` may name.
pub const MAX_DNS_UPSTREAMS: usize = 8;

/// `[dns]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Where the DNS server listens, UDP and TCP; none: no server, but
    /// `records` and the DNS rules still apply to the proxy's own resolution.
    pub listen: Option<String>,
    /// `"system"` or resolver addresses (`IP` or `IP:PORT`, port 53 by default).
    pub upstream: Option<Vec<String>>,
    /// Fixed answers: name to addresses.
    #[serde(default)]
    pub records: BTreeMap<String, Vec<String>>,
}

/// `[dns]`, validated.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: Option<SocketAddr>,
    /// Tried in order until one answers.
    pub upstream: Vec<DnsUpstream>,
    /// By lowercase name without the final dot.
    pub records: std::sync::Arc<HashMap<String, Vec<std::net::IpAddr>>>,
}

/// Where names that no rule and no record answers are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsUpstream {
    /// The system's resolver (`getaddrinfo`): A and AAAA only.
    System,
    /// A DNS resolver, asked over UDP (TCP for queries that came over TCP).
    Resolver(SocketAddr),
}

/// A name as DNS compares it: lowercase, without the final dot.
pub fn dns_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` (no final dot) is a host name DNS can carry: labels of 1
/// to 63 letters, digits, '-' or '_', at most 253 characters in all.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn validate_dns(section: &DnsSection, at: &FieldPath, errors: &mut Vec<FieldError>) -> DnsConfig {
    let listen = section
        .listen
        .as_deref()
        .and_then(|text| parse_addr(text, &at.key("listen"), errors));
    let mut upstream = Vec::new();
    let given = section
        .upstream
        .clone()
        .unwrap_or_else(|| vec!["system".to_owned()]);
    if given.is_empty() || given.len() > MAX_DNS_UPSTREAMS {
        errors.push(FieldError::new(
            at.key("upstream"),
            format!("upstream must name 1 to {MAX_DNS_UPSTREAMS} resolvers, or \"system\""),
        ));
    }
    for (i, text) in given.iter().enumerate() {
        let parsed = if text == "system" {
            Some(DnsUpstream::System)
        } else if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            Some(DnsUpstream::Resolver(SocketAddr::new(ip, 53)))
        } else {
            text.parse().ok().map(DnsUpstream::Resolver)
        };
        match parsed {
            Some(DnsUpstream::Resolver(addr)) if listen == Some(addr) => {
                errors.push(FieldError::new(
                    at.key("upstream").index(i),
                    format!("upstream {text:?} is faultline's own DNS address: queries would loop"),
                ));
            }
            Some(parsed) => upstream.push(parsed),
            None => errors.push(FieldError::new(
                at.key("upstream").index(i),
                format!(
                    "invalid DNS upstream {text:?}: expected \"system\", an IP address or IP:PORT"
                ),
            )),
        }
    }
    if section.records.len() > MAX_RECORDS {
        errors.push(FieldError::new(
            at.key("records"),
            format!("records may hold at most {MAX_RECORDS} names"),
        ));
    }
    let mut records = HashMap::new();
    for (name, addresses) in &section.records {
        let field = at.key("records").key(name.as_str());
        let key = dns_key(name);
        if !is_dns_name(&key) {
            errors.push(FieldError::new(
                field.clone(),
                format!("{name:?} is not a DNS name (labels of letters, digits, '-' and '_')"),
            ));
        }
        if addresses.is_empty() || addresses.len() > MAX_RECORD_ADDRESSES {
            errors.push(FieldError::new(
                field.clone(),
                format!("{name:?} needs 1 to {MAX_RECORD_ADDRESSES} addresses"),
            ));
        }
        let mut ips = Vec::new();
        for (i, text) in addresses.iter().enumerate() {
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => errors.push(FieldError::new(
                    field.index(i),
                    format!("{text:?} is not an IPv4 or IPv6 address"),
                )),
            }
        }
        if records.insert(key, ips).is_some() {
            errors.push(FieldError::new(
                field,
                format!("{name:?} is given twice (names are compared without case or final dot)"),
            ));
        }
    }
    DnsConfig {
        listen,
        upstream,
        records: std::sync::Arc::new(records),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ParseError> {
        Config::parse(text, Path::new("/etc/faultline"))
    }

    fn messages(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors"),
            Err(ParseError::Toml(e)) => vec![e.message().trim().to_owned()],
            Err(ParseError::Invalid(errors)) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn token_env_is_read_by_the_load_step_not_by_validation() {
        let text = format!("{MINIMAL}[admin]\ntoken_env = \"FAULTLINE_TEST_TOKEN\"\n");
        // Pure validation reads no environment: the variable is missing.
        assert_eq!(
            messages(&text),
            vec!["admin.token_env: environment variable FAULTLINE_TEST_TOKEN (token_env) is not set or empty"]
        );
        let variables = Variables::default().with("FAULTLINE_TEST_TOKEN", "s3cret");
        let config = Config::parse_with(&text, Path::new("."), &variables).unwrap();
        assert_eq!(config.admin.token.as_deref(), Some("s3cret"));
    }

    const MINIMAL: &str = r#"
[[listener]]
name = "edge"
listen = "127.0.0.1:8080"

[[upstream]]
name = "orders-use1"
url = "http://127.0.0.1:9101"
labels = { region = "us-east-1", service = "orders" }

[[route]]
listener = "edge"
upstream = "orders-use1"
"#;

    #[test]
    fn defaults_are_sane() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.proxy.rules_dir, Path::new("/etc/faultline/rules"));
        assert_eq!(config.proxy.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT);
        assert_eq!(config.proxy.pool_idle_timeout, DEFAULT_POOL_IDLE_TIMEOUT);
        assert_eq!(config.proxy.header_timeout, DEFAULT_HEADER_TIMEOUT);
        assert!(config.proxy.mark_faults);
        assert_eq!(config.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.upstreams[0].host_header, "127.0.0.1:9101");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = MINIMAL.replace("name = \"edge\"", "name = \"edge\"\nlisten_addr = \"x\"");
        let errors = messages(&text);
        assert!(
            errors[0].contains("unknown field `listen_addr`"),
            "{errors:?}"
        );
    }

    #[test]
    fn dangling_references_name_what_exists() {
        let text = MINIMAL.replace("upstream = \"orders-use1\"", "upstream = \"orders\"");
        assert_eq!(
            messages(&text),
            vec!["route[0].upstream: route 0 names upstream \"orders\", which is not defined (known: orders-use1)"]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[proxy]
upstream_timeout = "soon"
workers = 0

[[listener]]
name = "edge"
listen = "localhost"

[[upstream]]
name = "a"
url = "ftp://example.com"

[[upstream]]
name = "a"
url = "http://127.0.0.1:1/base"

[[route]]
listener = "edge"
upstream = "a"
"#;
        let errors = messages(text);
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors[0].starts_with("proxy.upstream_timeout: invalid duration \"soon\""));
        assert_eq!(errors[1], "proxy.workers: workers must be at least 1");
        assert!(errors[2].starts_with("listener[0].listen: invalid address \"localhost\""));
        assert!(errors[3].contains("must start with http://, https:// or tcp://"));
        assert!(errors
            .iter()
            .any(|e| e.contains("duplicate upstream name \"a\"")));
    }

    #[test]
    fn header_timeout_is_a_positive_duration() {
        let config = parse(&format!("[proxy]\nheader_timeout = \"300ms\"\n{MINIMAL}")).unwrap();
        assert_eq!(config.proxy.header_timeout, Duration::from_millis(300));
        assert_eq!(
            messages(&format!("[proxy]\nheader_timeout = \"0s\"\n{MINIMAL}")),
            vec!["proxy.header_timeout: header_timeout must be more than zero"]
        );
        assert!(
            messages(&format!("[proxy]\nheader_timeout = 30\n{MINIMAL}"))[0]
                .contains("invalid type"),
        );
        assert_eq!(
            messages(&format!("[proxy]\nheader_timeout = \"300000000000y\"\n{MINIMAL}")),
            vec!["proxy.header_timeout: header_timeout \"300000000000y\" is longer than 10 years, the longest a setting may be"]
        );
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let text = format!("[admin]\nlisten = \"0.0.0.0:9000\"\n{MINIMAL}");
        assert!(messages(&text)[0].contains("is not loopback"));
        let text = format!("[admin]\nlisten = \"0.0.0.0:9000\"\ntoken = \"s3cret\"\n{MINIMAL}");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn a_halt_file_is_relative_to_the_config_and_names_a_file() {
        let text = format!("[admin]\nhalt_file = \"state/halted\"\n{MINIMAL}");
        assert_eq!(
            parse(&text).unwrap().admin.halt_file,
            Some(PathBuf::from("/etc/faultline/state/halted"))
        );
        assert_eq!(parse(MINIMAL).unwrap().admin.halt_file, None);
        let text = format!("[admin]\nhalt_file = \"\"\n{MINIMAL}");
        assert!(messages(&text)[0].contains("admin.halt_file: must name a file"));
    }

    const FORWARD: &str = "[[listener]]\nname = \"egress\"\nmode = \"forward\"\n";

    #[test]
    fn a_forward_listener_binds_loopback_and_counts_other_traffic_as_other() {
        let config = parse(FORWARD).unwrap();
        let listener = &config.listeners[0];
        assert_eq!(listener.listen.to_string(), DEFAULT_FORWARD_LISTEN);
        let forward = listener.forward.as_ref().unwrap();
        assert_eq!(forward.connect_ports, [HTTPS_PORT]);
        assert!(!forward.allows_connect_to(25));
        let other = config.upstreams.last().unwrap();
        assert!(other.ad_hoc && other.name == FORWARD_OTHER);
        // A reverse-only config has no such upstream.
        assert!(parse(MINIMAL).unwrap().upstreams.iter().all(|u| !u.ad_hoc));
        let ports = parse(&format!("{FORWARD}allow_ports = [8443, 443, 8443]\n")).unwrap();
        let ports = &ports.listeners[0].forward.as_ref().unwrap().connect_ports;
        assert_eq!(ports, &[443, 8443]);
    }

    #[test]
    fn destinations_become_upstreams_of_their_name_and_open_their_ports() {
        let text = format!(
            "{FORWARD}intercept = [\"*.amazonaws.com\"]\n\n[ca]\ndir = \"my-ca\"\n\n\
             [[destination]]\nname = \"aws\"\nhost = \"*.amazonaws.com\"\nlabels = {{ provider = \"aws\" }}\n\
             connect_to = \"127.0.0.1:4566\"\ntls = {{ ca = \"certs/emulator.pem\" }}\n\n\
             [[destination]]\nname = \"github\"\nhost = \"*.github.com\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.ca.dir, Path::new("/etc/faultline/my-ca"));
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["aws", "github", FORWARD_OTHER]);
        let aws = &config.destinations[0];
        assert_eq!(aws.upstream, 0);
        assert!(aws.host.matches("dynamodb.us-east-1.amazonaws.com"));
        assert_eq!(aws.connect_to.as_ref().unwrap().as_str(), "127.0.0.1:4566");
        assert_eq!(
            aws.ca.as_deref(),
            Some(Path::new("/etc/faultline/certs/emulator.pem"))
        );
        assert_eq!(config.upstreams[0].labels["provider"], "aws");
        assert!(config.upstreams[0].ad_hoc);
        let forward = config.listeners[0].forward.as_ref().unwrap();
        assert_eq!(forward.connect_ports, [443, 4566]);
        assert!(forward.intercepts("S3.amazonaws.com"));
        assert!(!forward.intercepts("api.github.com"));
        // The default CA folder sits beside the config.
        assert_eq!(
            parse(FORWARD).unwrap().ca.dir,
            Path::new("/etc/faultline").join(DEFAULT_CA_DIR)
        );
    }

    #[test]
    fn destinations_are_checked() {
        let bad = format!(
            "{FORWARD}\n[[destination]]\nname = \"other\"\nhost = \"x\"\n\n\
             [[destination]]\nname = \"d\"\nhost = \"[\"\nconnect_to = \"nowhere\"\n"
        );
        let errors = messages(&bad);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("destination[1].host: invalid host glob")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.starts_with("destination[1].connect_to: destination \"d\": connect_to \"nowhere\" must be host:port")), "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("destination[0].name: destination name \"other\" is taken")),
            "{errors:?}"
        );
        let clash = format!("{FORWARD}\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nlisten = \"127.0.0.1:0\"\n\n[[destination]]\nname = \"a\"\nhost = \"*\"\n");
        assert!(messages(&clash)[0]
            .starts_with("destination[0].name: destination name \"a\" is already"));
        let no_forward = format!("{MINIMAL}\n[[destination]]\nname = \"d\"\nhost = \"*\"\n");
        assert!(messages(&no_forward)[0].contains("add a [[listener]] with mode = \"forward\""));
    }

    #[test]
    fn a_listener_may_serve_a_generated_certificate() {
        let generated = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ntls = { generate = [\"localhost\", \"127.0.0.1\"] }",
        );
        let config = parse(&generated).unwrap();
        assert!(config.listeners[0].tls.is_none());
        assert_eq!(
            config.listeners[0].generate.as_deref(),
            Some(&["localhost".to_owned(), "127.0.0.1".to_owned()][..])
        );
        let both = generated.replace("tls = {", "tls = { cert = \"c.pem\", key = \"k.pem\",");
        assert_eq!(
            messages(&both),
            vec!["listener[0].tls: tls needs both `cert` and `key`, or `generate = [names]` alone"]
        );
        let bad = generated.replace("\"127.0.0.1\"", "\"not a name\"");
        assert_eq!(
            messages(&bad),
            vec!["listener[0].tls.generate[1]: \"not a name\" is not a DNS name or an IP address"]
        );
    }

    #[test]
    fn a_forward_listener_beyond_loopback_must_be_meant() {
        let remote = format!("{FORWARD}listen = \"0.0.0.0:3128\"\n");
        let errors = messages(&remote);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(
            "listener[0].listen: forward listener \"egress\" on 0.0.0.0:3128 is not loopback"
        ));
        assert!(parse(&format!("{remote}allow_remote = true\n")).is_ok());
    }

    #[test]
    fn forward_keys_and_names_are_checked() {
        assert_eq!(
            messages(&MINIMAL.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nallow_ports = [8443]")),
            vec!["listener[0].allow_ports: listener \"edge\": `allow_ports` applies to forward listeners (mode = \"forward\")"]
        );
        let errors = messages(&format!(
            "{FORWARD}intercept = [\"*.amazonaws.com\", \"[\"]\nallow_ports = [0]\n"
        ));
        assert!(
            errors[0].starts_with("listener[0].intercept[1]: invalid host glob \"[\""),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "listener[0].allow_ports[0]: port 0 cannot be connected to"
        );
        let taken =
            format!("{FORWARD}\n[[upstream]]\nname = \"other\"\nurl = \"http://127.0.0.1:1\"\n");
        assert!(
            messages(&taken)[0].starts_with("upstream[0].name: upstream name \"other\" is taken")
        );
        let routed = format!("{FORWARD}\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n\n[[route]]\nlistener = \"egress\"\nupstream = \"a\"\n");
        assert!(messages(&routed)[0]
            .contains("a forward listener: it routes by each request's own host"));
        let no_listen = MINIMAL.replace("listen = \"127.0.0.1:8080\"\n", "");
        assert_eq!(messages(&no_listen), vec!["listener[0].name: listener \"edge\" needs `listen` (an address such as \"127.0.0.1:8080\")"]);
    }

    #[test]
    fn tcp_upstreams_need_their_own_port_and_no_http_settings() {
        let base = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[upstream]]\nname = \"db\"\n";
        let config = parse(&format!(
            "{base}url = \"tcp://127.0.0.1:5432\"\nlisten = \"127.0.0.1:15432\"\n"
        ))
        .unwrap();
        let db = &config.upstreams[0];
        assert!(db.is_tcp() && db.port() == 5432);
        assert_eq!(
            messages(&format!("{base}url = \"tcp://127.0.0.1:5432\"\n")),
            vec![
                "upstream[0].url: upstream \"db\": a tcp:// upstream needs `listen`, the port its clients connect to (such as \"127.0.0.1:15432\")",
                "nothing to listen on: define a [[listener]] with routes, give an [[upstream]] a dedicated `listen` address, add [toxiproxy], or give [dns] a `listen`",
            ]
        );
        assert_eq!(
            messages(&format!("{base}url = \"tcp://db.internal\"\nlisten = \"127.0.0.1:0\"\n")),
            vec!["upstream[0].url: upstream \"db\": url \"tcp://db.internal\" needs a port: a tcp:// upstream has no default one"]
        );
        assert_eq!(
            messages(&format!("{base}url = \"tcp://127.0.0.1:1\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"h2c\"\n")),
            vec!["upstream[0].protocol: upstream \"db\": `protocol` is for HTTP upstreams; a tcp:// upstream copies bytes as they are"]
        );
        let routed = format!("{base}url = \"tcp://127.0.0.1:1\"\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nlistener = \"edge\"\nupstream = \"db\"\n");
        assert!(messages(&routed)[0]
            .contains("a tcp:// upstream: it is reached through its own `listen` port"));
    }

    #[test]
    fn routes_match_host_globs_and_path_segments() {
        let route = RouteConfig {
            listener: 0,
            host: Some(HostPattern::new("orders.us-east-1.*").unwrap()),
            path_prefix: Some("/api".into()),
            upstream: 0,
        };
        assert!(route.matches(Some("orders.us-east-1.example"), "/api/x"));
        assert!(route.matches(Some("ORDERS.us-east-1.example"), "/api"));
        assert!(!route.matches(Some("orders.us-west-2.example"), "/api"));
        assert!(!route.matches(Some("orders.us-east-1.example"), "/apix"));
        assert!(!route.matches(None, "/api"));
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    fn parse(dns: &str) -> Result<Config, Vec<String>> {
        let text = format!("[admin]\nlisten = \"127.0.0.1:0\"\n[dns]\n{dns}\n");
        match Config::parse(&text, Path::new(".")) {
            Ok(config) => Ok(config),
            Err(ParseError::Invalid(errors)) => {
                Err(errors.iter().map(ToString::to_string).collect())
            }
            Err(ParseError::Toml(e)) => Err(vec![e.to_string()]),
        }
    }

    #[test]
    fn a_dns_server_alone_is_something_to_listen_on() {
        let config = parse("listen = \"127.0.0.1:5353\"\nupstream = [\"system\", \"10.0.0.2\", \"[::1]:5300\"]\nrecords = { \"Orders.Test.\" = [\"127.0.0.1\", \"::1\"] }").unwrap();
        let dns = config.dns.unwrap();
        assert_eq!(dns.listen, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(
            dns.upstream,
            [
                DnsUpstream::System,
                DnsUpstream::Resolver("10.0.0.2:53".parse().unwrap()),
                DnsUpstream::Resolver("[::1]:5300".parse().unwrap()),
            ]
        );
        assert_eq!(dns.records["orders.test"].len(), 2);
        // No listen: records and rules still apply to the proxy's own
        // resolution, but there is nothing to serve.
        assert!(
            parse("records = { \"a.test\" = [\"127.0.0.1\"] }").unwrap_err()[0]
                .contains("nothing to listen on")
        );
    }

    #[test]
    fn problems_are_reported_at_their_field() {
        let errors = parse(
            "listen = \"127.0.0.1:5353\"\nupstream = [\"127.0.0.1:5353\", \"resolver\"]\nrecords = { \"bad name.test\" = [\"127.0.0.1\"], \"a.test\" = [\"localhost\"], \"A.test.\" = [\"::1\"], \"none.test\" = [] }",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "dns.upstream[0]: upstream \"127.0.0.1:5353\" is faultline's own DNS address: queries would loop",
                "dns.upstream[1]: invalid DNS upstream \"resolver\": expected \"system\", an IP address or IP:PORT",
                "dns.records.a.test[0]: \"localhost\" is not an IPv4 or IPv6 address",
                "dns.records.a.test: \"a.test\" is given twice (names are compared without case or final dot)",
                "dns.records.bad name.test: \"bad name.test\" is not a DNS name (labels of letters, digits, '-' and '_')",
                "dns.records.none.test: \"none.test\" needs 1 to 16 addresses",
            ]
        );
    }
}
