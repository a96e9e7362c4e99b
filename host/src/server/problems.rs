//! What is wrong with the plugins the server was asked to serve: files that
//! failed to load, and `[plugin.NAME]` sections that no loaded plugin uses.
//! They make `/healthz` degraded and, when something is not served at all,
//! `/readyz` unready; `--strict` makes them a start-up error; and each
//! reload's outcome is written for `wasmcluster reload` to print.

use crate::plugins::{PluginSet, Refusal, ReloadSummary};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// The plugin problems the server has now.
#[derive(Debug, Default, Clone)]
pub(crate) struct PluginProblems {
    /// Files of the plugins directory that are not served as they are.
    refused: Vec<Refusal>,
    /// Config sections no loaded plugin uses, each with its explanation.
    unused_sections: Vec<String>,
}

impl PluginProblems {
    /// The problems after loading `set`, with `refused` files, and the
    /// config sections of `section_names`.
    pub(crate) fn new<'a>(
        set: &PluginSet,
        refused: Vec<Refusal>,
        section_names: impl IntoIterator<Item = &'a String>,
    ) -> Self {
        let unused_sections = section_names
            .into_iter()
            .filter(|name| !set.plugins.iter().any(|plugin| *plugin.name == ***name))
            .map(|name| unused_section(name, &refused))
            .collect();
        PluginProblems {
            refused,
            unused_sections,
        }
    }

    /// Whether nothing is wrong.
    pub(crate) fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.unused_sections.is_empty()
    }

    /// Whether something the operator asked for is not served at all: a
    /// file with no build of it serving, or a config section for a plugin
    /// that is not there. (A refused new build whose previous build keeps
    /// serving degrades health but not readiness: every pod would otherwise
    /// leave the load balancer at once after a bad deploy.)
    pub(crate) fn blocks_readiness(&self) -> bool {
        !self.unused_sections.is_empty() || self.refused.iter().any(|r| r.kept.is_none())
    }

    /// One line per problem, for logs and errors.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.refused
            .iter()
            .map(describe_refusal)
            .chain(self.unused_sections.iter().cloned())
            .collect()
    }

    /// The problems as JSON, for `/healthz` and `/readyz`.
    pub(crate) fn to_json(&self) -> Value {
        let files: Vec<Value> = self
            .refused
            .iter()
            .map(|refusal| {
                json!({
                    "file": file_name(&refusal.file),
                    "plugin": refusal.plugin,
                    "error": refusal.reason,
                    "serving": refusal.kept.as_ref().map_or_else(
                        || "nothing".to_owned(),
                        |version| format!("the previous build ({version})"),
                    ),
                })
            })
            .collect();
        json!({ "files": files, "configSections": self.unused_sections })
    }
}

/// Why a `[plugin.NAME]` section is not used: the real cause when a file
/// that failed to load is that plugin (by its name, or its file name).
fn unused_section(name: &str, refused: &[Refusal]) -> String {
    let failed = refused.iter().find(|refusal| {
        refusal.plugin.as_deref() == Some(name)
            || refusal.file.file_stem().is_some_and(|stem| stem == name)
    });
    match failed {
        Some(refusal) => format!(
            "the config file's [plugin.{name}] section is not applied: {}",
            refusal.reason
        ),
        None => format!(
            "the config file has a [plugin.{name}] section, but no plugin in the plugins \
             directory is named '{name}'"
        ),
    }
}

fn describe_refusal(refusal: &Refusal) -> String {
    match &refusal.kept {
        Some(version) => format!(
            "{} (the previous build, {version}, keeps serving)",
            refusal.reason
        ),
        None => refusal.reason.clone(),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Where the outcome of reloads is written for `wasmcluster reload`: next
/// to the pid file, as `<pid-file>.reload`.
pub fn report_path(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".reload");
    PathBuf::from(name)
}

/// A reload's outcome as `wasmcluster reload` reads it: `seq` counts the
/// reloads of this server.
pub(crate) fn report_json(
    seq: u64,
    outcome: Result<&ReloadSummary, String>,
    elapsed_ms: u64,
) -> Value {
    match outcome {
        Ok(summary) => json!({
            "seq": seq,
            "loaded": summary.loaded,
            "updated": summary.updated,
            "unloaded": summary.unloaded,
            "refused": summary.refused.iter().map(describe_refusal).collect::<Vec<_>>(),
            "elapsedMs": elapsed_ms,
        }),
        Err(error) => json!({ "seq": seq, "error": error, "elapsedMs": elapsed_ms }),
    }
}

/// Write `report` to `path` in one step (a temporary file renamed over
/// it), so that a reader never sees half of it.
pub(crate) fn write_report(path: &Path, report: &Value) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, report.to_string())?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(file: &str, plugin: Option<&str>, kept: Option<&str>) -> Refusal {
        Refusal {
            file: PathBuf::from(format!("/plugins/{file}")),
            plugin: plugin.map(str::to_owned),
            reason: format!("/plugins/{file}: init failed: bad config"),
            kept: kept.map(str::to_owned),
        }
    }

    #[test]
    fn an_unused_section_names_the_file_that_failed() {
        let problems = PluginProblems::new(
            &PluginSet::default(),
            vec![refusal("poll.wasm", Some("poll"), None)],
            &["poll".to_owned(), "other".to_owned()],
        );
        let lines = problems.lines();
        assert!(lines.iter().any(|line| line
            == "the config file's [plugin.poll] section is not applied: \
                /plugins/poll.wasm: init failed: bad config"));
        assert!(
            lines
                .iter()
                .any(|line| line.contains("no plugin in the plugins directory is named 'other'"))
        );
        assert!(problems.blocks_readiness());
    }

    #[test]
    fn a_refused_update_degrades_but_keeps_readiness() {
        let problems = PluginProblems::new(
            &PluginSet::default(),
            vec![refusal("echo.wasm", Some("echo"), Some("0.1.0"))],
            &[],
        );
        assert!(!problems.is_empty());
        assert!(!problems.blocks_readiness());
        assert_eq!(
            problems.to_json()["files"][0]["serving"],
            "the previous build (0.1.0)"
        );
    }

    #[test]
    fn the_report_sits_next_to_the_pid_file() {
        assert_eq!(
            report_path(Path::new("/run/wasmcluster.pid")),
            Path::new("/run/wasmcluster.pid.reload")
        );
    }
}
