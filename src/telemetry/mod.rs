//! Telemetry: OpenTelemetry spans (one `stepgate.decision` span per decision, grant
//! lifecycle spans), OTLP export (spans here, decision-log records for `audit`) and
//! Prometheus metrics.
//!
//! The decision pipeline is the only caller on the decision path: adapters hand it a
//! [`ParentContext`] extracted from their headers and never record spans or metrics
//! themselves. With nothing configured there is no exporter, no tracer, and the
//! per-decision cost is a few atomic adds.

mod metrics;
pub(crate) mod otlp;
mod propagation;
mod spans;

use std::sync::{Arc, OnceLock};

pub use metrics::{
    CONTENT_TYPE, LISTENERS, ListenerMetrics, Metrics, STEP_LABELS, Snapshot, step_index,
};
pub use otlp::{ExporterError, OtlpExporter, OtlpProtocol};
pub use propagation::ParentContext;
pub use spans::{
    DECISION_SPAN, SamplerChoice, Tracer, TracingOptions, attr, spawn_lifecycle_spans,
    tracer_provider,
};

use crate::{grants::SweeperStats, policy::BundleStats};

/// The spans and metrics decisions are recorded in.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Tracer,
    metrics: Metrics,
    sweeper: OnceLock<Arc<SweeperStats>>,
    bundles: OnceLock<Arc<BundleStats>>,
}

impl Telemetry {
    /// Metrics only, no spans.
    pub fn new() -> Self {
        Self::default()
    }

    /// Metrics and spans recorded by `tracer`.
    pub fn with_tracer(tracer: Tracer) -> Self {
        Self {
            tracer,
            ..Self::default()
        }
    }

    /// The span recorder.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Lets scrapes read the sweeper's counters (set once, when the sweeper starts).
    pub fn watch_sweeper(&self, stats: Arc<SweeperStats>) {
        let _ = self.sweeper.set(stats);
    }

    /// The sweeper's counters, once it runs.
    pub fn sweeper(&self) -> Option<&Arc<SweeperStats>> {
        self.sweeper.get()
    }

    /// Lets scrapes and `/health` read the bundle poller's counts and status (set once,
    /// when it starts).
    pub fn watch_bundles(&self, stats: Arc<BundleStats>) {
        let _ = self.bundles.set(stats);
    }

    /// The bundle poller's counts and status, when policies come from a bundle server.
    pub fn bundles(&self) -> Option<&Arc<BundleStats>> {
        self.bundles.get()
    }
}
