//! # grpc_echo_server: a small gRPC backend for benchmarks
//!
//! Serves `bench.Echo/Unary` over h2c: the request's message back, in
//! tonic's own server side (`tonic::server::Grpc`, the code a tonic
//! service runs) under hyper, on one thread unless told otherwise.
//! `scripts/grpcbench.sh` puts it behind faultline and HAProxy and loads
//! it with the `grpc_bench` example.
//!
//! ```sh
//! cargo run --release --example grpc_echo_server -- --listen 127.0.0.1:50051
//! ```
//!
//! It prints `listening on ADDR` once bound, and serves until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser, Debug)]
#[command(about = "A gRPC echo service over h2c, for benchmarks")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The request and the reply of `bench.Echo/Unary`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(string, tag = "1")]
    message: String,
}

type ServerCodec = tonic_prost::ProstCodec<EchoMessage, EchoMessage>;

/// The one method this server has.
const UNARY: &str = "/bench.Echo/Unary";

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(echo);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A closure as the tower service tonic's server side calls.
struct Handler;

impl tower_service::Service<tonic::Request<EchoMessage>> for Handler {
    type Response = tonic::Response<EchoMessage>;
    type Error = tonic::Status;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<EchoMessage>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

async fn echo(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    if request.uri().path() != UNARY {
        let status = tonic::Status::unimplemented(format!("no method {}", request.uri().path()));
        return Ok(status.into_http());
    }
    let mut grpc = tonic::server::Grpc::new(ServerCodec::default());
    Ok(grpc.unary(Handler, request).await)
}
