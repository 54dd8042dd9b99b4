//! GrantService over real gRPC: the lifecycle, separation of duties, expiry with and
//! without a sweep, max_uses, revocation by grant / workflow / subject, idempotence, no
//! resurrection, watch events, admin callers, restart from the journal.

use std::time::Duration;

use chrono::TimeDelta;
use stepgate::proto::v1::{
    ApproveRequest, CheckRequest, ConfirmRevocationRequest, GetGrantRequest, GrantEvent,
    GrantResponse, GrantState, ListGrantsRequest, RejectRequest, RenewRequest, RequestGrantRequest,
    Resource, RevalidateRequest, RevokeRequest, Subject, WatchGrantsRequest, Workflow,
    decision_service_client::DecisionServiceClient, grant_service_client::GrantServiceClient,
    revoke_request::Target,
};
use tonic::{Code, Streaming, transport::Channel};

use super::support::{Server, my_uid, request, strukt};

mod administration;
mod expiry;
mod lifecycle;

/// Grant mechanics under a small policy: approvals and uses come from the resource's
/// attributes; separation of duties and eligible roles at `approve`; `close` refused for
/// workflow LOCKED; a use refused when the context says so.
const GRANT_POLICY: &str = r#"package stepgate

default decision := {"allow": false, "reasons": ["no rule allows this step"]}

attrs := object.get(input, ["resource", "attributes"], {})

decision := {"allow": true, "reasons": ["requested"], "obligations": {
	"required_approvals": object.get(attrs, "approvals", 0),
	"max_ttl_seconds": 3600,
	"approval_timeout_seconds": 1800,
	"max_uses": object.get(attrs, "max_uses", 0),
}} if input.step == "request"

approver := object.get(input, ["approval", "approver"], "")

sod_violations contains "approver is the requester" if approver == object.get(input, ["workflow", "requester"], "")

sod_violations contains "approver owns the subject" if approver == object.get(input, ["subject", "owner"], "")

sod_violations contains "role not eligible" if {
	input.approval.verdict == "approve"
	not object.get(input, ["approval", "role"], "") in {"asset_owner", "security"}
}

decision := {"allow": count(sod_violations) == 0, "reasons": sod_violations} if input.step == "approve"

decision := {"allow": true, "reasons": ["use", input.grant.state, sprintf("%d", [input.grant.uses])]} if {
	input.step == "use"
	not object.get(input, ["context", "attributes", "deny"], false)
}

decision := {"allow": false, "reasons": ["context says no"]} if {
	input.step == "use"
	object.get(input, ["context", "attributes", "deny"], false)
}

decision := {"allow": true, "obligations": {"max_ttl_seconds": 600}} if input.step == "renew"

decision := {"allow": true} if input.step == "revoke"

decision := {"allow": object.get(input, ["workflow", "id"], "") != "LOCKED"} if input.step == "close"

# Check with a grant_id sees the grant.
decision := {"allow": object.get(input, ["grant", "state"], "none") == "ACTIVE", "reasons": [object.get(input, ["grant", "state"], "none")]} if input.step == "issue"
"#;

async fn server() -> Server {
    Server::start_with(&[("p.rego", GRANT_POLICY)], |c| {
        c.grants.sweep_interval = Duration::from_millis(20)
    })
    .await
}

async fn grants(server: &Server) -> GrantServiceClient<Channel> {
    GrantServiceClient::new(server.tcp_channel().await)
}

fn grant_request(
    workflow: &str,
    subject: &str,
    approvals: u32,
    max_uses: u32,
) -> RequestGrantRequest {
    RequestGrantRequest {
        subject: Some(Subject {
            id: subject.into(),
            kind: "service_account".into(),
            owner: "team-owner".into(),
            attributes: None,
        }),
        action: "issue_credential".into(),
        resource: Some(Resource {
            r#type: "secret".into(),
            id: "prod/db".into(),
            attributes: Some(strukt(
                serde_json::json!({"approvals": approvals, "max_uses": max_uses}),
            )),
        }),
        scope: vec!["read".into()],
        workflow: Some(Workflow {
            id: workflow.into(),
            requester: "alice".into(),
            justification: "deploy".into(),
            ..Default::default()
        }),
        ttl: Some(prost_types::Duration {
            seconds: 7200,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn approve(id: &str, approver: &str, role: &str) -> ApproveRequest {
    ApproveRequest {
        grant_id: id.into(),
        approver: approver.into(),
        role: role.into(),
        ..Default::default()
    }
}

fn revalidate(id: &str) -> RevalidateRequest {
    RevalidateRequest {
        grant_id: id.into(),
        ..Default::default()
    }
}

fn state(response: &GrantResponse) -> GrantState {
    response.grant.as_ref().unwrap().state()
}

async fn next_event(events: &mut Streaming<GrantEvent>) -> GrantEvent {
    tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event arrives")
        .unwrap()
        .unwrap()
}
