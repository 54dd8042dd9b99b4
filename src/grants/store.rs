//! The store seam: the [`GrantStore`] trait every backend implements (the embedded
//! [`MemoryGrantStore`](super::MemoryGrantStore), a shared one later), and the types
//! its operations take and return.

use std::{path::PathBuf, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use tokio_stream::Stream;

use super::{
    journal::{JournalError, JournalOptions},
    model::{
        EventPosition, Grant, GrantEvent, GrantState, Revocation, Transition, TransitionError,
    },
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

/// The result of [`GrantStore::transition`].
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

/// A change applied by [`GrantStore::transition`] to a copy of the grant, given the
/// time of the call. `Ok` with [`Transition::changed`] makes it durable and visible;
/// `Err` (or an unchanged transition) leaves the grant as it was. A backend may call it
/// more than once (a compare-and-set that lost a race runs it again on the newer
/// version), so it must not do anything but change the grant.
pub type Change<'a> =
    &'a mut (dyn FnMut(&mut Grant, DateTime<Utc>) -> Result<Transition, TransitionError> + Send);

/// Whose grants [`GrantStore::revoke_all`] revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeScope<'a> {
    /// Every non-terminal grant of this workflow (the ticket closed).
    Workflow(&'a str),
    /// Every non-terminal grant of this subject.
    Subject(&'a str),
}

/// The feed lost events a follower had not read yet (it fell behind, or resumed from
/// a position the store no longer holds): re-list and follow again from a new position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the grant event feed skipped {missed} events")]
pub struct FeedGap {
    /// How many events were skipped (at least one).
    pub missed: u64,
}

/// Where grants live: the seam the grant workflow uses, and a backend fills (the
/// embedded [`MemoryGrantStore`](super::MemoryGrantStore); a shared store across the
/// network).
///
/// Every operation is async, so a backend that waits for the network does not block a
/// worker; the in-memory store's futures are ready at once. Time is the caller's (the
/// clock's, injected where the workflow is wired), never the store's. The operations are
/// the smallest set the workflow needs: one atomic transition of one grant, a bulk
/// revocation, pages, the due-grant sweep and an event feed with a resume position.
/// Generic rather than `dyn` (the futures are not boxed): the workflow and the API are
/// generic over the store.
pub trait GrantStore: Send + Sync + 'static {
    /// Stores a new PENDING or ACTIVE grant (see [`Grant::new`]) and publishes
    /// `requested` (and `activated` when it is ACTIVE at once).
    fn create(
        &self,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Arc<Grant>, StoreError>> + Send;

    /// The grant as of `now`: a grant past its expiry is shown EXPIRED even before a
    /// sweep records it. `None` when unknown or dropped.
    fn get(&self, id: &str, now: DateTime<Utc>) -> impl Future<Output = Option<Arc<Grant>>> + Send;

    /// Applies `change` to one grant atomically: on a copy, journaled (and synced)
    /// before it becomes visible and its events are published. A refusal changes
    /// nothing. Changes that would leave a terminal state or touch what was requested
    /// are refused as [`TransitionError::Forbidden`].
    fn transition(
        &self,
        id: &str,
        now: DateTime<Utc>,
        change: Change<'_>,
    ) -> impl Future<Output = Result<Updated, StoreError>> + Send;

    /// Revokes every non-terminal grant in `scope`. Returns the grants this call
    /// revoked (idempotent: ended ones are left out). On an error some may already be
    /// revoked; retrying is safe.
    fn revoke_all(
        &self,
        scope: RevokeScope<'_>,
        revocation: &Revocation,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Arc<Grant>>, StoreError>> + Send;

    /// One page of the grants matching `filter` as of `now`, in id order. `page_size`
    /// 0 means [`DEFAULT_PAGE_SIZE`]; larger than [`MAX_PAGE_SIZE`] is capped.
    /// `page_token` is a previous page's `next_page_token` (or `None`/empty for the
    /// first page).
    fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Expires the grants due by `now`, reports overdue revocations, drops grants past
    /// retention, and compacts the journal when it has grown. May take a while (the
    /// in-memory store works on the calling thread).
    fn sweep(&self, now: DateTime<Utc>) -> impl Future<Output = SweepReport> + Send;

    /// The events after `position` (`None`: from now on), as they happen. A follower
    /// that falls behind, or resumes from a position the store no longer holds, gets a
    /// [`FeedGap`] (and should re-list); it never holds the store back.
    fn events_since(
        &self,
        position: Option<EventPosition>,
    ) -> impl Stream<Item = Result<GrantEvent, FeedGap>> + Send + Unpin + 'static;
}

/// What the decision path reads without waiting: a named grant as of now (for a
/// Check's `input.grant`) and the counts for metrics. The in-memory store is its own
/// view; a backend across the network keeps a local replica current through
/// [`GrantStore::events_since`], so a Check never waits on the network.
pub trait GrantView: Send + Sync {
    /// The grant as of `now` (see [`GrantStore::get`]), from local state.
    fn grant_at(&self, id: &str, now: DateTime<Utc>) -> Option<Arc<Grant>>;

    /// Counts for metrics.
    fn stats(&self) -> StoreStats;
}
