//! The sweep: what a due-index entry asks of its grant (expire, report overdue, drop),
//! handled in batches, one grant's writer lock at a time.

use std::{collections::HashSet, sync::Arc, time::Instant};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::{MemoryGrantStore, lock};
use crate::grants::{
    id_hash::IdHash,
    journal::{Delta, Durability, encode_delta, encode_sweep_mark},
    model::{Grant, GrantEventKind, Transition},
    store::SweepReport,
};

/// Due grants a sweep handles per batch (one journal write per batch).
const SWEEP_BATCH: usize = 64;

/// What a due index entry asks of a grant at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DueAction {
    Expire,
    ReportOverdue,
    Drop,
    Nothing,
}

impl MemoryGrantStore {
    /// When a grant next needs the sweep: its expiry while live; once ended, the
    /// confirmation deadline (if it awaits one) or the end of its retention.
    pub(super) fn next_due(&self, grant: &Grant) -> DateTime<Utc> {
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

    pub(super) fn due_action(&self, grant: &Grant, now: DateTime<Utc>) -> DueAction {
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
        // The batch's positions at once, and one look at the subscribers per batch (it
        // takes the channel's lock).
        let mut position = self.positions(changed.iter().map(|(events, _)| events.len()).sum());
        if self.events.receiver_count() > 0 {
            for (events, grant) in changed {
                self.send(position, events, &grant, now);
                position += events.len() as u64;
            }
        }
    }

    /// Expires due grants, reports overdue revocations, drops grants past retention,
    /// and compacts the journal when it has grown ([`GrantStore::sweep`]).
    pub(super) fn sweep_due(&self, now: DateTime<Utc>) -> SweepReport {
        let _one_at_a_time = lock(&self.sweeping);
        let started = Instant::now();
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
        crate::grants::intern::released(report.dropped);
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
}
