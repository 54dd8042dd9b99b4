//! Configuration of `stepgate serve`, in two stages: raw values from flags, `STEPGATE_*`
//! environment variables and a TOML file (flags win, then environment, then file, then
//! defaults), then one validated [`ServeConfig`]. Every bad value is reported, not just
//! the first.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use chrono::TimeDelta;

mod bundle;
mod otlp;

pub use bundle::BundleVerification;
use otlp::{decision_log_otlp, tracing_options};

use crate::{
    api::TransportLimits,
    audit::{AuditOptions, Destination, Masks},
    grants::{JournalOptions, StoreOptions},
    policy::{BundleServerOptions, EvalLimits, PolicyOptions, SourceLimits},
    telemetry::TracingOptions,
};

/// Flags of `stepgate serve`; each is also `STEPGATE_<NAME>` in the environment and
/// `<name>` (with `_`) in the TOML file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "STEPGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of .rego policies and .json/.yaml data, or an OPA bundle (.tar.gz)
    /// [default: ./policies].
    #[arg(long, env = "STEPGATE_POLICIES", value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// gRPC TCP listener; '' turns it off [default: 127.0.0.1:9191].
    #[arg(long, env = "STEPGATE_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<String>,
    /// gRPC Unix socket path [default: off].
    #[arg(long, env = "STEPGATE_GRPC_UDS", value_name = "PATH")]
    pub grpc_uds: Option<PathBuf>,
    /// HTTP listener (/health, /metrics); '' turns it off [default: 127.0.0.1:8181].
    #[arg(long, env = "STEPGATE_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// The decision rule [default: data.stepgate.decision].
    #[arg(long, env = "STEPGATE_DECISION_ENTRYPOINT", value_name = "RULE")]
    pub decision_entrypoint: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "STEPGATE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Largest accepted gRPC message in bytes [default: 1048576].
    #[arg(long, env = "STEPGATE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Most checks in one BatchCheck [default: 256].
    #[arg(long, env = "STEPGATE_MAX_BATCH", value_name = "N")]
    pub max_batch: Option<usize>,
    /// Most RVM instructions per evaluation [default: 1000000].
    #[arg(long, env = "STEPGATE_EVAL_MAX_INSTRUCTIONS", value_name = "N")]
    pub eval_max_instructions: Option<usize>,
    /// Longest one evaluation may run, e.g. 100ms [default: 100ms].
    #[arg(long, env = "STEPGATE_EVAL_TIMEOUT", value_name = "DURATION")]
    pub eval_timeout: Option<String>,
    /// Largest accepted policy or data file in bytes [default: 1048576].
    #[arg(long, env = "STEPGATE_POLICY_MAX_FILE_BYTES", value_name = "BYTES")]
    pub policy_max_file_bytes: Option<u64>,
    /// Deepest accepted bracket nesting in a .rego file [default: 12].
    #[arg(long, env = "STEPGATE_POLICY_MAX_DEPTH", value_name = "N")]
    pub policy_max_depth: Option<usize>,
    /// Longest a policy set may take to compile and test [default: 10s].
    #[arg(long, env = "STEPGATE_COMPILE_TIMEOUT", value_name = "DURATION")]
    pub compile_timeout: Option<String>,
    /// Most memory one evaluation may allocate, e.g. 32MiB [default: 32MiB].
    #[arg(long, env = "STEPGATE_EVAL_MEMORY_LIMIT", value_name = "BYTES")]
    pub eval_memory_limit: Option<String>,
    /// Process heap above which evaluations, compiles and policy tests stop and deny,
    /// e.g. 192MiB; 'off' for none [default: 192MiB].
    #[arg(long, env = "STEPGATE_EVAL_HEAP_LIMIT", value_name = "BYTES")]
    pub eval_heap_limit: Option<String>,
    /// Longest one of a policy set's test_ rules may run at load [default: 2s].
    #[arg(long, env = "STEPGATE_POLICY_TEST_TIMEOUT", value_name = "DURATION")]
    pub policy_test_timeout: Option<String>,
    /// Reload policies when their files change: true or false [default: true].
    #[arg(long, env = "STEPGATE_WATCH_POLICIES", value_name = "BOOL")]
    pub watch_policies: Option<bool>,
    /// Async worker threads [default: one per available core].
    #[arg(long, env = "STEPGATE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Longest shutdown waits for in-flight calls before closing them [default: 10s].
    #[arg(long, env = "STEPGATE_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// Directory of the grant journal [default: ./data].
    #[arg(long, env = "STEPGATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep grants in memory only, with no journal.
    #[arg(long, env = "STEPGATE_EPHEMERAL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ephemeral: Option<bool>,
    /// How often due grants are expired [default: 1s].
    #[arg(long, env = "STEPGATE_SWEEP_INTERVAL", value_name = "DURATION")]
    pub sweep_interval: Option<String>,
    /// Caller identities allowed to call Approve, Reject, Revoke and ConfirmRevocation
    /// [default: any caller that reaches the listener, with a warning].
    #[arg(
        long,
        env = "STEPGATE_ADMIN_CALLERS",
        value_name = "ID[,ID...]",
        value_delimiter = ','
    )]
    pub admin_callers: Option<Vec<String>>,
    /// Approval deadline of a pending grant when policy sets none [default: 1h].
    #[arg(long, env = "STEPGATE_APPROVAL_TIMEOUT", value_name = "DURATION")]
    pub approval_timeout: Option<String>,
    /// How long ended grants are kept for audit [default: 24h].
    #[arg(long, env = "STEPGATE_GRANT_RETENTION", value_name = "DURATION")]
    pub grant_retention: Option<String>,
    /// How long after a grant ends its revocation must be confirmed before it is
    /// reported overdue [default: 5m].
    #[arg(
        long,
        env = "STEPGATE_REVOCATION_CONFIRM_DEADLINE",
        value_name = "DURATION"
    )]
    pub revocation_confirm_deadline: Option<String>,
    /// fdatasync the journal before acknowledging a mutation [default: true].
    #[arg(long, env = "STEPGATE_JOURNAL_FSYNC", value_name = "BOOL")]
    pub journal_fsync: Option<bool>,
    /// Let concurrent mutations share one journal write and sync [default: true].
    #[arg(long, env = "STEPGATE_JOURNAL_GROUP_COMMIT", value_name = "BOOL")]
    pub journal_group_commit: Option<bool>,
    /// Decision log: a file path, 'stdout' or 'off' [default: <state-dir>/decisions.jsonl;
    /// off with --ephemeral].
    #[arg(long, env = "STEPGATE_DECISION_LOG", value_name = "PATH|stdout|off")]
    pub decision_log: Option<String>,
    /// Deny a decision whose record the decision log cannot take [default: false].
    #[arg(long, env = "STEPGATE_AUDIT_REQUIRED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub audit_required: Option<bool>,
    /// JSON pointers into the input whose values the decision log masks.
    #[arg(
        long,
        env = "STEPGATE_DECISION_LOG_MASK",
        value_name = "POINTER[,POINTER...]",
        value_delimiter = ','
    )]
    pub decision_log_mask: Option<Vec<String>>,
    /// Object keys (fragments, case-insensitive) whose values the decision log masks
    /// [default: password,secret,token,api_key,apikey,authorization].
    #[arg(
        long,
        env = "STEPGATE_DECISION_LOG_MASK_KEYS",
        value_name = "KEY[,KEY...]",
        value_delimiter = ','
    )]
    pub decision_log_mask_keys: Option<Vec<String>>,
    /// Also export each decision record as an OpenTelemetry log record over OTLP (to
    /// --otlp-endpoint, else OTEL_EXPORTER_OTLP_LOGS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT,
    /// else the collector on localhost) [default: false].
    #[arg(long, env = "STEPGATE_DECISION_LOG_OTLP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub decision_log_otlp: Option<bool>,
    /// Decision records the OTLP queue holds (from the decision until exported) before
    /// it is full: then records are dropped from OTLP, or with --audit-required decisions
    /// deny [default: 8192].
    #[arg(long, env = "STEPGATE_DECISION_LOG_OTLP_QUEUE", value_name = "RECORDS")]
    pub decision_log_otlp_queue: Option<usize>,
    /// OTLP collector URL (spans, and decision records with --decision-log-otlp); ''
    /// turns span export off [default: OTEL_EXPORTER_OTLP_ENDPOINT, else no span export].
    #[arg(long, env = "STEPGATE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf [default: OTEL_EXPORTER_OTLP_PROTOCOL, else
    /// http/protobuf].
    #[arg(long, env = "STEPGATE_OTLP_PROTOCOL", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// service.name of exported spans [default: OTEL_SERVICE_NAME, else stepgate].
    #[arg(long, env = "STEPGATE_OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
    /// Span sampler, as OTEL_TRACES_SAMPLER [default: parentbased_always_on].
    #[arg(long, env = "STEPGATE_OTEL_TRACES_SAMPLER", value_name = "SAMPLER")]
    pub otel_traces_sampler: Option<String>,
    /// The sampler's ratio, as OTEL_TRACES_SAMPLER_ARG [default: 1.0].
    #[arg(long, env = "STEPGATE_OTEL_TRACES_SAMPLER_ARG", value_name = "RATIO")]
    pub otel_traces_sampler_arg: Option<String>,
    /// Turn spans off whatever else is set, as OTEL_SDK_DISABLED [default: false].
    #[arg(long, env = "STEPGATE_OTEL_SDK_DISABLED", value_name = "BOOL")]
    pub otel_sdk_disabled: Option<bool>,
    /// The Envoy ext_authz rule [default: data.envoy.authz.allow].
    #[arg(long, env = "STEPGATE_ENVOY_ENTRYPOINT", value_name = "RULE")]
    pub envoy_entrypoint: Option<String>,
    /// Allow every ext_authz request but record the real decision [default: false].
    #[arg(long, env = "STEPGATE_ENVOY_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub envoy_dry_run: Option<bool>,
    /// PEM certificate chain of the TLS listeners; with --tls-key turns TLS on.
    #[arg(long, env = "STEPGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "STEPGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle client certificates are verified against (mTLS).
    #[arg(long, env = "STEPGATE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate signed by --tls-client-ca [default: false].
    #[arg(long, env = "STEPGATE_TLS_REQUIRE_CLIENT_CERT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tls_require_client_cert: Option<bool>,
    /// File mode of the gRPC Unix socket, octal, e.g. 0660 [default: as the umask leaves it].
    #[arg(long, env = "STEPGATE_GRPC_UDS_MODE", value_name = "MODE")]
    pub grpc_uds_mode: Option<String>,
    /// Caller identities allowed to call DecisionService [default: any caller].
    #[arg(
        long,
        env = "STEPGATE_DECISION_CALLERS",
        value_name = "ID[,ID...]",
        value_delimiter = ','
    )]
    pub decision_callers: Option<Vec<String>>,
    /// Caller identities allowed to call GrantService at all [default: any caller].
    #[arg(
        long,
        env = "STEPGATE_GRANT_CALLERS",
        value_name = "ID[,ID...]",
        value_delimiter = ','
    )]
    pub grant_callers: Option<Vec<String>>,
    /// Caller identities allowed to call Envoy's Authorization/Check [default: any caller].
    #[arg(
        long,
        env = "STEPGATE_ENVOY_CALLERS",
        value_name = "ID[,ID...]",
        value_delimiter = ','
    )]
    pub envoy_callers: Option<Vec<String>>,
    /// Most connections each listener holds; more are accepted and closed at once
    /// [default: 256, lowered to fit RLIMIT_NOFILE].
    #[arg(long, env = "STEPGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most concurrent HTTP/2 streams per gRPC connection [default: 64].
    #[arg(long, env = "STEPGATE_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<usize>,
    /// Longest a new connection may take to send its HTTP/2 preface (or HTTP/1 request
    /// headers, or TLS handshake) [default: 10s].
    #[arg(long, env = "STEPGATE_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub handshake_timeout: Option<String>,
    /// Longest a call may take to arrive whole and be answered [default: 10s].
    #[arg(long, env = "STEPGATE_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Close a connection with no call in flight for this long [default: 5m].
    #[arg(long, env = "STEPGATE_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// PING an HTTP/2 connection silent for this long [default: 60s].
    #[arg(long, env = "STEPGATE_KEEPALIVE_INTERVAL", value_name = "DURATION")]
    pub keepalive_interval: Option<String>,
    /// Close the connection when a PING is not answered within this [default: 20s].
    #[arg(long, env = "STEPGATE_KEEPALIVE_TIMEOUT", value_name = "DURATION")]
    pub keepalive_timeout: Option<String>,
    /// Most request bytes held at once across all connections; past it requests get
    /// RESOURCE_EXHAUSTED [default: 67108864].
    #[arg(
        long,
        env = "STEPGATE_MAX_BUFFERED_REQUEST_BYTES",
        value_name = "BYTES"
    )]
    pub max_buffered_request_bytes: Option<usize>,
    /// Most gRPC calls not yet answered across all connections; past it calls get
    /// RESOURCE_EXHAUSTED at once [default: 1024].
    #[arg(long, env = "STEPGATE_MAX_CONCURRENT_CALLS", value_name = "N")]
    pub max_concurrent_calls: Option<usize>,
    /// Poll this OPA bundle server URL for policies instead of reading --policies
    /// [default: off].
    #[arg(long, env = "STEPGATE_BUNDLE_URL", value_name = "URL")]
    pub bundle_url: Option<String>,
    /// Shortest wait between bundle polls [default: 60s].
    #[arg(long, env = "STEPGATE_BUNDLE_POLL_MIN", value_name = "DURATION")]
    pub bundle_poll_min: Option<String>,
    /// Longest wait between bundle polls [default: 120s].
    #[arg(long, env = "STEPGATE_BUNDLE_POLL_MAX", value_name = "DURATION")]
    pub bundle_poll_max: Option<String>,
    /// Longest one bundle request may take [default: 30s].
    #[arg(long, env = "STEPGATE_BUNDLE_TIMEOUT", value_name = "DURATION")]
    pub bundle_timeout: Option<String>,
    /// File holding the bearer token sent to the bundle server (re-read every poll).
    #[arg(long, env = "STEPGATE_BUNDLE_BEARER_TOKEN_FILE", value_name = "FILE")]
    pub bundle_bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an https bundle server, beside the system's.
    #[arg(long, env = "STEPGATE_BUNDLE_CA_CERT", value_name = "FILE")]
    pub bundle_ca_cert: Option<PathBuf>,
    /// PEM public key bundles must be signed with; unsigned bundles are then refused.
    #[arg(long, env = "STEPGATE_BUNDLE_VERIFICATION_KEY", value_name = "FILE")]
    pub bundle_verification_key: Option<PathBuf>,
    /// Signature algorithm of the key [default: RS256 for RSA, ES256/ES384 for EC].
    #[arg(long, env = "STEPGATE_BUNDLE_VERIFICATION_KEY_ALG", value_name = "ALG")]
    pub bundle_verification_key_alg: Option<String>,
    /// Refuse signatures naming another key id [default: any key id].
    #[arg(long, env = "STEPGATE_BUNDLE_VERIFICATION_KEY_ID", value_name = "ID")]
    pub bundle_verification_key_id: Option<String>,
    /// The scope a bundle signature must claim [default: none].
    #[arg(long, env = "STEPGATE_BUNDLE_SCOPE", value_name = "SCOPE")]
    pub bundle_scope: Option<String>,
}

/// The TOML file: the same keys as the flags, with `_` for `-`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    policies: Option<PathBuf>,
    grpc_addr: Option<String>,
    grpc_uds: Option<PathBuf>,
    http_addr: Option<String>,
    decision_entrypoint: Option<String>,
    log_format: Option<String>,
    max_message_bytes: Option<usize>,
    max_batch: Option<usize>,
    eval_max_instructions: Option<usize>,
    eval_timeout: Option<String>,
    policy_max_file_bytes: Option<u64>,
    policy_max_depth: Option<usize>,
    compile_timeout: Option<String>,
    eval_memory_limit: Option<String>,
    eval_heap_limit: Option<String>,
    policy_test_timeout: Option<String>,
    watch_policies: Option<bool>,
    workers: Option<usize>,
    shutdown_grace: Option<String>,
    state_dir: Option<PathBuf>,
    ephemeral: Option<bool>,
    sweep_interval: Option<String>,
    admin_callers: Option<Vec<String>>,
    approval_timeout: Option<String>,
    grant_retention: Option<String>,
    revocation_confirm_deadline: Option<String>,
    journal_fsync: Option<bool>,
    journal_group_commit: Option<bool>,
    decision_log: Option<String>,
    audit_required: Option<bool>,
    decision_log_mask: Option<Vec<String>>,
    decision_log_mask_keys: Option<Vec<String>>,
    decision_log_otlp: Option<bool>,
    decision_log_otlp_queue: Option<usize>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    otel_service_name: Option<String>,
    otel_traces_sampler: Option<String>,
    otel_traces_sampler_arg: Option<String>,
    otel_sdk_disabled: Option<bool>,
    envoy_entrypoint: Option<String>,
    envoy_dry_run: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_require_client_cert: Option<bool>,
    grpc_uds_mode: Option<String>,
    decision_callers: Option<Vec<String>>,
    grant_callers: Option<Vec<String>>,
    envoy_callers: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_concurrent_streams: Option<usize>,
    handshake_timeout: Option<String>,
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    keepalive_interval: Option<String>,
    keepalive_timeout: Option<String>,
    max_buffered_request_bytes: Option<usize>,
    max_concurrent_calls: Option<usize>,
    bundle_url: Option<String>,
    bundle_poll_min: Option<String>,
    bundle_poll_max: Option<String>,
    bundle_timeout: Option<String>,
    bundle_bearer_token_file: Option<PathBuf>,
    bundle_ca_cert: Option<PathBuf>,
    bundle_verification_key: Option<PathBuf>,
    bundle_verification_key_alg: Option<String>,
    bundle_verification_key_id: Option<String>,
    bundle_scope: Option<String>,
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

/// Which caller identities may call each service; `None` = any caller that reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceCallers {
    /// `stepgate.v1.DecisionService`.
    pub decision: Option<Vec<String>>,
    /// `stepgate.v1.GrantService` (its admin RPCs also need `admin_callers`).
    pub grant: Option<Vec<String>>,
    /// `envoy.service.auth.v3.Authorization`.
    pub envoy: Option<Vec<String>>,
}

/// TLS of the TCP listeners: the files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates; `None` = no client certificates asked for.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a verified certificate.
    pub require_client_cert: bool,
}

/// The grant store's configuration.
#[derive(Debug, Clone)]
pub struct GrantsConfig {
    /// Journal directory and retention; `state_dir: None` is ephemeral.
    pub store: StoreOptions,
    /// How often due grants are expired.
    pub sweep_interval: Duration,
    /// Approval deadline when policy sets no `approval_timeout_seconds`.
    pub approval_timeout: Duration,
}

impl Default for GrantsConfig {
    fn default() -> Self {
        Self {
            store: StoreOptions {
                state_dir: Some(PathBuf::from("./data")),
                journal: JournalOptions {
                    group_commit: true,
                    ..JournalOptions::default()
                },
                ..StoreOptions::default()
            },
            sweep_interval: Duration::from_secs(1),
            approval_timeout: Duration::from_secs(3600),
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            policies: PathBuf::from("./policies"),
            bundle: None,
            bundle_verification: None,
            grpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9191))),
            grpc_uds: None,
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8181))),
            policy: PolicyOptions::default(),
            log_format: LogFormat::Text,
            max_message_bytes: 1024 * 1024,
            max_batch: 256,
            watch_policies: true,
            workers: None,
            shutdown_grace: Duration::from_secs(10),
            grants: GrantsConfig::default(),
            admin_callers: None,
            tracing: TracingOptions::default(),
            audit: AuditOptions::default(),
            service_callers: ServiceCallers::default(),
            envoy_dry_run: false,
            tls: None,
            grpc_uds_mode: None,
            transport: TransportLimits::default(),
        }
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

impl ServeConfig {
    /// Merges flags/environment (already merged by clap) over the file named by
    /// `--config`, over the defaults, and validates the result.
    /// The standard `OTEL_*` variables rank between `STEPGATE_*` and the file.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        Self::from_args_and_otel_env(args, &|name| std::env::var(name).ok())
    }

    /// [`from_args`](Self::from_args) with `otel_env` in place of the process
    /// environment as the source of the `OTEL_*` variables (an empty value counts as
    /// unset), so a deployment's variables can be resolved as stepgate would.
    pub fn from_args_and_otel_env(
        args: ServeArgs,
        otel_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge_env(args, file, &|name| otel_env(name).filter(|v| !v.is_empty()))
    }

    #[cfg(test)]
    fn merge(args: ServeArgs, file: FileConfig) -> Result<Self, ConfigError> {
        Self::merge_env(args, file, &|_| None)
    }

    /// Merges with `otel_env` as the source of the `OTEL_*` variables.
    fn merge_env(
        args: ServeArgs,
        file: FileConfig,
        otel_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let mut problems = Vec::new();
        let (tracing, mut tracing_problems) = tracing_options(&args, &file, otel_env);
        let otlp_sink = decision_log_otlp(&args, &file, otel_env, &tracing, &mut tracing_problems);
        let explicit_policies = args.policies.is_some() || file.policies.is_some();
        let (bundle, bundle_verification) =
            bundle::bundle_options(&args, &file, explicit_policies, &mut problems);
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };

        let grpc_addr_text = args.grpc_addr.or(file.grpc_addr);
        let mut listen_addr =
            |name: &str, text: Option<&str>, default: Option<SocketAddr>| match text {
                None => default,
                Some("") => None,
                Some(addr) => {
                    let parsed = listen_address(addr);
                    check(
                        parsed.is_some(),
                        format!(
                            "{name}: {addr:?} is not HOST:PORT (HOST an IP address or localhost)"
                        ),
                    );
                    parsed
                }
            };
        let grpc_addr = listen_addr("grpc_addr", grpc_addr_text.as_deref(), defaults.grpc_addr);
        let http_addr = listen_addr(
            "http_addr",
            args.http_addr.or(file.http_addr).as_deref(),
            defaults.http_addr,
        );
        let grpc_uds = args
            .grpc_uds
            .or(file.grpc_uds)
            .filter(|p| !p.as_os_str().is_empty());
        let listener_off = grpc_addr_text.as_deref() == Some("") && grpc_uds.is_none();
        check(
            !listener_off,
            "no listener: set grpc_addr or grpc_uds".into(),
        );

        let entrypoint = args.decision_entrypoint.or(file.decision_entrypoint);
        let decision_entrypoint: Arc<str> =
            entrypoint.map_or(defaults.policy.decision_entrypoint.clone(), Into::into);
        check(
            decision_entrypoint.starts_with("data.") && decision_entrypoint.len() > 5,
            format!(
                "decision_entrypoint: {decision_entrypoint:?} must be a rule path starting with 'data.'"
            ),
        );

        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                check(
                    false,
                    format!("log_format: {other:?} is not 'text' or 'json'"),
                );
                LogFormat::Text
            }
        };

        let mut positive = |name: &str, value: Option<usize>, default: usize| {
            let value = value.unwrap_or(default);
            check(value > 0, format!("{name}: must be greater than 0"));
            value
        };
        let max_message_bytes = positive(
            "max_message_bytes",
            args.max_message_bytes.or(file.max_message_bytes),
            defaults.max_message_bytes,
        );
        let max_batch = positive(
            "max_batch",
            args.max_batch.or(file.max_batch),
            defaults.max_batch,
        );
        let max_connections = positive(
            "max_connections",
            args.max_connections.or(file.max_connections),
            defaults.transport.max_connections,
        );
        let max_concurrent_streams = positive(
            "max_concurrent_streams",
            args.max_concurrent_streams.or(file.max_concurrent_streams),
            defaults.transport.max_concurrent_streams as usize,
        );
        let max_concurrent_calls = positive(
            "max_concurrent_calls",
            args.max_concurrent_calls.or(file.max_concurrent_calls),
            defaults.transport.max_concurrent_calls,
        );
        let max_instructions = positive(
            "eval_max_instructions",
            args.eval_max_instructions.or(file.eval_max_instructions),
            defaults.policy.eval_limits.max_instructions,
        );
        let max_nesting_depth = positive(
            "policy_max_depth",
            args.policy_max_depth.or(file.policy_max_depth),
            defaults.policy.source_limits.max_nesting_depth,
        );
        let max_buffered_request_bytes = args
            .max_buffered_request_bytes
            .or(file.max_buffered_request_bytes)
            .unwrap_or(defaults.transport.max_buffered_request_bytes);
        check(
            max_buffered_request_bytes >= max_message_bytes,
            "max_buffered_request_bytes: must be at least max_message_bytes".into(),
        );
        let workers = args.workers.or(file.workers);
        check(workers != Some(0), "workers: must be greater than 0".into());
        let max_file_bytes = args
            .policy_max_file_bytes
            .or(file.policy_max_file_bytes)
            .unwrap_or(defaults.policy.source_limits.max_file_bytes);
        check(
            max_file_bytes > 0,
            "policy_max_file_bytes: must be greater than 0".into(),
        );

        let mut duration = |name: &str, value: Option<String>, default: Duration| match value {
            None => default,
            Some(text) => positive_duration(name, &text).unwrap_or_else(|problem| {
                check(false, problem);
                default
            }),
        };
        let timeout = duration(
            "eval_timeout",
            args.eval_timeout.or(file.eval_timeout),
            defaults.policy.eval_limits.timeout,
        );
        let compile_timeout = duration(
            "compile_timeout",
            args.compile_timeout.or(file.compile_timeout),
            defaults.policy.compile_timeout,
        );
        let test_timeout = duration(
            "policy_test_timeout",
            args.policy_test_timeout.or(file.policy_test_timeout),
            defaults.policy.test_timeout,
        );
        let shutdown_grace = duration(
            "shutdown_grace",
            args.shutdown_grace.or(file.shutdown_grace),
            defaults.shutdown_grace,
        );
        let transport = TransportLimits {
            max_connections,
            max_concurrent_streams: max_concurrent_streams.try_into().unwrap_or(u32::MAX),
            max_buffered_request_bytes,
            max_concurrent_calls,
            handshake_timeout: duration(
                "handshake_timeout",
                args.handshake_timeout.or(file.handshake_timeout),
                defaults.transport.handshake_timeout,
            ),
            request_timeout: duration(
                "request_timeout",
                args.request_timeout.or(file.request_timeout),
                defaults.transport.request_timeout,
            ),
            idle_timeout: duration(
                "idle_timeout",
                args.idle_timeout.or(file.idle_timeout),
                defaults.transport.idle_timeout,
            ),
            keepalive_interval: duration(
                "keepalive_interval",
                args.keepalive_interval.or(file.keepalive_interval),
                defaults.transport.keepalive_interval,
            ),
            keepalive_timeout: duration(
                "keepalive_timeout",
                args.keepalive_timeout.or(file.keepalive_timeout),
                defaults.transport.keepalive_timeout,
            ),
        };
        let grants_default = &defaults.grants;
        let sweep_interval = duration(
            "sweep_interval",
            args.sweep_interval.or(file.sweep_interval),
            grants_default.sweep_interval,
        );
        let approval_timeout = duration(
            "approval_timeout",
            args.approval_timeout.or(file.approval_timeout),
            grants_default.approval_timeout,
        );
        let retention = duration(
            "grant_retention",
            args.grant_retention.or(file.grant_retention),
            grants_default.store.retention.to_std().unwrap_or_default(),
        );
        let confirm_deadline = duration(
            "revocation_confirm_deadline",
            args.revocation_confirm_deadline
                .or(file.revocation_confirm_deadline),
            grants_default
                .store
                .revocation_confirm_deadline
                .to_std()
                .unwrap_or_default(),
        );
        let mut bytes = |name: &str, value: Option<String>, off: bool, default: Option<u64>| {
            let text = value?;
            if off && text.trim() == "off" {
                return None;
            }
            let parsed = parse_bytes(&text);
            check(
                parsed.is_some(),
                format!("{name}: {text:?} is not a positive size such as 32MiB or 1048576"),
            );
            parsed.or(default)
        };
        let max_memory = bytes(
            "eval_memory_limit",
            args.eval_memory_limit.or(file.eval_memory_limit),
            false,
            None,
        )
        .unwrap_or(defaults.policy.eval_limits.max_memory);
        let heap_limit = match args.eval_heap_limit.or(file.eval_heap_limit) {
            None => defaults.policy.heap_limit,
            text => bytes("eval_heap_limit", text, true, defaults.policy.heap_limit),
        };
        let admin_callers = args.admin_callers.or(file.admin_callers).map(|ids| {
            ids.into_iter()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty())
                .collect::<Vec<_>>()
        });
        check(
            admin_callers.as_ref().is_none_or(|ids| !ids.is_empty()),
            "admin_callers: lists no caller identity (leave it unset to allow any caller)".into(),
        );
        let mut caller_list = |name: &str, ids: Option<Vec<String>>| {
            let ids = ids.map(|ids| {
                ids.into_iter()
                    .map(|id| id.trim().to_string())
                    .filter(|id| !id.is_empty())
                    .collect::<Vec<_>>()
            });
            check(
                ids.as_ref().is_none_or(|ids| !ids.is_empty()),
                format!("{name}: lists no caller identity (leave it unset to allow any caller)"),
            );
            ids
        };
        let service_callers = ServiceCallers {
            decision: caller_list(
                "decision_callers",
                args.decision_callers.or(file.decision_callers),
            ),
            grant: caller_list("grant_callers", args.grant_callers.or(file.grant_callers)),
            envoy: caller_list("envoy_callers", args.envoy_callers.or(file.envoy_callers)),
        };
        let envoy_entrypoint: Arc<str> = args
            .envoy_entrypoint
            .or(file.envoy_entrypoint)
            .map_or(defaults.policy.envoy_entrypoint.clone(), Into::into);
        check(
            envoy_entrypoint.starts_with("data.") && envoy_entrypoint.len() > 5,
            format!(
                "envoy_entrypoint: {envoy_entrypoint:?} must be a rule path starting with 'data.'"
            ),
        );
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert,
                key,
                client_ca: args.tls_client_ca.or(file.tls_client_ca),
                require_client_cert: args
                    .tls_require_client_cert
                    .or(file.tls_require_client_cert)
                    .unwrap_or(false),
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                check(false, "tls_cert and tls_key: set both or neither".into());
                None
            }
        };
        check(
            tls.as_ref()
                .is_none_or(|t| !t.require_client_cert || t.client_ca.is_some()),
            "tls_require_client_cert: needs tls_client_ca to verify client certificates".into(),
        );
        let grpc_uds_mode = args.grpc_uds_mode.or(file.grpc_uds_mode).and_then(|text| {
            let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o777);
            check(
                mode.is_some(),
                format!("grpc_uds_mode: {text:?} is not an octal file mode such as 0660"),
            );
            mode
        });
        let ephemeral = args.ephemeral.or(file.ephemeral).unwrap_or(false);
        let state_dir = args.state_dir.or(file.state_dir);
        check(
            !(ephemeral && state_dir.is_some()),
            "state_dir: cannot be set together with ephemeral".into(),
        );
        let state_dir = if ephemeral {
            None
        } else {
            state_dir.or(grants_default.store.state_dir.clone())
        };
        let journal = JournalOptions {
            fsync: args
                .journal_fsync
                .or(file.journal_fsync)
                .unwrap_or(grants_default.store.journal.fsync),
            group_commit: args
                .journal_group_commit
                .or(file.journal_group_commit)
                .unwrap_or(grants_default.store.journal.group_commit),
            ..grants_default.store.journal.clone()
        };

        problems.extend(tracing_problems);
        let decision_log = args.decision_log.or(file.decision_log);
        let destination = match decision_log.as_deref() {
            Some("off") => Destination::Off,
            Some("stdout") => Destination::Stdout,
            Some("") => {
                problems.push("decision_log: must be a path, 'stdout' or 'off'".into());
                Destination::Off
            }
            Some(path) => Destination::File(PathBuf::from(path)),
            None => match &state_dir {
                Some(dir) => Destination::File(dir.join("decisions.jsonl")),
                None => Destination::Off,
            },
        };
        let audit_required = args.audit_required.or(file.audit_required).unwrap_or(false);
        if audit_required && destination == Destination::Off && otlp_sink.is_none() {
            problems.push(
                "audit_required: needs a decision log (decision_log is off and decision_log_otlp is false)"
                    .into(),
            );
        }
        let pointers = args
            .decision_log_mask
            .or(file.decision_log_mask)
            .unwrap_or_default();
        let masks = Masks {
            pointers,
            keys: args
                .decision_log_mask_keys
                .or(file.decision_log_mask_keys)
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

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self {
            policies: args.policies.or(file.policies).unwrap_or(defaults.policies),
            bundle,
            bundle_verification,
            grpc_addr,
            grpc_uds,
            http_addr,
            policy: PolicyOptions {
                decision_entrypoint,
                envoy_entrypoint,
                source_limits: SourceLimits {
                    max_file_bytes,
                    max_nesting_depth,
                    ..SourceLimits::default()
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
            log_format,
            max_message_bytes,
            max_batch,
            watch_policies: args
                .watch_policies
                .or(file.watch_policies)
                .unwrap_or(defaults.watch_policies),
            workers,
            shutdown_grace,
            grants: GrantsConfig {
                store: StoreOptions {
                    state_dir,
                    retention: to_delta(retention),
                    revocation_confirm_deadline: to_delta(confirm_deadline),
                    journal,
                    ..grants_default.store.clone()
                },
                sweep_interval,
                approval_timeout,
            },
            admin_callers,
            tracing,
            audit: AuditOptions {
                destination,
                otlp: otlp_sink,
                required: audit_required,
                masks,
                ..AuditOptions::default()
            },
            service_callers,
            envoy_dry_run: args
                .envoy_dry_run
                .or(file.envoy_dry_run)
                .unwrap_or(defaults.envoy_dry_run),
            tls,
            grpc_uds_mode,
            transport,
        })
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

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError(vec![format!(
            "{}: {}",
            path.display(),
            e.to_string().trim()
        )])
    })
}

/// The address a listener binds for `HOST:PORT`: an IP literal as written, or
/// `localhost`, which means 127.0.0.1 as the default does. Other host names are refused
/// rather than resolved: validating the configuration does no I/O (a DNS lookup could
/// stall startup, or bind an address that changes between restarts).
fn listen_address(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let port = text.strip_prefix("localhost:")?.parse().ok()?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{DEFAULT_OTLP_QUEUE, OtlpSinkOptions},
        telemetry::{OtlpExporter, OtlpProtocol, SamplerChoice},
    };

    fn file(toml: &str) -> FileConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn defaults_match_appendix_b() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(config.grpc_addr, Some("127.0.0.1:9191".parse().unwrap()));
        assert_eq!(config.grpc_uds, None);
        assert_eq!(config.http_addr, Some("127.0.0.1:8181".parse().unwrap()));
        assert_eq!(config.policies, PathBuf::from("./policies"));
        assert_eq!(
            &*config.policy.decision_entrypoint,
            "data.stepgate.decision"
        );
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let args = ServeArgs {
            grpc_addr: Some("127.0.0.1:7000".into()),
            ..Default::default()
        };
        let file =
            file("grpc_addr = \"127.0.0.1:8000\"\nmax_batch = 9\neval_timeout = \"250ms\"\n");
        let config = ServeConfig::merge(args, file).unwrap();
        assert_eq!(config.grpc_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(config.max_batch, 9);
        assert_eq!(
            config.policy.eval_limits.timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn listen_addresses_take_host_names() {
        let args = ServeArgs {
            grpc_addr: Some("localhost:9191".into()),
            http_addr: Some("[::1]:8181".into()),
            ..Default::default()
        };
        let config = ServeConfig::merge(args, FileConfig::default()).unwrap();
        assert_eq!(config.grpc_addr, Some("127.0.0.1:9191".parse().unwrap()));
        assert_eq!(config.http_addr, Some("[::1]:8181".parse().unwrap()));
        for bad in [
            "localhost",
            "127.0.0.1",
            ":9191",
            "localhost:port",
            "example.com:80",
        ] {
            let args = ServeArgs {
                grpc_addr: Some(bad.into()),
                ..Default::default()
            };
            let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
            assert!(err.to_string().contains("is not HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn empty_address_turns_the_listener_off() {
        let args = ServeArgs {
            grpc_addr: Some(String::new()),
            grpc_uds: Some("/tmp/s.sock".into()),
            ..Default::default()
        };
        let config = ServeConfig::merge(args, FileConfig::default()).unwrap();
        assert_eq!(config.grpc_addr, None);
        let config = ServeConfig::merge(ServeArgs::default(), file("http_addr = \"\"\n")).unwrap();
        assert_eq!(config.http_addr, None);
        let args = ServeArgs {
            http_addr: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let config = ServeConfig::merge(args, file("http_addr = \"\"\n")).unwrap();
        assert_eq!(config.http_addr, Some("127.0.0.1:0".parse().unwrap()));
        let args = ServeArgs {
            http_addr: Some("localhost".into()),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("http_addr"), "{err}");
        let args = ServeArgs {
            grpc_addr: Some(String::new()),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("no listener"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let args = ServeArgs {
            grpc_addr: Some("localhost".into()),
            log_format: Some("xml".into()),
            max_batch: Some(0),
            eval_timeout: Some("soon".into()),
            decision_entrypoint: Some("stepgate.decision".into()),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
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
    fn evaluation_memory_and_test_limits() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(config.policy.eval_limits.max_memory, 32 << 20);
        assert_eq!(config.policy.heap_limit, Some(192 << 20));
        assert_eq!(config.policy.test_timeout, Duration::from_secs(2));
        let args = ServeArgs {
            eval_memory_limit: Some("512KiB".into()),
            policy_test_timeout: Some("30s".into()),
            ..Default::default()
        };
        let toml = file("eval_heap_limit = \"off\"\neval_memory_limit = \"1GiB\"\n");
        let config = ServeConfig::merge(args, toml).unwrap();
        assert_eq!(config.policy.eval_limits.max_memory, 512 << 10);
        assert_eq!(config.policy.heap_limit, None);
        assert_eq!(config.policy.test_timeout, Duration::from_secs(30));
        let config = ServeConfig::merge(
            ServeArgs::default(),
            file("eval_heap_limit = \"1048576\"\n"),
        )
        .unwrap();
        assert_eq!(config.policy.heap_limit, Some(1 << 20));
        let args = ServeArgs {
            eval_memory_limit: Some("off".into()),
            eval_heap_limit: Some("0".into()),
            policy_test_timeout: Some("0s".into()),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
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

    #[test]
    fn grant_store_settings_and_ephemeral() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(config.grants.store.state_dir, Some(PathBuf::from("./data")));
        assert_eq!(config.grants.sweep_interval, Duration::from_secs(1));
        assert!(config.grants.store.journal.fsync);
        assert_eq!(config.admin_callers, None);

        let args = ServeArgs {
            ephemeral: Some(true),
            sweep_interval: Some("500ms".into()),
            admin_callers: Some(vec!["uds:uid=0".into(), " spiffe://x ".into()]),
            ..Default::default()
        };
        let config = ServeConfig::merge(args, FileConfig::default()).unwrap();
        assert_eq!(config.grants.store.state_dir, None);
        assert_eq!(config.grants.sweep_interval, Duration::from_millis(500));
        assert_eq!(
            config.admin_callers,
            Some(vec!["uds:uid=0".to_string(), "spiffe://x".to_string()])
        );

        let file = file("admin_callers = [\"uds:uid=1000\"]\ngrant_retention = \"1h\"\n");
        let config = ServeConfig::merge(ServeArgs::default(), file).unwrap();
        assert_eq!(config.admin_callers, Some(vec!["uds:uid=1000".to_string()]));
        assert_eq!(config.grants.store.retention, TimeDelta::hours(1));

        let args = ServeArgs {
            ephemeral: Some(true),
            state_dir: Some("/x".into()),
            admin_callers: Some(vec![]),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn tracing_comes_from_flags_then_otel_variables_then_the_file() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
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
        let file = file("otlp_endpoint = \"http://file:4318\"\notel_service_name = \"f\"\n");
        let config = ServeConfig::merge_env(ServeArgs::default(), file.clone(), &env).unwrap();
        assert_eq!(
            config.tracing.exporter,
            Some(OtlpExporter {
                endpoint: None,
                protocol: OtlpProtocol::Grpc
            })
        );
        assert_eq!(config.tracing.service_name, "pdp");
        assert_eq!(config.tracing.sampler, SamplerChoice::TraceIdRatio(0.5));

        let config = ServeConfig::merge(ServeArgs::default(), file.clone()).unwrap();
        assert_eq!(
            config.tracing.exporter,
            Some(OtlpExporter {
                endpoint: Some("http://file:4318".into()),
                protocol: OtlpProtocol::HttpProtobuf
            })
        );
        assert_eq!(config.tracing.service_name, "f");

        let args = ServeArgs {
            otlp_endpoint: Some(String::new()),
            ..Default::default()
        };
        let config = ServeConfig::merge_env(args, file.clone(), &env).unwrap();
        assert_eq!(config.tracing.exporter, None, "'' turns export off");
        let disabled = |name: &str| (name == "OTEL_SDK_DISABLED").then(|| "true".to_string());
        let config = ServeConfig::merge_env(ServeArgs::default(), file, &disabled).unwrap();
        assert_eq!(config.tracing.exporter, None, "OTEL_SDK_DISABLED wins");

        let args = ServeArgs {
            otlp_endpoint: Some("collector:4317".into()),
            otlp_protocol: Some("http/json".into()),
            otel_traces_sampler: Some("often".into()),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn decision_log_defaults_to_the_state_dir_and_is_off_when_ephemeral() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(
            config.audit.destination,
            Destination::File(PathBuf::from("./data/decisions.jsonl"))
        );
        assert!(!config.audit.required);
        assert_eq!(config.audit.masks, Masks::default());
        let args = ServeArgs {
            ephemeral: Some(true),
            ..Default::default()
        };
        let config = ServeConfig::merge(args, FileConfig::default()).unwrap();
        assert_eq!(config.audit.destination, Destination::Off);
        let args = ServeArgs {
            ephemeral: Some(true),
            decision_log: Some("stdout".into()),
            audit_required: Some(true),
            decision_log_mask: Some(vec!["/agent/arguments/query".into()]),
            ..Default::default()
        };
        let config =
            ServeConfig::merge(args, file("decision_log_mask_keys = [\"Pass-Phrase\"]\n")).unwrap();
        assert_eq!(config.audit.destination, Destination::Stdout);
        assert!(config.audit.required);
        assert_eq!(config.audit.masks.pointers, ["/agent/arguments/query"]);
        assert_eq!(config.audit.masks.keys, ["pass_phrase"]);

        let args = ServeArgs {
            decision_log: Some("off".into()),
            audit_required: Some(true),
            decision_log_mask: Some(vec!["agent".into()]),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0.contains(
                &"decision_log_mask: \"agent\" is not a JSON pointer (it starts with '/')".into()
            ),
            "{err}"
        );

        let args = ServeArgs {
            decision_log_mask: Some((0..65).map(|i| format!("/p{i}")).collect()),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert_eq!(err.0, ["decision_log_mask: at most 64 pointers"]);
    }

    #[test]
    fn decision_records_go_over_otlp_to_the_logs_collector_when_asked() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
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
        let args = || ServeArgs {
            decision_log_otlp: Some(true),
            ..Default::default()
        };
        let config = ServeConfig::merge_env(args(), FileConfig::default(), &env).unwrap();
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
        let args_with_endpoint = ServeArgs {
            otlp_endpoint: Some("http://collector:4318".into()),
            ..args()
        };
        let config =
            ServeConfig::merge(args_with_endpoint, file("otlp_protocol = \"grpc\"\n")).unwrap();
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
        let config = ServeConfig::merge(args(), FileConfig::default()).unwrap();
        assert_eq!(
            config.audit.otlp.unwrap().exporter,
            OtlpExporter {
                endpoint: None,
                protocol: OtlpProtocol::HttpProtobuf,
            }
        );

        // The OTLP sink alone is a decision log that audit can require.
        let config = ServeConfig::merge(
            ServeArgs {
                ephemeral: Some(true),
                ..Default::default()
            },
            file("decision_log_otlp = true\ndecision_log_otlp_queue = 16\naudit_required = true\n"),
        )
        .unwrap();
        assert_eq!(config.audit.destination, Destination::Off);
        assert!(config.audit.required);
        assert_eq!(config.audit.otlp.unwrap().queue, 16);

        // A bad collector URL is one problem, though both signals read it.
        let args_bad = ServeArgs {
            otlp_endpoint: Some("collector:4317".into()),
            decision_log_otlp_queue: Some(0),
            ..args()
        };
        let err = ServeConfig::merge(args_bad, FileConfig::default()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(
            err.0
                .contains(&"decision_log_otlp_queue: must be between 1 and 1048576".into()),
            "{err}"
        );
    }

    #[test]
    fn transport_limits_come_from_flags_and_the_file() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(config.transport, TransportLimits::default());
        let args = ServeArgs {
            max_connections: Some(32),
            idle_timeout: Some("90s".into()),
            ..Default::default()
        };
        let file = file(
            "max_concurrent_streams = 8\nhandshake_timeout = \"2s\"\nrequest_timeout = \"3s\"\nkeepalive_interval = \"15s\"\nkeepalive_timeout = \"5s\"\n",
        );
        let transport = ServeConfig::merge(args, file).unwrap().transport;
        assert_eq!(
            transport,
            TransportLimits {
                max_connections: 32,
                max_concurrent_streams: 8,
                handshake_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(3),
                idle_timeout: Duration::from_secs(90),
                keepalive_interval: Duration::from_secs(15),
                keepalive_timeout: Duration::from_secs(5),
                max_buffered_request_bytes: 64 * 1024 * 1024,
                max_concurrent_calls: 1024,
            }
        );
        let args = ServeArgs {
            max_connections: Some(0),
            idle_timeout: Some("never".into()),
            max_buffered_request_bytes: Some(1000),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stepgate.toml");
        std::fs::write(&path, "grpc_adr = \"x\"\n").unwrap();
        let err = ServeConfig::from_args(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("grpc_adr"), "{err}");
    }

    #[test]
    fn envoy_tls_socket_mode_and_caller_lists() {
        let config = ServeConfig::merge(ServeArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(&*config.policy.envoy_entrypoint, "data.envoy.authz.allow");
        assert!(!config.envoy_dry_run);
        assert_eq!(config.tls, None);
        assert_eq!(config.grpc_uds_mode, None);
        assert_eq!(config.service_callers, ServiceCallers::default());

        let file = file(
            "envoy_entrypoint = \"data.gate.allow\"\nenvoy_dry_run = true\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\ntls_require_client_cert = true\ngrpc_uds_mode = \"0660\"\nenvoy_callers = [\"uds:uid=101\"]\n",
        );
        let args = ServeArgs {
            decision_callers: Some(vec!["spiffe://a".into(), " spiffe://b ".into()]),
            ..Default::default()
        };
        let config = ServeConfig::merge(args, file).unwrap();
        assert_eq!(&*config.policy.envoy_entrypoint, "data.gate.allow");
        assert!(config.envoy_dry_run);
        assert_eq!(
            config.tls,
            Some(TlsConfig {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: Some("ca.pem".into()),
                require_client_cert: true,
            })
        );
        assert_eq!(config.grpc_uds_mode, Some(0o660));
        assert_eq!(
            config.service_callers.decision,
            Some(vec!["spiffe://a".to_string(), "spiffe://b".to_string()])
        );
        assert_eq!(
            config.service_callers.envoy,
            Some(vec!["uds:uid=101".to_string()])
        );
        assert_eq!(config.service_callers.grant, None);

        let args = ServeArgs {
            envoy_entrypoint: Some("envoy.authz.allow".into()),
            tls_cert: Some("c.pem".into()),
            tls_require_client_cert: Some(true),
            grpc_uds_mode: Some("0999".into()),
            grant_callers: Some(vec![" ".into()]),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        for field in [
            "envoy_entrypoint",
            "tls_cert and tls_key",
            "grpc_uds_mode",
            "grant_callers",
        ] {
            assert!(
                err.to_string().contains(field),
                "{field} missing from {err}"
            );
        }
        let args = ServeArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_require_client_cert: Some(true),
            ..Default::default()
        };
        let err = ServeConfig::merge(args, FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("tls_client_ca"), "{err}");
    }
}
