//! Step `revoke` (by grant or subject) and step `close` (by workflow).

use std::sync::Arc;

use super::steps::{GrantStepError, GrantSteps, RevokeOutcome, Step, require};
use crate::{
    decision::{Caller, GrantStepInput, InvalidField, StepInput, accept_identity},
    grants::{Grant, GrantStore, Revocation, RevokeScope},
    proto::v1::{RevokeRequest, revoke_request::Target},
    telemetry::ParentContext,
};

impl<S: GrantStore> GrantSteps<S> {
    /// Step `revoke` (by grant or subject) or `close` (by workflow: the ticket closed).
    /// Idempotent: grants already ended are not revoked again.
    pub async fn revoke(
        &self,
        req: &RevokeRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<RevokeOutcome, GrantStepError> {
        let (step, revoked) = self.revoke_step(req, caller, parent).await?;
        let decision = self.pipeline.conclude(step.pending, step.grant);
        Ok(RevokeOutcome { decision, revoked })
    }

    async fn revoke_step(
        &self,
        req: &RevokeRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<(Step, Vec<Arc<Grant>>), GrantStepError> {
        let target = req.target.as_ref().ok_or_else(|| {
            InvalidField::new(
                "target",
                "one of grant_id, workflow_id, subject_id is required",
            )
        })?;
        let revoked_by = accept_identity(&req.revoked_by, "revoked_by")?;
        let now = self.clock.now();
        let by = if revoked_by.is_empty() {
            caller.id.to_string()
        } else {
            revoked_by.into_owned()
        };
        // A subject is named as the grants hold it: in canonical form.
        let subject_id;
        let target = match target {
            Target::SubjectId(id) => {
                subject_id = Target::SubjectId(accept_identity(id, "subject_id")?.into_owned());
                &subject_id
            }
            other => other,
        };
        let (input, grant) = match target {
            Target::GrantId(id) => {
                require(id, "grant_id")?;
                let grant = self
                    .store
                    .get(id, now)
                    .await
                    .ok_or_else(|| GrantStepError::NotFound(id.clone()))?;
                let input = GrantStepInput {
                    step: "revoke",
                    caller,
                    agent: None,
                    context: None,
                };
                (input.build(&grant, now, &[]), Some(grant))
            }
            Target::WorkflowId(id) => {
                require(id, "workflow_id")?;
                let workflow = crate::decision::Workflow {
                    id: id.clone(),
                    ..Default::default()
                };
                let input = StepInput {
                    step: "close",
                    subject: None,
                    caller,
                    action: "",
                    resource: None,
                    workflow: Some(&workflow),
                    agent: None,
                    context: None,
                };
                (input.build(now, None, &[]), None)
            }
            Target::SubjectId(id) => {
                require(id, "subject_id")?;
                let subject = crate::decision::Subject {
                    id: id.clone(),
                    ..Default::default()
                };
                let input = StepInput {
                    step: "revoke",
                    subject: Some(&subject),
                    caller,
                    action: "",
                    resource: None,
                    workflow: None,
                    agent: None,
                    context: None,
                };
                (input.build(now, None, &[]), None)
            }
        };
        let pending = self.pipeline.evaluate(input, now, parent);
        if !pending.decision().allow() {
            let grant = match grant {
                Some(grant) => Some(
                    self.push_decision(&grant.id().to_string(), pending.decision().id())
                        .await?
                        .grant,
                ),
                None => None,
            };
            return Ok((Step { grant, pending }, Vec::new()));
        }
        let revocation = Revocation {
            by,
            reason: req.reason.clone(),
            decision_id: Some(pending.decision().id()),
        };
        let (grant, revoked) = match target {
            Target::GrantId(id) => {
                let updated = self
                    .store
                    .transition(id, self.clock.now(), &mut |g, now| {
                        g.revoke(&revocation, now)
                    })
                    .await?;
                let revoked = if updated.transition.changed {
                    vec![updated.grant.clone()]
                } else {
                    Vec::new()
                };
                (Some(updated.grant), revoked)
            }
            Target::WorkflowId(id) => (
                None,
                self.store
                    .revoke_all(RevokeScope::Workflow(id), &revocation, self.clock.now())
                    .await?,
            ),
            Target::SubjectId(id) => (
                None,
                self.store
                    .revoke_all(RevokeScope::Subject(id), &revocation, self.clock.now())
                    .await?,
            ),
        };
        Ok((Step { grant, pending }, revoked))
    }
}
