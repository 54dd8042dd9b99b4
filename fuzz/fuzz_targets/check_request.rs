//! `stepgate.v1.CheckRequest` as protobuf bytes off the wire → the core's request →
//! validation → the input document → a decision by the example policies.
//!
//! Properties: no panic, no hang; a message that decodes re-encodes to bytes that decode
//! and re-encode to the same bytes; a valid request's input document survives JSON; a decision
//! always names the serving revision.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::json;
use stepgate::{
    decision::{check_input, validate_check},
    proto::v1::{AgentCall, CheckRequest, Context, Resource, Subject, Workflow},
    telemetry::ParentContext,
};

/// Requests of every step the example policies decide, as a client would send them.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let steps = [
        "request",
        "approve",
        "issue",
        "use",
        "renew",
        "revoke",
        "close",
        "break_glass",
    ];
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let request = CheckRequest {
                step: (*step).into(),
                subject: Some(Subject {
                    id: "alice".into(),
                    kind: "user".into(),
                    owner: "team-payments".into(),
                    attributes: Some(common::strukt(json!({
                        "roles": ["sre", "oncall"], "mfa": true, "level": 3
                    }))),
                }),
                action: "db:read".into(),
                resource: Some(Resource {
                    r#type: "database".into(),
                    id: "payments-prod".into(),
                    attributes: Some(common::strukt(json!({"env": "prod", "tier": 1}))),
                }),
                workflow: Some(Workflow {
                    id: format!("INC-{i}"),
                    requester: "alice".into(),
                    justification: "incident".into(),
                    emergency: *step == "break_glass",
                    attributes: Some(common::strukt(json!({"approvers": ["bob", "carol"]}))),
                }),
                agent: (i % 2 == 0).then(|| AgentCall {
                    tool: "sql.query".into(),
                    arguments: Some(common::strukt(json!({"query": "select 1", "limit": 10.5}))),
                    on_behalf_of: "alice".into(),
                    delegation_chain: vec!["agent-1".into(), "alice".into()],
                }),
                context: Some(Context {
                    source_ip: "10.0.0.7".into(),
                    attributes: Some(common::strukt(json!({"ticket": {"state": "open"}}))),
                }),
                grant_id: if i % 3 == 0 {
                    "0190f0c0-0000-7000-8000-000000000000".into()
                } else {
                    String::new()
                },
            };
            ((*step).to_string(), common::message_seed(i as u8, &request))
        })
        .collect()
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let Some((caller, request)) = common::caller_and_message::<CheckRequest>(data) else {
        return;
    };
    // Compared as bytes: a NaN number value is not equal to itself.
    let encoded = request.encode_to_vec();
    let again = CheckRequest::decode(encoded.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again.encode_to_vec(), encoded, "protobuf round trip");

    let pipeline = common::pipeline();
    let request = stepgate::decision::CheckRequest::from(request);
    if validate_check(&request).is_ok() {
        let now = pipeline.clock().now();
        common::assert_json_round_trip(&check_input(&request, &caller, now, None));
    }
    match pipeline.check(&request, &caller, &ParentContext::none()) {
        Ok(decision) => assert!(!decision.policy_revision().is_empty()),
        Err(invalid) => assert!(validate_check(&request).is_err(), "{invalid}"),
    }
});
