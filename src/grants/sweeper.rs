//! The sweeper task: calls [`GrantStore::sweep`] on an interval, off the async runtime's
//! worker threads (a sweep may write and sync the journal), and keeps counters for
//! metrics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{task::JoinHandle, time::MissedTickBehavior};

use super::store::{GrantStore, SweepReport};
use crate::clock::Clock;

/// What the sweeper has done so far; read by metrics.
#[derive(Debug, Default)]
pub struct SweeperStats {
    sweeps: AtomicU64,
    expired: AtomicU64,
    dropped: AtomicU64,
    overdue: AtomicU64,
    last_duration_us: AtomicU64,
}

impl SweeperStats {
    /// Sweeps completed.
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::Relaxed)
    }

    /// Grants expired by sweeps.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// Grants dropped after retention.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// `revocation_overdue` events emitted.
    pub fn overdue(&self) -> u64 {
        self.overdue.load(Ordering::Relaxed)
    }

    /// Duration of the last sweep.
    pub fn last_duration(&self) -> Duration {
        Duration::from_micros(self.last_duration_us.load(Ordering::Relaxed))
    }

    fn record(&self, report: &SweepReport) {
        let add = |counter: &AtomicU64, n: usize| {
            counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        };
        add(&self.expired, report.expired);
        add(&self.dropped, report.dropped);
        add(&self.overdue, report.overdue);
        self.last_duration_us.store(
            u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running sweeper. Dropping it does not stop the task; call [`Sweeper::stop`].
#[derive(Debug)]
pub struct Sweeper {
    handle: JoinHandle<()>,
    stats: Arc<SweeperStats>,
}

impl Sweeper {
    /// Counters for metrics.
    pub fn stats(&self) -> &Arc<SweeperStats> {
        &self.stats
    }

    /// Stops the task and waits until it is gone (a sweep already running on the
    /// blocking pool finishes first), so the store it held can be closed.
    pub async fn stop(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Spawns the sweeper on the current tokio runtime: one sweep every `interval` (the
/// first at once) of what is due by `clock`'s time, delayed rather than bunched up when
/// a sweep overruns.
pub fn spawn_sweeper<S: GrantStore>(
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    interval: Duration,
) -> Sweeper {
    let stats = Arc::new(SweeperStats::default());
    let recorded = stats.clone();
    let handle = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let store = store.clone();
            let now = clock.now();
            let runtime = tokio::runtime::Handle::current();
            // On the blocking pool: the in-memory store sweeps on the calling thread.
            match tokio::task::spawn_blocking(move || runtime.block_on(store.sweep(now))).await {
                Ok(report) => {
                    recorded.record(&report);
                    if report.expired + report.dropped + report.overdue > 0 {
                        tracing::debug!(
                            expired = report.expired,
                            dropped = report.dropped,
                            overdue = report.overdue,
                            unjournaled = report.unjournaled,
                            compacted = report.compacted,
                            duration_us =
                                u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
                            "grant sweep"
                        );
                    }
                }
                Err(e) if e.is_cancelled() => return,
                Err(e) => tracing::error!(error = %e, "grant sweep panicked"),
            }
        }
    });
    Sweeper { handle, stats }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::{Clock, ManualClock},
        grants::{Grant, GrantRequest, GrantState, MemoryGrantStore},
        proto::v1,
    };
    use chrono::TimeDelta;

    #[tokio::test]
    async fn sweeper_expires_due_grants_at_its_first_tick() {
        let clock = ManualClock::at("2026-11-23T10:00:00Z".parse().unwrap());
        let store = Arc::new(MemoryGrantStore::ephemeral(Arc::new(clock.clone())));
        let now = clock.now();
        let grant = Grant::new(
            GrantRequest {
                subject: v1::Subject {
                    id: "s".into(),
                    ..Default::default()
                },
                action: "a".into(),
                resource: None,
                scope: vec![],
                workflow: None,
                required_approvals: 0,
                approval_deadline: now,
                ttl: TimeDelta::seconds(10),
                max_uses: 0,
                policy_revision: "r".into(),
                decision_id: uuid::Uuid::now_v7(),
            },
            now,
        )
        .unwrap();
        let id = store.create(grant).unwrap().id().to_string();
        clock.advance(TimeDelta::seconds(11));
        // The first tick is immediate: no waiting for the interval.
        let sweeper = spawn_sweeper(
            store.clone(),
            Arc::new(clock.clone()),
            Duration::from_secs(3600),
        );
        let stats = sweeper.stats().clone();
        for _ in 0..5000 {
            if stats.sweeps() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(stats.expired(), 1);
        assert!(stats.sweeps() >= 1);
        assert_eq!(store.stats().expired, 1);
        assert_eq!(store.get(&id).unwrap().state, GrantState::Expired);
        sweeper.stop().await;
    }
}
