//! Fixtures shared by the grant benchmarks (`benches/grants.rs`, `benches/grant_scale.rs`):
//! the example policies, a grant pipeline over a [`MemoryGrantStore`] on a [`ManualClock`]
//! stopped at a Monday 10:00 UTC (business hours), and requests shaped like
//! `benches/inputs/issue.json`: a `high`-sensitivity production secret, which the example
//! policy allows with one required approval from an `asset_owner`.
//!
//! Not every bench uses every helper.
#![allow(dead_code)]

use std::{path::Path, sync::Arc, time::Duration};
use stepgate::telemetry::ParentContext;

use chrono::{DateTime, TimeDelta, Utc};
use stepgate::{
    clock::ManualClock,
    decision::{Caller, DecisionPipeline, Transport},
    grants::{Grant, GrantRequest, GrantState, JournalOptions, MemoryGrantStore, StoreOptions},
    policy::{PolicyOptions, PolicyStore},
    proto::v1::{
        ApproveRequest, CheckRequest, Context, RequestGrantRequest, Resource, RevalidateRequest,
        Subject, Workflow,
    },
    workflow::GrantSteps,
};
use uuid::Uuid;

/// Monday 2026-11-23 10:00 UTC: inside the example policy's business hours.
pub fn t0() -> DateTime<Utc> {
    "2026-11-23T10:00:00Z".parse().expect("a valid time")
}

/// The example policies (`policies/`), loaded once.
pub fn policies() -> Arc<PolicyStore> {
    let store = Arc::new(PolicyStore::new("policies", PolicyOptions::default()));
    store.reload().expect("example policies load");
    store
}

/// The credential issuer calling `RequestGrant` and `Revalidate` (mTLS).
pub fn issuer() -> Caller {
    Caller {
        id: "spiffe://prod.example.com/ns/vault/sa/issuer".into(),
        authenticated: true,
        via: Transport::Mtls,
    }
}

/// The approval portal calling `Approve` (mTLS: approvals need a trusted channel).
pub fn portal() -> Caller {
    Caller {
        id: "spiffe://prod.example.com/ns/approvals/sa/portal".into(),
        authenticated: true,
        via: Transport::Mtls,
    }
}

pub fn string_struct(pairs: &[(&str, &str)]) -> Option<prost_types::Struct> {
    let fields = pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
                },
            )
        })
        .collect();
    Some(prost_types::Struct { fields })
}

/// Shape of the grants built by [`subject`], [`resource`] and [`workflow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Attributes on subject, resource and workflow, as in `issue.json`.
    pub attributes: bool,
    /// Distinct subjects (grant `i` gets subject `i % subjects`).
    pub subjects: usize,
    /// Distinct resources.
    pub resources: usize,
    /// Distinct workflows (tickets); `usize::MAX` = one per grant.
    pub workflows: usize,
}

impl Shape {
    /// `issue.json` as it is: every grant for the same subject, resource, workflow.
    pub const ONE: Shape = Shape {
        attributes: true,
        subjects: 1,
        resources: 1,
        workflows: 1,
    };
}

/// The subject of `issue.json`, numbered.
pub fn subject(i: usize, shape: &Shape) -> Subject {
    let n = i % shape.subjects.max(1);
    Subject {
        id: if shape.subjects == 1 {
            "spiffe://prod.example.com/ns/payments/sa/deployer".into()
        } else {
            format!("spiffe://prod.example.com/ns/payments/sa/deployer-{n}")
        },
        kind: "service_account".into(),
        owner: "team-payments".into(),
        attributes: if shape.attributes {
            string_struct(&[("environment", "prod"), ("team", "payments")])
        } else {
            None
        },
    }
}

/// The resource of `issue.json`, numbered (`high` sensitivity: one approval, 1 h TTL).
pub fn resource(i: usize, shape: &Shape) -> Resource {
    let n = i % shape.resources.max(1);
    Resource {
        r#type: "secret".into(),
        id: if shape.resources == 1 {
            "prod/payments/db/password".into()
        } else {
            format!("prod/payments/db-{n}/password")
        },
        attributes: if shape.attributes {
            string_struct(&[("environment", "prod"), ("sensitivity", "high")])
        } else {
            None
        },
    }
}

/// The workflow of `issue.json`, numbered.
pub fn workflow(i: usize, shape: &Shape) -> Workflow {
    let n = i % shape.workflows.max(1);
    Workflow {
        id: if shape.workflows == 1 {
            "CHG-1234".into()
        } else {
            format!("CHG-{}", 100_000 + n)
        },
        requester: "alice".into(),
        justification: "deploy payments 4.2 (schema migration)".into(),
        emergency: false,
        attributes: if shape.attributes {
            string_struct(&[("ticket_system", "jira")])
        } else {
            None
        },
    }
}

pub fn context() -> Option<Context> {
    Some(Context {
        source_ip: "10.1.2.3".into(),
        attributes: None,
    })
}

/// `RequestGrant` for the `issue.json` subject, resource and workflow (numbered by `i`),
/// asking for one hour.
pub fn request_grant(i: usize, shape: &Shape) -> RequestGrantRequest {
    RequestGrantRequest {
        subject: Some(subject(i, shape)),
        action: "issue_credential".into(),
        resource: Some(resource(i, shape)),
        scope: Vec::new(),
        workflow: Some(workflow(i, shape)),
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        agent: None,
        context: context(),
    }
}

/// `Approve` by bob, an asset owner (neither the requester nor on the owning team).
pub fn approve(grant_id: &str) -> ApproveRequest {
    ApproveRequest {
        grant_id: grant_id.to_owned(),
        approver: "bob".into(),
        role: "asset_owner".into(),
        comment: "ok, CHG-1234 is approved in CAB".into(),
        context: context(),
    }
}

/// `Revalidate` of a grant by the issuer before a use.
pub fn revalidate(grant_id: &str) -> RevalidateRequest {
    RevalidateRequest {
        grant_id: grant_id.to_owned(),
        context: context(),
        agent: None,
    }
}

/// The `Check` equivalent of a revalidation: step `use` naming the grant, with the
/// request's own subject, action, resource and workflow (as an issuer sends it) for a
/// grant requested by [`request_grant`]`(i, shape)`.
pub fn check_use(grant_id: &str, i: usize, shape: &Shape) -> CheckRequest {
    CheckRequest {
        step: "use".into(),
        subject: Some(subject(i, shape)),
        action: "issue_credential".into(),
        resource: Some(resource(i, shape)),
        workflow: Some(workflow(i, shape)),
        agent: None,
        context: context(),
        grant_id: grant_id.to_owned(),
    }
}

/// A grant built directly (no policy), as an allowed `request` with these terms would
/// create it: ACTIVE at once when `required_approvals` is 0, else PENDING.
pub fn direct_grant(
    i: usize,
    shape: &Shape,
    required_approvals: u32,
    ttl: TimeDelta,
    max_uses: u64,
    revision: &Arc<str>,
    now: DateTime<Utc>,
) -> Grant {
    Grant::new(
        GrantRequest {
            subject: subject(i, shape),
            action: "issue_credential".into(),
            resource: Some(resource(i, shape)),
            scope: Vec::new(),
            workflow: Some(workflow(i, shape)),
            required_approvals,
            approval_deadline: now + TimeDelta::minutes(30),
            ttl,
            max_uses,
            policy_revision: revision.clone(),
            decision_id: Uuid::now_v7(),
        },
        now,
    )
    .expect("a valid grant")
}

/// Store options: journaled in `dir` (with these journal options) or ephemeral.
pub fn store_options(dir: Option<&Path>, journal: JournalOptions) -> StoreOptions {
    StoreOptions {
        state_dir: dir.map(Path::to_path_buf),
        journal,
        ..StoreOptions::default()
    }
}

/// The grant steps over a store on a manual clock.
pub struct Fixture {
    pub clock: ManualClock,
    pub store: Arc<MemoryGrantStore>,
    pub pipeline: Arc<DecisionPipeline>,
    pub steps: GrantSteps,
}

impl Fixture {
    /// An ephemeral store.
    pub fn ephemeral(policies: &Arc<PolicyStore>) -> Self {
        Self::open(policies, StoreOptions::default(), ManualClock::at(t0()))
    }

    pub fn open(policies: &Arc<PolicyStore>, options: StoreOptions, clock: ManualClock) -> Self {
        let (store, _) =
            MemoryGrantStore::open(options, Arc::new(clock.clone())).expect("store opens");
        let store = Arc::new(store);
        let pipeline = Arc::new(DecisionPipeline::new(
            policies.clone(),
            store.clone(),
            Arc::new(clock.clone()),
            256,
        ));
        let steps = GrantSteps::new(
            pipeline.clone(),
            store.clone(),
            Arc::new(clock.clone()),
            Duration::from_secs(1800),
        );
        Self {
            clock,
            store,
            pipeline,
            steps,
        }
    }

    /// Request + approve through policy; returns the id of the now ACTIVE grant.
    pub fn active_grant(&self, i: usize, shape: &Shape) -> String {
        let requested = ready(self.steps.request(
            &request_grant(i, shape),
            &issuer(),
            &ParentContext::none(),
        ))
        .expect("request runs");
        assert!(
            requested.decision.allow(),
            "request denied: {:?}",
            requested.decision.reasons()
        );
        let grant = requested.grant.expect("a grant");
        assert_eq!(grant.state, GrantState::Pending, "one approval required");
        let id = grant.id().to_string();
        let approved = ready(
            self.steps
                .approve(&approve(&id), &portal(), &ParentContext::none()),
        )
        .expect("approve runs");
        assert!(
            approved.decision.allow(),
            "approval denied: {:?}",
            approved.decision.reasons()
        );
        assert_eq!(approved.grant.expect("the grant").state, GrantState::Active);
        id
    }
}

/// The output of a future that is ready at its first poll, as a grant step's is over
/// the in-memory store (its store futures are ready at once): polled once, with no
/// runtime, so a benchmark measures the step and not an executor.
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("a grant step on the in-memory store waited"),
    }
}

/// Reads an environment variable as a number, with a default. Accepts `1_000_000`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}
