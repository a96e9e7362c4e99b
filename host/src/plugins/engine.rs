//! The one wasmtime engine of the process and the linker holding every host
//! import.

use super::host_state::HostState;
use super::wit;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use wasmtime::component::{Component, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, OptLevel, WasmBacktraceDetails};

/// How often the epoch advances. A call's deadline is a number of ticks, so
/// deadlines are kept to within one tick.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why the engine could not be set up.
#[derive(Debug, Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("could not configure the wasm engine: {0:#}")]
    Config(wasmtime::Error),
    /// The compiled-module cache directory could not be used.
    #[error("could not use the module cache directory {dir}: {source:#}")]
    Cache {
        /// The directory given with `--cache-dir`.
        dir: String,
        /// What went wrong.
        source: wasmtime::Error,
    },
    /// The host imports could not be added to the linker.
    #[error("could not link the host functions: {0:#}")]
    Link(wasmtime::Error),
    /// The thread that enforces call deadlines could not be started.
    #[error("could not start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

/// The wasmtime engine with its linker: compiles components and links them
/// against WASI and the wasmcluster host functions.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
}

impl PluginEngine {
    /// An engine with epoch interruption (call deadlines), plus a thread that
    /// advances the epoch. With `cache_dir`, compiled modules are cached
    /// there, which makes restarts fast.
    pub fn new(cache_dir: Option<&Path>) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Files and lines come from `symbols`, when a fault is logged:
            // wasmtime's own lookup costs tens of milliseconds per trap.
            .wasm_backtrace_details(WasmBacktraceDetails::Disable);
        if let Some(dir) = cache_dir {
            let mut cache_config = CacheConfig::new();
            cache_config.with_directory(dir);
            let cache = Cache::new(cache_config).map_err(|source| EngineError::Cache {
                dir: dir.display().to_string(),
                source,
            })?;
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config).map_err(EngineError::Config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::Link)?;
        wit::add_to_linker(&mut linker).map_err(EngineError::Link)?;
        start_epoch_ticker(&engine).map_err(EngineError::Ticker)?;
        Ok(PluginEngine { engine, linker })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with WASI and the host functions.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// Compile a component from its bytes on tokio's blocking pool, so that
    /// the calling thread (the accept loop, during a reload) keeps serving.
    pub async fn compile(&self, bytes: Vec<u8>) -> wasmtime::Result<Component> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .unwrap_or_else(|panic| Err(wasmtime::format_err!("the compiler panicked: {panic}")))
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}
