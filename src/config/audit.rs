//! The decision log's settings: where records go, what they mask, whether a decision
//! must be logged to be made, and the OTLP sink's switch and queue.

use std::path::{Path, PathBuf};

use super::options::options;
use crate::audit::{AuditOptions, Destination, Masks, OtlpSinkOptions};

options! {
    /// The decision log.
    #[command(next_help_heading = "Decision log")]
    pub struct AuditArgs {
        /// Decision log: a file path, 'stdout' or 'off' [default: <state-dir>/decisions.jsonl;
        /// off with --ephemeral].
        #[arg(long, env = "STEPGATE_DECISION_LOG", value_name = "PATH|stdout|off")]
        pub decision_log: String,
        /// Deny a decision whose record the decision log cannot take [default: false].
        #[arg(long, env = "STEPGATE_AUDIT_REQUIRED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        pub audit_required: bool,
        /// JSON pointers into the input whose values the decision log masks.
        #[arg(
            long,
            env = "STEPGATE_DECISION_LOG_MASK",
            value_name = "POINTER[,POINTER...]",
            value_delimiter = ','
        )]
        pub decision_log_mask: Vec<String>,
        /// Object keys (fragments, case-insensitive) whose values the decision log masks
        /// [default: password,secret,token,api_key,apikey,authorization].
        #[arg(
            long,
            env = "STEPGATE_DECISION_LOG_MASK_KEYS",
            value_name = "KEY[,KEY...]",
            value_delimiter = ','
        )]
        pub decision_log_mask_keys: Vec<String>,
        /// Also export each decision record as an OpenTelemetry log record over OTLP (to
        /// --otlp-endpoint, else OTEL_EXPORTER_OTLP_LOGS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT,
        /// else the collector on localhost) [default: false].
        #[arg(long, env = "STEPGATE_DECISION_LOG_OTLP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        pub decision_log_otlp: bool,
        /// Decision records the OTLP queue holds (from the decision until exported) before
        /// it is full: then records are dropped from OTLP, or with --audit-required decisions
        /// deny [default: 8192].
        #[arg(long, env = "STEPGATE_DECISION_LOG_OTLP_QUEUE", value_name = "RECORDS")]
        pub decision_log_otlp_queue: usize,
    }
}

impl AuditArgs {
    /// The decision log's options, given the grant store's directory (the file's default
    /// home) and the OTLP sink already resolved; each problem pushed to `problems`.
    pub(super) fn resolve(
        self,
        state_dir: Option<&Path>,
        otlp: Option<OtlpSinkOptions>,
        problems: &mut Vec<String>,
    ) -> AuditOptions {
        let destination = match self.decision_log.as_deref() {
            Some("off") => Destination::Off,
            Some("stdout") => Destination::Stdout,
            Some("") => {
                problems.push("decision_log: must be a path, 'stdout' or 'off'".into());
                Destination::Off
            }
            Some(path) => Destination::File(PathBuf::from(path)),
            None => match state_dir {
                Some(dir) => Destination::File(dir.join("decisions.jsonl")),
                None => Destination::Off,
            },
        };
        let required = self.audit_required.unwrap_or(false);
        if required && destination == Destination::Off && otlp.is_none() {
            problems.push(
                "audit_required: needs a decision log (decision_log is off and decision_log_otlp is false)"
                    .into(),
            );
        }
        let masks = Masks {
            pointers: self.decision_log_mask.unwrap_or_default(),
            keys: self
                .decision_log_mask_keys
                .map(|keys| {
                    keys.iter()
                        .map(|k| k.trim().to_ascii_lowercase().replace('-', "_"))
                        .filter(|k| !k.is_empty())
                        .collect()
                })
                .unwrap_or_else(|| Masks::default().keys),
        };
        problems.extend(
            masks
                .problems()
                .into_iter()
                .map(|problem| format!("decision_log_mask: {problem}")),
        );
        AuditOptions {
            destination,
            otlp,
            required,
            masks,
            ..AuditOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{merge, merge_env, merge_err};
    use super::*;
    use crate::{
        audit::DEFAULT_OTLP_QUEUE,
        telemetry::{OtlpExporter, OtlpProtocol},
    };

    #[test]
    fn decision_log_defaults_to_the_state_dir_and_is_off_when_ephemeral() {
        let config = merge(&[], "");
        assert_eq!(
            config.audit.destination,
            Destination::File(PathBuf::from("./data/decisions.jsonl"))
        );
        assert!(!config.audit.required);
        assert_eq!(config.audit.masks, Masks::default());
        let config = merge(&["--ephemeral"], "");
        assert_eq!(config.audit.destination, Destination::Off);
        let config = merge(
            &[
                "--ephemeral",
                "--decision-log",
                "stdout",
                "--audit-required",
                "--decision-log-mask",
                "/agent/arguments/query",
            ],
            "decision_log_mask_keys = [\"Pass-Phrase\"]\n",
        );
        assert_eq!(config.audit.destination, Destination::Stdout);
        assert!(config.audit.required);
        assert_eq!(config.audit.masks.pointers, ["/agent/arguments/query"]);
        assert_eq!(config.audit.masks.keys, ["pass_phrase"]);

        let err = merge_err(
            &[
                "--decision-log",
                "off",
                "--audit-required",
                "--decision-log-mask",
                "agent",
            ],
            "",
        );
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0.contains(
                &"decision_log_mask: \"agent\" is not a JSON pointer (it starts with '/')".into()
            ),
            "{err}"
        );

        let pointers: Vec<String> = (0..65).map(|i| format!("/p{i}")).collect();
        let err = merge_err(&["--decision-log-mask", &pointers.join(",")], "");
        assert_eq!(err.0, ["decision_log_mask: at most 64 pointers"]);
    }

    #[test]
    fn decision_records_go_over_otlp_to_the_logs_collector_when_asked() {
        let config = merge(&[], "");
        assert_eq!(config.audit.otlp, None, "off by default");

        // The logs signal's own variables win over the shared ones; OTEL_SDK_DISABLED
        // turns spans off, not an audit destination.
        let env = |name: &str| -> Option<String> {
            match name {
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" => Some("http://logs:4317".into()),
                "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL" => Some("grpc".into()),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
                "OTEL_SERVICE_NAME" => Some("pdp".into()),
                "OTEL_SDK_DISABLED" => Some("true".into()),
                _ => None,
            }
        };
        let config = merge_env(&["--decision-log-otlp"], "", &env).unwrap();
        assert_eq!(config.tracing.exporter, None);
        assert_eq!(
            config.audit.otlp,
            Some(OtlpSinkOptions {
                exporter: OtlpExporter {
                    endpoint: None,
                    protocol: OtlpProtocol::Grpc,
                },
                service_name: "pdp".into(),
                queue: DEFAULT_OTLP_QUEUE,
            })
        );

        // The flag's collector (spans go there too), the file's protocol; nothing set
        // at all leaves the exporter's default (the collector on localhost).
        let config = merge(
            &[
                "--decision-log-otlp",
                "--otlp-endpoint",
                "http://collector:4318",
            ],
            "otlp_protocol = \"grpc\"\n",
        );
        let otlp = config.audit.otlp.unwrap();
        assert_eq!(
            otlp.exporter.endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(otlp.exporter.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            config.tracing.exporter.unwrap().endpoint,
            otlp.exporter.endpoint
        );
        let config = merge(&["--decision-log-otlp"], "");
        assert_eq!(
            config.audit.otlp.unwrap().exporter,
            OtlpExporter {
                endpoint: None,
                protocol: OtlpProtocol::HttpProtobuf,
            }
        );

        // The OTLP sink alone is a decision log that audit can require.
        let config = merge(
            &["--ephemeral"],
            "decision_log_otlp = true\ndecision_log_otlp_queue = 16\naudit_required = true\n",
        );
        assert_eq!(config.audit.destination, Destination::Off);
        assert!(config.audit.required);
        assert_eq!(config.audit.otlp.unwrap().queue, 16);

        // A bad collector URL is one problem, though both signals read it.
        let err = merge_err(
            &[
                "--decision-log-otlp",
                "--otlp-endpoint",
                "collector:4317",
                "--decision-log-otlp-queue",
                "0",
            ],
            "",
        );
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0
                .contains(&"decision_log_otlp_queue: must be between 1 and 1048576".into()),
            "{err}"
        );
    }
}
