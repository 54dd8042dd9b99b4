//! The policy's result read as the OPA-Envoy plugin reads it, and that reading turned
//! into Envoy's `CheckResponse`: a boolean, or an object with `allowed` and optional
//! response fields (headers, body and status of a denial, query parameters, dynamic
//! metadata).

use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse,
        HttpStatus, HttpStatusCode, OkHttpResponse, QueryParameter,
    },
    pb::google::{protobuf::Struct, rpc::Status as RpcStatus},
};
use prost::Message;
use regorus::{Value, value::Object};

use crate::api::convert::value_to_struct;

/// gRPC status codes as the `google.rpc.Status` of a CheckResponse carries them.
pub(super) const CODE_OK: i32 = 0;
const CODE_PERMISSION_DENIED: i32 = 7;

/// The policy's answer, read as the OPA-Envoy plugin reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvoyVerdict {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Whether the policy returned an object (only then does the plugin send an HTTP
    /// response with the status).
    pub structured: bool,
    /// `headers`: sent upstream when allowed, downstream when denied.
    pub headers: Vec<(String, String)>,
    /// `request_headers_to_remove` (allowed only).
    pub request_headers_to_remove: Vec<String>,
    /// `response_headers_to_add` (allowed only).
    pub response_headers_to_add: Vec<(String, String)>,
    /// `query_parameters_to_set` (allowed only).
    pub query_parameters_to_set: Vec<(String, String)>,
    /// `query_parameters_to_remove` (allowed only).
    pub query_parameters_to_remove: Vec<String>,
    /// `body` of the denial.
    pub body: String,
    /// `http_status` of the denial (403 when the policy gives none).
    pub http_status: i64,
    /// `dynamic_metadata` (an object) when the policy gave one.
    pub dynamic_metadata: Option<Value>,
}

/// Reads the policy's result as the plugin does. An undefined result, a result that is
/// neither a boolean nor an object, or a malformed field is an error (Envoy's failure
/// mode then applies). Fields that do not apply to the outcome are not read.
pub fn envoy_verdict(result: &Value) -> Result<EnvoyVerdict, String> {
    let object = match result {
        Value::Bool(allowed) => {
            return Ok(EnvoyVerdict {
                allowed: *allowed,
                http_status: 403,
                ..EnvoyVerdict::default()
            });
        }
        Value::Undefined => return Err("undefined decision".into()),
        Value::Object(object) => object,
        other => {
            return Err(format!(
                "illegal value for policy evaluation result: {}",
                type_name(other)
            ));
        }
    };
    let field = |name: &str| object.get(&Value::from(name));
    let allowed = match field("allowed") {
        Some(Value::Bool(allowed)) => *allowed,
        Some(other) => {
            return Err(format!(
                "type assertion error, expected allowed to be of type 'boolean' but got '{}'",
                type_name(other)
            ));
        }
        None => {
            return Err(
                "unable to determine evaluation result due to missing \"allowed\" key".into(),
            );
        }
    };
    let mut verdict = EnvoyVerdict {
        allowed,
        structured: true,
        http_status: 403,
        headers: headers(field("headers"), "headers")?,
        ..EnvoyVerdict::default()
    };
    verdict.dynamic_metadata = match field("dynamic_metadata") {
        None => None,
        Some(value @ Value::Object(_)) => Some(value.clone()),
        Some(other) => {
            return Err(format!(
                "type assertion error, expected dynamic_metadata to be of type 'object' but got '{}'",
                type_name(other)
            ));
        }
    };
    if allowed {
        verdict.request_headers_to_remove = strings(
            field("request_headers_to_remove"),
            "request_headers_to_remove",
        )?;
        verdict.response_headers_to_add =
            headers(field("response_headers_to_add"), "response_headers_to_add")?;
        verdict.query_parameters_to_remove = strings(
            field("query_parameters_to_remove"),
            "query_parameters_to_remove",
        )?;
        verdict.query_parameters_to_set = query_parameters(field("query_parameters_to_set"))?;
    } else {
        verdict.body = match field("body") {
            None => String::new(),
            Some(Value::String(body)) => body.to_string(),
            Some(other) => {
                return Err(format!(
                    "type assertion error, expected body to be of type 'string' but got '{}'",
                    type_name(other)
                ));
            }
        };
        if let Some(status) = field("http_status") {
            verdict.http_status = match status {
                Value::Number(n) => n.as_i64().ok_or_else(|| {
                    format!(
                        "error converting JSON number to int: {}",
                        status_text(status)
                    )
                })?,
                other => {
                    return Err(format!(
                        "type assertion error, expected http_status to be of type 'number' but got '{}'",
                        type_name(other)
                    ));
                }
            };
        }
    }
    Ok(verdict)
}

fn status_text(value: &Value) -> String {
    value.to_json_str().unwrap_or_default()
}

/// `{"name": "v" | ["v1", "v2"]}` or an array of such objects, as header pairs.
fn headers(value: Option<&Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    let objects: Vec<&Value> = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(object) => vec![object],
    };
    let mut out = Vec::new();
    for object in objects {
        let Value::Object(map) = object else {
            return Err(format!(
                "type assertion error, expected {field} to be of type 'object' but got '{}'",
                type_name(object)
            ));
        };
        name_values(map, &mut out, PairErrors::HEADERS)?;
    }
    Ok(out)
}

fn strings(value: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.to_string()),
                other => Err(format!(
                    "type assertion error, expected {field} value to be of type 'string' but got '{}'",
                    type_name(other)
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "type assertion error, expected {field} to be of type '[]string' but got '{}'",
            type_name(other)
        )),
    }
}

fn query_parameters(value: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match value {
        None => {}
        Some(Value::Object(map)) => name_values(map, &mut out, PairErrors::QUERY)?,
        Some(other) => {
            return Err(format!(
                "type assertion error, expected query_parameters_to_set to be a map but got '{}'",
                type_name(other)
            ));
        }
    }
    Ok(out)
}

/// How the plugin words a bad value in a name → value(s) map, per field.
struct PairErrors {
    /// An array item that is not a string (`{key}` and `{type}` are filled in).
    item: &'static str,
    /// A value that is neither a string nor an array.
    value: &'static str,
}

impl PairErrors {
    const HEADERS: Self = Self {
        item: "invalid value type {type} for header '{key}'",
        value: "type assertion error for header '{key}'",
    };
    const QUERY: Self = Self {
        item: "type assertion error: expected array element to be string but got '{type}'",
        value: "type assertion error, expected value to be string or array but got '{type}'",
    };
}

/// `{"name": "v" | ["v1", "v2"]}` as (name, value) pairs, appended to `out`.
fn name_values(
    map: &Object,
    out: &mut Vec<(String, String)>,
    errors: PairErrors,
) -> Result<(), String> {
    let fill = |template: &str, key: &str, value: &Value| {
        template
            .replace("{key}", key)
            .replace("{type}", type_name(value))
    };
    for (key, value) in map.iter() {
        let key = key.as_string().map_err(|e| e.to_string())?.to_string();
        match value {
            Value::String(v) => out.push((key, v.to_string())),
            Value::Array(items) => {
                for item in items.iter() {
                    match item {
                        Value::String(v) => out.push((key.clone(), v.to_string())),
                        other => return Err(fill(errors.item, &key, other)),
                    }
                }
            }
            other => return Err(fill(errors.value, &key, other)),
        }
    }
    Ok(())
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

/// A request the input could not be built from: denied with 400, as the plugin does.
pub(super) fn bad_request_response(message: &str) -> CheckResponse {
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

/// Envoy's answer to `verdict`: the status, and the policy's response fields when it
/// returned an object. A denial's HTTP status that Envoy cannot send is an error.
pub(super) fn verdict_response(verdict: EnvoyVerdict) -> Result<CheckResponse, String> {
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

/// A `google.rpc.Status` with `code` and `message`.
pub(super) fn status(code: i32, message: String) -> RpcStatus {
    RpcStatus {
        code,
        message,
        details: Vec::new(),
    }
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
fn envoy_struct(value: &Value) -> Struct {
    Struct::decode(value_to_struct(value).encode_to_vec().as_slice()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    #[test]
    fn booleans_and_objects_map_as_the_plugin_maps_them() {
        assert!(envoy_verdict(&Value::from(true)).unwrap().allowed);
        let denied = envoy_verdict(&Value::from(false)).unwrap();
        assert!(!denied.allowed && !denied.structured);
        let verdict = envoy_verdict(&json(
            r#"{"allowed": false, "http_status": 401, "body": "no", "headers": [{"x-a": "1"}, {"x-b": ["2", "3"]}]}"#,
        ))
        .unwrap();
        assert_eq!((verdict.http_status, verdict.body.as_str()), (401, "no"));
        assert_eq!(verdict.headers.len(), 3);
        for bad in [
            "{}",
            r#"{"allowed": "yes"}"#,
            r#"{"allowed": false, "body": 1}"#,
            r#"{"allowed": true, "request_headers_to_remove": "x"}"#,
            r#"{"allowed": true, "dynamic_metadata": []}"#,
            "[]",
        ] {
            assert!(envoy_verdict(&json(bad)).is_err(), "{bad}");
        }
        assert!(envoy_verdict(&Value::Undefined).is_err());
        // A field that does not apply to the outcome is not read.
        assert!(envoy_verdict(&json(r#"{"allowed": true, "body": 1}"#)).is_ok());
    }
}
