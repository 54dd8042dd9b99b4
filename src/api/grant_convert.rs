//! Grants on the wire: the domain [`Grant`] and its events as `stepgate.v1` messages,
//! and a state filter from the wire. The grant store never sees these types.

use chrono::TimeDelta;

use super::convert::timestamp;
use crate::{
    grants::{Approval, Ending, Grant, GrantEvent, GrantState},
    proto::v1,
};

/// The wire enum value of a state.
pub(crate) fn state_message(state: GrantState) -> v1::GrantState {
    match state {
        GrantState::Pending => v1::GrantState::Pending,
        GrantState::Active => v1::GrantState::Active,
        GrantState::Rejected => v1::GrantState::Rejected,
        GrantState::Expired => v1::GrantState::Expired,
        GrantState::Revoked => v1::GrantState::Revoked,
    }
}

/// The state a wire enum value names; `None` for UNSPECIFIED (as a filter: any state).
pub(crate) fn state_filter(state: v1::GrantState) -> Option<GrantState> {
    match state {
        v1::GrantState::Unspecified => None,
        v1::GrantState::Pending => Some(GrantState::Pending),
        v1::GrantState::Active => Some(GrantState::Active),
        v1::GrantState::Rejected => Some(GrantState::Rejected),
        v1::GrantState::Expired => Some(GrantState::Expired),
        v1::GrantState::Revoked => Some(GrantState::Revoked),
    }
}

/// A chrono duration as a protobuf duration (seconds and nanos of the same sign).
fn duration(d: TimeDelta) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}

impl From<&Approval> for v1::Approval {
    fn from(a: &Approval) -> Self {
        Self {
            approver: a.approver.to_string(),
            role: a.role.to_string(),
            at: Some(timestamp(a.at)),
            decision_id: a.decision_id.hyphenated().to_string(),
            comment: a.comment.to_string(),
        }
    }
}

impl From<&Grant> for v1::Grant {
    fn from(g: &Grant) -> Self {
        let spec = &*g.spec;
        let ending = g.ending.as_deref();
        let text = |f: fn(&Ending) -> &String| ending.map(f).cloned().unwrap_or_default();
        let terms = spec.terms.decode();
        Self {
            id: spec.id.hyphenated().to_string(),
            state: state_message(g.state) as i32,
            subject: Some(terms.subject),
            action: terms.action,
            resource: terms.resource,
            scope: terms.scope,
            workflow: terms.workflow,
            approvals: g.approvals.iter().map(v1::Approval::from).collect(),
            required_approvals: spec.required_approvals,
            created_at: Some(timestamp(spec.created_at)),
            activated_at: g.activated_at.map(timestamp),
            expires_at: Some(timestamp(g.expires_at)),
            ttl: Some(duration(spec.ttl)),
            uses: g.uses,
            max_uses: spec.max_uses,
            ended_by: text(|e| &e.by),
            end_reason: text(|e| &e.reason),
            revocation_confirmed: g.revocation_confirmed(),
            revocation_evidence: text(|e| &e.revocation_evidence),
            policy_revision: spec.policy_revision.to_string(),
            decision_ids: g
                .decision_ids
                .iter()
                .map(|id| id.hyphenated().to_string())
                .collect(),
        }
    }
}

impl From<&GrantEvent> for v1::GrantEvent {
    fn from(e: &GrantEvent) -> Self {
        Self {
            kind: e.kind.as_str().to_owned(),
            grant: Some(v1::Grant::from(e.grant.as_ref())),
            at: Some(timestamp(e.at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::grants::{
        GrantEventKind,
        model::tests::{active_grant, ended_grant},
    };

    #[test]
    fn a_grant_maps_field_for_field() {
        let g = ended_grant();
        let wire = v1::Grant::from(&g);
        assert_eq!(wire.state, v1::GrantState::Revoked as i32);
        assert_eq!(wire.id, g.id().hyphenated().to_string());
        assert_eq!(
            wire.ttl,
            Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0
            })
        );
        assert_eq!(wire.approvals[0].approver, "bob");
        assert_eq!(wire.ended_by, "ops");
        assert_eq!(wire.policy_revision, "rev1");
        assert_eq!(wire.decision_ids.len(), 2);
        assert_eq!(
            wire.subject.as_ref().map(|s| s.id.as_str()),
            Some(g.subject_id())
        );
        let at = g.expires_at;
        let event = GrantEvent {
            kind: GrantEventKind::RevocationOverdue,
            grant: Arc::new(g),
            at,
            position: crate::grants::EventPosition(7),
        };
        let wire = v1::GrantEvent::from(&event);
        assert_eq!(wire.kind, "revocation_overdue");
        assert_eq!(wire.at, Some(timestamp(at)));
        assert_eq!(
            v1::Grant::from(&active_grant()).state,
            v1::GrantState::Active as i32
        );
    }

    #[test]
    fn states_map_both_ways() {
        for s in GrantState::ALL {
            assert_eq!(state_filter(state_message(s)), Some(s));
        }
        assert_eq!(state_filter(v1::GrantState::Unspecified), None);
    }
}
