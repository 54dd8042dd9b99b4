//! Policies from an OPA-compatible bundle server: `GET` the bundle URL every
//! `poll_min`..`poll_max` (jittered, as OPA's `min_delay_seconds`/`max_delay_seconds`),
//! with `If-None-Match` so an unchanged bundle costs a `304`, and hand a new one to the
//! store's guarded activation. A bundle that is too large, malformed, unsigned or badly
//! signed (with a key configured), or that does not compile or pass its tests, is
//! refused and the previous revision keeps serving; every poll is counted by outcome.
//!
//! The poll runs on the async runtime (the download is async; reading, verifying and
//! compiling run on a blocking thread), and a server that is down does not stop
//! stepgate: it retries with a bounded backoff.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use reqwest::{StatusCode, header};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{LoadError, PolicySource, PolicyStore, SignatureError};
use crate::clock::Clock;

/// Where and how often bundles are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleServerOptions {
    /// The bundle's URL (`http://` or `https://`).
    pub url: String,
    /// Shortest wait between polls.
    pub poll_min: Duration,
    /// Longest wait between polls (and the cap of the retry backoff).
    pub poll_max: Duration,
    /// Longest one request may take, connecting and downloading included.
    pub timeout: Duration,
    /// A file holding the bearer token sent as `Authorization` (re-read every poll, so a
    /// rotated token is picked up).
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an `https://` server, beside the system's.
    pub ca_cert: Option<PathBuf>,
}

/// What one poll came to: the `outcome` label of `stepgate_bundle_polls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleOutcome {
    /// A new revision serves.
    Activated,
    /// The bundle was downloaded and is the set already serving.
    Unchanged,
    /// `304 Not Modified`: the ETag still matches.
    NotModified,
    /// The server could not be reached, answered another status, or the request could
    /// not be made (e.g. the token file is unreadable).
    DownloadFailed,
    /// The download or a file in it is over its size bound.
    TooLarge,
    /// Not a well-formed bundle (archive, paths, manifest, encoding).
    Malformed,
    /// No signature while a verification key is configured.
    Unsigned,
    /// The signature does not verify (or the bundle is signed and no key is configured).
    BadSignature,
    /// A file is not covered by the signature, or differs from the signed one.
    BadDigest,
    /// The policy set does not pass the guards, compile, or pass its tests.
    Rejected,
}

impl BundleOutcome {
    /// Every outcome, in label order.
    pub const ALL: [Self; 10] = [
        Self::Activated,
        Self::Unchanged,
        Self::NotModified,
        Self::DownloadFailed,
        Self::TooLarge,
        Self::Malformed,
        Self::Unsigned,
        Self::BadSignature,
        Self::BadDigest,
        Self::Rejected,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Unchanged => "unchanged",
            Self::NotModified => "not_modified",
            Self::DownloadFailed => "download_failed",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::BadDigest => "bad_digest",
            Self::Rejected => "rejected",
        }
    }

    /// Whether the poll left the bundle server's current bundle serving.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Activated | Self::Unchanged | Self::NotModified)
    }

    /// Why a downloaded bundle was refused.
    fn of_refusal(err: &LoadError) -> Self {
        match err {
            LoadError::Signature { source, .. } => match source {
                SignatureError::Unsigned => Self::Unsigned,
                SignatureError::NoKey
                | SignatureError::Invalid(_)
                | SignatureError::KeyId { .. }
                | SignatureError::Scope { .. } => Self::BadSignature,
                SignatureError::Unlisted(_)
                | SignatureError::Digest(_)
                | SignatureError::Missing(_) => Self::BadDigest,
            },
            LoadError::TooLarge { .. } | LoadError::TooManyFiles { .. } => Self::TooLarge,
            LoadError::Bundle { .. } | LoadError::NotUtf8(_) | LoadError::Io { .. } => {
                Self::Malformed
            }
            _ => Self::Rejected,
        }
    }
}

/// The bundle server's state as `/health` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleStatus {
    /// The bundle's URL.
    pub url: String,
    /// The ETag of the bundle serving (sent as `If-None-Match`).
    pub etag: Option<String>,
    /// When the last poll started.
    pub last_request: Option<DateTime<Utc>>,
    /// When a poll last downloaded a bundle or learnt it was unchanged.
    pub last_successful_request: Option<DateTime<Utc>>,
    /// When a bundle was last activated.
    pub last_successful_activation: Option<DateTime<Utc>>,
    /// The last poll's outcome.
    pub last_outcome: Option<BundleOutcome>,
    /// Why the last poll failed; `None` once one succeeds.
    pub last_error: Option<String>,
}

/// Counts of polls by outcome and the status, shared with `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct BundleStats {
    polls: [AtomicU64; BundleOutcome::ALL.len()],
    status: Mutex<BundleStatus>,
}

impl BundleStats {
    fn new(url: &str) -> Self {
        let stats = Self::default();
        stats.update(|status| status.url = url.into());
        stats
    }

    /// Polls so far, in [`BundleOutcome::ALL`] order.
    pub fn polls(&self) -> [u64; BundleOutcome::ALL.len()] {
        std::array::from_fn(|i| self.polls[i].load(Ordering::Relaxed))
    }

    /// The status now (a copy).
    pub fn status(&self) -> BundleStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut BundleStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn count(&self, outcome: BundleOutcome) {
        if let Some(i) = BundleOutcome::ALL.iter().position(|o| *o == outcome) {
            self.polls[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why the bundle client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("bundle server client: {0}")]
pub struct ClientError(String);

/// Keeps the poller running; dropping it stops it.
#[derive(Debug)]
pub struct BundlePoller {
    task: JoinHandle<()>,
    trigger: mpsc::Sender<oneshot::Sender<BundleOutcome>>,
    stats: Arc<BundleStats>,
    activated: watch::Receiver<bool>,
}

impl Drop for BundlePoller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BundlePoller {
    /// The poll counts and status.
    pub fn stats(&self) -> &Arc<BundleStats> {
        &self.stats
    }

    /// Polls at once (as SIGHUP does) and returns the outcome once the poll is done;
    /// `None` if the poller has stopped.
    pub async fn poll_now(&self) -> Option<BundleOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.trigger.send(reply).await.ok()?;
        outcome.await.ok()
    }

    /// Resolves once a bundle has been activated (at once if one has been), or the
    /// poller has stopped.
    pub fn first_activation(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut activated = self.activated.clone();
        async move {
            let _ = activated.wait_for(|done| *done).await;
        }
    }
}

/// Starts polling `options.url` into `store` (must be called inside a Tokio runtime).
/// The first poll starts at once; status times come from `clock`.
pub fn spawn_poller(
    store: Arc<PolicyStore>,
    options: BundleServerOptions,
    clock: Arc<dyn Clock>,
) -> Result<BundlePoller, ClientError> {
    let client = client(&options)?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| ClientError(format!("cannot handle SIGHUP: {e}")))?;
    let stats = Arc::new(BundleStats::new(&options.url));
    let (trigger, triggers) = mpsc::channel(8);
    let (activated_tx, activated) = watch::channel(false);
    let poller = Poller {
        client,
        store,
        options,
        clock,
        stats: stats.clone(),
        etag: None,
        activated: activated_tx,
    };
    let task = tokio::spawn(poller.run(triggers, hangup));
    Ok(BundlePoller {
        task,
        trigger,
        stats,
        activated,
    })
}

/// The HTTP client: rustls (with ring, as the listeners) over the system's roots and the
/// configured CA, the request timeout, a few redirects at most.
fn client(options: &BundleServerOptions) -> Result<reqwest::Client, ClientError> {
    crate::install_rustls_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("stepgate/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &options.ca_cert {
        let pem =
            std::fs::read(path).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build().map_err(|e| ClientError(e.to_string()))
}

/// The first retry after a failed download waits this long; each next one twice as long,
/// up to `poll_max`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Largest accepted bearer token file.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Longest error message `/health` keeps.
const MAX_ERROR_CHARS: usize = 1024;

struct Poller {
    client: reqwest::Client,
    store: Arc<PolicyStore>,
    options: BundleServerOptions,
    clock: Arc<dyn Clock>,
    stats: Arc<BundleStats>,
    /// The ETag of the bundle serving.
    etag: Option<String>,
    activated: watch::Sender<bool>,
}

impl Poller {
    async fn run(
        mut self,
        mut triggers: mpsc::Receiver<oneshot::Sender<BundleOutcome>>,
        mut hangup: tokio::signal::unix::Signal,
    ) {
        let mut delay = Duration::ZERO;
        let mut failures = 0u32;
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                Some(reply) = triggers.recv() => waiting.push(reply),
                _ = hangup.recv() => tracing::info!("SIGHUP: polling the bundle server"),
            }
            while let Ok(reply) = triggers.try_recv() {
                waiting.push(reply);
            }
            let outcome = self.poll().await;
            for reply in waiting.drain(..) {
                let _ = reply.send(outcome);
            }
            delay = if outcome == BundleOutcome::DownloadFailed {
                failures = failures.saturating_add(1);
                self.retry_delay(failures)
            } else {
                failures = 0;
                self.poll_delay()
            };
        }
    }

    /// A wait drawn evenly from `poll_min..=poll_max`, so many sidecars do not poll in
    /// step.
    fn poll_delay(&self) -> Duration {
        let (min, max) = (self.options.poll_min, self.options.poll_max);
        min + max.saturating_sub(min).mul_f64(fastrand::f64())
    }

    /// Exponential backoff from [`FIRST_RETRY`], capped at `poll_max`, ±10% jitter.
    fn retry_delay(&self, failures: u32) -> Duration {
        let doubled = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(20));
        let capped = doubled.min(self.options.poll_max);
        capped
            .mul_f64(0.9 + 0.2 * fastrand::f64())
            .min(self.options.poll_max)
    }

    /// One poll: download (unless not modified), then activate; counted and recorded.
    async fn poll(&mut self) -> BundleOutcome {
        let now = self.clock.now();
        self.stats.update(|s| s.last_request = Some(now));
        let (outcome, error) = match self.download().await {
            Err((outcome, error)) => {
                // A refused bundle is logged by the store; a failed download here.
                tracing::warn!(
                    url = %self.options.url,
                    outcome = outcome.label(),
                    %error,
                    "bundle download failed; the serving revision is unchanged"
                );
                (outcome, Some(error))
            }
            Ok(None) => (BundleOutcome::NotModified, None),
            Ok(Some((bytes, etag))) => match self.activate(bytes).await {
                Ok(changed) => {
                    self.etag = etag;
                    let outcome = if changed {
                        BundleOutcome::Activated
                    } else {
                        BundleOutcome::Unchanged
                    };
                    (outcome, None)
                }
                Err((outcome, error)) => (outcome, Some(error)),
            },
        };
        self.stats.count(outcome);
        let finished = self.clock.now();
        let etag = self.etag.clone();
        self.stats.update(|s| {
            s.last_outcome = Some(outcome);
            s.etag = etag;
            if outcome.is_success() {
                s.last_successful_request = Some(finished);
                s.last_error = None;
            }
            if outcome == BundleOutcome::Activated {
                s.last_successful_activation = Some(finished);
            }
            if let Some(error) = &error {
                s.last_error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
            }
        });
        if outcome == BundleOutcome::Activated {
            self.activated.send_replace(true);
        }
        outcome
    }

    /// The bundle's bytes and ETag, or `None` when the server says it is unchanged.
    async fn download(&self) -> Result<Option<(Vec<u8>, Option<String>)>, (BundleOutcome, String)> {
        let failed = |e: String| (BundleOutcome::DownloadFailed, e);
        let mut request = self.client.get(&self.options.url);
        if let Some(etag) = &self.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(path) = &self.options.bearer_token_file {
            let token = read_token(path).await.map_err(failed)?;
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| failed(describe(&e)))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(None),
            StatusCode::OK => {}
            status => return Err(failed(format!("the server answered {status}"))),
        }
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let limit = self.store.options().source_limits.max_bundle_bytes;
        let too_large = || {
            (
                BundleOutcome::TooLarge,
                format!("the bundle is over the {limit}-byte limit"),
            )
        };
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(describe(&e)))? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some((bytes, etag)))
    }

    /// Reads, verifies and activates `bytes` off the async workers; whether the serving
    /// set changed.
    async fn activate(&self, bytes: Vec<u8>) -> Result<bool, (BundleOutcome, String)> {
        let store = self.store.clone();
        let url = self.options.url.clone();
        let activated = tokio::task::spawn_blocking(move || {
            let options = store.options();
            PolicySource::read_archive(
                Path::new(&url),
                bytes.as_slice(),
                &options.source_limits,
                options.remote_bundle_trust(),
            )
            .map_err(|err| store.reject(err))
            .and_then(|source| store.activate(source))
        })
        .await
        .map_err(|e| {
            (
                BundleOutcome::Rejected,
                format!("bundle loader failed: {e}"),
            )
        })?;
        match activated {
            Ok(activation) => Ok(activation.changed),
            Err(err) => Err((BundleOutcome::of_refusal(&err), err.to_string())),
        }
    }
}

/// The bearer token in `path`, trimmed.
async fn read_token(path: &Path) -> Result<String, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("bearer token file {}: {e}", path.display()))?;
    if text.len() > MAX_TOKEN_BYTES {
        return Err(format!(
            "bearer token file {}: over {MAX_TOKEN_BYTES} bytes",
            path.display()
        ));
    }
    Ok(text.trim().to_string())
}

/// A transport error with its causes (reqwest's top-level message alone says little).
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(min: u64, max: u64) -> Poller {
        let options = BundleServerOptions {
            url: "http://127.0.0.1:1/b.tar.gz".into(),
            poll_min: Duration::from_millis(min),
            poll_max: Duration::from_millis(max),
            timeout: Duration::from_secs(1),
            bearer_token_file: None,
            ca_cert: None,
        };
        Poller {
            client: client(&options).unwrap(),
            store: Arc::new(PolicyStore::remote(&options.url, Default::default())),
            stats: Arc::new(BundleStats::new(&options.url)),
            options,
            clock: Arc::new(crate::clock::SystemClock),
            etag: None,
            activated: watch::channel(false).0,
        }
    }

    #[test]
    fn polls_are_spread_over_the_window_and_retries_back_off_to_its_end() {
        let p = poller(1000, 2000);
        for _ in 0..100 {
            let d = p.poll_delay();
            assert!((1000..=2000).contains(&d.as_millis()), "{d:?}");
        }
        let first = p.retry_delay(1);
        assert!((90..=110).contains(&first.as_millis()), "{first:?}");
        let fourth = p.retry_delay(4);
        assert!((720..=880).contains(&fourth.as_millis()), "{fourth:?}");
        for failures in [6, 40, u32::MAX] {
            let d = p.retry_delay(failures);
            assert!((1800..=2000).contains(&d.as_millis()), "{failures}: {d:?}");
        }
    }

    #[test]
    fn refusals_are_counted_by_what_was_wrong() {
        let signature = |source| LoadError::Signature {
            bundle: "b".into(),
            source,
        };
        let cases = [
            (signature(SignatureError::Unsigned), "unsigned"),
            (signature(SignatureError::NoKey), "bad_signature"),
            (
                signature(SignatureError::Digest("p.rego".into())),
                "bad_digest",
            ),
            (
                LoadError::Bundle {
                    path: "b".into(),
                    problem: "x".into(),
                },
                "malformed",
            ),
            (
                LoadError::TooLarge {
                    path: "p".into(),
                    size: 2,
                    limit: 1,
                },
                "too_large",
            ),
            (LoadError::Compile("p.rego:1: x".into()), "rejected"),
            (LoadError::TestsFailed(vec!["t".into()]), "rejected"),
        ];
        for (err, label) in cases {
            assert_eq!(BundleOutcome::of_refusal(&err).label(), label, "{err}");
        }
        let stats = BundleStats::new("u");
        stats.count(BundleOutcome::NotModified);
        stats.count(BundleOutcome::NotModified);
        assert_eq!(stats.polls()[2], 2);
        assert_eq!(stats.status().url, "u");
    }
}
