//! Format 1's whole-grant record, read only: journals written before format 2 stored a
//! grant as the public API's `stepgate.v1.Grant` (with its end time and overdue flag
//! beside it in the envelope). This is that message's schema as it was then, frozen
//! here so the API can change without changing what old journals mean; the subject,
//! resource and workflow are kept as the bytes they were written as. A format-1 grant
//! is read by upgrading it to a [`GrantRecord`], so there is one way into a [`Grant`].
//!
//! [`Grant`]: crate::grants::Grant

use prost_types::{Duration, Timestamp};
use uuid::Uuid;

use super::grant_record::{ApprovalRecord, EndingRecord, GrantRecord, InvalidGrant};
use crate::grants::terms::CompactTerms;

/// `stepgate.v1.Grant` as format 1 wrote it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GrantV1 {
    /// Hyphenated UUID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// `stepgate.v1.GrantState` (1 PENDING ... 5 REVOKED).
    #[prost(int32, tag = "2")]
    pub state: i32,
    /// The encoded `stepgate.v1.Subject`.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub subject: Option<Vec<u8>>,
    /// The action.
    #[prost(string, tag = "4")]
    pub action: String,
    /// The encoded `stepgate.v1.Resource`.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub resource: Option<Vec<u8>>,
    /// Scope.
    #[prost(string, repeated, tag = "6")]
    pub scope: Vec<String>,
    /// The encoded `stepgate.v1.Workflow`.
    #[prost(bytes = "vec", optional, tag = "7")]
    pub workflow: Option<Vec<u8>>,
    /// Approvals.
    #[prost(message, repeated, tag = "8")]
    pub approvals: Vec<ApprovalV1>,
    /// Distinct approvals needed.
    #[prost(uint32, tag = "9")]
    pub required_approvals: u32,
    /// When it was requested.
    #[prost(message, optional, tag = "10")]
    pub created_at: Option<Timestamp>,
    /// When it became ACTIVE.
    #[prost(message, optional, tag = "11")]
    pub activated_at: Option<Timestamp>,
    /// Approval deadline or end of access.
    #[prost(message, optional, tag = "12")]
    pub expires_at: Option<Timestamp>,
    /// Granted duration.
    #[prost(message, optional, tag = "13")]
    pub ttl: Option<Duration>,
    /// Uses counted.
    #[prost(uint64, tag = "14")]
    pub uses: u64,
    /// Maximum uses.
    #[prost(uint64, tag = "15")]
    pub max_uses: u64,
    /// Who ended it.
    #[prost(string, tag = "16")]
    pub ended_by: String,
    /// Why.
    #[prost(string, tag = "17")]
    pub end_reason: String,
    /// Revocation confirmed downstream.
    #[prost(bool, tag = "18")]
    pub revocation_confirmed: bool,
    /// Its evidence.
    #[prost(string, tag = "19")]
    pub revocation_evidence: String,
    /// Policy revision.
    #[prost(string, tag = "20")]
    pub policy_revision: String,
    /// Hyphenated decision ids.
    #[prost(string, repeated, tag = "21")]
    pub decision_ids: Vec<String>,
}

/// `stepgate.v1.Approval` as format 1 wrote it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApprovalV1 {
    /// Who approved.
    #[prost(string, tag = "1")]
    pub approver: String,
    /// In which role.
    #[prost(string, tag = "2")]
    pub role: String,
    /// When.
    #[prost(message, optional, tag = "3")]
    pub at: Option<Timestamp>,
    /// Hyphenated decision id.
    #[prost(string, tag = "4")]
    pub decision_id: String,
    /// Comment.
    #[prost(string, tag = "5")]
    pub comment: String,
}

fn uuid_bytes(s: &str, what: &'static str) -> Result<Vec<u8>, InvalidGrant> {
    Uuid::parse_str(s)
        .map(|id| id.as_bytes().to_vec())
        .map_err(|_| InvalidGrant(what))
}

impl GrantV1 {
    /// The grant as format 2 records it; `ended_at` and `overdue_reported` are the
    /// envelope's (format 1 kept them beside the grant). An ended grant needs
    /// `ended_at`.
    pub fn upgrade(
        self,
        ended_at: Option<Timestamp>,
        overdue_reported: bool,
    ) -> Result<GrantRecord, InvalidGrant> {
        let state = u32::try_from(self.state)
            .ok()
            .filter(|s| (1..=5).contains(s))
            .ok_or(InvalidGrant("unknown state"))?;
        let terminal = state >= 3;
        let ending = if terminal {
            Some(EndingRecord {
                by: self.ended_by,
                reason: self.end_reason,
                at: Some(ended_at.ok_or(InvalidGrant("an ended grant without ended_at"))?),
                revocation_confirmed: self.revocation_confirmed,
                revocation_evidence: self.revocation_evidence,
                overdue_reported,
            })
        } else {
            None
        };
        Ok(GrantRecord {
            id: uuid_bytes(&self.id, "id is not a UUID")?,
            state,
            subject: self.subject.ok_or(InvalidGrant("subject missing"))?,
            resource: self.resource,
            terms: CompactTerms::encode_own(self.action, self.scope, self.workflow),
            approvals: self
                .approvals
                .into_iter()
                .map(|a| {
                    Ok(ApprovalRecord {
                        decision_id: uuid_bytes(
                            &a.decision_id,
                            "approval decision id is not a UUID",
                        )?,
                        approver: a.approver,
                        role: a.role,
                        at: a.at,
                        comment: a.comment,
                    })
                })
                .collect::<Result<_, InvalidGrant>>()?,
            required_approvals: self.required_approvals,
            created_at: self.created_at,
            activated_at: self.activated_at,
            expires_at: self.expires_at,
            ttl: self.ttl,
            uses: self.uses,
            max_uses: self.max_uses,
            policy_revision: self.policy_revision,
            decision_ids: self
                .decision_ids
                .iter()
                .map(|d| uuid_bytes(d, "decision id is not a UUID"))
                .collect::<Result<Vec<_>, _>>()?
                .concat(),
            ending,
        })
    }
}
