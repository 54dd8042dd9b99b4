//! The grant steps: each `GrantService` call re-decided by policy at its step, with the
//! grant's record as `input.grant`, then applied to the grant store.
//!
//! Order inside a step: validate → read the grant → refuse without evaluating what the
//! state machine already refuses (a used-up or ended grant) → evaluate → apply the
//! transition (which re-checks atomically, so a race with a revocation or the sweeper
//! still ends in a deny) → record the decision in the grant's evidence trail. A denied
//! step changes no state; only the trail grows.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use regorus::Value;

use super::terms::{GrantTerms, obligation_seconds};
use crate::{
    clock::Clock,
    decision::{
        ApprovalInput, Caller, Decision, DecisionPipeline, GrantStepInput, InvalidField, Pending,
        Refusal, StepInput, accept_identity, validate_agent, validate_check, validate_step,
    },
    document::KEYS,
    grants::{
        Approval, EventPosition, FeedGap, Grant, GrantEvent, GrantRequest, GrantStore, ListFilter,
        MemoryGrantStore, Page, StoreError,
    },
    identity,
    proto::v1::{
        ApproveRequest, ConfirmRevocationRequest, Context, RejectRequest, RenewRequest,
        RequestGrantRequest, RevalidateRequest,
    },
    telemetry::ParentContext,
};

/// Why a grant step could not run at all (a policy deny is not an error).
#[derive(Debug, thiserror::Error)]
pub enum GrantStepError {
    /// A request field is missing or malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No grant has that id.
    #[error("grant {0} not found")]
    NotFound(String),
    /// The store could not record the step (journal failure).
    #[error("grant store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for GrantStepError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::InvalidPageToken => Self::Invalid(InvalidField::new(
                "page_token",
                "not a token this server issued",
            )),
            other => Self::Store(other),
        }
    }
}

/// The outcome of a grant step: the decision, and the grant after it (absent when a
/// `request` was denied, so no grant exists).
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The grant after the step.
    pub grant: Option<Arc<Grant>>,
    /// The decision taken at the step.
    pub decision: Decision,
}

/// The outcome of a `Revoke`: the decision and the grants it ended.
#[derive(Debug, Clone)]
pub struct RevokeOutcome {
    /// The decision taken at step `revoke` (or `close` for a workflow).
    pub decision: Decision,
    /// Grants moved to REVOKED by this call.
    pub revoked: Vec<Arc<Grant>>,
}

/// Runs grant steps through the decision pipeline and a grant store (the embedded one
/// unless another backend is named), at the injected clock's time.
pub struct GrantSteps<S: GrantStore = MemoryGrantStore> {
    pub(super) pipeline: Arc<DecisionPipeline>,
    pub(super) store: Arc<S>,
    pub(super) clock: Arc<dyn Clock>,
    default_approval_timeout: Duration,
}

impl<S: GrantStore> std::fmt::Debug for GrantSteps<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSteps").finish_non_exhaustive()
    }
}

impl<S: GrantStore> GrantSteps<S> {
    /// Grant steps deciding through `pipeline` and recording in `store` at `clock`'s
    /// time; a pending grant's deadline is `default_approval_timeout` unless policy sets
    /// `obligations.approval_timeout_seconds`.
    pub fn new(
        pipeline: Arc<DecisionPipeline>,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        default_approval_timeout: Duration,
    ) -> Self {
        Self {
            pipeline,
            store,
            clock,
            default_approval_timeout,
        }
    }

    /// One page of the grants matching `filter`, as of now ([`GrantStore::list`]).
    pub async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<Page, GrantStepError> {
        Ok(self
            .store
            .list(filter, page_size, page_token, self.clock.now())
            .await?)
    }

    /// Grant events from now on ([`GrantStore::events_since`]).
    pub fn events(
        &self,
        position: Option<EventPosition>,
    ) -> impl tokio_stream::Stream<Item = Result<GrantEvent, FeedGap>> + Send + Unpin + 'static
    {
        self.store.events_since(position)
    }

    /// The pipeline every step is decided by (its gate admits the steps' evaluations).
    pub fn pipeline(&self) -> &Arc<DecisionPipeline> {
        &self.pipeline
    }

    /// Step `request`: a denied request creates nothing; an allowed one creates a grant,
    /// PENDING when the obligations require approvals, else ACTIVE.
    pub async fn request(
        &self,
        req: &RequestGrantRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<StepOutcome, GrantStepError> {
        self.conclude(self.request_step(req, caller, parent).await)
    }

    async fn request_step(
        &self,
        req: &RequestGrantRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<Step, GrantStepError> {
        let requested_ttl = match &req.ttl {
            Some(ttl) => Some(
                positive_duration(ttl)
                    .ok_or_else(|| InvalidField::new("ttl", "must be positive"))?,
            ),
            None => None,
        };
        // The request's parts as a check at step `request`: validated and turned into the
        // input document exactly as every other decision.
        let probe = crate::decision::CheckRequest::from(crate::proto::v1::CheckRequest {
            step: "request".into(),
            subject: req.subject.clone(),
            action: req.action.clone(),
            resource: req.resource.clone(),
            workflow: req.workflow.clone(),
            agent: req.agent.clone(),
            context: req.context.clone(),
            grant_id: String::new(),
        });
        validate_check(&probe)?;

        let now = self.clock.now();
        let k = &*KEYS;
        let scope = Value::from(
            req.scope
                .iter()
                .map(|s| Value::from(s.as_str()))
                .collect::<Vec<_>>(),
        );
        let mut extra = vec![(&k.scope, scope)];
        if let Some(ttl) = requested_ttl {
            extra.push((&k.requested_ttl_seconds, Value::from(ttl.num_seconds())));
        }
        let input = StepInput::of_check(&probe, caller).build(now, None, &extra);
        let pending = self.pipeline.evaluate(input, now, parent);
        if !pending.decision().allow() {
            return Ok(Step::without_grant(pending));
        }
        let terms = match GrantTerms::from_obligations(
            pending.decision().obligations(),
            requested_ttl,
            self.default_approval_timeout,
        ) {
            Ok(terms) => terms,
            Err(reason) => return Ok(Step::without_grant(pending.overruled(reason))),
        };
        let decision = pending.decision();
        // The grant keeps the identities in the canonical form the policy judged.
        let mut subject = req.subject.clone().unwrap_or_default();
        identity::canonicalize(&mut subject.id);
        identity::canonicalize(&mut subject.owner);
        let mut workflow = req.workflow.clone();
        if let Some(workflow) = &mut workflow {
            identity::canonicalize(&mut workflow.requester);
        }
        let request = GrantRequest {
            subject,
            action: req.action.clone(),
            resource: req.resource.clone(),
            scope: req.scope.clone(),
            workflow,
            required_approvals: terms.required_approvals,
            approval_deadline: now + terms.approval_timeout,
            ttl: terms.ttl,
            max_uses: terms.max_uses,
            policy_revision: decision.policy_revision().clone(),
            decision_id: decision.id(),
        };
        let grant = match Grant::new(request, now) {
            Ok(grant) => grant,
            Err(err) => return Ok(Step::without_grant(pending.overruled(err.to_string()))),
        };
        let grant = self.store.create(grant, now).await?;
        Ok(Step {
            grant: Some(grant),
            pending,
        })
    }

    /// Step `approve` with `input.approval`: the Nth distinct allowed approver activates
    /// the grant. A denied approval is recorded in the evidence trail only.
    pub async fn approve(
        &self,
        req: &ApproveRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<StepOutcome, GrantStepError> {
        let step: Result<Step, GrantStepError> = async {
            require(&req.grant_id, "grant_id")?;
            require(&req.approver, "approver")?;
            let approver = accept_identity(&req.approver, "approver")?;
            let approval = ApprovalInput {
                approver: &approver,
                role: &req.role,
                comment: &req.comment,
                verdict: "approve",
            };
            self.decide_on_grant(
                &req.grant_id,
                "approve",
                caller,
                parent,
                req.context.as_ref(),
                &|grant| approval.extra(grant),
                |grant, decision, now| {
                    grant.approve(
                        Approval {
                            approver: approver.as_ref().into(),
                            role: req.role.as_str().into(),
                            at: now,
                            decision_id: decision.id(),
                            comment: req.comment.as_str().into(),
                        },
                        now,
                    )
                },
            )
            .await
        }
        .await;
        self.conclude(step)
    }

    /// A rejection, decided at step `approve` with `input.approval.verdict = "reject"`.
    pub async fn reject(
        &self,
        req: &RejectRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<StepOutcome, GrantStepError> {
        let step: Result<Step, GrantStepError> = async {
            require(&req.grant_id, "grant_id")?;
            require(&req.approver, "approver")?;
            let approver = accept_identity(&req.approver, "approver")?;
            let approval = ApprovalInput {
                approver: &approver,
                role: "",
                comment: &req.reason,
                verdict: "reject",
            };
            self.decide_on_grant(
                &req.grant_id,
                "approve",
                caller,
                parent,
                None,
                &|grant| approval.extra(grant),
                |grant, decision, now| {
                    grant.reject(&approver, &req.reason, Some(decision.id()), now)
                },
            )
            .await
        }
        .await;
        self.conclude(step)
    }

    /// Step `use`: the grant must be ACTIVE, unexpired and under `max_uses`, then policy
    /// decides; an allowed use is counted. A missing grant is a deny, not an error.
    pub async fn revalidate(
        &self,
        req: &RevalidateRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<StepOutcome, GrantStepError> {
        self.conclude(self.revalidate_step(req, caller, parent).await)
    }

    async fn revalidate_step(
        &self,
        req: &RevalidateRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<Step, GrantStepError> {
        require(&req.grant_id, "grant_id")?;
        let agent = req.agent.as_ref().map(crate::decision::AgentCall::from);
        let context = req.context.as_ref().map(crate::decision::Context::from);
        if let Some(agent) = &agent {
            validate_agent(agent)?;
        }
        let Some(grant) = self.store.get(&req.grant_id, self.clock.now()).await else {
            let now = self.clock.now();
            let revision = self.pipeline.serving_provenance();
            // The document the policy would have seen, naming the grant asked for.
            let k = &*KEYS;
            let mut named = regorus::value::Object::new();
            named.insert(k.id.clone(), Value::from(req.grant_id.as_str()));
            let input = StepInput {
                step: "use",
                subject: None,
                caller,
                action: "",
                resource: None,
                workflow: None,
                agent: agent.as_ref(),
                context: context.as_ref(),
            }
            .build(now, None, &[(&k.grant, named.into_value())]);
            let decision =
                Decision::refused(Refusal::GrantNotFound(req.grant_id.clone()), revision, now);
            return Ok(Step::without_grant(
                self.pipeline.unevaluated(decision, input, parent),
            ));
        };
        let now = self.clock.now();
        let input = GrantStepInput {
            step: "use",
            caller,
            agent: agent.as_ref(),
            context: context.as_ref(),
        }
        .build(&grant, now, &[]);
        if let Err(refusal) = grant.check_usable(now) {
            let decision = Decision::refused(
                Refusal::GrantUnusable(refusal),
                self.pipeline.serving_provenance(),
                now,
            );
            let pending = self.pipeline.unevaluated(decision, input, parent);
            return self.record_denial(&req.grant_id, pending).await;
        }
        let pending = self.pipeline.evaluate(input, now, parent);
        if !pending.decision().allow() {
            return self.record_denial(&req.grant_id, pending).await;
        }
        let decision_id = pending.decision().id();
        match self
            .store
            .transition(&req.grant_id, self.clock.now(), &mut |g, now| {
                g.record_use(decision_id, now)
            })
            .await
        {
            Ok(updated) => Ok(Step {
                grant: Some(updated.grant),
                pending,
            }),
            Err(StoreError::Refused { source, .. }) => {
                self.record_denial(&req.grant_id, pending.overruled(source.to_string()))
                    .await
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Step `renew` with `input.requested_ttl_seconds`: extends an ACTIVE grant to
    /// now + min(requested, `obligations.max_ttl_seconds`).
    pub async fn renew(
        &self,
        req: &RenewRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<StepOutcome, GrantStepError> {
        let step: Result<Step, GrantStepError> = async {
            require(&req.grant_id, "grant_id")?;
            let requested = match &req.ttl {
                Some(ttl) => positive_duration(ttl)
                    .ok_or_else(|| InvalidField::new("ttl", "must be positive"))?,
                None => return Err(InvalidField::new("ttl", "required").into()),
            };
            let k = &*KEYS;
            let extra = |_: &Grant| {
                vec![(
                    &k.requested_ttl_seconds,
                    Value::from(requested.num_seconds()),
                )]
            };
            self.decide_on_grant(
                &req.grant_id,
                "renew",
                caller,
                parent,
                req.context.as_ref(),
                &extra,
                |grant, decision, now| {
                    let cap = match obligation_seconds(decision.obligations(), "max_ttl_seconds") {
                        Ok(cap) => cap,
                        Err(_) => {
                            return Err(crate::grants::TransitionError::Forbidden(
                                "policy obligation max_ttl_seconds is malformed",
                            ));
                        }
                    };
                    let ttl = cap.map_or(requested, |cap| requested.min(cap));
                    let end = now
                        .checked_add_signed(ttl)
                        .ok_or(crate::grants::TransitionError::TimeOutOfRange)?;
                    grant.renew(end, decision.id(), now)
                },
            )
            .await
        }
        .await;
        self.conclude(step)
    }

    /// The downstream system confirms the credential is invalidated. No policy step: the
    /// call only adds evidence, and only admin callers may make it. The returned record
    /// (allow = the confirmation was accepted) joins the evidence trail.
    pub async fn confirm_revocation(
        &self,
        req: &ConfirmRevocationRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<StepOutcome, GrantStepError> {
        self.conclude(self.confirm_step(req, caller, parent).await)
    }

    async fn confirm_step(
        &self,
        req: &ConfirmRevocationRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<Step, GrantStepError> {
        require(&req.grant_id, "grant_id")?;
        require(&req.evidence, "evidence")?;
        let grant = self
            .store
            .get(&req.grant_id, self.clock.now())
            .await
            .ok_or_else(|| GrantStepError::NotFound(req.grant_id.clone()))?;
        let now = self.clock.now();
        let revision = self.pipeline.serving_provenance();
        let input = GrantStepInput {
            step: "confirm_revocation",
            caller,
            agent: None,
            context: None,
        }
        .build(&grant, now, &[]);
        // Reserved before the store changes, so a required decision log that is full
        // refuses the confirmation instead of leaving it unrecorded.
        let pending =
            self.pipeline
                .unevaluated(Decision::revocation_confirmed(revision, now), input, parent);
        if !pending.decision().allow() {
            return self.record_denial(&req.grant_id, pending).await;
        }
        let evidence = req.evidence.as_str();
        match self
            .store
            .transition(&req.grant_id, self.clock.now(), &mut |g, now| {
                g.confirm_revocation(evidence, now)
            })
            .await
        {
            Ok(updated) => {
                let updated = self
                    .push_decision(&req.grant_id, pending.decision().id())
                    .await
                    .map(|u| u.grant)
                    .unwrap_or(updated.grant);
                Ok(Step {
                    grant: Some(updated),
                    pending,
                })
            }
            Err(StoreError::Refused { source, .. }) => {
                self.record_denial(&req.grant_id, pending.refused(source.to_string()))
                    .await
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Reads a grant (expired ones as EXPIRED even before the sweep).
    pub async fn get(&self, id: &str) -> Result<Arc<Grant>, GrantStepError> {
        require(id, "grant_id")?;
        self.store
            .get(id, self.clock.now())
            .await
            .ok_or_else(|| GrantStepError::NotFound(id.to_string()))
    }

    /// Observes a finished step's decision (span, metrics, decision log).
    fn conclude(&self, step: Result<Step, GrantStepError>) -> Result<StepOutcome, GrantStepError> {
        let Step { grant, pending } = step?;
        let decision = self.pipeline.conclude(pending, grant.clone());
        Ok(StepOutcome { grant, decision })
    }

    /// Evaluates `step` on an existing grant and applies `transition` when allowed.
    #[allow(clippy::too_many_arguments)]
    async fn decide_on_grant(
        &self,
        id: &str,
        step: &str,
        caller: &Caller,
        parent: &ParentContext,
        context: Option<&Context>,
        extra: &(dyn Fn(&Grant) -> Vec<(&'static Value, Value)> + Sync),
        mut transition: impl FnMut(
            &mut Grant,
            &Decision,
            DateTime<Utc>,
        )
            -> Result<crate::grants::Transition, crate::grants::TransitionError>
        + Send,
    ) -> Result<Step, GrantStepError> {
        validate_step(step)?;
        let context = context.cloned().map(crate::decision::Context::from);
        let grant = self
            .store
            .get(id, self.clock.now())
            .await
            .ok_or_else(|| GrantStepError::NotFound(id.to_string()))?;
        let now = self.clock.now();
        let input = GrantStepInput {
            step,
            caller,
            agent: None,
            context: context.as_ref(),
        }
        .build(&grant, now, &extra(&grant));
        let pending = self.pipeline.evaluate(input, now, parent);
        if !pending.decision().allow() {
            return self.record_denial(id, pending).await;
        }
        let decision = pending.decision();
        match self
            .store
            .transition(id, self.clock.now(), &mut |grant, now| {
                transition(grant, decision, now)
            })
            .await
        {
            Ok(updated) => Ok(Step {
                grant: Some(updated.grant),
                pending,
            }),
            Err(StoreError::Refused { source, .. }) => {
                self.record_denial(id, pending.overruled(source.to_string()))
                    .await
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Appends a decision to the grant's evidence trail.
    pub(super) async fn push_decision(
        &self,
        id: &str,
        decision_id: uuid::Uuid,
    ) -> Result<crate::grants::Updated, StoreError> {
        self.store
            .transition(id, self.clock.now(), &mut |g, _| {
                Ok(g.push_decision(decision_id))
            })
            .await
    }

    /// Adds a denied step's decision to the grant's evidence trail (no state change).
    async fn record_denial(&self, id: &str, pending: Pending) -> Result<Step, GrantStepError> {
        let updated = self.push_decision(id, pending.decision().id()).await?;
        Ok(Step {
            grant: Some(updated.grant),
            pending,
        })
    }
}

/// A step's decision before it is concluded, and the grant after the step.
pub(super) struct Step {
    pub(super) grant: Option<Arc<Grant>>,
    pub(super) pending: Pending,
}

impl Step {
    fn without_grant(pending: Pending) -> Self {
        Self {
            grant: None,
            pending,
        }
    }
}

fn positive_duration(d: &prost_types::Duration) -> Option<TimeDelta> {
    let delta = TimeDelta::new(d.seconds, u32::try_from(d.nanos).ok()?)?;
    (delta > TimeDelta::zero()).then_some(delta)
}

pub(super) fn require(value: &str, field: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        Err(InvalidField::new(field, "required"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_positive_and_well_formed() {
        assert_eq!(
            positive_duration(&prost_types::Duration {
                seconds: 5,
                nanos: 0
            }),
            Some(TimeDelta::seconds(5))
        );
        assert_eq!(
            positive_duration(&prost_types::Duration {
                seconds: 0,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            positive_duration(&prost_types::Duration {
                seconds: -5,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            positive_duration(&prost_types::Duration {
                seconds: 1,
                nanos: -1
            }),
            None
        );
    }
}
