//! Why a plugin was not loaded, or why a set of plugins cannot be served
//! together: every reason names the file.

use super::wit::WitVersion;
use std::path::PathBuf;
use thiserror::Error;

/// Why a plugin was not loaded, or why the set of plugins cannot start.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The plugins directory could not be listed.
    #[error("cannot read the plugins directory {dir}: {source}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A plugin file could not be read.
    #[error("{path}: cannot read the file: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not WebAssembly at all.
    #[error(
        "{path}: not a valid WebAssembly component: not WebAssembly at all (a wasm file \
         starts with the bytes \\0asm)"
    )]
    NotWasm {
        /// The plugin file.
        path: PathBuf,
    },
    /// The file is not a valid WebAssembly component.
    #[error("{path}: not a valid WebAssembly component: {source:#}")]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What wasmtime said.
        source: wasmtime::Error,
    },
    /// The component is built against no version of the contract this host
    /// knows.
    #[error(
        "{path}: does not fit this host's plugin world: it uses no interface of a version of \
         wasmcluster:plugin this host knows ({known}); build it with wasmcluster-sdk"
    )]
    UnknownVersion {
        /// The plugin file.
        path: PathBuf,
        /// The versions this host loads.
        known: String,
    },
    /// The component imports something this host does not provide, or does
    /// not export the world of its version.
    #[error("{path}: does not fit this host's plugin world ({version}): {source:#}")]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// The version it was built against.
        version: WitVersion,
        /// What wasmtime said.
        source: wasmtime::Error,
    },
    /// Instantiating, `describe` or `init` trapped or failed.
    #[error("{path}: {stage} failed: {reason}")]
    Start {
        /// The plugin file.
        path: PathBuf,
        /// The plugin's name, when `describe` said it.
        plugin: Option<String>,
        /// `instantiate`, `describe` or `init`.
        stage: &'static str,
        /// The trap or the plugin's error.
        reason: String,
    },
    /// The manifest returned by `describe` is not acceptable.
    #[error("{path}: invalid manifest: {reason}")]
    Manifest {
        /// The plugin file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Two plugins declare the same event.
    #[error("{kind} event '{event}' is declared by both {first} and {second}")]
    EventConflict {
        /// `RPC` or `transmit`.
        kind: &'static str,
        /// The event.
        event: String,
        /// The first file declaring it.
        first: PathBuf,
        /// The second file declaring it.
        second: PathBuf,
    },
    /// Two plugins have the same name (and so the same KV namespace).
    #[error("plugin name '{name}' is used by both {first} and {second}")]
    DuplicateName {
        /// The name.
        name: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
}

impl LoadError {
    /// The name of the plugin the error is about, when it is known (a
    /// plugin whose `init` failed has said its name already).
    pub fn plugin(&self) -> Option<&str> {
        match self {
            LoadError::Start { plugin, .. } => plugin.as_deref(),
            _ => None,
        }
    }
}
