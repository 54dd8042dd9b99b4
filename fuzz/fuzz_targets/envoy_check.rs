//! Envoy's ext_authz `CheckRequest` as protobuf bytes → the OPA-Envoy-plugin input
//! document → a decision by the example set's Envoy rule.
//!
//! Properties: no panic, no hang; the input document survives JSON; a request whose
//! input cannot be built is denied with a reason, never allowed.

#![no_main]

mod common;

use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address},
    service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Peer, Request},
    },
};
use libfuzzer_sys::fuzz_target;
use stepgate::{
    api::{ExtAuthzApi, envoy_input},
    telemetry::ParentContext,
};

/// Requests as Envoy sends them for the example set's Envoy rule: JSON, form and empty
/// bodies, query strings, headers, a SPIFFE source.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let bodies = [
        ("get", "GET", "/books?id=7&format=json", "", ""),
        (
            "json",
            "POST",
            "/books",
            "application/json",
            r#"{"title": "x", "tags": ["a", "b"], "n": 1.5}"#,
        ),
        (
            "form",
            "POST",
            "/login?next=%2Fhome",
            "application/x-www-form-urlencoded",
            "user=alice&x=%C3%A9&x=2",
        ),
        ("delete", "DELETE", "/books/7#frag", "", ""),
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, (name, method, path, content_type, body))| {
            let mut headers = std::collections::HashMap::new();
            headers.insert(":authority".to_string(), "books.example".to_string());
            headers.insert(
                "authorization".to_string(),
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.".to_string(),
            );
            if !content_type.is_empty() {
                headers.insert("content-type".to_string(), (*content_type).to_string());
            }
            let peer = |principal: &str, port: u32| Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.0.0.7".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                principal: principal.into(),
                ..Default::default()
            };
            let request = CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(peer("spiffe://cluster.local/ns/default/sa/web", 51000)),
                    destination: Some(peer("", 8080)),
                    request: Some(Request {
                        http: Some(HttpRequest {
                            id: format!("req-{i}"),
                            method: (*method).into(),
                            headers,
                            path: (*path).into(),
                            host: "books.example".into(),
                            scheme: "https".into(),
                            protocol: "HTTP/1.1".into(),
                            size: body.len() as i64,
                            body: (*body).into(),
                            raw_body: if i % 2 == 0 {
                                body.as_bytes().to_vec()
                            } else {
                                Vec::new()
                            },
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    context_extensions: [("route".to_string(), "books".to_string())].into(),
                    ..Default::default()
                }),
            };
            ((*name).to_string(), common::message_seed(i as u8, &request))
        })
        .collect()
}

fuzz_target!(init: common::write_seeds(seeds), |data: &[u8]| {
    let Some((caller, request)) = common::caller_and_message::<CheckRequest>(data) else {
        return;
    };
    let built = envoy_input(&request, &caller);
    if let Ok(input) = &built {
        common::assert_json_round_trip(input);
    }
    let api = ExtAuthzApi::new(common::pipeline().clone(), false);
    let (decision, _) = api.decide(&request, &caller, &ParentContext::none());
    if built.is_err() {
        assert!(!decision.allow(), "an unbuildable input was allowed");
    }
});
