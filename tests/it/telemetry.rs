//! Spans and metrics over real gRPC and HTTP: one `stepgate.decision` span per decision
//! with its attributes and the caller's parent, grant lifecycle spans, real OTLP export
//! to a receiver the test runs, exact `/metrics` counters, bounded label sets.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    Value as OtelValue,
    trace::{Span as _, SpanId, TraceId, Tracer as _, TracerProvider as _},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use stepgate::{
    app::Overrides,
    proto::v1::{
        BatchCheckRequest, CheckRequest, ConfirmRevocationRequest, RequestGrantRequest, Resource,
        RevalidateRequest, RevokeRequest, Subject, decision_service_client::DecisionServiceClient,
        grant_service_client::GrantServiceClient, revoke_request::Target,
    },
    telemetry::{OtlpExporter, OtlpProtocol, ParentContext, TracingOptions, tracer_provider},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::support::{ECHO_POLICY, Server, eventually, http_request, request};

const ALLOW_ALL: &str = r#"package stepgate

decision := {"allow": input.action != "write", "reasons": ["ok"], "obligations": {"max_ttl_seconds": 60}}
"#;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn attr(span: &SpanData, key: &str) -> Option<OtelValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> String {
    attr(span, key).map(|v| v.to_string()).unwrap_or_default()
}

/// Asserts `span` is in [`TRACEPARENT`]'s trace, with its span as the parent.
fn assert_child_of_traceparent(span: &SpanData) {
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        span.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
}

async fn traced_server(files: &[(&str, &str)]) -> (Server, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let overrides = Overrides {
        tracer_provider: Some(provider),
        ..Overrides::default()
    };
    let server = Server::start_overridden(files, |_| {}, overrides).await;
    (server, exporter)
}

fn decision_spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "stepgate.decision")
        .collect()
}

fn check(action: &str, metadata: &[(&'static str, &'static str)]) -> tonic::Request<CheckRequest> {
    let mut req = request(action);
    req.resource = Some(Resource {
        r#type: "secret".into(),
        id: "db".into(),
        attributes: None,
    });
    let mut req = tonic::Request::new(req);
    for (key, value) in metadata {
        req.metadata_mut().insert(*key, value.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn a_check_gets_one_span_with_its_attributes_under_the_callers_span() {
    let (server, exporter) = traced_server(&[("p.rego", ALLOW_ALL)]).await;
    let mut client = server.client().await;
    let decision = client
        .check(check("read", &[("traceparent", TRACEPARENT)]))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();

    let spans = decision_spans(&exporter);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_child_of_traceparent(span);
    assert_eq!(text(span, "stepgate.decision.id"), decision.decision_id);
    assert_eq!(
        attr(span, "stepgate.decision.allow"),
        Some(OtelValue::Bool(true))
    );
    assert_eq!(text(span, "stepgate.step"), "use");
    assert_eq!(text(span, "stepgate.action"), "read");
    assert_eq!(text(span, "stepgate.subject.kind"), "service_account");
    assert_eq!(text(span, "stepgate.resource.type"), "secret");
    assert_eq!(
        text(span, "stepgate.policy.revision"),
        decision.policy_revision
    );
    assert!(matches!(
        attr(span, "stepgate.eval.duration_us"),
        Some(OtelValue::I64(_))
    ));
    assert!(span.start_time <= span.end_time);

    // No trace header: a new trace, no parent.
    exporter.reset();
    client.check(check("write", &[])).await.unwrap();
    let spans = decision_spans(&exporter);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
    assert_eq!(
        attr(&spans[0], "stepgate.decision.allow"),
        Some(OtelValue::Bool(false))
    );
    server.stop().await;
}

#[tokio::test]
async fn every_batch_item_gets_its_span_under_a_b3_parent() {
    let (server, exporter) = traced_server(&[("p.rego", ALLOW_ALL)]).await;
    let mut client = server.client().await;
    for (headers, span_id) in [
        (
            vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
            "e457b5a2e4d86bd1",
        ),
        (
            vec![
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "05e3ac9a4f6e3b90"),
                ("x-b3-sampled", "1"),
            ],
            "05e3ac9a4f6e3b90",
        ),
    ] {
        exporter.reset();
        let checks: Vec<CheckRequest> = ["read", "write", "read", "list", "read", "read"]
            .iter()
            .map(|a| request(a))
            .collect();
        let mut req = tonic::Request::new(BatchCheckRequest { checks });
        for (key, value) in headers {
            req.metadata_mut().insert(key, value.parse().unwrap());
        }
        let decisions = client
            .batch_check(req)
            .await
            .unwrap()
            .into_inner()
            .decisions;
        let spans = decision_spans(&exporter);
        assert_eq!(spans.len(), decisions.len());
        for span in &spans {
            assert_eq!(span.parent_span_id, SpanId::from_hex(span_id).unwrap());
            assert_eq!(
                span.span_context.trace_id(),
                TraceId::from_hex("80f198ee56343ba864fe8b2a57d3eff7").unwrap()
            );
        }
        let mut ids: Vec<String> = spans
            .iter()
            .map(|s| text(s, "stepgate.decision.id"))
            .collect();
        let mut expected: Vec<String> = decisions.iter().map(|d| d.decision_id.clone()).collect();
        ids.sort();
        expected.sort();
        assert_eq!(
            ids, expected,
            "one span per item, each with its own decision"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn grant_steps_and_lifecycle_changes_are_spans() {
    let (server, exporter) = traced_server(&[("p.rego", ALLOW_ALL)]).await;
    let mut grants = GrantServiceClient::new(server.tcp_channel().await);
    let request_grant = || {
        let mut req = tonic::Request::new(RequestGrantRequest {
            subject: Some(Subject {
                id: "svc-a".into(),
                kind: "workload".into(),
                ..Default::default()
            }),
            action: "issue_credential".into(),
            resource: Some(Resource {
                r#type: "certificate".into(),
                id: "web".into(),
                attributes: None,
            }),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("traceparent", TRACEPARENT.parse().unwrap());
        req
    };
    let granted = grants
        .request_grant(request_grant())
        .await
        .unwrap()
        .into_inner();
    let id = granted.grant.unwrap().id;
    grants
        .revalidate(RevalidateRequest {
            grant_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    grants
        .revoke(RevokeRequest {
            target: Some(Target::GrantId(id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    grants
        .confirm_revocation(ConfirmRevocationRequest {
            grant_id: id.clone(),
            evidence: "key deleted".into(),
        })
        .await
        .unwrap();
    let steps: Vec<(String, String)> = decision_spans(&exporter)
        .iter()
        .map(|s| (text(s, "stepgate.step"), text(s, "stepgate.grant.id")))
        .collect();
    assert_eq!(
        steps,
        [
            ("request".to_string(), id.clone()),
            ("use".to_string(), id.clone()),
            ("revoke".to_string(), id.clone()),
            ("confirm_revocation".to_string(), id.clone()),
        ]
    );
    let request_span = &decision_spans(&exporter)[0];
    assert_child_of_traceparent(request_span);
    assert_eq!(text(request_span, "stepgate.subject.kind"), "workload");

    // The sweeper's expiry is a span too.
    let second = grants
        .request_grant(request_grant())
        .await
        .unwrap()
        .into_inner();
    let second = second.grant.unwrap().id;
    server.clock.advance(chrono::TimeDelta::seconds(61));
    server.app().grants().sweep();

    let lifecycle = |name: &'static str, id: String| {
        let exporter = exporter.clone();
        async move || {
            exporter
                .get_finished_spans()
                .unwrap()
                .iter()
                .any(|s| s.name == name && text(s, "stepgate.grant.id") == id)
        }
    };
    for (name, grant) in [
        ("stepgate.grant.revoked", &id),
        ("stepgate.grant.revocation_confirmed", &id),
        ("stepgate.grant.expired", &second),
    ] {
        assert!(
            eventually(Duration::from_secs(10), lifecycle(name, grant.clone())).await,
            "{name} span for {grant}"
        );
    }
    server.stop().await;
}

/// An OTLP trace receiver: keeps every export request.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// (service.name, span name, decision id) of every span received.
    fn spans(&self) -> Vec<(String, String, String)> {
        let value = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| {
            use opentelemetry_proto::tonic::common::v1::any_value::Value;
            match v.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                _ => String::new(),
            }
        };
        let mut out = Vec::new();
        for request in self.0.lock().unwrap().iter() {
            for resource in &request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| value(&kv.value))
                    .unwrap_or_default();
                for scope in &resource.scope_spans {
                    for span in &scope.spans {
                        let id = span
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "stepgate.decision.id")
                            .map(|kv| value(&kv.value))
                            .unwrap_or_default();
                        out.push((service.clone(), span.name.clone(), id));
                    }
                }
            }
        }
        out
    }
}

async fn export_decisions(protocol: OtlpProtocol, endpoint: String, receiver: &Receiver) {
    let server = Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
        c.tracing = TracingOptions {
            exporter: Some(OtlpExporter {
                endpoint: Some(endpoint),
                protocol,
            }),
            service_name: "stepgate-test".into(),
            ..TracingOptions::default()
        };
    })
    .await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = client.check(request("read")).await.unwrap().into_inner();
        ids.push(d.decision.unwrap().decision_id);
    }
    // Shutdown flushes the batch processor.
    server.stop().await;
    let spans = receiver.spans();
    for id in ids {
        assert!(
            spans.contains(&(
                "stepgate-test".to_string(),
                "stepgate.decision".to_string(),
                id.clone()
            )),
            "{id} not in {spans:?}"
        );
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let collector = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    export_decisions(OtlpProtocol::Grpc, format!("http://{addr}"), &receiver).await;
    collector.abort();
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http() {
    use prost::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let kept = receiver.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                kept.0.lock().unwrap().push(request);
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let collector = tokio::spawn(async move { axum::serve(listener, app).await });
    export_decisions(
        OtlpProtocol::HttpProtobuf,
        format!("http://{addr}"),
        &receiver,
    )
    .await;
    collector.abort();
}

/// The OTLP/gRPC exporter's connection runs on a runtime of its own, not on the serving
/// runtime it was built in: export goes on while that runtime's workers are busy. Here
/// the runtime that builds the provider is not driven at all while a flush waits; an
/// exporter whose channel lived there could not send until the flush timed out.
#[test]
fn grpc_export_goes_on_while_the_serving_runtime_is_busy() {
    let receiver = Receiver::default();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let kept = receiver.clone();
    std::thread::spawn(move || {
        let collector = tokio::runtime::Runtime::new().unwrap();
        collector.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(kept))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    let options = TracingOptions {
        exporter: Some(OtlpExporter {
            endpoint: Some(format!("http://{addr}")),
            protocol: OtlpProtocol::Grpc,
        }),
        service_name: "stepgate-test".into(),
        ..TracingOptions::default()
    };
    let serving = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let provider = serving
        .block_on(async { tracer_provider(&options) })
        .unwrap()
        .expect("an exporter is configured");

    provider.tracer("test").start("stepgate.decision").end();
    let flushed = provider.force_flush();
    assert!(flushed.is_ok(), "{flushed:?}");
    assert!(
        receiver
            .spans()
            .iter()
            .any(|(service, name, _)| service == "stepgate-test" && name == "stepgate.decision"),
        "{:?}",
        receiver.spans()
    );
    provider.shutdown().unwrap();
}

/// A collector that takes every export request and answers none until released.
#[derive(Clone)]
struct StalledCollector(tokio::sync::watch::Receiver<bool>);

#[tonic::async_trait]
impl TraceService for StalledCollector {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut released = self.0.clone();
        let _ = released.wait_for(|released| *released).await;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Decisions never wait on the collector: with one that takes exports and never
/// answers, and with none listening at all, three times as many spans as the batch
/// processor queues (2,048) are decided and answered. Were export on the decision path,
/// or a full queue to block, they would wait on a collector that never answers. The
/// client runs on a thread and runtime of its own, so a server whose workers block
/// fails this test at the deadline instead of hanging it.
#[test]
fn decisions_never_wait_for_a_stalled_or_absent_collector() {
    let serving = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (release, released) = tokio::sync::watch::channel(false);
    let (stalled, collector) = serving.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stalled = format!("http://{}", listener.local_addr().unwrap());
        let collector = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(StalledCollector(released)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (stalled, collector)
    });
    let absent = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", closed.local_addr().unwrap())
    };
    for endpoint in [stalled, absent] {
        let server = serving.block_on(Server::start_with(&[("p.rego", ECHO_POLICY)], |c| {
            c.max_batch = 256;
            c.tracing = TracingOptions {
                exporter: Some(OtlpExporter {
                    endpoint: Some(endpoint.clone()),
                    protocol: OtlpProtocol::Grpc,
                }),
                ..TracingOptions::default()
            };
        }));
        let addr = server.addr;
        let (answered_tx, answered_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let client = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            client.block_on(async move {
                let mut client = DecisionServiceClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                let batch = BatchCheckRequest {
                    checks: vec![request("read"); 256],
                };
                let mut answered = 0;
                for _ in 0..24 {
                    let response = client.batch_check(batch.clone()).await.unwrap();
                    answered += response.into_inner().decisions.len();
                }
                let _ = answered_tx.send(answered);
            });
        });
        let Ok(answered) = answered_rx.recv_timeout(Duration::from_secs(60)) else {
            // The server's workers wait on the collector: leave them rather than join them.
            std::mem::forget(server);
            serving.shutdown_background();
            panic!("decisions waited on the collector at {endpoint}");
        };
        assert_eq!(answered, 24 * 256);
        // Let the stalled exports finish so the shutdown flush does not wait them out.
        release.send_replace(true);
        serving.block_on(server.stop());
    }
    collector.abort();
}

/// The value of the series `name` (with its labels, as rendered) in a scrape.
fn series(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly() {
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("decisions.jsonl");
    let log_path = log.clone();
    let server = Server::start_with(&[("p.rego", ALLOW_ALL)], move |c| {
        c.audit.destination = stepgate::audit::Destination::File(log_path);
    })
    .await;
    let mut client = server.client().await;
    for action in ["read", "read", "read", "write", "write"] {
        client.check(request(action)).await.unwrap();
    }
    let mut custom = request("read");
    custom.step = "my_custom_step".into();
    client.check(custom).await.unwrap();
    let mut issue = request("write");
    issue.step = "issue".into();
    client.check(issue).await.unwrap();
    // A rejected call is not a decision.
    assert!(client.check(request("")).await.is_err());

    let mut grants = GrantServiceClient::new(server.tcp_channel().await);
    grants
        .request_grant(RequestGrantRequest {
            subject: Some(Subject {
                id: "svc-b".into(),
                ..Default::default()
            }),
            action: "issue_credential".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut scrape = String::new();
    let written = eventually(Duration::from_secs(10), async || {
        let reply = server.http_get("/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        scrape = reply.body;
        series(
            &scrape,
            "stepgate_decision_log_records_total{outcome=\"written\"}",
        ) == Some(8.0)
    })
    .await;
    assert!(written, "{scrape}");
    let expect = [
        (
            "stepgate_decisions_total{result=\"allow\",step=\"use\"}",
            3.0,
        ),
        (
            "stepgate_decisions_total{result=\"deny\",step=\"use\"}",
            2.0,
        ),
        (
            "stepgate_decisions_total{result=\"allow\",step=\"other\"}",
            1.0,
        ),
        (
            "stepgate_decisions_total{result=\"deny\",step=\"issue\"}",
            1.0,
        ),
        (
            "stepgate_decisions_total{result=\"allow\",step=\"request\"}",
            1.0,
        ),
        (
            "stepgate_decisions_total{result=\"deny\",step=\"request\"}",
            0.0,
        ),
        ("stepgate_decision_duration_seconds_count", 8.0),
        ("stepgate_grants{state=\"ACTIVE\"}", 1.0),
        ("stepgate_grants{state=\"PENDING\"}", 0.0),
        ("stepgate_revocations_awaiting_confirmation", 0.0),
        ("stepgate_policy_reloads_total{result=\"accepted\"}", 1.0),
        ("stepgate_policy_reloads_total{result=\"rejected\"}", 0.0),
        (
            "stepgate_decision_log_records_total{outcome=\"dropped\"}",
            0.0,
        ),
    ];
    for (name, value) in expect {
        assert_eq!(series(&scrape, name), Some(value), "{name} in\n{scrape}");
    }
    let revision = server
        .app()
        .policies()
        .current()
        .as_ref()
        .unwrap()
        .revision()
        .clone();
    assert_eq!(
        series(
            &scrape,
            &format!("stepgate_policy_revision_info{{revision=\"{revision}\"}}")
        ),
        Some(1.0)
    );
    for name in [
        "stepgate_grant_expirations_total",
        "stepgate_grant_sweeps_total",
        "stepgate_grant_sweep_last_duration_seconds",
        "stepgate_revocations_overdue",
    ] {
        assert!(series(&scrape, name).is_some(), "{name} in\n{scrape}");
    }
    server.stop().await;
}

#[tokio::test]
async fn metric_labels_stay_bounded_under_100k_distinct_subjects() {
    let server = Server::start(&[(
        "p.rego",
        "package stepgate\n\ndecision := {\"allow\": true}\n",
    )])
    .await;
    let pipeline = server.app().pipeline().clone();
    let caller = stepgate::decision::Caller::anonymous();
    let parent = ParentContext::none();
    let before = pipeline.metrics_text();
    for i in 0..100_000u32 {
        let mut req = request("read");
        req.subject.as_mut().unwrap().id = format!("subject-{i}");
        req.step = format!("step_{}", i % 1000);
        req.grant_id = format!("grant-{i}");
        let req = stepgate::decision::CheckRequest::from(req);
        assert!(pipeline.check(&req, &caller, &parent).unwrap().allow());
    }
    let after = pipeline.metrics_text();
    let count_series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(count_series(&before), count_series(&after), "{after}");
    assert!(count_series(&after) < 100, "{after}");
    assert!(!after.contains("subject-"));
    assert!(!after.contains("grant-"));
    assert_eq!(
        series(
            &after,
            "stepgate_decisions_total{result=\"allow\",step=\"other\"}"
        ),
        Some(100_000.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn http_decisions_get_spans_under_the_callers_trace_header() {
    let (server, exporter) = traced_server(&[("p.rego", ALLOW_ALL)]).await;
    let addr = server.http.expect("the HTTP listener is on");
    let traced = [
        ("content-type", "application/json"),
        ("traceparent", TRACEPARENT),
    ];
    let authzen = r#"{"subject": {"type": "service_account", "id": "svc-a"},
        "action": {"name": "read"}, "resource": {"type": "secret", "id": "db"}}"#;
    let reply = http_request(addr, "POST", "/access/v1/evaluation", &traced, authzen).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let opa = r#"{"input": {"step": "use", "subject": {"id": "svc-a"}, "action": "read"}}"#;
    let reply = http_request(addr, "POST", "/v1/data/stepgate/decision", &traced, opa).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let spans = decision_spans(&exporter);
    assert_eq!(spans.len(), 2, "{spans:?}");
    spans.iter().for_each(assert_child_of_traceparent);
    server.stop().await;
}
