//! gRPC fixtures: hand-written prost messages (no protoc, no build.rs) and
//! a tonic client that calls any method by path over h2c.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Channel, Endpoint};

/// The request of every test method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The reply of every test method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

pub type Codec = tonic_prost::ProstCodec<EchoRequest, EchoReply>;

/// A tonic client on one h2c connection to `url` (`http://ADDR`); its
/// clones share the connection.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcClient {
    pub async fn connect(url: &str) -> GrpcClient {
        let channel = Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// A tonic client on one TLS connection to `url` (`https://NAME:PORT`,
    /// NAME resolved to `addr`), trusting `ca`'s certificates, offering h2
    /// alone in ALPN (as gRPC clients do).
    pub async fn connect_tls(
        url: &str,
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> GrpcClient {
        let channel = Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect_with_connector(TlsConnector { addr, tls })
            .await
            .unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// A unary call of `path` (`/package.Service/Method`).
    pub async fn unary(
        &mut self,
        path: &'static str,
        message: &str,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        self.unary_request(path, tonic::Request::new(request(message)))
            .await
    }

    /// A unary call with a request of the caller's (metadata, timeout).
    pub async fn unary_request(
        &mut self,
        path: &'static str,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        self.grpc.ready().await.unwrap();
        self.grpc
            .unary(request, PathAndQuery::from_static(path), Codec::default())
            .await
    }

    /// The underlying client, for the streaming call kinds.
    pub fn inner(&mut self) -> &mut tonic::client::Grpc<Channel> {
        &mut self.grpc
    }
}

/// tonic's connector for [`GrpcClient::connect_tls`]: TCP to `addr`, then
/// TLS for the URI's host, with the ALPN `tls` offers.
#[derive(Clone)]
struct TlsConnector {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let name = rustls::pki_types::ServerName::try_from(uri.host().unwrap().to_owned())
                .map_err(std::io::Error::other)?;
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            assert_eq!(
                stream.get_ref().1.alpn_protocol(),
                Some(&b"h2"[..]),
                "the server did not agree to h2"
            );
            Ok(TokioIo::new(stream))
        })
    }
}

pub fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
    }
}

/// One metadata value of a failed call, as text.
pub fn metadata<'a>(status: &'a tonic::Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------
// The gRPC test upstream.

/// A gRPC service `test.Echo` on loopback, h2c, served by tonic's own
/// server side (`tonic::server::Grpc`) under hyper:
/// - `Unary`: the message back; request metadata `x-custom` comes back as
///   response metadata `x-custom-echo`;
/// - `Fail`: fails trailers-only with FAILED_PRECONDITION and metadata
///   `x-detail: kept`;
/// - `Stream` (server streaming): `count:N` gives N replies `0`…; `fail:N`
///   the same, then fails in the trailers with ABORTED and `x-detail:
///   trailer`; `bytes:N` N bytes in replies of 64 KiB;
/// - `Collect` (client streaming): the messages joined with `,`;
/// - `Chat` (bidirectional): `echo:` and each message, as it comes;
/// - `Hold`: answers its message once [`GrpcUpstream::release`] is called;
/// - `Slow`: answers after the message's milliseconds, or fails with
///   DEADLINE_EXCEEDED at half the call's `grpc-timeout` if that comes
///   first (before the client's own timer, so the answer is the upstream's).
pub struct GrpcUpstream {
    pub addr: std::net::SocketAddr,
    calls: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    go_away: tokio::sync::watch::Sender<u64>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A connection's socket, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

impl GrpcUpstream {
    pub async fn start() -> GrpcUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        GrpcUpstream::serve(listener, None)
    }

    /// Serves over TLS with `config` (its ALPN decides h2 or not).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> GrpcUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        GrpcUpstream::serve(listener, Some(tokio_rustls::TlsAcceptor::from(config)))
    }

    fn serve(
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> GrpcUpstream {
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (go_away, _) = tokio::sync::watch::channel(0u64);
        let (release, _) = tokio::sync::watch::channel(false);
        let (c, n, s) = (calls.clone(), connections.clone(), seen.clone());
        let (g, r) = (go_away.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let (c, s, tls) = (c.clone(), s.clone(), tls.clone());
                // Only the connections open at a go_away() are told to go.
                let mut go_away = g.subscribe();
                let release = r.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        c.fetch_add(1, Ordering::SeqCst);
                        s.lock()
                            .unwrap()
                            .push(http::HeaderMap::clone(http::Request::headers(&request)));
                        echo(request, release.clone())
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .http2_only();
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    let connection = builder.serve_connection(TokioIo::new(io), service);
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        _ = connection.as_mut() => return,
                        _ = go_away.changed() => {}
                    }
                    // GOAWAY: streams already started finish, no new ones.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                });
            }
        });
        GrpcUpstream {
            addr,
            calls,
            connections,
            seen,
            go_away,
            release,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts every open connection down gracefully, as a server does when
    /// it stops or rotates its connections: GOAWAY, the streams already
    /// started finish, the connection closes after them. The listener goes
    /// on accepting new connections.
    pub fn go_away(&self) {
        self.go_away.send_modify(|generation| *generation += 1);
    }

    /// Lets every `Hold` call, held or to come, answer.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// Calls that reached the upstream.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Connections the upstream accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The request headers of the last call.
    pub fn last_seen(&self) -> http::HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no call seen")
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server side's codec: replies out, requests in.
type ServerCodec = tonic_prost::ProstCodec<EchoReply, EchoRequest>;

fn reply(message: impl Into<String>) -> EchoReply {
    EchoReply {
        message: message.into(),
    }
}

fn detail(code: tonic::Code, message: &str, detail: &'static str) -> tonic::Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "x-detail",
        tonic::metadata::MetadataValue::from_static(detail),
    );
    tonic::Status::with_metadata(code, message, metadata)
}

type ReplyStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

async fn echo(
    request: http::Request<hyper::body::Incoming>,
    release: tokio::sync::watch::Receiver<bool>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(ServerCodec::default());
    let path = request.uri().path().to_owned();
    let response = match path.as_str() {
        "/test.Echo/Unary" => {
            let service = Handler(|request: tonic::Request<EchoRequest>| async move {
                let custom = request.metadata().get("x-custom").cloned();
                let mut response = tonic::Response::new(reply(request.into_inner().message));
                if let Some(custom) = custom {
                    response.metadata_mut().insert("x-custom-echo", custom);
                }
                Ok(response)
            });
            grpc.unary(service, request).await
        }
        "/test.Echo/Hold" => {
            let service = Handler(move |request: tonic::Request<EchoRequest>| {
                let mut release = release.clone();
                async move {
                    let _ = release.wait_for(|released| *released).await;
                    Ok(tonic::Response::new(reply(request.into_inner().message)))
                }
            });
            grpc.unary(service, request).await
        }
        "/test.Echo/Fail" => {
            let service = Handler(|_: tonic::Request<EchoRequest>| async move {
                Err::<tonic::Response<EchoReply>, _>(detail(
                    tonic::Code::FailedPrecondition,
                    "the upstream's own failure",
                    "kept",
                ))
            });
            grpc.unary(service, request).await
        }
        "/test.Echo/Slow" => {
            let service = Handler(|request: tonic::Request<EchoRequest>| async move {
                let timeout = request
                    .metadata()
                    .get("grpc-timeout")
                    .and_then(|t| parse_grpc_timeout(t.to_str().ok()?));
                let ms: u64 = request.into_inner().message.parse().unwrap_or(0);
                // Half the deadline: the upstream's answer, not the
                // client's own timer, ends the call.
                let deadline = timeout.map_or(Duration::from_secs(3600), |t| t / 2);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(tonic::Response::new(reply("slept"))),
                    () = tokio::time::sleep(deadline) => Err(tonic::Status::deadline_exceeded("deadline passed at the upstream")),
                }
            });
            grpc.unary(service, request).await
        }
        "/test.Echo/Stream" => {
            let service = Handler(|request: tonic::Request<EchoRequest>| async move {
                let message = request.into_inner().message;
                let (kind, n) = message.split_once(':').unwrap_or(("count", "0"));
                let n: u64 = n.parse().unwrap_or(0);
                let stream: ReplyStream = match kind {
                    "bytes" => {
                        let chunk = "x".repeat(64 * 1024);
                        let mut left = n as usize;
                        Box::pin(tokio_stream::iter(std::iter::from_fn(move || {
                            let take = left.min(chunk.len());
                            left -= take;
                            (take > 0).then(|| Ok(reply(&chunk[..take])))
                        })))
                    }
                    "fail" => Box::pin(tokio_stream::iter(
                        (0..n)
                            .map(|i| Ok(reply(i.to_string())))
                            .chain(std::iter::once(Err(detail(
                                tonic::Code::Aborted,
                                "stream ended by the upstream",
                                "trailer",
                            )))),
                    )),
                    _ => Box::pin(tokio_stream::iter((0..n).map(|i| Ok(reply(i.to_string()))))),
                };
                Ok(tonic::Response::new(stream))
            });
            grpc.server_streaming(service, request).await
        }
        "/test.Echo/Collect" => {
            let service = Handler(
                |request: tonic::Request<tonic::Streaming<EchoRequest>>| async move {
                    let mut stream = request.into_inner();
                    let mut all = Vec::new();
                    while let Some(message) = stream.message().await? {
                        all.push(message.message);
                    }
                    Ok(tonic::Response::new(reply(all.join(","))))
                },
            );
            grpc.client_streaming(service, request).await
        }
        "/test.Echo/Chat" => {
            let service = Handler(
                |request: tonic::Request<tonic::Streaming<EchoRequest>>| async move {
                    let stream = request.into_inner();
                    let replies: ReplyStream =
                        Box::pin(tokio_stream::StreamExt::map(stream, |message| {
                            message.map(|m| reply(format!("echo:{}", m.message)))
                        }));
                    Ok(tonic::Response::new(replies))
                },
            );
            grpc.streaming(service, request).await
        }
        _ => tonic::Status::unimplemented(format!("no method {path}")).into_http(),
    };
    Ok(response)
}

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A closure as the tower service tonic's server side calls.
struct Handler<F>(F);

impl<F, R, T, Fut> tower_service::Service<tonic::Request<R>> for Handler<F>
where
    F: FnMut(tonic::Request<R>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    type Response = tonic::Response<T>;
    type Error = tonic::Status;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<R>) -> Fut {
        (self.0)(request)
    }
}

// ---------------------------------------------------------------------------
// The standard health service (grpc.health.v1), as the demo serves it.

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// 1 is SERVING.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.Health/Check` at `url`, asking for `authority` (the
/// name a host route matches).
pub async fn health_check(
    url: &str,
    authority: &str,
) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
    let channel = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(HealthCheckRequest::default()),
        PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
        tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
    )
    .await
}
