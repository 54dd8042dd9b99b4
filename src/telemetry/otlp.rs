//! OTLP export shared by every signal stepgate sends (decision spans, decision-log
//! records): where to (an [`OtlpExporter`]), the resource that names the process, and
//! building an exporter so that its work never runs on a serving worker.

use opentelemetry_otlp::ExporterBuildError;
use opentelemetry_sdk::Resource;

/// How the OTLP exporter sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// Parses `OTEL_EXPORTER_OTLP_PROTOCOL` values (`http/json` is not supported).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// Where a signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExporter {
    /// The collector's base URL (`http://host:4317` for gRPC, `http://host:4318` for
    /// HTTP, where the signal's path, `/v1/traces` or `/v1/logs`, is appended); `None`
    /// lets the exporter read the standard `OTEL_EXPORTER_OTLP_[<SIGNAL>_]ENDPOINT`
    /// variables itself (and fall back to the collector on localhost).
    pub endpoint: Option<String>,
    /// gRPC or HTTP.
    pub protocol: OtlpProtocol,
}

/// The exporter could not be built (a bad endpoint).
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct ExporterError(pub(crate) String);

/// The resource every exported signal carries: `service.name` (and the SDK's own
/// attributes), so spans and decision records from one process group together.
pub(crate) fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .build()
}

/// An OTLP exporter, and for gRPC the runtime its channel lives on.
///
/// A tonic channel runs its connection as tasks of the runtime it was built in. Built
/// in the serving runtime, those tasks would encode and send each batch (512 records, a
/// few hundred microseconds of work in one poll) on a serving worker, stalling the
/// requests queued behind it there. On a runtime of its own the work has its own
/// thread, which the OS schedules around the workers. The thread that exports owns this
/// and drops it, runtime and all, when export stops.
#[derive(Debug)]
pub(crate) struct OwnExporter<E> {
    // Dropped first: the channel closes before its runtime stops.
    pub(crate) exporter: E,
    _runtime: Option<tokio::runtime::Runtime>,
}

/// How to build one signal's exporter for each protocol, given the endpoint to pass
/// (`None`: the exporter reads the standard variables).
pub(crate) struct Builders<G, H> {
    /// Over gRPC, to the collector's base URL.
    pub(crate) grpc: G,
    /// Over HTTP, to the signal's full URL.
    pub(crate) http: H,
    /// The signal's HTTP path (`/v1/traces`).
    pub(crate) http_path: &'static str,
}

/// The [`Builders`] of one of opentelemetry-otlp's exporter types (`SpanExporter`,
/// `LogExporter`), whose builders share no trait to be generic over.
macro_rules! builders_of {
    ($exporter:ty, $http_path:literal) => {
        $crate::telemetry::otlp::Builders {
            grpc: |endpoint: Option<&str>| {
                let builder = <$exporter>::builder().with_tonic();
                match endpoint {
                    Some(endpoint) => {
                        opentelemetry_otlp::WithExportConfig::with_endpoint(builder, endpoint)
                            .build()
                    }
                    None => builder.build(),
                }
            },
            http: |url: Option<String>| {
                let builder = <$exporter>::builder().with_http();
                match url {
                    Some(url) => {
                        opentelemetry_otlp::WithExportConfig::with_endpoint(builder, url).build()
                    }
                    None => builder.build(),
                }
            },
            http_path: $http_path,
        }
    };
}
pub(crate) use builders_of;

/// Builds the exporter `otlp` asks for with `builders`.
pub(crate) fn build_exporter<E, G, H>(
    otlp: &OtlpExporter,
    builders: Builders<G, H>,
) -> Result<OwnExporter<E>, ExporterError>
where
    G: FnOnce(Option<&str>) -> Result<E, ExporterBuildError>,
    H: FnOnce(Option<String>) -> Result<E, ExporterBuildError>,
{
    match otlp.protocol {
        OtlpProtocol::Grpc => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("stepgate-otlp")
                .enable_all()
                .build()
                .map_err(|e| ExporterError(format!("export runtime: {e}")))?;
            let built = {
                let _in_runtime = runtime.enter();
                (builders.grpc)(otlp.endpoint.as_deref())
            };
            match built {
                Ok(exporter) => Ok(OwnExporter {
                    exporter,
                    _runtime: Some(runtime),
                }),
                Err(e) => {
                    // The caller may be async, where dropping a runtime (which waits for
                    // its thread) is refused with a panic.
                    runtime.shutdown_background();
                    Err(ExporterError(e.to_string()))
                }
            }
        }
        OtlpProtocol::HttpProtobuf => {
            crate::install_rustls_provider();
            // As with OTEL_EXPORTER_OTLP_ENDPOINT, the signal's path is appended.
            let url = otlp.endpoint.as_ref().map(|endpoint| {
                format!("{}{}", endpoint.trim_end_matches('/'), builders.http_path)
            });
            Ok(OwnExporter {
                exporter: (builders.http)(url).map_err(|e| ExporterError(e.to_string()))?,
                _runtime: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_or_are_refused() {
        assert_eq!(OtlpProtocol::parse("grpc"), Some(OtlpProtocol::Grpc));
        assert_eq!(
            OtlpProtocol::parse("http/protobuf"),
            Some(OtlpProtocol::HttpProtobuf)
        );
        assert_eq!(OtlpProtocol::parse("http/json"), None);
    }
}
