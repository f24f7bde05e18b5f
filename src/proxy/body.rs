//! The one response body type the proxy serves: the upstream's body streamed
//! as it arrives, or a body the proxy made itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::shape::ShapedBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An enum rather than a boxed body: no allocation per response.
#[derive(Debug)]
pub enum ResponseBody {
    Upstream(Incoming),
    Synthetic(Full<Bytes>),
    /// Paced or cut by a body-shaping fault (boxed: rare, and large).
    Shaped(Box<ShapedBody>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Synthetic(Full::new(bytes.into()))
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
            ResponseBody::Upstream(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(BoxError::from))),
            ResponseBody::Shaped(body) => Pin::new(body.as_mut()).poll_frame(cx),
            ResponseBody::Synthetic(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Shaped(body) => body.is_end_stream(),
            ResponseBody::Synthetic(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Shaped(body) => body.size_hint(),
            ResponseBody::Synthetic(body) => body.size_hint(),
        }
    }
}

/// The body forwarded upstream: the client's, streamed, or, for a request
/// the kill switch let out of a blackhole, what was read of it while held
/// followed by the rest.
#[derive(Debug)]
pub enum RequestBody {
    Client(Incoming),
    Replayed(Box<Replayed>),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody::Client(body)
    }
}

/// Frames read ahead of forwarding, then the body they came from.
#[derive(Debug, Default)]
pub struct Replayed {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    buffered: u64,
    rest: Option<Incoming>,
    /// Frames were read and thrown away: the body can no longer be forwarded.
    discarding: bool,
}

impl Replayed {
    pub fn new(rest: Incoming) -> Self {
        Replayed {
            rest: Some(rest),
            ..Replayed::default()
        }
    }

    /// Bytes read ahead so far.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// From now on, frames read ahead are thrown away.
    pub fn discard(&mut self) {
        self.discarding = true;
        self.frames.clear();
    }

    /// Whether everything read ahead is still here to forward.
    pub fn is_whole(&self) -> bool {
        !self.discarding
    }

    /// Reads one more frame ahead; `false` when the body has ended or failed
    /// (a failed body means the client left).
    pub async fn read_ahead(&mut self) -> ReadAhead {
        use http_body_util::BodyExt;
        let Some(rest) = self.rest.as_mut() else {
            return ReadAhead::Ended;
        };
        match rest.frame().await {
            Some(Ok(frame)) => {
                self.buffered += frame.data_ref().map_or(0, |d| d.len() as u64);
                if !self.discarding {
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
pub enum ReadAhead {
    More,
    Ended,
    Failed,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Replayed(replayed) => {
                if let Some(frame) = replayed.frames.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                match replayed.rest.as_mut() {
                    Some(rest) => Pin::new(rest).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Replayed(replayed) => {
                replayed.frames.is_empty()
                    && replayed.rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Replayed(replayed) => {
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
