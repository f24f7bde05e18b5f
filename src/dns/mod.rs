//! faultline's DNS server (README "DNS"): UDP and TCP on one address. A
//! query goes through the same rule snapshot, planner, control and metrics
//! as an HTTP request ([`crate::plan::decide_dns`]): a `dns` rule answers
//! instead of the truth, a `latency` rule delays the answer; untouched
//! names are answered from `[dns] records` or by the `upstream` resolvers.
//!
//! Bounded everywhere: [`MAX_TCP_CONNECTIONS`], [`MAX_TCP_MESSAGE`],
//! [`TCP_IDLE_TIMEOUT`], [`MAX_IN_FLIGHT`] queries waiting on a delay or
//! an upstream, and UDP answers within what the client takes.

mod answer;
mod resolve;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::DnsConfig;
use crate::control::{Published, Snapshot};
use crate::fault::{DnsAnswer, DnsFault};
use crate::metrics::{DnsOutcome, DnsQueryMetrics, Metrics};
use crate::plan::decide_dns;

use answer::{Parsed, Query};
use resolve::Resolved;
pub use resolve::{FORWARD_TIMEOUT, SYSTEM_TIMEOUT, SYSTEM_TTL};

/// The TTL of answers from `[dns] records`.
pub const RECORDS_TTL: u32 = 5;
/// TCP connections served at once; one more is closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// The largest DNS message read over TCP; a longer one closes the connection.
pub const MAX_TCP_MESSAGE: usize = 4096;
/// How long a TCP connection may stay silent (before and within a message).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries waiting at once on an injected delay or an upstream resolver;
/// one more is answered `SERVFAIL` at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// The largest UDP datagram read: a larger query is cut, so it fails to
/// parse and is refused.
const MAX_UDP_QUERY: usize = 4096;

/// What the DNS server works with, wired by [`crate::app`].
struct Context {
    config: DnsConfig,
    published: Arc<Published>,
    queries: DnsQueryMetrics,
    in_flight: Arc<Semaphore>,
}

/// The DNS server's sockets, bound before anything serves.
#[derive(Debug)]
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl DnsSockets {
    /// Binds TCP, then UDP on the same port (the port TCP got, for port 0).
    pub fn bind(addr: SocketAddr) -> io::Result<DnsSockets> {
        let tcp = crate::server::bind(addr)?;
        let bound = tcp.local_addr()?;
        let udp = std::net::UdpSocket::bind(bound)?;
        udp.set_nonblocking(true)?;
        Ok(DnsSockets {
            udp: UdpSocket::from_std(udp)?,
            tcp,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves until `shutdown`: a task for UDP, one for TCP.
    pub fn serve(
        self,
        config: DnsConfig,
        published: Arc<Published>,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> [JoinHandle<()>; 2] {
        let context = Arc::new(Context {
            config,
            published,
            queries: metrics.dns_queries(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        if let Ok(addr) = self.local_addr() {
            info!(%addr, "DNS listening (UDP and TCP)");
        }
        [
            tokio::spawn(serve_udp(
                Arc::new(self.udp),
                Arc::clone(&context),
                shutdown.clone(),
            )),
            tokio::spawn(serve_tcp(self.tcp, context, shutdown)),
        ]
    }
}

/// What the rules and records say of a query, before any waiting.
enum Plan {
    /// An answer made here (a fault's or a record's), or `None`: no answer.
    Now(Option<Vec<u8>>, DnsOutcome),
    /// Wait and/or ask upstream: `delay` first, then the fault's answer if
    /// one fired (unless a halt came meanwhile), else the truth.
    Later {
        delay: Duration,
        fault: Option<DnsFault>,
        snapshot: Arc<Snapshot>,
    },
}

impl Context {
    /// Decides for `query`; `limit` is the UDP size (`None` over TCP).
    fn plan(&self, query: &Query, limit: Option<usize>) -> Plan {
        let snapshot = self.published.load();
        let decision = if snapshot.rules.dns_candidates().is_empty() {
            None
        } else {
            decide_dns(&snapshot.rules, &query.key, query.qtype, b"")
        };
        let (delay, fault) = snapshot.take_dns_decision(decision);
        if delay.is_zero() {
            if let Some(fault) = &fault {
                let answer = query.fault(fault).and_then(|m| query.encode(&m, limit));
                return Plan::Now(answer, fault_outcome(fault));
            }
            if let Some(addresses) = self.config.records.get(&query.key) {
                let answer = query.encode(&query.addresses(addresses, RECORDS_TTL), limit);
                return Plan::Now(answer, DnsOutcome::Records);
            }
        }
        if matches!(
            &fault,
            Some(DnsFault {
                answer: DnsAnswer::Timeout,
                ..
            })
        ) {
            // Nothing will be sent: there is nothing to wait for either.
            return Plan::Now(None, DnsOutcome::Timeout);
        }
        Plan::Later {
            delay,
            fault,
            snapshot: arc_swap::Guard::into_inner(snapshot),
        }
    }

    /// Waits out a delay (cut short by a halt), then answers: the fault's,
    /// a record's, or an upstream's.
    async fn answer_later(
        &self,
        query: &Query,
        packet: &[u8],
        limit: Option<usize>,
        delay: Duration,
        fault: Option<DnsFault>,
        snapshot: Arc<Snapshot>,
    ) -> (Option<Vec<u8>>, DnsOutcome) {
        let mut fault = fault;
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = snapshot.halt.halted() => {}
            }
        }
        if snapshot.halt.is_halted() {
            // The kill switch: the truth, at once.
            fault = None;
        }
        if let Some(fault) = &fault {
            let answer = query.fault(fault).and_then(|m| query.encode(&m, limit));
            return (answer, fault_outcome(fault));
        }
        if let Some(addresses) = self.config.records.get(&query.key) {
            let answer = query.encode(&query.addresses(addresses, RECORDS_TTL), limit);
            return (answer, DnsOutcome::Records);
        }
        let resolved = resolve::resolve(
            &self.config.upstream,
            packet,
            &query.key,
            query.qtype,
            limit.is_none(),
        )
        .await;
        match resolved {
            Resolved::Relayed(answer) => (query.relay(answer, limit), DnsOutcome::Forwarded),
            Resolved::System(addresses) => (
                query.encode(&query.addresses(&addresses, SYSTEM_TTL), limit),
                DnsOutcome::Forwarded,
            ),
            Resolved::NoSuchName => (
                query.encode(&query.negative(ResponseCode::NXDomain, SYSTEM_TTL), limit),
                DnsOutcome::Forwarded,
            ),
            Resolved::NotImplemented => (
                query.encode(&query.response(ResponseCode::NotImp), limit),
                DnsOutcome::NotImplemented,
            ),
            Resolved::Failed => (
                query.encode(&query.response(ResponseCode::ServFail), limit),
                DnsOutcome::UpstreamFailed,
            ),
        }
    }
}

fn fault_outcome(fault: &DnsFault) -> DnsOutcome {
    match fault.answer {
        DnsAnswer::NxDomain => DnsOutcome::NxDomain,
        DnsAnswer::ServFail => DnsOutcome::ServFail,
        DnsAnswer::NoData => DnsOutcome::NoData,
        DnsAnswer::Refused => DnsOutcome::Refused,
        DnsAnswer::Timeout => DnsOutcome::Timeout,
        DnsAnswer::Addresses(_) => DnsOutcome::Addresses,
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, context: Arc<Context>, shutdown: CancellationToken) {
    let mut buffer = vec![0u8; MAX_UDP_QUERY];
    loop {
        let (n, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                // An ICMP error for an earlier answer, or a datagram too
                // large: nothing to do but read the next.
                Err(e) => {
                    debug!(error = %e, "DNS: UDP receive failed");
                    continue;
                }
            },
        };
        let packet = &buffer[..n];
        let query = match answer::parse(packet) {
            Parsed::Query(query) => query,
            Parsed::Refuse(answer, outcome) => {
                context.queries.record(outcome);
                let _ = socket.try_send_to(&answer, peer);
                continue;
            }
            Parsed::Drop => {
                context.queries.record(DnsOutcome::Malformed);
                continue;
            }
        };
        let limit = Some(query.udp_limit);
        match context.plan(&query, limit) {
            Plan::Now(answer, outcome) => {
                context.queries.record(outcome);
                if let Some(answer) = answer {
                    // A full send buffer drops the answer, as a lost datagram.
                    let _ = socket.try_send_to(&answer, peer);
                }
            }
            Plan::Later {
                delay,
                fault,
                snapshot,
            } => {
                let Ok(permit) = Arc::clone(&context.in_flight).try_acquire_owned() else {
                    context.queries.record(DnsOutcome::UpstreamFailed);
                    if let Some(answer) =
                        query.encode(&query.response(ResponseCode::ServFail), limit)
                    {
                        let _ = socket.try_send_to(&answer, peer);
                    }
                    continue;
                };
                let (socket, context) = (Arc::clone(&socket), Arc::clone(&context));
                let packet = packet.to_vec();
                tokio::spawn(async move {
                    let (answer, outcome) = context
                        .answer_later(&query, &packet, limit, delay, fault, snapshot)
                        .await;
                    drop(permit);
                    context.queries.record(outcome);
                    if let Some(answer) = answer {
                        let _ = socket.send_to(&answer, peer).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, context: Arc<Context>, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "DNS: TCP accept failed");
                    tokio::time::sleep(crate::server::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Over the limit: closed at once, which a client takes as a refusal.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            continue;
        };
        let (context, shutdown) = (Arc::clone(&context), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = serve_connection(stream, &context) => {}
            }
            drop(permit);
        });
    }
}

/// One TCP connection: length-prefixed queries, answered in order.
async fn serve_connection(mut stream: TcpStream, context: &Context) {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; MAX_TCP_MESSAGE];
    loop {
        let Ok(Ok(length)) = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await else {
            return;
        };
        let length = usize::from(length);
        if length == 0 || length > MAX_TCP_MESSAGE {
            return;
        }
        let packet = &mut buffer[..length];
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(packet)).await
        else {
            return;
        };
        let packet = &buffer[..length];
        let (answer, outcome) = match answer::parse(packet) {
            Parsed::Query(query) => match context.plan(&query, None) {
                Plan::Now(answer, outcome) => (answer, outcome),
                Plan::Later {
                    delay,
                    fault,
                    snapshot,
                } => match Arc::clone(&context.in_flight).try_acquire_owned() {
                    Ok(_permit) => {
                        context
                            .answer_later(&query, packet, None, delay, fault, snapshot)
                            .await
                    }
                    Err(_) => (
                        query.encode(&query.response(ResponseCode::ServFail), None),
                        DnsOutcome::UpstreamFailed,
                    ),
                },
            },
            Parsed::Refuse(answer, outcome) => (Some(answer), outcome),
            Parsed::Drop => (None, DnsOutcome::Malformed),
        };
        context.queries.record(outcome);
        let Some(answer) = answer else {
            continue;
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&answer);
        let written = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}
