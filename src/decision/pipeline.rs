//! The one function every adapter calls: validate → build the input → evaluate under
//! the serving revision → map to a fail-closed [`Decision`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use regorus::Value;
use uuid::Uuid;

use super::{
    Caller, Decision, InvalidField, check_input,
    envoy::{BadEnvoyRequest, EnvoyVerdict, envoy_input, envoy_verdict},
    grant_value,
    record::fail_closed,
    validate_check,
};
use crate::{
    clock::Clock,
    grants::GrantStore,
    policy::{Entrypoint, EvalError, PolicySet, PolicyStore},
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

    /// Evaluates `entrypoint` on a ready input document under the serving revision and
    /// returns the policy's raw result, for adapters whose result is not stepgate's
    /// decision object (OPA REST `POST /`). Every call gets its own decision id.
    pub fn evaluate(&self, entrypoint: Entrypoint, input: Value) -> Evaluation {
        self.evaluation(|set| set.evaluate(entrypoint, input))
    }

    /// The document at `data.<path>` for an OPA REST Data API client (`Value::Undefined`
    /// when nothing is defined there); `input: None` leaves `input` undefined.
    pub fn query_data(&self, path: &[&str], input: Option<Value>) -> Evaluation {
        self.evaluation(|set| set.evaluate_path(path, input))
    }

    fn evaluation(
        &self,
        evaluate: impl FnOnce(&PolicySet) -> Result<Value, EvalError>,
    ) -> Evaluation {
        let decided_at = self.clock.now();
        let current = self.policies.current();
        let Some(set) = current.as_ref() else {
            return Evaluation {
                id: Uuid::now_v7(),
                result: Err(fail_closed::NO_POLICY.to_string()),
                policy_revision: "none".into(),
                decided_at,
                eval_duration: Duration::ZERO,
            };
        };
        let started = Instant::now();
        let result = evaluate(set).map_err(|e| e.to_string());
        Evaluation {
            id: Uuid::now_v7(),
            result,
            policy_revision: set.revision().clone(),
            decided_at,
            eval_duration: started.elapsed(),
        }
    }

    /// An Envoy ext_authz decision: the OPA-Envoy input document for `request` (with
    /// the transport's `caller`), evaluated at the Envoy entrypoint, read as the plugin
    /// reads results.
    pub fn envoy_check(
        &self,
        request: &envoy_types::pb::envoy::service::auth::v3::CheckRequest,
        caller: &Caller,
    ) -> EnvoyDecision {
        let outcome = match envoy_input(request, caller) {
            Err(bad) => {
                return EnvoyDecision {
                    evaluation: Evaluation {
                        id: Uuid::now_v7(),
                        result: Ok(Value::Undefined),
                        policy_revision: self.serving_revision(),
                        decided_at: self.clock.now(),
                        eval_duration: Duration::ZERO,
                    },
                    outcome: Err(EnvoyFailure::BadRequest(bad)),
                };
            }
            Ok(input) => self.evaluate(Entrypoint::Envoy, input),
        };
        let verdict = match &outcome.result {
            Ok(value) => envoy_verdict(value).map_err(EnvoyFailure::Evaluation),
            Err(err) => Err(EnvoyFailure::Evaluation(err.clone())),
        };
        EnvoyDecision {
            evaluation: outcome,
            outcome: verdict,
        }
    }
}

/// One evaluation of an entrypoint: the raw result and its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Decision id (UUIDv7).
    pub id: Uuid,
    /// The policy's result (`Value::Undefined` when undefined), or why there is none.
    pub result: Result<Value, String>,
    /// The revision that decided (`none` when no policy was loaded).
    pub policy_revision: Arc<str>,
    /// When.
    pub decided_at: DateTime<Utc>,
    /// How long the evaluation took.
    pub eval_duration: Duration,
}

/// Why an ext_authz request got no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvoyFailure {
    /// The request could not be turned into an input document (answered with a 400
    /// denial, as the OPA-Envoy plugin does).
    BadRequest(BadEnvoyRequest),
    /// Evaluation failed, the result was undefined or malformed (a gRPC error, so
    /// Envoy's failure mode applies).
    Evaluation(String),
}

/// An ext_authz decision: the evaluation and the verdict read from it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyDecision {
    /// The evaluation (id, revision, time).
    pub evaluation: Evaluation,
    /// The verdict, or why there is none.
    pub outcome: Result<EnvoyVerdict, EnvoyFailure>,
}
