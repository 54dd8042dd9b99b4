//! The journal's record format.
//!
//! `<state_dir>/grants.journal` starts with the 8-byte magic `SGJRNL\0` and a format
//! byte, then records, each:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | payload length, u32 little-endian (at most [`MAX_RECORD_LEN`]) |
//! | 4 | CRC-32 (IEEE) of the payload, u32 little-endian |
//! | 4 | CRC-32 of the 8 bytes before it, u32 little-endian (so a damaged length is never taken for a torn tail) |
//! | n | payload: a prost-encoded [`JournalRecord`] |
//!
//! ```proto
//! // Private to stepgate; defined with prost derive in journal/.
//! message JournalRecord {
//!   GrantRecord put = 6;                         // put: the whole grant after the mutation
//!   GrantV1 grant_v1 = 1;                        // or, format 1: the put as stepgate.v1.Grant
//!   google.protobuf.Timestamp ended_at = 2;      //   with it: when stepgate recorded its end
//!   bool overdue_reported = 3;                   //   with it: revocation_overdue emitted
//!   Delta delta = 4;                             // or: a small change to the last put
//!   Expired expired = 5;                         // or: a sweep's mark
//! }
//! message Delta {                                // the hot and the bulk paths
//!   bytes id = 1;                                // 16-byte grant id
//!   optional uint64 uses = 2;                    // a use: the new count
//!   bytes decision_id = 3;                       // 16 bytes appended to the evidence trail
//!   google.protobuf.Timestamp expired_at = 4;    // older journals: the sweep's expiry
//!   bool overdue_reported = 5;                   // the sweep emitted revocation_overdue
//! }
//! message Expired {                              // a sweep's mark
//!   google.protobuf.Timestamp at = 1;            // every live grant due by then had expired
//!   bytes ids = 2;                               // older journals: the grants it expired,
//! }                                              //   16-byte ids one after another
//! ```
//!
//! **Formats.** Format 2 (the format byte `\x02`, written since the journal got its own
//! record type) puts whole grants as a [`GrantRecord`] (see [`super::grant_record`]),
//! owned by the journal, so the public API's messages are not the disk format. Format 1
//! (`\x01`) put them as `stepgate.v1.Grant` (tag 1), read through the frozen schema in
//! [`super::format_v1`] and upgraded to a [`GrantRecord`]. Deltas and marks are the same
//! in both. A reader takes either put in either format; a format-1 journal is compacted
//! at open, which rewrites it in format 2.
//!
//! Every state change a caller is acknowledged for (request, approval, rejection,
//! renewal, revocation, confirmation) is a whole-grant put. A use, an evidence-trail
//! entry, and the sweep's overdue reports are deltas (tens of bytes instead of the
//! whole grant), applied at replay to the grant's last put with the same rules as the
//! live transition, and never moving a terminal grant anywhere.
//!
//! An expiry is not a mutation and is not journaled: a grant ends at its `expires_at`,
//! which its last put holds, so replay derives it exactly as the sweep did (a sweep of
//! 100k due grants writes nothing per grant into the file that uses append to). A
//! sweep that expired grants appends a mark with its time: replay expires, without an
//! event (the sweep announced it), every live grant due by a mark written after the
//! grant's last put, and the store announces the rest as expired while it was down.
//! An overdue report implies an expiry before it, so replay derives that expiry first.
//! Older journals listed a sweep's expiries (as deltas, later as the ids of a mark);
//! they replay as before.
//!
//! Replay keeps the last state of each grant id. Grants dropped after their retention
//! window need no tombstone: replay drops them again (they are past retention), and
//! the next compaction leaves them out. A delta for an id with no put before it (its
//! grant was dropped while a compaction ran) is ignored.
//!

use std::sync::Arc;

use chrono::{DateTime, Utc};
use prost::Message;
use uuid::Uuid;

use super::{JournalError, MAX_RECORD_LEN, RECORD_HEADER_LEN};
use super::{
    format_v1::GrantV1,
    grant_record::{GrantRecord, InvalidGrant, from_timestamp, timestamp, uuids},
};
use crate::grants::model::{Grant, push_trail};

/// One journal record's payload. See the module doc for its proto form.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalRecord {
    /// Format 1: the whole grant after the mutation, as `stepgate.v1.Grant` was then.
    #[prost(message, optional, tag = "1")]
    pub grant_v1: Option<GrantV1>,
    /// Format 1, with `grant_v1`: when stepgate recorded the grant's end.
    #[prost(message, optional, tag = "2")]
    pub ended_at: Option<prost_types::Timestamp>,
    /// Format 1, with `grant_v1`: a `revocation_overdue` event was emitted for it.
    #[prost(bool, tag = "3")]
    pub overdue_reported: bool,
    /// Or a small change to the grant's last state.
    #[prost(message, optional, tag = "4")]
    pub delta: Option<DeltaRecord>,
    /// Or a sweep's mark.
    #[prost(message, optional, tag = "5")]
    pub expired: Option<ExpiredRecord>,
    /// Or the whole grant after the mutation (format 2).
    #[prost(message, optional, tag = "6")]
    pub put: Option<GrantRecord>,
}

/// The wire form of [`Record::Expired`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpiredRecord {
    /// Every live grant due at or before this time had expired.
    #[prost(message, optional, tag = "1")]
    pub at: Option<prost_types::Timestamp>,
    /// Older journals: the grants the sweep expired, 16 bytes each, concatenated.
    #[prost(bytes = "vec", tag = "2")]
    pub ids: Vec<u8>,
}

/// The wire form of a [`Delta`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaRecord {
    /// The grant's id, 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// The new use count, for a use.
    #[prost(uint64, optional, tag = "2")]
    pub uses: Option<u64>,
    /// A decision id appended to the evidence trail, 16 bytes (empty: none).
    #[prost(bytes = "vec", tag = "3")]
    pub decision_id: Vec<u8>,
    /// The sweep recorded the grant's expiry at this time.
    #[prost(message, optional, tag = "4")]
    pub expired_at: Option<prost_types::Timestamp>,
    /// The sweep emitted `revocation_overdue` for it.
    #[prost(bool, tag = "5")]
    pub overdue_reported: bool,
}

/// A small change to a grant's last journaled state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    /// The grant.
    pub id: Uuid,
    /// A use: the new use count.
    pub uses: Option<u64>,
    /// A decision appended to the evidence trail.
    pub decision_id: Option<Uuid>,
    /// Older journals: the sweep recorded the expiry at this time.
    pub expired_at: Option<DateTime<Utc>>,
    /// The sweep emitted `revocation_overdue`.
    pub overdue_reported: bool,
}

impl Delta {
    /// The delta of a sweep expiring `id` at `at`.
    pub fn expired(id: Uuid, at: DateTime<Utc>) -> Self {
        Self {
            expired_at: Some(at),
            ..Self::new(id)
        }
    }

    /// A delta for `id` that changes nothing yet.
    pub fn new(id: Uuid) -> Self {
        Self {
            id,
            uses: None,
            decision_id: None,
            expired_at: None,
            overdue_reported: false,
        }
    }

    /// Applies it to `grant` with the live transitions' rules: the trail keeps its cap,
    /// an expiry only ends a live grant, and nothing leaves a terminal state.
    pub fn apply(&self, grant: &mut Grant) {
        if let Some(id) = self.decision_id {
            grant.trail(id);
        }
        if let Some(uses) = self.uses {
            grant.uses = uses;
        }
        if let Some(at) = self.expired_at {
            let _ = grant.expire(at);
        }
        if self.overdue_reported {
            // Only an ended grant is reported overdue: one still live here expired
            // (unjournaled) before the report.
            let _ = grant.expire(grant.expires_at);
            let _ = grant.report_overdue();
        }
    }

    /// The delta that turns `before` into `after`, when their difference is only a use
    /// count and one evidence-trail entry; `None` when it takes a whole grant.
    pub fn between(before: &Grant, after: &Grant) -> Option<Self> {
        if !Arc::ptr_eq(&before.spec, &after.spec)
            || before.state != after.state
            || before.activated_at != after.activated_at
            || before.expires_at != after.expires_at
            || before.ending != after.ending
            || before.approvals != after.approvals
        {
            return None;
        }
        let mut delta = Self::new(after.id());
        if after.uses != before.uses {
            delta.uses = Some(after.uses);
        }
        if after.decision_ids != before.decision_ids {
            let pushed = *after.decision_ids.last()?;
            let mut replayed = before.decision_ids.clone();
            push_trail(&mut replayed, pushed);
            if replayed != after.decision_ids {
                return None;
            }
            delta.decision_id = Some(pushed);
        }
        Some(delta)
    }
}

/// Frames a payload: length, payload CRC, header CRC, payload.
pub(super) fn frame(record: &JournalRecord) -> Result<Vec<u8>, JournalError> {
    let len = record.encoded_len();
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_RECORD_LEN)
        .ok_or(JournalError::RecordTooLarge(len))?;
    let mut buf = Vec::with_capacity(RECORD_HEADER_LEN + len);
    buf.extend_from_slice(&len32.to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    record
        .encode(&mut buf)
        .map_err(|_| JournalError::RecordTooLarge(len))?;
    let payload_crc = crc32fast::hash(&buf[RECORD_HEADER_LEN..]);
    buf[4..8].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[..8]);
    buf[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(buf)
}

/// Encodes `grant` as one framed whole-grant record.
pub fn encode_record(grant: &Grant) -> Result<Vec<u8>, JournalError> {
    frame(&JournalRecord {
        put: Some(GrantRecord::from(grant)),
        ..JournalRecord::default()
    })
}

/// Encodes a delta as one framed record.
pub fn encode_delta(delta: &Delta) -> Result<Vec<u8>, JournalError> {
    frame(&JournalRecord {
        delta: Some(DeltaRecord {
            id: delta.id.as_bytes().to_vec(),
            uses: delta.uses,
            decision_id: delta
                .decision_id
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default(),
            expired_at: delta.expired_at.map(timestamp),
            overdue_reported: delta.overdue_reported,
        }),
        ..JournalRecord::default()
    })
}

/// A sweep's mark: every live grant due at or before `at` has expired.
pub fn encode_sweep_mark(at: DateTime<Utc>) -> Result<Vec<u8>, JournalError> {
    frame(&JournalRecord {
        expired: Some(ExpiredRecord {
            at: Some(timestamp(at)),
            ids: Vec::new(),
        }),
        ..JournalRecord::default()
    })
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A whole grant.
    Put(Grant),
    /// A change to a grant's last state.
    Delta(Delta),
    /// A sweep's mark: every live grant due by `at` had expired.
    Expired {
        /// When.
        at: DateTime<Utc>,
        /// Older journals: the grants the sweep expired (a mark now lists none).
        ids: Vec<Uuid>,
    },
}

impl Record {
    /// The record as deltas, in order: none for a put or a mark, one per id for an
    /// older mark.
    pub fn deltas(&self) -> impl Iterator<Item = Delta> + '_ {
        let (delta, listed) = match self {
            Self::Put(_) => (None, None),
            Self::Delta(delta) => (Some(*delta), None),
            Self::Expired { at, ids } => (None, Some((*at, ids))),
        };
        let listed = listed
            .into_iter()
            .flat_map(|(at, ids)| ids.iter().map(move |id| Delta::expired(*id, at)));
        delta.into_iter().chain(listed)
    }
}

/// Decodes one payload.
pub(super) fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let record = JournalRecord::decode(payload).map_err(|e| format!("undecodable record: {e}"))?;
    let put = match (record.put, record.grant_v1) {
        (Some(put), None) => Some(put),
        (None, Some(v1)) => Some(
            v1.upgrade(record.ended_at, record.overdue_reported)
                .map_err(|e| e.to_string())?,
        ),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("record carries a grant in two formats".to_owned()),
    };
    match (put, record.delta, record.expired) {
        (Some(put), None, None) => Grant::try_from(put)
            .map(Record::Put)
            .map_err(|e: InvalidGrant| e.to_string()),
        (None, Some(delta), None) => {
            let uuid = |bytes: &[u8], what: &str| {
                Uuid::from_slice(bytes).map_err(|_| format!("delta {what} is not 16 bytes"))
            };
            Ok(Record::Delta(Delta {
                id: uuid(&delta.id, "id")?,
                uses: delta.uses,
                decision_id: if delta.decision_id.is_empty() {
                    None
                } else {
                    Some(uuid(&delta.decision_id, "decision id")?)
                },
                expired_at: match delta.expired_at {
                    None => None,
                    Some(ts) => Some(
                        from_timestamp(&ts)
                            .ok_or_else(|| "delta expired_at out of range".to_owned())?,
                    ),
                },
                overdue_reported: delta.overdue_reported,
            }))
        }
        (None, None, Some(expired)) => {
            let at = expired
                .at
                .as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| "expired record without a time in range".to_owned())?;
            let ids = uuids(&expired.ids, "expired record ids are not 16-byte ids")
                .map_err(|e| e.0.to_owned())?;
            Ok(Record::Expired {
                at,
                ids: ids.into_vec(),
            })
        }
        (None, None, None) => Err("record carries none of a grant, a delta or expiries".to_owned()),
        _ => Err("record carries more than one of a grant, a delta and expiries".to_owned()),
    }
}
