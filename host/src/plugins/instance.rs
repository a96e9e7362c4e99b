//! A worker's instances of every plugin, and the calls into them.
//!
//! Each worker owns one instance (one `Store`) per plugin, so a call is a
//! direct call on the worker's thread. The async mutex around each instance
//! is never contended across threads; it only keeps two connections of the
//! same worker from entering one instance at once.
//!
//! A call that traps, overruns its deadline or exceeds its memory cap fails
//! alone: the instance is dropped and rebuilt (from its `InstancePre`, with
//! `init`) when the next event for that plugin arrives.

use super::Socket;
use super::bindings::wasmcluster::plugin::types::ErrorObject as WitError;
use super::engine::deadline_ticks;
use super::host_api::HostServices;
use super::loader::{Instance, LoadedPlugin, PluginSet};
use crate::protocol::{self, ErrorObject};
use std::sync::Arc;
use tokio::sync::Mutex;
use wasmtime::Trap;

/// Which export a call enters, and for which event: named in fault logs
/// and errors. Formatted only when something fails.
#[derive(Clone, Copy)]
enum Call<'a> {
    Invoke(&'a str),
    Transmit(&'a str),
    Connect,
    Disconnect,
}

impl std::fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Invoke(event) => write!(f, "on-invoke '{event}'"),
            Call::Transmit(event) => write!(f, "on-transmit '{event}'"),
            Call::Connect => f.write_str("on-connect"),
            Call::Disconnect => f.write_str("on-disconnect"),
        }
    }
}

/// Why a call into a plugin did not produce an answer.
#[derive(Debug)]
enum CallFailure {
    /// The call trapped, timed out or ran out of memory.
    Fault(String),
    /// No instance could be built to take the call.
    Unavailable(String),
}

/// One worker's instances of every loaded plugin.
pub struct WorkerPlugins {
    /// The plugins and the routing of events to them.
    set: Arc<PluginSet>,
    /// The live instance of each plugin (same index as `set.plugins`);
    /// `None` after a fault until the next call rebuilds it.
    instances: Vec<Mutex<Option<Instance>>>,
    /// What host functions act on.
    services: Arc<HostServices>,
}

impl WorkerPlugins {
    /// Instantiate and `init` every plugin for one worker. A plugin whose
    /// instance cannot be built here is logged and retried on its next call.
    pub async fn start(set: Arc<PluginSet>, services: Arc<HostServices>) -> Self {
        let mut instances = Vec::with_capacity(set.plugins.len());
        for plugin in &set.plugins {
            let instance = match plugin.instantiate(services.clone()).await {
                Ok(instance) => Some(instance),
                Err(error) => {
                    tracing::error!("{error}");
                    None
                }
            };
            instances.push(Mutex::new(instance));
        }
        WorkerPlugins {
            set,
            instances,
            services,
        }
    }

    /// The plugins and their routes.
    pub fn set(&self) -> &PluginSet {
        &self.set
    }

    /// Call `f` on plugin `index`'s instance with a fresh deadline, building
    /// the instance first if an earlier fault dropped it.
    async fn call<R>(
        &self,
        index: usize,
        what: Call<'_>,
        f: impl AsyncFnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        let plugin = &self.set.plugins[index];
        let mut slot = self.instances[index].lock().await;
        let instance = match &mut *slot {
            Some(instance) => instance,
            empty => empty.insert(self.rebuild(plugin).await?),
        };
        instance
            .store
            .set_epoch_deadline(deadline_ticks(plugin.limits.deadline));
        match f(instance).await {
            Ok(value) => Ok(value),
            Err(error) => {
                *slot = None;
                let fault = describe_fault(&error, plugin);
                tracing::error!(
                    plugin = &*plugin.name,
                    path = %plugin.path.display(),
                    call = %what,
                    "plugin fault: {fault}; the instance will be rebuilt. {error:#}"
                );
                Err(CallFailure::Fault(format!(
                    "Plugin '{}' {fault} in {what}",
                    plugin.name
                )))
            }
        }
    }

    async fn rebuild(&self, plugin: &LoadedPlugin) -> Result<Instance, CallFailure> {
        match plugin.instantiate(self.services.clone()).await {
            Ok(instance) => {
                tracing::info!(plugin = &*plugin.name, "plugin instance rebuilt");
                Ok(instance)
            }
            Err(error) => {
                tracing::error!(
                    plugin = &*plugin.name,
                    "plugin instance could not be rebuilt: {error}"
                );
                Err(CallFailure::Unavailable(format!(
                    "Plugin '{}' is unavailable: {error}",
                    plugin.name
                )))
            }
        }
    }

    /// Answer RPC `event` with plugin `index`: its data, or the error object
    /// the client receives.
    pub async fn invoke(
        &self,
        index: usize,
        socket: &Socket,
        event: &str,
        data: Option<&str>,
    ) -> Result<Option<String>, ErrorObject> {
        let plugin = &self.set.plugins[index];
        let data = data.map(str::to_owned);
        let answer = self
            .call(index, Call::Invoke(event), async |i: &mut Instance| {
                i.exports
                    .call_on_invoke(&mut i.store, socket, event, data.as_ref())
                    .await
            })
            .await
            .map_err(|failure| failure_error(failure, &plugin.name, event))?;
        match answer {
            Ok(data) => match data {
                Some(json) if protocol::validate_json(&json).is_err() => Err(invalid_answer(
                    &plugin.name,
                    event,
                    "answered with data that is not valid JSON",
                )),
                data => Ok(data),
            },
            Err(error) => {
                Err(plugin_error(error)
                    .unwrap_or_else(|why| invalid_answer(&plugin.name, event, &why)))
            }
        }
    }

    /// Deliver transmit `event` to plugin `index`. Failures are logged by
    /// [`WorkerPlugins::call`]; a transmit has no one to answer.
    pub async fn transmit(&self, index: usize, socket: &Socket, event: &str, data: Option<&str>) {
        let data = data.map(str::to_owned);
        let _ = self
            .call(index, Call::Transmit(event), async |i: &mut Instance| {
                i.exports
                    .call_on_transmit(&mut i.store, socket, event, data.as_ref())
                    .await
            })
            .await;
    }

    /// Tell every plugin with the `connect` hook about a new socket.
    pub async fn connected(&self, socket: &Socket) {
        for (index, plugin) in self.set.plugins.iter().enumerate() {
            if plugin.on_connect {
                let _ = self
                    .call(index, Call::Connect, async |i: &mut Instance| {
                        i.exports.call_on_connect(&mut i.store, socket).await
                    })
                    .await;
            }
        }
    }

    /// Tell every plugin with the `disconnect` hook that a socket is gone.
    pub async fn disconnected(&self, socket: &Socket, code: u16, reason: &str) {
        for (index, plugin) in self.set.plugins.iter().enumerate() {
            if plugin.on_disconnect {
                let _ = self
                    .call(index, Call::Disconnect, async |i: &mut Instance| {
                        i.exports
                            .call_on_disconnect(&mut i.store, socket, code, reason)
                            .await
                    })
                    .await;
            }
        }
    }
}

/// Say what kind of fault `error` is, for the log and the client.
fn describe_fault(error: &wasmtime::Error, plugin: &LoadedPlugin) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "timed out (deadline {} ms)",
            plugin.limits.deadline.as_millis()
        ),
        Some(Trap::StackOverflow) => "trapped (stack overflow)".to_owned(),
        Some(Trap::UnreachableCodeReached) => "trapped (panic or unreachable)".to_owned(),
        Some(trap) => format!("trapped ({trap})"),
        None if format!("{error:#}").contains("memory") => format!(
            "ran out of memory (cap {} MiB)",
            plugin.limits.memory_bytes / (1024 * 1024)
        ),
        None => format!("failed ({error:#})"),
    }
}

fn failure_error(failure: CallFailure, plugin: &str, event: &str) -> ErrorObject {
    let (name, message) = match failure {
        CallFailure::Fault(message) => ("PluginError", message),
        CallFailure::Unavailable(message) => ("PluginUnavailable", message),
    };
    ErrorObject::new(name, message)
        .with("plugin", plugin)
        .with("event", event)
}

fn invalid_answer(plugin: &str, event: &str, why: &str) -> ErrorObject {
    ErrorObject::new(
        "PluginError",
        format!("Plugin '{plugin}' {why} to '{event}'"),
    )
    .with("plugin", plugin)
    .with("event", event)
}

/// The client-facing error object for an error a plugin returned, or why it
/// is not acceptable.
fn plugin_error(error: WitError) -> Result<ErrorObject, String> {
    let details = match error.details.as_deref() {
        None => serde_json::Map::new(),
        Some(json) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => return Err("answered with error details that are not a JSON object".into()),
        },
    };
    Ok(ErrorObject {
        name: error.name,
        message: error.message,
        details,
    })
}
