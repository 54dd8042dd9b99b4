//! The journal's own record of a whole grant (format 2), independent of the public
//! API's `stepgate.v1.Grant`: ids and the evidence trail as 16-byte UUIDs, the terms as
//! the exact bytes the grant holds them in (so replay copies and shares them without
//! decoding them into messages and encoding them again), the ending in one optional
//! part.
//!
//! ```proto
//! message GrantRecord {
//!   bytes id = 1;                                // 16 bytes
//!   uint32 state = 2;                            // 1 PENDING, 2 ACTIVE, 3 REJECTED, 4 EXPIRED, 5 REVOKED
//!   bytes subject = 3;                           // the encoded subject (CompactTerms)
//!   optional bytes resource = 4;                 // the encoded resource
//!   bytes terms = 5;                             // action, scope, workflow, encoded
//!   repeated ApprovalRecord approvals = 6;
//!   uint32 required_approvals = 7;
//!   google.protobuf.Timestamp created_at = 8;
//!   google.protobuf.Timestamp activated_at = 9;
//!   google.protobuf.Timestamp expires_at = 10;
//!   google.protobuf.Duration ttl = 11;
//!   uint64 uses = 12;
//!   uint64 max_uses = 13;
//!   string policy_revision = 14;
//!   bytes decision_ids = 15;                     // 16-byte ids one after another
//!   EndingRecord ending = 16;                    // exactly when the state is terminal
//! }
//! message ApprovalRecord {
//!   string approver = 1; string role = 2; google.protobuf.Timestamp at = 3;
//!   bytes decision_id = 4; string comment = 5;
//! }
//! message EndingRecord {
//!   string by = 1; string reason = 2; google.protobuf.Timestamp at = 3;
//!   bool revocation_confirmed = 4; string revocation_evidence = 5;
//!   bool overdue_reported = 6;
//! }
//! ```

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use prost_types::{Duration, Timestamp};
use uuid::Uuid;

use crate::grants::{
    intern::NAMES,
    model::{Approval, Ending, Grant, GrantSpec, GrantState},
    terms::CompactTerms,
};

/// A whole grant as the journal keeps it (format 2). See the module doc.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GrantRecord {
    /// The grant's id, 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// The recorded state ([`state_number`]).
    #[prost(uint32, tag = "2")]
    pub state: u32,
    /// The encoded subject.
    #[prost(bytes = "vec", tag = "3")]
    pub subject: Vec<u8>,
    /// The encoded resource, if any.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub resource: Option<Vec<u8>>,
    /// The encoded action, scope and workflow.
    #[prost(bytes = "vec", tag = "5")]
    pub terms: Vec<u8>,
    /// Allowed approvals so far.
    #[prost(message, repeated, tag = "6")]
    pub approvals: Vec<ApprovalRecord>,
    /// Distinct approvals needed.
    #[prost(uint32, tag = "7")]
    pub required_approvals: u32,
    /// When it was requested.
    #[prost(message, optional, tag = "8")]
    pub created_at: Option<Timestamp>,
    /// When it became ACTIVE.
    #[prost(message, optional, tag = "9")]
    pub activated_at: Option<Timestamp>,
    /// Approval deadline or end of access.
    #[prost(message, optional, tag = "10")]
    pub expires_at: Option<Timestamp>,
    /// Granted duration once ACTIVE.
    #[prost(message, optional, tag = "11")]
    pub ttl: Option<Duration>,
    /// Uses counted.
    #[prost(uint64, tag = "12")]
    pub uses: u64,
    /// Maximum uses; 0 = unlimited.
    #[prost(uint64, tag = "13")]
    pub max_uses: u64,
    /// Policy revision that created it.
    #[prost(string, tag = "14")]
    pub policy_revision: String,
    /// The evidence trail, 16 bytes per decision id.
    #[prost(bytes = "vec", tag = "15")]
    pub decision_ids: Vec<u8>,
    /// How it ended, once it has.
    #[prost(message, optional, tag = "16")]
    pub ending: Option<EndingRecord>,
}

/// One approval in a [`GrantRecord`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApprovalRecord {
    /// Who approved.
    #[prost(string, tag = "1")]
    pub approver: String,
    /// In which role.
    #[prost(string, tag = "2")]
    pub role: String,
    /// When.
    #[prost(message, optional, tag = "3")]
    pub at: Option<Timestamp>,
    /// The `approve` decision, 16 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub decision_id: Vec<u8>,
    /// The approver's comment.
    #[prost(string, tag = "5")]
    pub comment: String,
}

/// The ending of a terminal grant in a [`GrantRecord`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndingRecord {
    /// Who or what ended it.
    #[prost(string, tag = "1")]
    pub by: String,
    /// Why.
    #[prost(string, tag = "2")]
    pub reason: String,
    /// When stepgate recorded its end.
    #[prost(message, optional, tag = "3")]
    pub at: Option<Timestamp>,
    /// The downstream system confirmed the revocation.
    #[prost(bool, tag = "4")]
    pub revocation_confirmed: bool,
    /// Its evidence.
    #[prost(string, tag = "5")]
    pub revocation_evidence: String,
    /// `revocation_overdue` was emitted.
    #[prost(bool, tag = "6")]
    pub overdue_reported: bool,
}

/// Why a journal record is not a valid [`Grant`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid grant record: {0}")]
pub struct InvalidGrant(pub &'static str);

/// The journal's number of a state (the same numbers format 1 used).
pub fn state_number(state: GrantState) -> u32 {
    match state {
        GrantState::Pending => 1,
        GrantState::Active => 2,
        GrantState::Rejected => 3,
        GrantState::Expired => 4,
        GrantState::Revoked => 5,
    }
}

fn state_of(number: u32) -> Option<GrantState> {
    GrantState::ALL
        .into_iter()
        .find(|&state| state_number(state) == number)
}

/// A chrono time as a protobuf timestamp.
pub(super) fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        // Below 2e9 by construction (leap-second nanos are below 2e9 too).
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(999_999_999),
    }
}

/// A protobuf timestamp as a chrono time; `None` when out of range or malformed.
pub(super) fn from_timestamp(ts: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// A protobuf duration as a chrono duration; `None` when out of range or malformed.
pub(super) fn from_duration(d: &Duration) -> Option<TimeDelta> {
    if !(-999_999_999..=999_999_999).contains(&d.nanos)
        || (d.seconds > 0 && d.nanos < 0)
        || (d.seconds < 0 && d.nanos > 0)
    {
        return None;
    }
    TimeDelta::try_seconds(d.seconds)?.checked_add(&TimeDelta::nanoseconds(i64::from(d.nanos)))
}

/// 16-byte UUIDs one after another.
pub(super) fn uuids(bytes: &[u8], what: &'static str) -> Result<Box<[Uuid]>, InvalidGrant> {
    if !bytes.len().is_multiple_of(16) {
        return Err(InvalidGrant(what));
    }
    bytes
        .chunks_exact(16)
        .map(|id| Uuid::from_slice(id).map_err(|_| InvalidGrant(what)))
        .collect()
}

impl From<&Grant> for GrantRecord {
    fn from(g: &Grant) -> Self {
        let spec = &*g.spec;
        Self {
            id: spec.id.as_bytes().to_vec(),
            state: state_number(g.state),
            subject: spec.terms.subject_bytes().to_vec(),
            resource: spec.terms.resource_bytes().map(|r| r.to_vec()),
            terms: spec.terms.own_bytes().to_vec(),
            approvals: g
                .approvals
                .iter()
                .map(|a| ApprovalRecord {
                    approver: a.approver.to_string(),
                    role: a.role.to_string(),
                    at: Some(timestamp(a.at)),
                    decision_id: a.decision_id.as_bytes().to_vec(),
                    comment: a.comment.to_string(),
                })
                .collect(),
            required_approvals: spec.required_approvals,
            created_at: Some(timestamp(spec.created_at)),
            activated_at: g.activated_at.map(timestamp),
            expires_at: Some(timestamp(g.expires_at)),
            ttl: Some(Duration {
                seconds: spec.ttl.num_seconds(),
                nanos: spec.ttl.subsec_nanos(),
            }),
            uses: g.uses,
            max_uses: spec.max_uses,
            policy_revision: spec.policy_revision.to_string(),
            decision_ids: g.decision_ids.iter().flat_map(|d| *d.as_bytes()).collect(),
            ending: g.ending.as_deref().map(|e| EndingRecord {
                by: e.by.clone(),
                reason: e.reason.clone(),
                at: Some(timestamp(e.at)),
                revocation_confirmed: e.revocation_confirmed,
                revocation_evidence: e.revocation_evidence.clone(),
                overdue_reported: e.overdue_reported,
            }),
        }
    }
}

impl TryFrom<GrantRecord> for Grant {
    type Error = InvalidGrant;

    fn try_from(g: GrantRecord) -> Result<Self, InvalidGrant> {
        let id = Uuid::from_slice(&g.id).map_err(|_| InvalidGrant("id is not 16 bytes"))?;
        let state = state_of(g.state).ok_or(InvalidGrant("unknown state"))?;
        let time = |ts: Option<Timestamp>, what| {
            ts.as_ref()
                .and_then(from_timestamp)
                .ok_or(InvalidGrant(what))
        };
        let created_at = time(g.created_at, "created_at missing or out of range")?;
        let expires_at = time(g.expires_at, "expires_at missing or out of range")?;
        let activated_at = match g.activated_at {
            None => None,
            Some(ts) => Some(from_timestamp(&ts).ok_or(InvalidGrant("activated_at out of range"))?),
        };
        let ttl = g
            .ttl
            .as_ref()
            .and_then(from_duration)
            .ok_or(InvalidGrant("ttl missing or out of range"))?;
        let approvals = g
            .approvals
            .into_iter()
            .map(|a| {
                Ok(Approval {
                    at: time(a.at, "approval time missing or out of range")?,
                    decision_id: Uuid::from_slice(&a.decision_id)
                        .map_err(|_| InvalidGrant("approval decision id is not 16 bytes"))?,
                    approver: NAMES.intern(&a.approver),
                    role: NAMES.intern(&a.role),
                    comment: a.comment.into(),
                })
            })
            .collect::<Result<Arc<[_]>, InvalidGrant>>()?;
        let decision_ids = uuids(&g.decision_ids, "decision ids are not 16-byte ids")?;
        let ending = match (state.is_terminal(), g.ending) {
            (true, Some(e)) => Some(Box::new(Ending {
                by: e.by,
                reason: e.reason,
                at: time(e.at, "ended_at missing or out of range")?,
                revocation_confirmed: e.revocation_confirmed,
                revocation_evidence: e.revocation_evidence,
                overdue_reported: e.overdue_reported,
            })),
            (false, None) => None,
            (true, None) => return Err(InvalidGrant("an ended grant without its ending")),
            (false, Some(_)) => return Err(InvalidGrant("a live grant with an ending")),
        };
        let terms = CompactTerms::from_encoded(&g.subject, g.resource.as_deref(), &g.terms)
            .ok_or(InvalidGrant("terms do not decode"))?;
        Ok(Self {
            spec: Arc::new(GrantSpec {
                id,
                terms,
                required_approvals: g.required_approvals,
                created_at,
                ttl,
                max_uses: g.max_uses,
                // Replay reads one revision string per grant: share them again.
                policy_revision: NAMES.intern(&g.policy_revision),
            }),
            state,
            approvals,
            activated_at,
            expires_at,
            uses: g.uses,
            ending,
            decision_ids,
        })
    }
}
