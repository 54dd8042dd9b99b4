//! Prometheus metrics (`GET /metrics`). Every series is registered up front with a
//! bounded label set (step, result, state, outcome; never subject or grant ids), and the
//! decision path only touches pre-resolved atomic counters and a lock-free histogram.
//! Values that other parts already count (grant states, sweeps, reloads, decision-log
//! records) are copied in when scraped.

use std::{sync::Mutex, time::Duration};

use crate::policy::BundleOutcome;

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The steps that get their own label value; any other (custom) step counts as `other`,
/// so callers cannot grow the label set.
pub const STEP_LABELS: [&str; 9] = [
    "request",
    "approve",
    "issue",
    "use",
    "renew",
    "revoke",
    "close",
    "break_glass",
    "other",
];

/// Decision latency buckets, in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];

/// Grant states, as the `state` label of `stepgate_grants`.
const GRANT_STATES: [&str; 5] = ["PENDING", "ACTIVE", "REJECTED", "EXPIRED", "REVOKED"];

/// Numbers owned elsewhere, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Grants by state, in [`GRANT_STATES`] order.
    pub grants_by_state: [u64; 5],
    /// Ended grants whose revocation is not confirmed yet.
    pub awaiting_confirmation: u64,
    /// Of those, the ones past their confirmation deadline.
    pub revocations_overdue: u64,
    /// Grants expired by the sweeper so far.
    pub expirations: u64,
    /// Sweeps so far.
    pub sweeps: u64,
    /// Duration of the last sweep.
    pub last_sweep: Duration,
    /// Policy loads accepted and rejected.
    pub reloads: (u64, u64),
    /// The serving policy revision (`none` before the first load).
    pub revision: String,
    /// Decision-log records written, dropped (buffer full), failed (write errors).
    pub log_records: (u64, u64, u64),
    /// Decision-log records exported over OTLP, dropped from that sink, and failed
    /// export attempts.
    pub log_otlp: (u64, u64, u64),
    /// Evaluations stopped by a limit: time, instructions, memory.
    pub eval_limits: [u64; 3],
    /// Evaluations that waited for their turn at the evaluation gate.
    pub eval_waits: u64,
    /// Bundle-server polls by outcome, in [`BundleOutcome::ALL`] order.
    pub bundle_polls: [u64; BundleOutcome::ALL.len()],
    /// The serving set's bundle (manifest) revision, when it came from a bundle.
    pub bundle_revision: Option<String>,
    /// When a bundle server's bundle was last activated, in seconds since the epoch.
    pub bundle_last_activation: Option<f64>,
}

/// The revision labels of the last scrape: their info series are replaced when they
/// change.
#[derive(Debug, Default)]
struct Scraped {
    revision: String,
    bundle_revision: Option<String>,
}

/// The registry and its instruments.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `[step][allow as usize]`.
    decisions: Vec<[IntCounter; 2]>,
    latency: Histogram,
    grants: Vec<IntGauge>,
    awaiting_confirmation: IntGauge,
    revocations_overdue: IntGauge,
    expirations: IntCounter,
    sweeps: IntCounter,
    sweep_seconds: Counter,
    last_sweep: Gauge,
    reloads: [IntCounter; 2],
    revision: IntGaugeVec,
    log_records: [IntCounter; 3],
    /// `[exported, dropped]`.
    log_otlp_records: [IntCounter; 2],
    log_otlp_export_failures: IntCounter,
    /// `[time, instructions, memory]`.
    eval_limits: [IntCounter; 3],
    eval_waits: IntCounter,
    listeners: [ListenerMetrics; LISTENERS.len()],
    request_budget_refusals: IntCounter,
    call_limit_refusals: IntCounter,
    /// `[outcome]`, in [`BundleOutcome::ALL`] order.
    bundle_polls: [IntCounter; BundleOutcome::ALL.len()],
    bundle_revision: IntGaugeVec,
    bundle_last_activation: Gauge,
    /// Serialises scrapes (copying totals into counters is read-then-add).
    scrape: Mutex<Scraped>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The index of `step` in [`STEP_LABELS`].
pub fn step_index(step: &str) -> usize {
    STEP_LABELS[..STEP_LABELS.len() - 1]
        .iter()
        .position(|s| *s == step)
        .unwrap_or(STEP_LABELS.len() - 1)
}

impl Metrics {
    /// A registry with every series registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let register = |c: Box<dyn prometheus::core::Collector>| {
            // Names are fixed and distinct: registration cannot fail.
            let _ = registry.register(c);
        };
        let decisions_vec = IntCounterVec::new(
            Opts::new("stepgate_decisions_total", "Decisions by step and result."),
            &["step", "result"],
        )
        .expect("valid metric");
        let decisions = STEP_LABELS
            .iter()
            .map(|step| {
                [
                    decisions_vec.with_label_values(&[step, "deny"]),
                    decisions_vec.with_label_values(&[step, "allow"]),
                ]
            })
            .collect();
        register(Box::new(decisions_vec));
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "stepgate_decision_duration_seconds",
                "Time to decide, from validated request to decision.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        register(Box::new(latency.clone()));
        let grants_vec = IntGaugeVec::new(
            Opts::new("stepgate_grants", "Grants held, by recorded state."),
            &["state"],
        )
        .expect("valid metric");
        let grants = GRANT_STATES
            .iter()
            .map(|s| grants_vec.with_label_values(&[s]))
            .collect();
        register(Box::new(grants_vec));
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(g.clone()));
            g
        };
        let awaiting_confirmation = gauge(
            "stepgate_revocations_awaiting_confirmation",
            "Ended grants whose revocation downstream is not confirmed yet.",
        );
        let revocations_overdue = gauge(
            "stepgate_revocations_overdue",
            "Unconfirmed revocations past their confirmation deadline.",
        );
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let expirations = counter(
            "stepgate_grant_expirations_total",
            "Grants moved to EXPIRED by the sweeper.",
        );
        let sweeps = counter("stepgate_grant_sweeps_total", "Grant sweeps run.");
        let sweep_seconds = Counter::new(
            "stepgate_grant_sweep_duration_seconds_total",
            "Time spent sweeping grants.",
        )
        .expect("valid metric");
        register(Box::new(sweep_seconds.clone()));
        let last_sweep = Gauge::new(
            "stepgate_grant_sweep_last_duration_seconds",
            "Duration of the last grant sweep.",
        )
        .expect("valid metric");
        register(Box::new(last_sweep.clone()));
        let reloads_vec = IntCounterVec::new(
            Opts::new(
                "stepgate_policy_reloads_total",
                "Policy set loads, by result (a rejected set leaves the previous serving).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let reloads = [
            reloads_vec.with_label_values(&["accepted"]),
            reloads_vec.with_label_values(&["rejected"]),
        ];
        register(Box::new(reloads_vec));
        let revision = IntGaugeVec::new(
            Opts::new(
                "stepgate_policy_revision_info",
                "The serving policy revision (value 1).",
            ),
            &["revision"],
        )
        .expect("valid metric");
        register(Box::new(revision.clone()));
        let log_vec = IntCounterVec::new(
            Opts::new(
                "stepgate_decision_log_records_total",
                "Decision-log records by outcome: written, dropped (buffer full), failed (write error).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let log_records = [
            log_vec.with_label_values(&["written"]),
            log_vec.with_label_values(&["dropped"]),
            log_vec.with_label_values(&["failed"]),
        ];
        register(Box::new(log_vec));
        let log_otlp_vec = IntCounterVec::new(
            Opts::new(
                "stepgate_decision_log_otlp_records_total",
                "Decision-log records sent over OTLP by outcome: exported, dropped (no room in the OTLP queue, or still queued when shutdown's export ended).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let log_otlp_records =
            ["exported", "dropped"].map(|o| log_otlp_vec.with_label_values(&[o]));
        register(Box::new(log_otlp_vec));
        let log_otlp_export_failures = counter(
            "stepgate_decision_log_otlp_export_failures_total",
            "Failed OTLP export requests of decision-log records (their records stay queued and are sent again).",
        );
        let limits_vec = IntCounterVec::new(
            Opts::new(
                "stepgate_eval_limit_exceeded_total",
                "Evaluations (decisions, warm-ups, policy tests) stopped by a limit, by limit: time, instructions, memory.",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let eval_limits =
            ["time", "instructions", "memory"].map(|l| limits_vec.with_label_values(&[l]));
        register(Box::new(limits_vec));
        let eval_waits = counter(
            "stepgate_eval_admission_waits_total",
            "Evaluations that waited for their turn because workers-1 others were running.",
        );
        let listeners = listener_metrics(&register);
        let request_budget_refusals = counter(
            "stepgate_request_buffer_refusals_total",
            "Requests refused (RESOURCE_EXHAUSTED) because the server held --max-buffered-request-bytes of request bodies.",
        );
        let call_limit_refusals = counter(
            "stepgate_call_limit_refusals_total",
            "gRPC calls answered RESOURCE_EXHAUSTED at once because --max-concurrent-calls were in flight.",
        );
        let polls_vec = IntCounterVec::new(
            Opts::new(
                "stepgate_bundle_polls_total",
                "Bundle-server polls by outcome: activated, unchanged, not_modified, download_failed, too_large, malformed, unsigned, bad_signature, bad_digest, rejected (every refusal leaves the previous revision serving).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let bundle_polls = BundleOutcome::ALL.map(|o| polls_vec.with_label_values(&[o.label()]));
        register(Box::new(polls_vec));
        let bundle_revision = IntGaugeVec::new(
            Opts::new(
                "stepgate_bundle_revision_info",
                "The manifest revision of the serving OPA bundle (value 1); absent when policies are not from a bundle.",
            ),
            &["revision"],
        )
        .expect("valid metric");
        register(Box::new(bundle_revision.clone()));
        let bundle_last_activation = Gauge::new(
            "stepgate_bundle_last_activation_timestamp_seconds",
            "When a bundle server's bundle was last activated (0: never).",
        )
        .expect("valid metric");
        register(Box::new(bundle_last_activation.clone()));
        Self {
            registry,
            decisions,
            latency,
            grants,
            awaiting_confirmation,
            revocations_overdue,
            expirations,
            sweeps,
            sweep_seconds,
            last_sweep,
            reloads,
            revision,
            log_records,
            log_otlp_records,
            log_otlp_export_failures,
            eval_limits,
            eval_waits,
            listeners,
            request_budget_refusals,
            call_limit_refusals,
            bundle_polls,
            bundle_revision,
            bundle_last_activation,
            scrape: Mutex::new(Scraped::default()),
        }
    }

    /// The counter of requests refused over the request buffer budget.
    pub fn request_budget_refusals(&self) -> IntCounter {
        self.request_budget_refusals.clone()
    }

    /// The counter of gRPC calls refused over the call limit.
    pub fn call_limit_refusals(&self) -> IntCounter {
        self.call_limit_refusals.clone()
    }

    /// The connection counters of `listener` (one of [`LISTENERS`]; another name gets
    /// the last one's).
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let index = LISTENERS
            .iter()
            .position(|l| *l == listener)
            .unwrap_or(LISTENERS.len() - 1);
        self.listeners[index].clone()
    }

    /// Counts one decision at `step` (an index from [`step_index`]) and its latency.
    /// Lock-free: two atomic adds and a histogram observation.
    pub fn record_decision(&self, step: usize, allow: bool, elapsed: Duration) {
        if let Some(by_result) = self.decisions.get(step) {
            by_result[usize::from(allow)].inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Copies `snapshot` in and renders every series in the Prometheus text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut scraped = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (gauge, count) in self.grants.iter().zip(snapshot.grants_by_state) {
            gauge.set(saturating_i64(count));
        }
        self.awaiting_confirmation
            .set(saturating_i64(snapshot.awaiting_confirmation));
        self.revocations_overdue
            .set(saturating_i64(snapshot.revocations_overdue));
        raise_to(&self.expirations, snapshot.expirations);
        let previous_sweeps = self.sweeps.get();
        raise_to(&self.sweeps, snapshot.sweeps);
        if self.sweeps.get() > previous_sweeps {
            // Sweeps between scrapes are accounted at the last one's duration.
            let secs = snapshot.last_sweep.as_secs_f64();
            self.sweep_seconds
                .inc_by(secs * (self.sweeps.get() - previous_sweeps) as f64);
        }
        self.last_sweep.set(snapshot.last_sweep.as_secs_f64());
        raise_to(&self.reloads[0], snapshot.reloads.0);
        raise_to(&self.reloads[1], snapshot.reloads.1);
        if scraped.revision != snapshot.revision {
            // One series at a time: the old revision's goes away.
            self.revision.reset();
            self.revision
                .with_label_values(&[snapshot.revision.as_str()])
                .set(1);
            scraped.revision = snapshot.revision.clone();
        }
        if scraped.bundle_revision != snapshot.bundle_revision {
            self.bundle_revision.reset();
            if let Some(revision) = &snapshot.bundle_revision {
                self.bundle_revision
                    .with_label_values(&[revision.as_str()])
                    .set(1);
            }
            scraped.bundle_revision = snapshot.bundle_revision.clone();
        }
        for (counter, total) in self.bundle_polls.iter().zip(snapshot.bundle_polls) {
            raise_to(counter, total);
        }
        self.bundle_last_activation
            .set(snapshot.bundle_last_activation.unwrap_or(0.0));
        raise_to(&self.log_records[0], snapshot.log_records.0);
        raise_to(&self.log_records[1], snapshot.log_records.1);
        raise_to(&self.log_records[2], snapshot.log_records.2);
        raise_to(&self.log_otlp_records[0], snapshot.log_otlp.0);
        raise_to(&self.log_otlp_records[1], snapshot.log_otlp.1);
        raise_to(&self.log_otlp_export_failures, snapshot.log_otlp.2);
        for (counter, total) in self.eval_limits.iter().zip(snapshot.eval_limits) {
            raise_to(counter, total);
        }
        raise_to(&self.eval_waits, snapshot.eval_waits);
        let mut out = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The listeners, as the `listener` label of the connection metrics.
pub const LISTENERS: [&str; 3] = ["grpc_tcp", "grpc_uds", "http"];

/// One listener's connection counters (cheap clones of registered series).
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// The `listener` label.
    pub listener: &'static str,
    /// Connections open now.
    pub open: IntGauge,
    /// Connections refused at the cap.
    pub refused: IntCounter,
    /// Connections closed for not starting to speak in time.
    pub handshake_timeouts: IntCounter,
    /// Connections closed for being idle.
    pub idle_closed: IntCounter,
    /// Connections closed for a malformed HTTP/2 stream (seen by the Unix socket's
    /// `:authority` rewriting).
    pub malformed: IntCounter,
}

impl ListenerMetrics {
    /// Unregistered counters (tests, and parts used without a registry).
    pub fn detached(listener: &'static str) -> Self {
        let counter = || IntCounter::new("detached", "detached").expect("valid metric");
        Self {
            listener,
            open: IntGauge::new("detached", "detached").expect("valid metric"),
            refused: counter(),
            handshake_timeouts: counter(),
            idle_closed: counter(),
            malformed: counter(),
        }
    }
}

fn listener_metrics(
    register: &dyn Fn(Box<dyn prometheus::core::Collector>),
) -> [ListenerMetrics; LISTENERS.len()] {
    let open = IntGaugeVec::new(
        Opts::new(
            "stepgate_connections_open",
            "Connections open, by listener.",
        ),
        &["listener"],
    )
    .expect("valid metric");
    let refused = IntCounterVec::new(
        Opts::new(
            "stepgate_connections_refused_total",
            "Connections closed as soon as accepted because the listener was at --max-connections.",
        ),
        &["listener"],
    )
    .expect("valid metric");
    let closed = IntCounterVec::new(
        Opts::new(
            "stepgate_connections_closed_total",
            "Connections closed by the server, by listener and reason: handshake_timeout (no preface or request within --handshake-timeout), idle (no call for --idle-timeout), malformed (an HTTP/2 stream the Unix socket could not parse).",
        ),
        &["listener", "reason"],
    )
    .expect("valid metric");
    let metrics = LISTENERS.map(|listener| ListenerMetrics {
        listener,
        open: open.with_label_values(&[listener]),
        refused: refused.with_label_values(&[listener]),
        handshake_timeouts: closed.with_label_values(&[listener, "handshake_timeout"]),
        idle_closed: closed.with_label_values(&[listener, "idle"]),
        malformed: closed.with_label_values(&[listener, "malformed"]),
    });
    register(Box::new(open));
    register(Box::new(refused));
    register(Box::new(closed));
    metrics
}

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn raise_to(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_steps_share_the_other_label() {
        assert_eq!(STEP_LABELS[step_index("issue")], "issue");
        assert_eq!(STEP_LABELS[step_index("my_custom_step")], "other");
        let metrics = Metrics::new();
        metrics.record_decision(step_index("issue"), true, Duration::from_micros(20));
        metrics.record_decision(step_index("x1"), false, Duration::from_micros(20));
        metrics.record_decision(step_index("x2"), false, Duration::from_micros(20));
        let text = metrics.render(&Snapshot {
            revision: "sha256:ab".into(),
            ..Snapshot::default()
        });
        assert!(text.contains("stepgate_decisions_total{result=\"allow\",step=\"issue\"} 1"));
        assert!(text.contains("stepgate_decisions_total{result=\"deny\",step=\"other\"} 2"));
        assert!(text.contains("stepgate_decision_duration_seconds_count 3"));
        assert!(text.contains("stepgate_policy_revision_info{revision=\"sha256:ab\"} 1"));
        let text = metrics.render(&Snapshot {
            revision: "sha256:cd".into(),
            ..Snapshot::default()
        });
        assert!(!text.contains("sha256:ab"), "{text}");
    }

    #[test]
    fn bundle_polls_and_the_bundle_revision_are_exported() {
        let metrics = Metrics::new();
        let text = metrics.render(&Snapshot::default());
        assert!(text.contains("stepgate_bundle_polls_total{outcome=\"bad_digest\"} 0"));
        assert!(!text.contains("stepgate_bundle_revision_info{"), "{text}");
        let mut polls = [0; BundleOutcome::ALL.len()];
        polls[0] = 2;
        polls[2] = 5;
        let text = metrics.render(&Snapshot {
            bundle_polls: polls,
            bundle_revision: Some("v42".into()),
            bundle_last_activation: Some(1_800_000_000.0),
            ..Snapshot::default()
        });
        assert!(text.contains("stepgate_bundle_polls_total{outcome=\"activated\"} 2"));
        assert!(text.contains("stepgate_bundle_polls_total{outcome=\"not_modified\"} 5"));
        assert!(text.contains("stepgate_bundle_revision_info{revision=\"v42\"} 1"));
        assert!(text.contains("stepgate_bundle_last_activation_timestamp_seconds 1800000000"));
        let text = metrics.render(&Snapshot {
            bundle_polls: polls,
            bundle_revision: Some("v43".into()),
            ..Snapshot::default()
        });
        assert!(!text.contains("revision=\"v42\""), "{text}");
    }
}
