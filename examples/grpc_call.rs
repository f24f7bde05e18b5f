//! # grpc_call: a gRPC client through faultline
//!
//! Every demo upstream also serves the standard gRPC health service
//! (`grpc.health.v1.Health/Check`) over h2c, and the demo routes a call by
//! its authority, `SERVICE.REGION.demo`, as it routes `Host`. This example
//! calls it with tonic, the way a Rust service calls its dependencies, and
//! prints what each call got: `SERVING`, or the gRPC status and message a
//! fault or the proxy answered with, and which (`x-faultline-rule` for an
//! injected fault, `x-faultline-error` for the proxy's own).
//!
//! ```sh
//! # Self-contained: starts the demo in-process and calls it.
//! cargo run --release --example grpc_call
//! # Against a running `faultline demo`, in a region a scenario breaks:
//! cargo run --release --example grpc_call -- --proxy http://127.0.0.1:8080 --region us-east-1 --service lambda --calls 20
//! ```
//!
//! With `--expect CODE` (`OK`, `UNAVAILABLE`, …) it exits 1 unless every
//! call ended with that status.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use faultline::demo::{Demo, HEALTH_CHECK};
use http::uri::PathAndQuery;
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(about = "Call the demo's gRPC health service through faultline")]
struct Args {
    /// faultline's proxy listener; without it, the demo starts in-process.
    #[arg(long)]
    proxy: Option<String>,
    /// The region to call.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// The demo service to call (orders, payments, lambda, …).
    #[arg(long, default_value = "orders")]
    service: String,
    /// How many calls, one after the other.
    #[arg(long, default_value_t = 5)]
    calls: usize,
    /// Each call's deadline (`grpc-timeout`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Exit 1 unless every call ends with this status (`OK`, `UNAVAILABLE`, …).
    #[arg(long)]
    expect: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

type HealthCodec = tonic_prost::ProstCodec<HealthCheckRequest, HealthCheckResponse>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (demo, proxy) = match &args.proxy {
        Some(proxy) => (None, proxy.trim_end_matches('/').to_owned()),
        None => {
            let any: SocketAddr = ([127, 0, 0, 1], 0).into();
            let demo = Demo::start(any, any, Path::new("rules")).await?;
            let proxy = format!("http://{}", demo.proxy_addr);
            (Some(demo), proxy)
        }
    };
    let outcome = call(&args, &proxy).await;
    if let Some(demo) = demo {
        demo.shutdown().await;
    }
    outcome
}

async fn call(args: &Args, proxy: &str) -> Result<(), String> {
    // The demo's host routes match the authority: one connection, every
    // call multiplexed on it.
    let authority = format!("{}.{}.demo", args.service, args.region);
    let channel = Endpoint::from_shared(proxy.to_owned())
        .map_err(|e| format!("--proxy {proxy}: {e}"))?
        .origin(
            format!("http://{authority}")
                .parse()
                .map_err(|e| format!("{authority}: {e}"))?,
        )
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {proxy}: {e}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    println!("calling {HEALTH_CHECK} on {authority} through {proxy}");
    let mut unexpected = 0;
    for i in 1..=args.calls {
        client
            .ready()
            .await
            .map_err(|e| format!("the connection to {proxy} failed: {e}"))?;
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(args.deadline);
        let started = Instant::now();
        let result = client
            .unary(
                request,
                PathAndQuery::from_static(HEALTH_CHECK),
                HealthCodec::default(),
            )
            .await;
        let took = started.elapsed().as_millis();
        let (code, line) = match result {
            Ok(reply) => {
                let region = text(reply.metadata(), "x-region").to_owned();
                let status = match reply.into_inner().status {
                    1 => "SERVING".to_owned(),
                    other => format!("status {other}"),
                };
                ("OK".to_owned(), format!("OK {status} from {region}"))
            }
            Err(status) => {
                let name = code_name(status.code());
                // Every rule that acted (a latency and an error may both have).
                let rules: Vec<&str> = status
                    .metadata()
                    .get_all("x-faultline-rule")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let mark = match status.metadata().get("x-faultline-error") {
                    _ if !rules.is_empty() => format!(" (injected by {})", rules.join(", ")),
                    Some(_) => format!(
                        " (made by the proxy: {})",
                        text(status.metadata(), "x-faultline-error")
                    ),
                    None => String::new(),
                };
                (
                    name.to_owned(),
                    format!("{name}: {}{mark}", status.message()),
                )
            }
        };
        println!("{i:>4}  {took:>5} ms  {line}");
        if args
            .expect
            .as_deref()
            .is_some_and(|expected| expected != code)
        {
            unexpected += 1;
        }
    }
    match &args.expect {
        Some(expected) if unexpected > 0 => Err(format!(
            "{unexpected} of {} calls did not end with {expected}",
            args.calls
        )),
        _ => Ok(()),
    }
}

fn text<'a>(metadata: &'a tonic::metadata::MetadataMap, key: &str) -> &'a str {
    metadata
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
}

/// The canonical name of a status code, as faultline's metric labels it.
fn code_name(code: tonic::Code) -> &'static str {
    faultline::grpc::GrpcStatus::new(code as u64).map_or("UNKNOWN", |s| s.name())
}
