//! Envoy `envoy.service.auth.v3.Authorization/Check` (ext_authz), answering as the
//! OPA-Envoy plugin does: `OK` or `PERMISSION_DENIED` in `status`, the policy's response
//! fields in `ok_response` / `denied_response` when it returned an object, the decision
//! id always in `dynamic_metadata.decision_id`. An evaluation failure is a gRPC error, so
//! the Envoy filter's own failure mode (`failure_mode_allow`) decides.
//!
//! Envoy's wire types stop here: `input.rs` builds the OPA-Envoy input document, the
//! pipeline evaluates it at the Envoy entrypoint as a raw policy result (observed like
//! every decision), and `verdict.rs` reads the result as the plugin does and writes
//! Envoy's response.

mod input;
mod verdict;

use std::sync::Arc;

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse, OkHttpResponse},
    pb::google::protobuf::{Struct, Value as EnvoyValue, value::Kind},
};
use tonic::{Request, Response, Status};

pub use input::{BadEnvoyRequest, envoy_input};
use verdict::{CODE_OK, bad_request_response, envoy_verdict, status, verdict_response};

use super::{
    caller::{caller_of, parent_of},
    error::ApiError,
    manual_services::envoy_auth::authorization_server::Authorization,
};
use crate::{
    decision::{Caller, Decision, DecisionPipeline, RawTarget, RawVerdict},
    policy::Entrypoint,
    telemetry::ParentContext,
};

/// The ext_authz adapter over the decision pipeline.
#[derive(Debug, Clone)]
pub struct ExtAuthzApi {
    pipeline: Arc<DecisionPipeline>,
    dry_run: bool,
}

impl ExtAuthzApi {
    /// An adapter deciding through `pipeline`; with `dry_run`, every request is allowed
    /// and the real decision is only recorded.
    pub fn new(pipeline: Arc<DecisionPipeline>, dry_run: bool) -> Self {
        Self { pipeline, dry_run }
    }

    /// Decides `request` from `caller` (whoever calls this holds the evaluation gate's
    /// turn): the decision as recorded (its `allow` is the policy's verdict, or a deny
    /// naming why there is none) and Envoy's answer. A request the input cannot be built
    /// from is recorded as a deny and answered with a 400 denial, as the plugin does.
    pub fn decide(
        &self,
        request: &CheckRequest,
        caller: &Caller,
        parent: &ParentContext,
    ) -> (Decision, Result<CheckResponse, Status>) {
        let (decision, outcome) = self.pipeline.decide_raw(
            RawTarget::Entrypoint(Entrypoint::Envoy),
            envoy_input(request, caller),
            parent,
            |result| match result {
                // The record reads `allowed` from the result itself; a result the plugin
                // cannot read is a deny with the plugin's words.
                Ok(result) => match envoy_verdict(result.value()) {
                    Ok(verdict) => (Ok(verdict), result.flag_verdict(&["allowed"], Vec::new())),
                    Err(err) => {
                        let record = RawVerdict::deny(err.clone());
                        (Err(err), record)
                    }
                },
                Err(refusal) => (Err(refusal.to_string()), RawVerdict::refused(&refusal)),
            },
        );
        let id = decision.id().to_string();
        let failed = |err: String| {
            Status::from(ApiError::Failed(format!(
                "decision {id}: envoy ext_authz evaluation failed: {err}"
            )))
        };
        let response = match outcome {
            Ok(Ok(verdict)) => verdict_response(verdict).map_err(failed),
            Ok(Err(err)) => Err(failed(err)),
            Err(bad) => Ok(bad_request_response(&bad.to_string())),
        };
        let answer = response.map(|response| self.finished(response, id));
        (decision, answer)
    }

    /// `response` as Envoy gets it: let through under dry run, with the decision id.
    fn finished(&self, mut response: CheckResponse, id: String) -> CheckResponse {
        if self.dry_run && response.status.as_ref().is_none_or(|s| s.code != CODE_OK) {
            // The decision log keeps the real decision; Envoy is told to let it pass.
            response.status = Some(status(CODE_OK, String::new()));
            response.http_response = Some(HttpResponse::OkResponse(OkHttpResponse::default()));
        }
        response
            .dynamic_metadata
            .get_or_insert_with(Struct::default)
            .fields
            .insert(
                "decision_id".into(),
                EnvoyValue {
                    kind: Some(Kind::StringValue(id)),
                },
            );
        response
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzApi {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let caller = caller_of(&request);
        let parent = parent_of(&request);
        let turn = self.pipeline.admitted().await;
        let (_, answer) = self.decide(request.get_ref(), &caller, &parent);
        drop(turn);
        answer.map(Response::new)
    }
}
