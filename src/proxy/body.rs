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
