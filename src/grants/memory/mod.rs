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

mod counts;
mod list;
mod name_index;
mod own_clock;
mod seam;
mod sweep;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use chrono::{DateTime, TimeDelta, Utc};
use dashmap::DashMap;
use tokio::sync::broadcast;
use uuid::Uuid;

use self::{counts::Counts, name_index::NameIndex, sweep::DueAction};
use super::{
    id_hash::IdHash,
    journal::{
        Delta, Durability, Journal, JournalError, JournalFiles, OsFiles, encode_delta,
        encode_record, encode_sweep_mark,
    },
    model::{
        EventPosition, Grant, GrantEvent, GrantEventKind, GrantState, Revocation, Transition,
        TransitionError,
    },
    store::{Change, RevokeScope, StoreError, StoreOptions, Updated},
};
use crate::clock::Clock;

/// How many mutexes serialise grant writers (a power of two).
pub const WRITER_STRIPES: usize = 4096;

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
    /// The position of the last event in the feed.
    last_position: AtomicU64,
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
        Self::open_with(options, clock, Arc::new(OsFiles))
    }

    /// As [`MemoryGrantStore::open`], the journal appending through the files `files`
    /// gives (tests hand in one that fails).
    pub fn open_with(
        options: StoreOptions,
        clock: Arc<dyn Clock>,
        files: Arc<dyn JournalFiles>,
    ) -> Result<(Self, Vec<GrantEvent>), StoreError> {
        let Some(dir) = &options.state_dir else {
            return Ok((Self::empty(&options, clock, None), Vec::new()));
        };
        let (journal, replay) = Journal::open_with(dir, options.journal.clone(), files)?;
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
                    position: EventPosition(store.positions(1)),
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
            last_position: AtomicU64::new(0),
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

    /// Takes `n` positions in the event feed; returns the first. Every event takes
    /// one, watched or not, so a follower that resumes can tell what it missed.
    fn positions(&self, n: usize) -> u64 {
        self.last_position.fetch_add(n as u64, Ordering::Relaxed) + 1
    }

    fn publish(&self, kinds: &[GrantEventKind], grant: &Arc<Grant>, at: DateTime<Utc>) {
        let first = self.positions(kinds.len());
        if self.events.receiver_count() == 0 {
            return;
        }
        self.send(first, kinds, grant, at);
    }

    /// Sends events numbered from `first` (whose positions were taken).
    fn send(&self, first: u64, kinds: &[GrantEventKind], grant: &Arc<Grant>, at: DateTime<Utc>) {
        for (position, &kind) in (first..).zip(kinds) {
            // An error only means every receiver went away meanwhile.
            let _ = self.events.send(GrantEvent {
                kind,
                grant: grant.clone(),
                at,
                position: EventPosition(position),
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

    /// Applies a change to one grant at `now` ([`GrantStore::transition`]).
    fn apply(
        &self,
        id: &str,
        change: Change<'_>,
        now: DateTime<Utc>,
    ) -> Result<Updated, StoreError> {
        let key = key_of(id).ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        self.apply_key(key, change, None, now)
    }

    /// Applies a change to one grant; `durability` overrides the record's own.
    fn apply_key(
        &self,
        key: Uuid,
        change: Change<'_>,
        durability: Option<Durability>,
        now: DateTime<Utc>,
    ) -> Result<Updated, StoreError> {
        let not_found = || StoreError::NotFound(key.hyphenated().to_string());
        let _writer = self.writer(&key);
        let current = self.current(&key).ok_or_else(not_found)?;
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

    /// Revokes the grants in `scope` at `now` ([`GrantStore::revoke_all`]): those the
    /// name index lists that are named so (checked under each grant's lock: the index
    /// only says "maybe").
    fn revoke_scope(
        &self,
        scope: RevokeScope<'_>,
        revocation: &Revocation,
        now: DateTime<Utc>,
    ) -> Result<Vec<Arc<Grant>>, StoreError> {
        let (ids, named): (_, &(dyn Fn(&Grant) -> bool + Sync)) = match scope {
            RevokeScope::Workflow(workflow_id) => (
                self.by_workflow.ids(workflow_id, None, usize::MAX),
                &move |g: &Grant| g.workflow_id() == Some(workflow_id),
            ),
            RevokeScope::Subject(subject_id) => (
                self.by_subject.ids(subject_id, None, usize::MAX),
                &move |g: &Grant| g.subject_id() == subject_id,
            ),
        };
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
                now,
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

    /// Stores a new grant at `now` ([`GrantStore::create`]).
    fn create_at(&self, grant: Grant, now: DateTime<Utc>) -> Result<Arc<Grant>, StoreError> {
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
        self.publish(events, &grant, now);
        Ok(grant)
    }

    /// The grant as of `now` ([`GrantStore::get`]).
    fn get_at(&self, id: &str, now: DateTime<Utc>) -> Option<Arc<Grant>> {
        let grant = self.current(&key_of(id)?)?;
        Some(view(grant, now))
    }
}
