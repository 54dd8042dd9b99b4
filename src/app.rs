//! Wiring: one function builds the core parts (policy store, decision pipeline) from a
//! [`ServeConfig`], binds the listeners, and runs the server until a shutdown signal.
//!
//! Serving starts before policies load, so probes see NOT_SERVING rather than a refused
//! connection; decisions made before the first revision loads deny (fail closed).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpListener, UnixListener};

use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::task::JoinHandle;

use crate::{
    api::{
        AdminCallers, CallLimit, CallerAllowList, DecisionApi, ExtAuthzApi, GrantApi, GrpcServer,
        GrpcServices, HttpServer, HttpState, Listeners, ReloadingTls, RequestBudget, ServerLimits,
        TlsError, TlsWatcher, fit_descriptor_limit, http_router,
    },
    audit::{DecisionLog, Destination},
    clock::{Clock, SystemClock},
    config::ServeConfig,
    decision::DecisionPipeline,
    grants::{MemoryGrantStore, StoreError, Sweeper, spawn_sweeper},
    policy::{
        BundlePoller, BundleVerifier, ClientError, KeyError, LoadError, PolicyStore, PolicyWatcher,
        spawn_poller, watch_policies,
    },
    telemetry::{ExporterError, Telemetry, Tracer, spawn_lifecycle_spans, tracer_provider},
    workflow::GrantSteps,
};

/// How long file-change events must be quiet before a reload.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address or path.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The policy directory or bundle does not exist: refused before any listener opens.
    #[error("cannot load policies from {}: no such directory or bundle (set --policies)", dir.display())]
    NoPolicies {
        /// The path given.
        dir: PathBuf,
    },
    /// The initial policy set could not be loaded.
    #[error("cannot load policies from {}: {source}", dir.display())]
    Policies {
        /// The policy directory.
        dir: PathBuf,
        /// What is wrong with it.
        source: LoadError,
    },
    /// The bundle verification key could not be read.
    #[error("bundle_verification_key: {0}")]
    BundleKey(#[from] KeyError),
    /// The bundle server client could not be built.
    #[error(transparent)]
    BundleClient(#[from] ClientError),
    /// The grant store could not be opened (journal unreadable or corrupt).
    #[error("cannot open the grant store in {}: {source}", dir.display())]
    Grants {
        /// The state directory.
        dir: PathBuf,
        /// What is wrong.
        source: StoreError,
    },
    /// The policy watcher could not start.
    #[error("cannot watch {}: {source}", dir.display())]
    Watch {
        /// The policy directory.
        dir: PathBuf,
        /// The underlying error.
        source: notify::Error,
    },
    /// The TLS certificate, key or client CA could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Server(String),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(io::Error),
    /// The span exporter could not be built.
    #[error(transparent)]
    Exporter(#[from] ExporterError),
    /// The decision log could not be opened.
    #[error("cannot open the decision log {what}: {source}")]
    DecisionLog {
        /// The destination.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Parts a caller may supply instead of the ones the configuration describes (tests:
/// a manual clock, an in-memory span exporter, a decision log to a test's writer).
#[derive(Default)]
pub struct Overrides {
    /// The clock (default: the system clock).
    pub clock: Option<Arc<dyn Clock>>,
    /// The tracer provider (default: built from `config.tracing`).
    pub tracer_provider: Option<SdkTracerProvider>,
    /// The decision log (default: opened from `config.audit`).
    pub decision_log: Option<DecisionLog>,
}

/// A configured server with its listeners bound, not yet serving.
pub struct App {
    config: ServeConfig,
    policies: Arc<PolicyStore>,
    grants: Arc<MemoryGrantStore>,
    clock: Arc<dyn Clock>,
    pipeline: Arc<DecisionPipeline>,
    listeners: Listeners,
    http: Option<TcpListener>,
    tracer_provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("grants", &self.grants)
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the parts and binds the listeners, reading time from the system clock.
    pub async fn bind(config: ServeConfig) -> Result<Self, AppError> {
        Self::bind_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`App::bind`], with an injected clock (tests).
    pub async fn bind_with_clock(
        config: ServeConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        let overrides = Overrides {
            clock: Some(clock),
            ..Overrides::default()
        };
        Self::bind_with(config, overrides).await
    }

    /// As [`App::bind`], with parts supplied by the caller.
    pub async fn bind_with(
        mut config: ServeConfig,
        overrides: Overrides,
    ) -> Result<Self, AppError> {
        if config.bundle.is_none() && !config.policies.exists() {
            return Err(AppError::NoPolicies {
                dir: config.policies.clone(),
            });
        }
        if let Some(key) = &config.bundle_verification {
            let verifier =
                BundleVerifier::load(&key.key, key.alg, key.key_id.clone(), key.scope.clone())?;
            tracing::info!(key = %key.key.display(), alg = verifier.alg().name(), "bundles must be signed");
            config.policy.bundle_verifier = Some(Arc::new(verifier));
        }
        let clock = overrides.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let policies = Arc::new(match &config.bundle {
            Some(bundle) => PolicyStore::remote(bundle.url.clone(), config.policy.clone()),
            None => PolicyStore::new(config.policies.clone(), config.policy.clone()),
        });
        let grants = open_grants(&config, clock.clone())?;
        let tracer_provider = match overrides.tracer_provider {
            Some(provider) => Some(provider),
            None => tracer_provider(&config.tracing)?,
        };
        let tracer = tracer_provider
            .as_ref()
            .map_or_else(Tracer::disabled, Tracer::from_provider);
        let decision_log = match overrides.decision_log {
            Some(log) => Some(log),
            None => open_decision_log(&config)?,
        };
        let pipeline = Arc::new(
            DecisionPipeline::new(
                policies.clone(),
                grants.clone(),
                clock.clone(),
                config.max_batch,
            )
            .with_telemetry(Arc::new(Telemetry::with_tracer(tracer)))
            .with_decision_log(decision_log.map(Arc::new)),
        );
        let mut listeners = Listeners::default();
        if let Some(addr) = config.grpc_addr {
            listeners.tcp = Some(bind_tcp(addr).await?);
        }
        if let Some(path) = &config.grpc_uds {
            listeners.uds = Some((bind_unix(path, config.grpc_uds_mode)?, path.clone()));
        }
        if let Some(tls) = &config.tls {
            listeners.tls = Some(ReloadingTls::load(tls.clone())?);
        }
        let http = match config.http_addr {
            Some(addr) => Some(bind_tcp(addr).await?),
            None => None,
        };
        Ok(Self {
            config,
            policies,
            grants,
            clock,
            pipeline,
            listeners,
            http,
            tracer_provider,
        })
    }

    /// The bound gRPC TCP address, if TCP is on.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.listeners.tcp_addr()
    }

    /// The gRPC Unix socket path, if on.
    pub fn grpc_uds(&self) -> Option<&Path> {
        self.config.grpc_uds.as_deref()
    }

    /// The bound HTTP address, if the HTTP listener is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts serving (health NOT_SERVING until policies load) and sweeping grants.
    /// With a bundle server, polling starts too, and health turns SERVING once its first
    /// bundle activates.
    pub async fn start(self) -> Result<RunningApp, AppError> {
        // Reload triggers start before serving and before the first load, so that an
        // early SIGHUP reloads (or polls) rather than kills the process.
        let (watcher, bundles) = match &self.config.bundle {
            Some(bundle) => {
                let poller = spawn_poller(
                    self.policies.clone(),
                    bundle.clone(),
                    self.pipeline.clock().clone(),
                )?;
                tracing::info!(url = %bundle.url, "polling the bundle server for policies");
                self.pipeline
                    .telemetry()
                    .watch_bundles(poller.stats().clone());
                (None, Some(poller))
            }
            None => {
                let watcher = watch_policies(
                    self.policies.clone(),
                    self.config.watch_policies,
                    RELOAD_DEBOUNCE,
                )
                .map_err(|source| AppError::Watch {
                    dir: self.config.policies.clone(),
                    source,
                })?;
                (Some(watcher), None)
            }
        };
        let admins = AdminCallers::from_config(self.config.admin_callers.as_deref());
        if self.config.admin_callers.is_none() {
            tracing::warn!(
                "--admin-callers is not set: Approve, Reject, Revoke and ConfirmRevocation are open to every caller that reaches the listener"
            );
        }
        let tls_watcher = match &self.listeners.tls {
            Some(tls) => Some(tls.watch().map_err(|source| {
                AppError::Watch {
                    dir: self
                        .config
                        .tls
                        .as_ref()
                        .map(|t| t.cert.clone())
                        .unwrap_or_default(),
                    source,
                }
            })?),
            None => None,
        };
        let callers = &self.config.service_callers;
        let steps = Arc::new(GrantSteps::new(
            self.pipeline.clone(),
            self.grants.clone(),
            self.clock.clone(),
            self.config.grants.approval_timeout,
        ));
        let listeners = [
            self.listeners.tcp.is_some(),
            self.listeners.uds.is_some(),
            self.http.is_some(),
        ];
        let mut transport = self.config.transport;
        transport.max_connections = fit_descriptor_limit(
            transport.max_connections,
            listeners.iter().filter(|on| **on).count(),
        );
        let limits = ServerLimits {
            max_message_bytes: self.config.max_message_bytes,
            transport,
        };
        let metrics = self.pipeline.telemetry().metrics();
        let budget = RequestBudget::new(
            transport.max_buffered_request_bytes,
            metrics.request_budget_refusals(),
        );
        let calls = CallLimit::new(
            transport.max_concurrent_calls,
            metrics.call_limit_refusals(),
        );
        let services = GrpcServices {
            decisions: DecisionApi::new(self.pipeline.clone()),
            grants: GrantApi::new(steps, admins),
            ext_authz: ExtAuthzApi::new(self.pipeline.clone(), self.config.envoy_dry_run),
            decision_callers: CallerAllowList::from_config(callers.decision.as_deref()),
            grant_callers: CallerAllowList::from_config(callers.grant.as_deref()),
            envoy_callers: CallerAllowList::from_config(callers.envoy.as_deref()),
        };
        let http_tls = self.listeners.tls.clone();
        let server = GrpcServer::start(
            services,
            self.listeners,
            limits,
            metrics,
            (budget.clone(), calls),
        )
        .await
        .map_err(|e| AppError::Server(e.to_string()))?;
        let http = self.http.map(|listener| {
            let state = HttpState {
                pipeline: self.pipeline.clone(),
                decision_callers: CallerAllowList::from_config(callers.decision.as_deref()),
                max_body_bytes: self.config.max_message_bytes,
            };
            HttpServer::start(
                listener,
                http_router(state),
                http_tls.clone(),
                (transport, budget.clone()),
                metrics.listener("http"),
            )
        });
        let sweeper = spawn_sweeper(
            self.grants.clone(),
            self.clock.clone(),
            self.config.grants.sweep_interval,
        );
        let telemetry = self.pipeline.telemetry();
        telemetry.watch_sweeper(sweeper.stats().clone());
        let lifecycle = spawn_lifecycle_spans(telemetry.tracer().clone(), self.grants.subscribe());
        let serve_on_first_bundle = bundles.as_ref().map(|poller| {
            let switch = server.serving_switch();
            let activated = poller.first_activation();
            tokio::spawn(async move {
                activated.await;
                switch.set(true).await;
            })
        });
        Ok(RunningApp {
            config: self.config,
            policies: self.policies,
            grants: self.grants,
            pipeline: self.pipeline,
            server,
            http,
            sweeper,
            lifecycle,
            tracer_provider: self.tracer_provider,
            bundles,
            serve_on_first_bundle,
            _watcher: watcher,
            _tls_watcher: tls_watcher,
        })
    }
}

/// Opens the grant store: replays the journal (grants that ended while stepgate was down
/// are EXPIRED now) or starts empty when ephemeral.
fn open_grants(
    config: &ServeConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<MemoryGrantStore>, AppError> {
    let options = config.grants.store.clone();
    let dir = options.state_dir.clone();
    let (store, replayed) =
        MemoryGrantStore::open(options, clock).map_err(|source| AppError::Grants {
            dir: dir.clone().unwrap_or_default(),
            source,
        })?;
    match &dir {
        Some(dir) => tracing::info!(
            dir = %dir.display(),
            grants = store.len(),
            expired_while_down = replayed.len(),
            "grant journal replayed"
        ),
        None => tracing::info!("grants are in memory only (--ephemeral): a restart loses them"),
    }
    Ok(Arc::new(store))
}

/// A serving server.
#[derive(Debug)]
pub struct RunningApp {
    config: ServeConfig,
    policies: Arc<PolicyStore>,
    grants: Arc<MemoryGrantStore>,
    pipeline: Arc<DecisionPipeline>,
    server: GrpcServer,
    http: Option<HttpServer>,
    sweeper: Sweeper,
    lifecycle: Option<JoinHandle<()>>,
    tracer_provider: Option<SdkTracerProvider>,
    /// The bundle server's poller, when policies come from one.
    bundles: Option<BundlePoller>,
    /// Reports SERVING once the bundle server's first bundle activates.
    serve_on_first_bundle: Option<JoinHandle<()>>,
    _watcher: Option<PolicyWatcher>,
    _tls_watcher: Option<TlsWatcher>,
}

impl RunningApp {
    /// Loads the policy directory (off the async workers) and reports SERVING. Returns
    /// the loaded revision. With a bundle server, waits until its first bundle is
    /// activated instead (which may be never, while the server is down).
    pub async fn load_policies(&mut self) -> Result<Arc<str>, AppError> {
        if let Some(poller) = &self.bundles {
            poller.first_activation().await;
            self.server.set_serving(true).await;
            return Ok(self
                .policies
                .current()
                .as_ref()
                .map_or_else(|| Arc::from("none"), |set| set.revision().clone()));
        }
        let policies = self.policies.clone();
        let loaded = tokio::task::spawn_blocking(move || policies.reload())
            .await
            .map_err(|e| AppError::Server(format!("policy loader failed: {e}")))?;
        let revision = loaded.map_err(|source| AppError::Policies {
            dir: self.config.policies.clone(),
            source,
        })?;
        self.server.set_serving(true).await;
        Ok(revision)
    }

    /// The policy store (to reload or inspect the serving revision).
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The bundle server's poller, when policies come from one.
    pub fn bundles(&self) -> Option<&BundlePoller> {
        self.bundles.as_ref()
    }

    /// The grant store.
    pub fn grants(&self) -> &Arc<MemoryGrantStore> {
        &self.grants
    }

    /// The HTTP address served on, if the HTTP listener is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(HttpServer::addr)
    }

    /// The decision pipeline (its telemetry and decision log).
    pub fn pipeline(&self) -> &Arc<DecisionPipeline> {
        &self.pipeline
    }

    /// Reports NOT_SERVING, stops accepting calls and drains in-flight ones (for at most
    /// the configured grace period), then stops the sweeper, syncs the journal, flushes
    /// the decision log (and exports its OTLP queue, for a bounded time) and exports the
    /// spans still buffered.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        // No poll and no late SERVING once shutdown has begun.
        if let Some(task) = self.serve_on_first_bundle.take() {
            task.abort();
        }
        drop(self.bundles.take());
        let grace = self.config.shutdown_grace;
        // Both listeners drain at once, so shutdown takes at most one grace period.
        let http = async {
            match self.http {
                Some(http) => http.shutdown(grace).await.map_err(AppError::Http),
                None => Ok(()),
            }
        };
        let (grpc, http) = tokio::join!(self.server.shutdown(grace), http);
        let drained = grpc.map_err(|e| AppError::Server(e.to_string())).and(http);
        self.sweeper.stop().await;
        if let Some(journal) = self.grants.journal()
            && let Err(err) = journal.sync()
        {
            tracing::error!(error = %err, "grant journal sync at shutdown failed");
        }
        if let Some(lifecycle) = self.lifecycle {
            lifecycle.abort();
        }
        if let Some(log) = self.pipeline.decision_log() {
            log.close().await;
        }
        if let Some(provider) = self.tracer_provider {
            // Export blocks (the batch processor's thread waits on the collector).
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = flushed {
                tracing::warn!(error = %err, "span export at shutdown failed");
            }
        }
        if let Some(path) = &self.config.grpc_uds {
            let _ = std::fs::remove_file(path);
        }
        drained
    }
}

/// Runs `stepgate serve` until `shutdown` resolves: bind, serve, load policies (a bad
/// initial set stops the server with an error; a bundle server's first bundle is waited
/// for while serving NOT_SERVING), then drain on shutdown.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let app = App::bind(config).await?;
    if let Some(addr) = app.grpc_addr() {
        tracing::info!(%addr, "gRPC listening on TCP");
    }
    if let Some(path) = app.grpc_uds() {
        tracing::info!(path = %path.display(), "gRPC listening on a Unix socket");
    }
    if let Some(addr) = app.http_addr() {
        tracing::info!(%addr, "HTTP listening (/health, /metrics)");
    }
    let mut running = app.start().await?;
    if running.bundles().is_none()
        && let Err(err) = running.load_policies().await
    {
        let _ = running.shutdown().await;
        return Err(err);
    }
    shutdown.await;
    tracing::info!("shutting down: draining in-flight calls");
    running.shutdown().await
}

/// Opens the decision log the configuration names (`None` when off).
fn open_decision_log(config: &ServeConfig) -> Result<Option<DecisionLog>, AppError> {
    let audit = &config.audit;
    let log = DecisionLog::open(audit).map_err(|source| AppError::DecisionLog {
        what: match &audit.destination {
            Destination::File(path) => path.display().to_string(),
            Destination::Off => "OTLP sink".into(),
            other => format!("{other:?}"),
        },
        source,
    })?;
    if log.is_none() {
        return Ok(None);
    }
    match &audit.destination {
        Destination::File(path) => tracing::info!(
            path = %path.display(),
            required = audit.required,
            "decision log"
        ),
        Destination::Stdout => {
            tracing::info!(required = audit.required, "decision log on stdout");
        }
        Destination::Off => {}
    }
    if let Some(otlp) = &audit.otlp {
        tracing::info!(
            endpoint = otlp
                .exporter
                .endpoint
                .as_deref()
                .unwrap_or("OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT, else localhost"),
            protocol = ?otlp.exporter.protocol,
            queue = otlp.queue,
            required = audit.required,
            "decision records exported over OTLP"
        );
    }
    Ok(log)
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind {
            what: addr.to_string(),
            source,
        })
}

/// Binds a Unix socket, replacing a stale socket file but never any other file, and
/// gives it `mode` (who may connect) when set.
fn bind_unix(path: &Path, mode: Option<u32>) -> Result<UnixListener, AppError> {
    use std::os::unix::fs::FileTypeExt;
    let bind_err = |source| AppError::Bind {
        what: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bind_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    }
    Ok(listener)
}
