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
//! - Transmit `ping` transmits `pong` with the same data back to the sender.

use serde::Deserialize;
use serde_json::json;
use wasmcluster_sdk::{Error, Manifest, Payload, Plugin, Socket, export, host};

struct Echo;

/// The channels `broadcast` may publish on.
const BROADCAST_PREFIX: &str = "broadcast:";

/// The data of RPC `broadcast`.
#[derive(Deserialize)]
struct Broadcast {
    channel: String,
    data: serde_json::Value,
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
            ])
            .transmit(["ping"])
    }

    fn init(_config: Payload) -> Result<Self, String> {
        Ok(Echo)
    }

    fn on_invoke(
        &mut self,
        _socket: &Socket,
        event: &str,
        data: Payload,
    ) -> Result<Payload, Error> {
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
                if !channel.starts_with(BROADCAST_PREFIX) {
                    return Err(Error::new(
                        "BroadcastNotAllowed",
                        format!(
                            "echo broadcasts only on channels starting with '{BROADCAST_PREFIX}'"
                        ),
                    ));
                }
                host::publish(&channel, &data)?;
                Ok(Payload::none())
            }
            other => Err(Error::unknown_event(other)),
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
