//! The grant domain model: [`Grant`], its lifecycle [`GrantState`], and the pure state
//! transitions that validate and then mutate a grant, never half-way.
//!
//! A transition either returns a [`Transition`] saying whether the grant changed and which
//! [`GrantEventKind`]s it produced, or a typed [`TransitionError`] and leaves the grant
//! exactly as it was. Nothing moves a REJECTED, EXPIRED or REVOKED grant to another state.
//!
//! Expiry is lazy: a non-terminal grant whose `expires_at` has passed is treated as
//! EXPIRED by every transition ([`Grant::effective_state`]) whether or not a sweep has
//! recorded it yet, so nothing is honoured after `expires_at`.
//!
//! Layout: a grant holds what never changes after the request in one shared
//! [`GrantSpec`] (its subject, action, resource, scope and workflow encoded as
//! [`CompactTerms`], the subject and resource shared with other grants), its approvals
//! in a shared slice, what ends it in an optional boxed [`Ending`], and decision ids as
//! UUIDs in an exact-size slice, so copying a grant for a transition is a few words
//! and an idle grant stays small (well under a kilobyte, indexes included).
//! It knows nothing of the wire: `api/grant_convert.rs` maps it to `stepgate.v1.Grant`,
//! `journal/grant_record.rs` to the journal's record.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::{
    intern::NAMES,
    terms::{CompactTerms, Terms},
};
use crate::{identity, proto::v1};

/// How many decision ids a grant keeps in its evidence trail. The first
/// [`TRAIL_KEPT_HEAD`] (request, approvals) are always kept; beyond the cap the oldest of
/// the rest (usually uses) make room. Every decision is also in the decision log, which
/// names its grant id, so the full trail can be rebuilt from there; the cap keeps a
/// much-used grant's memory and journal records bounded.
pub const MAX_TRAIL: usize = 32;

/// How many of the first decision ids of the trail are never dropped. See [`MAX_TRAIL`].
pub const TRAIL_KEPT_HEAD: usize = 8;

/// The lifecycle state of a grant. REJECTED, EXPIRED and REVOKED are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantState {
    /// Awaiting approvals; `expires_at` is the approval deadline.
    Pending,
    /// In force until `expires_at`.
    Active,
    /// An approver rejected it.
    Rejected,
    /// Its approval deadline or its end of access passed.
    Expired,
    /// Revoked by grant, by workflow or by subject.
    Revoked,
}

impl GrantState {
    /// Every state, in proto order.
    pub const ALL: [GrantState; 5] = [
        GrantState::Pending,
        GrantState::Active,
        GrantState::Rejected,
        GrantState::Expired,
        GrantState::Revoked,
    ];

    /// True for REJECTED, EXPIRED and REVOKED: no transition leaves them.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Rejected | Self::Expired | Self::Revoked)
    }

    /// The short name policies see in `input.grant.state`: `PENDING`, `ACTIVE`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Active => "ACTIVE",
            Self::Rejected => "REJECTED",
            Self::Expired => "EXPIRED",
            Self::Revoked => "REVOKED",
        }
    }

    /// Position in [`GrantState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allowed approval of a grant. Approver and role are shared with the other
/// approvals naming them once recorded ([`Grant::approve`] interns them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Who approved.
    pub approver: Arc<str>,
    /// In which role.
    pub role: Arc<str>,
    /// When.
    pub at: DateTime<Utc>,
    /// The `approve` decision that allowed it.
    pub decision_id: Uuid,
    /// The approver's comment.
    pub comment: Box<str>,
}

/// Who ends a grant and why, for [`Grant::revoke`] and the store's bulk revocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocation {
    /// Who revokes; recorded as `ended_by`.
    pub by: String,
    /// Why; recorded as `end_reason`.
    pub reason: String,
    /// The `revoke` decision that allowed it, appended to the evidence trail.
    pub decision_id: Option<Uuid>,
}

/// What an allowed `request` step asks the store to create. See [`Grant::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRequest {
    /// Who the access is for.
    pub subject: v1::Subject,
    /// The action granted.
    pub action: String,
    /// The resource granted.
    pub resource: Option<v1::Resource>,
    /// Scope narrowing.
    pub scope: Vec<String>,
    /// The workflow (ticket) asking.
    pub workflow: Option<v1::Workflow>,
    /// Distinct approvals needed; 0 = ACTIVE at once.
    pub required_approvals: u32,
    /// The approval deadline of a PENDING grant (ignored when no approval is needed).
    pub approval_deadline: DateTime<Utc>,
    /// Granted duration once ACTIVE (already capped by policy).
    pub ttl: TimeDelta,
    /// Maximum uses; 0 = unlimited.
    pub max_uses: u64,
    /// Policy revision of the `request` decision (shared with the decision).
    pub policy_revision: Arc<str>,
    /// The `request` decision, first in the evidence trail.
    pub decision_id: Uuid,
}

/// The part of a grant fixed at its request. Shared between a grant's versions.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantSpec {
    /// Server-assigned identifier (UUIDv7; hyphenated lowercase on the wire).
    pub id: Uuid,
    /// Subject, action, resource, scope and workflow, encoded ([`CompactTerms::decode`]
    /// gives them back).
    pub terms: CompactTerms,
    /// Distinct allowed approvals needed to activate.
    pub required_approvals: u32,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// Granted duration once ACTIVE (policy-capped).
    pub ttl: TimeDelta,
    /// Maximum uses; 0 = unlimited.
    pub max_uses: u64,
    /// Policy revision that created it.
    pub policy_revision: Arc<str>,
}

/// How a grant ended; set once it is REJECTED, REVOKED or EXPIRED.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ending {
    /// Who or what rejected or revoked it (empty for an expiry).
    pub by: String,
    /// Why it ended.
    pub reason: String,
    /// When it ended: the rejection or revocation as stepgate recorded it, or for an
    /// expiry the grant's `expires_at`, whenever the expiry is observed (so a sweep, a
    /// read and a replay agree). Not in the public proto; starts the
    /// revocation-confirmation and retention clocks.
    pub at: DateTime<Utc>,
    /// The downstream system confirmed the real credential is invalidated.
    pub revocation_confirmed: bool,
    /// What the downstream system gave as evidence.
    pub revocation_evidence: String,
    /// A `revocation_overdue` event was emitted for it (so it is emitted once). Not in
    /// the public proto.
    pub overdue_reported: bool,
}

/// A time-bound entitlement: `stepgate.v1.Grant` with chrono times, laid out for cheap
/// copies (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// What was requested; never changes.
    pub spec: Arc<GrantSpec>,
    /// Lifecycle state as recorded (see [`Grant::effective_state`] for the lazy view).
    pub state: GrantState,
    /// Allowed approvals so far (distinct approvers), shared between the grant's
    /// versions until one adds an approval.
    pub approvals: Arc<[Approval]>,
    /// When it became ACTIVE.
    pub activated_at: Option<DateTime<Utc>>,
    /// PENDING: approval deadline; ACTIVE: end of access; terminal: as it was then.
    pub expires_at: DateTime<Utc>,
    /// Uses counted so far.
    pub uses: u64,
    /// How it ended, once it has.
    pub ending: Option<Box<Ending>>,
    /// The evidence trail: decisions taken about this grant, in order (capped, see
    /// [`MAX_TRAIL`]), without spare capacity.
    pub decision_ids: Box<[Uuid]>,
}

/// What happened to a grant, as `GrantEvent.kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantEventKind {
    /// Created (PENDING or ACTIVE).
    Requested,
    /// An approval was recorded.
    Approved,
    /// An approver rejected it.
    Rejected,
    /// It became ACTIVE.
    Activated,
    /// Its end of access moved.
    Renewed,
    /// A use was counted.
    Used,
    /// It was revoked.
    Revoked,
    /// Its approval deadline or end of access passed.
    Expired,
    /// The downstream system confirmed the credential is invalidated.
    RevocationConfirmed,
    /// It ended and the confirmation did not come within the deadline.
    RevocationOverdue,
}

impl GrantEventKind {
    /// The wire name: `requested`, `approved`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Activated => "activated",
            Self::Renewed => "renewed",
            Self::Used => "used",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::RevocationConfirmed => "revocation_confirmed",
            Self::RevocationOverdue => "revocation_overdue",
        }
    }

    /// This kind alone, as a static slice (for [`Transition::event`]).
    pub const fn as_slice(self) -> &'static [GrantEventKind] {
        match self {
            Self::Requested => &[Self::Requested],
            Self::Approved => &[Self::Approved],
            Self::Rejected => &[Self::Rejected],
            Self::Activated => &[Self::Activated],
            Self::Renewed => &[Self::Renewed],
            Self::Used => &[Self::Used],
            Self::Revoked => &[Self::Revoked],
            Self::Expired => &[Self::Expired],
            Self::RevocationConfirmed => &[Self::RevocationConfirmed],
            Self::RevocationOverdue => &[Self::RevocationOverdue],
        }
    }
}

impl std::fmt::Display for GrantEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something happened to a grant. The grant is the state after the event, shared so
/// a broadcast to many watchers does not copy it.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantEvent {
    /// What happened.
    pub kind: GrantEventKind,
    /// The grant after it happened.
    pub grant: Arc<Grant>,
    /// When (the time the store was given).
    pub at: DateTime<Utc>,
    /// Where it is in the store's event feed.
    pub position: EventPosition,
}

/// A position in a store's event feed: the sequence number of the last event seen
/// ([`GrantEvent::position`]). Positions only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition(pub u64);

/// The result of an allowed transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Transition {
    /// The grant changed (and must be journaled). False for idempotent no-ops.
    pub changed: bool,
    /// Events to publish, in order (empty for a silent change or a no-op).
    pub events: &'static [GrantEventKind],
}

impl Transition {
    /// Nothing changed (an idempotent repeat, e.g. revoking an ended grant).
    pub const UNCHANGED: Self = Self {
        changed: false,
        events: &[],
    };
    /// Changed without an event (evidence trail only).
    pub const RECORDED: Self = Self {
        changed: true,
        events: &[],
    };

    /// Changed, with one event.
    pub const fn event(kind: GrantEventKind) -> Self {
        Self {
            changed: true,
            events: kind.as_slice(),
        }
    }
}

/// Why a transition was refused. The grant is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The step needs a PENDING grant.
    #[error("grant is {0}, not PENDING")]
    NotPending(GrantState),
    /// The step needs an ACTIVE grant.
    #[error("grant is {0}, not ACTIVE")]
    NotActive(GrantState),
    /// The grant's approval deadline or end of access has passed.
    #[error("grant expired at {0}")]
    Expired(DateTime<Utc>),
    /// The grant has been used `max_uses` times.
    #[error("grant exhausted: {0} of {0} uses taken")]
    Exhausted(u64),
    /// This approver already approved the grant.
    #[error("{0} already approved this grant")]
    AlreadyApproved(String),
    /// An approval without an approver.
    #[error("approval has no approver")]
    MissingApprover,
    /// A renewal that does not move `expires_at` later.
    #[error("renewal to {requested} does not extend the grant (expires at {current})")]
    NotAnExtension {
        /// The current end of access.
        current: DateTime<Utc>,
        /// The end of access asked for.
        requested: DateTime<Utc>,
    },
    /// A revocation can only be confirmed for a REVOKED or EXPIRED grant.
    #[error("grant is {0}: only a REVOKED or EXPIRED grant's revocation can be confirmed")]
    NotEnded(GrantState),
    /// The grant has not reached its expiry (the sweep's `expire` on a live grant).
    #[error("grant does not expire before {0}")]
    NotDue(DateTime<Utc>),
    /// A duration that is zero or negative.
    #[error("ttl must be positive")]
    InvalidTtl,
    /// An approval deadline that has already passed.
    #[error("approval deadline {0} has already passed")]
    DeadlinePassed(DateTime<Utc>),
    /// A time computation overflowed chrono's range.
    #[error("time out of range")]
    TimeOutOfRange,
    /// A change that would break a store invariant (e.g. leave a terminal state or
    /// change what was requested).
    #[error("forbidden change: {0}")]
    Forbidden(&'static str),
}

impl Grant {
    /// A new grant for an allowed `request` step: PENDING with `expires_at` = approval
    /// deadline when approvals are required, else ACTIVE at once until `now + ttl`. The
    /// id is a fresh UUIDv7.
    pub fn new(request: GrantRequest, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        if request.ttl <= TimeDelta::zero() {
            return Err(TransitionError::InvalidTtl);
        }
        let (state, activated_at, expires_at) = if request.required_approvals == 0 {
            let end = now
                .checked_add_signed(request.ttl)
                .ok_or(TransitionError::TimeOutOfRange)?;
            (GrantState::Active, Some(now), end)
        } else {
            if request.approval_deadline <= now {
                return Err(TransitionError::DeadlinePassed(request.approval_deadline));
            }
            (GrantState::Pending, None, request.approval_deadline)
        };
        Ok(Self {
            spec: Arc::new(GrantSpec {
                id: Uuid::now_v7(),
                terms: CompactTerms::from(Terms {
                    subject: request.subject,
                    action: request.action,
                    resource: request.resource,
                    scope: request.scope,
                    workflow: request.workflow,
                }),
                required_approvals: request.required_approvals,
                created_at: now,
                ttl: request.ttl,
                max_uses: request.max_uses,
                policy_revision: request.policy_revision,
            }),
            state,
            approvals: Arc::new([]),
            activated_at,
            expires_at,
            uses: 0,
            ending: None,
            decision_ids: Box::new([request.decision_id]),
        })
    }

    /// The grant's id.
    pub fn id(&self) -> Uuid {
        self.spec.id
    }

    /// What was requested, decoded (allocates: see [`CompactTerms`]).
    pub fn terms(&self) -> Terms {
        self.spec.terms.decode()
    }

    /// The id of the subject the access is for (read without decoding).
    pub fn subject_id(&self) -> &str {
        self.spec.terms.subject_id()
    }

    /// Maximum uses; 0 = unlimited.
    pub fn max_uses(&self) -> u64 {
        self.spec.max_uses
    }

    /// The workflow id, if the grant belongs to a workflow with a non-empty id.
    pub fn workflow_id(&self) -> Option<&str> {
        self.spec.terms.workflow_id()
    }

    /// When stepgate recorded its end, if it has ended.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.ending.as_ref().map(|e| e.at)
    }

    /// The downstream system confirmed the real credential is invalidated.
    pub fn revocation_confirmed(&self) -> bool {
        self.ending.as_ref().is_some_and(|e| e.revocation_confirmed)
    }

    /// A `revocation_overdue` event was emitted for it.
    pub fn overdue_reported(&self) -> bool {
        self.ending.as_ref().is_some_and(|e| e.overdue_reported)
    }

    /// The state as of `now`: a non-terminal grant at or past `expires_at` is EXPIRED
    /// whether or not a sweep has recorded it.
    pub fn effective_state(&self, now: DateTime<Utc>) -> GrantState {
        if !self.state.is_terminal() && now >= self.expires_at {
            GrantState::Expired
        } else {
            self.state
        }
    }

    /// The grant as it must be shown at `now`: a copy with the lazy expiry applied
    /// (state EXPIRED, ended at `expires_at`) when it is due, else `None` (show it as
    /// is).
    pub fn expired_view(&self, now: DateTime<Utc>) -> Option<Grant> {
        if self.effective_state(now) == self.state {
            return None;
        }
        let mut view = self.clone();
        view.end_expired();
        Some(view)
    }

    /// True when the grant was ever ACTIVE, has ended REVOKED or EXPIRED, and the
    /// downstream system has not confirmed the real credential is invalidated. A grant
    /// that never became ACTIVE had no credential behind it, so it awaits nothing.
    pub fn awaits_confirmation(&self) -> bool {
        self.activated_at.is_some()
            && matches!(self.state, GrantState::Revoked | GrantState::Expired)
            && !self.revocation_confirmed()
    }

    /// Whether a use would be allowed at `now`, without counting one: the grant is
    /// ACTIVE, unexpired and under `max_uses`. The check [`Grant::record_use`] makes.
    pub fn check_usable(&self, now: DateTime<Utc>) -> Result<(), TransitionError> {
        match self.effective_state(now) {
            GrantState::Active => {}
            GrantState::Expired => return Err(TransitionError::Expired(self.expires_at)),
            other => return Err(TransitionError::NotActive(other)),
        }
        let max = self.spec.max_uses;
        if max != 0 && self.uses >= max {
            return Err(TransitionError::Exhausted(max));
        }
        Ok(())
    }

    /// Records an allowed approval. Needs a PENDING grant before its approval deadline
    /// and an approver who has not approved it yet (by [`identity::key`]: a lookalike of
    /// an earlier approver is that approver). The Nth distinct approval (N =
    /// `required_approvals`) activates it: `activated_at = now`, `expires_at = now +
    /// ttl`; the events are then `approved` and `activated`.
    pub fn approve(
        &mut self,
        approval: Approval,
        now: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        self.require_pending(now)?;
        if approval.approver.is_empty() {
            return Err(TransitionError::MissingApprover);
        }
        // People are counted by their confusable-safe key: `bob`, `BOB` and `bоb`
        // (Cyrillic о) are one approver. Counting the keys of the approvals so far,
        // not the approvals, keeps a record from an older version that let two
        // lookalikes in from counting twice.
        let key = identity::key(&approval.approver);
        let mut keys: Vec<String> = self
            .approvals
            .iter()
            .map(|a| identity::key(&a.approver))
            .collect();
        if keys.contains(&key) {
            return Err(TransitionError::AlreadyApproved(
                approval.approver.to_string(),
            ));
        }
        keys.sort_unstable();
        keys.dedup();
        let activates = keys.len() + 1 >= self.spec.required_approvals as usize;
        let end = if activates {
            Some(
                now.checked_add_signed(self.spec.ttl)
                    .ok_or(TransitionError::TimeOutOfRange)?,
            )
        } else {
            None
        };
        self.trail(approval.decision_id);
        self.approvals = self
            .approvals
            .iter()
            .cloned()
            .chain([approval.interned()])
            .collect();
        Ok(match end {
            Some(end) => {
                self.state = GrantState::Active;
                self.activated_at = Some(now);
                self.expires_at = end;
                Transition {
                    changed: true,
                    events: &[GrantEventKind::Approved, GrantEventKind::Activated],
                }
            }
            None => Transition::event(GrantEventKind::Approved),
        })
    }

    /// Rejects a PENDING grant before its approval deadline: REJECTED, final.
    pub fn reject(
        &mut self,
        by: &str,
        reason: &str,
        decision_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        self.require_pending(now)?;
        self.end(GrantState::Rejected, by, reason, now);
        if let Some(id) = decision_id {
            self.trail(id);
        }
        Ok(Transition::event(GrantEventKind::Rejected))
    }

    /// Counts one use: needs an ACTIVE grant, `now < expires_at`, and `uses < max_uses`
    /// (or `max_uses == 0`).
    pub fn record_use(
        &mut self,
        decision_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        self.check_usable(now)?;
        self.uses = self.uses.saturating_add(1);
        self.trail(decision_id);
        Ok(Transition::event(GrantEventKind::Used))
    }

    /// Moves the end of access of an ACTIVE, unexpired grant later, to `new_expires_at`.
    /// A renewal that does not extend it is refused (the grant keeps its expiry).
    pub fn renew(
        &mut self,
        new_expires_at: DateTime<Utc>,
        decision_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        match self.effective_state(now) {
            GrantState::Active => {}
            GrantState::Expired => return Err(TransitionError::Expired(self.expires_at)),
            other => return Err(TransitionError::NotActive(other)),
        }
        if new_expires_at <= self.expires_at {
            return Err(TransitionError::NotAnExtension {
                current: self.expires_at,
                requested: new_expires_at,
            });
        }
        self.expires_at = new_expires_at;
        self.trail(decision_id);
        Ok(Transition::event(GrantEventKind::Renewed))
    }

    /// Revokes a PENDING or ACTIVE grant: REVOKED, final. Idempotent: a grant that has
    /// already ended (including one past its expiry that no sweep has recorded yet) is
    /// left alone and [`Transition::UNCHANGED`] says so.
    pub fn revoke(
        &mut self,
        revocation: &Revocation,
        now: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        if self.effective_state(now).is_terminal() {
            return Ok(Transition::UNCHANGED);
        }
        self.end(GrantState::Revoked, &revocation.by, &revocation.reason, now);
        if let Some(id) = revocation.decision_id {
            self.trail(id);
        }
        Ok(Transition::event(GrantEventKind::Revoked))
    }

    /// Records the expiry of a non-terminal grant that is due at `now` (at or past
    /// `expires_at`); it ended at `expires_at`. A terminal grant is left alone
    /// ([`Transition::UNCHANGED`]); one not yet due is refused.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Result<Transition, TransitionError> {
        if self.state.is_terminal() {
            return Ok(Transition::UNCHANGED);
        }
        if now < self.expires_at {
            return Err(TransitionError::NotDue(self.expires_at));
        }
        self.end_expired();
        Ok(Transition::event(GrantEventKind::Expired))
    }

    /// Records that the downstream system invalidated the real credential. Needs a
    /// REVOKED or EXPIRED grant (one past its expiry counts: its expiry is recorded in
    /// the same change, with an `expired` event first). Idempotent: a second
    /// confirmation keeps the first evidence and changes nothing.
    pub fn confirm_revocation(
        &mut self,
        evidence: &str,
        now: DateTime<Utc>,
    ) -> Result<Transition, TransitionError> {
        let effective = self.effective_state(now);
        if !matches!(effective, GrantState::Revoked | GrantState::Expired) {
            return Err(TransitionError::NotEnded(effective));
        }
        if self.revocation_confirmed() {
            return Ok(Transition::UNCHANGED);
        }
        let expiring = effective != self.state;
        if expiring {
            self.end_expired();
        }
        let ending = self.ending.get_or_insert_with(|| {
            Box::new(Ending {
                at: now,
                ..Ending::default()
            })
        });
        ending.revocation_confirmed = true;
        ending.revocation_evidence = evidence.to_owned();
        Ok(if expiring {
            Transition {
                changed: true,
                events: &[GrantEventKind::Expired, GrantEventKind::RevocationConfirmed],
            }
        } else {
            Transition::event(GrantEventKind::RevocationConfirmed)
        })
    }

    /// Marks an ended, unconfirmed grant as reported overdue (once). Used by the sweep.
    pub fn report_overdue(&mut self) -> Transition {
        if !self.awaits_confirmation() || self.overdue_reported() {
            return Transition::UNCHANGED;
        }
        match &mut self.ending {
            Some(ending) => {
                ending.overdue_reported = true;
                Transition::event(GrantEventKind::RevocationOverdue)
            }
            None => Transition::UNCHANGED,
        }
    }

    /// Appends a decision (also for denied steps) to the evidence trail, keeping at
    /// most [`MAX_TRAIL`] ids.
    pub fn push_decision(&mut self, decision_id: Uuid) -> Transition {
        self.trail(decision_id);
        Transition::RECORDED
    }

    pub(crate) fn trail(&mut self, decision_id: Uuid) {
        push_trail(&mut self.decision_ids, decision_id);
    }

    fn require_pending(&self, now: DateTime<Utc>) -> Result<(), TransitionError> {
        match self.effective_state(now) {
            GrantState::Pending => Ok(()),
            GrantState::Expired => Err(TransitionError::Expired(self.expires_at)),
            other => Err(TransitionError::NotPending(other)),
        }
    }

    /// An expiry ends a grant at its `expires_at`: derived from the grant alone, it
    /// needs no journal record (replay derives it the same way).
    fn end_expired(&mut self) {
        self.end(GrantState::Expired, "", "", self.expires_at);
    }

    fn end(&mut self, state: GrantState, by: &str, reason: &str, now: DateTime<Utc>) {
        self.state = state;
        self.ending = Some(Box::new(Ending {
            by: by.to_owned(),
            reason: reason.to_owned(),
            at: now,
            ..Ending::default()
        }));
    }
}

/// Appends to an evidence trail, keeping at most [`MAX_TRAIL`] ids: the first
/// [`TRAIL_KEPT_HEAD`] stay, the oldest after them make room. The new trail has no
/// spare capacity (a grant keeps it for its life).
pub(crate) fn push_trail(trail: &mut Box<[Uuid]>, decision_id: Uuid) {
    let dropped = if trail.len() >= MAX_TRAIL {
        Some(TRAIL_KEPT_HEAD.min(MAX_TRAIL - 1))
    } else {
        None
    };
    let mut next = Vec::with_capacity(trail.len() + 1 - usize::from(dropped.is_some()));
    match dropped {
        Some(i) => {
            next.extend_from_slice(&trail[..i]);
            next.extend_from_slice(&trail[i + 1..]);
        }
        None => next.extend_from_slice(trail),
    }
    next.push(decision_id);
    *trail = next.into_boxed_slice();
}

impl Approval {
    /// The same approval with its approver and role shared (interned).
    fn interned(self) -> Self {
        Self {
            approver: NAMES.intern(&self.approver),
            role: NAMES.intern(&self.role),
            ..self
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
