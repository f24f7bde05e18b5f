//! # grpc_bench: unary gRPC calls per second and their latency
//!
//! A small load generator in the spirit of `ghz`, with tonic (the client a
//! Rust service uses): `--concurrency` callers share `--connections` h2c
//! connections (each a tonic `Channel`, callers spread over them in turn),
//! and each caller makes `bench.Echo/Unary` calls one after the other for
//! `--duration`. It prints one line:
//!
//! ```text
//! calls=412345 errors=0 seconds=10.000 calls_per_sec=41234.5 p50_ms=0.712 p99_ms=1.350
//! ```
//!
//! Latency is from just before a caller asks its channel to be ready to
//! the decoded reply. A failed call is counted in `errors`, and the first
//! one is printed to stderr. `scripts/grpcbench.sh` runs it against the
//! `grpc_echo_server` example directly, through faultline and through
//! HAProxy.
//!
//! ```sh
//! cargo run --release --example grpc_echo_server -- --listen 127.0.0.1:50051 &
//! cargo run --release --example grpc_bench -- --target http://127.0.0.1:50051 --duration 5s
//! # One call, its reply checked (exit 1 otherwise): is the target serving?
//! cargo run --release --example grpc_bench -- --target http://127.0.0.1:50051 --check
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(about = "Load a gRPC echo service with unary calls; print calls/s, p50 and p99")]
struct Args {
    /// The server or proxy to call, `http://HOST:PORT` (h2c).
    #[arg(long)]
    target: String,
    /// Callers, each making one call at a time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// h2c connections the callers share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long to call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The message each call sends (and gets back).
    #[arg(long, default_value = "hello from grpc_bench")]
    message: String,
    /// Worker threads of the client (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Make one call, check the reply, and exit.
    #[arg(long)]
    check: bool,
}

/// The request and the reply of `bench.Echo/Unary`.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(string, tag = "1")]
    message: String,
}

type Codec = tonic_prost::ProstCodec<EchoMessage, EchoMessage>;

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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.concurrency == 0 || args.connections == 0 {
        return Err("--concurrency and --connections must be at least 1".to_owned());
    }
    let endpoint = Endpoint::from_shared(args.target.clone())
        .map_err(|e| format!("--target {}: {e}", args.target))?
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", args.target))?;
        channels.push(channel);
    }
    if args.check {
        let mut grpc = tonic::client::Grpc::new(channels.swap_remove(0));
        let reply = call(&mut grpc, &args.message)
            .await
            .map_err(|status| format!("the call failed: {status:?}"))?;
        if reply != args.message {
            return Err(format!(
                "the reply was {reply:?}, not the message sent ({:?})",
                args.message
            ));
        }
        println!("ok: {UNARY} answered through {}", args.target);
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
            tokio::spawn(caller(grpc, args.message.clone(), stop.clone()))
        })
        .collect();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for caller in callers {
        let done = caller
            .await
            .map_err(|e| format!("a caller panicked: {e}"))?;
        latencies.extend_from_slice(&done.latencies);
        errors += done.errors;
        if first_error.is_none() {
            first_error = done.first_error;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(status) = first_error {
        eprintln!("first failed call: {status:?}");
    }
    latencies.sort_unstable();
    let calls = latencies.len() as u64 + errors;
    println!(
        "calls={calls} errors={errors} seconds={seconds:.3} calls_per_sec={:.1} p50_ms={:.3} p99_ms={:.3}",
        latencies.len() as f64 / seconds,
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
    );
    Ok(())
}

/// What one caller did: the latency of each successful call in µs.
struct Done {
    latencies: Vec<u32>,
    errors: u64,
    first_error: Option<tonic::Status>,
}

async fn caller(
    mut grpc: tonic::client::Grpc<Channel>,
    message: String,
    stop: Arc<AtomicBool>,
) -> Done {
    let mut done = Done {
        latencies: Vec::with_capacity(64 * 1024),
        errors: 0,
        first_error: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        match call(&mut grpc, &message).await {
            Ok(_) => {
                let micros = began.elapsed().as_micros();
                done.latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            Err(status) => {
                done.errors += 1;
                if done.first_error.is_none() {
                    done.first_error = Some(status);
                }
            }
        }
    }
    done
}

async fn call(
    grpc: &mut tonic::client::Grpc<Channel>,
    message: &str,
) -> Result<String, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the channel failed: {e}")))?;
    let request = tonic::Request::new(EchoMessage {
        message: message.to_owned(),
    });
    let reply = grpc
        .unary(request, PathAndQuery::from_static(UNARY), Codec::default())
        .await?;
    Ok(reply.into_inner().message)
}

/// The `q` quantile (nearest rank) of sorted µs, in ms; 0 for none.
fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}
