//! Response bodies shaped by `bandwidth`, `dribble` and `truncate` faults:
//! the body still streams, frame by frame, but paced or cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::body::{BoxError, ResponseBody};
use crate::control::HaltSignal;
use crate::fault::Shaping;
use crate::grpc::GrpcStatus;
use crate::server::ConnControl;

/// How long a truncated body, or tunnel, waits for its last bytes to flush
/// before the connection fails (a reset would discard them).
pub(super) const CUT_FLUSH_GRACE: Duration = Duration::from_millis(50);

/// The most a bandwidth-limited body, or tunnel, sends at once: 50 ms worth
/// of its rate.
pub(super) const PACING_SLICES_PER_SEC: u64 = 20;

/// A body paced and possibly cut, per the plan's [`Shaping`].
pub struct ShapedBody {
    inner: ResponseBody,
    shaping: Shaping,
    /// The connection to fail when the body is cut; `None` on HTTP/2, where
    /// the body's error resets only its stream.
    control: Option<Arc<ConnControl>>,
    /// Data taken from `inner` but not sent yet.
    pending: Bytes,
    sent: u64,
    started: Option<Instant>,
    /// Dribble: pieces still to send, and the body's length when known.
    pieces_left: u64,
    total: Option<u64>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Truncate reached: waiting for the bytes before the cut to flush.
    cutting: bool,
    /// Truncated: the connection is failing; nothing more is sent.
    cut: bool,
    /// The kill switch: once cancelled, the rest of the body goes unshaped.
    halt: Arc<HaltSignal>,
    halted: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for ShapedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapedBody")
            .field("sent", &self.sent)
            .finish()
    }
}

impl ShapedBody {
    pub fn new(
        inner: ResponseBody,
        shaping: Shaping,
        control: Option<Arc<ConnControl>>,
        halt: Arc<HaltSignal>,
    ) -> Self {
        let total = inner.size_hint().exact();
        let pieces_left = shaping.dribble.map_or(0, |(chunks, _)| chunks);
        Self {
            inner,
            shaping,
            control,
            pending: Bytes::new(),
            sent: 0,
            started: None,
            pieces_left,
            total,
            sleep: None,
            cutting: false,
            cut: false,
            halted: Box::pin(halt.halted_owned()),
            halt,
        }
    }

    /// The body being shaped.
    pub(super) fn inner_mut(&mut self) -> &mut ResponseBody {
        &mut self.inner
    }

    /// How many bytes may go now, and when to look again if none may.
    fn allowance(&mut self) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        let mut allowed = usize::MAX;
        let mut wake = None;
        if let Some(rate) = self.shaping.bytes_per_sec {
            let rate = rate.max(1);
            let budget = (now - started).as_secs_f64() * rate as f64;
            let slice = (rate / PACING_SLICES_PER_SEC).max(1);
            let ahead = budget as u64;
            if ahead > self.sent {
                allowed = allowed
                    .min(usize::try_from((ahead - self.sent).min(slice)).unwrap_or(usize::MAX));
            } else {
                allowed = 0;
                let due = Duration::from_secs_f64((self.sent + slice) as f64 / rate as f64);
                wake = Some(started + due);
            }
        }
        if let Some(end) = self.piece_end() {
            allowed =
                allowed.min(usize::try_from(end.saturating_sub(self.sent)).unwrap_or(usize::MAX));
        }
        if let Some((after, _)) = self.shaping.truncate {
            allowed =
                allowed.min(usize::try_from(after.saturating_sub(self.sent)).unwrap_or(usize::MAX));
        }
        (allowed, wake)
    }

    /// Where the current dribble piece ends: piece k of n ends at
    /// ⌈k·total/n⌉, or every 16 KiB when the length is unknown.
    fn piece_end(&self) -> Option<u64> {
        let (chunks, _) = self.shaping.dribble?;
        if self.pieces_left == 0 {
            return None;
        }
        let k = chunks - self.pieces_left + 1;
        Some(match self.total {
            Some(total) => {
                (u128::from(k) * u128::from(total)).div_ceil(u128::from(chunks.max(1))) as u64
            }
            None => k.saturating_mul(16 * 1024),
        })
    }

    fn dribble_interval(&self) -> Option<Duration> {
        let (chunks, over) = self.shaping.dribble?;
        Some(over / u32::try_from(chunks.max(1)).unwrap_or(u32::MAX))
    }
}

impl Body for ShapedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.cut {
                return Poll::Pending;
            }
            if !this.cutting && this.halt.is_halted() {
                // Halted: what is left goes as it comes.
                this.sleep = None;
                if !this.pending.is_empty() {
                    let rest = std::mem::take(&mut this.pending);
                    this.sent += rest.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Pin::new(&mut this.inner).poll_frame(cx);
            }
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    if this.cutting {
                        // Too late to let go: the cut has begun.
                        return Poll::Pending;
                    }
                    ready!(this.halted.as_mut().poll(cx));
                    continue;
                }
                this.sleep = None;
            }
            if this.pending.is_empty() {
                match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => this.pending = data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    // A body that ends at or before the cut is whole: nothing to break.
                    None => return Poll::Ready(None),
                }
                continue;
            }
            if let Some((after, then)) = this.shaping.truncate {
                if this.sent >= after && !this.cutting {
                    // Pending for a moment lets hyper flush what was sent, so
                    // the client gets those bytes before the connection fails.
                    this.cutting = true;
                    this.sleep = Some(Box::pin(tokio::time::sleep(CUT_FLUSH_GRACE)));
                    continue;
                }
                if this.sent >= after {
                    // The client keeps the original content-length and sees a broken body.
                    this.cut = true;
                    // A gRPC call's stream is reset: the client reads INTERNAL.
                    this.inner.end_grpc(GrpcStatus::INTERNAL);
                    if let Some(control) = &this.control {
                        control.abort(super::inject::ending(then));
                    }
                    return Poll::Ready(Some(Err("body truncated by an injected fault".into())));
                }
            }
            let (allowed, wake) = this.allowance();
            if allowed == 0 {
                let at = wake.unwrap_or_else(|| Instant::now() + Duration::from_millis(1));
                this.sleep = Some(Box::pin(tokio::time::sleep_until(at)));
                continue;
            }
            let piece = this.pending.split_to(allowed.min(this.pending.len()));
            this.sent += piece.len() as u64;
            if this.piece_end() == Some(this.sent) {
                // A piece is complete: the next one waits its turn.
                this.pieces_left -= 1;
                if let Some(interval) = this.dribble_interval() {
                    this.sleep = Some(Box::pin(tokio::time::sleep(interval)));
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream() && !self.cut
    }

    fn size_hint(&self) -> SizeHint {
        // The original length stands, truncated or not: a cut body is broken, not short.
        let mut hint = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        hint.set_lower(hint.lower() + pending);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}
