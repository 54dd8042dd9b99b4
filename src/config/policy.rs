//! How policies are found, evaluated and bounded: the policy path, the entrypoints, the
//! evaluation, compile and test limits, and watching the files.

use std::{path::PathBuf, sync::Arc};

use super::{duration, options::options, positive};
use crate::policy::{EvalLimits, PolicyOptions, SourceLimits};

options! {
    /// Policies, entrypoints and evaluation limits.
    #[command(next_help_heading = "Policies")]
    pub struct PolicyArgs {
        /// Directory of .rego policies and .json/.yaml data, or an OPA bundle (.tar.gz)
        /// [default: ./policies].
        #[arg(long, env = "STEPGATE_POLICIES", value_name = "DIR")]
        pub policies: PathBuf,
        /// The decision rule [default: data.stepgate.decision].
        #[arg(long, env = "STEPGATE_DECISION_ENTRYPOINT", value_name = "RULE")]
        pub decision_entrypoint: String,
        /// The Envoy ext_authz rule [default: data.envoy.authz.allow].
        #[arg(long, env = "STEPGATE_ENVOY_ENTRYPOINT", value_name = "RULE")]
        pub envoy_entrypoint: String,
        /// Most RVM instructions per evaluation [default: 1000000].
        #[arg(long, env = "STEPGATE_EVAL_MAX_INSTRUCTIONS", value_name = "N")]
        pub eval_max_instructions: usize,
        /// Longest one evaluation may run, e.g. 100ms [default: 100ms].
        #[arg(long, env = "STEPGATE_EVAL_TIMEOUT", value_name = "DURATION")]
        pub eval_timeout: String,
        /// Largest accepted policy or data file in bytes [default: 1048576].
        #[arg(long, env = "STEPGATE_POLICY_MAX_FILE_BYTES", value_name = "BYTES")]
        pub policy_max_file_bytes: u64,
        /// Deepest accepted bracket nesting in a .rego file [default: 12].
        #[arg(long, env = "STEPGATE_POLICY_MAX_DEPTH", value_name = "N")]
        pub policy_max_depth: usize,
        /// Longest a policy set may take to compile and test [default: 10s].
        #[arg(long, env = "STEPGATE_COMPILE_TIMEOUT", value_name = "DURATION")]
        pub compile_timeout: String,
        /// Most memory one evaluation may allocate, e.g. 32MiB [default: 32MiB].
        #[arg(long, env = "STEPGATE_EVAL_MEMORY_LIMIT", value_name = "BYTES")]
        pub eval_memory_limit: String,
        /// Process heap above which evaluations, compiles and policy tests stop and deny,
        /// e.g. 192MiB; 'off' for none [default: 192MiB].
        #[arg(long, env = "STEPGATE_EVAL_HEAP_LIMIT", value_name = "BYTES")]
        pub eval_heap_limit: String,
        /// Longest one of a policy set's test_ rules may run at load [default: 2s].
        #[arg(long, env = "STEPGATE_POLICY_TEST_TIMEOUT", value_name = "DURATION")]
        pub policy_test_timeout: String,
        /// Reload policies when their files change: true or false [default: true].
        #[arg(long, env = "STEPGATE_WATCH_POLICIES", value_name = "BOOL")]
        pub watch_policies: bool,
    }
}

/// Where policies are read from when nothing is configured.
pub(super) const POLICIES: &str = "./policies";

/// The validated policy settings (the fields of [`ServeConfig`](super::ServeConfig) of
/// the same names).
pub(super) struct Policies {
    pub policies: PathBuf,
    pub policy: PolicyOptions,
    pub watch_policies: bool,
}

impl PolicyArgs {
    /// The policy settings, each problem pushed to `problems`.
    pub(super) fn resolve(self, problems: &mut Vec<String>) -> Policies {
        let defaults = PolicyOptions::default();
        let mut entrypoint = |name: &str, text: Option<String>, default: Arc<str>| {
            let rule: Arc<str> = text.map_or(default, Into::into);
            if !(rule.starts_with("data.") && rule.len() > 5) {
                problems.push(format!(
                    "{name}: {rule:?} must be a rule path starting with 'data.'"
                ));
            }
            rule
        };
        let decision_entrypoint = entrypoint(
            "decision_entrypoint",
            self.decision_entrypoint,
            defaults.decision_entrypoint.clone(),
        );
        let envoy_entrypoint = entrypoint(
            "envoy_entrypoint",
            self.envoy_entrypoint,
            defaults.envoy_entrypoint.clone(),
        );
        let max_instructions = positive(
            problems,
            "eval_max_instructions",
            self.eval_max_instructions,
            defaults.eval_limits.max_instructions,
        );
        let max_nesting_depth = positive(
            problems,
            "policy_max_depth",
            self.policy_max_depth,
            defaults.source_limits.max_nesting_depth,
        );
        let max_file_bytes = self
            .policy_max_file_bytes
            .unwrap_or(defaults.source_limits.max_file_bytes);
        if max_file_bytes == 0 {
            problems.push("policy_max_file_bytes: must be greater than 0".into());
        }
        let timeout = duration(
            problems,
            "eval_timeout",
            self.eval_timeout,
            defaults.eval_limits.timeout,
        );
        let compile_timeout = duration(
            problems,
            "compile_timeout",
            self.compile_timeout,
            defaults.compile_timeout,
        );
        let test_timeout = duration(
            problems,
            "policy_test_timeout",
            self.policy_test_timeout,
            defaults.test_timeout,
        );
        let max_memory = match self.eval_memory_limit {
            None => defaults.eval_limits.max_memory,
            Some(text) => bytes(problems, "eval_memory_limit", &text)
                .unwrap_or(defaults.eval_limits.max_memory),
        };
        let heap_limit = match self.eval_heap_limit {
            None => defaults.heap_limit,
            Some(text) if text.trim() == "off" => None,
            Some(text) => bytes(problems, "eval_heap_limit", &text).or(defaults.heap_limit),
        };
        Policies {
            policies: self.policies.unwrap_or_else(|| PathBuf::from(POLICIES)),
            policy: PolicyOptions {
                decision_entrypoint,
                envoy_entrypoint,
                source_limits: SourceLimits {
                    max_file_bytes,
                    max_nesting_depth,
                    ..defaults.source_limits
                },
                eval_limits: EvalLimits {
                    max_instructions,
                    timeout,
                    max_memory,
                },
                compile_timeout,
                test_timeout,
                heap_limit,
                bundle_verifier: None,
            },
            watch_policies: self.watch_policies.unwrap_or(true),
        }
    }
}

/// A byte size, or `None` with the problem pushed.
fn bytes(problems: &mut Vec<String>, name: &str, text: &str) -> Option<u64> {
    let parsed = parse_bytes(text);
    if parsed.is_none() {
        problems.push(format!(
            "{name}: {text:?} is not a positive size such as 32MiB or 1048576"
        ));
    }
    parsed
}

/// A byte size: a positive integer with an optional `KiB`, `MiB` or `GiB` suffix.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = [("KiB", 10), ("MiB", 20), ("GiB", 30)]
        .into_iter()
        .find_map(|(suffix, shift)| text.strip_suffix(suffix).map(|d| (d.trim(), shift)))
        .unwrap_or((text, 0));
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{merge, merge_err};
    use super::*;

    #[test]
    fn defaults_and_entrypoints() {
        let config = merge(&[], "");
        assert_eq!(config.policies, PathBuf::from("./policies"));
        assert_eq!(
            &*config.policy.decision_entrypoint,
            "data.stepgate.decision"
        );
        assert_eq!(&*config.policy.envoy_entrypoint, "data.envoy.authz.allow");
        assert!(config.watch_policies);
        let config = merge(&[], "envoy_entrypoint = \"data.gate.allow\"\n");
        assert_eq!(&*config.policy.envoy_entrypoint, "data.gate.allow");
        let err = merge_err(&["--envoy-entrypoint", "envoy.authz.allow"], "");
        assert!(err.to_string().contains("envoy_entrypoint"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let config = merge(
            &["--grpc-addr", "127.0.0.1:7000"],
            "grpc_addr = \"127.0.0.1:8000\"\nmax_batch = 9\neval_timeout = \"250ms\"\n",
        );
        assert_eq!(config.grpc_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(config.max_batch, 9);
        assert_eq!(
            config.policy.eval_limits.timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn evaluation_memory_and_test_limits() {
        let config = merge(&[], "");
        assert_eq!(config.policy.eval_limits.max_memory, 32 << 20);
        assert_eq!(config.policy.heap_limit, Some(192 << 20));
        assert_eq!(config.policy.test_timeout, Duration::from_secs(2));
        let config = merge(
            &[
                "--eval-memory-limit",
                "512KiB",
                "--policy-test-timeout",
                "30s",
            ],
            "eval_heap_limit = \"off\"\neval_memory_limit = \"1GiB\"\n",
        );
        assert_eq!(config.policy.eval_limits.max_memory, 512 << 10);
        assert_eq!(config.policy.heap_limit, None);
        assert_eq!(config.policy.test_timeout, Duration::from_secs(30));
        let config = merge(&[], "eval_heap_limit = \"1048576\"\n");
        assert_eq!(config.policy.heap_limit, Some(1 << 20));
        let err = merge_err(
            &[
                "--eval-memory-limit",
                "off",
                "--eval-heap-limit",
                "0",
                "--policy-test-timeout",
                "0s",
            ],
            "",
        );
        for field in [
            "eval_memory_limit",
            "eval_heap_limit",
            "policy_test_timeout",
        ] {
            assert!(
                err.to_string().contains(field),
                "{field} missing from {err}"
            );
        }
        assert_eq!(parse_bytes("12 MiB"), Some(12 << 20));
        assert_eq!(parse_bytes("18446744073709551615GiB"), None);
        assert_eq!(parse_bytes("1.5MiB"), None);
    }
}
