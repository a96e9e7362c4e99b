//! Example plugin `echo`: the smallest useful plugin, and the one the tests
//! and benchmarks drive.
//!
//! - RPC `echo` answers its data unchanged (never parsed: it passes through).
//! - RPC `version` answers `{"plugin":"echo","version":"<crate version>"}`.
//! - RPC `fail` answers the error `EchoFailure`.
//! - RPC `crash` panics inside the plugin, to show that a fault costs one call.
//! - RPC `spin` loops forever (until the host's deadline interrupts it).
//! - RPC `grow` allocates without bound (until the host's memory cap stops it).
//! - RPC `broadcast` `{channel, data}` publishes `data` on `channel`, which
//!   must start with `broadcast:`. A plugin's publication is trusted server
//!   code: it passes neither `--allow-client-publish` nor the `publish-in`
//!   middleware, so an example that publishes for any client keeps to
//!   channels of its own.
//! - RPC `later` `{delay_ms, channel, data}` answers `null` at once and
//!   publishes `data` on `channel` (a `broadcast:` channel too) when a
//!   one-shot timer fires `delay_ms` later. What to publish waits in the
//!   KV, not in the instance, so that it survives a fault of the instance
//!   and a hot swap: the timer fires into whichever build serves then.
//! - RPC `every` `{period_ms, channel, data}` publishes `data` on `channel`
//!   (a `broadcast:` channel) every `period_ms` and answers the timer's id;
//!   RPC `cancel` `{id}` cancels it, answering whether it was pending. A
//!   timer lives on the worker of the socket that set it: cancel it from
//!   the same connection.
//! - RPC `subs` answers the channels the calling socket is subscribed to.
//! - RPC `ask` `{event, data, timeout_ms}` invokes procedure `event` with
//!   `data` on the calling socket and answers with the client's answer; the
//!   client's error comes back as that error, and no answer within
//!   `timeout_ms` as `TimeoutError`. While it waits, other calls to `echo`
//!   on the worker are served by other instances.
//! - Transmit `ping` transmits `pong` with the same data back to the sender.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use wasmcluster_sdk::{Error, Hook, Manifest, Payload, Plugin, Socket, export, host, kv};

struct Echo;

/// The channels `broadcast` may publish on.
const BROADCAST_PREFIX: &str = "broadcast:";

/// The data of RPC `broadcast`, and what a `later` timer publishes.
#[derive(Deserialize, Serialize)]
struct Broadcast {
    channel: String,
    data: serde_json::Value,
}

/// The data of RPC `later`.
#[derive(Deserialize)]
struct Later {
    delay_ms: u64,
    #[serde(flatten)]
    publication: Broadcast,
}

/// The data of RPC `ask`.
#[derive(Deserialize)]
struct Ask {
    event: String,
    data: Option<serde_json::Value>,
    timeout_ms: u64,
}

/// The data of RPC `every`.
#[derive(Deserialize)]
struct Every {
    period_ms: u64,
    #[serde(flatten)]
    publication: Broadcast,
}

/// The data of RPC `cancel`.
#[derive(Deserialize)]
struct Cancel {
    id: String,
}

/// KV key of the counter that names `later` timers, unique on every worker.
const LATER_COUNTER: &str = "later:next";

/// Set a timer (id `KIND:N`) that publishes `publication`, which waits in
/// the KV under the timer's id; the id.
fn start_timer(
    kind: &str,
    publication: &Broadcast,
    delay_ms: u64,
    repeat: bool,
) -> Result<String, Error> {
    check_channel(&publication.channel)?;
    let id = format!("{kind}:{}", kv::incr(LATER_COUNTER, 1)?);
    kv::set_json(&id, publication)?;
    if let Err(error) = host::set_timer(&id, delay_ms, repeat) {
        kv::delete(&id)?;
        return Err(error.into());
    }
    Ok(id)
}

/// Refuse channels outside [`BROADCAST_PREFIX`].
fn check_channel(channel: &str) -> Result<(), Error> {
    if channel.starts_with(BROADCAST_PREFIX) {
        return Ok(());
    }
    Err(Error::new(
        "BroadcastNotAllowed",
        format!("echo publishes only on channels starting with '{BROADCAST_PREFIX}'"),
    ))
}

impl Plugin for Echo {
    fn describe() -> Manifest {
        Manifest::new("echo", env!("CARGO_PKG_VERSION"))
            .rpc([
                "echo",
                "version",
                "fail",
                "crash",
                "spin",
                "grow",
                "broadcast",
                "later",
                "subs",
                "ask",
                "every",
                "cancel",
            ])
            .transmit(["ping"])
            .hooks([Hook::Timer])
    }

    fn init(_config: Payload) -> Result<Self, String> {
        Ok(Echo)
    }

    fn on_invoke(&mut self, socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
        match event {
            "echo" => Ok(data),
            "version" => Ok(Payload::json(&json!({
                "plugin": "echo",
                "version": env!("CARGO_PKG_VERSION"),
            }))),
            "fail" => Err(Error::new("EchoFailure", "echo failed on purpose")),
            "crash" => panic!("echo crashed on purpose"),
            "spin" => loop {
                std::hint::black_box(());
            },
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            "broadcast" => {
                let Broadcast { channel, data } = data.parse()?;
                check_channel(&channel)?;
                host::publish(&channel, &data)?;
                Ok(Payload::none())
            }
            "later" => {
                let Later {
                    delay_ms,
                    publication,
                } = data.parse()?;
                start_timer("later", &publication, delay_ms, false)?;
                Ok(Payload::json(&serde_json::Value::Null))
            }
            "every" => {
                let Every {
                    period_ms,
                    publication,
                } = data.parse()?;
                let id = start_timer("every", &publication, period_ms, true)?;
                Ok(Payload::json(&id))
            }
            "cancel" => {
                let Cancel { id } = data.parse()?;
                let pending = host::cancel_timer(&id);
                kv::delete(&id)?;
                Ok(Payload::json(&pending))
            }
            "subs" => Ok(Payload::json(&host::subscriptions(&socket.id)?)),
            "ask" => {
                let Ask {
                    event,
                    data,
                    timeout_ms,
                } = data.parse()?;
                let data = Payload::from(data.map(|data| data.to_string()));
                let timeout = Duration::from_millis(timeout_ms);
                Ok(host::invoke_client(&socket.id, &event, &data, timeout)?)
            }
            other => Err(Error::unknown_event(other)),
        }
    }

    fn on_timer(&mut self, id: &str) {
        // A `later` timer is one-shot: it publishes what it carries once;
        // an `every` timer keeps it until it is cancelled.
        let publication = match kv::get_json::<Broadcast>(id) {
            Ok(Some(publication)) => publication,
            Ok(None) => return,
            Err(error) => return host::warn(&format!("timer {id}: {error}")),
        };
        if let Err(error) = host::publish(&publication.channel, &publication.data) {
            host::warn(&format!("timer {id} could not publish: {error}"));
        }
        if id.starts_with("later:")
            && let Err(error) = kv::delete(id)
        {
            host::warn(&format!("timer {id}: {error}"));
        }
    }

    fn on_transmit(&mut self, socket: &Socket, event: &str, data: Payload) {
        if event == "ping"
            && let Err(error) = host::transmit(&socket.id, "pong", &data)
        {
            host::warn(&format!("could not answer ping of {}: {error}", socket.id));
        }
    }
}

export!(Echo);
