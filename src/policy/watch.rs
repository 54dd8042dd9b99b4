//! Live reload triggers: SIGHUP always, and file changes under the policy directory (or to
//! the bundle file) when asked for.

use std::{path::Path, sync::Arc, time::Duration};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::{sync::mpsc, task::JoinHandle};

use super::PolicyStore;

/// Keeps the reload triggers running; dropping it stops them.
#[derive(Debug)]
pub struct PolicyWatcher {
    _files: Option<notify::RecommendedWatcher>,
    task: JoinHandle<()>,
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reloads `store` on SIGHUP and, with `watch_files`, when a file under its directory
/// changes (after `debounce` of quiet, so an editor's or a ConfigMap's burst of events is
/// one reload). Must be called inside a Tokio runtime.
pub fn watch_policies(
    store: Arc<PolicyStore>,
    watch_files: bool,
    debounce: Duration,
) -> Result<PolicyWatcher, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let files = if watch_files && let Some(root) = store.root() {
        // A bundle is watched through its directory: a deploy that replaces it by rename
        // would end a watch on the file itself.
        let root = root.to_path_buf();
        let bundle = root.is_file().then(|| root.clone());
        let (watched, mode) = match &bundle {
            Some(file) => (
                file.parent()
                    .filter(|dir| !dir.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
                RecursiveMode::NonRecursive,
            ),
            None => (root, RecursiveMode::Recursive),
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = event.is_ok_and(|e| {
                    !matches!(e.kind, EventKind::Access(_))
                        && bundle.as_ref().is_none_or(|file| {
                            e.paths.iter().any(|p| p.file_name() == file.file_name())
                        })
                });
                if relevant {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&watched, mode)?;
        Some(watcher)
    } else {
        None
    };

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(notify::Error::io)?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {}
                _ = hangup.recv() => tracing::info!("SIGHUP: reloading policies"),
            }
            // Wait for the burst to end.
            while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    });
    Ok(PolicyWatcher {
        _files: files,
        task,
    })
}
