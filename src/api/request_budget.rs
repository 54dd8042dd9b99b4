//! One budget for the request bytes the server holds at once, across every connection
//! and listener. The per-message limit (`--max-message-bytes`) bounds one request, the
//! connection cap and stream limit bound how many there are, but together they allow
//! gigabytes of half-sent messages; this bounds the sum. A request body's bytes are
//! taken from the budget as they arrive and given back when the body is dropped (once
//! the message is decoded, or the call ends). A body that would overrun the budget fails
//! with `RESOURCE_EXHAUSTED` (counted) instead of growing memory.

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

/// A request body whose bytes are taken from a [`RequestBudget`] while it lives.
#[derive(Debug)]
pub struct BudgetedBody<B> {
    body: B,
    budget: Arc<RequestBudget>,
    held: usize,
}

impl<B> BudgetedBody<B> {
    /// `body`, accounted in `budget`.
    pub fn new(body: B, budget: Arc<RequestBudget>) -> Self {
        Self {
            body,
            budget,
            held: 0,
        }
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
        if let Some(data) = frame.data_ref() {
            let n = data.remaining();
            if !self.budget.take(n) {
                self.budget.refused.inc();
                tracing::warn!(
                    held = self.budget.held(),
                    max = self.budget.max,
                    "request buffer budget exhausted: refusing a request"
                );
                return Poll::Ready(Some(Err(Box::new(tonic::Status::resource_exhausted(
                    "the server holds too many request bytes; try again",
                )))));
            }
            self.held += n;
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
            BudgetedBody::new(
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
