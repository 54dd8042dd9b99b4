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

/// Holds the serving [`PolicySet`] and reloads it from its directory.
#[derive(Debug)]
pub struct PolicyStore {
    root: PathBuf,
    options: PolicyOptions,
    current: ArcSwapOption<PolicySet>,
    /// Serialises reloads (file events and SIGHUP can race); never taken by evaluation.
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

impl PolicyStore {
    /// A store for the policy directory `root`, with nothing loaded yet.
    pub fn new(root: impl Into<PathBuf>, options: PolicyOptions) -> Self {
        Self {
            root: root.into(),
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

    /// The directory policies are loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options sets are compiled with.
    pub fn options(&self) -> &PolicyOptions {
        &self.options
    }

    /// The serving revision, if one is loaded. Lock-free; hold the guard only briefly.
    pub fn current(&self) -> Guard<Option<Arc<PolicySet>>> {
        self.current.load()
    }

    /// Loads the directory, compiles it and runs its tests on a bounded thread, and
    /// swaps it in. Blocking: call it off the async runtime. On error the serving
    /// revision is untouched. Returns the serving revision.
    pub fn reload(&self) -> Result<Arc<str>, LoadError> {
        let _serialised = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = PolicySource::read(&self.root, &self.options.source_limits).and_then(|source| {
            if let Some(current) = self.current.load().as_ref()
                && current.revision() == &source.revision
            {
                return Ok(current.revision().clone());
            }
            let set = PolicySet::load(source, &self.options, true)?;
            let revision = set.revision().clone();
            for entry in set.entrypoints() {
                match (&entry.rvm_refusal, entry.engine) {
                    (_, "missing") => tracing::warn!(rule = %entry.rule, %revision, "entrypoint not defined by the policy set: its decisions will deny"),
                    (Some(why), _) => tracing::info!(rule = %entry.rule, reason = %why, "entrypoint runs on the interpreter"),
                    _ => {}
                }
            }
            self.current.store(Some(Arc::new(set)));
            tracing::info!(%revision, dir = %self.root.display(), "policy revision loaded");
            Ok(revision)
        });
        match &result {
            Ok(_) => self.accepted.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.rejected.fetch_add(1, Ordering::Relaxed),
        };
        if let Err(err) = &result {
            let serving = self
                .current
                .load()
                .as_ref()
                .map(|s| s.revision().to_string());
            tracing::error!(error = %err, serving = serving.as_deref().unwrap_or("none"), "policy set rejected; the previous revision keeps serving");
        }
        result
    }
}
