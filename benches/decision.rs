//! Micro-benchmarks of the decision path on the example policy set (`policies/`):
//! policy evaluation per step on the RVM and the interpreter (and, for scale, the
//! prototype-size set in `benches/policies/minimal`), input building, and a
//! whole `Check` through the service layer without the network (telemetry off, with
//! spans, with the decision log, with the decision log also exported over OTLP to a
//! receiver in this process), and one decision-log record (with and without OTLP).
//!
//! Run: `cargo bench --bench decision` (add `-- --quick` for a fast pass).

use std::{hint::black_box, sync::Arc};

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
    logs_service_server::{LogsService, LogsServiceServer},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use regorus::Value;
use stepgate::{
    api::DecisionApi,
    audit::{AuditOptions, DecisionLog, Entry, OtlpSinkOptions},
    clock::SystemClock,
    decision::{Caller, Decision, DecisionPipeline, Refusal, Transport, check_input},
    grants::MemoryGrantStore,
    policy::{Entrypoint, PolicyOptions, PolicySet, PolicySource, PolicyStore},
    proto::v1::{
        CheckRequest, Context, Resource, Subject, Workflow,
        decision_service_server::DecisionService,
    },
    telemetry::{OtlpExporter, OtlpProtocol, Telemetry, Tracer},
};

fn load_set(dir: &str) -> PolicySet {
    let options = PolicyOptions::default();
    // As `stepgate serve` does: with a heap limit set, regorus checks it as it evaluates.
    stepgate::policy::set_heap_limit(options.heap_limit);
    let source = PolicySource::read_dir(dir.as_ref(), &options.source_limits).expect(dir);
    PolicySet::load(source, &options, false).expect("bench policies compile")
}

fn input(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("benches/inputs/{name}.json")).expect("bench input");
    Value::from_json_str(&text).expect("valid JSON")
}

fn string_struct(pairs: &[(&str, &str)]) -> Option<prost_types::Struct> {
    let fields = pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
                },
            )
        })
        .collect();
    Some(prost_types::Struct { fields })
}

/// The wire form of `benches/inputs/issue.json` (without the grant, which a Check gets
/// from the grant store).
pub fn issue_request() -> CheckRequest {
    CheckRequest {
        step: "issue".into(),
        subject: Some(Subject {
            id: "spiffe://prod.example.com/ns/payments/sa/deployer".into(),
            kind: "service_account".into(),
            owner: "team-payments".into(),
            attributes: string_struct(&[("environment", "prod"), ("team", "payments")]),
        }),
        action: "issue_credential".into(),
        resource: Some(Resource {
            r#type: "secret".into(),
            id: "prod/payments/db/password".into(),
            attributes: string_struct(&[("environment", "prod"), ("sensitivity", "high")]),
        }),
        workflow: Some(Workflow {
            id: "CHG-1234".into(),
            requester: "alice".into(),
            justification: "deploy payments 4.2 (schema migration)".into(),
            emergency: false,
            attributes: string_struct(&[("ticket_system", "jira")]),
        }),
        agent: None,
        context: Some(Context {
            source_ip: "10.1.2.3".into(),
            attributes: None,
        }),
        grant_id: String::new(),
    }
}

fn evaluation(c: &mut Criterion) {
    let set = load_set("policies");
    let mut group = c.benchmark_group("eval");
    for name in ["issue", "agent_use"] {
        let doc = input(name);
        group.bench_function(format!("{name}/rvm"), |b| {
            b.iter(|| {
                black_box(
                    set.evaluate(Entrypoint::Decision, doc.clone())
                        .expect("evaluates"),
                )
            })
        });
        group.bench_function(format!("{name}/interpreter"), |b| {
            b.iter(|| {
                black_box(
                    set.evaluate_interpreted(Entrypoint::Decision, doc.clone())
                        .expect("evaluates"),
                )
            })
        });
    }
    // The same `issue` against a policy the size of the prototype's: what evaluation
    // costs when the policy checks a fraction of what the example set checks.
    let minimal = load_set("benches/policies/minimal");
    let doc = input("issue");
    group.bench_function("issue/rvm_minimal_policy", |b| {
        b.iter(|| {
            black_box(
                minimal
                    .evaluate(Entrypoint::Decision, doc.clone())
                    .expect("evaluates"),
            )
        })
    });
    group.finish();
}

fn input_building(c: &mut Criterion) {
    let req: stepgate::decision::CheckRequest = issue_request().into();
    let caller = Caller {
        id: "spiffe://prod.example.com/ns/vault/sa/issuer".into(),
        authenticated: true,
        via: Transport::Mtls,
    };
    let now = chrono::Utc::now();
    c.bench_function("input/check_input", |b| {
        b.iter(|| black_box(check_input(black_box(&req), &caller, now, None)))
    });
}

/// Drops every span (the export itself is not what these benchmarks measure).
#[derive(Debug)]
struct DiscardSpans;

impl SpanExporter for DiscardSpans {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// An OTLP/gRPC logs receiver that takes every export and keeps nothing.
struct DiscardLogs;

#[tonic::async_trait]
impl LogsService for DiscardLogs {
    async fn export(
        &self,
        _request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Decision-log options that also export over OTLP/gRPC to a [`DiscardLogs`] receiver
/// on loopback, served by a thread and runtime of its own.
fn exported_over_otlp(options: AuditOptions) -> AuditOptions {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("receiver runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("loopback");
            addr_tx
                .send(listener.local_addr().expect("address"))
                .expect("bench waits");
            let _ = tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(DiscardLogs))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
    });
    let addr = addr_rx.recv().expect("receiver address");
    AuditOptions {
        otlp: Some(OtlpSinkOptions {
            exporter: OtlpExporter {
                endpoint: Some(format!("http://{addr}")),
                protocol: OtlpProtocol::Grpc,
            },
            service_name: "bench".into(),
            queue: 1 << 16,
        }),
        ..options
    }
}

/// Says how many records the OTLP sink exported and dropped (with no room in its
/// queue a record is only written, the cheaper path; the counts show which was timed).
fn report_otlp(name: &str, log: &DecisionLog) {
    let (exported, dropped, failures) = log.stats().otlp_counts();
    eprintln!("{name}: OTLP exported {exported}, dropped {dropped}, failed exports {failures}");
}

/// `Check` through the gRPC adapter in process: telemetry off (metrics only, the
/// default), with every span sampled and batch-exported, and with the decision log on.
fn check_through_service(c: &mut Criterion) {
    stepgate::policy::set_heap_limit(PolicyOptions::default().heap_limit);
    let store = Arc::new(PolicyStore::new("policies", PolicyOptions::default()));
    store.reload().expect("example policies load");
    let grants = Arc::new(MemoryGrantStore::ephemeral(Arc::new(SystemClock)));
    let pipeline =
        || DecisionPipeline::new(store.clone(), grants.clone(), Arc::new(SystemClock), 256);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(DiscardSpans)
        .build();
    let log = DecisionLog::to_writer(Box::new(std::io::sink()), &AuditOptions::default())
        .expect("decision log");
    let exported = Arc::new(
        DecisionLog::to_writer(
            Box::new(std::io::sink()),
            &exported_over_otlp(AuditOptions::default()),
        )
        .expect("decision log"),
    );
    let variants = [
        ("check/service", pipeline()),
        (
            "check/service+spans",
            pipeline().with_telemetry(Arc::new(Telemetry::with_tracer(Tracer::from_provider(
                &provider,
            )))),
        ),
        (
            "check/service+decision_log",
            pipeline().with_decision_log(Some(Arc::new(log))),
        ),
        (
            "check/service+decision_log+otlp",
            pipeline().with_decision_log(Some(exported.clone())),
        ),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let req = issue_request();
    for (name, pipeline) in variants {
        let api = DecisionApi::new(Arc::new(pipeline));
        c.bench_function(name, |b| {
            b.iter(|| {
                let response = runtime
                    .block_on(api.check(tonic::Request::new(req.clone())))
                    .expect("check");
                black_box(response)
            })
        });
    }
    let _ = provider.shutdown();
    report_otlp("check/service+decision_log+otlp", &exported);
}

/// One decision-log record: rendering the masked record (`benches/inputs/issue.json`,
/// a grant in it, as the input) and handing it to the writer, which chains it and writes
/// it to a sink on its own thread. Pinned to one core (`taskset -c 0`) this is the
/// record's whole cost; unpinned, the deciding thread's share (bimodal: the two threads
/// sometimes contend).
fn decision_log_record(c: &mut Criterion) {
    let options = AuditOptions {
        buffer: 1 << 16,
        ..AuditOptions::default()
    };
    let log = DecisionLog::to_writer(Box::new(std::io::sink()), &options).expect("decision log");
    let input = input("issue");
    let decision = Decision::refused(
        Refusal::Input("because".into()),
        "sha256:bench".into(),
        chrono::Utc::now(),
    );
    let trace = (
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
        SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
    );
    let entry = Entry {
        trace: Some(trace),
        ..decision.entry(&input, None)
    };
    c.bench_function("audit/record", |b| {
        b.iter(|| {
            log.send(
                log.reserve().expect("the writer keeps up"),
                black_box(&entry),
            )
        })
    });
    let exported = DecisionLog::to_writer(Box::new(std::io::sink()), &exported_over_otlp(options))
        .expect("decision log");
    c.bench_function("audit/record+otlp", |b| {
        b.iter(|| {
            exported.send(
                exported.reserve().expect("the writer keeps up"),
                black_box(&entry),
            )
        })
    });
    report_otlp("audit/record+otlp", &exported);
    // The same record with its workflow in other scripts: every non-ASCII character is
    // looked up (is it a format character?), the cost the ASCII fast path avoids.
    let mut text = std::fs::read_to_string("benches/inputs/issue.json").expect("bench input");
    for (ascii, other) in [
        ("alice", "Zoë Ångström"),
        (
            "deploy payments 4.2 (schema migration)",
            "支払いサービス 4.2 をデプロイ（スキーマ移行）",
        ),
        ("team-payments", "команда-платежи"),
    ] {
        text = text.replace(ascii, other);
    }
    let input = Value::from_json_str(&text).expect("valid JSON");
    let entry = Entry {
        input: &input,
        ..entry
    };
    c.bench_function("audit/record_non_ascii", |b| {
        b.iter(|| {
            log.send(
                log.reserve().expect("the writer keeps up"),
                black_box(&entry),
            )
        })
    });
}

criterion_group!(
    benches,
    evaluation,
    input_building,
    check_through_service,
    decision_log_record
);
criterion_main!(benches);
