//! The store used directly, on its own clock: the embedding API (tests, benchmarks,
//! the server's own housekeeping), each call at the clock's time. The grant workflow
//! goes through [`GrantStore`](crate::grants::GrantStore) instead, with its time.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::MemoryGrantStore;
use crate::grants::{
    model::{Approval, Grant, GrantEvent, Revocation},
    store::{
        Change, GrantView, ListFilter, Page, RevokeScope, StoreError, StoreStats, SweepReport,
        Updated,
    },
};

impl MemoryGrantStore {
    /// The store's clock's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Stores a new PENDING or ACTIVE grant; see [`GrantStore::create`](crate::grants::GrantStore::create).
    pub fn create(&self, grant: Grant) -> Result<Arc<Grant>, StoreError> {
        self.create_at(grant, self.now())
    }

    /// The grant as of now; see [`GrantStore::get`](crate::grants::GrantStore::get).
    pub fn get(&self, id: &str) -> Option<Arc<Grant>> {
        self.get_at(id, self.now())
    }

    /// Applies `change` atomically; see [`GrantStore::transition`](crate::grants::GrantStore::transition).
    pub fn update(&self, id: &str, change: Change<'_>) -> Result<Updated, StoreError> {
        self.apply(id, change, self.now())
    }

    /// Revokes every non-terminal grant of a workflow.
    pub fn revoke_workflow(
        &self,
        workflow_id: &str,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError> {
        self.revoke_scope(RevokeScope::Workflow(workflow_id), revocation, self.now())
    }

    /// Revokes every non-terminal grant of a subject.
    pub fn revoke_subject(
        &self,
        subject_id: &str,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError> {
        self.revoke_scope(RevokeScope::Subject(subject_id), revocation, self.now())
    }

    /// One page of the grants matching `filter`; see [`GrantStore::list`](crate::grants::GrantStore::list).
    pub fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, StoreError> {
        self.list_page(filter, page_size, page_token, self.now())
    }

    /// Sweeps what is due now; see [`GrantStore::sweep`](crate::grants::GrantStore::sweep).
    pub fn sweep(&self) -> SweepReport {
        self.sweep_due(self.now())
    }

    /// Every event from now on, on the bounded broadcast (a receiver more than the
    /// event capacity behind gets `Lagged`); for in-process followers such as the
    /// lifecycle spans.
    pub fn subscribe(&self) -> broadcast::Receiver<GrantEvent> {
        self.events.subscribe()
    }

    /// Counts for metrics.
    pub fn stats(&self) -> StoreStats {
        GrantView::stats(self)
    }

    /// Records an allowed approval ([`Grant::approve`]).
    pub fn approve(&self, id: &str, approval: &Approval) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.approve(approval.clone(), now))
    }

    /// Rejects a pending grant ([`Grant::reject`]).
    pub fn reject(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        decision_id: Option<Uuid>,
    ) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.reject(by, reason, decision_id, now))
    }

    /// Counts one allowed use ([`Grant::record_use`]).
    pub fn record_use(&self, id: &str, decision_id: Uuid) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.record_use(decision_id, now))
    }

    /// Moves an active grant's end of access later ([`Grant::renew`]).
    pub fn renew(
        &self,
        id: &str,
        new_expires_at: DateTime<Utc>,
        decision_id: Uuid,
    ) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.renew(new_expires_at, decision_id, now))
    }

    /// Revokes one grant ([`Grant::revoke`]); idempotent.
    pub fn revoke(&self, id: &str, revocation: &Revocation) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.revoke(revocation, now))
    }

    /// Records the downstream confirmation ([`Grant::confirm_revocation`]).
    pub fn confirm_revocation(&self, id: &str, evidence: &str) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.confirm_revocation(evidence, now))
    }

    /// Appends a decision (e.g. a denied step) to the evidence trail.
    pub fn push_decision(&self, id: &str, decision_id: Uuid) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, _| Ok(g.push_decision(decision_id)))
    }
}
