//! TCP upstreams (SPEC §9): the small pipeline of a `tcp://` upstream's
//! dedicated port. Each connection is decided once when it is accepted
//! ([`plan::decide_connection`], from the same published snapshot HTTP
//! requests read), then held, ended, or dialled and copied both ways
//! ([`copy`]) through its faults until they are lifted ([`lift`]: a halt,
//! or a rule that fired on it turning off).
//!
//! A connection no rule touches takes the plain copy: at most one buffer
//! per direction, held only while bytes are waiting, one counter add per piece, each side's close passed on as a
//! half-close. While a rule refuses the upstream the port is closed (as an
//! HTTP upstream's dedicated port is) and its open connections are reset.

pub mod copy;
mod lift;

use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::UpstreamConfig;
use crate::control::{Published, Snapshot};
use crate::fault::AbortMode;
use crate::metrics::{TcpMetrics, TcpOutcome};
use crate::plan::{self, ConnectionAction, ConnectionDecision};
use crate::server::{self, Stop};
use copy::Ended;
use lift::Lift;

/// How long a failed accept (out of file descriptors) waits before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The most a blackholed connection reads (and keeps, for a halt to pass
/// on) of what its client sends; past it, the client is simply not read.
pub const HOLD_BUFFER_BYTES: usize = 64 * 1024;

/// What every connection of one tcp:// upstream shares.
#[derive(Debug)]
pub struct TcpDoor {
    /// The upstream's index, in the snapshot's rules.
    pub upstream: usize,
    pub config: UpstreamConfig,
    pub published: Arc<Published>,
    pub metrics: TcpMetrics,
    pub connect_timeout: Duration,
}

/// Serves a tcp:// upstream's dedicated port until `stop` drains it.
///
/// While a rule refuses the upstream the socket is dropped (connections are
/// refused) and the open ones are reset; it is bound again when the rule
/// goes. On shutdown the port closes at once and open connections get
/// `stop.grace` to finish before they are closed.
pub async fn serve(listener: TcpListener, addr: SocketAddr, door: Arc<TcpDoor>, stop: Stop) {
    let published = Arc::clone(&door.published);
    let mut changes = published.subscribe();
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    loop {
        if published.load().rules.refuses(door.upstream) {
            drop(listener.take());
            info!(%addr, upstream = door.config.name, "refusing connections: an unavailable/refuse rule is on");
            tokio::select! {
                _ = stop.drain.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let socket = match listener.take() {
            Some(socket) => socket,
            None => match server::rebind(addr, &stop).await {
                Some(socket) => socket,
                None => return,
            },
        };
        let reset = CancellationToken::new();
        loop {
            tokio::select! {
                _ = stop.drain.cancelled() => {
                    drop(socket);
                    drain(&mut connections, stop.grace, &reset).await;
                    return;
                }
                _ = stop.reset.cancelled() => {
                    reset.cancel();
                    return;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if published.load().rules.refuses(door.upstream) {
                        reset.cancel();
                        break;
                    }
                }
                accepted = socket.accept() => match accepted {
                    Ok((client, peer)) => {
                        connections.spawn(connection(Arc::clone(&door), client, peer, reset.clone()));
                    }
                    Err(e) => {
                        warn!(%addr, error = %e, "accept failed; retrying");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// Waits up to `grace` for the open connections, then closes the rest.
async fn drain(connections: &mut JoinSet<()>, grace: Duration, reset: &CancellationToken) {
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        reset.cancel();
        while connections.join_next().await.is_some() {}
    }
}

/// One client connection, from accept to close.
async fn connection(
    door: Arc<TcpDoor>,
    client: TcpStream,
    peer: SocketAddr,
    reset: CancellationToken,
) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let snapshot = door.published.load_full();
    // The client's address is formatted only when a rule could use it.
    let decision = snapshot.rules.candidates(door.upstream).and_then(|_| {
        let ip = peer.ip().to_string();
        plan::decide_connection(&snapshot.rules, door.upstream, ip.as_bytes())
    });
    let outcome = match decision {
        None => forward(&door, client, None, &reset).await,
        Some(decision) => {
            // Counted when decided, as for HTTP requests.
            let candidates = snapshot.rules.candidates(door.upstream);
            for &fired in &decision.fired {
                snapshot.count_injected(door.upstream, fired);
                if let Some(candidate) = candidates.and_then(|c| c.get(fired)) {
                    candidate.rule.counters.record_injected();
                }
            }
            faulted(&door, client, &snapshot, decision, &reset).await
        }
    };
    debug!(%peer, upstream = door.config.name, outcome = outcome.as_str(), "tcp connection ended");
    door.metrics.record(outcome, started.elapsed());
}

/// A connection some rule fired on.
async fn faulted(
    door: &TcpDoor,
    mut client: TcpStream,
    snapshot: &Snapshot,
    decision: ConnectionDecision,
    reset: &CancellationToken,
) -> TcpOutcome {
    let mut signals = vec![Arc::clone(&snapshot.halt)];
    signals.extend(
        decision
            .fired
            .iter()
            .filter_map(|&i| snapshot.rule_off(door.upstream, i))
            .cloned(),
    );
    let lift = Lift::new(signals);
    match decision.action {
        ConnectionAction::Forward => {}
        ConnectionAction::End(mode) => {
            end(&client, mode);
            return TcpOutcome::Injected;
        }
        ConnectionAction::Refuse => {
            end(&client, AbortMode::Reset);
            return TcpOutcome::Injected;
        }
        ConnectionAction::Blackhole { max_hold } => {
            let mut kept = Vec::new();
            let held = tokio::select! {
                biased;
                () = reset.cancelled() => Held::Ended,
                () = lift.lifted() => Held::Released,
                held = hold(&mut client, &mut kept, max_hold) => held,
            };
            match held {
                // Let go: the connection goes through untouched, with
                // what its client sent meanwhile.
                Held::Released => {
                    return forward_kept(door, client, kept, reset).await;
                }
                Held::ClientLeft => return TcpOutcome::Injected,
                Held::Ended => {
                    end(&client, AbortMode::Reset);
                    return TcpOutcome::Error;
                }
                Held::TimedOut => {
                    end(&client, AbortMode::Close);
                    return TcpOutcome::Injected;
                }
            }
        }
    }
    forward(door, client, Some((&decision, &lift)), reset).await
}

/// How a blackhole's hold ended.
enum Held {
    Released,
    ClientLeft,
    Ended,
    TimedOut,
}

/// Holds a connection for `max_hold`: nothing is dialled, what the client
/// sends is kept (up to [`HOLD_BUFFER_BYTES`]), and a client whose
/// connection breaks ends the hold (one that half-closes is still held:
/// it may be waiting for its answer).
async fn hold(client: &mut TcpStream, kept: &mut Vec<u8>, max_hold: Duration) -> Held {
    let deadline = tokio::time::Instant::now() + max_hold;
    let mut buffer = [0u8; 4096];
    loop {
        let room = HOLD_BUFFER_BYTES
            .saturating_sub(kept.len())
            .min(buffer.len());
        if room == 0 {
            tokio::time::sleep_until(deadline).await;
            return Held::TimedOut;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Held::TimedOut,
            read = client.read(&mut buffer[..room]) => match read {
                // A half-close: the client may still wait for an answer.
                Ok(0) => {
                    tokio::time::sleep_until(deadline).await;
                    return Held::TimedOut;
                }
                Err(_) => return Held::ClientLeft,
                Ok(n) => kept.extend_from_slice(&buffer[..n]),
            },
        }
    }
}

/// A released blackhole: the kept bytes first, then the plain copy.
async fn forward_kept(
    door: &TcpDoor,
    client: TcpStream,
    kept: Vec<u8>,
    reset: &CancellationToken,
) -> TcpOutcome {
    use tokio::io::AsyncWriteExt;
    let Ok(mut upstream) = dial(door).await else {
        return TcpOutcome::UpstreamConnect;
    };
    if upstream.write_all(&kept).await.is_err() {
        return TcpOutcome::Error;
    }
    door.metrics.bytes_upstream.inc_by(kept.len() as u64);
    copy_until_done(door, client, upstream, None, reset).await
}

/// Dials the upstream and copies both ways, through `faults` if any.
async fn forward(
    door: &TcpDoor,
    client: TcpStream,
    faults: Option<(&ConnectionDecision, &Lift)>,
    reset: &CancellationToken,
) -> TcpOutcome {
    let upstream = match dial(door).await {
        Ok(upstream) => upstream,
        Err(e) => {
            debug!(upstream = door.config.name, error = %e, "cannot reach the tcp upstream");
            // The client sees its connection closed, as a TCP proxy's
            // clients do when the backend is down.
            return TcpOutcome::UpstreamConnect;
        }
    };
    copy_until_done(door, client, upstream, faults, reset).await
}

async fn copy_until_done(
    door: &TcpDoor,
    mut client: TcpStream,
    mut upstream: TcpStream,
    faults: Option<(&ConnectionDecision, &Lift)>,
    reset: &CancellationToken,
) -> TcpOutcome {
    let end_after = async {
        match faults.and_then(|(d, lift)| d.end_after.map(|e| (e, lift))) {
            Some(((after, mode), lift)) => {
                lift.sleep(after).await;
                if lift.is_lifted() {
                    pending::<()>().await;
                }
                mode
            }
            None => pending().await,
        }
    };
    let copied = tokio::select! {
        biased;
        () = reset.cancelled() => Err(Stopped::Reset),
        mode = end_after => Err(Stopped::Fault(mode)),
        copied = copy_both(&mut client, &mut upstream, faults, &door.metrics) => copied.map_err(Stopped::Io),
    };
    match copied {
        Ok(Ended::Closed) => TcpOutcome::Closed,
        Ok(Ended::Cut(mode)) | Err(Stopped::Fault(mode)) => {
            end(&client, mode);
            TcpOutcome::Injected
        }
        Err(Stopped::Reset) => {
            end(&client, AbortMode::Reset);
            TcpOutcome::Error
        }
        Err(Stopped::Io(e)) => {
            debug!(upstream = door.config.name, error = %e, "tcp connection broke off");
            TcpOutcome::Error
        }
    }
}

/// Why the copy stopped before both sides closed.
enum Stopped {
    Reset,
    Fault(AbortMode),
    Io(io::Error),
}

/// Copies both ways until both sides have closed (each close passed on as
/// a half-close), a direction is cut, or either fails.
async fn copy_both(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    faults: Option<(&ConnectionDecision, &Lift)>,
    metrics: &TcpMetrics,
) -> io::Result<Ended> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let up = async {
        match faults {
            Some((d, lift)) if !d.upstream.is_none() => {
                let seed = d.seed ^ 0x5555_5555_5555_5555;
                copy::faulted(
                    &mut client_read,
                    &mut upstream_write,
                    d.upstream,
                    lift,
                    seed,
                    &metrics.bytes_upstream,
                )
                .await
            }
            _ => {
                copy::plain(
                    &mut client_read,
                    &mut upstream_write,
                    &metrics.bytes_upstream,
                )
                .await
            }
        }
    };
    let down = async {
        match faults {
            Some((d, lift)) if !d.downstream.is_none() => {
                copy::faulted(
                    &mut upstream_read,
                    &mut client_write,
                    d.downstream,
                    lift,
                    d.seed,
                    &metrics.bytes_downstream,
                )
                .await
            }
            _ => {
                copy::plain(
                    &mut upstream_read,
                    &mut client_write,
                    &metrics.bytes_downstream,
                )
                .await
            }
        }
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let ended = tokio::select! {
            ended = &mut up, if !up_done => { up_done = true; ended? }
            ended = &mut down, if !down_done => { down_done = true; ended? }
        };
        if let Ended::Cut(mode) = ended {
            return Ok(Ended::Cut(mode));
        }
    }
    Ok(Ended::Closed)
}

async fn dial(door: &TcpDoor) -> io::Result<TcpStream> {
    let authority = door.config.authority.as_str();
    let stream = tokio::time::timeout(door.connect_timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Ends the client's connection as `mode` says: an RST for a reset, a FIN
/// otherwise (the socket closes as it is dropped).
fn end(client: &TcpStream, mode: AbortMode) {
    if mode == AbortMode::Reset {
        let _ = client.set_zero_linger();
    }
}
