//! Admission of policy evaluations onto the async workers.
//!
//! An evaluation runs inline on the tokio worker that received the call: for decisions of
//! a few microseconds, handing each to another thread would cost more than the decision.
//! But an evaluation may run up to `--eval-timeout`, and while it runs its worker answers
//! nothing else. The gate lets at most `workers - 1` evaluations run at once (one on a
//! single worker), so with two workers or more one is always left for `/health`, metrics,
//! grant reads and the transport itself; calls beyond that wait for their turn
//! asynchronously, in arrival order, without holding a worker.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

/// Caps how many evaluations run at once. See the module docs.
#[derive(Debug)]
pub struct EvalGate {
    permits: Semaphore,
    size: usize,
    waits: AtomicU64,
}

/// An admitted evaluation's place; dropping it lets the next one in.
pub type EvalPermit<'a> = Option<SemaphorePermit<'a>>;

impl EvalGate {
    /// A gate admitting `concurrent` evaluations at once (at least one).
    pub fn new(concurrent: usize) -> Self {
        let size = concurrent.max(1);
        Self {
            permits: Semaphore::new(size),
            size,
            waits: AtomicU64::new(0),
        }
    }

    /// The gate for a runtime of `workers` async workers: one worker is kept free.
    pub fn for_workers(workers: usize) -> Self {
        Self::new(workers.saturating_sub(1))
    }

    /// The gate for the current tokio runtime (one evaluation at a time outside one).
    pub fn for_current_runtime() -> Self {
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1);
        Self::for_workers(workers)
    }

    /// Waits (asynchronously) until an evaluation may start; hold the permit while it
    /// runs. Uncontended, this is one atomic operation.
    pub async fn admit(&self) -> EvalPermit<'_> {
        match self.permits.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                // The semaphore is never closed, so this is always a permit.
                self.permits.acquire().await.ok()
            }
        }
    }

    /// How many evaluations may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many evaluations had to wait for their turn so far.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_is_kept_free_and_a_single_worker_still_evaluates() {
        assert_eq!(EvalGate::for_workers(8).size(), 7);
        assert_eq!(EvalGate::for_workers(2).size(), 1);
        assert_eq!(EvalGate::for_workers(1).size(), 1);
        assert_eq!(EvalGate::for_workers(0).size(), 1);
    }

    #[tokio::test]
    async fn calls_past_the_cap_wait_for_a_permit_without_blocking() {
        let gate = EvalGate::new(1);
        let first = gate.admit().await;
        assert!(first.is_some());
        // The second cannot get in while the first holds its place...
        let second = gate.admit();
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(1), &mut second)
                .await
                .is_err()
        );
        assert_eq!(gate.waits(), 1);
        // ...and gets in once it is done.
        drop(first);
        assert!(second.await.is_some());
    }
}
