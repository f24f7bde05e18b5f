//! # tls_bench: HTTPS requests or TLS handshakes per second, direct or through a forward proxy
//!
//! The load an application behind `HTTPS_PROXY` makes, which wrk cannot
//! (it has no `CONNECT`): `--connections` clients each open a TCP
//! connection to `--addr`, send `CONNECT NAME:443` first when `--proxy` is
//! given (an intercepting faultline), make a TLS handshake as `--name`
//! trusting `--ca`, and then either send `GET --path` over HTTP/1.1
//! keep-alive for `--duration` (`--mode keepalive`), or make one request
//! per connection, a fresh handshake each (`--mode handshake`, session
//! resumption off). It prints one line:
//!
//! ```text
//! mode=keepalive requests=412345 errors=0 seconds=10.000 per_sec=41234.5
//! ```
//!
//! ```sh
//! cargo run --release --example tls_bench -- --addr 127.0.0.1:3128 --proxy \
//!   --name bench.test --ca faultline-ca/ca.pem --mode handshake --duration 5s
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
#[command(about = "HTTPS requests or TLS handshakes per second, direct or through CONNECT")]
struct Args {
    /// Where to connect: the TLS server, or the forward proxy with --proxy.
    #[arg(long)]
    addr: String,
    /// Send `CONNECT NAME:443` first (a forward proxy that intercepts).
    #[arg(long)]
    proxy: bool,
    /// The name sent in SNI and `Host`.
    #[arg(long)]
    name: String,
    /// The PEM CA certificate to trust.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, value_enum, default_value = "keepalive")]
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Keepalive,
    Handshake,
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let pem = std::fs::read(&args.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        roots.add(certificate?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if args.mode == Mode::Handshake {
        // Every connection a full handshake, as a new client makes.
        config.resumption = rustls::client::Resumption::disabled();
    }
    let args = Arc::new(args);
    let connector = TlsConnector::from(Arc::new(config));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (args, connector) = (Arc::clone(&args), connector.clone());
        let (done, errors) = (Arc::clone(&done), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let result = match args.mode {
                    Mode::Keepalive => keepalive(&args, &connector, deadline, &done).await,
                    Mode::Handshake => once(&args, &connector).await.map(|()| {
                        done.fetch_add(1, Ordering::Relaxed);
                    }),
                };
                if let Err(e) = result {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first error: {e}");
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = done.load(Ordering::Relaxed);
    println!(
        "mode={:?} requests={requests} errors={} seconds={seconds:.3} per_sec={:.1}",
        args.mode,
        errors.load(Ordering::Relaxed),
        requests as f64 / seconds
    );
    Ok(())
}

/// A TLS connection to the server, through `CONNECT` with `--proxy`.
async fn open(
    args: &Args,
    connector: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let mut tcp = TcpStream::connect(&args.addr).await?;
    tcp.set_nodelay(true)?;
    if args.proxy {
        let name = &args.name;
        let connect = format!("CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n");
        tcp.write_all(connect.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tcp.read(&mut byte).await? == 0 {
                return Err("the proxy closed before answering the CONNECT".into());
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!("CONNECT: {}", String::from_utf8_lossy(&head)).into());
        }
    }
    let name = ServerName::try_from(args.name.clone())?;
    Ok(connector.connect(name, tcp).await?)
}

/// One connection, requests on it until `deadline`.
async fn keepalive(
    args: &Args,
    connector: &TlsConnector,
    deadline: Instant,
    done: &AtomicU64,
) -> Result<(), Failure> {
    let tls = open(args, connector).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    while Instant::now() < deadline {
        get(args, &mut sender).await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One connection, one request, closed.
async fn once(args: &Args, connector: &TlsConnector) -> Result<(), Failure> {
    let tls = open(args, connector).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let connection = tokio::spawn(connection);
    get(args, &mut sender).await?;
    drop(sender);
    connection.await??;
    Ok(())
}

async fn get(
    args: &Args,
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
) -> Result<(), Failure> {
    let request = Request::get(args.path.as_str())
        .header("host", args.name.as_str())
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if !status.is_success() {
        return Err(format!("status {status}").into());
    }
    Ok(())
}
