//! A minimal OTLP/gRPC trace receiver for the load harness (`benches/load.sh
//! telemetry`): accepts `TraceService/Export` on the given address, counts spans, and
//! prints the count when its standard input closes. Not a collector: it keeps nothing.
//! It measures nothing on its own, so a plain `cargo bench` run (no `--listen`) returns
//! at once.
//!
//!     cargo bench --bench otlp_sink -- --listen 127.0.0.1:4317

use std::{
    io::Read,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!(
            "otlp_sink: the OTLP receiver of `benches/load.sh telemetry`; run with --listen ADDR"
        );
        return Ok(());
    };
    let addr = addr.parse()?;
    let counter = Counter::default();
    let spans = counter.0.clone();
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
    eprintln!("otlp_sink listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counter))
        .serve_with_shutdown(addr, async {
            let _ = stdin_closed.await;
        })
        .await?;
    println!("{}", spans.load(Ordering::Relaxed));
    Ok(())
}
