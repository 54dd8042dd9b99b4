//! The live policy revision: read lock-free on every decision, replaced atomically by a
//! reload that compiles off the serving path. A rejected reload changes nothing.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::{ArcSwapOption, Guard};

use super::{LoadError, PolicyOptions, PolicySet, PolicySource};

/// Holds the serving [`PolicySet`] and reloads it from its directory or bundle file, or
/// activates a set read elsewhere (a bundle server's).
#[derive(Debug)]
pub struct PolicyStore {
    /// The directory or bundle file; `None` when sets come from a bundle server.
    root: Option<PathBuf>,
    /// What the sets are read from, for logs.
    origin: String,
    options: PolicyOptions,
    current: ArcSwapOption<PolicySet>,
    /// Serialises loads (file events, SIGHUP and bundle polls can race); never taken by
    /// evaluation.
    reloading: Mutex<()>,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

/// How many loads a store has accepted (including unchanged sets) and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadCounts {
    /// Loads that left a good revision serving.
    pub accepted: u64,
    /// Loads refused; the previous revision kept serving.
    pub rejected: u64,
}

/// What an accepted load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// The serving revision.
    pub revision: Arc<str>,
    /// Whether it replaced another one (`false`: the same set was already serving).
    pub changed: bool,
}

impl PolicyStore {
    /// A store for the policy directory or bundle file `root`, with nothing loaded yet.
    pub fn new(root: impl Into<PathBuf>, options: PolicyOptions) -> Self {
        let root = root.into();
        Self::with_root(root.display().to_string(), Some(root), options)
    }

    /// A store whose sets are activated from elsewhere (see [`PolicyStore::activate`]);
    /// `origin` names where, for logs. [`PolicyStore::reload`] has nothing to read.
    pub fn remote(origin: impl Into<String>, options: PolicyOptions) -> Self {
        Self::with_root(origin.into(), None, options)
    }

    fn with_root(origin: String, root: Option<PathBuf>, options: PolicyOptions) -> Self {
        Self {
            root,
            origin,
            options,
            current: ArcSwapOption::empty(),
            reloading: Mutex::new(()),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Loads accepted and rejected so far.
    pub fn reload_counts(&self) -> ReloadCounts {
        ReloadCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// The directory or bundle file policies are loaded from (`None` for a bundle
    /// server's store).
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The options sets are compiled with.
    pub fn options(&self) -> &PolicyOptions {
        &self.options
    }

    /// The serving revision, if one is loaded. Lock-free; hold the guard only briefly.
    pub fn current(&self) -> Guard<Option<Arc<PolicySet>>> {
        self.current.load()
    }

    /// Reads the directory or bundle file (a bundle verified when a key is configured)
    /// and activates it as [`PolicyStore::activate`] does. Blocking: call it off the
    /// async runtime. Returns the serving revision.
    pub fn reload(&self) -> Result<Arc<str>, LoadError> {
        let Some(root) = &self.root else {
            return Err(LoadError::NotADirectory(PathBuf::from(&self.origin)));
        };
        let _serialised = self.serialised();
        let source = PolicySource::read_trusting(
            root,
            &self.options.source_limits,
            self.options.local_bundle_trust(),
        );
        self.settle(source.and_then(|source| self.swap_in(source)))
            .map(|activation| activation.revision)
    }

    /// Compiles `source` and runs its tests on a bounded thread, and swaps it in, unless
    /// the same set (and bundle revision) is already serving. Blocking: call it off the
    /// async runtime. On error the serving revision is untouched.
    pub fn activate(&self, source: PolicySource) -> Result<Activation, LoadError> {
        let _serialised = self.serialised();
        self.settle(self.swap_in(source))
    }

    /// Counts and logs a set refused before it reached the store (a bundle that does not
    /// read or verify).
    pub(super) fn reject(&self, err: LoadError) -> LoadError {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let serving = self
            .current
            .load()
            .as_ref()
            .map(|s| s.revision().to_string());
        tracing::error!(error = %err, origin = %self.origin, serving = serving.as_deref().unwrap_or("none"), "policy set rejected; the previous revision keeps serving");
        err
    }

    fn serialised(&self) -> std::sync::MutexGuard<'_, ()> {
        self.reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn settle(&self, result: Result<Activation, LoadError>) -> Result<Activation, LoadError> {
        match result {
            Ok(activation) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(activation)
            }
            Err(err) => Err(self.reject(err)),
        }
    }

    fn swap_in(&self, source: PolicySource) -> Result<Activation, LoadError> {
        if let Some(current) = self.current.load().as_ref()
            && current.revision() == &source.revision
            && current.bundle_revision() == source.bundle_revision.as_ref()
        {
            return Ok(Activation {
                revision: current.revision().clone(),
                changed: false,
            });
        }
        let set = PolicySet::load(source, &self.options, true)?;
        let revision = set.revision().clone();
        for entry in set.entrypoints() {
            match (&entry.rvm_refusal, entry.engine) {
                (_, "missing") => {
                    tracing::warn!(rule = %entry.rule, %revision, "entrypoint not defined by the policy set: its decisions will deny")
                }
                (Some(why), _) => {
                    tracing::info!(rule = %entry.rule, reason = %why, "entrypoint runs on the interpreter")
                }
                _ => {}
            }
        }
        let bundle_revision = set.bundle_revision().cloned();
        self.current.store(Some(Arc::new(set)));
        tracing::info!(%revision, bundle_revision = bundle_revision.as_deref(), origin = %self.origin, "policy revision loaded");
        Ok(Activation {
            revision,
            changed: true,
        })
    }
}
