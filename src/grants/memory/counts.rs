//! Per-state counts of the grants held, for metrics.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::grants::{
    model::{Grant, GrantState},
    store::StoreStats,
};

/// Per-state counters (signed: a reader may see an update half-accounted).
#[derive(Debug, Default)]
pub(super) struct Counts {
    grants: AtomicI64,
    by_state: [AtomicI64; 5],
    awaiting: AtomicI64,
    overdue: AtomicI64,
}

impl Counts {
    pub(super) fn add(&self, grant: &Grant, sign: i64) {
        self.grants.fetch_add(sign, Ordering::Relaxed);
        self.by_state[grant.state.index()].fetch_add(sign, Ordering::Relaxed);
        if grant.awaits_confirmation() {
            self.awaiting.fetch_add(sign, Ordering::Relaxed);
            if grant.overdue_reported() {
                self.overdue.fetch_add(sign, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn replace(&self, before: &Grant, after: &Grant) {
        self.add(before, -1);
        self.add(after, 1);
    }

    fn read(v: &AtomicI64) -> u64 {
        u64::try_from(v.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// The counts as of now.
    pub(super) fn stats(&self) -> StoreStats {
        let c = self;
        let state = |s: GrantState| {
            GrantState::ALL
                .iter()
                .position(|x| *x == s)
                .map_or(0, |i| Counts::read(&c.by_state[i]))
        };
        StoreStats {
            grants: Counts::read(&c.grants),
            pending: state(GrantState::Pending),
            active: state(GrantState::Active),
            rejected: state(GrantState::Rejected),
            expired: state(GrantState::Expired),
            revoked: state(GrantState::Revoked),
            awaiting_confirmation: Counts::read(&c.awaiting),
            revocations_overdue: Counts::read(&c.overdue),
        }
    }
}
