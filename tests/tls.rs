//! TLS both ways, through real sockets: `https://` upstreams verified by a
//! test CA (and refused when the name is wrong), mutual TLS, TLS listeners
//! over h2 and HTTP/1.1, a certificate renewed on disk and picked up by a
//! reload, and clients that do not speak TLS to a TLS port.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use http::{Request, StatusCode};
use support::tls::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config with an `edge` listener (TLS when `listener_tls` is given) in
/// front of one upstream `orders` at `url` (with `upstream_extra` lines).
fn config(url: &str, upstream_extra: &str, listener_extra: &str, proxy_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nshutdown_grace = \"1s\"\n{proxy_extra}\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n{listener_extra}\n\n\
         [[upstream]]\nname = \"orders\"\nurl = \"{url}\"\n{upstream_extra}\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"orders\"\n"
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn an_https_upstream_is_verified_by_its_ca_and_pooled() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("internal CA");
    let leaf = ca.leaf(&["orders.internal"]);
    let upstream = TestUpstream::start_tls("orders", server_config(&leaf, None)).await;
    let ca_file = ca.write(dir.path());
    let tls = format!(
        "tls = {{ ca = \"{}\", server_name = \"orders.internal\" }}",
        path(&ca_file)
    );
    let proxy = TestProxy::start(&config(&upstream.url(), &tls, "", ""), "").await;

    for _ in 0..3 {
        let reply = get(&format!("{}/hello", proxy.url("edge"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.header("x-upstream"), Some("orders"));
    }
    assert_eq!(upstream.requests(), 3);
    assert_eq!(upstream.connections(), 1, "TLS connections are pooled");
    // The upstream offers h2 in ALPN, so `auto` speaks it; the Host the
    // proxy sends is the :authority.
    let seen = upstream.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri, format!("https://{}/hello", upstream.addr));
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_502_upstream_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("internal CA");
    let leaf = ca.leaf(&["orders.internal"]);
    let upstream = TestUpstream::start_tls("orders", server_config(&leaf, None)).await;
    let ca_file = ca.write(dir.path());
    let tls = format!(
        "tls = {{ ca = \"{}\", server_name = \"payments.internal\" }}",
        path(&ca_file)
    );
    let proxy = TestProxy::start(&config(&upstream.url(), &tls, "", ""), "").await;

    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_tls"));
    assert!(reply.header("x-faultline-rule").is_none());
    assert_eq!(upstream.requests(), 0);
    let series = "faultline_upstream_errors_total{reason=\"tls\",upstream=\"orders\"}";
    assert_eq!(proxy.metric(series).await, Some(1.0));

    // Without the CA, the system's roots do not know the test CA either.
    let proxy = TestProxy::start(&config(&upstream.url(), "", "", ""), "").await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_tls"));
}

#[tokio::test]
async fn verify_false_takes_any_certificate() {
    let ca = TestCa::new("unknown CA");
    let leaf = ca.leaf(&["whatever.internal"]);
    let upstream = TestUpstream::start_tls("orders", server_config(&leaf, None)).await;
    let tls = "tls = { verify = false }";
    let proxy = TestProxy::start(&config(&upstream.url(), tls, "", ""), "").await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn mutual_tls_gives_the_upstream_its_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("internal CA");
    let clients = TestCa::new("client CA");
    let leaf = ca.leaf(&["orders.internal"]);
    let (client_cert, client_key) = clients
        .leaf(&["faultline.test"])
        .write(dir.path(), "client");
    let upstream = TestUpstream::start_tls("orders", server_config(&leaf, Some(&clients))).await;
    let ca_file = ca.write(dir.path());

    let with = format!(
        "tls = {{ ca = \"{}\", server_name = \"orders.internal\", client_cert = \"{}\", client_key = \"{}\" }}",
        path(&ca_file),
        path(&client_cert),
        path(&client_key)
    );
    let proxy = TestProxy::start(&config(&upstream.url(), &with, "", ""), "").await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.requests(), 1);

    // Without one, the upstream ends the handshake: a 502, never forwarded.
    let without = format!(
        "tls = {{ ca = \"{}\", server_name = \"orders.internal\" }}",
        path(&ca_file)
    );
    let proxy = TestProxy::start(&config(&upstream.url(), &without, "", ""), "").await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply
            .header("x-faultline-error")
            .is_some_and(|code| code.starts_with("upstream_")),
        "{:?}",
        reply.headers
    );
    assert_eq!(upstream.requests(), 1);
}

/// A TLS `edge` listener serving a leaf for `edge.test` from `ca`, in front
/// of a plain upstream.
async fn tls_listener(dir: &Path, ca: &TestCa, proxy_extra: &str) -> (TestProxy, TestUpstream) {
    let upstream = TestUpstream::start("orders").await;
    let (cert, key) = ca.leaf(&["edge.test"]).write(dir, "edge");
    let listener = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        path(&cert),
        path(&key)
    );
    let proxy = TestProxy::start(&config(&upstream.url(), "", &listener, proxy_extra), "").await;
    (proxy, upstream)
}

#[tokio::test]
async fn a_tls_listener_serves_h2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge CA");
    let (proxy, upstream) = tls_listener(dir.path(), &ca, "").await;
    let addr = proxy.addr("edge");

    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let request = Request::post(format!("https://edge.test:{}/orders", addr.port()))
            .version(version)
            .header("host", format!("edge.test:{}", addr.port()))
            .body(full("an order"))
            .unwrap();
        let request = if version == http::Version::HTTP_2 {
            // h2 carries the host as :authority.
            let (mut parts, body) = request.into_parts();
            parts.headers.remove("host");
            Request::from_parts(parts, body)
        } else {
            let (mut parts, body) = request.into_parts();
            parts.uri = "/orders".parse().unwrap();
            Request::from_parts(parts, body)
        };
        let sent = tls_send(addr, "edge.test", client_config(&ca, &[alpn]), request)
            .await
            .unwrap();
        assert_eq!(sent.alpn.as_deref(), Some(alpn));
        assert_eq!(sent.reply.status, StatusCode::OK);
        assert_eq!(sent.reply.text(), "an order");
        assert_eq!(
            upstream.last_seen().headers["x-forwarded-host"],
            format!("edge.test:{}", addr.port())
        );
    }
    assert_eq!(upstream.requests(), 2);
}

fn get_request() -> Request<TestBody> {
    Request::get("/")
        .header("host", "edge.test")
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge CA");
    let (proxy, _upstream) = tls_listener(dir.path(), &ca, "").await;
    let addr = proxy.addr("edge");
    // A fresh client config each time: a resumed session would show the
    // certificate of the session it resumes.
    let client = || client_config(&ca, &[b"http/1.1"]);
    let first = tls_send(addr, "edge.test", client(), get_request())
        .await
        .unwrap();

    let renewed = ca.leaf(&["edge.test"]);
    renewed.write(dir.path(), "edge");
    let reload = proxy.admin("POST", "/api/reload", None).await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
    let second = tls_send(addr, "edge.test", client(), get_request())
        .await
        .unwrap();
    assert_ne!(second.peer_certificate, first.peer_certificate);
    assert_eq!(second.peer_certificate, renewed.cert_der);

    // A key that does not match: the reload is refused, naming the file,
    // and the renewed certificate goes on serving.
    let other = ca.leaf(&["edge.test"]);
    std::fs::write(dir.path().join("edge-key.pem"), &other.key_pem).unwrap();
    let reload = proxy.admin("POST", "/api/reload", None).await;
    assert_eq!(reload.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reload.text().contains("does not match"),
        "{}",
        reload.text()
    );
    let third = tls_send(addr, "edge.test", client(), get_request())
        .await
        .unwrap();
    assert_eq!(third.peer_certificate, renewed.cert_der);
}

#[tokio::test]
async fn plain_http_to_a_tls_port_is_told_so_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge CA");
    let (proxy, upstream) = tls_listener(dir.path(), &ca, "").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr("edge"))
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: edge.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("x-faultline-error: tls_required"),
        "{answer}"
    );
    assert!(answer.ends_with("use https:// to reach it\"}"), "{answer}");
    let series = "faultline_tls_handshake_errors_total{listener=\"edge\",reason=\"not_tls\"}";
    assert_eq!(proxy.metric(series).await, Some(1.0));
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn a_client_that_never_shakes_hands_is_closed_within_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge CA");
    let (proxy, _upstream) = tls_listener(dir.path(), &ca, "header_timeout = \"300ms\"").await;
    let mut silent = tokio::net::TcpStream::connect(proxy.addr("edge"))
        .await
        .unwrap();
    // A client that starts a TLS record and stops.
    let mut trickle = tokio::net::TcpStream::connect(proxy.addr("edge"))
        .await
        .unwrap();
    trickle.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    for stream in [&mut silent, &mut trickle] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the proxy closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let series = "faultline_tls_handshake_errors_total{listener=\"edge\",reason=\"timeout\"}";
    wait_until("both timeouts counted", async || {
        proxy.metric(series).await == Some(2.0)
    })
    .await;
}

#[test]
fn check_reports_bad_certificates_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge CA");
    // Named relative to the config's folder: edge.pem with another key.
    ca.leaf(&["edge.test"]).write(dir.path(), "edge");
    ca.leaf(&["edge.test"]).write(dir.path(), "other");
    let expired = ca.leaf_with(&["old.test"], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (expired_cert, expired_key) = expired.write(dir.path(), "expired");
    let text = format!(
        "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"edge.pem\", key = \"other-key.pem\" }}\n\n\
         [[listener]]\nname = \"old\"\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
         [[upstream]]\nname = \"orders\"\nurl = \"https://127.0.0.1:9\"\ntls = {{ ca = \"missing-ca.pem\" }}\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"orders\"\n\n[[route]]\nlistener = \"old\"\nupstream = \"orders\"\n",
        path(&expired_cert),
        path(&expired_key)
    );
    std::fs::write(dir.path().join("faultline.toml"), text).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faultline"))
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0]
            .starts_with("faultline.toml:4:1: error: listener[0].tls: listener \"edge\": tls.key ")
            && lines[0].contains("other-key.pem\" does not match the certificate in tls.cert"),
        "{stdout}"
    );
    assert!(
        lines[1]
            .starts_with("faultline.toml:9:1: error: listener[1].tls: listener \"old\": tls.cert ")
            && lines[1].contains("the certificate expired on 2021-01-01"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(
            "faultline.toml:14:1: error: upstream[0].tls: upstream \"orders\": cannot read tls.ca "
        ) && lines[2].contains("missing-ca.pem"),
        "{stdout}"
    );
    assert_eq!(lines[3], "3 problems found");
}

#[tokio::test]
async fn a_dedicated_port_serves_tls_with_listen_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge CA");
    let upstream = TestUpstream::start("orders").await;
    let (cert, key) = ca.leaf(&["orders.test"]).write(dir.path(), "orders");
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[upstream]]\nname = \"orders\"\nurl = \"{}\"\n\
         listen = \"127.0.0.1:0\"\nlisten_tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        upstream.url(),
        path(&cert),
        path(&key)
    );
    let proxy = TestProxy::start(&text, "").await;
    let addr = proxy.running().upstream_addr("orders").unwrap();
    let request = Request::get("/dedicated")
        .header("host", "orders.test")
        .body(empty())
        .unwrap();
    let sent = tls_send(
        addr,
        "orders.test",
        client_config(&ca, &[b"http/1.1"]),
        request,
    )
    .await
    .unwrap();
    assert_eq!(sent.reply.status, StatusCode::OK);
    assert_eq!(upstream.last_seen().uri, "/dedicated");

    // A listen_tls without a dedicated port is a mistake, said as such.
    let error = TestProxy::try_start(
        &format!(
            "[[upstream]]\nname = \"orders\"\nurl = \"{}\"\nlisten_tls = {{ cert = \"a\", key = \"b\" }}\n\n\
             [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nlistener = \"edge\"\nupstream = \"orders\"\n",
            upstream.url()
        ),
        "",
    )
    .await
    .err()
    .unwrap();
    assert!(
        error.contains("listen_tls needs a dedicated port"),
        "{error}"
    );
}
