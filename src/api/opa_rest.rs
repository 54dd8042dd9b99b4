//! The OPA REST API on the HTTP listener, so OPA's own clients work unchanged:
//! the Data API (`POST`/`GET /v1/data/{path}`, `POST /v0/data/{path}`), the default
//! decision (`POST /`, the decision entrypoint) and `GET /v1/policies`.
//!
//! Shapes and status codes follow OPA: `{"result": ..., "decision_id": ...}` with no
//! `result` when the document is undefined; `?pretty`, `?metrics`, `?provenance`; errors as
//! `{"code": "invalid_parameter" | "internal_error" | "undefined_document", "message"}`.
//! One difference is deliberate: when the input is an object, `input.caller` is the
//! transport's caller and `input.context.time` the server's clock (as in every other
//! stepgate input), never the client's.

use std::{convert::Infallible, time::Instant};

use chrono::{DateTime, Utc};

use axum::{
    Router,
    body::Bytes,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use regorus::Value;

use super::{caller::http_caller, error::ApiError, http::HttpState};
use crate::{
    decision::{
        Caller, Decision, RawTarget, RawVerdict, canonical_identities, validate_input_depth,
        with_server_facts,
    },
    policy::Entrypoint,
    telemetry::ParentContext,
};

/// The OPA REST routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", post(default_decision))
        .route("/v1/data", get(data_v1).post(data_v1))
        .route("/v1/data/", get(data_v1).post(data_v1))
        .route("/v1/data/{*path}", get(data_v1).post(data_v1))
        .route("/v0/data/{*path}", post(data_v0))
        .route("/v1/policies", get(policies))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The query parameters OPA's Data API honours (others are ignored, as OPA ignores
/// unknown ones).
#[derive(Debug, Default)]
struct Params {
    pretty: bool,
    metrics: bool,
    provenance: bool,
    input: Option<String>,
}

impl Params {
    fn parse(query: Option<&str>) -> Self {
        let mut params = Self::default();
        // OPA reads `?pretty` and `?pretty=true` as on, anything else as off.
        let on = |value: &str| value.is_empty() || value.eq_ignore_ascii_case("true");
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "pretty" => params.pretty = on(&value),
                "metrics" => params.metrics = on(&value),
                "provenance" => params.provenance = on(&value),
                "input" => params.input = Some(value.into_owned()),
                _ => {}
            }
        }
        params
    }
}

/// A request's caller, path, parameters and body, after the allow-list check.
struct Call {
    caller: Caller,
    parent: ParentContext,
    params: Params,
    body: Bytes,
    started: Instant,
    /// The server's time for `input.context.time`, read when the call arrived.
    now: DateTime<Utc>,
}

async fn read_call(state: &HttpState, request: Request) -> Result<Call, Response> {
    let started = Instant::now();
    let caller = http_caller(&request);
    state
        .decision_callers
        .check(&caller, "query", "decisions")
        .map_err(IntoResponse::into_response)?;
    let params = Params::parse(request.uri().query());
    let parent = ParentContext::from_headers(request.headers());
    let body = state
        .read_body(request.into_body())
        .await
        .map_err(|field| ApiError::from(field).into_response())?;
    Ok(Call {
        caller,
        parent,
        params,
        body,
        started,
        now: state.pipeline.clock().now(),
    })
}

/// Parses a JSON document (the input of v0 and `POST /`, or the `{"input": ...}` body).
fn parse_json(text: &[u8], what: &str) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| ApiError::Invalid(format!("{what} is not valid UTF-8")))?;
    Value::from_json_str(text)
        .map_err(|e| ApiError::Invalid(format!("{what} contains malformed input document: {e}")))
}

/// The `data` path of a request: `/v1/data/a/b` → `["a", "b"]` (empty segments, as from
/// a trailing slash, are skipped).
fn data_path<'a>(uri_path: &'a str, prefix: &str) -> Vec<&'a str> {
    uri_path
        .strip_prefix(prefix)
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

/// Percent-decodes each segment (axum leaves the raw URI path alone).
fn decoded(segments: &[&str]) -> Vec<String> {
    segments
        .iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// `POST`/`GET /v1/data/{path}`.
async fn data_v1(State(state): State<HttpState>, request: Request) -> Response {
    let is_get = request.method() == axum::http::Method::GET;
    let path = decoded(&data_path(request.uri().path(), "/v1/data"));
    let call = match read_call(&state, request).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let input = match v1_input(&call, is_get) {
        Ok(input) => input.map(|i| with_server_facts(i, &call.caller, call.now)),
        Err(err) => return err.into_response(),
    };
    let input = match input.map(canonical_identities).transpose() {
        Ok(input) => input,
        Err(field) => return ApiError::from(field.within("input")).into_response(),
    };
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let target = RawTarget::Data {
        path: &segments,
        has_input: input.is_some(),
    };
    let turn = state.pipeline.admitted().await;
    let (decision, result) = query(&state, &call, target, input, &document_name(&segments));
    drop(turn);
    let result = match result {
        Ok(result) => result,
        Err(err) => return ApiError::Failed(err).into_response(),
    };
    let mut body = regorus::value::Object::new();
    if result != Value::Undefined {
        body.insert(Value::from("result"), result);
    }
    body.insert(
        Value::from("decision_id"),
        Value::from(decision.id().to_string()),
    );
    if call.params.metrics {
        let mut metrics = regorus::value::Object::new();
        metrics.insert(
            Value::from("timer_rego_query_eval_ns"),
            Value::from(decision.eval_duration().as_nanos() as u64),
        );
        metrics.insert(
            Value::from("timer_server_handler_ns"),
            Value::from(call.started.elapsed().as_nanos() as u64),
        );
        body.insert(Value::from("metrics"), metrics.into_value());
    }
    if call.params.provenance {
        body.insert(
            Value::from("provenance"),
            provenance(
                decision.policy_revision(),
                decision.bundle_revision().map(|r| &**r),
            ),
        );
    }
    encode(StatusCode::OK, &body.into_value(), call.params.pretty)
}

/// The input of a v1 Data API call: `{"input": ...}` in a POST body, `?input=` on GET.
fn v1_input(call: &Call, is_get: bool) -> Result<Option<Value>, ApiError> {
    let input = if is_get {
        call.params
            .input
            .as_deref()
            .map(|text| parse_json(text.as_bytes(), "input parameter"))
            .transpose()?
    } else if call.body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match parse_json(&call.body, "body")? {
            Value::Object(object) => object.get(&Value::from("input")).cloned(),
            _ => {
                return Err(ApiError::Invalid(
                    "body contains malformed input document: not an object".into(),
                ));
            }
        }
    };
    input.map(bounded).transpose()
}

/// The input, if it nests no deeper than a Check's could (see [`validate_input_depth`]).
fn bounded(input: Value) -> Result<Value, ApiError> {
    validate_input_depth(&input).map_err(ApiError::from)?;
    Ok(input)
}

/// `POST /v0/data/{path}`: the body is the input, the answer the bare document.
async fn data_v0(State(state): State<HttpState>, request: Request) -> Response {
    let path = decoded(&data_path(request.uri().path(), "/v0/data"));
    let call = match read_call(&state, request).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let input = match raw_input(&call) {
        Ok(input) => input,
        Err(err) => return err.into_response(),
    };
    let segments: Vec<&str> = path.iter().map(String::as_str).collect();
    let document = document_name(&segments);
    let target = RawTarget::Data {
        path: &segments,
        has_input: input.is_some(),
    };
    let turn = state.pipeline.admitted().await;
    let answer = query(&state, &call, target, input, &document);
    drop(turn);
    bare_answer(answer, &document, &call)
}

/// `POST /`: the decision entrypoint on the body as input, the answer the bare document.
async fn default_decision(State(state): State<HttpState>, request: Request) -> Response {
    let call = match read_call(&state, request).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let input = match raw_input(&call) {
        Ok(input) => input.unwrap_or_else(Value::new_object),
        Err(err) => return err.into_response(),
    };
    let rule = state
        .pipeline
        .policies()
        .options()
        .decision_entrypoint
        .clone();
    let target = RawTarget::Entrypoint(Entrypoint::Decision);
    let turn = state.pipeline.admitted().await;
    let answer = query(&state, &call, target, Some(input), &rule);
    drop(turn);
    bare_answer(answer, &rule, &call)
}

fn raw_input(call: &Call) -> Result<Option<Value>, ApiError> {
    if call.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let input = bounded(parse_json(&call.body, "body")?)?;
    let input = with_server_facts(input, &call.caller, call.now);
    canonical_identities(input)
        .map(Some)
        .map_err(ApiError::from)
}

/// `data.a.b` for the path `["a", "b"]`.
fn document_name(segments: &[&str]) -> String {
    std::iter::once("data")
        .chain(segments.iter().copied())
        .collect::<Vec<_>>()
        .join(".")
}

/// Evaluates through the decision pipeline, so the query gets its span, metrics and
/// decision-log record. The record names the document queried; it reads the decision
/// entrypoint's result as a Check does (a malformed decision document is a deny, though
/// the answer is the document as OPA returns it), and any other document as allowing when
/// it is `true` or an object whose `allow`/`allowed` is `true`.
fn query(
    state: &HttpState,
    call: &Call,
    target: RawTarget<'_>,
    input: Option<Value>,
    document: &str,
) -> (Decision, Result<Value, String>) {
    let input = Ok::<_, Infallible>(input.unwrap_or_else(Value::new_object));
    let decision_document = *state.pipeline.policies().options().decision_entrypoint == *document;
    let (decision, Ok(answer)) = state
        .pipeline
        .decide_raw(target, input, &call.parent, |result| match result {
            Ok(result) => {
                let note = format!("queried {document}");
                let verdict = if decision_document {
                    result.decision_verdict(note)
                } else {
                    result.flag_verdict(&["allow", "allowed"], vec![note])
                };
                (Ok(result.into_value()), verdict)
            }
            Err(refusal) => (Err(refusal.to_string()), RawVerdict::refused(&refusal)),
        });
    (decision, answer)
}

fn bare_answer(
    (decision, result): (Decision, Result<Value, String>),
    document: &str,
    call: &Call,
) -> Response {
    match result {
        Err(err) => ApiError::Failed(err).into_response(),
        Ok(Value::Undefined) => {
            ApiError::NotFound(format!("document missing or undefined: {document}")).into_response()
        }
        Ok(result) => {
            let mut response = encode(StatusCode::OK, &result, call.params.pretty);
            if let Ok(id) = decision.id().to_string().parse() {
                response.headers_mut().insert("x-decision-id", id);
            }
            response
        }
    }
}

/// `GET /v1/policies`: every module with its source (no AST: stepgate does not produce
/// OPA's).
async fn policies(State(state): State<HttpState>, request: Request) -> Response {
    let call = match read_call(&state, request).await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let current = state.pipeline.policies().current();
    let modules: Vec<serde_json::Value> = current
        .as_ref()
        .map(|set| set.policy_sources())
        .unwrap_or_default()
        .into_iter()
        .map(|(id, raw)| serde_json::json!({"id": id, "raw": raw}))
        .collect();
    let body = serde_json::json!({ "result": modules });
    let bytes = if call.params.pretty {
        serde_json::to_vec_pretty(&body)
    } else {
        serde_json::to_vec(&body)
    };
    json_response(StatusCode::OK, bytes.unwrap_or_default())
}

/// OPA's provenance: the bundle's own revision under `bundles` when the set came from a
/// bundle, else the set's content hash.
fn provenance(revision: &str, bundle_revision: Option<&str>) -> Value {
    let json = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": revision,
        "bundles": {"policies": {"revision": bundle_revision.unwrap_or(revision)}},
    });
    Value::from_json_str(&json.to_string()).unwrap_or_else(|_| Value::new_object())
}

fn encode(status: StatusCode, value: &Value, pretty: bool) -> Response {
    let bytes = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    match bytes {
        Ok(bytes) => json_response(status, bytes),
        Err(err) => {
            ApiError::Failed(format!("result not representable as JSON: {err}")).into_response()
        }
    }
}
