//! The one function every adapter calls: validate → build the input → evaluate under
//! the serving revision → map to a fail-closed [`Decision`] → observe it.
//!
//! Observation happens here and nowhere else: every decision, from any adapter or grant
//! step, gets its `stepgate.decision` span, its metrics and its decision-log record in
//! [`DecisionPipeline::conclude`]. A decision is evaluated into a [`Pending`] (which
//! already holds its place in the decision log) and concluded once final, so a grant
//! step can overrule it first and the record says what the caller was told.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use regorus::Value;

use super::{
    Caller, CheckRequest, Decision, InvalidField, PolicyResult, RawTarget, RawVerdict, Refusal,
    check_input,
    gate::{EvalGate, EvalPermit},
    grant_value,
    input::{KEYS, text},
    validate_check,
};
use crate::{
    audit::{DecisionAttributes, DecisionLog, Entry, Slot},
    clock::Clock,
    grants::{Grant, GrantView},
    policy::{Entrypoint, PolicyStore, Provenance},
    telemetry::{ParentContext, Snapshot, Telemetry, step_index},
};

/// Below this many checks per worker a batch is not worth spreading across threads.
const MIN_CHECKS_PER_TASK: usize = 4;

/// Decides checks against the serving policy revision.
pub struct DecisionPipeline {
    policies: Arc<PolicyStore>,
    grants: Arc<dyn GrantView>,
    clock: Arc<dyn Clock>,
    max_batch: usize,
    telemetry: Arc<Telemetry>,
    decision_log: Option<Arc<DecisionLog>>,
    gate: EvalGate,
}

/// A decision evaluated but not yet concluded: it holds what its span and its
/// decision-log record need, and its reserved place in the log.
#[derive(Debug)]
pub struct Pending {
    decision: Decision,
    input: Value,
    parent: ParentContext,
    started: Instant,
    /// Wall-clock start, taken only when spans are recorded.
    start_time: Option<SystemTime>,
    slot: Option<Slot>,
}

impl Pending {
    /// The decision so far.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The same decision, turned into a deny (see [`Decision::overruled`]).
    pub fn overruled(mut self, reason: impl Into<String>) -> Self {
        self.decision = self.decision.overruled(reason);
        self
    }

    /// The same decision (id, place in the log) as a deny for `reason` alone: for a
    /// record made without evaluating whose premise turned out false.
    pub fn refused(mut self, reason: impl Into<String>) -> Self {
        self.decision = self.decision.replaced_by_deny(reason.into());
        self
    }
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
        grants: Arc<dyn GrantView>,
        clock: Arc<dyn Clock>,
        max_batch: usize,
    ) -> Self {
        Self {
            policies,
            grants,
            clock,
            max_batch,
            telemetry: Arc::new(Telemetry::new()),
            decision_log: None,
            gate: EvalGate::for_current_runtime(),
        }
    }

    /// Waits for an evaluation's turn (see [`EvalGate`]): every async adapter takes one
    /// before a call that evaluates policy, and holds it until the call is decided.
    pub async fn admitted(&self) -> EvalPermit<'_> {
        self.gate.admit().await
    }

    /// Records spans and metrics in `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Writes a record of every decision to `log`.
    pub fn with_decision_log(mut self, log: Option<Arc<DecisionLog>>) -> Self {
        self.decision_log = log;
        self
    }

    /// Spans and metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The decision log, if on.
    pub fn decision_log(&self) -> Option<&Arc<DecisionLog>> {
        self.decision_log.as_ref()
    }

    /// Every metric in the Prometheus text format, with the grant store's, the policy
    /// store's, the sweeper's and the decision log's counts as of now.
    pub fn metrics_text(&self) -> String {
        let stats = self.grants.stats();
        let reloads = self.policies.reload_counts();
        let sweeper = self.telemetry.sweeper();
        let bundles = self.telemetry.bundles();
        let provenance = self.serving_provenance();
        let snapshot = Snapshot {
            grants_by_state: [
                stats.pending,
                stats.active,
                stats.rejected,
                stats.expired,
                stats.revoked,
            ],
            awaiting_confirmation: stats.awaiting_confirmation,
            revocations_overdue: stats.revocations_overdue,
            expirations: sweeper.map_or(0, |s| s.expired()),
            sweeps: sweeper.map_or(0, |s| s.sweeps()),
            last_sweep: sweeper.map_or(Default::default(), |s| s.last_duration()),
            reloads: (reloads.accepted, reloads.rejected),
            revision: provenance.revision.to_string(),
            log_records: self
                .decision_log
                .as_ref()
                .map_or((0, 0, 0), |log| log.stats().counts()),
            log_otlp: self
                .decision_log
                .as_ref()
                .map_or((0, 0, 0), |log| log.stats().otlp_counts()),
            eval_limits: crate::policy::limit_hits(),
            eval_waits: self.gate.waits(),
            bundle_polls: bundles.map_or_else(Default::default, |b| b.polls()),
            bundle_revision: provenance.bundle_revision.as_deref().map(str::to_string),
            bundle_last_activation: bundles
                .and_then(|b| b.status().last_successful_activation)
                .map(|at| at.timestamp_millis() as f64 / 1000.0),
        };
        self.telemetry.metrics().render(&snapshot)
    }

    /// The serving policy revision and bundle revision (`none` before the first load).
    pub fn serving_provenance(&self) -> Provenance {
        self.policies
            .current()
            .as_ref()
            .map_or_else(Provenance::none, |set| set.provenance())
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
    pub fn check(
        &self,
        req: &CheckRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Result<Decision, InvalidField> {
        validate_check(req)?;
        Ok(self.decide_valid(req, caller, parent))
    }

    /// Many independent decisions, evaluated in parallel across the runtime's workers,
    /// returned in request order; each gets its own span under `parent`.
    ///
    /// `items` makes the checks in order (an adapter's conversion, which may refuse an
    /// item). Their number is checked against the maximum before any is made, each is
    /// validated as it is made, and none is evaluated until all are valid. Refusals name
    /// the request's list, `list` (`checks`, `evaluations`): `checks: 9 checks is over the
    /// maximum of 8`, `checks[2].action: required`.
    pub async fn batch_check(
        self: &Arc<Self>,
        list: &str,
        items: impl ExactSizeIterator<Item = Result<CheckRequest, InvalidField>>,
        caller: Caller,
        parent: ParentContext,
    ) -> Result<Vec<Decision>, InvalidField> {
        let count = items.len();
        if count > self.max_batch {
            return Err(InvalidField::new(
                list,
                format!("{count} {list} is over the maximum of {}", self.max_batch),
            ));
        }
        let checks = items
            .enumerate()
            .map(|(i, item)| {
                item.and_then(|check| validate_check(&check).map(|()| check))
                    .map_err(|e| e.within(&format!("{list}[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1);
        let tasks = workers.min(checks.len() / MIN_CHECKS_PER_TASK).max(1);
        if tasks == 1 {
            return Ok(self.decide_admitted(&checks, &caller, &parent).await);
        }
        let chunk = checks.len().div_ceil(tasks);
        let checks = Arc::new(checks);
        let caller = Arc::new(caller);
        let spawned: Vec<_> = (1..tasks)
            .map(|t| {
                let range = t * chunk..((t + 1) * chunk).min(checks.len());
                let (pipeline, checks, caller, parent) =
                    (self.clone(), checks.clone(), caller.clone(), parent.clone());
                let task = tokio::spawn(async move {
                    pipeline
                        .decide_admitted(&checks[range], &caller, &parent)
                        .await
                });
                (t, task)
            })
            .collect();
        let mut decisions = self
            .decide_admitted(&checks[..chunk], &caller, &parent)
            .await;
        for (t, task) in spawned {
            match task.await {
                Ok(part) => decisions.extend(part),
                // A task fails only by panicking: its checks fail closed.
                Err(_) => {
                    let now = self.clock.now();
                    let len = ((t + 1) * chunk).min(checks.len()) - t * chunk;
                    decisions
                        .extend((0..len).map(|_| {
                            Decision::refused(Refusal::Internal, Provenance::none(), now)
                        }));
                }
            }
        }
        Ok(decisions)
    }

    /// Decides valid `checks` in order, each admitted by the gate on its own, so a batch
    /// of slow ones lets others in between.
    async fn decide_admitted(
        &self,
        checks: &[CheckRequest],
        caller: &Caller,
        parent: &ParentContext,
    ) -> Vec<Decision> {
        let mut decisions = Vec::with_capacity(checks.len());
        for check in checks {
            let _turn = self.admitted().await;
            decisions.push(self.decide_valid(check, caller, parent));
        }
        decisions
    }

    fn decide_valid(
        &self,
        req: &CheckRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> Decision {
        let now = self.clock.now();
        // A named grant's current record (as EXPIRED once past its end, even before the
        // sweep) is `input.grant`; an unknown id leaves it absent for policy to judge.
        let grant = (!req.grant_id.is_empty())
            .then(|| self.grants.grant_at(&req.grant_id, now))
            .flatten();
        let input = check_input(req, caller, now, grant.as_deref().map(grant_value));
        let pending = self.evaluate(input, now, parent);
        self.conclude(pending, grant)
    }

    /// Evaluates a ready input document at `now` under the serving revision, after
    /// reserving the decision's place in the decision log (a required log that is full
    /// denies without evaluating). Conclude the result with [`DecisionPipeline::conclude`].
    pub fn evaluate(&self, input: Value, now: DateTime<Utc>, parent: &ParentContext) -> Pending {
        let begun = self.begin();
        let decision = if begun.slot.is_none() && self.log_required() {
            Decision::refused(Refusal::LogFull, self.serving_provenance(), now)
        } else {
            let current = self.policies.current();
            match current.as_ref() {
                None => Decision::refused(Refusal::NoPolicy, Provenance::none(), now),
                Some(set) => {
                    let eval_started = Instant::now();
                    let outcome = set.evaluate(Entrypoint::Decision, input.clone());
                    Decision::from_evaluation(
                        outcome,
                        set.provenance(),
                        now,
                        eval_started.elapsed(),
                    )
                }
            }
        };
        begun.into_pending(decision, input, parent)
    }

    /// A decision made without evaluating (a grant that is missing or unusable, a
    /// confirmation), made pending so it is observed like any other. A required log
    /// that is full turns it into a deny.
    pub fn unevaluated(&self, decision: Decision, input: Value, parent: &ParentContext) -> Pending {
        let begun = self.begin();
        let decision = if begun.slot.is_none() && self.log_required() && decision.allow() {
            decision.overruled(Refusal::LogFull.to_string())
        } else {
            decision
        };
        begun.into_pending(decision, input, parent)
    }

    /// Starts timing a decision and reserves its decision-log record.
    fn begin(&self) -> Begun {
        Begun {
            start_time: self.telemetry.tracer().is_enabled().then(SystemTime::now),
            started: Instant::now(),
            slot: self.decision_log.as_ref().and_then(|log| log.reserve()),
        }
    }

    /// Whether a decision without a decision-log record must be denied.
    fn log_required(&self) -> bool {
        self.decision_log.as_ref().is_some_and(|log| log.required())
    }

    /// Finishes a decision: counts it, records its span, and hands its record (with
    /// `grant`, the grant it was about, after the step) to the decision log.
    pub fn conclude(&self, pending: Pending, grant: Option<Arc<Grant>>) -> Decision {
        let Pending {
            decision,
            input,
            parent,
            started,
            start_time,
            slot,
        } = pending;
        let elapsed = started.elapsed();
        let step = text(&input[&KEYS.step]).unwrap_or("");
        self.telemetry
            .metrics()
            .record_decision(step_index(step), decision.allow(), elapsed);
        let entry = decision.entry(&input, grant.as_deref());
        let span = start_time.and_then(|start| {
            self.telemetry
                .tracer()
                .decision_span(parent.context(), start, start + elapsed, || {
                    DecisionAttributes::of(&entry).key_values()
                })
        });
        if let Some((slot, log)) = slot.zip(self.decision_log.as_ref()) {
            let trace = span
                .filter(|sc| sc.is_valid())
                .or_else(|| parent.span_context())
                .map(|sc| (sc.trace_id(), sc.span_id()));
            log.send(slot, &Entry { trace, ..entry });
        }
        decision
    }

    /// Evaluates `target` on an adapter's input for an adapter whose answer is the
    /// policy's raw result (Envoy ext_authz, the OPA REST API), observed like every other
    /// decision: `read` turns the result (or the [`Refusal`] there is instead) into the
    /// adapter's answer and the record's [`RawVerdict`] (an allow only as read from the
    /// [`PolicyResult`]), then the decision is concluded (span, metrics, decision log)
    /// and returned with the answer.
    ///
    /// An input the adapter could not build (`Err(refusal)`) is not evaluated: it is
    /// recorded as a deny for the refusal (with an empty input) and handed back.
    pub fn decide_raw<T, E: std::fmt::Display>(
        &self,
        target: RawTarget<'_>,
        input: Result<Value, E>,
        parent: &ParentContext,
        read: impl FnOnce(Result<PolicyResult, Refusal>) -> (T, RawVerdict),
    ) -> (Decision, Result<T, E>) {
        let now = self.clock.now();
        let input = match input {
            Ok(input) => input,
            Err(refusal) => {
                let denied = Decision::refused(
                    Refusal::Input(refusal.to_string()),
                    self.serving_provenance(),
                    now,
                );
                let pending = self.unevaluated(denied, Value::new_object(), parent);
                return (self.conclude(pending, None), Err(refusal));
            }
        };
        let begun = self.begin();
        let current = self.policies.current();
        let (outcome, provenance, eval_duration) = match current.as_ref() {
            _ if begun.slot.is_none() && self.log_required() => (
                Err(Refusal::LogFull),
                self.serving_provenance(),
                Duration::ZERO,
            ),
            None => (Err(Refusal::NoPolicy), Provenance::none(), Duration::ZERO),
            Some(set) => {
                let eval_started = Instant::now();
                let outcome = match target {
                    RawTarget::Entrypoint(entrypoint) => set.evaluate(entrypoint, input.clone()),
                    RawTarget::Data { path, has_input } => {
                        set.evaluate_path(path, has_input.then(|| input.clone()))
                    }
                };
                (
                    outcome.map(PolicyResult::new).map_err(Refusal::from),
                    set.provenance(),
                    eval_started.elapsed(),
                )
            }
        };
        let (answer, verdict) = read(outcome);
        let decision = Decision::from_raw(verdict, provenance, now, eval_duration);
        let pending = begun.into_pending(decision, input, parent);
        (self.conclude(pending, None), Ok(answer))
    }
}

/// A decision being made: its clocks and its reserved decision-log record.
struct Begun {
    started: Instant,
    /// Wall-clock start, taken only when spans are recorded.
    start_time: Option<SystemTime>,
    slot: Option<Slot>,
}

impl Begun {
    fn into_pending(self, decision: Decision, input: Value, parent: &ParentContext) -> Pending {
        Pending {
            decision,
            input,
            parent: parent.clone(),
            started: self.started,
            start_time: self.start_time,
            slot: self.slot,
        }
    }
}
