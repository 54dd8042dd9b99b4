//! One budget for the request bytes the server holds at once, across every connection
//! and listener. The per-message limit (`--max-message-bytes`) bounds one request, the
//! connection cap and stream limit bound how many there are, but together they allow
//! gigabytes of half-sent messages; this bounds the sum. A body that would overrun the
//! budget fails with `RESOURCE_EXHAUSTED` (counted) instead of growing memory.
//!
//! What is charged is what the server will hold. tonic reserves a gRPC message's whole
//! announced length as soon as its 5-byte prefix arrives, so a gRPC body is charged the
//! announced length of the message it is in (given back when the next message starts
//! or the body is dropped): ten bytes announcing 900 KB cost 900 KB. Other bodies (HTTP)
//! are charged the bytes received, until dropped.
//!
//! [`CallLimit`] bounds the gRPC calls being received or decided at once, across all
//! connections (each stalled stream otherwise costs ~18 KB: its task, h2 state and
//! decode buffer): a call past it is answered `RESOURCE_EXHAUSTED` at once, before any
//! of its body is read. A call counts until its response starts (a unary call: until it
//! is answered; a stream: until its first response), so long-lived streams do not.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Buf;
use prometheus::IntCounter;

use super::error::ApiError;

/// The errors bodies carry.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The process-wide budget of buffered request bytes.
#[derive(Debug)]
pub struct RequestBudget {
    max: usize,
    held: AtomicUsize,
    refused: IntCounter,
}

impl RequestBudget {
    /// A budget of `max` bytes; refusals are counted in `refused`.
    pub fn new(max: usize, refused: IntCounter) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: AtomicUsize::new(0),
            refused,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The process-wide limit of gRPC calls not yet answered.
#[derive(Debug)]
pub struct CallLimit {
    max: usize,
    in_flight: AtomicUsize,
    refused: IntCounter,
}

impl CallLimit {
    /// At most `max` calls at once; refusals counted in `refused`.
    pub fn new(max: usize, refused: IntCounter) -> Arc<Self> {
        Arc::new(Self {
            max,
            in_flight: AtomicUsize::new(0),
            refused,
        })
    }

    /// A place for one more call, or `None` (counted) when `max` are in flight.
    pub fn start(self: &Arc<Self>) -> Option<CallPermit> {
        let started = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !started {
            self.refused.inc();
            return None;
        }
        Some(CallPermit {
            limit: self.clone(),
        })
    }
}

/// One call under the [`CallLimit`], until dropped.
#[derive(Debug)]
pub struct CallPermit {
    limit: Arc<CallLimit>,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a body is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    /// gRPC length-prefixed messages: the announced length of the current message.
    /// `prefix` holds the prefix bytes seen so far; `left` the current message's bytes
    /// still to come.
    Grpc {
        prefix: [u8; 5],
        seen: usize,
        left: usize,
    },
    /// Every byte received.
    Bytes,
}

/// A request body whose bytes are taken from a [`RequestBudget`] while it lives.
#[derive(Debug)]
pub struct BudgetedBody<B> {
    body: B,
    budget: Arc<RequestBudget>,
    charge: Charge,
    held: usize,
}

impl<B> BudgetedBody<B> {
    /// A gRPC request `body`, charged by announced message length.
    pub fn grpc(body: B, budget: Arc<RequestBudget>) -> Self {
        Self {
            body,
            budget,
            charge: Charge::Grpc {
                prefix: [0; 5],
                seen: 0,
                left: 0,
            },
            held: 0,
        }
    }

    /// Any other request `body`, charged by bytes received.
    pub fn bytes(body: B, budget: Arc<RequestBudget>) -> Self {
        Self {
            body,
            budget,
            charge: Charge::Bytes,
            held: 0,
        }
    }

    /// Charges `chunk` (the next bytes of the body); false when the budget is spent.
    fn account(&mut self, mut chunk: impl Buf) -> bool {
        let Charge::Grpc { prefix, seen, left } = &mut self.charge else {
            let n = chunk.remaining();
            if !self.budget.take(n) {
                return false;
            }
            self.held += n;
            return true;
        };
        while chunk.has_remaining() {
            if *left > 0 {
                let n = (*left).min(chunk.remaining());
                chunk.advance(n);
                *left -= n;
                continue;
            }
            let n = (prefix.len() - *seen).min(chunk.remaining());
            chunk.copy_to_slice(&mut prefix[*seen..*seen + n]);
            *seen += n;
            if *seen == prefix.len() {
                let announced =
                    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                // The previous message is complete (decoded or being decoded): its
                // charge moves to this one.
                self.budget.give(self.held);
                self.held = 0;
                if !self.budget.take(announced) {
                    return false;
                }
                self.held = announced;
                *seen = 0;
                *left = announced;
            }
        }
        true
    }
}

impl<B> Drop for BudgetedBody<B> {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

impl<B> http_body::Body for BudgetedBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref()
            && !self.account(data.chunk())
        {
            self.budget.refused.inc();
            tracing::warn!(
                held = self.budget.held(),
                max = self.budget.max,
                "request buffer budget exhausted: refusing a request"
            );
            return Poll::Ready(Some(Err(Box::new(tonic::Status::from(
                ApiError::Exhausted("the server holds too many request bytes; try again".into()),
            )))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[tokio::test]
    async fn bodies_share_the_budget_and_give_it_back_when_dropped() {
        let budget = RequestBudget::new(10, counter());
        let body = |text: &'static str| {
            BudgetedBody::bytes(
                http_body_util::Full::new(bytes::Bytes::from(text)),
                budget.clone(),
            )
        };
        let mut first = body("123456");
        assert!(first.frame().await.unwrap().is_ok());
        assert_eq!(budget.held(), 6);
        let mut second = body("12345");
        let err = second.frame().await.unwrap().unwrap_err();
        let status = err.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(budget.refused.get(), 1);
        drop(first);
        assert_eq!(budget.held(), 0);
        let mut third = body("12345");
        assert!(third.frame().await.unwrap().is_ok());
        drop(third);
        drop(second);
        assert_eq!(budget.held(), 0);
    }
}

#[cfg(test)]
mod grpc_tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_grpc_body_is_charged_what_its_messages_announce() {
        let budget = RequestBudget::new(1000, IntCounter::new("t", "t").unwrap());
        // Two frames: a 3-byte message, then a prefix announcing 900 bytes split across
        // the frames, with 2 of its bytes.
        let frames = vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from_static(
                &[0, 0, 0, 0, 3, 1, 2, 3, 0, 0],
            ))),
            Ok(http_body::Frame::data(bytes::Bytes::from_static(&[
                0, 3, 0x84, 9, 9,
            ]))),
        ];
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let mut body = BudgetedBody::grpc(body, budget.clone());
        body.frame().await.unwrap().unwrap();
        assert_eq!(budget.held(), 3);
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            budget.held(),
            900,
            "the announced length, not the bytes seen"
        );
        // Another body announcing 200 more does not fit.
        let frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(
            bytes::Bytes::from_static(&[0, 0, 0, 0, 200]),
        ))];
        let other = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let mut other = BudgetedBody::grpc(other, budget.clone());
        assert!(other.frame().await.unwrap().is_err());
        drop(body);
        drop(other);
        assert_eq!(budget.held(), 0);
    }
}
