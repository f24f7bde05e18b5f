//! Fixtures that read like sentences: a test upstream, a proxy started from
//! TOML text, and a client. Everything binds `127.0.0.1:0`.
// A module of each test crate: not every test uses every helper, and its
// `pub` items are for the tests, not for a public API.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use faultline::app::{App, Running};
use faultline::book;
use faultline::config::Config;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub mod grpc;
pub mod tls;

pub type TestBody = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------
// The test upstream.

/// What the test upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    /// When the request reached the upstream.
    pub at: std::time::Instant,
}

/// An upstream on loopback that answers by path, with or without its own
/// name as the first segment:
/// - `/bytes/N`: N bytes, streamed in 64 KiB chunks, with content-length;
/// - `/chunked/N`: N bytes, streamed, without content-length;
/// - `/count`: reads the request body and answers how many bytes it had;
/// - `/sleep/MS`: answers after MS milliseconds;
/// - `/status/CODE`: answers with that status;
/// - anything else: 200 with the request's body echoed back and
///   `x-upstream` naming the upstream.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    /// Serves TLS (`https://`).
    pub tls: bool,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_with(name, None).await
    }

    /// The same upstream over TLS, serving `config`'s certificate.
    pub async fn start_tls(name: &str, config: Arc<rustls::ServerConfig>) -> TestUpstream {
        Self::start_with(name, Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    /// The same upstream on a given address (one a dropped upstream had).
    pub async fn start_at(name: &str, addr: SocketAddr) -> TestUpstream {
        Self::start_on(name, None, addr).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> TestUpstream {
        Self::start_on(name, tls, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn start_on(
        name: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        addr: SocketAddr,
    ) -> TestUpstream {
        let is_tls = tls.is_some();
        // A dropped upstream's task lets go of its port when it is next
        // polled: try again until then.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r, s, n) = (requests.clone(), seen.clone(), name.to_owned());
        let c = connections.clone();
        let task = tokio::spawn(async move {
            // Dropping the upstream aborts this task, and with it every
            // connection it serves: the connections close as a real
            // upstream's would when it goes away.
            let mut served = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, s, n) = (r.clone(), s.clone(), n.clone());
                let tls = tls.clone();
                served.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        upstream_answer(n.clone(), r.clone(), s.clone(), req)
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match tls {
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        TestUpstream {
            addr,
            name: name.to_owned(),
            tls: is_tls,
            requests,
            connections,
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// How many requests reached this upstream (counted on arrival).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// How many connections this upstream accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request seen")
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_answer(
    name: String,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    requests.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
        at: std::time::Instant::now(),
    });
    let path = req.uri().path().to_owned();
    // `/<name>/status/500` reaches the same handler as `/status/500`, so a
    // test can pick both the route (by upstream name) and the answer.
    let path = path
        .strip_prefix(&format!("/{name}"))
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(&path);
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let response = match head {
        "bytes" => {
            let n: u64 = arg.parse().unwrap_or(0);
            Response::builder()
                .header("content-length", n)
                .body(RepeatBody::new(n, true).boxed())
                .unwrap()
        }
        "chunked" => {
            let n: u64 = arg.parse().unwrap_or(0);
            Response::new(RepeatBody::new(n, false).boxed())
        }
        "count" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(Full::from(total.to_string()).boxed())
        }
        "sleep" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(Full::from("slept").boxed())
        }
        // Announces more than it sends, then the connection breaks.
        "cut" => Response::builder()
            .header("content-length", "1000")
            .body(RepeatBody::new(10, false).boxed())
            .unwrap(),
        // An upstream that sends faultline's own marks (another proxy's,
        // or a forgery): the proxy must not pass them off as its own.
        "forged-marks" => Response::builder()
            .status(504)
            .header("x-faultline-error", "upstream_timeout")
            .header("x-faultline-rule", "forged")
            .body(Full::from("the upstream's own 504").boxed())
            .unwrap(),
        "status" => {
            let code: u16 = arg.parse().unwrap_or(500);
            Response::builder()
                .status(code)
                .header("x-upstream", name.as_str())
                .body(Full::from(format!("status {code}")).boxed())
                .unwrap()
        }
        _ => {
            let content_type = req.headers().get("content-type").cloned();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut builder = Response::builder()
                .header("x-upstream", name.as_str())
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2");
            if let Some(ct) = content_type {
                builder = builder.header("content-type", ct);
            }
            builder.body(Full::from(body).boxed()).unwrap()
        }
    };
    Ok(response)
}

/// A body of `len` zero bytes produced on the fly, in 64 KiB chunks.
pub struct RepeatBody {
    remaining: u64,
    exact: bool,
    chunk: Bytes,
}

impl RepeatBody {
    pub fn new(len: u64, exact: bool) -> Self {
        Self {
            remaining: len,
            exact,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

// ---------------------------------------------------------------------------
// The proxy.

/// A proxy started in this process from config text and rule files.
pub struct TestProxy {
    pub running: Option<Running>,
    rules_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts a proxy; `config` is a faultline.toml, `rules` the text of one rule file.
    pub async fn start(config: &str, rules: &str) -> TestProxy {
        Self::try_start(config, rules).await.unwrap()
    }

    pub async fn try_start(config: &str, rules: &str) -> Result<TestProxy, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(config, dir.path()).map_err(|e| e.to_string())?;
        let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
        // A real rules folder, so reloads and the watcher have files to read.
        std::fs::create_dir_all(&config.proxy.rules_dir).unwrap();
        std::fs::write(config.proxy.rules_dir.join("test.toml"), rules).unwrap();
        let identities: Vec<_> = config.upstreams.iter().map(Into::into).collect();
        let rules = book::load_dir(&config.proxy.rules_dir, &names)
            .and_then(|book| book.fitted(&identities))
            .map_err(|d| faultline::diagnostic::render(&d))?;
        let rules_dir = config.proxy.rules_dir.clone();
        let running = App::new(config, rules)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        Ok(TestProxy {
            running: Some(running),
            rules_dir,
            dir,
        })
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// `http://ADDR` of a `[[listener]]`.
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.running().listener_addr(listener).unwrap())
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running().admin_addr())
    }

    /// The folder the proxy reads rule files from; the rules given to
    /// `start` are its `test.toml`.
    pub fn rules_dir(&self) -> PathBuf {
        self.rules_dir.clone()
    }

    /// Calls the admin API: `path` below the admin URL, a JSON body or none.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.admin_as(None, method, path, body).await
    }

    /// Calls the admin API with a bearer token.
    pub async fn admin_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("{}{path}", self.admin_url()));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(empty, |b| full(b.to_owned()));
        send(&client(), request.body(body).unwrap()).await
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.running().listener_addr(listener).unwrap()
    }

    /// Rule `name`'s `injected` count, from `GET /api/rules/NAME`.
    pub async fn injected(&self, name: &str) -> u64 {
        let reply = self.admin("GET", &format!("/api/rules/{name}"), None).await;
        let rule: serde_json::Value = serde_json::from_slice(&reply.body)
            .unwrap_or_else(|e| panic!("GET /api/rules/{name}: {e}: {}", reply.text()));
        rule["injected"]
            .as_u64()
            .unwrap_or_else(|| panic!("no injected count: {rule}"))
    }

    /// Waits until rule `name` has injected `n` faults: a request sent
    /// before is inside its fault now (counted when decided).
    pub async fn until_injected(&self, name: &str, n: u64) {
        let what = format!("rule {name} to inject {n} faults");
        wait_until(&what, async || self.injected(name).await >= n).await;
    }

    /// One series of `/metrics`, written as exposed (`name{label="v"}`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = get(&format!("{}/metrics", self.admin_url())).await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    /// Waits until no request is in flight on `listener`: the proxy has
    /// answered, or dropped, every request it read there.
    pub async fn until_no_request_in_flight(&self, listener: &str) {
        let series = format!("faultline_inflight_requests{{listener=\"{listener}\"}}");
        let what = format!("{series} to fall to 0");
        wait_until(&what, async || self.metric(&series).await == Some(0.0)).await;
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// One rule as TOML: `name`, lines at the rule's top level (`enabled`,
/// `probability`, …), `[rule.match]` lines and `[rule.fault]` lines.
/// An address where connections are refused, and the socket that keeps it
/// so: bound but not listening, so no other test can take the port while
/// the socket lives (a port bound and dropped may be given to another).
pub fn refused_addr() -> (std::net::SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind a port");
    let addr = socket.local_addr().expect("its address");
    (addr, socket)
}

pub fn rule(name: &str, top: &str, matcher: &str, fault: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\n{top}\n[rule.match]\n{matcher}\n[rule.fault]\n{fault}\n")
}

/// A config with one `edge` listener routing everything to each upstream
/// given, by path prefix `/<name>`, and the first upstream as a fallback.
pub fn edge_config(upstreams: &[&TestUpstream], extra_proxy: &str) -> String {
    let mut text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nseed = 42\nshutdown_grace = \"5s\"\n{extra_proxy}\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n"
    );
    for upstream in upstreams {
        let region = if upstream.name.ends_with("use1") {
            "us-east-1"
        } else {
            "us-west-2"
        };
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"{}\"\nurl = \"{}\"\nlabels = {{ region = \"{region}\" }}\n",
            upstream.name,
            upstream.url()
        ));
    }
    for upstream in upstreams {
        text.push_str(&format!(
            "\n[[route]]\nlistener = \"edge\"\npath_prefix = \"/{0}\"\nupstream = \"{0}\"\n",
            upstream.name
        ));
    }
    text.push_str(&format!(
        "\n[[route]]\nlistener = \"edge\"\nupstream = \"{}\"\n",
        upstreams[0].name
    ));
    text
}

// ---------------------------------------------------------------------------
// Waiting on state, never on a fixed sleep.

/// Polls `check` until it holds; panics saying what it waited for after
/// 10 s, loose enough for a loaded 2-core machine.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// The client.

/// A plain HTTP/1.1 client with its own connection pool.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An h2c (HTTP/2 without TLS) client.
pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A finished exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn empty() -> TestBody {
    Empty::new().boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).boxed()
}

pub async fn send(client: &Client<HttpConnector, TestBody>, request: Request<TestBody>) -> Reply {
    let response = client.request(request).await.expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send(&client(), Request::get(url).body(empty()).unwrap()).await
}

// ---------------------------------------------------------------------------
// The runnable examples.

/// An example's binary. `cargo test` builds every example next to the test
/// binaries; `cargo test --test NAME` alone does not, hence the check that
/// it is newer than its source and the library's.
pub fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo test` or `cargo build --examples`",
                path.display()
            )
        });
    let source = newest(&[
        PathBuf::from(format!("examples/{name}.rs")),
        PathBuf::from("src"),
    ]);
    assert!(
        built >= source,
        "{} is older than its sources: run `cargo test` or `cargo build --examples`",
        path.display()
    );
    path
}

/// The latest modification time of the files below `paths`.
fn newest(paths: &[PathBuf]) -> std::time::SystemTime {
    let mut latest = std::time::SystemTime::UNIX_EPOCH;
    let mut pending = paths.to_vec();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) {
            latest = latest.max(modified);
        }
    }
    latest
}

/// The path of a tool from the Debian package `prometheus` (`promtool` or
/// `prometheus`), or `None` outside CI when it is not installed.
pub fn prometheus_tool(name: &str) -> Option<&'static str> {
    let path = match name {
        "promtool" => "/usr/bin/promtool",
        _ => "/usr/bin/prometheus",
    };
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: .ci/run installs the Debian package prometheus"
    );
    eprintln!("SKIPPED: {path} not installed (apt-get install prometheus)");
    None
}
