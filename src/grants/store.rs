//! The store seam: the [`GrantStore`] trait every backend implements (the embedded
//! [`MemoryGrantStore`](super::MemoryGrantStore), a shared one later), and the types
//! its operations take and return.

use std::{path::PathBuf, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    journal::{JournalError, JournalOptions},
    model::{Approval, Grant, GrantEvent, GrantState, Revocation, Transition, TransitionError},
};

/// Page size when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page served.
pub const MAX_PAGE_SIZE: usize = 1000;

/// How the store keeps grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Where the journal lives; `None` = in memory only (`--ephemeral`).
    pub state_dir: Option<PathBuf>,
    /// How long a terminal grant is kept for audit before it is dropped (default 24 h).
    pub retention: TimeDelta,
    /// How long after its end a REVOKED or EXPIRED grant that was ever ACTIVE may stay
    /// unconfirmed before one `revocation_overdue` event is emitted (default 5 min).
    pub revocation_confirm_deadline: TimeDelta,
    /// Events buffered for watchers; a watcher further behind is told it lagged
    /// (default 1024).
    pub event_capacity: usize,
    /// How the journal writes.
    pub journal: JournalOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            retention: TimeDelta::hours(24),
            revocation_confirm_deadline: TimeDelta::minutes(5),
            event_capacity: 1024,
            journal: JournalOptions::default(),
        }
    }
}

/// Why a store operation failed. Nothing changed unless the operation says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No grant with this id (never created, or dropped after retention).
    #[error("grant {0} not found")]
    NotFound(String),
    /// `create` with an id that is taken.
    #[error("grant {0} already exists")]
    AlreadyExists(String),
    /// `create` with a grant that cannot be stored as new.
    #[error("invalid new grant: {0}")]
    InvalidGrant(&'static str),
    /// The transition was refused; the grant is unchanged.
    #[error("grant {id}: {source}")]
    Refused {
        /// The grant.
        id: String,
        /// Why.
        source: TransitionError,
    },
    /// A page token this store did not issue.
    #[error("invalid page token")]
    InvalidPageToken,
    /// The journal could not be opened or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl StoreError {
    /// The refusal, when the error is a refused transition.
    pub fn transition(&self) -> Option<&TransitionError> {
        match self {
            Self::Refused { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Which grants [`GrantStore::list`] returns. Unset fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this subject's grants.
    pub subject_id: Option<String>,
    /// Only this workflow's grants.
    pub workflow_id: Option<String>,
    /// Only grants in this (effective) state.
    pub state: Option<GrantState>,
}

impl ListFilter {
    /// True when `grant` (an effective view) matches.
    pub fn matches(&self, grant: &Grant) -> bool {
        self.subject_id
            .as_deref()
            .is_none_or(|s| grant.subject_id() == s)
            && self
                .workflow_id
                .as_deref()
                .is_none_or(|w| grant.workflow_id() == Some(w))
            && self.state.is_none_or(|s| grant.state == s)
    }
}

/// One page of [`GrantStore::list`].
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The grants, in id order (UUIDv7: creation order).
    pub grants: Vec<Arc<Grant>>,
    /// Token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The result of [`GrantStore::update`].
#[derive(Debug, Clone)]
pub struct Updated {
    /// The grant after the change (with lazy expiry applied), or as it is when nothing
    /// changed.
    pub grant: Arc<Grant>,
    /// Whether it changed and which events were published.
    pub transition: Transition,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Grants moved to EXPIRED (approval deadline or end of access passed).
    pub expired: usize,
    /// Terminal grants dropped after the retention window.
    pub dropped: usize,
    /// `revocation_overdue` events emitted.
    pub overdue: usize,
    /// Of those changes, how many could not be journaled: overdue reports, and the
    /// expiries of a sweep whose mark could not be written. They are applied anyway (an
    /// expiry is restrictive, and replay derives it again, announcing it as one that
    /// happened while down), and the error is logged; the journal refuses every later
    /// acknowledged change.
    pub unjournaled: usize,
    /// The journal was compacted.
    pub compacted: bool,
    /// How long the sweep took.
    pub duration: std::time::Duration,
}

/// Counts for metrics, by recorded state (a grant past its expiry counts as what it
/// was until a sweep records the expiry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Grants held.
    pub grants: u64,
    /// PENDING grants.
    pub pending: u64,
    /// ACTIVE grants.
    pub active: u64,
    /// REJECTED grants (within retention).
    pub rejected: u64,
    /// EXPIRED grants (within retention).
    pub expired: u64,
    /// REVOKED grants (within retention).
    pub revoked: u64,
    /// Ended grants that were ever ACTIVE and whose revocation is not confirmed.
    pub awaiting_confirmation: u64,
    /// Of those, the ones past the confirmation deadline (`revocation_overdue` sent).
    pub revocations_overdue: u64,
}

/// A change applied by [`GrantStore::update`] to a copy of the grant, given the store's
/// current time. `Ok` with [`Transition::changed`] makes it durable and visible;
/// `Err` (or an unchanged transition) leaves the grant as it was.
pub type Change<'a> =
    &'a mut dyn FnMut(&mut Grant, DateTime<Utc>) -> Result<Transition, TransitionError>;

/// Where grants live. Object safe and synchronous (calls are short, except for the
/// journal's fsync); a shared backend (Redis) implements the same trait.
pub trait GrantStore: Send + Sync {
    /// The store's current time (the clock every transition is judged by).
    fn now(&self) -> DateTime<Utc>;

    /// Stores a new PENDING or ACTIVE grant (see [`Grant::new`]) and publishes
    /// `requested` (and `activated` when it is ACTIVE at once).
    fn create(&self, grant: Grant) -> Result<Arc<Grant>, StoreError>;

    /// The grant as of now: a grant past its expiry is shown EXPIRED even before a
    /// sweep records it. `None` when unknown or dropped.
    fn get(&self, id: &str) -> Option<Arc<Grant>>;

    /// Applies `change` atomically: on a copy, under the grant's lock, journaled (and
    /// synced) before it becomes visible and its events are published. A refusal
    /// changes nothing. Changes that would leave a terminal state or touch the id, the
    /// subject id or the workflow id are refused as [`TransitionError::Forbidden`].
    fn update(&self, id: &str, change: Change<'_>) -> Result<Updated, StoreError>;

    /// Revokes every non-terminal grant of a workflow (the ticket closed). Returns the
    /// grants this call revoked (idempotent: ended ones are left out). On an error
    /// some may already be revoked; retrying is safe.
    fn revoke_workflow(
        &self,
        workflow_id: &str,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError>;

    /// Revokes every non-terminal grant of a subject; as [`GrantStore::revoke_workflow`].
    fn revoke_subject(
        &self,
        subject_id: &str,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError>;

    /// One page of the grants matching `filter`, in id order. `page_size` 0 means
    /// [`DEFAULT_PAGE_SIZE`]; larger than [`MAX_PAGE_SIZE`] is capped. `page_token` is a
    /// previous page's `next_page_token` (or `None`/empty for the first page).
    fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, StoreError>;

    /// Expires due grants, reports overdue revocations, drops grants past retention,
    /// and compacts the journal when it has grown. Blocking.
    fn sweep(&self) -> SweepReport;

    /// Follows grant events. A receiver that falls more than the event capacity behind
    /// gets `RecvError::Lagged` (and should re-list); it never blocks the store.
    fn subscribe(&self) -> broadcast::Receiver<GrantEvent>;

    /// Counts for metrics.
    fn stats(&self) -> StoreStats;

    /// Records an allowed approval ([`Grant::approve`]).
    fn approve(&self, id: &str, approval: &Approval) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.approve(approval.clone(), now))
    }

    /// Rejects a pending grant ([`Grant::reject`]).
    fn reject(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        decision_id: Option<Uuid>,
    ) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.reject(by, reason, decision_id, now))
    }

    /// Counts one allowed use ([`Grant::record_use`]).
    fn record_use(&self, id: &str, decision_id: Uuid) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.record_use(decision_id, now))
    }

    /// Moves an active grant's end of access later ([`Grant::renew`]).
    fn renew(
        &self,
        id: &str,
        new_expires_at: DateTime<Utc>,
        decision_id: Uuid,
    ) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.renew(new_expires_at, decision_id, now))
    }

    /// Revokes one grant ([`Grant::revoke`]); idempotent: `transition.changed` is false
    /// when it had already ended.
    fn revoke(&self, id: &str, revocation: &Revocation) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.revoke(revocation, now))
    }

    /// Records the downstream confirmation ([`Grant::confirm_revocation`]).
    fn confirm_revocation(&self, id: &str, evidence: &str) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, now| g.confirm_revocation(evidence, now))
    }

    /// Appends a decision (e.g. a denied step) to the evidence trail.
    fn push_decision(&self, id: &str, decision_id: Uuid) -> Result<Updated, StoreError> {
        self.update(id, &mut |g, _| Ok(g.push_decision(decision_id)))
    }
}
