//! One direction of a TCP connection: the bytes of one side copied to the
//! other, as they come (the cheap loop: one read, one write, one counter
//! add per piece) or through the direction's faults ([`StreamFaults`])
//! until they are lifted.
//!
//! Back-pressure comes from the one bounded buffer per direction: nothing
//! is read while the previous piece has not been written, so a slow reader
//! slows its writer down through TCP itself and memory never grows with
//! the traffic.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use prometheus::IntCounter;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::lift::Lift;
use crate::fault::AbortMode;
use crate::plan::StreamFaults;

/// What one read may take: the most a direction holds at once.
pub const BUFFER_BYTES: usize = 32 * 1024;
/// How many slices a second a `bandwidth` fault paces by (as HTTP bodies).
const PACING_SLICES_PER_SEC: u64 = 20;

/// How a direction ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The sender closed; the close was passed on (a half-close).
    Closed,
    /// A `truncate` fault cut the connection: it ends this way.
    Cut(AbortMode),
}

/// Copies until `from` closes, then closes `to` for writing: a half-close,
/// so the other direction goes on.
///
/// The buffer is taken when bytes are there to read and given back as soon
/// as the socket has no more (a read would block), so an idle connection
/// holds no buffer at all; it is never zeroed (bytes are read into its
/// spare capacity).
pub async fn plain<W>(
    from: &mut ReadHalf<'_>,
    to: &mut W,
    counter: &IntCounter,
) -> io::Result<Ended>
where
    W: AsyncWrite + Unpin,
{
    let socket: &TcpStream = from.as_ref();
    let mut buffer = BytesMut::new();
    loop {
        socket.readable().await?;
        if buffer.capacity() == 0 {
            buffer.reserve(BUFFER_BYTES);
        }
        match socket.try_read_buf(&mut buffer) {
            Ok(0) => {
                // A peer that is gone already has nothing more to be told.
                let _ = to.shutdown().await;
                return Ok(Ended::Closed);
            }
            Ok(read) => {
                to.write_all(&buffer).await?;
                buffer.clear();
                counter.inc_by(read as u64);
            }
            // Idle: the buffer goes back to the allocator until bytes come.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buffer = BytesMut::new(),
            Err(e) => return Err(e),
        }
    }
}

/// Copies through `faults` until `lift` fires (a halt, or a rule that
/// fired on this connection turning off), then as [`plain`].
pub async fn faulted<W>(
    from: &mut ReadHalf<'_>,
    to: &mut W,
    faults: StreamFaults,
    lift: &Lift,
    seed: u64,
    counter: &IntCounter,
) -> io::Result<Ended>
where
    W: AsyncWrite + Unpin,
{
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buffer = vec![0; BUFFER_BYTES];
    let mut sent = 0u64;
    let mut started: Option<Instant> = None;
    loop {
        if lift.is_lifted() {
            return plain(from, to, counter).await;
        }
        if let Some((after, then)) = faults.truncate {
            if sent >= after {
                // The bytes before the cut are on their way; the rest never go.
                to.flush().await?;
                return Ok(Ended::Cut(then));
            }
        }
        let mut allowed = buffer.len();
        if let Some(rate) = faults.bytes_per_sec {
            let slice = (rate / PACING_SLICES_PER_SEC).max(1);
            allowed = allowed.min(usize::try_from(slice).unwrap_or(usize::MAX));
        }
        if let Some((after, _)) = faults.truncate {
            allowed = allowed.min(usize::try_from(after - sent).unwrap_or(usize::MAX));
        }
        let read = tokio::select! {
            biased;
            () = lift.lifted() => continue,
            read = from.read(&mut buffer[..allowed]) => read?,
        };
        let read_at = Instant::now();
        if read == 0 {
            if let Some(delay) = faults.slow_close {
                lift.sleep(delay).await;
            }
            let _ = to.shutdown().await;
            return Ok(Ended::Closed);
        }
        if !faults.delay.is_zero() || !faults.jitter.is_zero() {
            let delay = jittered(faults.delay, faults.jitter, &mut rng);
            lift.sleep_until(read_at + delay).await;
        }
        match faults.slice {
            Some((average, variation, gap)) if !lift.is_lifted() => {
                let mut rest = &buffer[..read];
                while !rest.is_empty() {
                    let size = piece_size(average, variation, &mut rng).min(rest.len());
                    let (piece, after) = rest.split_at(size);
                    to.write_all(piece).await?;
                    rest = after;
                    if !rest.is_empty() && !gap.is_zero() {
                        lift.sleep(gap).await;
                    }
                }
            }
            _ => to.write_all(&buffer[..read]).await?,
        }
        counter.inc_by(read as u64);
        sent += read as u64;
        if let Some(rate) = faults.bytes_per_sec {
            // The next bytes wait until the average is back to the rate.
            let started = *started.get_or_insert(read_at);
            lift.sleep_until(started + Duration::from_secs_f64(sent as f64 / rate as f64))
                .await;
        }
    }
}

/// `delay` give or take `jitter`, uniformly.
fn jittered(delay: Duration, jitter: Duration, rng: &mut SmallRng) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let spread = rng.random_range(0.0..=2.0) * jitter.as_secs_f64();
    Duration::from_secs_f64((delay.as_secs_f64() - jitter.as_secs_f64() + spread).max(0.0))
}

/// A piece of `average` ± `variation` bytes, at least one.
fn piece_size(average: u64, variation: u64, rng: &mut SmallRng) -> usize {
    let size = if variation == 0 {
        average
    } else {
        rng.random_range(average - variation..=average + variation)
    };
    usize::try_from(size.max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_jitter_stay_within_their_bounds() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let size = piece_size(100, 20, &mut rng);
            assert!((80..=120).contains(&size), "{size}");
            let d = jittered(
                Duration::from_millis(100),
                Duration::from_millis(10),
                &mut rng,
            );
            assert!(d >= Duration::from_millis(90) && d <= Duration::from_millis(110));
        }
        assert_eq!(piece_size(1, 0, &mut rng), 1);
    }
}
