//! The input document of an Envoy ext_authz `Check`, built as the OPA-Envoy plugin
//! builds it from an `envoy.service.auth.v3.CheckRequest`, so that its policies run
//! unchanged.
//!
//! The input is the request with protobuf JSON field names (`attributes.request.http.
//! headers`, `attributes.contextExtensions`, ...; fields left at their default are
//! absent), plus `parsed_path`, `parsed_query`, `parsed_body` (JSON and form bodies),
//! `truncated_body`, `version`, `source_principal` when the source has one, and
//! stepgate's own `caller` (the transport's identity, never the request's).

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

use crate::{
    api::request_convert::struct_to_value,
    decision::{Caller, caller_value},
};

/// A request the input document cannot be built from (a bad escape in the path, a body
/// that is not the JSON its content type says): the plugin answers these with a 400
/// denial, and so does stepgate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadEnvoyRequest(pub String);

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
}
