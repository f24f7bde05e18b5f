//! The Toxiproxy API (SPEC §9) on `[toxiproxy] listen`: every route's
//! status code and body against Toxiproxy 2.12's `api.go`, then the
//! toxics' effect on real connections, and real client libraries
//! (`toxiproxy-python` in a venv, `toxiproxy-node-client` in a temporary
//! npm folder, both installed by `.ci/run`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Request};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{client, empty, full, send, wait_until, Reply, TestProxy};

const CONFIG: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nseed = 3\nshutdown_grace = \"1s\"\n\n[toxiproxy]\nlisten = \"127.0.0.1:0\"\n";

async fn start() -> TestProxy {
    TestProxy::start(CONFIG, "").await
}

/// Calls the Toxiproxy API.
async fn call(proxy: &TestProxy, method: &str, path: &str, body: Option<Value>) -> Reply {
    call_as(proxy, None, method, path, body).await
}

async fn call_as(
    proxy: &TestProxy,
    agent: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let addr = proxy.running().toxiproxy_addr().unwrap();
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("http://{addr}{path}"));
    if let Some(agent) = agent {
        request = request.header("user-agent", agent);
    }
    let body = body.map_or_else(empty, |b| full(b.to_string()));
    send(&client(), request.body(body).unwrap()).await
}

fn body(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
}

/// An upstream that answers every line with the same line, upper-cased.
async fn echo_upper() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    let upper = buffer[..n].to_ascii_uppercase();
                    if stream.write_all(&upper).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `ping` through `addr` and times the answer.
async fn exchange(addr: SocketAddr) -> std::io::Result<(String, Duration)> {
    let mut stream = TcpStream::connect(addr).await?;
    let start = Instant::now();
    stream.write_all(b"ping").await?;
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await?;
    Ok((
        String::from_utf8_lossy(&answer).into_owned(),
        start.elapsed(),
    ))
}

fn listen_addr(proxy: &Value) -> SocketAddr {
    proxy["listen"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn every_route_answers_with_toxiproxys_status_and_shape() {
    let proxy = start().await;
    let upstream = echo_upper().await.to_string();

    // (method, path, body, status, body: exact JSON, or a check).
    let version = call(&proxy, "GET", "/version", None).await;
    assert_eq!(version.status, 200);
    assert_eq!(
        version.header("content-type"),
        Some("application/json;charset=utf-8")
    );
    assert_eq!(version.text(), "{\"version\": \"2.12.0\"}\n");

    let list = call(&proxy, "GET", "/proxies", None).await;
    assert_eq!((list.status.as_u16(), body(&list)), (200, json!({})));

    let created = call(
        &proxy,
        "POST",
        "/proxies",
        Some(json!({"name": "redis", "listen": "127.0.0.1:0", "upstream": upstream})),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("content-type"), Some("application/json"));
    let created = body(&created);
    let listen = listen_addr(&created);
    assert_ne!(listen.port(), 0, "port 0 is answered with the real port");
    assert_eq!(
        created,
        json!({"name": "redis", "listen": listen.to_string(), "upstream": upstream, "enabled": true, "toxics": []})
    );
    // Field order as Go writes them.
    let text = call(&proxy, "GET", "/proxies/redis", None).await.text();
    assert!(
        text.starts_with("{\"name\":\"redis\",\"listen\":"),
        "{text}"
    );

    let cases: Vec<(&str, String, Option<Value>, u16, Value)> = vec![
        (
            "POST",
            "/proxies".into(),
            Some(json!({"name": "redis", "upstream": upstream})),
            409,
            json!({"error": "proxy already exists", "status": 409}),
        ),
        (
            "POST",
            "/proxies".into(),
            Some(json!({"upstream": upstream})),
            400,
            json!({"error": "missing required field: name", "status": 400}),
        ),
        (
            "POST",
            "/proxies".into(),
            Some(json!({"name": "x"})),
            400,
            json!({"error": "missing required field: upstream", "status": 400}),
        ),
        (
            "GET",
            "/proxies/nope".into(),
            None,
            404,
            json!({"error": "proxy not found", "status": 404}),
        ),
        (
            "DELETE",
            "/proxies/nope".into(),
            None,
            404,
            json!({"error": "proxy not found", "status": 404}),
        ),
        (
            "GET",
            "/proxies/nope/toxics".into(),
            None,
            404,
            json!({"error": "proxy not found", "status": 404}),
        ),
        ("GET", "/proxies/redis/toxics".into(), None, 200, json!([])),
        (
            "POST",
            "/proxies/redis/toxics".into(),
            Some(json!({"type": "latency", "attributes": {"latency": 100}})),
            200,
            json!({"attributes": {"latency": 100, "jitter": 0}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1}),
        ),
        (
            "POST",
            "/proxies/redis/toxics".into(),
            Some(json!({"type": "latency"})),
            409,
            json!({"error": "toxic already exists", "status": 409}),
        ),
        (
            "POST",
            "/proxies/redis/toxics".into(),
            Some(json!({"type": "explode"})),
            400,
            json!({"error": "invalid toxic type", "status": 400}),
        ),
        (
            "POST",
            "/proxies/redis/toxics".into(),
            Some(json!({"type": "latency", "stream": "sideways"})),
            400,
            json!({"error": "stream was invalid, can be either upstream or downstream", "status": 400}),
        ),
        (
            "GET",
            "/proxies/redis/toxics/latency_downstream".into(),
            None,
            200,
            json!({"attributes": {"latency": 100, "jitter": 0}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1}),
        ),
        (
            "PATCH",
            "/proxies/redis/toxics/latency_downstream".into(),
            Some(json!({"toxicity": 0.5})),
            200,
            json!({"attributes": {"latency": 100, "jitter": 0}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 0.5}),
        ),
        (
            "POST",
            "/proxies/redis/toxics/latency_downstream".into(),
            Some(json!({"attributes": {"jitter": 5}})),
            200,
            json!({"attributes": {"latency": 100, "jitter": 5}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 0.5}),
        ),
        (
            "GET",
            "/proxies/redis/toxics/nope".into(),
            None,
            404,
            json!({"error": "toxic not found", "status": 404}),
        ),
        (
            "PATCH",
            "/proxies/redis/toxics/nope".into(),
            Some(json!({})),
            404,
            json!({"error": "toxic not found", "status": 404}),
        ),
        (
            "DELETE",
            "/proxies/redis/toxics/nope".into(),
            None,
            404,
            json!({"error": "toxic not found", "status": 404}),
        ),
        (
            "PATCH",
            "/proxies/redis".into(),
            Some(json!({"enabled": false})),
            200,
            json!({"name": "redis", "listen": listen.to_string(), "upstream": upstream, "enabled": false,
                   "toxics": [{"attributes": {"latency": 100, "jitter": 5}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 0.5}]}),
        ),
        (
            "POST",
            "/proxies/redis".into(),
            Some(json!({"enabled": true})),
            200,
            json!({"name": "redis", "listen": listen.to_string(), "upstream": upstream, "enabled": true,
                   "toxics": [{"attributes": {"latency": 100, "jitter": 5}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 0.5}]}),
        ),
        (
            "POST",
            "/populate".into(),
            Some(json!([{"name": "redis", "listen": listen.to_string(), "upstream": upstream}])),
            201,
            json!({"proxies": [{"name": "redis", "listen": listen.to_string(), "upstream": upstream, "enabled": true,
                   "toxics": [{"attributes": {"latency": 100, "jitter": 5}, "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 0.5}]}]}),
        ),
        (
            "POST",
            "/populate".into(),
            Some(json!([{"upstream": upstream}])),
            400,
            json!({"error": "missing required field: name at proxy 1", "status": 400, "proxies": null}),
        ),
        (
            "POST",
            "/populate".into(),
            Some(json!([])),
            201,
            json!({"proxies": null}),
        ),
    ];
    for (method, path, request, status, expected) in cases {
        let reply = call(&proxy, method, &path, request.clone()).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path} {request:?}: {}",
            reply.text()
        );
        assert_eq!(body(&reply), expected, "{method} {path} {request:?}");
        if status >= 400 && path != "/populate" {
            // Go's http.Error: the JSON as text, one line (/populate writes
            // its error with its proxies, as JSON).
            assert_eq!(
                reply.header("content-type"),
                Some("text/plain; charset=utf-8")
            );
            assert!(reply.text().ends_with("}\n"));
        }
    }
    let bad = call(&proxy, "POST", "/proxies", None).await;
    assert_eq!(bad.status, 400);
    assert!(body(&bad)["error"]
        .as_str()
        .unwrap()
        .starts_with("bad request body: "));

    let deleted = call(
        &proxy,
        "DELETE",
        "/proxies/redis/toxics/latency_downstream",
        None,
    )
    .await;
    assert_eq!((deleted.status.as_u16(), deleted.body.len()), (204, 0));
    let reset = call(&proxy, "POST", "/reset", None).await;
    assert_eq!((reset.status.as_u16(), reset.body.len()), (204, 0));
    let deleted = call(&proxy, "DELETE", "/proxies/redis", None).await;
    assert_eq!((deleted.status.as_u16(), deleted.body.len()), (204, 0));
    assert_eq!(
        body(&call(&proxy, "GET", "/proxies", None).await),
        json!({})
    );

    let browser = call_as(&proxy, Some("Mozilla/5.0"), "GET", "/version", None).await;
    assert_eq!(
        (browser.status.as_u16(), browser.text()),
        (403, "User agent not allowed\n".to_owned())
    );
    let unknown = call(&proxy, "GET", "/nothing", None).await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.text()),
        (404, "404 page not found\n".to_owned())
    );
    let wrong = call(&proxy, "PUT", "/proxies", None).await;
    assert_eq!(wrong.status, 405);
    proxy.shutdown().await;
}

#[tokio::test]
async fn toxics_are_rules_and_act_on_real_connections() {
    let proxy = start().await;
    let upstream = echo_upper().await.to_string();
    let created = call(
        &proxy,
        "POST",
        "/proxies",
        Some(json!({"name": "cache", "listen": "127.0.0.1:0", "upstream": upstream})),
    )
    .await;
    let addr = listen_addr(&body(&created));
    let (answer, _) = exchange(addr).await.unwrap();
    assert_eq!(answer, "PING");

    // latency: a rule faultline's own API shows.
    call(
        &proxy,
        "POST",
        "/proxies/cache/toxics",
        Some(json!({"name": "slow", "type": "latency", "attributes": {"latency": 300}})),
    )
    .await;
    let rule = proxy
        .admin("GET", "/api/rules/toxiproxy.cache.slow", None)
        .await;
    assert_eq!(rule.status, 200, "{}", rule.text());
    let (_, took) = exchange(addr).await.unwrap();
    assert!(took >= Duration::from_millis(300), "{took:?}");

    // toxicity 0 never fires.
    call(
        &proxy,
        "PATCH",
        "/proxies/cache/toxics/slow",
        Some(json!({"toxicity": 0})),
    )
    .await;
    for _ in 0..5 {
        let (_, took) = exchange(addr).await.unwrap();
        assert!(took < Duration::from_millis(300), "{took:?}");
    }
    call(&proxy, "DELETE", "/proxies/cache/toxics/slow", None).await;

    // reset_peer: the client sees a reset.
    call(
        &proxy,
        "POST",
        "/proxies/cache/toxics",
        Some(json!({"type": "reset_peer", "attributes": {"timeout": 0}})),
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buffer = [0u8; 8];
    let read = stream.read(&mut buffer).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let reset = call(&proxy, "POST", "/reset", None).await;
    assert_eq!(reset.status, 204);
    assert_eq!(exchange(addr).await.unwrap().0, "PING");

    // enabled: false refuses connections.
    call(
        &proxy,
        "PATCH",
        "/proxies/cache",
        Some(json!({"enabled": false})),
    )
    .await;
    wait_until("the proxy to refuse", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    call(
        &proxy,
        "PATCH",
        "/proxies/cache",
        Some(json!({"enabled": true})),
    )
    .await;
    wait_until("the proxy to accept again", async || {
        exchange(addr).await.is_ok()
    })
    .await;

    // A halt takes the toxics away, as /reset does.
    call(
        &proxy,
        "POST",
        "/proxies/cache/toxics",
        Some(json!({"type": "timeout", "attributes": {"timeout": 0}})),
    )
    .await;
    proxy.admin("POST", "/api/halt", None).await;
    let toxics = call(&proxy, "GET", "/proxies/cache/toxics", None).await;
    assert_eq!(body(&toxics), json!([]));
    assert_eq!(exchange(addr).await.unwrap().0, "PING");

    let injected = "faultline_faults_injected_total{kind=\"latency\",region=\"\",rule=\"toxiproxy.cache.slow\",upstream=\"cache\"}";
    assert_eq!(proxy.metric(injected).await, Some(1.0));
    proxy.shutdown().await;
}

/// A tool `.ci/run` installs: the path in `variable`, else `fallback`;
/// `None` (the test is skipped) only outside CI.
fn installed(variable: &str, fallback: &str, what: &str) -> Option<String> {
    let path = std::env::var(variable).unwrap_or_else(|_| fallback.to_owned());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: .ci/run installs {what} ({variable})"
    );
    eprintln!("SKIPPED: {path} not installed ({what}; run .ci/run or set {variable})");
    None
}

/// Runs a client script against a fresh proxy's Toxiproxy API and an
/// upper-casing upstream; the script prints `ok` when every check held.
async fn run_client(program: String, script: &str, extra_env: Vec<(&'static str, String)>) {
    let proxy = start().await;
    let upstream = echo_upper().await;
    let api = proxy.running().toxiproxy_addr().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .arg(script)
            .env("TOXIPROXY_PORT", api.port().to_string())
            .env("UPSTREAM", upstream.to_string())
            .envs(extra_env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_python_drives_it() {
    let Some(python) = installed(
        "FAULTLINE_TOXIPROXY_PYTHON",
        "/tmp/faultline-toxiproxy-venv/bin/python",
        "toxiproxy-python in a venv",
    ) else {
        return;
    };
    run_client(python, "tests/clients/toxiproxy_client.py", Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_node_client_drives_it() {
    let Some(modules) = installed(
        "FAULTLINE_TOXIPROXY_NODE_PATH",
        "/tmp/faultline-toxiproxy-npm/node_modules",
        "toxiproxy-node-client in a temporary npm folder",
    ) else {
        return;
    };
    let Some(node) = installed("FAULTLINE_NODE", "/usr/bin/node", "Debian nodejs") else {
        return;
    };
    run_client(
        node,
        "tests/clients/toxiproxy_client.js",
        vec![("NODE_PATH", modules)],
    )
    .await;
}

/// A port the system just gave out and took back.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_server_takes_toxiproxys_flags_and_config() {
    let upstream = echo_upper().await;
    let (api_port, proxy_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("toxiproxy.json");
    std::fs::write(
        &config,
        json!([{"name": "echo", "listen": format!("127.0.0.1:{proxy_port}"), "upstream": upstream.to_string()}]).to_string(),
    )
    .unwrap();
    let _server = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
            .args([
                "toxiproxy-server",
                "-host=127.0.0.1",
                "-port",
                &api_port.to_string(),
            ])
            .args(["-config", config.to_str().unwrap(), "-admin", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let version = format!("http://127.0.0.1:{api_port}/version");
    wait_until("GET /version to answer", async || {
        let request = Request::get(&version).body(empty()).unwrap();
        client()
            .request(request)
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let proxies = send(
        &client(),
        Request::get(format!("http://127.0.0.1:{api_port}/proxies"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        body(&proxies)["echo"]["listen"],
        format!("127.0.0.1:{proxy_port}")
    );
    let through: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    assert_eq!(exchange(through).await.unwrap().0, "PING");
}
