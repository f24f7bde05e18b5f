//! The same requests straight to the upstream and through a proxy with no
//! rules must come back the same.

#![allow(clippy::unwrap_used)]

mod support;

use http::{Method, Request};
use support::*;

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "plain get",
        method: Method::GET,
        path: "/hello",
        headers: &[],
        body: "",
    },
    Case {
        name: "query string",
        method: Method::GET,
        path: "/search?q=a%20b&x=1&x=2",
        headers: &[],
        body: "",
    },
    Case {
        name: "post with body",
        method: Method::POST,
        path: "/orders",
        headers: &[("content-type", "application/json")],
        body: "{\"id\":42}",
    },
    Case {
        name: "put",
        method: Method::PUT,
        path: "/orders/42",
        headers: &[],
        body: "replace",
    },
    Case {
        name: "delete",
        method: Method::DELETE,
        path: "/orders/42",
        headers: &[],
        body: "",
    },
    Case {
        name: "patch",
        method: Method::PATCH,
        path: "/orders/42",
        headers: &[],
        body: "patch",
    },
    Case {
        name: "head",
        method: Method::HEAD,
        path: "/hello",
        headers: &[],
        body: "",
    },
    Case {
        name: "options",
        method: Method::OPTIONS,
        path: "/",
        headers: &[],
        body: "",
    },
    Case {
        name: "custom headers",
        method: Method::GET,
        path: "/h",
        headers: &[("x-tenant", "blue"), ("accept", "text/plain")],
        body: "",
    },
    Case {
        name: "upstream status",
        method: Method::GET,
        path: "/status/418",
        headers: &[],
        body: "",
    },
    Case {
        name: "server error passes through",
        method: Method::GET,
        path: "/status/503",
        headers: &[],
        body: "",
    },
    Case {
        name: "large body",
        method: Method::GET,
        path: "/bytes/3000000",
        headers: &[],
        body: "",
    },
    Case {
        name: "chunked body",
        method: Method::GET,
        path: "/chunked/200000",
        headers: &[],
        body: "",
    },
    Case {
        name: "empty body",
        method: Method::GET,
        path: "/bytes/0",
        headers: &[],
        body: "",
    },
];

/// Headers that legitimately differ between two exchanges.
const VARYING: &[&str] = &["date"];

async fn exchange(base: &str, case: &Case, h2: bool) -> Reply {
    let mut builder = Request::builder()
        .method(case.method.clone())
        .uri(format!("{base}{}", case.path));
    for (name, value) in case.headers {
        builder = builder.header(*name, *value);
    }
    let client = if h2 { h2_client() } else { client() };
    send(&client, builder.body(full(case.body)).unwrap()).await
}

#[tokio::test]
async fn responses_through_the_proxy_match_direct_ones() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    for case in CASES {
        let direct = exchange(&upstream.url(), case, false).await;
        let proxied = exchange(&proxy.url("edge"), case, false).await;
        assert_eq!(direct.status, proxied.status, "{}: status", case.name);
        assert_eq!(direct.body, proxied.body, "{}: body", case.name);
        assert_eq!(
            sorted_headers(&direct),
            sorted_headers(&proxied),
            "{}: headers",
            case.name
        );
    }
}

#[tokio::test]
async fn h2c_clients_are_served_and_forwarded_as_h2c() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    for case in CASES.iter().filter(|c| c.method != Method::HEAD) {
        let direct = exchange(&upstream.url(), case, false).await;
        let proxied = exchange(&proxy.url("edge"), case, true).await;
        assert_eq!(direct.status, proxied.status, "{}: status", case.name);
        assert_eq!(direct.body, proxied.body, "{}: body", case.name);
    }
    // protocol = "auto" over http:// follows the client (tests/http2.rs
    // has protocol = "http1").
    assert_eq!(upstream.last_seen().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn the_upstream_sees_forwarding_headers_and_its_own_host() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let request = Request::get(format!("{}/who?x=1", proxy.url("edge")))
        .header("host", "orders.example:8080")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-forwarded-for", "10.4.5.6")
        .body(empty())
        .unwrap();
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, 200);
    let seen = upstream.last_seen();
    assert_eq!(seen.uri, "/who?x=1");
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "10.1.2.3, 10.4.5.6, 127.0.0.1"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "orders.example:8080");
    for hop in ["x-hop", "proxy-authorization", "keep-alive"] {
        assert!(!seen.headers.contains_key(hop), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn faultline_headers_belong_to_faultline_alone() {
    let upstream = TestUpstream::start("orders-use1").await;
    let proxy = TestProxy::start(&edge_config(&[&upstream], ""), "").await;
    let request = Request::get(format!("{}/hello", proxy.url("edge")))
        .header("x-faultline-rule", "forged-by-client")
        .header("x-faultline-error", "forged-by-client")
        .body(empty())
        .unwrap();
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, 200);
    let seen = upstream.last_seen();
    assert!(
        !seen
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("x-faultline-")),
        "a client's x-faultline-* headers reached the upstream: {:?}",
        seen.headers
    );

    let reply = get(&format!("{}/forged-marks", proxy.url("edge"))).await;
    assert_eq!(reply.status, 504, "the upstream's own status comes back");
    assert_eq!(reply.header("x-faultline-error"), None);
    assert_eq!(reply.header("x-faultline-rule"), None);
    assert_eq!(reply.text(), "the upstream's own 504");
}

/// HTTPS rows: the same cases straight to a TLS upstream and through a TLS
/// listener in front of it (`https://` upstream, verified by a test CA).
#[tokio::test]
async fn https_responses_through_the_proxy_match_direct_ones() {
    use support::tls::*;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("transparency CA");
    let upstream_leaf = ca.leaf(&["orders.internal"]);
    let upstream =
        TestUpstream::start_tls("orders-use1", server_config(&upstream_leaf, None)).await;
    let (cert, key) = ca.leaf(&["edge.test"]).write(dir.path(), "edge");
    let ca_file = ca.write(dir.path());
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\n[[upstream]]\nname = \"orders-use1\"\nurl = \"{}\"\n\
         tls = {{ ca = \"{}\", server_name = \"orders.internal\" }}\n\n[[route]]\nlistener = \"edge\"\nupstream = \"orders-use1\"\n",
        cert.display(),
        key.display(),
        upstream.url(),
        ca_file.display()
    );
    let proxy = TestProxy::start(&config, "").await;
    let over_tls = async |addr, name: &str, case: &Case| {
        let mut builder = Request::builder()
            .method(case.method.clone())
            .uri(case.path)
            .header("host", name);
        for (header, value) in case.headers {
            builder = builder.header(*header, *value);
        }
        let request = builder.body(full(case.body)).unwrap();
        tls_send(addr, name, client_config(&ca, &[b"http/1.1"]), request)
            .await
            .unwrap()
            .reply
    };
    for case in CASES {
        let direct = over_tls(upstream.addr, "orders.internal", case).await;
        let proxied = over_tls(proxy.addr("edge"), "edge.test", case).await;
        assert_eq!(direct.status, proxied.status, "https {}: status", case.name);
        assert_eq!(direct.body, proxied.body, "https {}: body", case.name);
        assert_eq!(
            sorted_headers(&direct),
            sorted_headers(&proxied),
            "https {}: headers",
            case.name
        );
    }
}

fn sorted_headers(reply: &Reply) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = reply
        .headers
        .iter()
        .filter(|(name, _)| !VARYING.contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    headers.sort();
    headers
}
