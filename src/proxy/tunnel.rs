//! Upgraded connections (WebSocket, any `Connection: upgrade`) and a
//! forward listener's `CONNECT` tunnels: once the upstream's `101` (or the
//! `CONNECT`'s `200`) has gone back, the bytes of both sides are copied
//! both ways until they close, through hyper's upgrade API.
//!
//! A tunnel owns what happens to those bytes: the upstream's carry the
//! plan's `bandwidth` (paced) and `truncate` (cut, the client's connection
//! ended as the fault says) until the kill switch fires, and go unshaped
//! after. It holds its client connection's registration, so shutdown waits
//! for it, and ends when the connection's control does (the grace period's
//! end, a dedicated port's reset).

use std::future::{poll_fn, Future};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::inject::ending;
use super::shape::{CUT_FLUSH_GRACE, PACING_SLICES_PER_SEC};
use super::Connection;
use crate::control::HaltSignal;
use crate::fault::{AbortMode, Shaping};
use crate::server::ConnControl;

/// What one read of either side may take.
const BUFFER_BYTES: usize = 16 * 1024;

/// The shaping faults of a request's plan, for the tunnel it may open.
#[derive(Debug, Clone, Copy)]
pub(super) struct TunnelFaults<'a> {
    pub(super) shaping: &'a Shaping,
    pub(super) halt: &'a Arc<HaltSignal>,
}

/// What a tunnel does to the upstream's bytes. `dribble` has no place
/// here: it spreads a body of known length, and a tunnel has no length.
#[derive(Debug)]
struct Shaped {
    bytes_per_sec: Option<u64>,
    /// After this many bytes, the next ones cut the tunnel, this way.
    truncate: Option<(u64, AbortMode)>,
    /// Once given, the rest goes unshaped.
    halt: Arc<HaltSignal>,
}

impl Shaped {
    fn new(faults: TunnelFaults<'_>) -> Option<Self> {
        let TunnelFaults { shaping, halt } = faults;
        if shaping.bytes_per_sec.is_none() && shaping.truncate.is_none() {
            return None;
        }
        Some(Self {
            bytes_per_sec: shaping.bytes_per_sec.map(|rate| rate.max(1)),
            truncate: shaping.truncate,
            halt: Arc::clone(halt),
        })
    }
}

/// Copies the bytes of an upgraded connection both ways once both sides
/// are handed over, in a task of its own: the client's as soon as hyper has
/// written the `101`, the upstream's as soon as it read it.
pub(super) fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    conn: Arc<Connection>,
    faults: Option<TunnelFaults<'_>>,
) {
    let shaped = faults.and_then(Shaped::new);
    let upstream = async move { upstream.await.map(TokioIo::new).map_err(io::Error::other) };
    tokio::spawn(run(client, upstream, conn, shaped));
}

/// [`spawn`], for a forward listener's `CONNECT`: the upstream side is a
/// connection already made to the target; copying starts once hyper has
/// written the `200` and handed the client's side over.
pub(super) fn spawn_connected(
    client: OnUpgrade,
    upstream: TcpStream,
    conn: Arc<Connection>,
    faults: Option<TunnelFaults<'_>>,
) {
    let shaped = faults.and_then(Shaped::new);
    let upstream = std::future::ready(Ok::<_, io::Error>(upstream));
    tokio::spawn(run(client, upstream, conn, shaped));
}

async fn run<F, U>(client: OnUpgrade, upstream: F, conn: Arc<Connection>, shaped: Option<Shaped>)
where
    F: Future<Output = io::Result<U>>,
    U: AsyncRead + AsyncWrite,
{
    let control = &conn.info.control;
    let peer = conn.info.peer;
    let ended = poll_fn(|cx| control.poll_ended(cx));
    let copied = async {
        // A client that left before its `101` (or `200`) was written, or
        // an upstream connection that broke, fails here.
        let client = async move { client.await.map_err(io::Error::other) };
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        copy_both_ways(TokioIo::new(client), upstream, shaped.as_ref(), control).await
    };
    tokio::select! {
        biased;
        ending = ended => debug!(%peer, ?ending, "tunnel ended by its connection's control"),
        copied = copied => match copied {
            Ok(()) => debug!(%peer, "tunnel closed by both sides"),
            Err(e) => debug!(%peer, error = %e, "tunnel ended"),
        },
    }
    // Both sides close as they are dropped here: the client's socket as its
    // control says (a reset, garbage), then the registration goes with the
    // last handle on the connection.
}

/// Copies until both sides have closed (each close passed on as a
/// half-close), or either fails.
async fn copy_both_ways<C, U>(
    client: C,
    upstream: U,
    shaped: Option<&Shaped>,
    control: &ConnControl,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let up = copy(&mut client_read, &mut upstream_write);
    let down = async {
        match shaped {
            None => copy(&mut upstream_read, &mut client_write).await,
            Some(shaped) => {
                copy_shaped(&mut upstream_read, &mut client_write, shaped, control).await
            }
        }
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// Copies one way until `from` closes, then closes `to` for writing.
async fn copy<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::io::copy(from, to).await?;
    // A peer that is gone already has nothing more to be told.
    let _ = to.shutdown().await;
    Ok(())
}

/// Copies the upstream's bytes to the client, paced and cut as `shaped`
/// says while the kill switch has not fired.
async fn copy_shaped<R, W>(
    from: &mut R,
    to: &mut W,
    shaped: &Shaped,
    control: &ConnControl,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0; BUFFER_BYTES];
    let mut sent = 0u64;
    let mut started = None;
    loop {
        if shaped.halt.is_halted() {
            // Halted: what is left goes as it comes.
            return copy(from, to).await;
        }
        let mut allowed = buffer.len();
        if let Some(rate) = shaped.bytes_per_sec {
            // 50 ms worth at a time, as a shaped body sends.
            let slice = (rate / PACING_SLICES_PER_SEC).max(1);
            allowed = allowed.min(usize::try_from(slice).unwrap_or(usize::MAX));
        }
        if let Some((after, _)) = shaped.truncate {
            if sent < after {
                allowed = allowed.min(usize::try_from(after - sent).unwrap_or(usize::MAX));
            }
        }
        let read = from.read(&mut buffer[..allowed]).await?;
        if read == 0 {
            // Closed at or before the cut: whole, nothing to break.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let started = *started.get_or_insert_with(Instant::now);
        if let Some((after, then)) = shaped.truncate {
            if sent >= after && !shaped.halt.is_halted() {
                // More than the fault lets through: these bytes never go.
                to.flush().await?;
                // A moment for the bytes before the cut to leave, as a
                // truncated body gives them, before a reset discards them.
                tokio::time::sleep(CUT_FLUSH_GRACE).await;
                control.abort(ending(then));
                return Err(io::Error::other("tunnel truncated by an injected fault"));
            }
        }
        to.write_all(&buffer[..read]).await?;
        sent += read as u64;
        if let Some(rate) = shaped.bytes_per_sec {
            // The next bytes wait until the average is back to the rate.
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::select! {
                biased;
                () = shaped.halt.halted() => {}
                () = tokio::time::sleep_until(due) => {}
            }
        }
    }
}
