//! Envoy ext_authz decisions, as the OPA-Envoy plugin makes them, so that its policies
//! run unchanged: the input document built from an `envoy.service.auth.v3.CheckRequest`
//! and the policy's result read as the plugin reads it.
//!
//! The input is the request with protobuf JSON field names (`attributes.request.http.
//! headers`, `attributes.contextExtensions`, ...; fields left at their default are
//! absent), plus `parsed_path`, `parsed_query`, `parsed_body` (JSON and form bodies),
//! `truncated_body`, `version`, `source_principal` when the source has one, and
//! stepgate's own `caller` (the transport's identity, never the request's). The result
//! is a boolean, or an object with `allowed` and optional response fields.

use std::{collections::HashMap, sync::LazyLock};

use base64::Engine as _;
use envoy_types::pb::{
    envoy::{
        config::core::v3::{Address, HeaderMap, Metadata, address, socket_address},
        service::auth::v3::{
            AttributeContext, CheckRequest,
            attribute_context::{HttpRequest, Peer, Request},
        },
    },
    google::protobuf::{Struct, Timestamp},
};
use prost::Message;
use regorus::{Value, value::Object};

use super::{Caller, input::caller_value, input::struct_to_value};

/// A request the input document cannot be built from (a bad escape in the path, a body
/// that is not the JSON its content type says): the plugin answers these with a 400
/// denial, and so does stepgate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadEnvoyRequest(pub String);

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

macro_rules! keys {
    ($($field:ident = $name:literal),* $(,)?) => {
        struct Keys { $($field: Value),* }
        static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys { $($field: Value::from($name)),* });
    };
}

keys! {
    attributes = "attributes", source = "source", destination = "destination",
    request = "request", context_extensions = "contextExtensions",
    metadata_context = "metadataContext", route_metadata_context = "routeMetadataContext",
    tls_session = "tlsSession", sni = "sni", address = "address", service = "service",
    labels = "labels", principal = "principal", certificate = "certificate",
    socket_address = "socketAddress", protocol = "protocol", resolver_name = "resolverName",
    ipv4_compat = "ipv4Compat", network_namespace_filepath = "networkNamespaceFilepath",
    port_value = "portValue", named_port = "namedPort", pipe = "pipe", path = "path",
    mode = "mode", envoy_internal_address = "envoyInternalAddress",
    server_listener_name = "serverListenerName", endpoint_id = "endpointId", time = "time",
    seconds = "seconds", nanos = "nanos", http = "http", id = "id", method = "method",
    headers = "headers", header_map = "headerMap", key = "key", value = "value",
    raw_value = "rawValue", host = "host", scheme = "scheme", query = "query",
    fragment = "fragment", size = "size", body = "body", raw_body = "rawBody",
    filter_metadata = "filterMetadata", typed_filter_metadata = "typedFilterMetadata",
    type_url = "typeUrl", version = "version", parsed_path = "parsed_path",
    parsed_query = "parsed_query", parsed_body = "parsed_body",
    truncated_body = "truncated_body", source_principal = "source_principal",
    caller = "caller",
}

/// `input.version`, as the plugin sets it for ext_authz v3.
static VERSION: LazyLock<Value> = LazyLock::new(|| {
    let mut o = Object::new();
    o.insert(Value::from("ext_authz"), Value::from("v3"));
    o.insert(Value::from("encoding"), Value::from("protojson"));
    o.into_value()
});

/// Builds the input document of an ext_authz `Check`, with `caller` (the transport's) as
/// `input.caller`.
pub fn envoy_input(req: &CheckRequest, caller: &Caller) -> Result<Value, BadEnvoyRequest> {
    let k = &*KEYS;
    let mut input = Object::new();
    if let Some(attributes) = &req.attributes {
        input.insert(k.attributes.clone(), attributes_value(attributes));
    }
    let http = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let path = http.map_or("", |h| h.path.as_str());
    let (parsed_path, parsed_query) = parse_path(path)?;
    let (parsed_body, truncated) = match http {
        Some(http) => parse_body(http)?,
        None => (Value::Null, false),
    };
    input.insert(k.version.clone(), VERSION.clone());
    input.insert(k.parsed_path.clone(), parsed_path);
    input.insert(k.parsed_query.clone(), parsed_query);
    input.insert(k.parsed_body.clone(), parsed_body);
    input.insert(k.truncated_body.clone(), Value::from(truncated));
    if let Some(principal) = req
        .attributes
        .as_ref()
        .and_then(|a| a.source.as_ref())
        .map(|s| s.principal.as_str())
        .filter(|p| !p.is_empty())
    {
        input.insert(k.source_principal.clone(), Value::from(principal));
    }
    input.insert(k.caller.clone(), caller_value(caller));
    Ok(input.into_value())
}

/// An object under construction that, like protobuf JSON, leaves default values out.
struct Fields(Object);

impl Fields {
    fn new() -> Self {
        Self(Object::new())
    }
    fn str(&mut self, key: &Value, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.0.insert(key.clone(), Value::from(value));
        }
        self
    }
    fn num(&mut self, key: &Value, value: i64) -> &mut Self {
        if value != 0 {
            self.0.insert(key.clone(), Value::from(value));
        }
        self
    }
    fn bytes(&mut self, key: &Value, value: &[u8]) -> &mut Self {
        if !value.is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            self.0.insert(key.clone(), Value::from(encoded));
        }
        self
    }
    fn map(&mut self, key: &Value, value: &HashMap<String, String>) -> &mut Self {
        if !value.is_empty() {
            self.0.insert(key.clone(), string_map(value));
        }
        self
    }
    fn value(&mut self, key: &Value, value: Option<Value>) -> &mut Self {
        if let Some(value) = value {
            self.0.insert(key.clone(), value);
        }
        self
    }
    fn done(&mut self) -> Value {
        std::mem::take(&mut self.0).into_value()
    }
}

fn string_map(map: &HashMap<String, String>) -> Value {
    let mut o = Object::new();
    for (key, value) in map {
        o.insert(Value::from(key.as_str()), Value::from(value.as_str()));
    }
    o.into_value()
}

fn attributes_value(a: &AttributeContext) -> Value {
    let k = &*KEYS;
    Fields::new()
        .value(&k.source, a.source.as_ref().map(peer_value))
        .value(&k.destination, a.destination.as_ref().map(peer_value))
        .value(&k.request, a.request.as_ref().map(request_value))
        .map(&k.context_extensions, &a.context_extensions)
        .value(
            &k.metadata_context,
            a.metadata_context.as_ref().map(metadata_value),
        )
        .value(
            &k.route_metadata_context,
            a.route_metadata_context.as_ref().map(metadata_value),
        )
        .value(
            &k.tls_session,
            a.tls_session
                .as_ref()
                .map(|t| Fields::new().str(&k.sni, &t.sni).done()),
        )
        .done()
}

fn peer_value(p: &Peer) -> Value {
    let k = &*KEYS;
    Fields::new()
        .value(&k.address, p.address.as_ref().map(address_value))
        .str(&k.service, &p.service)
        .map(&k.labels, &p.labels)
        .str(&k.principal, &p.principal)
        .str(&k.certificate, &p.certificate)
        .done()
}

fn address_value(a: &Address) -> Value {
    let k = &*KEYS;
    let mut fields = Fields::new();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let mut socket = Fields::new();
            socket
                .num(&k.protocol, i64::from(s.protocol))
                .str(&k.address, &s.address)
                .str(&k.resolver_name, &s.resolver_name)
                .str(&k.network_namespace_filepath, &s.network_namespace_filepath);
            if s.ipv4_compat {
                socket.value(&k.ipv4_compat, Some(Value::from(true)));
            }
            match &s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(port)) => {
                    socket.value(&k.port_value, Some(Value::from(u64::from(*port))));
                }
                Some(socket_address::PortSpecifier::NamedPort(name)) => {
                    socket.value(&k.named_port, Some(Value::from(name.as_str())));
                }
                None => {}
            }
            fields.value(&k.socket_address, Some(socket.done()));
        }
        Some(address::Address::Pipe(p)) => {
            let pipe = Fields::new()
                .str(&k.path, &p.path)
                .num(&k.mode, i64::from(p.mode))
                .done();
            fields.value(&k.pipe, Some(pipe));
        }
        Some(address::Address::EnvoyInternalAddress(e)) => {
            let mut internal = Fields::new();
            if let Some(
                envoy_types::pb::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier::ServerListenerName(name),
            ) = &e.address_name_specifier
            {
                internal.value(&k.server_listener_name, Some(Value::from(name.as_str())));
            }
            internal.str(&k.endpoint_id, &e.endpoint_id);
            fields.value(&k.envoy_internal_address, Some(internal.done()));
        }
        None => {}
    }
    fields.done()
}

fn request_value(r: &Request) -> Value {
    let k = &*KEYS;
    Fields::new()
        .value(&k.time, r.time.as_ref().map(timestamp_value))
        .value(&k.http, r.http.as_ref().map(http_value))
        .done()
}

/// A timestamp as the plugin's proto-to-map conversion gives it: `{seconds, nanos}`.
fn timestamp_value(t: &Timestamp) -> Value {
    let k = &*KEYS;
    Fields::new()
        .num(&k.seconds, t.seconds)
        .num(&k.nanos, i64::from(t.nanos))
        .done()
}

fn http_value(h: &HttpRequest) -> Value {
    let k = &*KEYS;
    Fields::new()
        .str(&k.id, &h.id)
        .str(&k.method, &h.method)
        .map(&k.headers, &h.headers)
        .value(&k.header_map, h.header_map.as_ref().map(header_map_value))
        .str(&k.path, &h.path)
        .str(&k.host, &h.host)
        .str(&k.scheme, &h.scheme)
        .str(&k.query, &h.query)
        .str(&k.fragment, &h.fragment)
        .num(&k.size, h.size)
        .str(&k.protocol, &h.protocol)
        .str(&k.body, &h.body)
        .bytes(&k.raw_body, &h.raw_body)
        .done()
}

fn header_map_value(m: &HeaderMap) -> Value {
    let k = &*KEYS;
    let headers: Vec<Value> = m
        .headers
        .iter()
        .map(|h| {
            Fields::new()
                .str(&k.key, &h.key)
                .str(&k.value, &h.value)
                .bytes(&k.raw_value, &h.raw_value)
                .done()
        })
        .collect();
    let mut fields = Fields::new();
    if !headers.is_empty() {
        fields.value(&k.headers, Some(Value::from(headers)));
    }
    fields.done()
}

fn metadata_value(m: &Metadata) -> Value {
    let k = &*KEYS;
    let mut fields = Fields::new();
    if !m.filter_metadata.is_empty() {
        let mut o = Object::new();
        for (name, value) in &m.filter_metadata {
            o.insert(Value::from(name.as_str()), envoy_struct_value(value));
        }
        fields.value(&k.filter_metadata, Some(o.into_value()));
    }
    if !m.typed_filter_metadata.is_empty() {
        let mut o = Object::new();
        for (name, any) in &m.typed_filter_metadata {
            let value = Fields::new()
                .str(&k.type_url, &any.type_url)
                .bytes(&k.value, &any.value)
                .done();
            o.insert(Value::from(name.as_str()), value);
        }
        fields.value(&k.typed_filter_metadata, Some(o.into_value()));
    }
    fields.done()
}

/// envoy-types generates its own `google.protobuf.Struct`; it has the wire format of
/// `prost_types::Struct`, so it is re-read as one and converted by the one converter
/// every adapter shares. Metadata is rare and small, so the extra copy is cheap.
fn envoy_struct_value(s: &Struct) -> Value {
    match prost_types::Struct::decode(s.encode_to_vec().as_slice()) {
        Ok(s) => struct_to_value(&s),
        Err(_) => Value::new_object(),
    }
}

/// `parsed_path` and `parsed_query` from the request target, as the plugin computes
/// them: the path percent-decoded, without its leading slashes, split at `/`; the
/// query as `{name: [values]}`.
fn parse_path(target: &str) -> Result<(Value, Value), BadEnvoyRequest> {
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    check_escapes(raw_path, "path")?;
    let path = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    let segments: Vec<Value> = path
        .trim_start_matches('/')
        .split('/')
        .map(Value::from)
        .collect();
    let query = form_values(raw_query, "query")?;
    Ok((Value::from(segments), query))
}

/// Refuses a `%` not followed by two hex digits, as Go's URL decoding does.
fn check_escapes(text: &str, what: &str) -> Result<(), BadEnvoyRequest> {
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(BadEnvoyRequest(format!(
                "attributes.request.http.path: invalid URL escape in the {what}"
            )));
        }
    }
    Ok(())
}

/// `a=1&a=2&b` as `{"a": ["1", "2"], "b": [""]}` (URL query and form bodies alike).
fn form_values(text: &str, what: &str) -> Result<Value, BadEnvoyRequest> {
    if text.contains(';') {
        return Err(BadEnvoyRequest(format!(
            "attributes.request.http: invalid semicolon separator in the {what}"
        )));
    }
    check_escapes(text, what)?;
    let mut grouped: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        grouped
            .entry(key.into_owned())
            .or_default()
            .push(Value::from(value.as_ref()));
    }
    let mut o = Object::new();
    for (key, values) in grouped {
        o.insert(Value::from(key), Value::from(values));
    }
    Ok(o.into_value())
}

/// `parsed_body` and `truncated_body`: JSON and form bodies are parsed; a body shorter
/// than its `content-length` (or flagged partial by Envoy) is truncated and not parsed.
fn parse_body(http: &HttpRequest) -> Result<(Value, bool), BadEnvoyRequest> {
    if http
        .headers
        .get("x-envoy-auth-partial-body")
        .is_some_and(|v| v == "true")
    {
        return Ok((Value::Null, true));
    }
    let Some(content_type) = http.headers.get("content-type") else {
        return Ok((Value::Null, false));
    };
    let json = content_type.contains("application/json");
    let form = content_type.contains("application/x-www-form-urlencoded");
    if !json && !form {
        return Ok((Value::Null, false));
    }
    let body: &[u8] = if http.body.is_empty() {
        &http.raw_body
    } else {
        http.body.as_bytes()
    };
    if body.is_empty() {
        return Ok((Value::Null, false));
    }
    if let Some(length) = http.headers.get("content-length") {
        let length: i64 = length.trim().parse().map_err(|_| {
            BadEnvoyRequest(format!(
                "attributes.request.http.headers.content-length: {length:?} is not a number"
            ))
        })?;
        if length != -1 && length > body.len() as i64 {
            return Ok((Value::Null, true));
        }
    }
    let text = std::str::from_utf8(body).map_err(|_| {
        BadEnvoyRequest("attributes.request.http.body: not valid UTF-8".to_string())
    })?;
    let parsed = if json {
        Value::from_json_str(text)
            .map_err(|e| BadEnvoyRequest(format!("attributes.request.http.body: not JSON: {e}")))?
    } else {
        form_values(text, "body")?
    };
    Ok((parsed, false))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    #[test]
    fn path_and_query_are_parsed_as_the_plugin_does() {
        let (path, query) = parse_path("/api/v1/books%20new/?a=1&a=2&q=x+y&flag").unwrap();
        assert_eq!(path, json(r#"["api", "v1", "books new", ""]"#));
        assert_eq!(
            query,
            json(r#"{"a": ["1", "2"], "q": ["x y"], "flag": [""]}"#)
        );
        let (path, query) = parse_path("/").unwrap();
        assert_eq!(path, json(r#"[""]"#));
        assert_eq!(query, json("{}"));
        assert!(parse_path("/a%zz").is_err());
        assert!(parse_path("/a?x=1;y=2").is_err());
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
