//! OpenTelemetry traces: the tracer provider built from [`TracingOptions`] (OTLP over gRPC
//! or HTTP through a batch processor, or nothing at all), the `stepgate.decision` span,
//! and spans for grant lifecycle changes.
//!
//! With no exporter configured there is no provider and no tracer: recording a decision
//! is one branch on `None`. With one, attributes are built only for spans the sampler
//! keeps, and export runs on the batch processor's own thread, which drops spans rather
//! than block when its queue is full. Over gRPC, the exporter's connection (HTTP/2, and
//! the encoding of each batch as it is sent) runs on a runtime of its own, never on a
//! serving worker.

use std::time::{Duration, SystemTime};

use opentelemetry::{
    Context, KeyValue,
    trace::{Span, SpanContext, SpanKind, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData},
};
use tokio::{sync::broadcast, task::JoinHandle};

use super::otlp::{
    ExporterError, OtlpExporter, OwnExporter, build_exporter, builders_of, resource,
};
use crate::grants::{GrantEvent, GrantEventKind};

/// Name of the span every decision gets.
pub const DECISION_SPAN: &str = "stepgate.decision";

/// Attribute keys of the decision span (the spec's `stepgate.*` names).
pub mod attr {
    /// The decision id (UUIDv7).
    pub const DECISION_ID: &str = "stepgate.decision.id";
    /// Whether the decision allowed.
    pub const DECISION_ALLOW: &str = "stepgate.decision.allow";
    /// The workflow step.
    pub const STEP: &str = "stepgate.step";
    /// The action.
    pub const ACTION: &str = "stepgate.action";
    /// The subject's kind (never its id: ids belong in the decision log).
    pub const SUBJECT_KIND: &str = "stepgate.subject.kind";
    /// The resource type.
    pub const RESOURCE_TYPE: &str = "stepgate.resource.type";
    /// The grant the decision is about.
    pub const GRANT_ID: &str = "stepgate.grant.id";
    /// The policy revision that decided.
    pub const POLICY_REVISION: &str = "stepgate.policy.revision";
    /// The manifest revision of the bundle that revision came from.
    pub const BUNDLE_REVISION: &str = "stepgate.bundle.revision";
    /// Policy evaluation time in microseconds.
    pub const EVAL_DURATION_US: &str = "stepgate.eval.duration_us";
    /// A grant's state after a lifecycle change.
    pub const GRANT_STATE: &str = "stepgate.grant.state";
}

/// Which spans are kept (the `OTEL_TRACES_SAMPLER` values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with the ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerChoice {
    /// Parses a sampler name and its argument (the ratio, 0.0..=1.0, default 1.0).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || match arg {
            None => Ok(1.0),
            Some(text) => match text.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
            },
        };
        Ok(match name {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Self::ParentBasedAlwaysOn,
            "parentbased_always_off" => Self::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentBasedTraceIdRatio(ratio()?),
            other => {
                return Err(format!(
                    "{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                ));
            }
        })
    }

    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Tracing configuration (see `config.rs` for where each value comes from).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingOptions {
    /// The exporter; `None` = no tracing at all (no provider, no cost).
    pub exporter: Option<OtlpExporter>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// The sampler.
    pub sampler: SamplerChoice,
}

impl Default for TracingOptions {
    fn default() -> Self {
        Self {
            exporter: None,
            service_name: "stepgate".into(),
            sampler: SamplerChoice::ParentBasedAlwaysOn,
        }
    }
}

/// Builds the tracer provider `options` ask for: `None` when no exporter is configured.
pub fn tracer_provider(
    options: &TracingOptions,
) -> Result<Option<SdkTracerProvider>, ExporterError> {
    let Some(otlp) = &options.exporter else {
        return Ok(None);
    };
    let exporter = build_exporter(otlp, builders_of!(SpanExporter, "/v1/traces"))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(options.sampler.sampler())
            .with_resource(resource(&options.service_name))
            .build(),
    ))
}

impl opentelemetry_sdk::trace::SpanExporter for OwnExporter<SpanExporter> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.exporter.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

/// Records stepgate's spans; a disabled tracer records nothing and costs a branch.
#[derive(Debug, Clone, Default)]
pub struct Tracer(Option<SdkTracer>);

impl Tracer {
    /// A tracer that records nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// A tracer of `provider`.
    pub fn from_provider(provider: &SdkTracerProvider) -> Self {
        Self(Some(provider.tracer("stepgate")))
    }

    /// Whether spans are recorded at all.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Records one finished decision span from `start` to `end` under `parent` (a new
    /// trace when `None`); `attributes` runs only when the span is sampled. Returns the
    /// span's context (for the decision log), `None` when tracing is off.
    pub(crate) fn decision_span(
        &self,
        parent: Option<&Context>,
        start: SystemTime,
        end: SystemTime,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<SpanContext> {
        let tracer = self.0.as_ref()?;
        let root;
        let parent = match parent {
            Some(cx) => cx,
            None => {
                root = Context::new();
                &root
            }
        };
        let mut span = tracer
            .span_builder(DECISION_SPAN)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .start_with_context(tracer, parent);
        if span.is_recording() {
            span.set_attributes(attributes());
        }
        let context = span.span_context().clone();
        span.end_with_timestamp(end);
        Some(context)
    }

    /// A span for a grant lifecycle change (`stepgate.grant.expired`, `.revoked`, ...).
    fn grant_change(&self, event: &GrantEvent) {
        let Some(tracer) = &self.0 else { return };
        let mut span = tracer
            .span_builder(format!("stepgate.grant.{}", event.kind.as_str()))
            .with_kind(SpanKind::Internal)
            .start_with_context(tracer, &Context::new());
        if span.is_recording() {
            let grant = &event.grant;
            // Decoded only for a recorded span: grants keep their terms encoded.
            let terms = grant.terms();
            span.set_attributes([
                KeyValue::new(attr::GRANT_ID, grant.id().to_string()),
                KeyValue::new(attr::GRANT_STATE, grant.state.as_str()),
                KeyValue::new(attr::ACTION, terms.action),
                KeyValue::new(attr::SUBJECT_KIND, terms.subject.kind),
            ]);
            span.add_event(event.kind.as_str(), Vec::new());
        }
        span.end();
    }
}

/// Lifecycle changes worth a span: the ends of a grant and their confirmation.
fn is_lifecycle_change(kind: GrantEventKind) -> bool {
    matches!(
        kind,
        GrantEventKind::Expired
            | GrantEventKind::Revoked
            | GrantEventKind::Rejected
            | GrantEventKind::Activated
            | GrantEventKind::RevocationConfirmed
            | GrantEventKind::RevocationOverdue
    )
}

/// Follows grant events and records a span for each lifecycle change (expired by the
/// sweeper, revoked, confirmed, ...). `None` when tracing is off.
pub fn spawn_lifecycle_spans(
    tracer: Tracer,
    mut events: broadcast::Receiver<GrantEvent>,
) -> Option<JoinHandle<()>> {
    if !tracer.is_enabled() {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) if is_lifecycle_change(event.kind) => tracer.grant_change(&event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "grant lifecycle spans fell behind; some were skipped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::OtlpProtocol;

    #[test]
    fn sampler_names_and_ratios_parse_or_are_refused() {
        assert_eq!(
            SamplerChoice::parse("parentbased_traceidratio", Some("0.25")),
            Ok(SamplerChoice::ParentBasedTraceIdRatio(0.25))
        );
        assert_eq!(
            SamplerChoice::parse("traceidratio", None),
            Ok(SamplerChoice::TraceIdRatio(1.0))
        );
        assert!(SamplerChoice::parse("traceidratio", Some("2")).is_err());
        assert!(SamplerChoice::parse("sometimes", None).is_err());
    }

    /// A bad endpoint is an error, also where the provider is built: in the server's
    /// runtime (the export runtime made for it must not be dropped there).
    #[tokio::test]
    async fn a_bad_grpc_endpoint_is_an_error_not_a_panic() {
        let options = TracingOptions {
            exporter: Some(OtlpExporter {
                endpoint: Some("not a url".into()),
                protocol: OtlpProtocol::Grpc,
            }),
            ..TracingOptions::default()
        };
        assert!(tracer_provider(&options).is_err());
    }

    #[test]
    fn no_exporter_means_no_provider() {
        assert!(
            tracer_provider(&TracingOptions::default())
                .unwrap()
                .is_none()
        );
        assert!(!Tracer::disabled().is_enabled());
        assert!(
            Tracer::disabled()
                .decision_span(None, SystemTime::now(), SystemTime::now(), || {
                    unreachable!("attributes are never built when tracing is off")
                })
                .is_none()
        );
    }
}
