//! The grant store: the [`GrantStore`] trait every backend implements, and the
//! embedded [`MemoryGrantStore`] (a `dashmap` by id, indexes by workflow, subject and
//! due time, an optional journal).
//!
//! # Concurrency
//!
//! Grants live in a `DashMap<id, Arc<Grant>>`: [`GrantStore::get`] touches one shard
//! (read, momentarily) and takes no other lock. Writers of a grant are serialised by one
//! of [`WRITER_STRIPES`] mutexes chosen by the id's random bits; [`GrantStore::update`]
//! takes it, applies the change to a copy, journals the copy, and only then swaps it into
//! the map (a momentary shard write) and publishes its events, so a refused or
//! unjournaled change is never seen, and readers are never blocked by a writer's fsync.
//!
//! The workflow and subject indexes are ordered sets of `(hash of the name, id)`, in
//! shards chosen by the hash: a few dozen bytes per grant instead of a map entry, a
//! string and a tree node per workflow. A hash says "maybe": whoever reads an index
//! checks the grant's own name (listing filters, bulk revocations re-check under the
//! grant's lock), so a collision costs a look, never a wrong result. The hash is keyed
//! per store, so callers cannot aim names at one entry.
//!
//! The due index (`BTreeSet<(due time, id)>`) holds one entry per grant: its expiry
//! while live, then its revocation-confirmation deadline and the end of its retention.
//! It is touched when a grant is created, changes its due time (activation, renewal,
//! end) or is dropped: never by `get`, nor by a use. A sweep pops only what is due, so
//! it costs O(due), not O(grants).
//!
//! The sweep takes one grant's writer lock at a time, for a copy and a swap; it
//! journals each batch after making its changes visible (they are restrictive: see
//! `sweep_batch`), so a Revalidate never waits for a batch or for the disk.
//!
//! Lock order: writer stripes (several only in ascending order, by the compaction
//! barrier), then dashmap shards and the index mutexes. Nothing waits for a stripe
//! while holding a shard or an index lock.

use std::{
    collections::{BTreeSet, HashSet},
    hash::{BuildHasher, RandomState},
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::Instant,
};

use chrono::{DateTime, TimeDelta, Utc};
use dashmap::DashMap;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    journal::{
        Delta, Durability, Journal, JournalError, JournalOptions, encode_delta, encode_record,
        encode_sweep_mark,
    },
    model::{
        Approval, Grant, GrantEvent, GrantEventKind, GrantState, Revocation, Transition,
        TransitionError,
    },
};
use crate::clock::Clock;

/// How many mutexes serialise grant writers (a power of two).
pub const WRITER_STRIPES: usize = 4096;
/// Page size when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page served.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Due grants a sweep handles per batch (one journal write per batch).
const SWEEP_BATCH: usize = 64;
/// Candidate ids a listing copies out of an index per lock.
const LIST_CHUNK: usize = 256;
/// Prefix of page tokens (versioned, so the format can change).
const PAGE_TOKEN_PREFIX: &str = "g1.";
/// Shards of each name index (a power of two).
const NAME_INDEX_SHARDS: usize = 64;

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

/// Hashes grant ids. They are UUIDv7s the store generated (74 random bits) and never
/// keys chosen by a caller (lookups do not insert), so a fast unkeyed multiplicative
/// mix is safe, and it puts the entropy in the high bits dashmap and hashbrown use.
/// The interners use it too, for keys that are already seeded hashes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The hasher of [`IdHash`].
#[derive(Debug, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn key_of(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id).ok()
}

/// The grant as it must be shown at `now` (lazy expiry applied).
fn view(grant: Arc<Grant>, now: DateTime<Utc>) -> Arc<Grant> {
    match grant.expired_view(now) {
        Some(expired) => Arc::new(expired),
        None => grant,
    }
}

/// The journal record for a change, and whether it must be synced before the change is
/// acknowledged. Acknowledged state changes are whole grants, synced. A use is a delta,
/// synced when the grant has a use limit; a use of an unlimited grant and a bare
/// evidence-trail entry are written but not synced (a later sync covers them; a process
/// crash cannot lose them, a power loss can). `None`: nothing to write.
fn journal_record(
    before: &Grant,
    after: &Grant,
) -> Result<Option<(Vec<u8>, Durability)>, JournalError> {
    match Delta::between(before, after) {
        Some(delta) if delta.uses.is_none() && delta.decision_id.is_none() => Ok(None),
        Some(delta) => {
            let durability = if delta.uses.is_some() && after.max_uses() != 0 {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            Ok(Some((encode_delta(&delta)?, durability)))
        }
        None => Ok(Some((encode_record(after)?, Durability::Sync))),
    }
}

/// Refuses changes a transition method never makes but a hand-written closure could.
fn check_change(before: &Grant, after: &Grant) -> Result<(), TransitionError> {
    if !Arc::ptr_eq(&before.spec, &after.spec) && before.spec != after.spec {
        return Err(TransitionError::Forbidden(
            "what was requested (id, subject, workflow, ...) cannot change",
        ));
    }
    if before.state.is_terminal() && after.state != before.state {
        return Err(TransitionError::Forbidden(
            "a REJECTED, EXPIRED or REVOKED grant cannot change state",
        ));
    }
    if after.state.is_terminal() != after.ending.is_some() {
        return Err(TransitionError::Forbidden(
            "a grant has an ending exactly when it has ended",
        ));
    }
    if after.uses < before.uses {
        return Err(TransitionError::Forbidden("uses cannot decrease"));
    }
    Ok(())
}

/// One shard of a [`NameIndex`]: `(hash of the name, id)`, ordered.
type NameShard = Mutex<BTreeSet<(u64, Uuid)>>;

/// The grants of each workflow (or subject), by name: `(hash of the name, id)` in
/// ordered sets, sharded by the hash. See the module doc.
struct NameIndex {
    seed: RandomState,
    shards: Box<[NameShard]>,
    /// Tests: every name hashes alike, as if every lookup were a collision.
    #[cfg(test)]
    collide: bool,
}

impl NameIndex {
    fn new() -> Self {
        Self {
            seed: RandomState::new(),
            shards: (0..NAME_INDEX_SHARDS)
                .map(|_| Mutex::new(BTreeSet::new()))
                .collect(),
            #[cfg(test)]
            collide: false,
        }
    }

    fn hash(&self, name: &str) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 42;
        }
        self.seed.hash_one(name)
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, BTreeSet<(u64, Uuid)>> {
        // Truncation intended: the top bits pick the shard.
        lock(&self.shards[(hash >> 58) as usize & (NAME_INDEX_SHARDS - 1)])
    }

    fn insert(&self, name: &str, key: Uuid) {
        let hash = self.hash(name);
        self.shard(hash).insert((hash, key));
    }

    fn remove(&self, name: &str, key: Uuid) {
        let hash = self.hash(name);
        self.shard(hash).remove(&(hash, key));
    }

    /// Up to `limit` ids (in id order) of grants that may be named `name`, after
    /// `after`.
    fn ids(&self, name: &str, after: Option<Uuid>, limit: usize) -> Vec<Uuid> {
        use std::ops::Bound::{Excluded, Included};
        let hash = self.hash(name);
        let start = match after {
            Some(after) => Excluded((hash, after)),
            None => Included((hash, Uuid::nil())),
        };
        self.shard(hash)
            .range((start, Included((hash, Uuid::max()))))
            .take(limit)
            .map(|&(_, key)| key)
            .collect()
    }

    /// Every entry, hash first; for tests.
    #[cfg(test)]
    fn entries(&self) -> BTreeSet<(u64, Uuid)> {
        self.shards.iter().flat_map(|s| lock(s).clone()).collect()
    }
}

/// What a due index entry asks of a grant at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DueAction {
    Expire,
    ReportOverdue,
    Drop,
    Nothing,
}

/// Per-state counters (signed: a reader may see an update half-accounted).
#[derive(Debug, Default)]
struct Counts {
    grants: AtomicI64,
    by_state: [AtomicI64; 5],
    awaiting: AtomicI64,
    overdue: AtomicI64,
}

impl Counts {
    fn add(&self, grant: &Grant, sign: i64) {
        self.grants.fetch_add(sign, Ordering::Relaxed);
        self.by_state[grant.state.index()].fetch_add(sign, Ordering::Relaxed);
        if grant.awaits_confirmation() {
            self.awaiting.fetch_add(sign, Ordering::Relaxed);
            if grant.overdue_reported() {
                self.overdue.fetch_add(sign, Ordering::Relaxed);
            }
        }
    }

    fn replace(&self, before: &Grant, after: &Grant) {
        self.add(before, -1);
        self.add(after, 1);
    }

    fn read(v: &AtomicI64) -> u64 {
        u64::try_from(v.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// The embedded store: in memory, optionally journaled to a state directory.
pub struct MemoryGrantStore {
    clock: Arc<dyn Clock>,
    retention: TimeDelta,
    confirm_deadline: TimeDelta,
    grants: DashMap<Uuid, Arc<Grant>, IdHash>,
    /// Writers' locks, by [`MemoryGrantStore::stripe`].
    writers: Box<[Mutex<()>]>,
    by_workflow: NameIndex,
    by_subject: NameIndex,
    /// Every id, ordered, for unfiltered listing. Touched on create and drop only.
    ids: Mutex<BTreeSet<Uuid>>,
    /// One `(due time, id)` per grant; see the module doc.
    due: Mutex<BTreeSet<(DateTime<Utc>, Uuid)>>,
    journal: Option<Journal>,
    events: broadcast::Sender<GrantEvent>,
    counts: Counts,
    sweeping: Mutex<()>,
}

impl std::fmt::Debug for MemoryGrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryGrantStore")
            .field("grants", &self.grants.len())
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl MemoryGrantStore {
    /// A store with no journal (`--ephemeral`), default retention and deadlines.
    pub fn ephemeral(clock: Arc<dyn Clock>) -> Self {
        Self::empty(&StoreOptions::default(), clock, None)
    }

    /// Opens the store: with a state directory, replays its journal (a torn tail is
    /// truncated with a warning; other damage is an error naming the byte offset).
    /// Grants that expired while the process was down (after the journal's last sweep
    /// mark) are EXPIRED, ended at their expiry; their `expired` events are returned
    /// (and published, to nobody yet). Terminal grants past retention are not loaded.
    pub fn open(
        options: StoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Vec<GrantEvent>), StoreError> {
        let Some(dir) = &options.state_dir else {
            return Ok((Self::empty(&options, clock, None), Vec::new()));
        };
        let (journal, replay) = Journal::open(dir, options.journal.clone())?;
        let store = Self::empty(&options, clock, Some(journal));
        let now = store.clock.now();
        let mut events = Vec::new();
        let mut expired_while_down = 0usize;
        let mut skipped = 0usize;
        for mut grant in replay.grants {
            // Expired while the process was down: it ended at its expiry, which can put
            // it past retention at once.
            let transition = grant.expire(now).unwrap_or(Transition::UNCHANGED);
            if store.due_action(&grant, now) == DueAction::Drop {
                skipped += 1;
                continue;
            }
            let key = grant.id();
            let grant = Arc::new(grant);
            if transition.changed {
                expired_while_down += 1;
                events.extend(transition.events.iter().map(|&kind| GrantEvent {
                    kind,
                    grant: grant.clone(),
                    at: now,
                }));
            }
            store.grants.insert(key, grant.clone());
            store.index(key, &grant);
            store.counts.add(&grant, 1);
        }
        if expired_while_down > 0
            && let Some(journal) = &store.journal
        {
            // A mark, so that the next start does not announce these expiries again.
            journal.append(&encode_sweep_mark(now)?, Durability::Buffered)?;
            journal.sync()?;
        }
        tracing::info!(
            records = replay.records,
            grants = store.grants.len(),
            expired_while_down,
            dropped_after_retention = skipped,
            truncated_bytes = replay.truncated_bytes,
            "grant journal replayed"
        );
        if store
            .journal
            .as_ref()
            .is_some_and(|j| j.wants_compaction() || (skipped > 0 && j.len() > (1 << 20)))
            && let Err(e) = store.compact()
        {
            // The journal itself is intact; the next sweep tries again.
            tracing::error!(error = %e, "grant journal compaction failed");
        }
        for event in &events {
            let _ = store.events.send(event.clone());
        }
        Ok((store, events))
    }

    fn empty(options: &StoreOptions, clock: Arc<dyn Clock>, journal: Option<Journal>) -> Self {
        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        Self {
            clock,
            retention: options.retention,
            confirm_deadline: options.revocation_confirm_deadline,
            grants: DashMap::with_hasher(IdHash),
            writers: (0..WRITER_STRIPES).map(|_| Mutex::new(())).collect(),
            by_workflow: NameIndex::new(),
            by_subject: NameIndex::new(),
            ids: Mutex::new(BTreeSet::new()),
            due: Mutex::new(BTreeSet::new()),
            journal,
            events,
            counts: Counts::default(),
            sweeping: Mutex::new(()),
        }
    }

    /// The journal, when there is one.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// How many grants are held (live and retained).
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// True when no grant is held.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Rewrites the journal as a snapshot of the current grants (appends go on
    /// meanwhile). Returns false when there is no journal or a compaction is running.
    pub fn compact(&self) -> Result<bool, StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(false);
        };
        // A barrier: with every writer's lock held, every change journaled so far is
        // visible, and every later one is journaled after the compaction's start, where
        // `finish` carries it over (the last record of a grant wins at replay).
        let Some(mut compaction) = journal.begin_compaction()? else {
            return Ok(false);
        };
        {
            let _all: Vec<MutexGuard<'_, ()>> = self.writers.iter().map(lock).collect();
            compaction.mark_start()?;
        }
        let grants: Vec<Arc<Grant>> = self.grants.iter().map(|r| r.value().clone()).collect();
        for grant in grants {
            compaction.write(&grant)?;
        }
        compaction.finish()?;
        Ok(true)
    }

    /// When a grant next needs the sweep: its expiry while live; once ended, the
    /// confirmation deadline (if it awaits one) or the end of its retention.
    fn next_due(&self, grant: &Grant) -> DateTime<Utc> {
        if !grant.state.is_terminal() {
            return grant.expires_at;
        }
        let ended = grant.ended_at().unwrap_or(grant.expires_at);
        let after = |d: TimeDelta| {
            ended
                .checked_add_signed(d)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        let retained_until = after(self.retention);
        if grant.awaits_confirmation() && !grant.overdue_reported() {
            retained_until.min(after(self.confirm_deadline))
        } else {
            retained_until
        }
    }

    fn due_action(&self, grant: &Grant, now: DateTime<Utc>) -> DueAction {
        if !grant.state.is_terminal() {
            return if now >= grant.expires_at {
                DueAction::Expire
            } else {
                DueAction::Nothing
            };
        }
        let ended = grant.ended_at().unwrap_or(grant.expires_at);
        let after = |d: TimeDelta| {
            ended
                .checked_add_signed(d)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        if now >= after(self.retention) {
            DueAction::Drop
        } else if grant.awaits_confirmation()
            && !grant.overdue_reported()
            && now >= after(self.confirm_deadline)
        {
            DueAction::ReportOverdue
        } else {
            DueAction::Nothing
        }
    }

    fn index(&self, key: Uuid, grant: &Grant) {
        if let Some(workflow) = grant.workflow_id() {
            self.by_workflow.insert(workflow, key);
        }
        if !grant.subject_id().is_empty() {
            self.by_subject.insert(grant.subject_id(), key);
        }
        lock(&self.ids).insert(key);
        lock(&self.due).insert((self.next_due(grant), key));
    }

    fn unindex(&self, key: Uuid, grant: &Grant) {
        if let Some(workflow) = grant.workflow_id() {
            self.by_workflow.remove(workflow, key);
        }
        if !grant.subject_id().is_empty() {
            self.by_subject.remove(grant.subject_id(), key);
        }
        lock(&self.ids).remove(&key);
        lock(&self.due).remove(&(self.next_due(grant), key));
    }

    fn reindex_due(&self, key: Uuid, before: &Grant, after: &Grant) {
        let (old, new) = (self.next_due(before), self.next_due(after));
        if old != new {
            let mut due = lock(&self.due);
            due.remove(&(old, key));
            due.insert((new, key));
        }
    }

    fn publish(&self, kinds: &[GrantEventKind], grant: &Arc<Grant>, at: DateTime<Utc>) {
        if self.events.receiver_count() == 0 {
            return;
        }
        for &kind in kinds {
            // An error only means every receiver went away meanwhile.
            let _ = self.events.send(GrantEvent {
                kind,
                grant: grant.clone(),
                at,
            });
        }
    }

    fn current(&self, key: &Uuid) -> Option<Arc<Grant>> {
        self.grants.get(key).map(|r| r.value().clone())
    }

    /// The stripe of a grant's writer lock: the low bits of the id (random in a UUIDv7).
    fn stripe(key: &Uuid) -> usize {
        // Truncation intended: only the low bits are used.
        (key.as_u128() as usize) & (WRITER_STRIPES - 1)
    }

    fn writer(&self, key: &Uuid) -> MutexGuard<'_, ()> {
        lock(&self.writers[Self::stripe(key)])
    }

    /// Makes `next` the visible version of its grant (which the caller's writer lock
    /// keeps in the map).
    fn set_visible(&self, key: Uuid, next: Arc<Grant>) {
        if let Some(mut value) = self.grants.get_mut(&key) {
            *value = next;
        }
    }

    fn apply(
        &self,
        id: &str,
        change: Change<'_>,
        durability: Option<Durability>,
    ) -> Result<Updated, StoreError> {
        let key = key_of(id).ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        self.apply_key(key, change, durability)
    }

    /// Applies a change to one grant; `durability` overrides the record's own.
    fn apply_key(
        &self,
        key: Uuid,
        change: Change<'_>,
        durability: Option<Durability>,
    ) -> Result<Updated, StoreError> {
        let not_found = || StoreError::NotFound(key.hyphenated().to_string());
        let _writer = self.writer(&key);
        let current = self.current(&key).ok_or_else(not_found)?;
        let now = self.clock.now();
        let mut next = Grant::clone(&current);
        let refused = |source| StoreError::Refused {
            id: key.hyphenated().to_string(),
            source,
        };
        let transition = change(&mut next, now).map_err(refused)?;
        if !transition.changed {
            return Ok(Updated {
                grant: view(current, now),
                transition,
            });
        }
        check_change(&current, &next).map_err(refused)?;
        if let Some(journal) = &self.journal
            && let Some((record, own)) = journal_record(&current, &next)?
        {
            journal.append(&record, durability.unwrap_or(own))?;
        }
        let next = Arc::new(next);
        self.set_visible(key, next.clone());
        self.reindex_due(key, &current, &next);
        self.counts.replace(&current, &next);
        self.publish(transition.events, &next, now);
        Ok(Updated {
            grant: view(next, now),
            transition,
        })
    }

    /// Revokes the grants of `ids` that `named` (checked under each grant's lock: the
    /// name indexes only say "maybe").
    fn revoke_all(
        &self,
        ids: Vec<Uuid>,
        named: &dyn Fn(&Grant) -> bool,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError> {
        let mut revoked = Vec::new();
        let mut first_error = None;
        for key in ids {
            // Written without a sync each; one sync below acknowledges them all. They
            // may be seen before that sync: a revocation seen early is safe.
            match self.apply_key(
                key,
                &mut |g, now| {
                    if named(g) {
                        g.revoke(revocation, now)
                    } else {
                        Ok(Transition::UNCHANGED)
                    }
                },
                Some(Durability::Buffered),
            ) {
                Ok(updated) if updated.transition.changed => revoked.push(updated.grant),
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(journal) = &self.journal
            && !revoked.is_empty()
            && let Err(e) = journal.sync()
        {
            first_error.get_or_insert(e.into());
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(revoked),
        }
    }

    /// Handles one batch of due entries, one grant at a time under its own writer lock
    /// (held for a copy and a swap, never across the journal write, so a caller waits
    /// for at most one grant's step, not for a batch or a preempted sweeper): expires,
    /// reports overdue, or drops it, and re-indexes its due time. Then journals the
    /// batch's changes in one write and publishes their events. A change is visible
    /// before its record is written: both are restrictive (an expiry, a report), a
    /// restart re-expires a grant whose record was lost, and an overdue report whose
    /// record was lost is made again (its event was not published yet). `keys` are
    /// distinct.
    fn sweep_batch(&self, keys: Vec<Uuid>, now: DateTime<Utc>, report: &mut SweepReport) {
        let mut records = Vec::new();
        let mut reports = 0;
        let mut changed = Vec::new();
        for key in keys {
            let _writer = self.writer(&key);
            let Some(current) = self.current(&key) else {
                continue;
            };
            let mut next = Grant::clone(&current);
            let action = self.due_action(&current, now);
            let transition = match action {
                DueAction::Expire => next.expire(now).unwrap_or(Transition::UNCHANGED),
                DueAction::ReportOverdue => next.report_overdue(),
                DueAction::Drop => {
                    self.grants.remove(&key);
                    self.unindex(key, &current);
                    self.counts.add(&current, -1);
                    report.dropped += 1;
                    continue;
                }
                DueAction::Nothing => Transition::UNCHANGED,
            };
            if !transition.changed {
                lock(&self.due).insert((self.next_due(&current), key));
                continue;
            }
            // An expiry is derived from the grant (the sweep's mark covers it); an
            // overdue report is journaled.
            if self.journal.is_some() && action == DueAction::ReportOverdue {
                let delta = Delta {
                    overdue_reported: true,
                    ..Delta::new(key)
                };
                // A delta is a few dozen bytes: it cannot exceed the record limit.
                match encode_delta(&delta) {
                    Ok(record) => {
                        records.extend_from_slice(&record);
                        reports += 1;
                    }
                    Err(_) => report.unjournaled += 1,
                }
            }
            let next = Arc::new(next);
            self.set_visible(key, next.clone());
            self.counts.replace(&current, &next);
            lock(&self.due).insert((self.next_due(&next), key));
            match transition.events.first() {
                Some(GrantEventKind::Expired) => report.expired += 1,
                Some(GrantEventKind::RevocationOverdue) => report.overdue += 1,
                _ => {}
            }
            changed.push((transition.events, next));
        }
        if !records.is_empty()
            && let Some(journal) = &self.journal
            && let Err(e) = journal.append(&records, Durability::Buffered)
        {
            tracing::error!(error = %e, grants = reports, "cannot journal the sweep's overdue reports; emitted anyway");
            report.unjournaled += reports;
        }
        // One look at the subscribers per batch (it takes the channel's lock).
        if self.events.receiver_count() > 0 {
            for (events, grant) in changed {
                self.publish(events, &grant, now);
            }
        }
    }

    /// Every grant as stored (no lazy view); for tests.
    #[cfg(test)]
    pub(crate) fn raw_grants(&self) -> Vec<Arc<Grant>> {
        self.grants.iter().map(|r| r.value().clone()).collect()
    }

    /// Checks that every index agrees with the map; for tests.
    #[cfg(test)]
    pub(crate) fn check_indexes(&self) -> Result<(), String> {
        let mut expected_due = BTreeSet::new();
        let mut expected_ids = BTreeSet::new();
        let mut workflows = BTreeSet::new();
        let mut subjects = BTreeSet::new();
        for entry in self.grants.iter() {
            let grant = entry.value();
            if grant.id() != *entry.key() {
                return Err(format!("{} is keyed as {}", grant.id(), entry.key()));
            }
            expected_due.insert((self.next_due(grant), *entry.key()));
            expected_ids.insert(*entry.key());
            if let Some(w) = grant.workflow_id() {
                workflows.insert((self.by_workflow.hash(w), *entry.key()));
            }
            if !grant.subject_id().is_empty() {
                subjects.insert((self.by_subject.hash(grant.subject_id()), *entry.key()));
            }
        }
        if *lock(&self.due) != expected_due {
            return Err("due index disagrees with the map".into());
        }
        if *lock(&self.ids) != expected_ids {
            return Err("id index disagrees with the map".into());
        }
        if self.by_workflow.entries() != workflows {
            return Err("workflow index disagrees with the map".into());
        }
        if self.by_subject.entries() != subjects {
            return Err("subject index disagrees with the map".into());
        }
        Ok(())
    }
}

/// Encodes a page token: the last id of the page.
fn encode_page_token(key: Uuid) -> String {
    format!("{PAGE_TOKEN_PREFIX}{}", key.simple())
}

fn parse_page_token(token: &str) -> Result<Uuid, StoreError> {
    token
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .filter(|rest| rest.len() == 32)
        .and_then(|rest| Uuid::try_parse(rest).ok())
        .ok_or(StoreError::InvalidPageToken)
}

impl GrantStore for MemoryGrantStore {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn create(&self, grant: Grant) -> Result<Arc<Grant>, StoreError> {
        if grant.state.is_terminal() || grant.ending.is_some() {
            return Err(StoreError::InvalidGrant(
                "a new grant must be PENDING or ACTIVE",
            ));
        }
        let key = grant.id();
        let _writer = self.writer(&key);
        if self.grants.contains_key(&key) {
            return Err(StoreError::AlreadyExists(key.hyphenated().to_string()));
        }
        let grant = Arc::new(grant);
        if let Some(journal) = &self.journal {
            journal.append(&encode_record(&grant)?, Durability::Sync)?;
        }
        self.grants.insert(key, grant.clone());
        self.index(key, &grant);
        self.counts.add(&grant, 1);
        let events: &[GrantEventKind] = if grant.state == GrantState::Active {
            &[GrantEventKind::Requested, GrantEventKind::Activated]
        } else {
            &[GrantEventKind::Requested]
        };
        self.publish(events, &grant, self.clock.now());
        Ok(grant)
    }

    fn get(&self, id: &str) -> Option<Arc<Grant>> {
        let grant = self.current(&key_of(id)?)?;
        Some(view(grant, self.clock.now()))
    }

    fn update(&self, id: &str, change: Change<'_>) -> Result<Updated, StoreError> {
        self.apply(id, change, None)
    }

    fn revoke_workflow(
        &self,
        workflow_id: &str,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError> {
        self.revoke_all(
            self.by_workflow.ids(workflow_id, None, usize::MAX),
            &|g| g.workflow_id() == Some(workflow_id),
            revocation,
        )
    }

    fn revoke_subject(
        &self,
        subject_id: &str,
        revocation: &Revocation,
    ) -> Result<Vec<Arc<Grant>>, StoreError> {
        self.revoke_all(
            self.by_subject.ids(subject_id, None, usize::MAX),
            &|g| g.subject_id() == subject_id,
            revocation,
        )
    }

    fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, StoreError> {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let mut cursor = match page_token {
            None | Some("") => None,
            Some(token) => Some(parse_page_token(token)?),
        };
        let chunk_after = |set: &BTreeSet<Uuid>, after: Option<Uuid>| -> Vec<Uuid> {
            let range = match after {
                Some(after) => {
                    set.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
                }
                None => set.range(..),
            };
            range.take(LIST_CHUNK).copied().collect()
        };
        let now = self.clock.now();
        let mut page = Page::default();
        let mut last = None;
        'scan: loop {
            let chunk = match (&filter.workflow_id, &filter.subject_id) {
                (Some(w), _) => self.by_workflow.ids(w, cursor, LIST_CHUNK),
                (None, Some(s)) => self.by_subject.ids(s, cursor, LIST_CHUNK),
                (None, None) => chunk_after(&lock(&self.ids), cursor),
            };
            let Some(&chunk_last) = chunk.last() else {
                break;
            };
            cursor = Some(chunk_last);
            for key in chunk {
                let Some(grant) = self.current(&key) else {
                    continue;
                };
                let grant = view(grant, now);
                if !filter.matches(&grant) {
                    continue;
                }
                if page.grants.len() == page_size {
                    page.next_page_token = last.map(encode_page_token);
                    break 'scan;
                }
                last = Some(key);
                page.grants.push(grant);
            }
        }
        Ok(page)
    }

    fn sweep(&self) -> SweepReport {
        let _one_at_a_time = lock(&self.sweeping);
        let started = Instant::now();
        let now = self.clock.now();
        let mut report = SweepReport::default();
        // A grant is handled at most once per sweep: one that is due again at once
        // (e.g. a zero retention) waits for the next sweep, so a sweep always ends.
        let mut handled: HashSet<Uuid, IdHash> = HashSet::default();
        let mut again = Vec::new();
        loop {
            let batch: Vec<(DateTime<Utc>, Uuid)> = {
                let mut due = lock(&self.due);
                let mut batch = Vec::new();
                while batch.len() < SWEEP_BATCH && due.first().is_some_and(|(at, _)| *at <= now) {
                    batch.extend(due.pop_first());
                }
                batch
            };
            if batch.is_empty() {
                break;
            }
            let (fresh, seen): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|(_, key)| handled.insert(*key));
            again.extend(seen);
            self.sweep_batch(
                fresh.into_iter().map(|(_, key)| key).collect(),
                now,
                &mut report,
            );
        }
        lock(&self.due).extend(again);
        super::intern::released(report.dropped);
        if let Some(journal) = &self.journal {
            // The mark only keeps a restart from announcing these expiries again: it
            // is written, not synced (a power loss at worst repeats their events).
            if report.expired > 0
                && let Err(e) = encode_sweep_mark(now)
                    .and_then(|mark| journal.append(&mark, Durability::Buffered))
            {
                tracing::error!(error = %e, grants = report.expired, "cannot journal the sweep's mark; a restart announces its expiries again");
                report.unjournaled += report.expired;
            }
            if report.overdue > 0
                && let Err(e) = journal.sync()
            {
                tracing::error!(error = %e, "cannot sync the grant journal after a sweep");
            }
            if journal.wants_compaction() {
                match self.compact() {
                    Ok(done) => report.compacted = done,
                    Err(e) => tracing::error!(error = %e, "grant journal compaction failed"),
                }
            }
        }
        report.duration = started.elapsed();
        report
    }

    fn subscribe(&self) -> broadcast::Receiver<GrantEvent> {
        self.events.subscribe()
    }

    fn stats(&self) -> StoreStats {
        let c = &self.counts;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{clock::ManualClock, grants::model::GrantRequest, proto::v1};
    use tokio::sync::broadcast::error::TryRecvError;

    pub(crate) fn t0() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    pub(crate) fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    /// A grant request: `required` approvals, for `subject` in `workflow`.
    pub(crate) fn grant(
        now: DateTime<Utc>,
        required: u32,
        subject: &str,
        workflow: &str,
        max_uses: u64,
    ) -> Grant {
        grant_for(now, required, subject, workflow, max_uses, secs(3600))
    }

    /// As [`grant`], active for `ttl` once activated.
    pub(crate) fn grant_for(
        now: DateTime<Utc>,
        required: u32,
        subject: &str,
        workflow: &str,
        max_uses: u64,
        ttl: TimeDelta,
    ) -> Grant {
        Grant::new(
            GrantRequest {
                subject: v1::Subject {
                    id: subject.into(),
                    kind: "service_account".into(),
                    owner: "team".into(),
                    attributes: None,
                },
                action: "issue_credential".into(),
                resource: None,
                scope: vec![],
                workflow: (!workflow.is_empty()).then(|| v1::Workflow {
                    id: workflow.into(),
                    requester: "alice".into(),
                    ..Default::default()
                }),
                required_approvals: required,
                approval_deadline: now + secs(600),
                ttl,
                max_uses,
                policy_revision: "rev".into(),
                decision_id: did(1),
            },
            now,
        )
        .unwrap()
    }

    /// A recognisable decision id.
    pub(crate) fn did(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    const REVOKE: u128 = 99;

    pub(crate) fn approval(who: &str) -> Approval {
        Approval {
            approver: who.into(),
            role: "owner".into(),
            at: t0(),
            decision_id: Uuid::now_v7(),
            comment: "".into(),
        }
    }

    fn revocation() -> Revocation {
        Revocation {
            by: "ops".into(),
            reason: "ticket closed".into(),
            decision_id: Some(did(REVOKE)),
        }
    }

    fn store() -> (MemoryGrantStore, ManualClock) {
        let clock = ManualClock::at(t0());
        (MemoryGrantStore::ephemeral(Arc::new(clock.clone())), clock)
    }

    /// A store whose name indexes put every workflow and every subject on one hash.
    fn colliding_store() -> MemoryGrantStore {
        let (mut store, _) = store();
        store.by_workflow.collide = true;
        store.by_subject.collide = true;
        store
    }

    fn drain(rx: &mut broadcast::Receiver<GrantEvent>) -> Vec<(GrantEventKind, String)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push((e.kind, e.grant.id().to_string()));
        }
        out
    }

    #[test]
    fn create_get_and_events() {
        let (store, _) = store();
        let mut rx = store.subscribe();
        let p = store.create(grant(t0(), 1, "s1", "w1", 0)).unwrap();
        let a = store.create(grant(t0(), 0, "s1", "w1", 0)).unwrap();
        assert_eq!(store.get(&p.id().to_string()).unwrap(), p);
        assert_eq!(
            store.get(&a.id().to_string()).unwrap().state,
            GrantState::Active
        );
        assert!(store.get("not-a-uuid").is_none());
        assert!(store.get(&Uuid::now_v7().to_string()).is_none());
        use GrantEventKind::*;
        assert_eq!(
            drain(&mut rx),
            vec![
                (Requested, p.id().to_string()),
                (Requested, a.id().to_string()),
                (Activated, a.id().to_string())
            ]
        );
        let dup = Grant::clone(&p);
        assert!(matches!(
            store.create(dup),
            Err(StoreError::AlreadyExists(_))
        ));
        let mut ended = grant(t0(), 0, "s", "", 0);
        let _ = ended.revoke(&revocation(), t0()).unwrap();
        assert!(matches!(
            store.create(ended),
            Err(StoreError::InvalidGrant(_))
        ));
        let upper = p.id().hyphenated().to_string().to_uppercase();
        assert_eq!(
            store.get(&upper).unwrap().id(),
            p.id(),
            "ids parse in any UUID form"
        );
        store.check_indexes().unwrap();
    }

    #[test]
    fn approval_lifecycle_through_the_store() {
        let (store, clock) = store();
        let mut rx = store.subscribe();
        let id = store
            .create(grant(t0(), 2, "s", "w", 0))
            .unwrap()
            .id()
            .to_string();
        clock.advance(secs(10));
        let u = store.approve(&id, &approval("bob")).unwrap();
        assert_eq!(u.grant.state, GrantState::Pending);
        let err = store.approve(&id, &approval("bob")).unwrap_err();
        assert_eq!(
            err.transition(),
            Some(&TransitionError::AlreadyApproved("bob".into()))
        );
        let u = store.approve(&id, &approval("carol")).unwrap();
        assert_eq!(u.grant.state, GrantState::Active);
        assert_eq!(u.grant.expires_at, t0() + secs(10) + secs(3600));
        use GrantEventKind::*;
        let kinds: Vec<_> = drain(&mut rx).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, vec![Requested, Approved, Approved, Activated]);
        assert!(matches!(
            store.approve("nope", &approval("x")),
            Err(StoreError::NotFound(_))
        ));
        store.check_indexes().unwrap();
    }

    #[test]
    fn a_refused_transition_changes_nothing_and_publishes_nothing() {
        let (store, _) = store();
        let id = store
            .create(grant(t0(), 0, "s", "w", 1))
            .unwrap()
            .id()
            .to_string();
        store.record_use(&id, did(11)).unwrap();
        let before = store.get(&id).unwrap();
        let mut rx = store.subscribe();
        let err = store.record_use(&id, did(12)).unwrap_err();
        assert_eq!(err.transition(), Some(&TransitionError::Exhausted(1)));
        assert_eq!(store.get(&id).unwrap(), before);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        // The adapter can still record the denied step's decision.
        let u = store.push_decision(&id, did(13)).unwrap();
        assert!(u.transition.changed && u.transition.events.is_empty());
        assert_eq!(u.grant.decision_ids.last(), Some(&did(13)));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn closures_cannot_break_invariants() {
        let (store, _) = store();
        let id = store
            .create(grant(t0(), 0, "s", "w", 0))
            .unwrap()
            .id()
            .to_string();
        type Tamper = fn(&mut Grant);
        let cases: [(&str, Tamper); 5] = [
            ("id", |g| Arc::make_mut(&mut g.spec).id = Uuid::now_v7()),
            ("subject", |g| {
                let mut terms = g.terms();
                terms.subject.id = "other".into();
                Arc::make_mut(&mut g.spec).terms = terms.into();
            }),
            ("workflow", |g| {
                let mut terms = g.terms();
                terms.workflow = None;
                Arc::make_mut(&mut g.spec).terms = terms.into();
            }),
            ("uses", |g| g.uses = 0),
            ("ending", |g| g.ending = Some(Box::default())),
        ];
        store.record_use(&id, did(2)).unwrap();
        for (what, change) in cases {
            let err = store
                .update(&id, &mut |g, _| {
                    change(g);
                    Ok(Transition::RECORDED)
                })
                .unwrap_err();
            assert!(
                matches!(err.transition(), Some(TransitionError::Forbidden(_))),
                "{what}: {err}"
            );
        }
        store.revoke(&id, &revocation()).unwrap();
        let err = store
            .update(&id, &mut |g, _| {
                g.state = GrantState::Active;
                Ok(Transition::RECORDED)
            })
            .unwrap_err();
        assert!(matches!(
            err.transition(),
            Some(TransitionError::Forbidden(_))
        ));
        assert_eq!(store.get(&id).unwrap().state, GrantState::Revoked);
        store.check_indexes().unwrap();
    }

    #[test]
    fn expiry_is_checked_on_every_read_without_a_sweep() {
        let (store, clock) = store();
        let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        let p = store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
        clock.set(p.expires_at);
        assert_eq!(
            store.get(&p.id().to_string()).unwrap().state,
            GrantState::Expired
        );
        assert_eq!(
            store.get(&a.id().to_string()).unwrap().state,
            GrantState::Active
        );
        assert!(
            store
                .approve(&p.id().to_string(), &approval("bob"))
                .is_err()
        );
        clock.set(a.expires_at);
        let seen = store.get(&a.id().to_string()).unwrap();
        assert_eq!(seen.state, GrantState::Expired);
        let err = store.record_use(&a.id().to_string(), did(2)).unwrap_err();
        assert_eq!(
            err.transition(),
            Some(&TransitionError::Expired(a.expires_at))
        );
        // Nothing recorded yet: the stats still count what was stored.
        assert_eq!(store.stats().active, 1);
        let page = store
            .list(
                &ListFilter {
                    state: Some(GrantState::Expired),
                    ..Default::default()
                },
                0,
                None,
            )
            .unwrap();
        assert_eq!(page.grants.len(), 2);
    }

    #[test]
    fn revoke_is_idempotent_by_id_workflow_and_subject() {
        let (store, _) = store();
        let w1a = store.create(grant(t0(), 0, "s1", "w1", 0)).unwrap();
        let w1b = store.create(grant(t0(), 1, "s2", "w1", 0)).unwrap();
        let w2 = store.create(grant(t0(), 0, "s1", "w2", 0)).unwrap();
        let other = store.create(grant(t0(), 0, "s3", "w3", 0)).unwrap();
        let mut rx = store.subscribe();

        let u = store.revoke(&w1a.id().to_string(), &revocation()).unwrap();
        assert!(u.transition.changed);
        assert_eq!(
            u.grant.ending.as_deref().map(|e| e.by.as_str()),
            Some("ops")
        );
        let again = store.revoke(&w1a.id().to_string(), &revocation()).unwrap();
        assert!(!again.transition.changed);

        let revoked = store.revoke_workflow("w1", &revocation()).unwrap();
        assert_eq!(
            revoked
                .iter()
                .map(|g| g.id().to_string())
                .collect::<Vec<_>>(),
            vec![w1b.id().to_string()]
        );
        assert!(
            store
                .revoke_workflow("w1", &revocation())
                .unwrap()
                .is_empty()
        );

        let revoked = store.revoke_subject("s1", &revocation()).unwrap();
        assert_eq!(
            revoked
                .iter()
                .map(|g| g.id().to_string())
                .collect::<Vec<_>>(),
            vec![w2.id().to_string()]
        );
        assert!(
            store
                .revoke_subject("s1", &revocation())
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .revoke_subject("nobody", &revocation())
                .unwrap()
                .is_empty()
        );

        assert_eq!(
            store.get(&other.id().to_string()).unwrap().state,
            GrantState::Active
        );
        for id in [
            &w1a.id().to_string(),
            &w1b.id().to_string(),
            &w2.id().to_string(),
        ] {
            let g = store.get(id).unwrap();
            assert_eq!(g.state, GrantState::Revoked);
            assert_eq!(g.decision_ids.last(), Some(&did(REVOKE)));
        }
        let kinds: Vec<_> = drain(&mut rx).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, vec![GrantEventKind::Revoked; 3]);
        assert_eq!(store.stats().revoked, 3);
        store.check_indexes().unwrap();
    }

    #[test]
    fn sweep_expires_due_grants_in_order_and_only_those() {
        let (store, clock) = store();
        let mut rx = store.subscribe();
        let late = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        clock.advance(secs(1));
        let early = store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
        clock.advance(secs(100));
        let live = store.create(grant(clock.now(), 0, "s", "w", 0)).unwrap();
        drain(&mut rx);
        let r = store.sweep();
        assert_eq!(
            (r.expired, r.dropped, r.overdue, r.unjournaled),
            (0, 0, 0, 0)
        );
        clock.set(late.expires_at);
        let report = store.sweep();
        assert_eq!(report.expired, 2);
        assert_eq!(
            drain(&mut rx),
            vec![
                (GrantEventKind::Expired, early.id().to_string()),
                (GrantEventKind::Expired, late.id().to_string())
            ]
        );
        assert_eq!(
            store.get(&live.id().to_string()).unwrap().state,
            GrantState::Active
        );
        assert_eq!(store.stats().expired, 2);
        assert_eq!(store.stats().active, 1);
        assert_eq!(store.sweep().expired, 0, "expired once");
        store.check_indexes().unwrap();
    }

    #[test]
    fn terminal_grants_are_dropped_after_retention() {
        let (store, clock) = store();
        let ended = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        store
            .revoke(&ended.id().to_string(), &revocation())
            .unwrap();
        store
            .confirm_revocation(&ended.id().to_string(), "crl")
            .unwrap();
        let live = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        store
            .renew(&live.id().to_string(), t0() + TimeDelta::days(3), did(3))
            .unwrap();
        clock.advance(TimeDelta::hours(24) - secs(1));
        assert_eq!(store.sweep().dropped, 0);
        assert!(store.get(&ended.id().to_string()).is_some());
        clock.advance(secs(1));
        let report = store.sweep();
        assert_eq!(report.dropped, 1);
        assert!(store.get(&ended.id().to_string()).is_none());
        assert!(
            store
                .revoke(&ended.id().to_string(), &revocation())
                .is_err()
        );
        assert_eq!(store.len(), 1);
        assert_eq!(store.stats().grants, 1);
        store.check_indexes().unwrap();
        let all = store.list(&ListFilter::default(), 0, None).unwrap();
        assert_eq!(all.grants.len(), 1);
    }

    #[test]
    fn revocation_overdue_is_emitted_once_per_grant() {
        let (store, clock) = store();
        let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        let b = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        let never_active = store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
        store.revoke_workflow("w", &revocation()).unwrap();
        assert_eq!(store.stats().awaiting_confirmation, 2);
        let mut rx = store.subscribe();
        clock.advance(TimeDelta::minutes(5) - secs(1));
        assert_eq!(store.sweep().overdue, 0);
        store
            .confirm_revocation(&b.id().to_string(), "done")
            .unwrap();
        drain(&mut rx);
        clock.advance(secs(1));
        assert_eq!(store.sweep().overdue, 1);
        assert_eq!(
            drain(&mut rx),
            vec![(GrantEventKind::RevocationOverdue, a.id().to_string())]
        );
        let stats = store.stats();
        assert_eq!(
            (stats.awaiting_confirmation, stats.revocations_overdue),
            (1, 1)
        );
        clock.advance(TimeDelta::minutes(30));
        assert_eq!(store.sweep().overdue, 0, "only once");
        assert!(drain(&mut rx).is_empty());
        assert!(store.get(&a.id().to_string()).unwrap().overdue_reported());
        assert!(
            !store
                .get(&never_active.id().to_string())
                .unwrap()
                .overdue_reported()
        );
        store
            .confirm_revocation(&a.id().to_string(), "late")
            .unwrap();
        let stats = store.stats();
        assert_eq!(
            (stats.awaiting_confirmation, stats.revocations_overdue),
            (0, 0)
        );
        store.check_indexes().unwrap();
    }

    #[test]
    fn expired_grants_await_confirmation_too() {
        let (store, clock) = store();
        let a = store.create(grant(t0(), 0, "s", "w", 0)).unwrap();
        clock.set(a.expires_at + TimeDelta::minutes(5));
        assert_eq!(store.sweep().expired, 1);
        assert_eq!(store.stats().awaiting_confirmation, 1);
        clock.advance(TimeDelta::minutes(5));
        assert_eq!(store.sweep().overdue, 1);
    }

    #[test]
    fn name_index_collisions_never_widen_a_revocation_or_a_listing() {
        let store = colliding_store();
        let mut by_workflow: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for i in 0..12 {
            let (subject, workflow) = (["s1", "s2", "s3"][i % 3], ["w1", "w2"][i % 2]);
            let g = store.create(grant(t0(), 0, subject, workflow, 0)).unwrap();
            by_workflow
                .entry(workflow)
                .or_default()
                .push(g.id().to_string());
        }
        store.check_indexes().unwrap();
        // Listing one workflow page by page sees only its grants, in id order.
        let filter = ListFilter {
            workflow_id: Some("w2".into()),
            ..ListFilter::default()
        };
        let (mut seen, mut token) = (Vec::new(), None::<String>);
        loop {
            let page = store.list(&filter, 2, token.as_deref()).unwrap();
            seen.extend(page.grants.iter().map(|g| g.id().to_string()));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, by_workflow["w2"]);
        // Revoking a workflow or a subject ends only theirs.
        let revoked = store.revoke_workflow("w1", &revocation()).unwrap();
        let mut ids: Vec<_> = revoked.iter().map(|g| g.id().to_string()).collect();
        ids.sort();
        assert_eq!(ids, by_workflow["w1"]);
        let revoked = store.revoke_subject("s2", &revocation()).unwrap();
        assert!(!revoked.is_empty());
        assert!(
            revoked
                .iter()
                .all(|g| g.subject_id() == "s2" && g.workflow_id() == Some("w2"))
        );
        for id in &by_workflow["w2"] {
            let g = store.get(id).unwrap();
            let expected = if g.subject_id() == "s2" {
                GrantState::Revoked
            } else {
                GrantState::Active
            };
            assert_eq!(g.state, expected, "{}", g.subject_id());
        }
        assert!(
            store
                .revoke_workflow("w9", &revocation())
                .unwrap()
                .is_empty()
        );
        store.check_indexes().unwrap();
    }

    #[test]
    fn equal_parties_and_names_are_shared_between_grants() {
        let (store, _) = store();
        let a = store.create(grant(t0(), 1, "s1", "w1", 0)).unwrap();
        let b = store.create(grant(t0(), 1, "s1", "w2", 0)).unwrap();
        assert!(Arc::ptr_eq(
            a.spec.terms.subject_bytes(),
            b.spec.terms.subject_bytes()
        ));
        let a = store
            .approve(&a.id().to_string(), &approval("bob"))
            .unwrap();
        let b = store
            .approve(&b.id().to_string(), &approval("bob"))
            .unwrap();
        assert!(Arc::ptr_eq(
            &a.grant.approvals[0].approver,
            &b.grant.approvals[0].approver
        ));
        assert!(Arc::ptr_eq(
            &a.grant.approvals[0].role,
            &b.grant.approvals[0].role
        ));
        // What a grant holds for itself stays small: no spare capacity, no copies.
        assert_eq!(a.grant.approvals.len(), 1);
        assert_eq!(a.grant.decision_ids.len(), 2);
        assert!(
            size_of::<Grant>() <= 88,
            "Grant is {} B",
            size_of::<Grant>()
        );
        assert!(
            size_of::<crate::grants::GrantSpec>() <= 120,
            "GrantSpec is {} B",
            size_of::<crate::grants::GrantSpec>()
        );
    }

    #[test]
    fn pagination_is_stable_and_filtered() {
        let (store, clock) = store();
        let mut ids = Vec::new();
        for i in 0..25 {
            let wf = if i % 2 == 0 { "even" } else { "odd" };
            let subject = if i % 3 == 0 { "s0" } else { "s1" };
            ids.push(
                store
                    .create(grant(t0(), 0, subject, wf, 0))
                    .unwrap()
                    .id()
                    .to_string(),
            );
            clock.advance(TimeDelta::milliseconds(1));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list(&ListFilter::default(), 10, token.as_deref())
                .unwrap();
            pages += 1;
            seen.extend(page.grants.iter().map(|g| g.id().to_string()));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, sorted);
        // Exactly a page's worth: no empty trailing page.
        let page = store.list(&ListFilter::default(), 25, None).unwrap();
        assert_eq!(page.grants.len(), 25);
        assert_eq!(page.next_page_token, None);

        let filter = ListFilter {
            workflow_id: Some("even".into()),
            subject_id: Some("s0".into()),
            state: None,
        };
        let expected: Vec<_> = sorted
            .iter()
            .filter(|id| {
                let g = store.get(id).unwrap();
                g.workflow_id() == Some("even") && g.subject_id() == "s0"
            })
            .cloned()
            .collect();
        let first = store.list(&filter, 2, None).unwrap();
        let rest = store
            .list(&filter, 0, first.next_page_token.as_deref())
            .unwrap();
        let got: Vec<_> = first
            .grants
            .iter()
            .chain(&rest.grants)
            .map(|g| g.id().to_string())
            .collect();
        assert_eq!(got, expected);
        store.revoke(&sorted[0], &revocation()).unwrap();
        let revoked = store
            .list(
                &ListFilter {
                    state: Some(GrantState::Revoked),
                    ..Default::default()
                },
                0,
                Some(""),
            )
            .unwrap();
        assert_eq!(revoked.grants.len(), 1);
        for bad in [
            "garbage",
            "g1.",
            "g1.zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            &sorted[0],
        ] {
            assert!(
                matches!(
                    store.list(&ListFilter::default(), 10, Some(bad)),
                    Err(StoreError::InvalidPageToken)
                ),
                "{bad}"
            );
        }
        let none = store
            .list(
                &ListFilter {
                    workflow_id: Some("missing".into()),
                    ..Default::default()
                },
                0,
                None,
            )
            .unwrap();
        assert!(none.grants.is_empty() && none.next_page_token.is_none());
    }

    #[test]
    fn a_slow_watcher_lags_and_never_blocks_the_store() {
        let clock = ManualClock::at(t0());
        let options = StoreOptions {
            event_capacity: 4,
            ..StoreOptions::default()
        };
        let (store, _) = MemoryGrantStore::open(options, Arc::new(clock)).unwrap();
        let mut rx = store.subscribe();
        for _ in 0..10 {
            store.create(grant(t0(), 1, "s", "w", 0)).unwrap();
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(6))));
        assert_eq!(drain(&mut rx).len(), 4);
    }
}
