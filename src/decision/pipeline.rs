//! The one function every adapter calls: validate → build the input → evaluate under
//! the serving revision → map to a fail-closed [`Decision`].

use std::{sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use regorus::Value;

use super::{
    Caller, Decision, InvalidField, check_input, grant_value, record::fail_closed, validate_check,
};
use crate::{
    clock::Clock,
    grants::GrantStore,
    policy::{Entrypoint, PolicyStore},
    proto::v1::CheckRequest,
};

/// Below this many checks per worker a batch is not worth spreading across threads.
const MIN_CHECKS_PER_TASK: usize = 4;

/// Decides checks against the serving policy revision.
pub struct DecisionPipeline {
    policies: Arc<PolicyStore>,
    grants: Arc<dyn GrantStore>,
    clock: Arc<dyn Clock>,
    max_batch: usize,
}

impl std::fmt::Debug for DecisionPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionPipeline")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl DecisionPipeline {
    /// A pipeline over `policies` and `grants`, reading time from `clock`, accepting
    /// batches of at most `max_batch` checks.
    pub fn new(
        policies: Arc<PolicyStore>,
        grants: Arc<dyn GrantStore>,
        clock: Arc<dyn Clock>,
        max_batch: usize,
    ) -> Self {
        Self {
            policies,
            grants,
            clock,
            max_batch,
        }
    }

    /// The grant store whose records become `input.grant`.
    pub fn grants(&self) -> &Arc<dyn GrantStore> {
        &self.grants
    }

    /// The serving policy revision (`none` before the first load).
    pub fn serving_revision(&self) -> Arc<str> {
        self.policies
            .current()
            .as_ref()
            .map_or_else(|| Arc::from("none"), |set| set.revision().clone())
    }

    /// The policy store decisions are made under.
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The clock decisions are timed by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// One decision. Invalid requests are refused before anything is evaluated.
    pub fn check(&self, req: &CheckRequest, caller: &Caller) -> Result<Decision, InvalidField> {
        validate_check(req)?;
        Ok(self.decide_valid(req, caller))
    }

    /// Many independent decisions, evaluated in parallel across the runtime's workers,
    /// returned in request order. Every check is validated before any is evaluated.
    pub async fn batch_check(
        self: &Arc<Self>,
        checks: Vec<CheckRequest>,
        caller: Caller,
    ) -> Result<Vec<Decision>, InvalidField> {
        if checks.len() > self.max_batch {
            return Err(InvalidField::new(
                "checks",
                format!(
                    "{} checks is over the maximum of {}",
                    checks.len(),
                    self.max_batch
                ),
            ));
        }
        for (i, check) in checks.iter().enumerate() {
            validate_check(check).map_err(|e| e.within(&format!("checks[{i}]")))?;
        }
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1);
        let tasks = workers.min(checks.len() / MIN_CHECKS_PER_TASK).max(1);
        if tasks == 1 {
            return Ok(checks
                .iter()
                .map(|c| self.decide_valid(c, &caller))
                .collect());
        }
        let chunk = checks.len().div_ceil(tasks);
        let checks = Arc::new(checks);
        let caller = Arc::new(caller);
        let spawned: Vec<_> = (1..tasks)
            .map(|t| {
                let range = t * chunk..((t + 1) * chunk).min(checks.len());
                let (pipeline, checks, caller) = (self.clone(), checks.clone(), caller.clone());
                let task = tokio::spawn(async move {
                    checks[range]
                        .iter()
                        .map(|c| pipeline.decide_valid(c, &caller))
                        .collect::<Vec<_>>()
                });
                (t, task)
            })
            .collect();
        let mut decisions: Vec<Decision> = checks[..chunk]
            .iter()
            .map(|c| self.decide_valid(c, &caller))
            .collect();
        for (t, task) in spawned {
            match task.await {
                Ok(part) => decisions.extend(part),
                // A task fails only by panicking: its checks fail closed.
                Err(_) => {
                    let now = self.clock.now();
                    let len = ((t + 1) * chunk).min(checks.len()) - t * chunk;
                    decisions.extend((0..len).map(|_| {
                        Decision::deny("internal error (fail closed)", "none".into(), now)
                    }));
                }
            }
        }
        Ok(decisions)
    }

    fn decide_valid(&self, req: &CheckRequest, caller: &Caller) -> Decision {
        let now = self.clock.now();
        // A named grant's current record (as EXPIRED once past its end, even before the
        // sweep) is `input.grant`; an unknown id leaves it absent for policy to judge.
        let grant = (!req.grant_id.is_empty())
            .then(|| self.grants.get(&req.grant_id))
            .flatten();
        let input = check_input(req, caller, now, grant.as_deref().map(grant_value));
        self.decide_input(input, now)
    }

    /// Evaluates a ready input document at `now` under the serving revision.
    pub fn decide_input(&self, input: Value, now: DateTime<Utc>) -> Decision {
        let current = self.policies.current();
        let Some(set) = current.as_ref() else {
            return Decision::deny(fail_closed::NO_POLICY, "none".into(), now);
        };
        let started = Instant::now();
        let outcome = set.evaluate(Entrypoint::Decision, input);
        Decision::from_evaluation(outcome, set.revision().clone(), now, started.elapsed())
    }
}
