//! Configuration of `stepgate serve`. Each group of options is declared once, beside
//! its check, in a module of its own ([`options`] says how): the declaration is the
//! flag, its `STEPGATE_*` variable and the TOML key. Values come in layers (flags, then
//! the environment, then the TOML file, then defaults; the standard `OTEL_*` variables
//! rank between the `STEPGATE_*` ones and the file) and are validated into one
//! [`ServeConfig`]. Every bad value is reported, not just the first. The environment is
//! a parameter, so a configuration can be built without reading the process's.

use std::{
    ffi::OsString,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::LazyLock,
    time::Duration,
};

use clap::{Args, FromArgMatches};

mod audit;
mod bundle;
mod grants;
mod listen;
mod options;
mod otlp;
mod policy;
mod transport;

pub use audit::AuditArgs;
pub use bundle::{BundleArgs, BundleVerification};
pub use grants::{GrantArgs, GrantsConfig};
pub use listen::{ListenArgs, ServiceCallers, TlsConfig};
pub use otlp::TelemetryArgs;
pub use policy::PolicyArgs;
pub use transport::TransportArgs;

use options::{KeyList, all_keys, group_from_toml, options, refuse_unknown_keys};

use crate::{
    api::TransportLimits,
    audit::AuditOptions,
    policy::{BundleServerOptions, PolicyOptions},
    telemetry::TracingOptions,
};

options! {
    /// The process: its logs, threads and shutdown, and the ext_authz dry run.
    #[command(next_help_heading = "Process")]
    pub struct ServerArgs {
        /// Log format: text or json [default: text].
        #[arg(long, env = "STEPGATE_LOG_FORMAT", value_name = "FORMAT")]
        pub log_format: String,
        /// Async worker threads [default: one per available core].
        #[arg(long, env = "STEPGATE_WORKERS", value_name = "N")]
        pub workers: usize,
        /// Longest shutdown waits for in-flight calls before closing them [default: 10s].
        #[arg(long, env = "STEPGATE_SHUTDOWN_GRACE", value_name = "DURATION")]
        pub shutdown_grace: String,
        /// Allow every ext_authz request but record the real decision [default: false].
        #[arg(long, env = "STEPGATE_ENVOY_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
        pub envoy_dry_run: bool,
    }
}

/// Flags of `stepgate serve`, one group per concern; each is also `STEPGATE_<NAME>` in
/// the environment and `<name>` (with `_`) in the TOML file. The same struct holds one
/// layer's values: the flags with their variables, or the file.
#[derive(Debug, Default, Clone, PartialEq, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "STEPGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Policies, entrypoints and evaluation limits.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Policies from a bundle server; bundle signatures.
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Listeners, TLS, caller allow-lists.
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Message, batch, connection and call bounds.
    #[command(flatten)]
    pub transport: TransportArgs,
    /// The process.
    #[command(flatten)]
    pub server: ServerArgs,
    /// The grant store.
    #[command(flatten)]
    pub grants: GrantArgs,
    /// The decision log.
    #[command(flatten)]
    pub audit: AuditArgs,
    /// Spans and OTLP.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Every key of the TOML file: each group's, in the order of [`ServeArgs`].
static FILE_KEYS: KeyList = LazyLock::new(|| {
    all_keys(&[
        PolicyArgs::KEYS,
        BundleArgs::KEYS,
        ListenArgs::KEYS,
        TransportArgs::KEYS,
        ServerArgs::KEYS,
        GrantArgs::KEYS,
        AuditArgs::KEYS,
        TelemetryArgs::KEYS,
    ])
});

impl ServeArgs {
    /// The keys the TOML file may hold (each also a flag and a `STEPGATE_*` variable).
    pub fn file_keys() -> &'static [&'static str] {
        &FILE_KEYS
    }

    /// Parses `flags` (the arguments after `serve`), taking each flag not given from its
    /// `STEPGATE_*` variable as `env` has it, as clap takes it from the process's
    /// environment when the binary parses its command line (which stays untouched here).
    pub fn from_flags_and_env<I, T>(
        flags: I,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let declared = Self::augment_args(clap::Command::new("serve").no_binary_name(true));
        let variables: Vec<(String, String, String)> = declared
            .get_arguments()
            .filter_map(|arg| {
                Some((
                    arg.get_id().to_string(),
                    arg.get_long()?.to_string(),
                    arg.get_env()?.to_str()?.to_string(),
                ))
            })
            .collect();
        let command = declared.mut_args(|arg| arg.env(None::<&str>));
        let mut argv: Vec<OsString> = flags.into_iter().map(Into::into).collect();
        let given = command.clone().try_get_matches_from(&argv)?;
        for (id, long, variable) in variables {
            if let Some(value) = env(&variable).filter(|_| !given.contains_id(&id)) {
                argv.push(format!("--{long}={value}").into());
            }
        }
        Self::from_arg_matches(&command.try_get_matches_from(argv)?)
    }

    /// The TOML file's values (`path` names it in errors): each group reads its own keys
    /// from `text`; a key no group declares is refused.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        refuse_unknown_keys(path, text, &FILE_KEYS)?;
        Ok(Self {
            config: None,
            policy: group_from_toml(path, text)?,
            bundle: group_from_toml(path, text)?,
            listen: group_from_toml(path, text)?,
            transport: group_from_toml(path, text)?,
            server: group_from_toml(path, text)?,
            grants: group_from_toml(path, text)?,
            audit: group_from_toml(path, text)?,
            telemetry: group_from_toml(path, text)?,
        })
    }

    /// Each value set in `self`, else the one in `lower`.
    #[must_use]
    fn or(self, lower: Self) -> Self {
        Self {
            config: self.config.or(lower.config),
            policy: self.policy.or(lower.policy),
            bundle: self.bundle.or(lower.bundle),
            listen: self.listen.or(lower.listen),
            transport: self.transport.or(lower.transport),
            server: self.server.or(lower.server),
            grants: self.grants.or(lower.grants),
            audit: self.audit.or(lower.audit),
            telemetry: self.telemetry.or(lower.telemetry),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated configuration of `stepgate serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Policy directory or bundle file (unused with `bundle`).
    pub policies: PathBuf,
    /// Policies from an OPA bundle server instead of `policies`.
    pub bundle: Option<BundleServerOptions>,
    /// The key bundles (a bundle server's or a bundle file) are verified with.
    pub bundle_verification: Option<BundleVerification>,
    /// gRPC TCP listener; `None` = off.
    pub grpc_addr: Option<SocketAddr>,
    /// gRPC Unix socket; `None` = off.
    pub grpc_uds: Option<PathBuf>,
    /// HTTP listener (`/health`, `/metrics`); `None` = off.
    pub http_addr: Option<SocketAddr>,
    /// How policy sets are loaded and evaluated.
    pub policy: PolicyOptions,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest accepted gRPC message.
    pub max_message_bytes: usize,
    /// Most checks in one BatchCheck.
    pub max_batch: usize,
    /// Reload on file change.
    pub watch_policies: bool,
    /// Async worker threads; `None` = one per available core.
    pub workers: Option<usize>,
    /// Longest shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// The grant store and its sweeper.
    pub grants: GrantsConfig,
    /// Who may call the admin RPCs; `None` = anyone who reaches the listener.
    pub admin_callers: Option<Vec<String>>,
    /// Spans and their export.
    pub tracing: TracingOptions,
    /// The decision log.
    pub audit: AuditOptions,
    /// Per-service allow-lists of caller identities; `None` = any caller.
    pub service_callers: ServiceCallers,
    /// Allow every ext_authz request, recording the real decision.
    pub envoy_dry_run: bool,
    /// TLS (and mTLS) of the TCP listeners; `None` = plaintext.
    pub tls: Option<TlsConfig>,
    /// File mode of the gRPC Unix socket; `None` = as the umask leaves it.
    pub grpc_uds_mode: Option<u32>,
    /// Bounds on every listener's connections, streams and their timing.
    pub transport: TransportLimits,
}

/// What nothing configured resolves to: the defaults live with each group's check.
impl Default for ServeConfig {
    fn default() -> Self {
        Self::resolve(ServeArgs::default(), ServeArgs::default(), &|_| None).0
    }
}

/// Every problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// How long shutdown waits for in-flight calls when nothing is configured.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl ServeConfig {
    /// The binary's configuration: `args` as clap parsed them (flags, then `STEPGATE_*`
    /// from the process environment) over the file named by `--config`, over the
    /// defaults, validated; the `OTEL_*` variables from the process environment.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        Self::from_args_and_env(args, &|name| std::env::var(name).ok())
    }

    /// [`from_args`](Self::from_args) with `env` in place of the process environment
    /// as the source of the `OTEL_*` variables (an empty value counts as unset), so a
    /// deployment's variables can be resolved as stepgate would, and a test is not
    /// changed by its own environment.
    pub fn from_args_and_env(
        args: ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        Self::from_layers(args, file, env)
    }

    /// `args` (flags and `STEPGATE_*`) over `file` over the defaults, validated, with
    /// `env` as the source of the `OTEL_*` variables (an empty value counts as unset).
    pub fn from_layers(
        args: ServeArgs,
        file: ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (config, problems) =
            Self::resolve(args, file, &|name| env(name).filter(|v| !v.is_empty()));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The configuration and every problem found; where a value is bad, the default
    /// stands in for it (so every group is still checked).
    fn resolve(
        args: ServeArgs,
        file: ServeArgs,
        otel_env: &dyn Fn(&str) -> Option<String>,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let (tracing, tracing_problems) =
            otlp::tracing_options(&args.telemetry, &file.telemetry, otel_env);
        problems.extend(tracing_problems);
        let (upper, lower) = (args.telemetry.clone(), file.telemetry.clone());
        let merged = args.or(file);
        let otlp_sink = otlp::decision_log_otlp(
            merged.audit.decision_log_otlp.unwrap_or(false),
            merged.audit.decision_log_otlp_queue,
            (&upper, &lower),
            otel_env,
            &tracing,
            &mut problems,
        );
        let (bundle, bundle_verification) = merged
            .bundle
            .resolve(merged.policy.policies.is_some(), &mut problems);
        let listeners = merged.listen.resolve(&mut problems);
        let policies = merged.policy.resolve(&mut problems);
        let transport = merged.transport.resolve(&mut problems);
        let server = merged.server;
        let log_format = match server.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                problems.push(format!("log_format: {other:?} is not 'text' or 'json'"));
                LogFormat::Text
            }
        };
        if server.workers == Some(0) {
            problems.push("workers: must be greater than 0".into());
        }
        let shutdown_grace = duration(
            &mut problems,
            "shutdown_grace",
            server.shutdown_grace,
            SHUTDOWN_GRACE,
        );
        let grants = merged.grants.resolve(&mut problems);
        let audit = merged.audit.resolve(
            grants.grants.store.state_dir.as_deref(),
            otlp_sink,
            &mut problems,
        );
        let config = Self {
            policies: policies.policies,
            bundle,
            bundle_verification,
            grpc_addr: listeners.grpc_addr,
            grpc_uds: listeners.grpc_uds,
            http_addr: listeners.http_addr,
            policy: policies.policy,
            log_format,
            max_message_bytes: transport.max_message_bytes,
            max_batch: transport.max_batch,
            watch_policies: policies.watch_policies,
            workers: server.workers,
            shutdown_grace,
            grants: grants.grants,
            admin_callers: grants.admin_callers,
            tracing,
            audit,
            service_callers: listeners.service_callers,
            envoy_dry_run: server.envoy_dry_run.unwrap_or(false),
            tls: listeners.tls,
            grpc_uds_mode: listeners.grpc_uds_mode,
            transport: transport.limits,
        };
        (config, problems)
    }
}

/// A positive duration such as `500ms` or `2s`, or the problem with `text`, naming the
/// setting `name`.
fn positive_duration(name: &str, text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "{name}: {text:?} is not a positive duration such as 500ms or 2s"
        )),
    }
}

/// The duration `value` gives setting `name`, else `default` (also when it is bad, with
/// the problem pushed).
fn duration(
    problems: &mut Vec<String>,
    name: &str,
    value: Option<String>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(text) => positive_duration(name, &text).unwrap_or_else(|problem| {
            problems.push(problem);
            default
        }),
    }
}

/// The count `value` gives setting `name`, else `default`; 0 is a problem.
fn positive(problems: &mut Vec<String>, name: &str, value: Option<usize>, default: usize) -> usize {
    let value = value.unwrap_or(default);
    if value == 0 {
        problems.push(format!("{name}: must be greater than 0"));
    }
    value
}

/// A list of caller identities, trimmed, blanks dropped; a set list that names no one
/// is a problem (unset means any caller).
fn caller_list(
    name: &str,
    ids: Option<Vec<String>>,
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    let ids = ids.map(|ids| {
        ids.into_iter()
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .collect::<Vec<_>>()
    });
    if ids.as_ref().is_some_and(Vec::is_empty) {
        problems.push(format!(
            "{name}: lists no caller identity (leave it unset to allow any caller)"
        ));
    }
    ids
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
    ServeArgs::from_toml(path, &text)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The configuration `flags` and `toml` give with `env` as the whole environment
    /// (`STEPGATE_*` and `OTEL_*`).
    pub(crate) fn merge_env(
        flags: &[&str],
        toml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, ConfigError> {
        let args =
            ServeArgs::from_flags_and_env(flags, env).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        let file = ServeArgs::from_toml(Path::new("stepgate.toml"), toml)?;
        ServeConfig::from_layers(args, file, env)
    }

    /// The configuration `flags` and `toml` give with an empty environment.
    pub(crate) fn merge(flags: &[&str], toml: &str) -> ServeConfig {
        merge_env(flags, toml, &|_| None).unwrap_or_else(|e| panic!("{flags:?} {toml:?}: {e}"))
    }

    /// The problems `flags` and `toml` give with an empty environment.
    pub(crate) fn merge_err(flags: &[&str], toml: &str) -> ConfigError {
        match merge_env(flags, toml, &|_| None) {
            Ok(config) => panic!("{flags:?} {toml:?} is valid: {config:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn defaults_match_appendix_b() {
        let config = merge(&[], "");
        assert_eq!(config.grpc_addr, Some("127.0.0.1:9191".parse().unwrap()));
        assert_eq!(config.grpc_uds, None);
        assert_eq!(config.http_addr, Some("127.0.0.1:8181".parse().unwrap()));
        assert_eq!(config.policies, PathBuf::from("./policies"));
        assert_eq!(
            &*config.policy.decision_entrypoint,
            "data.stepgate.decision"
        );
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert!(!config.envoy_dry_run);
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", ServeConfig::default())
        );
        assert!(merge(&[], "envoy_dry_run = true\n").envoy_dry_run);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let err = merge_err(
            &[
                "--grpc-addr",
                "localhost",
                "--log-format",
                "xml",
                "--max-batch",
                "0",
                "--eval-timeout",
                "soon",
                "--decision-entrypoint",
                "stepgate.decision",
            ],
            "",
        );
        assert_eq!(err.0.len(), 5, "{err}");
        for field in [
            "grpc_addr",
            "log_format",
            "max_batch",
            "eval_timeout",
            "decision_entrypoint",
        ] {
            assert!(
                err.to_string().contains(field),
                "{field} missing from {err}"
            );
        }
    }

    #[test]
    fn unknown_file_keys_are_refused_and_bad_values_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stepgate.toml");
        std::fs::write(&path, "max_batch = 3\ngrpc_adr = \"x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = ServeConfig::from_args_and_env(args, &|_| None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2, column 1"), "{err}");
        assert!(
            text.contains("unknown field `grpc_adr`, expected one of `policies`, "),
            "{err}"
        );
        let err = merge_err(&[], "max_batch = \"many\"\n");
        assert!(err.to_string().contains("line 1, column 13"), "{err}");
        assert!(err.to_string().contains("expected usize"), "{err}");
    }

    #[test]
    fn the_environment_comes_below_flags_and_over_the_file() {
        let env = |name: &str| match name {
            "STEPGATE_MAX_BATCH" => Some("7".to_string()),
            "STEPGATE_GRPC_ADDR" => Some(String::new()),
            "STEPGATE_GRPC_UDS" => Some("/run/s.sock".to_string()),
            "STEPGATE_ADMIN_CALLERS" => Some("a,b".to_string()),
            "STEPGATE_EPHEMERAL" => Some("true".to_string()),
            _ => None,
        };
        let toml = "max_batch = 9\nmax_concurrent_calls = 5\n";
        let config = merge_env(&["--grpc-uds", "/tmp/flag.sock"], toml, &env).unwrap();
        assert_eq!(config.max_batch, 7);
        assert_eq!(config.transport.max_concurrent_calls, 5);
        assert_eq!(config.grpc_addr, None, "an empty variable is a value");
        assert_eq!(config.grpc_uds, Some(PathBuf::from("/tmp/flag.sock")));
        assert_eq!(
            config.admin_callers,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(config.grants.store.state_dir, None);
    }

    /// Run in a child with `OTEL_*` and `STEPGATE_*` variables set by
    /// [`the_process_environment_does_not_reach_an_injected_one`]; passes alone too.
    #[test]
    fn an_injected_empty_environment_gives_the_defaults() {
        let config = merge(&[], "");
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", ServeConfig::default())
        );
        assert_eq!(config.tracing, TracingOptions::default());
        assert_eq!(config.grpc_addr, Some("127.0.0.1:9191".parse().unwrap()));
    }

    #[test]
    fn the_process_environment_does_not_reach_an_injected_one() {
        let name = "config::tests::an_injected_empty_environment_gives_the_defaults";
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
            .env("OTEL_SERVICE_NAME", "from-the-process")
            .env("STEPGATE_GRPC_ADDR", "10.0.0.1:1")
            .env("STEPGATE_MAX_BATCH", "3")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    /// One declaration per key: its field name is the TOML key, `--` and the name with
    /// `-` the flag, `STEPGATE_` and the name in capitals the variable; no key twice; and
    /// README's Configuration table lists each key, with these names, and no other.
    #[test]
    fn each_key_is_declared_once_and_documented() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut declared: Vec<&str> = ServeArgs::file_keys().to_vec();
        declared.sort_unstable();
        let before = declared.len();
        declared.dedup();
        assert_eq!(declared.len(), before, "a key is declared twice");
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert_eq!(env, format!("STEPGATE_{}", id.to_uppercase()), "{id}");
            assert!(id == "config" || declared.contains(&id), "{id}");
        }

        let readme = std::fs::read_to_string("README.md").unwrap();
        let table = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").nth(2))
            .unwrap();
        let mut documented = Vec::new();
        for row in table.lines().skip(2) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[1].split('`').nth(3).unwrap_or("config");
            let flag = cells[0]
                .split('`')
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let env = cells[1].split('`').nth(1).unwrap();
            if let Some(prefix) = key.strip_suffix('*') {
                let covered: Vec<_> = declared.iter().filter(|k| k.starts_with(prefix)).collect();
                assert!(!covered.is_empty(), "{row}");
                documented.extend(covered.into_iter().copied());
                continue;
            }
            assert_eq!(flag, format!("--{}", key.replace('_', "-")), "{row}");
            let arg = command.get_arguments().find(|a| a.get_id() == key).unwrap();
            // The README's value (after any `OTEL_*` variable that ranks above it).
            if let (Some(help), true) = (help_default(arg), cells[2].starts_with('`'))
                && !DESCRIBED_DEFAULTS.contains(&key)
            {
                let readme = cells[2].rsplit('`').nth(1);
                assert_eq!(help.split(", ").next(), readme, "{row}");
            }
            assert_eq!(env, format!("STEPGATE_{}", key.to_uppercase()), "{row}");
            documented.push(key);
        }
        documented.sort_unstable();
        let before = documented.len();
        documented.dedup();
        assert_eq!(documented.len(), before, "README lists a key twice");
        documented.retain(|k| *k != "config");
        assert_eq!(documented, declared);
    }

    /// The help text's `[default: X]` of a flag, if it has one.
    fn help_default(arg: &clap::Arg) -> Option<String> {
        let help = arg.get_help()?.to_string();
        let start = help.find("[default: ")? + "[default: ".len();
        Some(help[start..].split(']').next()?.to_string())
    }

    /// Keys whose help describes their default rather than giving a value to set.
    const DESCRIBED_DEFAULTS: [&str; 15] = [
        "admin_callers",
        "bundle_scope",
        "bundle_url",
        "bundle_verification_key_alg",
        "bundle_verification_key_id",
        "decision_callers",
        "decision_log",
        "envoy_callers",
        "grant_callers",
        "grpc_uds",
        "grpc_uds_mode",
        "otel_service_name",
        "otlp_endpoint",
        "otlp_protocol",
        "workers",
    ];

    /// The default a flag's help (and README) shows is the one it resolves to: setting
    /// each key to it changes nothing. A key whose help describes its default instead is
    /// listed in [`DESCRIBED_DEFAULTS`].
    #[test]
    fn each_documented_default_is_the_effective_one() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let bundle = [
            "--bundle-url=http://bundles/b.tar.gz",
            "--bundle-verification-key=k.pem",
        ];
        let mut described = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let Some(default) = help_default(arg) else {
                continue;
            };
            if DESCRIBED_DEFAULTS.contains(&id) {
                described.push(id);
                continue;
            }
            let value = default.split(", ").next().unwrap();
            let base: &[&str] = if id.starts_with("bundle_") {
                &bundle
            } else {
                &[]
            };
            let flag = format!("--{}={value}", arg.get_long().unwrap());
            let with: Vec<&str> = base.iter().copied().chain([flag.as_str()]).collect();
            assert_eq!(
                format!("{:?}", merge(&with, "")),
                format!("{:?}", merge(base, "")),
                "{id}: the help's default {value:?} is not the effective one"
            );
        }
        described.sort_unstable();
        assert_eq!(described, DESCRIBED_DEFAULTS);
    }
}
