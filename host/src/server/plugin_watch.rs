//! `--watch`: file-system changes in the plugins directory trigger a
//! reload, debounced so that a file still being written is not loaded half
//! way.

use crate::plugins::is_plugin_file;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the directory must stay quiet before a reload.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches the plugins directory; dropped, it stops.
pub struct PluginWatch {
    /// Kept alive for as long as events are wanted.
    _watcher: RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<()>,
}

impl PluginWatch {
    /// Start watching `dir` (not recursively).
    pub fn start(dir: &Path) -> notify::Result<Self> {
        let (tx, changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => event.paths.iter().any(|path| is_plugin_file(path)),
                    Err(_) => true,
                };
                if relevant {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(PluginWatch {
            _watcher: watcher,
            changes,
        })
    }

    /// Resolves when plugin files changed and then stayed quiet for a moment.
    pub async fn settled_change(&mut self) {
        if self.changes.recv().await.is_none() {
            return std::future::pending().await;
        }
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, self.changes.recv()).await {}
    }
}
