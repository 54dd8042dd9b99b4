//! The AuthZEN Authorization API 1.0 on the HTTP listener: `POST /access/v1/evaluation`
//! and `POST /access/v1/evaluations`, each a stepgate `Check` through the same decision
//! pipeline (spec Appendix C):
//!
//! | AuthZEN | stepgate |
//! | --- | --- |
//! | `subject.type` / `.id` / `.properties` | `subject.kind` / `.id` / `.attributes` |
//! | `resource.type` / `.id` / `.properties` | `resource.type` / `.id` / `.attributes` |
//! | `action.name` | `action` |
//! | `context` (the whole object) | `context.attributes` |
//! | `context.step` if a string, else `use` | `step` |
//!
//! The answer is `{"decision": allow, "context": {"decision_id", "reasons"}}`; a batch
//! answers `{"evaluations": [...]}` in request order. `X-Request-ID` is echoed.

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use regorus::Value;

use super::{
    caller::http_caller, error::ApiError, http::HttpState, request_convert::json_attributes,
};
use crate::{
    decision::{CheckRequest, Context, Decision, InvalidField, Resource, Subject},
    telemetry::ParentContext,
};

/// The AuthZEN routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/access/v1/evaluation", post(evaluation))
        .route("/access/v1/evaluations", post(evaluations))
}

/// `POST /access/v1/evaluation`.
async fn evaluation(State(state): State<HttpState>, request: Request) -> Response {
    let request_id = request_id(request.headers());
    let answer = async {
        let parent = ParentContext::from_headers(request.headers());
        let (caller, body) = read(&state, request).await?;
        let check = check_from(&body, None).map_err(ApiError::from)?;
        let _turn = state.pipeline.admitted().await;
        let decision = state.pipeline.check(&check, &caller, &parent)?;
        Ok::<_, ApiError>(decision_json(&decision))
    }
    .await;
    respond(answer, request_id)
}

/// `POST /access/v1/evaluations`.
async fn evaluations(State(state): State<HttpState>, request: Request) -> Response {
    let request_id = request_id(request.headers());
    let answer = async {
        let parent = ParentContext::from_headers(request.headers());
        let (caller, body) = read(&state, request).await?;
        let items = match field(&body, "evaluations") {
            None => None,
            Some(Value::Array(items)) if items.is_empty() => None,
            Some(Value::Array(items)) => Some(items),
            Some(_) => {
                return Err(InvalidField::new("evaluations", "must be an array").into());
            }
        };
        let Some(items) = items else {
            // No evaluations: a single evaluation of the defaults, answered as one.
            let check = check_from(&body, None)?;
            let _turn = state.pipeline.admitted().await;
            return Ok(decision_json(
                &state.pipeline.check(&check, &caller, &parent)?,
            ));
        };
        let semantic = semantic(&body)?;
        let checks = items.iter().map(|item| check_from(&body, Some(item)));
        let mut decisions = state
            .pipeline
            .batch_check("evaluations", checks, caller, parent)
            .await?;
        if let Some(semantic) = semantic {
            // Short-circuit semantics: the answers end at the first deny / permit.
            let stop = decisions
                .iter()
                .position(|d| d.allow() == (semantic == Semantic::PermitOnFirstPermit));
            if let Some(stop) = stop {
                decisions.truncate(stop + 1);
            }
        }
        let answers: Vec<serde_json::Value> = decisions.iter().map(decision_json).collect();
        Ok(serde_json::json!({ "evaluations": answers }))
    }
    .await;
    respond(answer, request_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Semantic {
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

/// `options.evaluations_semantic`: `None` for `execute_all` (the default).
fn semantic(body: &Value) -> Result<Option<Semantic>, InvalidField> {
    let Some(options) = field(body, "options") else {
        return Ok(None);
    };
    match field(options, "evaluations_semantic") {
        None => Ok(None),
        Some(Value::String(s)) if &**s == "execute_all" => Ok(None),
        Some(Value::String(s)) if &**s == "deny_on_first_deny" => {
            Ok(Some(Semantic::DenyOnFirstDeny))
        }
        Some(Value::String(s)) if &**s == "permit_on_first_permit" => {
            Ok(Some(Semantic::PermitOnFirstPermit))
        }
        Some(_) => Err(InvalidField::new(
            "options.evaluations_semantic",
            "must be execute_all, deny_on_first_deny or permit_on_first_permit",
        )),
    }
}

async fn read(
    state: &HttpState,
    request: Request,
) -> Result<(crate::decision::Caller, Value), ApiError> {
    let caller = http_caller(&request);
    state
        .decision_callers
        .check(&caller, "ask for", "decisions")?;
    let body = state.read_body(request.into_body()).await?;
    let text =
        std::str::from_utf8(&body).map_err(|_| InvalidField::new("request body", "not UTF-8"))?;
    match Value::from_json_str(text) {
        Ok(value @ Value::Object(_)) => Ok((caller, value)),
        Ok(_) => Err(InvalidField::new("request body", "must be a JSON object").into()),
        Err(e) => Err(InvalidField::new("request body", format!("not JSON: {e}")).into()),
    }
}

fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    match object {
        Value::Object(map) => map.get(&Value::from(name)),
        _ => None,
    }
}

/// The value of `name` in `item`, else in the request's defaults.
fn pick<'a>(defaults: &'a Value, item: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    item.and_then(|item| field(item, name))
        .or_else(|| field(defaults, name))
}

fn string_field(object: &Value, name: &str, path: &str) -> Result<String, InvalidField> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.to_string()),
        Some(_) => Err(InvalidField::new(
            format!("{path}.{name}"),
            "must be a string",
        )),
    }
}

fn properties(object: &Value, path: &str) -> Result<Option<Value>, InvalidField> {
    match field(object, "properties") {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(json_attributes(value))),
        Some(_) => Err(InvalidField::new(
            format!("{path}.properties"),
            "must be an object",
        )),
    }
}

fn object<'a>(value: Option<&'a Value>, path: &str) -> Result<Option<&'a Value>, InvalidField> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value)),
        Some(_) => Err(InvalidField::new(path, "must be an object")),
    }
}

/// The Check an AuthZEN evaluation stands for (Appendix C). What a Check requires (a
/// subject, an action) is left to the pipeline's validation, which words it as it does
/// for every adapter.
fn check_from(defaults: &Value, item: Option<&Value>) -> Result<CheckRequest, InvalidField> {
    let subject = object(pick(defaults, item, "subject"), "subject")?;
    let action = object(pick(defaults, item, "action"), "action")?;
    let resource = object(pick(defaults, item, "resource"), "resource")?;
    let context = object(pick(defaults, item, "context"), "context")?;
    let step = match context.and_then(|c| field(c, "step")) {
        None => "use".to_string(),
        Some(Value::String(step)) => step.to_string(),
        Some(_) => return Err(InvalidField::new("context.step", "must be a string")),
    };
    Ok(CheckRequest {
        step,
        subject: subject
            .map(|s| {
                Ok::<_, InvalidField>(Subject {
                    id: string_field(s, "id", "subject")?,
                    kind: string_field(s, "type", "subject")?,
                    owner: String::new(),
                    attributes: properties(s, "subject")?,
                })
            })
            .transpose()?,
        action: action
            .map(|a| string_field(a, "name", "action"))
            .transpose()?
            .unwrap_or_default(),
        resource: resource
            .map(|r| {
                Ok::<_, InvalidField>(Resource {
                    r#type: string_field(r, "type", "resource")?,
                    id: string_field(r, "id", "resource")?,
                    attributes: properties(r, "resource")?,
                })
            })
            .transpose()?,
        context: context.map(|c| Context {
            source_ip: String::new(),
            attributes: Some(json_attributes(c)),
        }),
        ..CheckRequest::default()
    })
}

fn decision_json(decision: &Decision) -> serde_json::Value {
    serde_json::json!({
        "decision": decision.allow(),
        "context": {
            "decision_id": decision.id().to_string(),
            "reasons": decision.reasons(),
        },
    })
}

fn request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get("x-request-id").cloned()
}

fn respond(
    answer: Result<serde_json::Value, ApiError>,
    request_id: Option<HeaderValue>,
) -> Response {
    let mut response = match answer {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    };
    if let Some(id) = request_id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}
