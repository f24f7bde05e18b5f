//! The Toxiproxy API (SPEC §9): Toxiproxy 2.12's routes, status codes,
//! messages and JSON on `[toxiproxy] listen`, for its client libraries and
//! Testcontainers modules.
//!
//! A proxy made here is a `tcp://` upstream added to [`Control`] at run
//! time ([`Control::add_upstream`]), served by [`tcp::serve`] on its own
//! port; each toxic is a runtime rule named `toxiproxy.PROXY.TOXIC` that
//! selects that upstream alone (so `ctl rules`, metrics, the dashboard,
//! halt and scenarios see it), with `toxicity` as its per-connection
//! probability; `enabled: false` is a refusing rule,
//! `toxiproxy-disabled.PROXY`. A rule switched off from outside (a halt,
//! `ctl disable`, `ctl delete`) takes its toxic away here too, as
//! `POST /reset` does.

pub mod cli;
pub mod wire;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::UpstreamConfig;
use crate::control::{Change, Control, ControlError, Published};
use crate::fault::FaultSpec;
use crate::metrics::Metrics;
use crate::rules::{check_name, MatchSpec, RuleSpec};
use crate::server::{self, Stop};
use crate::tcp::{self, TcpDoor};
use crate::traffic::Tally;
use wire::{ApiError, ProxyInput, ProxyView, ToxicView};

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Who the audit log says made a change.
const CALLER: &str = "toxiproxy-api";
/// The label every proxy's upstream carries, naming the proxy.
pub const PROXY_LABEL: &str = "toxiproxy";

type Reply = Response<Full<Bytes>>;

/// The API's state: the proxies by name (Toxiproxy's `ProxyCollection`).
pub struct Toxiproxy {
    control: Arc<Control>,
    published: Arc<Published>,
    metrics: Metrics,
    connect_timeout: Duration,
    /// Cancelled on shutdown: every proxy's port drains with the process.
    shutdown: CancellationToken,
    grace: Duration,
    proxies: Mutex<BTreeMap<String, ProxyState>>,
}

/// What the API needs from the process, wired by [`crate::app`].
pub struct ToxiproxyWiring {
    pub control: Arc<Control>,
    pub published: Arc<Published>,
    pub metrics: Metrics,
    pub connect_timeout: Duration,
    pub shutdown: CancellationToken,
    pub grace: Duration,
}

struct ProxyState {
    name: String,
    /// The address bound, as Toxiproxy reports it (the real port).
    listen: SocketAddr,
    upstream: String,
    /// The upstream's index in control.
    index: usize,
    upstream_name: String,
    toxics: Vec<ToxicState>,
    /// Ends the port at once, resetting its connections (Toxiproxy's stop).
    reset: CancellationToken,
    task: JoinHandle<()>,
}

struct ToxicState {
    name: String,
    kind: String,
    stream: String,
    toxicity: f32,
    attributes: Value,
    /// `None` for a `noop` toxic, which does nothing.
    rule: Option<String>,
}

impl ToxicState {
    fn view(&self) -> ToxicView {
        ToxicView {
            attributes: self.attributes.clone(),
            name: self.name.clone(),
            kind: self.kind.clone(),
            stream: self.stream.clone(),
            toxicity: wire::toxicity_json(self.toxicity),
        }
    }
}

impl Toxiproxy {
    pub fn new(wiring: ToxiproxyWiring) -> Arc<Self> {
        Arc::new(Self {
            control: wiring.control,
            published: wiring.published,
            metrics: wiring.metrics,
            connect_timeout: wiring.connect_timeout,
            shutdown: wiring.shutdown,
            grace: wiring.grace,
            proxies: Mutex::new(BTreeMap::new()),
        })
    }

    /// One request, answered as Toxiproxy 2.12 answers it.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Reply, Infallible> {
        let browser = request
            .headers()
            .get(USER_AGENT)
            .is_some_and(|agent| agent.as_bytes().starts_with(b"Mozilla/"));
        if browser {
            return Ok(plain(StatusCode::FORBIDDEN, "User agent not allowed\n"));
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let segments: Vec<String> = path
            .strip_prefix('/')
            .unwrap_or(&path)
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let body = match read_body(request).await {
            Ok(body) => body,
            Err(error) => return Ok(error_reply(&error)),
        };
        let result = match (segments.as_slice(), &method) {
            (["reset"], &Method::POST) => self.reset().await.map(|()| no_content()),
            (["version"], &Method::GET) => Ok(version()),
            (["proxies"], &Method::GET) => self.index().await,
            (["proxies"], &Method::POST) => self.create(&body).await,
            (["populate"], &Method::POST) => Ok(self.populate(&body).await),
            (["proxies", proxy], &Method::GET) => self.show(proxy).await,
            (["proxies", proxy], &Method::POST | &Method::PATCH) => self.update(proxy, &body).await,
            (["proxies", proxy], &Method::DELETE) => {
                self.delete(proxy).await.map(|()| no_content())
            }
            (["proxies", proxy, "toxics"], &Method::GET) => self.toxics(proxy).await,
            (["proxies", proxy, "toxics"], &Method::POST) => self.add_toxic(proxy, &body).await,
            (["proxies", proxy, "toxics", toxic], &Method::GET) => {
                self.show_toxic(proxy, toxic).await
            }
            (["proxies", proxy, "toxics", toxic], &Method::POST | &Method::PATCH) => {
                self.update_toxic(proxy, toxic, &body).await
            }
            (["proxies", proxy, "toxics", toxic], &Method::DELETE) => {
                self.delete_toxic(proxy, toxic).await.map(|()| no_content())
            }
            // gorilla/mux: a known path with another method is a bare 405.
            (
                ["reset"]
                | ["version"]
                | ["proxies"]
                | ["populate"]
                | ["proxies", _]
                | ["proxies", _, "toxics"]
                | ["proxies", _, "toxics", _],
                _,
            ) => Ok(empty(StatusCode::METHOD_NOT_ALLOWED)),
            _ => Ok(plain(StatusCode::NOT_FOUND, "404 page not found\n")),
        };
        Ok(result.unwrap_or_else(|error| error_reply(&error)))
    }

    async fn index(&self) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let views: BTreeMap<&String, ProxyView> = proxies
            .iter()
            .map(|(name, proxy)| (name, self.view(proxy)))
            .collect();
        Ok(json(StatusCode::OK, &views))
    }

    async fn create(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let input: ProxyInput = parse(body)?;
        if input.name.is_empty() {
            return Err(ApiError::missing_field().joined("name"));
        }
        if input.upstream.is_empty() {
            return Err(ApiError::missing_field().joined("upstream"));
        }
        let listen = resolve(&input.listen).await?;
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        if proxies.contains_key(&input.name) {
            return Err(ApiError::proxy_exists());
        }
        let proxy = self.start(&input.name, listen, &input.upstream, Vec::new())?;
        let enabled = input.enabled.unwrap_or(true);
        let proxy = proxies.entry(input.name.clone()).or_insert(proxy);
        if !enabled {
            self.set_enabled(proxy, false)?;
        }
        Ok(json(StatusCode::CREATED, &self.view(proxy)))
    }

    /// `/populate`: each proxy is created, kept when it exists with the same
    /// listen address and upstream, or replaced (its toxics with it).
    async fn populate(&self, body: &[u8]) -> Reply {
        let mut done: Vec<ProxyView> = Vec::new();
        let result = self.populate_into(body, &mut done).await;
        // Go writes a nil slice as null.
        let proxies = if done.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(&done).unwrap_or(Value::Null)
        };
        match result {
            Ok(()) => json(
                StatusCode::CREATED,
                &serde_json::json!({ "proxies": proxies }),
            ),
            Err(error) => json(
                status_of(&error),
                &serde_json::json!({ "error": error.message, "status": error.status, "proxies": proxies }),
            ),
        }
    }

    async fn populate_into(&self, body: &[u8], done: &mut Vec<ProxyView>) -> Result<(), ApiError> {
        let inputs: Vec<ProxyInput> = parse(body)?;
        for (i, input) in inputs.iter().enumerate() {
            if input.name.is_empty() {
                return Err(ApiError::missing_field().joined(format!("name at proxy {}", i + 1)));
            }
            if input.upstream.is_empty() {
                return Err(
                    ApiError::missing_field().joined(format!("upstream at proxy {}", i + 1))
                );
            }
        }
        for input in inputs {
            let listen = resolve(&input.listen).await?;
            let mut proxies = self.proxies.lock().await;
            self.sync(&mut proxies);
            if let Some(existing) = proxies.get(&input.name) {
                if existing.listen == listen && existing.upstream == input.upstream {
                    done.push(self.view(existing));
                    continue;
                }
            }
            if let Some(existing) = proxies.remove(&input.name) {
                self.stop(existing, true).await;
            }
            let proxy = self.start(&input.name, listen, &input.upstream, Vec::new())?;
            let proxy = proxies.entry(input.name.clone()).or_insert(proxy);
            if input.enabled == Some(false) {
                self.set_enabled(proxy, false)?;
            }
            done.push(self.view(proxy));
        }
        Ok(())
    }

    async fn show(&self, name: &str) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        Ok(json(StatusCode::OK, &self.view(proxy)))
    }

    async fn update(&self, name: &str, body: &[u8]) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        let mut input: ProxyInput = parse(body)?;
        let listen = if input.listen.is_empty() {
            proxy.listen
        } else {
            resolve(&input.listen).await?
        };
        if input.upstream.is_empty() {
            input.upstream.clone_from(&proxy.upstream);
        }
        let enabled = input.enabled.unwrap_or_else(|| self.is_enabled(proxy));
        if listen != proxy.listen || input.upstream != proxy.upstream {
            // Toxiproxy stops the proxy and starts it again; its toxics stay.
            let Some(mut old) = proxies.remove(name) else {
                return Err(ApiError::proxy_not_found());
            };
            let toxics = std::mem::take(&mut old.toxics);
            self.stop(old, false).await;
            let fresh = self.start(name, listen, &input.upstream, toxics)?;
            proxies.insert(name.to_owned(), fresh);
        }
        let proxy = proxies.get(name).ok_or_else(ApiError::proxy_not_found)?;
        self.set_enabled(proxy, enabled)?;
        Ok(json(StatusCode::OK, &self.view(proxy)))
    }

    async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        let proxy = proxies.remove(name).ok_or_else(ApiError::proxy_not_found)?;
        self.stop(proxy, true).await;
        Ok(())
    }

    async fn reset(&self) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        for proxy in proxies.values_mut() {
            self.set_enabled(proxy, true)?;
            for toxic in std::mem::take(&mut proxy.toxics) {
                self.forget_rule(toxic.rule.as_deref());
            }
        }
        info!(target: "faultline::audit", caller = CALLER, "toxiproxy reset: every proxy enabled, every toxic removed");
        Ok(())
    }

    async fn toxics(&self, proxy: &str) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies.get(proxy).ok_or_else(ApiError::proxy_not_found)?;
        let views: Vec<ToxicView> = proxy.toxics.iter().map(ToxicState::view).collect();
        Ok(json(StatusCode::OK, &views))
    }

    async fn add_toxic(&self, proxy: &str, body: &[u8]) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies
            .get_mut(proxy)
            .ok_or_else(ApiError::proxy_not_found)?;
        let input: Value = parse(body)?;
        let text = |key: &str| input.get(key).and_then(Value::as_str).map(str::to_owned);
        let stream = text("stream").unwrap_or_else(|| "downstream".to_owned());
        if stream != "upstream" && stream != "downstream" {
            return Err(ApiError::invalid_stream());
        }
        let kind = text("type").unwrap_or_default();
        let name = text("name")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{kind}_{stream}"));
        let attributes = wire::attributes(&kind, input.get("attributes"))?;
        if proxy.toxics.iter().any(|t| t.name == name) {
            return Err(ApiError::toxic_exists());
        }
        let toxicity = match input.get("toxicity") {
            None | Some(Value::Null) => 1.0,
            Some(value) => value.as_f64().ok_or_else(|| {
                ApiError::bad_request_body()
                    .joined(format!("toxicity must be a number, not {value}"))
            })? as f32,
        };
        let rule = self.add_rule(proxy, &name, &kind, &stream, &attributes, toxicity)?;
        let toxic = ToxicState {
            name,
            kind,
            stream,
            toxicity,
            attributes,
            rule,
        };
        let view = toxic.view();
        proxy.toxics.push(toxic);
        Ok(json(StatusCode::OK, &view))
    }

    async fn show_toxic(&self, proxy: &str, toxic: &str) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies.get(proxy).ok_or_else(ApiError::proxy_not_found)?;
        let toxic = proxy
            .toxics
            .iter()
            .find(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        Ok(json(StatusCode::OK, &toxic.view()))
    }

    async fn update_toxic(&self, proxy: &str, toxic: &str, body: &[u8]) -> Result<Reply, ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies
            .get_mut(proxy)
            .ok_or_else(ApiError::proxy_not_found)?;
        let position = proxy
            .toxics
            .iter()
            .position(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let input: Value = parse(body)?;
        let current = &proxy.toxics[position];
        let attributes =
            wire::merge_attributes(&current.kind, &current.attributes, input.get("attributes"))?;
        let toxicity = match input.get("toxicity") {
            None | Some(Value::Null) => current.toxicity,
            Some(value) => value.as_f64().ok_or_else(|| {
                ApiError::bad_request_body()
                    .joined(format!("toxicity must be a number, not {value}"))
            })? as f32,
        };
        if attributes == current.attributes {
            // Only the toxicity: the rule keeps its counts.
            if let Some(rule) = &current.rule {
                let change = Change {
                    probability: Some(f64::from(toxicity)),
                    ..Change::default()
                };
                self.control
                    .change(rule, change, CALLER)
                    .map_err(control_error)?;
            }
        } else {
            let (name, kind, stream) = (
                current.name.clone(),
                current.kind.clone(),
                current.stream.clone(),
            );
            self.forget_rule(current.rule.as_deref());
            let rule = self.add_rule(proxy, &name, &kind, &stream, &attributes, toxicity)?;
            proxy.toxics[position].rule = rule;
            proxy.toxics[position].attributes = attributes;
        }
        proxy.toxics[position].toxicity = toxicity;
        Ok(json(StatusCode::OK, &proxy.toxics[position].view()))
    }

    async fn delete_toxic(&self, proxy: &str, toxic: &str) -> Result<(), ApiError> {
        let mut proxies = self.proxies.lock().await;
        self.sync(&mut proxies);
        let proxy = proxies
            .get_mut(proxy)
            .ok_or_else(ApiError::proxy_not_found)?;
        let position = proxy
            .toxics
            .iter()
            .position(|t| t.name == toxic)
            .ok_or_else(ApiError::toxic_not_found)?;
        let removed = proxy.toxics.remove(position);
        self.forget_rule(removed.rule.as_deref());
        Ok(())
    }

    /// Binds the proxy's port, adds its upstream and serves it.
    fn start(
        &self,
        name: &str,
        listen: SocketAddr,
        upstream: &str,
        toxics: Vec<ToxicState>,
    ) -> Result<ProxyState, ApiError> {
        let upstream_name = slug(name);
        check_name("upstream", &upstream_name)
            .map_err(|e| ApiError::bad_request_body().joined(format!("name: {e}")))?;
        let authority: Authority = upstream
            .parse()
            .ok()
            .filter(|a: &Authority| a.port_u16().is_some())
            .ok_or_else(|| {
                ApiError::bad_request_body()
                    .joined(format!("upstream {upstream:?} must be host:port"))
            })?;
        let listener = server::bind(listen)
            .map_err(|e| ApiError::new(format!("listen tcp {listen}: {e}"), 500))?;
        let bound = listener
            .local_addr()
            .map_err(|e| ApiError::new(format!("listen tcp {listen}: {e}"), 500))?;
        let labels = [(PROXY_LABEL.to_owned(), name.to_owned())].into();
        let config = UpstreamConfig::tcp(&upstream_name, authority, bound, labels);
        let tally = Arc::new(Tally::default());
        let index = self
            .control
            .add_upstream(config.clone(), Arc::clone(&tally), CALLER)
            .map_err(|e| match e {
                ControlError::UpstreamTaken(_) => ApiError::proxy_exists().joined(e),
                other => control_error(other),
            })?;
        let door = Arc::new(TcpDoor {
            upstream: index,
            metrics: self.metrics.tcp(&config, tally),
            config,
            published: Arc::clone(&self.published),
            connect_timeout: self.connect_timeout,
        });
        let reset = CancellationToken::new();
        let stop = Stop {
            drain: self.shutdown.child_token(),
            reset: reset.clone(),
            grace: self.grace,
        };
        let task = tokio::spawn(tcp::serve(listener, bound, door, stop));
        info!(target: "faultline::audit", caller = CALLER, proxy = name, listen = %bound, upstream, "toxiproxy proxy started");
        Ok(ProxyState {
            name: name.to_owned(),
            listen: bound,
            upstream: upstream.to_owned(),
            index,
            upstream_name,
            toxics,
            reset,
            task,
        })
    }

    /// Closes the proxy's port and resets its connections; with `forget`,
    /// its rules go too.
    async fn stop(&self, proxy: ProxyState, forget: bool) {
        proxy.reset.cancel();
        // The port is free again once its loop has dropped the socket.
        let _ = proxy.task.await;
        if forget {
            for toxic in &proxy.toxics {
                self.forget_rule(toxic.rule.as_deref());
            }
            self.forget_rule(Some(&disabled_rule(&proxy.name)));
        }
        self.control.retire_upstream(proxy.index, CALLER);
        info!(target: "faultline::audit", caller = CALLER, proxy = proxy.name, "toxiproxy proxy stopped");
    }

    /// The rule a toxic is; `None` for `noop`.
    fn add_rule(
        &self,
        proxy: &ProxyState,
        toxic: &str,
        kind: &str,
        stream: &str,
        attributes: &Value,
        toxicity: f32,
    ) -> Result<Option<String>, ApiError> {
        let Some(fault) = wire::fault(kind, stream, attributes)? else {
            return Ok(None);
        };
        let name = format!("toxiproxy.{}.{}", slug(&proxy.name), slug(toxic));
        self.insert_rule(
            proxy,
            &name,
            fault,
            f64::from(toxicity),
            format!(
                "toxic {toxic:?} ({kind}, {stream}) of toxiproxy proxy {:?}",
                proxy.name
            ),
        )?;
        Ok(Some(name))
    }

    fn insert_rule(
        &self,
        proxy: &ProxyState,
        name: &str,
        fault: FaultSpec,
        probability: f64,
        description: String,
    ) -> Result<(), ApiError> {
        let spec = RuleSpec {
            name: name.to_owned(),
            description: Some(description),
            enabled: true,
            probability,
            matcher: MatchSpec {
                upstreams: vec![proxy.upstream_name.clone()],
                ..MatchSpec::default()
            },
            fault,
            times: None,
            every: None,
            sticky: None,
        };
        match self.control.add(spec, None, CALLER) {
            Ok(_) => Ok(()),
            Err(ControlError::NameTaken(_)) => Err(ApiError::toxic_exists()),
            Err(other) => Err(control_error(other)),
        }
    }

    /// Whether no enabled refusing rule closes the proxy.
    fn is_enabled(&self, proxy: &ProxyState) -> bool {
        self.control
            .rule(&disabled_rule(&proxy.name))
            .map_or(true, |rule| !rule.enabled)
    }

    /// `enabled: false` is an `unavailable` `refuse` rule on the proxy's upstream.
    fn set_enabled(&self, proxy: &ProxyState, enabled: bool) -> Result<(), ApiError> {
        let name = disabled_rule(&proxy.name);
        if enabled {
            self.forget_rule(Some(&name));
            return Ok(());
        }
        if self.is_enabled(proxy) {
            self.forget_rule(Some(&name));
            let fault: FaultSpec = serde_json::from_value(serde_json::json!({
                "kind": "unavailable",
                "mode": "refuse",
            }))
            .map_err(|e| ApiError::new(e.to_string(), 500))?;
            let description = format!("toxiproxy proxy {:?} is disabled", proxy.name);
            self.insert_rule(proxy, &name, fault, 1.0, description)?;
        }
        Ok(())
    }

    fn forget_rule(&self, rule: Option<&str>) {
        if let Some(rule) = rule {
            // Gone already (deleted by hand): nothing left to remove.
            let _ = self.control.delete(rule, CALLER);
        }
    }

    /// Takes away the toxics whose rules were switched off or removed from
    /// outside (a halt, `ctl`), so the API and the rules agree.
    fn sync(&self, proxies: &mut BTreeMap<String, ProxyState>) {
        for proxy in proxies.values_mut() {
            let control = &self.control;
            proxy.toxics.retain(|toxic| match &toxic.rule {
                None => true,
                Some(rule) => match control.rule(rule) {
                    Ok(view) if view.enabled => true,
                    Ok(_) => {
                        let _ = control.delete(rule, CALLER);
                        false
                    }
                    Err(_) => false,
                },
            });
            let disabled = disabled_rule(&proxy.name);
            if matches!(control.rule(&disabled), Ok(view) if !view.enabled) {
                let _ = control.delete(&disabled, CALLER);
            }
        }
    }

    fn view(&self, proxy: &ProxyState) -> ProxyView {
        ProxyView {
            name: proxy.name.clone(),
            listen: proxy.listen.to_string(),
            upstream: proxy.upstream.clone(),
            enabled: self.is_enabled(proxy),
            toxics: proxy.toxics.iter().map(ToxicState::view).collect(),
        }
    }

    /// The address of proxy `name`'s port, for tests and the CLI.
    pub async fn proxy_addr(&self, name: &str) -> Option<SocketAddr> {
        self.proxies.lock().await.get(name).map(|p| p.listen)
    }

    /// Creates the proxies of a `toxiproxy-server -config` file (a JSON
    /// array, as `/populate` takes).
    pub async fn populate_from(&self, json_text: &[u8]) -> Result<usize, String> {
        let mut done = Vec::new();
        self.populate_into(json_text, &mut done)
            .await
            .map_err(|e| e.message)?;
        Ok(done.len())
    }
}

/// The refusing rule that stands for `enabled: false`.
fn disabled_rule(proxy: &str) -> String {
    format!("toxiproxy-disabled.{}", slug(proxy))
}

/// A Toxiproxy name as a faultline name: lowercase, and `_` for anything
/// but `a-z`, `0-9`, `.`, `_` and `-`.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '_' | '-') => c,
            _ => '_',
        })
        .collect()
}

/// A `listen` as Go's `net.Listen` takes it: empty is loopback with any
/// port (Go binds every interface; loopback is the safer default), a
/// missing host is loopback, a name is resolved.
async fn resolve(listen: &str) -> Result<SocketAddr, ApiError> {
    let text = if listen.is_empty() {
        "127.0.0.1:0"
    } else {
        listen
    };
    let text = match text.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_owned(),
    };
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(&text)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ApiError::new(format!("listen tcp {text}: cannot resolve"), 500))
}

fn control_error(error: ControlError) -> ApiError {
    let status = match &error {
        ControlError::Invalid(_) => 400,
        ControlError::NotFound(_) => 404,
        _ => 409,
    };
    match error {
        ControlError::Invalid(_) => ApiError::bad_request_body().joined(error),
        other => ApiError::new(other.to_string(), status),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request_body().joined(e))
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| {
            ApiError::bad_request_body().joined(format!("{e} (at most {MAX_BODY_BYTES} bytes)"))
        })
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(error: &ApiError) -> StatusCode {
    StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Toxiproxy's `apiError`: Go's `http.Error` with the JSON as text.
fn error_reply(error: &ApiError) -> Reply {
    let text = serde_json::to_string(error).unwrap_or_default();
    let mut reply = plain(status_of(error), &format!("{text}\n"));
    reply.headers_mut().insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    reply
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    reply
}

fn plain(status: StatusCode, text: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(text.to_owned())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

fn empty(status: StatusCode) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = status;
    reply
}

fn no_content() -> Reply {
    empty(StatusCode::NO_CONTENT)
}

/// Toxiproxy writes this text itself, space and newline included.
fn version() -> Reply {
    let body = format!("{{\"version\": \"{}\"}}\n", wire::TOXIPROXY_VERSION);
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    reply.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json;charset=utf-8"),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_faultline_names() {
        assert_eq!(slug("Redis Master"), "redis_master");
        assert_eq!(slug("pg-1.db"), "pg-1.db");
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
    }
}
