//! The Redis engine: the store shared by every host of a deployment.
//!
//! A plugin's value at `key` is the Redis string `<prefix>kv:<plugin>:<key>`
//! (expiring by Redis' own `PEXPIRE`, so reads are a plain `GET`). Writes
//! run as one Lua script (`batch.lua`), which Redis runs atomically: it
//! applies the operations in order, undoes them if a check, an integer or
//! a quota fails, and keeps the plugin's bookkeeping under
//! `<prefix>kvmeta:<plugin>:`: `keys` (a sorted set of every key, for
//! listing in key order), `expiry` (keys with an expiry, by time), `sizes`
//! (their sizes, to count a key Redis expired by itself) and `usage`
//! (keys and bytes, for the quotas). Both scripts first forget up to 100
//! keys Redis has expired (`sweep.lua`).
//!
//! The scripts name keys they are not given in `KEYS` (the plugin's usage
//! hash is given, for a cluster to route them by). On a Redis Cluster the
//! plugin's name in every one of its key names is a hash tag
//! (`<prefix>kv:{<plugin>}:<key>`, `<prefix>kvmeta:{<plugin>}:`), so that
//! all of one plugin's keys share a slot and a script may touch any of
//! them: plugins spread over the shards, and one plugin's entries live on
//! one shard. (One server keeps the untagged names it always had.)

use super::KvError;
use super::ops::{KvQuota, Op, OpResult, Outcome, PAGE_MAX_BYTES, Page, Usage};
use crate::redis_link::RedisLink;
use redis::{AsyncCommands, Script};
use serde_json::{Value, json};
use std::ops::Bound;
use std::sync::LazyLock;

static BATCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("sweep.lua"),
        "\n",
        include_str!("batch.lua")
    ))
});

static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("sweep.lua"),
        "\n",
        include_str!("list.lua")
    ))
});

/// The store in Redis.
#[derive(Clone)]
pub(crate) struct RedisKv {
    /// The connection to the primary (it reconnects, and follows a
    /// failover, by itself).
    connection: RedisLink,
    /// The deployment's key prefix.
    prefix: String,
}

impl RedisKv {
    /// The store under `prefix` through `connection`.
    pub(crate) fn new(connection: RedisLink, prefix: String) -> Self {
        RedisKv { connection, prefix }
    }

    /// The deployment's key prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn value_prefix(&self, plugin: &str) -> String {
        format!("{}kv:{}:", self.prefix, self.plugin_part(plugin))
    }

    fn meta_prefix(&self, plugin: &str) -> String {
        format!("{}kvmeta:{}:", self.prefix, self.plugin_part(plugin))
    }

    /// The key the scripts are routed by: the plugin's usage hash.
    fn script_key(&self, plugin: &str) -> String {
        format!("{}usage", self.meta_prefix(plugin))
    }

    /// The plugin's name in its key names: a hash tag on a cluster.
    fn plugin_part(&self, plugin: &str) -> String {
        if self.connection.is_cluster() {
            format!("{{{plugin}}}")
        } else {
            plugin.to_owned()
        }
    }

    /// The live value at `key`.
    pub(crate) async fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, KvError> {
        self.connection
            .clone()
            .get(format!("{}{key}", self.value_prefix(plugin)))
            .await
            .map_err(unavailable)
    }

    /// Apply a batch all or none.
    pub(crate) async fn apply(
        &self,
        plugin: &str,
        ops: &[Op],
        quota: KvQuota,
    ) -> Result<(Outcome, Usage), KvError> {
        let reply: Vec<String> = BATCH
            .key(self.script_key(plugin))
            .arg(self.value_prefix(plugin))
            .arg(self.meta_prefix(plugin))
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .arg(encode(ops).to_string())
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        decode_batch(ops, &reply)
    }

    /// A page of the live entries whose keys start with `prefix`, from the
    /// key `start` on.
    pub(crate) async fn list(
        &self,
        plugin: &str,
        prefix: &str,
        start: Bound<&str>,
        limit: usize,
    ) -> Result<Page, KvError> {
        let low = match start {
            Bound::Included(key) => format!("[{key}"),
            Bound::Excluded(key) => format!("({key}"),
            Bound::Unbounded => "-".to_owned(),
        };
        // No key holds byte 0xFF (keys are UTF-8), so it ends the prefix.
        let mut high = b"[".to_vec();
        high.extend_from_slice(prefix.as_bytes());
        high.push(0xFF);
        let reply: Vec<String> = LIST
            .key(self.script_key(plugin))
            .arg(self.value_prefix(plugin))
            .arg(self.meta_prefix(plugin))
            .arg(low)
            .arg(high)
            .arg(limit)
            .arg(PAGE_MAX_BYTES)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let (cursor, flat) = reply.split_first().ok_or_else(|| malformed(&reply))?;
        Ok(Page {
            entries: flat
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect(),
            cursor: (!cursor.is_empty()).then(|| cursor.clone()),
        })
    }
}

/// The operations as `batch.lua` reads them.
fn encode(ops: &[Op]) -> Value {
    let ttl = |ttl_ms: &Option<u64>| ttl_ms.map(|ms| ms.to_string());
    ops.iter()
        .map(|op| match op {
            Op::Check { key, expected } => json!(["check", key, expected]),
            Op::Set { key, value, ttl_ms } => json!(["set", key, value, ttl(ttl_ms)]),
            Op::Delete { key } => json!(["delete", key]),
            Op::Incr { key, delta } => json!(["incr", key, delta.to_string()]),
            Op::Expire { key, ttl_ms } => json!(["expire", key, ttl(ttl_ms)]),
        })
        .collect()
}

/// The script's answer as the outcome it stands for.
fn decode_batch(ops: &[Op], reply: &[String]) -> Result<(Outcome, Usage), KvError> {
    let number = |text: &String| text.parse::<u64>().map_err(|_| malformed(reply));
    match reply {
        [ok, keys, bytes, results @ ..] if ok == "ok" && results.len() == ops.len() => {
            let usage = Usage {
                keys: number(keys)?,
                bytes: number(bytes)?,
            };
            let results = ops
                .iter()
                .zip(results)
                .map(|(op, result)| match op {
                    Op::Check { .. } | Op::Set { .. } => Ok(OpResult::Done),
                    Op::Delete { .. } | Op::Expire { .. } => Ok(OpResult::Existed(result == "1")),
                    Op::Incr { .. } => result
                        .parse()
                        .map(OpResult::Value)
                        .map_err(|_| malformed(reply)),
                })
                .collect::<Result<_, _>>()?;
            Ok((Outcome::Applied(results), usage))
        }
        [conflict, index, keys, bytes] if conflict == "conflict" => Ok((
            Outcome::Conflict(number(index)? as usize),
            Usage {
                keys: number(keys)?,
                bytes: number(bytes)?,
            },
        )),
        [error, kind, detail] if error == "error" => Err(match kind.as_str() {
            "overflow" => KvError::Overflow {
                key: detail.clone(),
            },
            "not-an-integer" => KvError::NotAnInteger {
                key: detail.clone(),
            },
            "keys-quota" => KvError::KeysQuota {
                limit: number(detail)?,
            },
            "bytes-quota" => KvError::BytesQuota {
                limit: number(detail)?,
            },
            _ => malformed(reply),
        }),
        _ => Err(malformed(reply)),
    }
}

fn malformed(reply: &[String]) -> KvError {
    KvError::Unavailable(format!("unexpected answer from the KV script: {reply:?}"))
}

fn unavailable(error: redis::RedisError) -> KvError {
    KvError::Unavailable(error.to_string())
}
