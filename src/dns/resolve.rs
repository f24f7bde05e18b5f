//! Names no rule and no record answers: asked of the `[dns] upstream`
//! resolvers (the query relayed as the client sent it, under a fresh id),
//! or of the system's resolver.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::answer::HEADER_LEN;
use crate::config::DnsUpstream;

/// How long one upstream resolver has to answer before the next is tried.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the system resolver (`getaddrinfo`) has to answer.
pub const SYSTEM_TIMEOUT: Duration = Duration::from_secs(5);
/// The TTL of answers from the system resolver, which gives none.
pub const SYSTEM_TTL: u32 = 5;
/// The largest answer read from an upstream resolver over UDP.
const MAX_UDP_ANSWER: usize = 4096;

/// What asking the upstreams gave.
#[derive(Debug)]
pub(super) enum Resolved {
    /// An upstream resolver's answer, as it sent it (its id is ours).
    Relayed(Vec<u8>),
    /// The system resolver's addresses for the name.
    System(Vec<IpAddr>),
    /// The system resolver says the name does not exist.
    NoSuchName,
    /// Not a type the system resolver can ask (it knows A and AAAA only).
    NotImplemented,
    /// No upstream answered in time.
    Failed,
}

/// Asks each upstream in turn until one answers: `packet` is the client's
/// query, sent on under a fresh id over TCP if it came over TCP.
pub(super) async fn resolve(
    upstreams: &[DnsUpstream],
    packet: &[u8],
    name: &str,
    qtype: u16,
    tcp: bool,
) -> Resolved {
    for upstream in upstreams {
        let resolved = match upstream {
            DnsUpstream::System => system(name, qtype).await,
            DnsUpstream::Resolver(addr) => {
                let asked = if tcp {
                    timeout(FORWARD_TIMEOUT, over_tcp(*addr, packet)).await
                } else {
                    timeout(FORWARD_TIMEOUT, over_udp(*addr, packet)).await
                };
                match asked {
                    Ok(Some(answer)) => Resolved::Relayed(answer),
                    _ => Resolved::Failed,
                }
            }
        };
        if !matches!(resolved, Resolved::Failed) {
            return resolved;
        }
    }
    Resolved::Failed
}

/// A fresh query id: unpredictable, so an answer from anyone but the
/// upstream asked is not taken.
fn fresh_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) as u16
}

/// `packet` with a fresh id, and that id.
fn reissued(packet: &[u8]) -> (Vec<u8>, [u8; 2]) {
    let id = fresh_id().to_be_bytes();
    let mut query = packet.to_vec();
    query[..2].copy_from_slice(&id);
    (query, id)
}

/// Whether `answer` is a response to the query with `id`.
fn answers(answer: &[u8], id: [u8; 2]) -> bool {
    answer.len() >= HEADER_LEN && answer[..2] == id && answer[2] & 0x80 != 0
}

async fn over_udp(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A socket of its own per query, on a random port, connected: only
    // the upstream's datagrams reach it.
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(addr).await.ok()?;
    let (query, id) = reissued(packet);
    socket.send(&query).await.ok()?;
    let mut buffer = vec![0u8; MAX_UDP_ANSWER];
    loop {
        let n = socket.recv(&mut buffer).await.ok()?;
        if answers(&buffer[..n], id) {
            buffer.truncate(n);
            return Some(buffer);
        }
    }
}

async fn over_tcp(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let (query, id) = reissued(packet);
    let length = u16::try_from(query.len()).ok()?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await.ok()?;
    let length = usize::from(stream.read_u16().await.ok()?);
    let mut answer = vec![0u8; length];
    stream.read_exact(&mut answer).await.ok()?;
    answers(&answer, id).then_some(answer)
}

/// The system resolver, for A and AAAA: `getaddrinfo` through tokio.
async fn system(name: &str, qtype: u16) -> Resolved {
    let want_v4 = match qtype {
        1 => true,
        28 => false,
        _ => return Resolved::NotImplemented,
    };
    match timeout(SYSTEM_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(addrs)) => Resolved::System(
            addrs
                .map(|addr| addr.ip())
                .filter(|ip| ip.is_ipv4() == want_v4)
                .collect(),
        ),
        // getaddrinfo's EAI_AGAIN: the system's resolvers did not answer.
        Ok(Err(e)) if e.to_string().contains("Temporary failure") => Resolved::Failed,
        Ok(Err(_)) => Resolved::NoSuchName,
        Err(_) => Resolved::Failed,
    }
}
