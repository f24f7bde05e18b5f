//! Routing by host and path, dedicated upstream ports, and the errors the
//! proxy makes itself.

#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn routed_config(east: &TestUpstream, west: &TestUpstream) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "edge"
listen = "127.0.0.1:0"

[[upstream]]
name = "orders-use1"
url = "{east}"
labels = {{ region = "us-east-1" }}

[[upstream]]
name = "orders-usw2"
url = "{west}"
labels = {{ region = "us-west-2" }}
listen = "127.0.0.1:0"

[[route]]
listener = "edge"
host = "orders.us-east-1.*"
upstream = "orders-use1"

[[route]]
listener = "edge"
host = "orders.us-west-2.*"
upstream = "orders-usw2"

[[route]]
listener = "edge"
path_prefix = "/west"
upstream = "orders-usw2"
"#,
        east = east.url(),
        west = west.url()
    )
}

async fn via_host(proxy: &TestProxy, host: &str, path: &str) -> Reply {
    let request = Request::get(format!("{}{path}", proxy.url("edge")))
        .header("host", host)
        .body(empty())
        .unwrap();
    send(&client(), request).await
}

#[tokio::test]
async fn routes_by_host_glob_then_path_prefix_in_file_order() {
    let east = TestUpstream::start("orders-use1").await;
    let west = TestUpstream::start("orders-usw2").await;
    let proxy = TestProxy::start(&routed_config(&east, &west), "").await;

    let reply = via_host(&proxy, "orders.us-east-1.example.com:8080", "/x").await;
    assert_eq!(reply.header("x-upstream"), Some("orders-use1"));
    let reply = via_host(&proxy, "ORDERS.us-west-2.example", "/x").await;
    assert_eq!(reply.header("x-upstream"), Some("orders-usw2"));
    // The host route comes first, so it wins over the path.
    let reply = via_host(&proxy, "orders.us-east-1.example", "/west/1").await;
    assert_eq!(reply.header("x-upstream"), Some("orders-use1"));
    let reply = via_host(&proxy, "elsewhere", "/west/1").await;
    assert_eq!(reply.header("x-upstream"), Some("orders-usw2"));
    // Prefixes are whole segments.
    let reply = via_host(&proxy, "elsewhere", "/western").await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn no_route_is_a_marked_404_with_a_json_body() {
    let east = TestUpstream::start("orders-use1").await;
    let west = TestUpstream::start("orders-usw2").await;
    let proxy = TestProxy::start(&routed_config(&east, &west), "").await;
    let reply = via_host(&proxy, "unknown.example", "/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-faultline-error"), Some("no_route"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "no_route");
    assert_eq!(east.requests() + west.requests(), 0);
}

#[tokio::test]
async fn a_dedicated_port_sends_everything_to_its_upstream() {
    let east = TestUpstream::start("orders-use1").await;
    let west = TestUpstream::start("orders-usw2").await;
    let proxy = TestProxy::start(&routed_config(&east, &west), "").await;
    let addr = proxy.running().upstream_addr("orders-usw2").unwrap();
    let reply = get(&format!("http://{addr}/anything")).await;
    assert_eq!(reply.header("x-upstream"), Some("orders-usw2"));
}

#[tokio::test]
async fn a_refused_upstream_is_a_502_marked_upstream_connect() {
    let east = TestUpstream::start("orders-use1").await;
    let (closed, _kept) = refused_addr();
    let dead_url = format!("http://{closed}");
    let config = edge_config(&[&east], "").replace(&east.url(), &dead_url);
    let proxy = TestProxy::start(&config, "").await;
    let reply = get(&proxy.url("edge")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_connect"));
    assert_eq!(
        reply.header("x-faultline-rule"),
        None,
        "not an injected fault"
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "upstream_connect");
    assert!(
        body["message"].as_str().unwrap().contains("orders-use1"),
        "{body}"
    );
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_marked_upstream_timeout() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], "upstream_timeout = \"200ms\""), "").await;
    let reply = get(&format!("{}/sleep/3000", proxy.url("edge"))).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("x-faultline-error"), Some("upstream_timeout"));
    // A fast request still goes through.
    assert_eq!(
        get(&format!("{}/sleep/1", proxy.url("edge"))).await.status,
        200
    );
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let east = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&east], ""), "").await;
    let hostile: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n",
    ];
    for bytes in hostile {
        let mut stream = TcpStream::connect(proxy.addr("edge")).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} got {text:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(get(&proxy.url("edge")).await.status, 200);
    assert_eq!(east.requests(), 1);
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_start_error() {
    let east = TestUpstream::start("orders-use1").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = edge_config(&[&east], "").replace(
        "name = \"edge\"\nlisten = \"127.0.0.1:0\"",
        &format!("name = \"edge\"\nlisten = \"{addr}\""),
    );
    let error = TestProxy::try_start(&config, "")
        .await
        .err()
        .expect("must not start");
    assert!(
        error.starts_with(&format!("cannot listen on {addr} for listener \"edge\"")),
        "{error}"
    );
}
