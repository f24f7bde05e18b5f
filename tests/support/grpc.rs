//! gRPC fixtures: hand-written prost messages (no protoc, no build.rs) and
//! a tonic client that calls any method by path over h2c.

use http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The request of every test method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The reply of every test method.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

pub type Codec = tonic_prost::ProstCodec<EchoRequest, EchoReply>;

/// A tonic client on one h2c connection to `url` (`http://ADDR`).
pub struct GrpcClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GrpcClient {
    pub async fn connect(url: &str) -> GrpcClient {
        let channel = Endpoint::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// A unary call of `path` (`/package.Service/Method`).
    pub async fn unary(
        &mut self,
        path: &'static str,
        message: &str,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        self.unary_request(path, tonic::Request::new(request(message)))
            .await
    }

    /// A unary call with a request of the caller's (metadata, timeout).
    pub async fn unary_request(
        &mut self,
        path: &'static str,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        self.grpc.ready().await.unwrap();
        self.grpc
            .unary(request, PathAndQuery::from_static(path), Codec::default())
            .await
    }

    /// The underlying client, for the streaming call kinds.
    pub fn inner(&mut self) -> &mut tonic::client::Grpc<Channel> {
        &mut self.grpc
    }
}

pub fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
    }
}

/// One metadata value of a failed call, as text.
pub fn metadata<'a>(status: &'a tonic::Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).and_then(|v| v.to_str().ok())
}
