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

/// The hidden entry through which Kubernetes swaps a mounted ConfigMap or
/// Secret: the visible files are symlinks into it, so an update of a file
/// that already existed only replaces this link.
const KUBERNETES_DATA_LINK: &str = "..data";

/// Whether a change to `path` may change the plugins: a plugin file, or the
/// link a Kubernetes volume update replaces.
fn is_reload_trigger(path: &Path) -> bool {
    is_plugin_file(path)
        || path
            .file_name()
            .is_some_and(|name| name == KUBERNETES_DATA_LINK)
}

/// Watches the plugins directory; dropped, it stops.
pub(super) struct PluginWatch {
    /// Kept alive for as long as events are wanted.
    _watcher: RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<()>,
}

impl PluginWatch {
    /// Start watching `dir` (not recursively).
    pub(super) fn start(dir: &Path) -> notify::Result<Self> {
        let (tx, changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => event.paths.iter().any(|path| is_reload_trigger(path)),
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
    pub(super) async fn settled_change(&mut self) {
        if self.changes.recv().await.is_none() {
            return std::future::pending().await;
        }
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, self.changes.recv()).await {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_files_and_the_kubernetes_data_link_trigger_a_reload() {
        assert!(is_reload_trigger(Path::new("/plugins/echo.wasm")));
        assert!(is_reload_trigger(Path::new("/plugins/..data")));
        assert!(!is_reload_trigger(Path::new("/plugins/.echo.wasm.tmp")));
        assert!(!is_reload_trigger(Path::new(
            "/plugins/..2026_11_29_23_59.123"
        )));
        assert!(!is_reload_trigger(Path::new("/plugins/notes.txt")));
    }
}
