//! Refuses a request to the gRPC listeners whose `content-type` is not gRPC's, as the
//! gRPC HTTP/2 protocol says a server should: HTTP 415 Unsupported Media Type, so a
//! plain HTTP/2 client does not read a gRPC error (HTTP 200) as a success. The answer
//! also carries `grpc-status: INVALID_ARGUMENT` naming the content type, for gRPC
//! clients that read it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response, StatusCode, header::CONTENT_TYPE};
use tonic::{Code, codegen::Service};
use tower_layer::Layer;

/// What every gRPC content type starts with (`application/grpc`, `application/grpc+proto`).
const GRPC: &[u8] = b"application/grpc";

/// The layer: wraps the gRPC router in [`CheckedContentType`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcContentType;

impl<S> Layer<S> for GrpcContentType {
    type Service = CheckedContentType<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckedContentType(inner)
    }
}

/// `S`, but a request without a gRPC content type is answered 415 without reaching it.
#[derive(Debug, Clone)]
pub struct CheckedContentType<S>(S);

/// Whether `content_type` is one of gRPC's (compared as the protocol says: a prefix,
/// ASCII case-insensitively, as HTTP media types are).
fn is_grpc(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.as_bytes().get(..GRPC.len()))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(GRPC))
}

/// The 415 answer for a request whose content type is `content_type`.
fn unsupported<B: Default>(content_type: Option<&HeaderValue>) -> Response<B> {
    let got = content_type.map_or_else(
        || "none".to_string(),
        |value| format!("{:?}", String::from_utf8_lossy(value.as_bytes())),
    );
    let message = format!("content-type must be application/grpc (got {got})");
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    let headers = response.headers_mut();
    headers.insert(
        "grpc-status",
        HeaderValue::from(Code::InvalidArgument as i32),
    );
    // The message is percent-encoded as gRPC requires (no raw controls or non-ASCII).
    let encoded =
        percent_encoding::utf8_percent_encode(&message, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

impl<S, B, ResBody> Service<Request<B>> for CheckedContentType<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Checked<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let content_type = request.headers().get(CONTENT_TYPE);
        if is_grpc(content_type) {
            Checked::Inner {
                future: self.0.call(request),
            }
        } else {
            Checked::Refused {
                response: Some(unsupported(content_type)),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, or the 415 answer: no allocation per request.
    #[project = CheckedProjection]
    pub enum Checked<F, R> {
        /// A gRPC request, passed on.
        Inner { #[pin] future: F },
        /// Refused; taken when polled.
        Refused { response: Option<R> },
    }
}

impl<F, R, E> Future for Checked<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckedProjection::Inner { future } => future.poll(cx),
            CheckedProjection::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_pass_and_others_do_not() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC",
        ] {
            assert!(is_grpc(Some(&HeaderValue::from_static(grpc))), "{grpc}");
        }
        for other in ["text/plain", "application/json", "application/grp", ""] {
            assert!(!is_grpc(Some(&HeaderValue::from_static(other))), "{other}");
        }
        assert!(!is_grpc(None));
    }

    #[test]
    fn the_refusal_is_415_with_invalid_argument() {
        let response: Response<()> = unsupported(Some(&HeaderValue::from_static("text/plain")));
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(response.headers()["grpc-status"], "3");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        let decoded = percent_encoding::percent_decode_str(message).decode_utf8_lossy();
        assert_eq!(
            decoded,
            r#"content-type must be application/grpc (got "text/plain")"#
        );
    }
}
