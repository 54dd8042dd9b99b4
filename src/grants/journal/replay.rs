//! Replay: the last state of each grant id, deltas applied in order, and the expiries
//! the sweep's marks cover.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::format::Record;
use crate::grants::model::Grant;

/// What [`Journal::open`] replayed.
#[derive(Debug)]
pub struct Replay {
    /// The last state of each grant id (deltas applied, and the expiries the sweep's
    /// marks after its last put cover), in order of first appearance.
    pub grants: Vec<Grant>,
    /// How many records were read.
    pub records: usize,
    /// Bytes truncated from a torn tail.
    pub truncated_bytes: u64,
}

/// A replay in progress: records are handed to it in file order.
#[derive(Default)]
pub(super) struct Replaying {
    /// Where each grant id is in `grants`.
    index: HashMap<Uuid, usize>,
    grants: Vec<Grant>,
    orphan_deltas: usize,
    /// Where each grant was last put, and each sweep's mark: a mark covers the grants
    /// put before it.
    put_at: Vec<u64>,
    marks: Vec<(u64, DateTime<Utc>)>,
}

impl Replaying {
    /// Applies the record at byte `offset`.
    pub(super) fn record(&mut self, offset: u64, record: Record) {
        match record {
            Record::Put(grant) => match self.index.get(&grant.id()) {
                Some(&i) => {
                    self.grants[i] = grant;
                    self.put_at[i] = offset;
                }
                None => {
                    self.index.insert(grant.id(), self.grants.len());
                    self.grants.push(grant);
                    self.put_at.push(offset);
                }
            },
            deltas => {
                if let Record::Expired { at, .. } = &deltas {
                    self.marks.push((offset, *at));
                }
                for delta in deltas.deltas() {
                    match self.index.get(&delta.id) {
                        Some(&i) => delta.apply(&mut self.grants[i]),
                        None => self.orphan_deltas += 1,
                    }
                }
            }
        }
    }

    /// The last state of each grant, in order of first appearance, with the expiries
    /// the marks after its last put cover.
    pub(super) fn finish(mut self) -> Vec<Grant> {
        expire_marked(&mut self.grants, &self.put_at, &self.marks);
        if self.orphan_deltas > 0 {
            tracing::debug!(
                orphan_deltas = self.orphan_deltas,
                "journal deltas for grants dropped meanwhile ignored"
            );
        }
        self.grants
    }
}

/// Expires each grant that the latest mark after its last put covers: the sweep that
/// wrote the mark expired every live grant due by then. A grant put after a mark is not
/// covered by it, even when the clock stepped back and its expiry is earlier.
fn expire_marked(grants: &mut [Grant], put_at: &[u64], marks: &[(u64, DateTime<Utc>)]) {
    // latest[k]: the latest time among marks[k..].
    let mut latest = vec![None; marks.len() + 1];
    for (k, (_, at)) in marks.iter().enumerate().rev() {
        latest[k] = latest[k + 1].max(Some(*at));
    }
    for (grant, put) in grants.iter_mut().zip(put_at) {
        let after = marks.partition_point(|(offset, _)| offset < put);
        if let Some(mark) = latest[after] {
            let _ = grant.expire(mark);
        }
    }
}
