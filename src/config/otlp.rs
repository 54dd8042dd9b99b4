//! Where stepgate's OTLP signals go: spans (the tracer's exporter and sampler) and the
//! decision log's OTLP sink, each from the flags/`STEPGATE_*`, then the standard
//! `OTEL_*` variables, then the file, through one resolution per signal.

use super::options::options;
use crate::{
    audit::{DEFAULT_OTLP_QUEUE, OtlpSinkOptions},
    telemetry::{OtlpExporter, OtlpProtocol, SamplerChoice, TracingOptions},
};

options! {
    /// Where spans (and decision records sent over OTLP) go, and how spans are sampled.
    /// The standard `OTEL_*` variables rank below these flags and their `STEPGATE_*`
    /// variables, above the file.
    #[command(next_help_heading = "Telemetry")]
    pub struct TelemetryArgs {
        /// OTLP collector URL (spans, and decision records with --decision-log-otlp); ''
        /// turns span export off [default: OTEL_EXPORTER_OTLP_ENDPOINT, else no span export].
        #[arg(long, env = "STEPGATE_OTLP_ENDPOINT", value_name = "URL")]
        pub otlp_endpoint: String,
        /// OTLP protocol: grpc or http/protobuf [default: OTEL_EXPORTER_OTLP_PROTOCOL, else
        /// http/protobuf].
        #[arg(long, env = "STEPGATE_OTLP_PROTOCOL", value_name = "PROTOCOL")]
        pub otlp_protocol: String,
        /// service.name of exported spans [default: OTEL_SERVICE_NAME, else stepgate].
        #[arg(long, env = "STEPGATE_OTEL_SERVICE_NAME", value_name = "NAME")]
        pub otel_service_name: String,
        /// Span sampler, as OTEL_TRACES_SAMPLER [default: parentbased_always_on].
        #[arg(long, env = "STEPGATE_OTEL_TRACES_SAMPLER", value_name = "SAMPLER")]
        pub otel_traces_sampler: String,
        /// The sampler's ratio, as OTEL_TRACES_SAMPLER_ARG [default: 1.0].
        #[arg(long, env = "STEPGATE_OTEL_TRACES_SAMPLER_ARG", value_name = "RATIO")]
        pub otel_traces_sampler_arg: String,
        /// Turn spans off whatever else is set, as OTEL_SDK_DISABLED [default: false].
        #[arg(long, env = "STEPGATE_OTEL_SDK_DISABLED", value_name = "BOOL")]
        pub otel_sdk_disabled: bool,
    }
}

/// Tracing from flags/`STEPGATE_*` (`args`), then the standard `OTEL_*` variables, then
/// the file.
pub(super) fn tracing_options(
    args: &TelemetryArgs,
    file: &TelemetryArgs,
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
    args: &TelemetryArgs,
    file: &TelemetryArgs,
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

/// The decision log's OTLP sink, when `enabled` (`decision_log_otlp`): the logs
/// signal's collector (or the exporter's default, the collector on localhost), the
/// spans' `service.name`, `queue` (`decision_log_otlp_queue`) records.
/// `OTEL_SDK_DISABLED` does not turn it off: it is an audit destination, set by its own
/// option.
pub(super) fn decision_log_otlp(
    enabled: bool,
    queue: Option<usize>,
    (args, file): (&TelemetryArgs, &TelemetryArgs),
    otel_env: &dyn Fn(&str) -> Option<String>,
    tracing: &TracingOptions,
    problems: &mut Vec<String>,
) -> Option<OtlpSinkOptions> {
    let queue = queue.unwrap_or(DEFAULT_OTLP_QUEUE);
    if !(1..=MAX_OTLP_QUEUE).contains(&queue) {
        problems.push(format!(
            "decision_log_otlp_queue: must be between 1 and {MAX_OTLP_QUEUE}"
        ));
    }
    if !enabled {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{merge, merge_env};
    use super::*;

    #[test]
    fn tracing_comes_from_flags_then_otel_variables_then_the_file() {
        let config = merge(&[], "");
        assert_eq!(
            config.tracing.exporter, None,
            "nothing configured: no exporter"
        );

        let env = |name: &str| -> Option<String> {
            match name {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4317".into()),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".into()),
                "OTEL_SERVICE_NAME" => Some("pdp".into()),
                "OTEL_TRACES_SAMPLER" => Some("traceidratio".into()),
                "OTEL_TRACES_SAMPLER_ARG" => Some("0.5".into()),
                _ => None,
            }
        };
        let file = "otlp_endpoint = \"http://file:4318\"\notel_service_name = \"f\"\n";
        let config = merge_env(&[], file, &env).unwrap();
        assert_eq!(
            config.tracing.exporter,
            Some(OtlpExporter {
                endpoint: None,
                protocol: OtlpProtocol::Grpc
            })
        );
        assert_eq!(config.tracing.service_name, "pdp");
        assert_eq!(config.tracing.sampler, SamplerChoice::TraceIdRatio(0.5));

        let config = merge(&[], file);
        assert_eq!(
            config.tracing.exporter,
            Some(OtlpExporter {
                endpoint: Some("http://file:4318".into()),
                protocol: OtlpProtocol::HttpProtobuf
            })
        );
        assert_eq!(config.tracing.service_name, "f");

        let config = merge_env(&["--otlp-endpoint", ""], file, &env).unwrap();
        assert_eq!(config.tracing.exporter, None, "'' turns export off");
        let disabled = |name: &str| (name == "OTEL_SDK_DISABLED").then(|| "true".to_string());
        let config = merge_env(&[], file, &disabled).unwrap();
        assert_eq!(config.tracing.exporter, None, "OTEL_SDK_DISABLED wins");

        let err = merge_env(
            &[
                "--otlp-endpoint",
                "collector:4317",
                "--otlp-protocol",
                "http/json",
                "--otel-traces-sampler",
                "often",
            ],
            "",
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }
}
