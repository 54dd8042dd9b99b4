//! Where stepgate's OTLP signals go: spans (the tracer's exporter and sampler) and the
//! decision log's OTLP sink, each from the flags/`STEPGATE_*`, then the standard
//! `OTEL_*` variables, then the file, through one resolution per signal.

use super::{FileConfig, ServeArgs};
use crate::{
    audit::{DEFAULT_OTLP_QUEUE, OtlpSinkOptions},
    telemetry::{OtlpExporter, OtlpProtocol, SamplerChoice, TracingOptions},
};

/// Tracing from flags/`STEPGATE_*`, then the standard `OTEL_*` variables, then the file.
pub(super) fn tracing_options(
    args: &ServeArgs,
    file: &FileConfig,
    otel_env: &dyn Fn(&str) -> Option<String>,
) -> (TracingOptions, Vec<String>) {
    let mut problems = Vec::new();
    let defaults = TracingOptions::default();
    let disabled = args
        .otel_sdk_disabled
        .or_else(|| otel_env("OTEL_SDK_DISABLED").map(|v| v.eq_ignore_ascii_case("true")))
        .or(file.otel_sdk_disabled)
        .unwrap_or(false);
    let (endpoint, protocol) = otlp_target(args, file, otel_env, "TRACES", &mut problems);
    let service_name = args
        .otel_service_name
        .clone()
        .or_else(|| otel_env("OTEL_SERVICE_NAME"))
        .or_else(|| file.otel_service_name.clone())
        .unwrap_or(defaults.service_name);
    let (sampler_name, sampler_arg) = match &args.otel_traces_sampler {
        Some(name) => (Some(name.clone()), args.otel_traces_sampler_arg.clone()),
        None => match otel_env("OTEL_TRACES_SAMPLER") {
            Some(name) => (Some(name), otel_env("OTEL_TRACES_SAMPLER_ARG")),
            None => (
                file.otel_traces_sampler.clone(),
                file.otel_traces_sampler_arg.clone(),
            ),
        },
    };
    let sampler = match sampler_name {
        None => defaults.sampler,
        Some(name) => SamplerChoice::parse(&name, sampler_arg.as_deref()).unwrap_or_else(|e| {
            problems.push(format!("otel_traces_sampler: {e}"));
            defaults.sampler
        }),
    };
    let exporter = if disabled {
        None
    } else {
        endpoint.map(|endpoint| OtlpExporter { endpoint, protocol })
    };
    (
        TracingOptions {
            exporter,
            service_name,
            sampler,
        },
        problems,
    )
}

/// Where one OTLP signal (`TRACES`, `LOGS`) goes: the flags/`STEPGATE_*`, then the
/// signal's standard variable and the shared one, then the file. The endpoint is `None`
/// when none is set (or it is ''), `Some(None)` when a standard variable is set (the
/// exporter reads it itself, as it does the signal's path). A problem already reported
/// (the same flag read for another signal) is not repeated.
fn otlp_target(
    args: &ServeArgs,
    file: &FileConfig,
    otel_env: &dyn Fn(&str) -> Option<String>,
    signal: &str,
    problems: &mut Vec<String>,
) -> (Option<Option<String>>, OtlpProtocol) {
    let mut report = |problem: String| {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    };
    let env_endpoint = otel_env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| otel_env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let endpoint: Option<Option<String>> = match (&args.otlp_endpoint, env_endpoint) {
        (Some(url), _) => Some(Some(url.clone())),
        (None, Some(_)) => Some(None),
        (None, None) => file.otlp_endpoint.clone().map(Some),
    };
    let endpoint = endpoint.filter(|e| e.as_deref() != Some(""));
    if let Some(Some(url)) = &endpoint
        && !url.starts_with("http://")
    {
        report(format!(
            "otlp_endpoint: {url:?} must be an http:// URL (send to a collector beside stepgate; TLS to a remote one is the collector's job)"
        ));
    }
    let protocol_text = args
        .otlp_protocol
        .clone()
        .or_else(|| otel_env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")))
        .or_else(|| otel_env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .or_else(|| file.otlp_protocol.clone());
    let protocol = match protocol_text.as_deref() {
        None => OtlpProtocol::HttpProtobuf,
        Some(text) => OtlpProtocol::parse(text).unwrap_or_else(|| {
            report(format!(
                "otlp_protocol: {text:?} is not 'grpc' or 'http/protobuf'"
            ));
            OtlpProtocol::HttpProtobuf
        }),
    };
    (endpoint, protocol)
}

/// Most records the OTLP queue may be set to hold (records are a few KiB each).
const MAX_OTLP_QUEUE: usize = 1 << 20;

/// The decision log's OTLP sink, when `decision_log_otlp` is on: the logs signal's
/// collector (or the exporter's default, the collector on localhost), the spans'
/// `service.name`. `OTEL_SDK_DISABLED` does not turn it off: it is an audit destination,
/// set by its own option.
pub(super) fn decision_log_otlp(
    args: &ServeArgs,
    file: &FileConfig,
    otel_env: &dyn Fn(&str) -> Option<String>,
    tracing: &TracingOptions,
    problems: &mut Vec<String>,
) -> Option<OtlpSinkOptions> {
    let queue = args
        .decision_log_otlp_queue
        .or(file.decision_log_otlp_queue)
        .unwrap_or(DEFAULT_OTLP_QUEUE);
    if !(1..=MAX_OTLP_QUEUE).contains(&queue) {
        problems.push(format!(
            "decision_log_otlp_queue: must be between 1 and {MAX_OTLP_QUEUE}"
        ));
    }
    if !args
        .decision_log_otlp
        .or(file.decision_log_otlp)
        .unwrap_or(false)
    {
        return None;
    }
    let (endpoint, protocol) = otlp_target(args, file, otel_env, "LOGS", problems);
    Some(OtlpSinkOptions {
        exporter: OtlpExporter {
            endpoint: endpoint.flatten(),
            protocol,
        },
        service_name: tracing.service_name.clone(),
        queue,
    })
}
