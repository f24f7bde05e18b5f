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

/// A tonic client on one h2c connection to `url` (`http://ADDR`).
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
/// - `Slow`: answers after the message's milliseconds, or fails with
///   DEADLINE_EXCEEDED at half the call's `grpc-timeout` if that comes
///   first (before the client's own timer, so the answer is the upstream's).
pub struct GrpcUpstream {
    pub addr: std::net::SocketAddr,
    calls: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcUpstream {
    pub async fn start() -> GrpcUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, n, s) = (calls.clone(), connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let (c, s) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        c.fetch_add(1, Ordering::SeqCst);
                        s.lock()
                            .unwrap()
                            .push(http::HeaderMap::clone(http::Request::headers(&request)));
                        echo(request)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcUpstream {
            addr,
            calls,
            connections,
            seen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
