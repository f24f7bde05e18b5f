//! An intercepted `CONNECT` (a host in the forward listener's `intercept`):
//! after the `200`, faultline makes the server side of the client's TLS
//! handshake with a leaf its CA signs for the name the client asks (SNI,
//! else the `CONNECT`'s host), then serves the decrypted connection (h2 or
//! HTTP/1.1, as ALPN agrees) with the same pipeline as every request: each
//! goes through the rules of the tunnel's destination, and on to the real
//! host (or `connect_to`) over verified TLS.
//!
//! The tunnel holds its client connection's registration, so shutdown
//! waits for it, and ends when that connection's control does: at the end
//! of the shutdown grace period, or at once for an abort (an injected
//! `abort` or blackhole on an HTTP/1.1 request inside it ends the client's
//! connection, as on any listener; on h2, its stream alone).

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_rustls::LazyConfigAcceptor;
use tracing::debug;

use super::{Connection, Intercepted, Proxy};
use crate::ca::Ca;

/// What an intercepted tunnel needs besides its connection.
pub(super) struct Tunnel {
    /// The destination's upstream (or `other`).
    pub(super) upstream: usize,
    /// The `CONNECT`'s target, port explicit.
    pub(super) authority: Authority,
    pub(super) ca: Arc<Ca>,
    /// How long the client may take over its TLS handshake.
    pub(super) handshake_timeout: Duration,
}

/// Serves the tunnel in a task of its own, once hyper has written the
/// `200` and handed the client's side over.
pub(super) fn spawn(client: OnUpgrade, conn: Arc<Connection>, tunnel: Tunnel) {
    tokio::spawn(async move {
        let peer = conn.info.peer;
        let control = Arc::clone(&conn.info.control);
        let ended = poll_fn(|cx| control.poll_ended(cx));
        tokio::select! {
            biased;
            ending = ended => debug!(%peer, ?ending, "intercepted tunnel ended by its connection's control"),
            served = serve(client, conn, tunnel) => if let Err(e) = served {
                debug!(%peer, error = %e, "intercepted tunnel ended");
            },
        }
    });
}

async fn serve(client: OnUpgrade, conn: Arc<Connection>, tunnel: Tunnel) -> Result<(), String> {
    let Tunnel {
        upstream,
        authority,
        ca,
        handshake_timeout,
    } = tunnel;
    let upgraded = client
        .await
        .map_err(|e| format!("the client left before its tunnel opened: {e}"))?;
    let shake = async {
        let acceptor = rustls::server::Acceptor::default();
        let start = LazyConfigAcceptor::new(acceptor, TokioIo::new(upgraded))
            .await
            .map_err(|e| format!("no TLS ClientHello: {e}"))?;
        // The name the client asks for; an IP target sends none.
        let name = start
            .client_hello()
            .server_name()
            .unwrap_or(authority.host())
            .to_owned();
        let config = ca.server_config(&name)?;
        start
            .into_stream(config)
            .await
            .map_err(|e| format!("TLS handshake with the client for {name:?} failed: {e}"))
    };
    let stream = tokio::time::timeout(handshake_timeout, shake)
        .await
        .map_err(|_| "no TLS handshake within header_timeout".to_owned())??;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let host = match authority.port_u16() {
        Some(443) | None => HeaderValue::from_str(authority.host()),
        Some(_) => HeaderValue::from_str(authority.as_str()),
    }
    .map_err(|_| "the CONNECT's host is not a header value".to_owned())?;
    let region = conn
        .proxy
        .names_region_by_host(upstream)
        .then(|| crate::aws::host_region(authority.host()));
    let inner = Arc::new(Connection {
        proxy: Arc::clone(&conn.proxy),
        entry: conn.entry,
        client_ip: conn.client_ip.clone(),
        info: conn.info.clone(),
        intercepted: Some(Intercepted {
            upstream,
            authority,
            host,
            region,
        }),
    });
    let service =
        hyper::service::service_fn(move |request| Proxy::handle(Arc::clone(&inner), request));
    let io = TokioIo::new(stream);
    let served = if h2 {
        let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        let connection = pin!(builder.serve_connection(io, service));
        connection.await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new());
        let connection = pin!(builder.serve_connection(io, service).with_upgrades());
        connection.await
    };
    served.map_err(|e| format!("the decrypted connection ended with an error: {e}"))
}
