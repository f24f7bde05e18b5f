//! Requests signed over their `Host` (the way AWS SigV4 signs) still verify
//! at the upstream with `host = "preserve"`, and do not with the default
//! `host = "upstream"`.

#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::{digest, hmac};
use support::*;
use tokio::net::TcpListener;

const KEY: &[u8] = b"test secret key";
/// The name the client signs for: not the upstream's address.
const SIGNED_HOST: &str = "dynamodb.us-east-1.amazonaws.com";

/// What SigV4 signs, reduced: method, host, path and query, the signed
/// header lines as sent, and the body's hash.
fn string_to_sign(method: &str, host: &str, path: &str, date: &str, body: &[u8]) -> String {
    let body_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
    format!("{method}\n{host}\n{path}\nx-amz-date:{date}\n{body_hash}")
}

fn sign(text: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, KEY);
    hex(hmac::sign(&key, text.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An upstream that recomputes the signature from what reached it: `200`
/// when it matches, `403` `SignatureDoesNotMatch` when it does not.
async fn verifying_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(verify);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn verify(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let expected = sign(&string_to_sign(
        parts.method.as_str(),
        &header("host"),
        path,
        &header("x-amz-date"),
        &body,
    ));
    let given = header("authorization");
    let (status, text) = if given.strip_prefix("FL-HMAC ") == Some(expected.as_str()) {
        (StatusCode::OK, format!("verified for {}", header("host")))
    } else {
        (
            StatusCode::FORBIDDEN,
            format!("SignatureDoesNotMatch (host {:?})", header("host")),
        )
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::from(text))
        .unwrap())
}

fn config(upstream: std::net::SocketAddr, host: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"ddb\"\nurl = \"http://{upstream}\"\nhost = \"{host}\"\n\n\
         [[route]]\nlistener = \"edge\"\nupstream = \"ddb\"\n"
    )
}

fn signed_request(proxy: &str) -> Request<TestBody> {
    let body = br#"{"TableName":"orders"}"#;
    let date = "20261129T091500Z";
    let path = "/?Action=GetItem&Version=2012-08-10";
    let signature = sign(&string_to_sign("POST", SIGNED_HOST, path, date, body));
    Request::post(format!("{proxy}{path}"))
        .header("host", SIGNED_HOST)
        .header("x-amz-date", date)
        .header("authorization", format!("FL-HMAC {signature}"))
        .body(full(&body[..]))
        .unwrap()
}

#[tokio::test]
async fn a_signed_request_verifies_through_preserve() {
    let upstream = verifying_upstream().await;
    // Straight to the upstream, as a baseline.
    let direct = send(&client(), signed_request(&format!("http://{upstream}"))).await;
    assert_eq!(direct.status, StatusCode::OK, "{}", direct.text());

    let proxy = TestProxy::start(&config(upstream, "preserve"), "").await;
    let through = send(&client(), signed_request(&proxy.url("edge"))).await;
    assert_eq!(through.status, StatusCode::OK, "{}", through.text());
    assert_eq!(through.text(), format!("verified for {SIGNED_HOST}"));
}

#[tokio::test]
async fn a_signed_request_breaks_when_the_host_is_rewritten() {
    let upstream = verifying_upstream().await;
    let proxy = TestProxy::start(&config(upstream, "upstream"), "").await;
    let through = send(&client(), signed_request(&proxy.url("edge"))).await;
    assert_eq!(through.status, StatusCode::FORBIDDEN);
    assert!(
        through.text().contains(&upstream.to_string()),
        "{}",
        through.text()
    );
}

#[tokio::test]
async fn an_unknown_host_mode_is_refused_at_its_line() {
    let upstream = verifying_upstream().await;
    let error = TestProxy::try_start(&config(upstream, "client"), "")
        .await
        .err()
        .unwrap();
    assert!(
        error.contains("unknown variant `client`, expected `upstream` or `preserve`"),
        "{error}"
    );
}
