//! Forward listeners (`mode = "forward"`), as clients with `HTTP_PROXY` /
//! `HTTPS_PROXY` use them: absolute-form `http://` requests routed by their
//! authority (a configured upstream, else `other`), `CONNECT` tunnels that a
//! TLS client handshakes through, the ports a tunnel may reach, the errors
//! a client gets (400, 403, 502 dns and connect), rules acting at the
//! `CONNECT`, shutdown ending tunnels, and curl with `-x`.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::tls::{client_config, server_config, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// Loose enough for a loaded 2-core machine.
const LOOSE: Duration = Duration::from_secs(10);

/// A forward listener `egress`, `orders` configured as an upstream, and
/// CONNECT allowed to `allow_ports` besides 443.
fn forward_config(orders: &TestUpstream, allow_ports: &[u16], extra_proxy: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[proxy]
seed = 42
shutdown_grace = "5s"
{extra_proxy}

[[listener]]
name = "egress"
listen = "127.0.0.1:0"
mode = "forward"
allow_ports = {allow_ports:?}

[[upstream]]
name = "orders"
url = "{}"
labels = {{ region = "us-east-1" }}
"#,
        orders.url()
    )
}

/// Sends `request` (absolute-form URI) to the proxy at `proxy`, as an
/// HTTP/1.1 client configured with a proxy does.
async fn via_proxy(proxy: SocketAddr, request: Request<TestBody>) -> Reply {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn absolute_get(url: &str) -> Request<TestBody> {
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.authority().unwrap().to_string();
    Request::get(uri)
        .header("host", host)
        .body(empty())
        .unwrap()
}

/// Sends `CONNECT target` and reads the proxy's answer head; gives the
/// head and the connection, a tunnel if the answer was `200`.
async fn connect(proxy: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(LOOSE, tcp.read(&mut byte))
            .await
            .expect("the proxy answers the CONNECT")
            .unwrap();
        assert_eq!(read, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap().to_ascii_lowercase(), tcp)
}

/// A request's whole answer on a connection the proxy closes or keeps: the
/// head, and the body its content-length gives.
async fn raw_exchange(proxy: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(LOOSE, tcp.read(&mut buffer))
            .await
            .expect("the proxy answers")
            .unwrap_or(0);
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|l| l.trim().parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn absolute_form_requests_go_to_the_upstream_their_authority_names() {
    let orders = TestUpstream::start("orders").await;
    let elsewhere = TestUpstream::start("elsewhere").await;
    let proxy = TestProxy::start(&forward_config(&orders, &[], ""), "").await;
    let egress = proxy.addr("egress");

    let reply = via_proxy(
        egress,
        absolute_get(&format!("{}/orders/1?x=y", orders.url())),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream"), Some("orders"));
    let seen = orders.last_seen();
    assert_eq!(seen.uri, "/orders/1?x=y", "sent in origin form");
    assert_eq!(seen.headers["host"], orders.addr.to_string().as_str());

    // No upstream has this authority: `other`, sent to the authority itself.
    let url = format!("{}/thing", elsewhere.url());
    let reply = via_proxy(egress, absolute_get(&url)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-upstream"), Some("elsewhere"));
    let seen = elsewhere.last_seen();
    assert_eq!(seen.uri, "/thing");
    assert_eq!(seen.headers["host"], elsewhere.addr.to_string().as_str());
    assert!(seen.headers.get("proxy-connection").is_none());

    let counted = |upstream: &str, region: &str| {
        format!(
            r#"faultline_requests_total{{code="200",method="GET",region="{region}",upstream="{upstream}"}}"#
        )
    };
    assert_eq!(
        proxy.metric(&counted("orders", "us-east-1")).await,
        Some(1.0)
    );
    assert_eq!(proxy.metric(&counted("other", "")).await, Some(1.0));
}

#[tokio::test]
async fn rules_name_forward_traffic_by_upstream_or_other() {
    let orders = TestUpstream::start("orders").await;
    let elsewhere = TestUpstream::start("elsewhere").await;
    let rules = rule(
        "other-down",
        "",
        "upstreams = [\"other\"]",
        "kind = \"error\"\nstatus = 503",
    );
    let proxy = TestProxy::start(&forward_config(&orders, &[], ""), &rules).await;
    let egress = proxy.addr("egress");

    let reply = via_proxy(egress, absolute_get(&format!("{}/x", elsewhere.url()))).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-faultline-rule"), Some("other-down"));
    assert_eq!(elsewhere.requests(), 0);
    let reply = via_proxy(egress, absolute_get(&format!("{}/x", orders.url()))).await;
    assert_eq!(reply.status, 200, "orders is not `other`");
}

#[tokio::test]
async fn a_tls_client_handshakes_through_a_connect_tunnel() {
    let ca = TestCa::new("forward test CA");
    let leaf = ca.leaf(&["localhost"]);
    let secure = TestUpstream::start_tls("secure", server_config(&leaf, None)).await;
    let orders = TestUpstream::start("orders").await;
    let port = secure.addr.port();
    let proxy = TestProxy::start(&forward_config(&orders, &[port], ""), "").await;

    let (head, tunnel) = connect(proxy.addr("egress"), &format!("localhost:{port}")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // RFC 9110 §9.3.6: a 2xx to CONNECT has no framing of its own.
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(client_config(&ca, &[b"http/1.1"]))
        .connect(name, tunnel)
        .await
        .expect("the TLS handshake goes through the tunnel");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    for i in 0..2 {
        let request = Request::get(format!("/secure/{i}"))
            .header("host", format!("localhost:{port}"))
            .body(empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-upstream"], "secure");
    }
    assert_eq!(secure.requests(), 2);
    assert_eq!(secure.connections(), 1, "one tunnel, one connection");
    let series =
        r#"faultline_requests_total{code="200",method="CONNECT",region="",upstream="other"}"#;
    assert_eq!(proxy.metric(series).await, Some(1.0));
}

#[tokio::test]
async fn a_tunnel_passes_each_half_close_on() {
    // A server that reads everything, then answers how much and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        stream
            .write_all(format!("read {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
    });
    let orders = TestUpstream::start("orders").await;
    let proxy = TestProxy::start(&forward_config(&orders, &[port], ""), "").await;
    let (head, mut tunnel) = connect(proxy.addr("egress"), &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    tunnel.write_all(&[7u8; 100_000]).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LOOSE, tunnel.read_to_string(&mut answer))
        .await
        .expect("the server's answer and close come through")
        .unwrap();
    assert_eq!(answer, "read 100000 bytes");
}

#[tokio::test]
async fn connect_is_refused_where_a_forward_proxy_must_not_go() {
    let orders = TestUpstream::start("orders").await;
    let closed = closed_port().await;
    let proxy = TestProxy::start(&forward_config(&orders, &[closed], ""), "").await;
    let egress = proxy.addr("egress");

    // Not an open tunnel: SMTP is not 443 nor an allowed port.
    let (head, _) = connect(egress, "mail.example.test:25").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(
        head.contains("x-faultline-error: connect_port_denied"),
        "{head}"
    );

    let (head, _) = connect(egress, "example.test").await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(
        head.contains("x-faultline-error: client_protocol"),
        "{head}"
    );

    // `.invalid` never resolves (RFC 6761).
    let (head, _) = connect(egress, "no-such-host.invalid:443").await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-faultline-error: upstream_dns"), "{head}");
    let dns = r#"faultline_upstream_errors_total{reason="dns",upstream="other"}"#;
    assert_eq!(proxy.metric(dns).await, Some(1.0));

    let (head, _) = connect(egress, &format!("127.0.0.1:{closed}")).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(
        head.contains("x-faultline-error: upstream_connect"),
        "{head}"
    );

    // Not absolute form, or not http://: the client's mistake.
    let answer = raw_exchange(egress, "GET /orders HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("absolute-form"), "{answer}");
    let answer = raw_exchange(
        egress,
        "GET https://api.example.test/ HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    let answer = raw_exchange(
        egress,
        "GET http://no-such-host.invalid/ HTTP/1.1\r\nHost: no-such-host.invalid\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("http/1.1 502"), "{answer}");
    assert!(
        answer.contains("x-faultline-error: upstream_dns"),
        "{answer}"
    );
}

#[tokio::test]
async fn rules_act_at_the_connect() {
    let orders = TestUpstream::start("orders").await;
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = target.local_addr().unwrap().port();
    let rules = [
        rule(
            "slow-tunnels",
            "",
            "upstreams = [\"other\"]\nmethods = [\"CONNECT\"]",
            "kind = \"latency\"\ndelay = \"200ms\"",
        ),
        rule(
            "refused",
            "enabled = false",
            "upstreams = [\"other\"]",
            "kind = \"unavailable\"\nmode = \"refuse\"",
        ),
        rule(
            "throttled",
            "enabled = false",
            "upstreams = [\"other\"]",
            "kind = \"error\"\nstatus = 429",
        ),
    ]
    .concat();
    let proxy = TestProxy::start(&forward_config(&orders, &[echo_port], ""), &rules).await;
    let egress = proxy.addr("egress");

    // Latency before the `200`.
    let started = Instant::now();
    let (head, _) = connect(egress, &format!("127.0.0.1:{echo_port}")).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-faultline-rule: slow-tunnels"), "{head}");
    drop(target);

    switch(&proxy, "slow-tunnels", "disable").await;
    switch(&proxy, "refused", "enable").await;
    let (head, _) = connect(egress, "anywhere.example.test:443").await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(head.contains("x-faultline-rule: refused"), "{head}");
    assert!(
        !head.contains("x-faultline-error"),
        "an injected fault: {head}"
    );

    switch(&proxy, "refused", "disable").await;
    switch(&proxy, "throttled", "enable").await;
    let (head, _) = connect(egress, "anywhere.example.test:443").await;
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("x-faultline-rule: throttled"), "{head}");
}

async fn switch(proxy: &TestProxy, rule: &str, how: &str) {
    let path = format!("/api/rules/{rule}/{how}");
    let reply = proxy.admin("POST", &path, None).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
}

#[tokio::test]
async fn shutdown_ends_an_open_tunnel_after_the_grace_period() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds the connection, saying nothing.
    let held = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    });
    let orders = TestUpstream::start("orders").await;
    let config = forward_config(&orders, &[port], "").replace("\"5s\"", "\"300ms\"");
    let proxy = TestProxy::start(&config, "").await;
    let (head, mut tunnel) = connect(proxy.addr("egress"), &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    let started = Instant::now();
    tokio::time::timeout(LOOSE, proxy.shutdown())
        .await
        .expect("shutdown ends the tunnel");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the grace period is given"
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LOOSE, tunnel.read_to_end(&mut rest))
        .await
        .expect("the client's side is closed");
    held.abort();
}

#[tokio::test]
async fn a_forward_listener_stays_on_loopback_unless_allowed() {
    let orders = TestUpstream::start("orders").await;
    let config = forward_config(&orders, &[], "").replace(
        "listen = \"127.0.0.1:0\"\nmode",
        "listen = \"0.0.0.0:0\"\nmode",
    );
    let error = TestProxy::try_start(&config, "").await.err().unwrap();
    assert!(error.contains("listener[0].listen"), "{error}");
    assert!(error.contains("allow_remote = true"), "{error}");
    let allowed = config.replace(
        "mode = \"forward\"",
        "mode = \"forward\"\nallow_remote = true",
    );
    let proxy = TestProxy::start(&allowed, "").await;
    let reply = via_proxy(
        SocketAddr::from(([127, 0, 0, 1], proxy.addr("egress").port())),
        absolute_get(&format!("{}/x", orders.url())),
    )
    .await;
    assert_eq!(reply.status, 200);
}

/// curl, or `None` outside CI when it is not installed.
fn curl() -> Option<&'static str> {
    let path = "/usr/bin/curl";
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: install curl"
    );
    eprintln!("SKIPPED: {path} not installed (apt-get install curl)");
    None
}

/// Runs curl through the proxy; gives its stdout.
async fn curl_via(proxy: SocketAddr, args: &[&str]) -> String {
    let curl = curl().unwrap();
    let mut command = std::process::Command::new(curl);
    command
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--noproxy",
            "",
        ])
        .args(["--proxy", &format!("http://{proxy}")])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn curl_goes_through_the_forward_listener_for_http_and_https() {
    if curl().is_none() {
        return;
    }
    let ca = TestCa::new("forward test CA");
    let leaf = ca.leaf(&["localhost"]);
    let secure = TestUpstream::start_tls("secure", server_config(&leaf, None)).await;
    let orders = TestUpstream::start("orders").await;
    let port = secure.addr.port();
    let proxy = TestProxy::start(&forward_config(&orders, &[port], ""), "").await;
    let egress = proxy.addr("egress");
    let ca_file = ca.write(proxy.dir.path());

    let body = curl_via(
        egress,
        &["--data", "plain", &format!("{}/echo", orders.url())],
    )
    .await;
    assert_eq!(body, "plain");
    assert_eq!(orders.requests(), 1);

    let url = format!("https://localhost:{port}/echo");
    let ca_path = ca_file.to_str().unwrap();
    let body = curl_via(egress, &["--cacert", ca_path, "--data", "secret", &url]).await;
    assert_eq!(body, "secret");
    assert_eq!(secure.requests(), 1);
}
