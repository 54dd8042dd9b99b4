//! Decision records exported as OpenTelemetry log records, to a real OTLP logs receiver
//! the test runs on loopback (gRPC and HTTP/protobuf): one log record per decision
//! with the file's masked line as its body, the decision span's attributes and trace;
//! a collector that is down fills the queue, then drops are counted, or with audit
//! required decisions deny, and the queued records go out once it is back.

use std::{net::SocketAddr, time::Duration};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::{AnyValue, any_value::Value},
    logs::v1::LogRecord,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use stepgate::{
    app::Overrides,
    audit::{Destination, EVENT_NAME, LOG_FULL_DENY, OtlpSinkOptions},
    config::ServeConfig,
    proto::v1::{CheckRequest, Decision, Resource},
    telemetry::{OtlpExporter, OtlpProtocol},
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;

use super::support::{Server, decide, eventually, policy_dir, request, serving_channel, strukt};

const POLICY: &str = r#"package stepgate

decision := {"allow": input.action != "write", "reasons": ["ok"], "obligations": {}}
"#;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A log record as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    record: LogRecord,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&Value> {
        self.record
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn text(&self, key: &str) -> String {
        match self.attribute(key) {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn body(&self) -> &str {
        match self.record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::StringValue(s)) => s,
            other => panic!("body: {other:?}"),
        }
    }
}

/// An OTLP logs receiver: every record it is sent goes to a channel.
#[derive(Clone)]
struct Receiver(mpsc::UnboundedSender<Received>);

impl Receiver {
    fn take(&self, request: ExportLogsServiceRequest) {
        let text = |value: &Option<AnyValue>| match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        };
        for resource in request.resource_logs {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for scope in resource.scope_logs {
                for record in scope.log_records {
                    let _ = self.0.send(Received {
                        service: service.clone(),
                        record,
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Serves OTLP/gRPC logs on `listener`; records arrive on the returned channel.
fn grpc_receiver(listener: TcpListener) -> (mpsc::UnboundedReceiver<Received>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(Receiver(tx)))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    (rx, server)
}

/// Serves OTLP/HTTP (protobuf) logs at `/v1/logs` on `listener`.
fn http_receiver(listener: TcpListener) -> (mpsc::UnboundedReceiver<Received>, JoinHandle<()>) {
    use prost::Message;
    let (tx, rx) = mpsc::unbounded_channel();
    let receiver = Receiver(tx);
    let app = axum::Router::new().route(
        "/v1/logs",
        axum::routing::post(move |body: axum::body::Bytes| {
            let receiver = receiver.clone();
            async move {
                receiver.take(ExportLogsServiceRequest::decode(body).unwrap());
                ExportLogsServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (rx, server)
}

/// The next `n` records, waiting at most `limit` for them.
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    n: usize,
    limit: Duration,
) -> Vec<Received> {
    let mut received = Vec::new();
    while received.len() < n {
        match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(record)) => received.push(record),
            _ => panic!("{} of {n} records arrived: {received:?}", received.len()),
        }
    }
    received
}

fn otlp_to(
    protocol: OtlpProtocol,
    addr: SocketAddr,
    queue: usize,
) -> impl FnOnce(&mut ServeConfig) {
    move |c| {
        c.audit.otlp = Some(OtlpSinkOptions {
            exporter: OtlpExporter {
                endpoint: Some(format!("http://{addr}")),
                protocol,
            },
            service_name: "stepgate-test".into(),
            queue,
        });
    }
}

/// An address nothing listens on (for now).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn check(server: &Server, req: CheckRequest, traceparent: bool) -> Decision {
    let mut req = tonic::Request::new(req);
    if traceparent {
        req.metadata_mut()
            .insert("traceparent", TRACEPARENT.parse().unwrap());
    }
    let mut client = server.client().await;
    client
        .check(req)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
}

/// The value of the series `name` (labels as rendered) in a scrape.
fn series(scrape: &str, name: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn each_decision_is_one_log_record_with_the_files_masked_line_attributes_and_trace() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut received, collector) = grpc_receiver(listener);
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("decisions.jsonl");
    let file = path.clone();
    let spans = InMemorySpanExporter::default();
    let overrides = Overrides {
        tracer_provider: Some(
            SdkTracerProvider::builder()
                .with_simple_exporter(spans.clone())
                .build(),
        ),
        ..Overrides::default()
    };
    let server = Server::start_overridden(
        &[("p.rego", POLICY)],
        |c| {
            c.audit.destination = Destination::File(file);
            otlp_to(OtlpProtocol::Grpc, addr, 64)(c);
        },
        overrides,
    )
    .await;
    let mut secret = request("read");
    secret.resource = Some(Resource {
        r#type: "secret".into(),
        id: "db".into(),
        attributes: Some(strukt(serde_json::json!({"api_key": "sk-live-123"}))),
    });
    let allowed = check(&server, secret, true).await;
    let denied = check(&server, request("write"), false).await;
    let records = receive(&mut received, 2, Duration::from_secs(20)).await;
    let decided_at = server.clock_now();
    // Read before the provider shuts down (which empties the exporter).
    let spans = spans.get_finished_spans().unwrap();
    server.stop().await;
    collector.abort();

    let lines = std::fs::read_to_string(&path).unwrap();
    for (decision, record) in [(&allowed, &records[0]), (&denied, &records[1])] {
        assert_eq!(record.text("stepgate.decision.id"), decision.decision_id);
        // The body is the file's line, byte for byte: masked the same way.
        let line = lines
            .lines()
            .find(|l| l.contains(&decision.decision_id))
            .unwrap();
        assert_eq!(record.body(), line);
        assert!(!record.body().contains("sk-live-123"));
        assert_eq!(
            record.attribute("stepgate.decision.allow"),
            Some(&Value::BoolValue(decision.allow))
        );
        assert_eq!(record.text("stepgate.step"), "use");
        assert_eq!(
            record.text("stepgate.policy.revision"),
            decision.policy_revision
        );
        assert_eq!(record.service, "stepgate-test");
        assert_eq!(record.record.event_name, EVENT_NAME);
        assert_eq!(
            record.record.time_unix_nano,
            decided_at.timestamp_nanos_opt().unwrap() as u64
        );
        // Correlated with the decision's own span.
        let span = spans
            .iter()
            .find(|s| {
                s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "stepgate.decision.id"
                        && kv.value.as_str() == decision.decision_id
                })
            })
            .unwrap();
        assert_eq!(
            record.record.trace_id,
            span.span_context.trace_id().to_bytes()
        );
        assert_eq!(
            record.record.span_id,
            span.span_context.span_id().to_bytes()
        );
    }
    let secret: serde_json::Value = serde_json::from_str(records[0].body()).unwrap();
    assert_eq!(
        secret["input"]["resource"]["attributes"]["api_key"],
        "[masked]"
    );
    assert_eq!(records[0].text("stepgate.action"), "read");
    assert_eq!(records[0].record.severity_text, "INFO");
    assert_eq!(records[1].record.severity_text, "WARN");
    assert_eq!(
        hex(&records[0].record.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Over OTLP/HTTP, with no file: what is queued when the server stops is exported
/// before `stop` returns.
#[tokio::test]
async fn records_go_over_otlp_http_alone_and_shutdown_exports_what_is_queued() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut received, collector) = http_receiver(listener);
    let server = Server::start_with(&[("p.rego", POLICY)], |c| {
        c.audit.destination = Destination::Off;
        otlp_to(OtlpProtocol::HttpProtobuf, addr, 64)(c);
    })
    .await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(decide(&mut client, "read").await.decision_id);
    }
    server.stop().await;
    let mut got: Vec<String> = receive(&mut received, 3, Duration::from_millis(1))
        .await
        .iter()
        .map(|r| r.text("stepgate.decision.id"))
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    collector.abort();
}

/// With audit required and the collector down, decisions are allowed while their
/// records fit in the queue and denied once it is full; when the collector comes
/// back, the queued records are delivered and decisions are allowed again.
#[tokio::test]
async fn a_required_log_denies_once_the_otlp_queue_is_full_not_before() {
    let addr = closed_port();
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("decisions.jsonl");
    let server = Server::start_with(&[("p.rego", POLICY)], |c| {
        c.audit.destination = Destination::File(file);
        c.audit.required = true;
        otlp_to(OtlpProtocol::Grpc, addr, 3)(c);
    })
    .await;
    let mut client = server.client().await;
    let mut queued = Vec::new();
    for _ in 0..3 {
        let decision = decide(&mut client, "read").await;
        assert!(decision.allow, "{decision:?}");
        queued.push(decision.decision_id);
    }
    let denied = decide(&mut client, "read").await;
    assert!(!denied.allow);
    assert_eq!(denied.reasons, [LOG_FULL_DENY]);
    assert!(
        eventually(Duration::from_secs(20), async || {
            let scrape = server.http_get("/metrics").await.body;
            series(&scrape, "stepgate_decision_log_otlp_export_failures_total")
                .is_some_and(|n| n > 0)
        })
        .await,
        "export failures are counted"
    );

    let listener = TcpListener::bind(addr).await.unwrap();
    let (mut received, collector) = grpc_receiver(listener);
    let mut delivered: Vec<String> = receive(&mut received, 3, Duration::from_secs(30))
        .await
        .iter()
        .map(|r| r.text("stepgate.decision.id"))
        .collect();
    delivered.sort();
    queued.sort();
    assert_eq!(delivered, queued, "the queued records, once each");
    assert!(
        eventually(Duration::from_secs(10), async || {
            decide(&mut client, "read").await.allow
        })
        .await
    );
    server.stop().await;
    collector.abort();
}

/// Not required, with the collector down: every decision is allowed and written to
/// the file; records with no room in the OTLP queue are dropped from it and counted,
/// and so are the queued ones shutdown could not export.
#[tokio::test]
async fn without_audit_required_a_full_otlp_queue_drops_and_counts() {
    let addr = closed_port();
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("decisions.jsonl");
    let file = path.clone();
    let server = Server::start_with(&[("p.rego", POLICY)], |c| {
        c.audit.destination = Destination::File(file);
        otlp_to(OtlpProtocol::Grpc, addr, 2)(c);
    })
    .await;
    let mut client = server.client().await;
    for _ in 0..5 {
        assert!(decide(&mut client, "read").await.allow);
    }
    let scrape = server.http_get("/metrics").await.body;
    assert_eq!(
        series(
            &scrape,
            "stepgate_decision_log_otlp_records_total{outcome=\"dropped\"}"
        ),
        Some(3),
        "{scrape}"
    );
    assert_eq!(
        series(
            &scrape,
            "stepgate_decision_log_records_total{outcome=\"dropped\"}"
        ),
        Some(0)
    );
    let log = server.app().pipeline().decision_log().unwrap().clone();
    server.stop().await;
    let (exported, dropped, _) = log.stats().otlp_counts();
    assert_eq!((exported, dropped), (0, 5));
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
}

/// The binary as deployed: `STEPGATE_DECISION_LOG_OTLP` with the collector named only
/// by the standard logs variables (no span export: no traces endpoint), audit required
/// with OTLP as the only sink; SIGTERM exports before exiting.
#[tokio::test]
async fn the_binary_exports_to_the_logs_collector_the_otel_variables_name() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut received, collector) = grpc_receiver(listener);
    let policies = policy_dir(&[("p.rego", POLICY)]);
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("sg.sock");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stepgate"))
        .args(["serve", "--grpc-addr", "", "--http-addr", "", "--ephemeral"])
        .arg("--policies")
        .arg(policies.path())
        .arg("--grpc-uds")
        .arg(&socket)
        .env("STEPGATE_DECISION_LOG_OTLP", "true")
        .env("STEPGATE_AUDIT_REQUIRED", "true")
        .env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", format!("http://{addr}"))
        .env("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc")
        .env("OTEL_SERVICE_NAME", "pdp")
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let channel = serving_channel(&socket, Duration::from_secs(30))
        .await
        .expect("never SERVING");
    let mut client =
        stepgate::proto::v1::decision_service_client::DecisionServiceClient::new(channel);
    let decision = decide(&mut client, "read").await;
    assert!(decision.allow, "{decision:?}");
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let record = &receive(&mut received, 1, Duration::from_secs(1)).await[0];
    assert_eq!(record.text("stepgate.decision.id"), decision.decision_id);
    assert_eq!(record.service, "pdp");
    collector.abort();
}
