//! Envoy `envoy.service.auth.v3.Authorization/Check` (ext_authz), answering as the
//! OPA-Envoy plugin does: `OK` or `PERMISSION_DENIED` in `status`, the policy's response
//! fields in `ok_response` / `denied_response` when it returned an object, the decision
//! id always in `dynamic_metadata.decision_id`. An evaluation failure is a gRPC error, so
//! the Envoy filter's own failure mode (`failure_mode_allow`) decides.

use std::sync::Arc;

use envoy_types::{
    ext_authz::v3::pb::{
        CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse, QueryParameter,
    },
    pb::google::{
        protobuf::{Struct, Value as EnvoyValue, value::Kind},
        rpc::Status as RpcStatus,
    },
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{
    caller::{caller_of, parent_of},
    convert::value_to_struct,
    manual_services::envoy_auth::authorization_server::Authorization,
};
use crate::decision::{DecisionPipeline, EnvoyFailure, EnvoyVerdict};

/// gRPC status codes as the `google.rpc.Status` of a CheckResponse carries them.
const CODE_OK: i32 = 0;
const CODE_PERMISSION_DENIED: i32 = 7;

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
        let decision = self
            .pipeline
            .envoy_check(request.get_ref(), &caller, &parent);
        drop(turn);
        let id = decision.decision.id.to_string();
        let failed = |err: String| {
            Status::unknown(format!(
                "decision {id}: envoy ext_authz evaluation failed: {err}"
            ))
        };
        let mut response = match decision.outcome {
            Ok(verdict) => verdict_response(verdict).map_err(failed)?,
            Err(EnvoyFailure::Evaluation(err)) => return Err(failed(err)),
            Err(EnvoyFailure::BadRequest(bad)) => bad_request_response(&bad.to_string()),
        };
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
        Ok(Response::new(response))
    }
}

fn status(code: i32, message: String) -> RpcStatus {
    RpcStatus {
        code,
        message,
        details: Vec::new(),
    }
}

/// A request the input could not be built from: denied with 400, as the plugin does.
fn bad_request_response(message: &str) -> CheckResponse {
    CheckResponse {
        status: Some(status(CODE_PERMISSION_DENIED, message.to_string())),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: HttpStatusCode::BadRequest as i32,
            }),
            headers: Vec::new(),
            body: message.to_string(),
        })),
        dynamic_metadata: None,
    }
}

fn verdict_response(verdict: EnvoyVerdict) -> Result<CheckResponse, String> {
    let code = if verdict.allowed {
        CODE_OK
    } else {
        CODE_PERMISSION_DENIED
    };
    let mut response = CheckResponse {
        status: Some(status(code, String::new())),
        http_response: None,
        dynamic_metadata: None,
    };
    if !verdict.structured {
        return Ok(response);
    }
    response.dynamic_metadata = verdict.dynamic_metadata.as_ref().map(envoy_struct);
    let headers = header_options(verdict.headers);
    response.http_response = Some(if verdict.allowed {
        HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: verdict.request_headers_to_remove,
            response_headers_to_add: header_options(verdict.response_headers_to_add),
            query_parameters_to_set: verdict
                .query_parameters_to_set
                .into_iter()
                .map(|(key, value)| QueryParameter { key, value })
                .collect(),
            query_parameters_to_remove: verdict.query_parameters_to_remove,
            ..OkHttpResponse::default()
        })
    } else {
        let code = i32::try_from(verdict.http_status)
            .ok()
            .filter(|code| *code != 0 && HttpStatusCode::try_from(*code).is_ok())
            .ok_or_else(|| format!("invalid HTTP status code {}", verdict.http_status))?;
        HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code }),
            headers,
            body: verdict.body,
        })
    });
    Ok(response)
}

fn header_options(headers: Vec<(String, String)>) -> Vec<HeaderValueOption> {
    headers
        .into_iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key,
                value,
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        })
        .collect()
}

/// envoy-types' `Struct` shares `prost_types::Struct`'s wire format: the shared
/// converter's output is re-read as envoy's type rather than converted twice by hand.
fn envoy_struct(value: &regorus::Value) -> Struct {
    Struct::decode(value_to_struct(value).encode_to_vec().as_slice()).unwrap_or_default()
}
