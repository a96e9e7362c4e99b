//! `wasmcluster:plugin@0.2.0` (`wit/v0.2.0`): its generated bindings, and
//! its host functions served by [`HostState`]: those of 0.1.0, plus
//! `cancel-timer`, `invoke-client` and the KV operations
//! `kv-compare-and-set`, `kv-expire`, `kv-batch` and `kv-list`, and
//! `channel-history`.

use super::HostState;
use crate::kv::Op;
use bindings::wasmcluster::plugin::host::{
    HistoryPage, KeptPublication, KvBatchOutcome, KvOp, KvPage,
};
use types::{ClientCallError, HostError, Json, LogLevel};
use wasmtime::component::{HasSelf, Linker};

pub(super) use bindings::{Plugin, PluginPre};

/// Bindings generated from `wit/v0.2.0`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "plugin",
        exports: { default: async },
        // Functions that wait: for Redis, for a client's answer. Only the
        // calling instance waits; the worker serves its other sockets.
        imports: {
            "wasmcluster:plugin/host.kv-get": async,
            "wasmcluster:plugin/host.kv-set": async,
            "wasmcluster:plugin/host.kv-delete": async,
            "wasmcluster:plugin/host.kv-incr": async,
            "wasmcluster:plugin/host.kv-compare-and-set": async,
            "wasmcluster:plugin/host.kv-expire": async,
            "wasmcluster:plugin/host.kv-batch": async,
            "wasmcluster:plugin/host.kv-list": async,
            "wasmcluster:plugin/host.invoke-client": async,
            "wasmcluster:plugin/host.channel-history": async,
        },
        with: { "wasmcluster:plugin/types": super::types },
    });
}

types_interface!("wasmcluster:plugin/types@0.2.0");

/// Add this version's host functions to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl bindings::wasmcluster::plugin::host::Host for HostState {
    host_functions_of_0_1!();

    fn cancel_timer(&mut self, id: String) -> bool {
        HostState::cancel_timer(self, id)
    }

    async fn invoke_client(
        &mut self,
        socket_id: String,
        event: String,
        data: Option<Json>,
        timeout_ms: u32,
    ) -> Result<Option<Json>, ClientCallError> {
        HostState::invoke_client(self, socket_id, event, data, timeout_ms).await
    }

    async fn channel_history(
        &mut self,
        channel: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage, HostError> {
        let page = HostState::channel_history(self, &channel, before, limit).await?;
        Ok(HistoryPage {
            epoch: page.position.epoch,
            offset: page.position.offset,
            publications: page
                .publications
                .into_iter()
                .map(|(offset, data)| KeptPublication { offset, data })
                .collect(),
        })
    }

    async fn kv_compare_and_set(
        &mut self,
        key: String,
        expected: Option<String>,
        value: Option<String>,
    ) -> Result<bool, HostError> {
        HostState::kv_compare_and_set(self, key, expected, value).await
    }

    async fn kv_expire(&mut self, key: String, ttl_ms: Option<u64>) -> Result<bool, HostError> {
        HostState::kv_expire(self, key, ttl_ms).await
    }

    async fn kv_batch(&mut self, ops: Vec<KvOp>) -> Result<KvBatchOutcome, HostError> {
        let ops = ops.into_iter().map(op_of).collect();
        Ok(match HostState::kv_batch(self, ops).await? {
            Ok(values) => KvBatchOutcome::Applied(values),
            Err(index) => KvBatchOutcome::Conflict(index),
        })
    }

    async fn kv_list(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<KvPage, HostError> {
        let page = HostState::kv_list(self, &prefix, cursor.as_deref(), limit).await?;
        Ok(KvPage {
            entries: page.entries,
            cursor: page.cursor,
        })
    }
}

/// A batch operation as the host's KV runs it.
fn op_of(op: KvOp) -> Op {
    match op {
        KvOp::Check(check) => Op::Check {
            key: check.key,
            expected: check.expected,
        },
        KvOp::Put(put) => Op::Set {
            key: put.key,
            value: put.value,
            ttl_ms: put.ttl_ms,
        },
        KvOp::Delete(key) => Op::Delete { key },
        KvOp::Add(add) => Op::Incr {
            key: add.key,
            delta: add.delta,
        },
    }
}
