//! HTTP/2 to upstreams, through real sockets: h2c by prior knowledge, h2
//! over TLS by ALPN, `auto` following the client or ALPN, version
//! translation both ways, and multiplexing over a bounded number of
//! connections.

#![allow(clippy::unwrap_used)]

mod support;

use http::{Request, StatusCode, Version};
use support::tls::*;
use support::*;

/// An `edge` listener in front of one upstream `orders` at `url`.
fn config(url: &str, upstream_extra: &str, proxy_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[proxy]\nshutdown_grace = \"1s\"\n{proxy_extra}\n\n\
         [[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"orders\"\nurl = \"{url}\"\n{upstream_extra}\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"orders\"\n"
    )
}

async fn post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    url: String,
    body: &'static str,
) -> Reply {
    send(client, Request::post(url).body(full(body)).unwrap()).await
}

#[tokio::test]
async fn an_http1_client_reaches_an_h2c_upstream() {
    let upstream = TestUpstream::start("orders").await;
    let proxy = TestProxy::start(&config(&upstream.url(), "protocol = \"h2c\"", ""), "").await;
    let reply = post(
        &client(),
        format!("{}/echo?x=1", proxy.url("edge")),
        "over h2c",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "over h2c");
    let seen = upstream.last_seen();
    assert_eq!(seen.version, Version::HTTP_2);
    // The Host the proxy would send becomes the :authority.
    assert_eq!(seen.uri, format!("http://{}/echo?x=1", upstream.addr));
    assert!(!seen.headers.contains_key("host"), "{:?}", seen.headers);
    assert!(seen.headers.contains_key("x-forwarded-for"));
}

#[tokio::test]
async fn auto_over_http_follows_the_clients_version() {
    let upstream = TestUpstream::start("orders").await;
    let proxy = TestProxy::start(&config(&upstream.url(), "", ""), "").await;
    post(&h2_client(), format!("{}/a", proxy.url("edge")), "h2c").await;
    assert_eq!(upstream.last_seen().version, Version::HTTP_2);
    post(&client(), format!("{}/b", proxy.url("edge")), "http1").await;
    assert_eq!(upstream.last_seen().version, Version::HTTP_11);

    // protocol = "http1": an h2c client's requests go as HTTP/1.1.
    let proxy = TestProxy::start(&config(&upstream.url(), "protocol = \"http1\"", ""), "").await;
    let reply = post(
        &h2_client(),
        format!("{}/c", proxy.url("edge")),
        "translated",
    )
    .await;
    assert_eq!(reply.text(), "translated");
    assert_eq!(upstream.last_seen().version, Version::HTTP_11);
}

#[tokio::test]
async fn host_preserve_becomes_the_authority() {
    let upstream = TestUpstream::start("orders").await;
    let extra = "protocol = \"h2c\"\nhost = \"preserve\"";
    let proxy = TestProxy::start(&config(&upstream.url(), extra, ""), "").await;
    let request = Request::get(format!("{}/signed", proxy.url("edge")))
        .header("host", "orders.us-east-1.example:8443")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), request).await.status, StatusCode::OK);
    assert_eq!(
        upstream.last_seen().uri,
        "http://orders.us-east-1.example:8443/signed"
    );
}

/// A TLS upstream for `orders.internal`, offering `alpn`, and the config
/// lines that trust it.
async fn tls_upstream(dir: &std::path::Path, alpn: &[&[u8]]) -> (TestUpstream, String) {
    let ca = TestCa::new("internal CA");
    let leaf = ca.leaf(&["orders.internal"]);
    let mut config = (*server_config(&leaf, None)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let upstream = TestUpstream::start_tls("orders", std::sync::Arc::new(config)).await;
    let ca_file = ca.write(dir);
    let tls = format!(
        "tls = {{ ca = \"{}\", server_name = \"orders.internal\" }}",
        ca_file.display()
    );
    (upstream, tls)
}

#[tokio::test]
async fn auto_over_https_speaks_what_alpn_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (h2_upstream, tls) = tls_upstream(dir.path(), &[b"h2", b"http/1.1"]).await;
    let proxy = TestProxy::start(&config(&h2_upstream.url(), &tls, ""), "").await;
    for _ in 0..5 {
        let reply = post(&client(), format!("{}/x", proxy.url("edge")), "tls").await;
        assert_eq!(reply.text(), "tls");
    }
    assert_eq!(h2_upstream.last_seen().version, Version::HTTP_2);
    assert_eq!(
        h2_upstream.connections(),
        1,
        "one connection carries every stream"
    );

    let (h1_upstream, tls) = tls_upstream(dir.path(), &[b"http/1.1"]).await;
    let proxy = TestProxy::start(&config(&h1_upstream.url(), &tls, ""), "").await;
    for _ in 0..5 {
        let reply = post(&h2_client(), format!("{}/y", proxy.url("edge")), "tls").await;
        assert_eq!(reply.text(), "tls");
    }
    assert_eq!(h1_upstream.last_seen().version, Version::HTTP_11);
    assert_eq!(h1_upstream.requests(), 5);

    // protocol = "h2" with an upstream that will not: a 502, said why.
    let strict = format!("{tls}\nprotocol = \"h2\"");
    let proxy = TestProxy::start(&config(&h1_upstream.url(), &strict, ""), "").await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_tls"));
    assert_eq!(h1_upstream.requests(), 5);
}

#[tokio::test]
async fn concurrent_requests_share_at_most_h2_connections() {
    let upstream = TestUpstream::start("orders").await;
    let proxy = TestProxy::start(
        &config(&upstream.url(), "protocol = \"h2c\"", "h2_connections = 2"),
        "",
    )
    .await;
    let client = client();
    let calls = (0..100).map(|i| {
        let client = client.clone();
        let url = format!("{}/sleep/50?call={i}", proxy.url("edge"));
        tokio::spawn(async move { send(&client, Request::get(url).body(empty()).unwrap()).await })
    });
    for call in calls {
        assert_eq!(call.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(upstream.requests(), 100);
    assert!(
        upstream.connections() <= 2,
        "{} connections for 100 concurrent requests",
        upstream.connections()
    );
}

#[tokio::test]
async fn a_closed_h2_connection_is_replaced() {
    let upstream = TestUpstream::start("orders").await;
    let proxy = TestProxy::start(&config(&upstream.url(), "protocol = \"h2c\"", ""), "").await;
    assert_eq!(get(&proxy.url("edge")).await.status, StatusCode::OK);
    // The upstream goes away and comes back on the same port: the old
    // connection is dead, and the next request opens a new one.
    let addr = upstream.addr;
    drop(upstream);
    let upstream = TestUpstream::start_at("orders", addr).await;
    wait_until("a request through a fresh connection", async || {
        get(&proxy.url("edge")).await.status == StatusCode::OK
    })
    .await;
    assert!(upstream.requests() >= 1);
}

#[test]
fn h2_and_h2c_are_checked_against_the_scheme() {
    let error = |url: &str, protocol: &str| {
        faultline::config::Config::parse(
            &config(url, &format!("protocol = \"{protocol}\""), ""),
            std::path::Path::new("/"),
        )
        .unwrap_err()
        .to_string()
    };
    assert!(error("http://127.0.0.1:1", "h2").contains("needs an https:// url"));
    assert!(error("https://127.0.0.1:1", "h2c").contains("needs an http:// url"));
    assert!(error("http://127.0.0.1:1", "h3").contains("unknown variant `h3`"));
}

/// An upstream that speaks HTTP/1.1 only (as nginx does without `http2`):
/// it answers with the version it saw. Gives its address.
async fn http1_only_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", request.version());
                        Ok::<_, std::convert::Infallible>(http::Response::new(full(version)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn auto_falls_back_to_http1_for_an_upstream_without_h2c() {
    let addr = http1_only_upstream().await;
    let proxy = TestProxy::start(&config(&format!("http://{addr}"), "", ""), "").await;
    for _ in 0..3 {
        let reply = send(
            &h2_client(),
            Request::get(format!("{}/v", proxy.url("edge")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.text(), "HTTP/1.1");
    }
}

/// An HTTP/1.1 upgrade (here `curl --http2`'s `Upgrade: h2c`) cannot ride
/// HTTP/2: the upstream gets the request without it and answers it, where
/// h2 would refuse the headers and the client would see a 502.
#[tokio::test]
async fn an_upgrade_request_reaches_an_h2c_upstream_as_a_plain_one() {
    let upstream = TestUpstream::start("orders").await;
    let proxy = TestProxy::start(&config(&upstream.url(), "protocol = \"h2c\"", ""), "").await;
    let request = Request::get(format!("{}/plain", proxy.url("edge")))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(empty())
        .unwrap();
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.headers);
    assert_eq!(reply.header("x-upstream"), Some("orders"));
    let seen = upstream.last_seen();
    assert_eq!(seen.version, Version::HTTP_2);
    assert!(!seen.headers.contains_key("upgrade"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("http2-settings"));
}

/// An h2c upstream taking one stream at a time; it holds a request for
/// `/hold` until told, and answers the others at once. Counts the requests
/// that reached it.
async fn one_stream_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::mpsc::UnboundedSender<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reached = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    let (release, mut released) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::Builder::new()
            .max_concurrent_streams(1)
            .handshake::<_, bytes::Bytes>(socket)
            .await
            .unwrap();
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            if request.uri().path() == "/hold" {
                let _ = released.recv().await;
            }
            let response = http::Response::builder().status(200).body(()).unwrap();
            let _ = respond.send_response(response, true);
        }
    });
    (addr, reached, release)
}

/// Requests whose clients leave while they wait for a stream slot do not
/// reach the upstream later. Streams open one at a time per connection:
/// the one already handed to h2 (waiting to open) still goes out when a
/// slot frees, then is reset, as with hyper's client; the ones behind it
/// never leave. A handle per request handed them all to h2, which queued
/// every one and sent each once a slot freed.
#[tokio::test]
async fn requests_cancelled_while_waiting_for_a_stream_stay_off_the_upstream() {
    use std::sync::atomic::Ordering;
    const WAITING: usize = 4;
    let (addr, reached, release) = one_stream_upstream().await;
    let proxy = TestProxy::start(
        &config(&format!("http://{addr}"), "protocol = \"h2c\"", ""),
        "",
    )
    .await;
    let edge = proxy.url("edge");
    let get = |path: &str| {
        let url = format!("{edge}{path}");
        tokio::spawn(async move { send(&client(), Request::get(url).body(empty()).unwrap()).await })
    };
    let in_flight = async |n: f64| {
        let series = r#"faultline_inflight_requests{listener="edge"}"#;
        wait_until(&format!("{n} requests in flight"), async || {
            proxy.metric(series).await == Some(n)
        })
        .await;
    };
    // The first holds the upstream's one stream.
    let first = get("/hold");
    wait_until("the first request reached the upstream", async || {
        reached.load(Ordering::SeqCst) == 1
    })
    .await;
    // The others wait for a slot; their clients give up and leave.
    let waiting: Vec<_> = (0..WAITING)
        .map(|i| get(&format!("/waiting/{i}")))
        .collect();
    in_flight(1.0 + WAITING as f64).await;
    for client in waiting {
        client.abort();
    }
    in_flight(1.0).await;
    // The slot frees: the first is answered; then one more request.
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(get("/after").await.unwrap().status, StatusCode::OK);
    assert_eq!(
        reached.load(Ordering::SeqCst),
        3,
        "the first, the one stream handed to h2 while waiting, and the last"
    );
}
