//! Server reflection's request stream, checked: a request message that cannot be decoded
//! ends the call `INVALID_ARGUMENT` naming what failed, as on every other service.
//!
//! tonic-reflection decodes its bidirectional stream with prost's codec inside its own
//! service, and its handler ends the response stream *OK* on a request it cannot decode,
//! so neither a codec of ours nor its handler can say what failed. [`CheckedStream`]
//! decodes each complete request frame as it passes (the codec's one mapping,
//! `codec::refusal`); on the first malformed one it fails the request body with that
//! status and puts the status in the response's trailers (or its headers, when the
//! answer has no body) in place of whatever the service ended with. Frames that arrived
//! in the same chunk before the malformed one are not delivered.

use std::{
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use tonic::{Status, body::Body, codegen::Service, server::NamedService};

use super::codec::refusal;

/// The gRPC frame header: a compression flag and a big-endian length.
const FRAME_HEADER: usize = 5;

/// Frames longer than this are left to the service, which refuses them (tonic's default
/// decoding limit, which the reflection services keep), so a checked stream buffers at
/// most one frame of this size.
const MAX_CHECKED_FRAME: usize = 4 * 1024 * 1024;

/// `S` (a service whose requests are a stream of `M`), its request frames checked.
#[derive(Debug)]
pub struct CheckedStream<S, M> {
    inner: S,
    message: PhantomData<fn() -> M>,
}

impl<S: Clone, M> Clone for CheckedStream<S, M> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<S, M> CheckedStream<S, M> {
    /// Checks the requests to `inner` as `M` messages.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            message: PhantomData,
        }
    }
}

impl<S: NamedService, M> NamedService for CheckedStream<S, M> {
    const NAME: &'static str = S::NAME;
}

impl<S, M> Service<Request<Body>> for CheckedStream<S, M>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    M: Message + Default + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let refusal = Arc::new(OnceLock::new());
        let request = request.map(|body| {
            Body::new(CheckedRequest::<M> {
                inner: body,
                pending: BytesMut::new(),
                checking: true,
                refusal: refusal.clone(),
                message: PhantomData,
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if response.headers().contains_key("grpc-status")
                && let Some(status) = refusal.get()
            {
                // A trailers-only answer: the status is in the headers.
                let _ = status.add_header(response.headers_mut());
            }
            Ok(response.map(|body| {
                Body::new(RefusedResponse {
                    inner: body,
                    refusal,
                    ended: false,
                })
            }))
        })
    }
}

/// A request body whose complete frames are decoded as `M` on their way through.
struct CheckedRequest<M> {
    inner: Body,
    /// The start of a frame not yet complete.
    pending: BytesMut,
    /// Whether frames are still being checked (not after one too long to check).
    checking: bool,
    refusal: Arc<OnceLock<Status>>,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> CheckedRequest<M> {
    /// Decodes the complete frames in `pending`: the first malformed one's status.
    fn check_frames(&mut self) -> Result<(), Status> {
        while self.checking && self.pending.len() >= FRAME_HEADER {
            let compressed = self.pending[0] != 0;
            let mut length = [0; 4];
            length.copy_from_slice(&self.pending[1..FRAME_HEADER]);
            let length = usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
            if length > MAX_CHECKED_FRAME {
                self.checking = false;
                self.pending = BytesMut::new();
                break;
            }
            if self.pending.len() < FRAME_HEADER + length {
                break;
            }
            let mut frame = self.pending.split_to(FRAME_HEADER + length);
            frame.advance(FRAME_HEADER);
            // A compressed frame is the service's to refuse or decode.
            if !compressed && let Err(error) = M::decode(frame) {
                return Err(refusal(&error));
            }
        }
        Ok(())
    }
}

impl<M: Message + Default> HttpBody for CheckedRequest<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(status) = this.refusal.get() {
            return Poll::Ready(Some(Err(status.clone())));
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let data = match &frame {
            Some(Ok(frame)) if this.checking => frame.data_ref(),
            _ => None,
        };
        if let Some(data) = data {
            this.pending.extend_from_slice(data);
            if let Err(status) = this.check_frames() {
                let _ = this.refusal.set(status.clone());
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.refusal.get().is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose final status is the request's refusal, when there was one.
struct RefusedResponse {
    inner: Body,
    refusal: Arc<OnceLock<Status>>,
    /// Whether trailers went out.
    ended: bool,
}

impl RefusedResponse {
    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut trailers = HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Frame::trailers(trailers)
    }
}

impl HttpBody for RefusedResponse {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) if frame.is_trailers() => {
                this.ended = true;
                Poll::Ready(Some(Ok(match this.refusal.get() {
                    Some(status) => Self::trailers(status),
                    None => frame,
                })))
            }
            None => {
                this.ended = true;
                Poll::Ready(this.refusal.get().map(|status| Ok(Self::trailers(status))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    fn checked(
        chunks: Vec<Vec<u8>>,
    ) -> (
        CheckedRequest<ServerReflectionRequest>,
        Arc<OnceLock<Status>>,
    ) {
        let refusal = Arc::new(OnceLock::new());
        let stream = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, Status>(Frame::data(Bytes::from(chunk)))),
        );
        let body = CheckedRequest {
            inner: Body::new(http_body_util::StreamBody::new(stream)),
            pending: BytesMut::new(),
            checking: true,
            refusal: refusal.clone(),
            message: PhantomData,
        };
        (body, refusal)
    }

    #[tokio::test]
    async fn valid_frames_pass_whole_even_split_across_chunks() {
        let message = ServerReflectionRequest {
            host: "h".into(),
            message_request: None,
        }
        .encode_to_vec();
        let frame = framed(&message);
        let (first, second) = frame.split_at(3);
        let (body, refusal) = checked(vec![first.to_vec(), second.to_vec(), frame.clone()]);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 2 * frame.len());
        assert!(refusal.get().is_none());
    }

    #[tokio::test]
    async fn a_malformed_frame_fails_the_body_and_is_remembered() {
        let (mut body, refusal) =
            checked(vec![framed(&[0x0A, 0x05, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])]);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with("request: invalid UTF-8"),
            "{err:?}"
        );
        assert_eq!(
            refusal.get().map(Status::code),
            Some(tonic::Code::InvalidArgument)
        );
    }

    #[tokio::test]
    async fn a_refused_request_replaces_the_final_status() {
        let refusal = Arc::new(OnceLock::new());
        let _ = refusal.set(Status::invalid_argument("request: nested too deeply"));
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", "0".parse().unwrap());
        let stream = tokio_stream::iter([Ok::<_, Status>(Frame::trailers(ok))]);
        let body = RefusedResponse {
            inner: Body::new(http_body_util::StreamBody::new(stream)),
            refusal,
            ended: false,
        };
        let trailers = body.collect().await.unwrap().trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "3");
        assert_eq!(trailers["grpc-message"], "request:%20nested%20too%20deeply");
    }
}
