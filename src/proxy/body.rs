//! The one response body type the proxy serves: the upstream's body streamed
//! as it arrives, or a body the proxy made itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::shape::ShapedBody;
use super::Connection;
use crate::grpc::{GrpcStatus, GRPC_STATUS};
use crate::metrics::UpstreamErrorReason;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An enum rather than a boxed body: no allocation per response.
#[derive(Debug)]
pub enum ResponseBody {
    Upstream(UpstreamBody),
    Synthetic(Full<Bytes>),
    /// Paced or cut by a body-shaping fault (boxed: rare, and large).
    Shaped(Box<ShapedBody>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Synthetic(Full::new(bytes.into()))
    }

    /// Has the upstream's body count its gRPC call when the call's status
    /// comes (its trailers); `false` for a body the proxy made, which has
    /// no trailers.
    pub(super) fn follow_grpc(&mut self) -> bool {
        match self {
            ResponseBody::Upstream(body) => {
                body.grpc = true;
                true
            }
            ResponseBody::Shaped(body) => body.inner_mut().follow_grpc(),
            ResponseBody::Synthetic(_) => false,
        }
    }

    /// Counts a followed gRPC call now, with `status`: a fault cut its body.
    pub(super) fn end_grpc(&mut self, status: GrpcStatus) {
        match self {
            ResponseBody::Upstream(body) => body.end_grpc(Some(status)),
            ResponseBody::Shaped(body) => body.inner_mut().end_grpc(status),
            ResponseBody::Synthetic(_) => {}
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(body) => body.poll_frame(cx),
            ResponseBody::Shaped(body) => Pin::new(body.as_mut()).poll_frame(cx),
            ResponseBody::Synthetic(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) => body.body.is_end_stream(),
            ResponseBody::Shaped(body) => body.is_end_stream(),
            ResponseBody::Synthetic(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(body) => body.body.size_hint(),
            ResponseBody::Shaped(body) => body.size_hint(),
            ResponseBody::Synthetic(body) => body.size_hint(),
        }
    }
}

/// An upstream's response body as its connection gives it: hyper's, for
/// HTTP/1.1 and forward traffic, or an HTTP/2 stream's.
#[derive(Debug)]
pub(super) enum Received {
    Http1(Incoming),
    Http2(super::h2::RecvBody),
}

impl Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Received::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(BoxError::from))),
            Received::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Http1(body) => body.is_end_stream(),
            Received::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Http1(body) => body.size_hint(),
            Received::Http2(body) => body.size_hint(),
        }
    }
}

/// An upstream's response body, streamed; one that breaks off is counted
/// as the upstream's protocol error.
pub struct UpstreamBody {
    body: Received,
    /// The connection the request came on, and through it the upstream's
    /// metrics: a handle of the connection's own, so counting a cut costs
    /// no shared atomic per response.
    conn: Arc<Connection>,
    upstream: usize,
    /// The request was counted as a success when its headers came: a cut
    /// body makes it a failure for guards and reports.
    counted_success: bool,
    /// A gRPC call not counted yet: its status comes in the trailers.
    grpc: bool,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    pub(super) fn new(
        body: Received,
        conn: Arc<Connection>,
        upstream: usize,
        counted_success: bool,
    ) -> Self {
        Self {
            body,
            conn,
            upstream,
            counted_success,
            grpc: false,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if self.grpc {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        let status = trailers.get(&GRPC_STATUS);
                        self.end_grpc(status.and_then(GrpcStatus::from_header));
                    }
                }
                // The stream is reset on: INTERNAL, as clients read it.
                Poll::Ready(Some(Err(_))) => self.end_grpc(Some(GrpcStatus::INTERNAL)),
                // Ended without trailers: no status.
                Poll::Ready(None) => self.end_grpc(None),
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(Some(Err(_))) = &polled {
            if let Some(metrics) = self.conn.proxy.upstream_metrics.get(self.upstream) {
                metrics.record_upstream_error(UpstreamErrorReason::Protocol);
                if std::mem::take(&mut self.counted_success) {
                    metrics.tally().record_cut();
                }
            }
        }
        polled
    }
}

impl UpstreamBody {
    /// Counts the followed gRPC call, once.
    fn end_grpc(&mut self, status: Option<GrpcStatus>) {
        if std::mem::take(&mut self.grpc) {
            if let Some(metrics) = self.conn.proxy.upstream_metrics.get(self.upstream) {
                metrics.record_grpc(status);
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.grpc {
            // Dropped before its trailers: at its end (hyper stops
            // polling a body that says it has ended), it had none; else the
            // client left mid-stream.
            let status = (!self.body.is_end_stream()).then_some(GrpcStatus::CANCELLED);
            self.end_grpc(status);
        }
    }
}

/// The body forwarded upstream: the client's, streamed, or, for a request
/// the kill switch let out of a blackhole, what was read of it while held
/// followed by the rest.
#[derive(Debug)]
pub(super) struct RequestBody {
    source: Source,
    /// Whether the last read of the client's body found nothing to read yet,
    /// when someone watches for it ([`RequestBody::watch_client`]).
    waiting: Option<Arc<AtomicBool>>,
}

#[derive(Debug)]
enum Source {
    Client(Incoming),
    Replayed(Box<Replayed>),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody {
            source: Source::Client(body),
            waiting: None,
        }
    }
}

impl RequestBody {
    /// What a held request read of its body, then the rest.
    pub(super) fn replayed(replayed: Box<Replayed>) -> Self {
        RequestBody {
            source: Source::Replayed(replayed),
            waiting: None,
        }
    }

    /// The body as read-ahead frames and the rest, to read further ahead:
    /// a body already read ahead keeps what it has.
    pub(super) fn into_replayed(self) -> Box<Replayed> {
        match self.source {
            Source::Client(body) => Box::new(Replayed::new(body)),
            Source::Replayed(replayed) => replayed,
        }
    }

    /// A flag that says, at any moment, whether sending the body on is
    /// waiting for the client: set while the last read of the client's body
    /// found nothing yet, cleared once bytes came. A timeout that finds it
    /// set is the client's stall; one that finds it clear (the upstream not
    /// reading, or the body never asked for) is the upstream's. `None` for a
    /// body that is whole already (most requests: no allocation for them).
    pub(super) fn watch_client(&mut self) -> Option<Arc<AtomicBool>> {
        if self.is_end_stream() {
            return None;
        }
        let waiting = Arc::new(AtomicBool::new(false));
        self.waiting = Some(Arc::clone(&waiting));
        Some(waiting)
    }
}

/// Frames read ahead of forwarding, then the body they came from.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    buffered: u64,
    rest: Option<Incoming>,
    /// Frames were read and thrown away: the body can no longer be forwarded.
    discarding: bool,
}

impl Replayed {
    pub(super) fn new(rest: Incoming) -> Self {
        Replayed {
            rest: Some(rest),
            ..Replayed::default()
        }
    }

    /// Bytes read ahead so far.
    pub(super) fn buffered(&self) -> u64 {
        self.buffered
    }

    /// From now on, frames read ahead are thrown away.
    pub(super) fn discard(&mut self) {
        self.discarding = true;
        self.frames.clear();
    }

    /// Whether the whole body has been read ahead.
    pub(super) fn is_complete(&self) -> bool {
        self.rest.is_none() && !self.discarding
    }

    /// The bytes read ahead, in one piece (a form body, to parse).
    pub(super) fn contiguous(&self) -> Bytes {
        let mut data = bytes::BytesMut::with_capacity(self.buffered as usize);
        for frame in &self.frames {
            if let Some(chunk) = frame.data_ref() {
                data.extend_from_slice(chunk);
            }
        }
        data.freeze()
    }

    /// Whether everything read ahead is still here to forward.
    pub(super) fn is_whole(&self) -> bool {
        !self.discarding
    }

    /// Reads one more frame ahead; `false` when the body has ended or failed
    /// (a failed body means the client left).
    pub(super) async fn read_ahead(&mut self) -> ReadAhead {
        use http_body_util::BodyExt;
        let Some(rest) = self.rest.as_mut() else {
            return ReadAhead::Ended;
        };
        match rest.frame().await {
            Some(Ok(frame)) => {
                self.buffered += frame.data_ref().map_or(0, |d| d.len() as u64);
                if !self.discarding {
                    // Copied to its own size: a slice of hyper's read buffer
                    // would keep the whole buffer, about twice the bytes kept.
                    let frame = match frame.into_data() {
                        Ok(data) => Frame::data(Bytes::copy_from_slice(&data)),
                        Err(frame) => frame,
                    };
                    self.frames.push_back(frame);
                }
                ReadAhead::More
            }
            Some(Err(_)) => ReadAhead::Failed,
            None => {
                self.rest = None;
                ReadAhead::Ended
            }
        }
    }
}

/// What reading one frame ahead found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadAhead {
    More,
    Ended,
    Failed,
}

/// The client's request body failed while it was sent on: a broken
/// chunked encoding, or the client leaving mid-upload. Its own type, so the
/// error hyper's client reports can be told from the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body failed")]
pub(super) struct ClientBodyError(#[source] pub hyper::Error);

impl ClientBodyError {
    /// Whether the client went away, rather than sent something broken.
    pub(super) fn is_abandoned(&self) -> bool {
        if self.0.is_incomplete_message() || self.0.is_canceled() {
            return true;
        }
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&self.0);
        while let Some(e) = current {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                return matches!(
                    io.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                );
            }
            current = e.source();
        }
        false
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Client(body) => Pin::new(body).poll_frame(cx),
            Source::Replayed(replayed) => {
                if let Some(frame) = replayed.frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                match replayed.rest.as_mut() {
                    Some(rest) => Pin::new(rest).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        };
        if let Some(waiting) = &this.waiting {
            waiting.store(polled.is_pending(), Ordering::Release);
        }
        polled.map(|frame| frame.map(|result| result.map_err(ClientBodyError)))
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Client(body) => body.size_hint(),
            Source::Replayed(replayed) => {
                let queued: u64 = replayed
                    .frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let rest = replayed
                    .rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + queued);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + queued);
                }
                hint
            }
        }
    }
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Client(body) => body.is_end_stream(),
            Source::Replayed(replayed) => {
                replayed.frames.is_empty()
                    && replayed.rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }
}
