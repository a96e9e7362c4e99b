//! Example plugin `chat`: rooms on top of pub/sub, with per-socket state in
//! the host key-value store.
//!
//! - RPC `join` `{room, nick}` remembers the nick and the room for this
//!   socket and publishes `{"type":"join","nick":..}` on `room:<room>`.
//! - RPC `say` `{room, text}` publishes `{"type":"say","nick":..,"text":..}`.
//! - When the socket disconnects, `{"type":"leave","nick":..}` is published
//!   to every room it joined.
//!
//! Clients subscribe to `room:<room>` themselves to read a room. The state is
//! in the KV store rather than in the plugin's memory, so it is shared by all
//! workers (the disconnect may be handled by any instance) and survives a
//! plugin fault.

use serde::{Deserialize, Serialize};
use wasmcluster_sdk::{Error, Hook, Manifest, Payload, Plugin, Socket, export, host, kv};

struct Chat;

/// The data of RPC `join`.
#[derive(Deserialize)]
struct Join {
    room: String,
    nick: String,
}

/// The data of RPC `say`.
#[derive(Deserialize)]
struct Say {
    room: String,
    text: String,
}

/// What is published on a room's channel.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum RoomEvent<'a> {
    Join { nick: &'a str },
    Say { nick: &'a str, text: &'a str },
    Leave { nick: &'a str },
}

fn nick_key(socket: &Socket) -> String {
    format!("nick:{}", socket.id)
}

fn rooms_key(socket: &Socket) -> String {
    format!("rooms:{}", socket.id)
}

fn channel(room: &str) -> String {
    format!("room:{room}")
}

impl Chat {
    fn join(socket: &Socket, Join { room, nick }: Join) -> Result<Payload, Error> {
        if nick.trim().is_empty() || room.is_empty() {
            return Err(Error::invalid_data("room and nick must not be empty"));
        }
        kv::set(&nick_key(socket), &nick)?;
        let mut rooms: Vec<String> = kv::get_json(&rooms_key(socket))?.unwrap_or_default();
        if !rooms.contains(&room) {
            rooms.push(room.clone());
            kv::set_json(&rooms_key(socket), &rooms)?;
        }
        host::publish(&channel(&room), &RoomEvent::Join { nick: &nick })?;
        Ok(Payload::json(
            &serde_json::json!({ "room": room, "nick": nick }),
        ))
    }

    fn say(socket: &Socket, Say { room, text }: Say) -> Result<Payload, Error> {
        let Some(nick) = kv::get(&nick_key(socket))? else {
            return Err(Error::new(
                "NotJoinedError",
                "join a room before you say something",
            ));
        };
        let rooms: Vec<String> = kv::get_json(&rooms_key(socket))?.unwrap_or_default();
        if !rooms.contains(&room) {
            return Err(Error::new(
                "NotJoinedError",
                format!("you have not joined room '{room}'"),
            ));
        }
        host::publish(
            &channel(&room),
            &RoomEvent::Say {
                nick: &nick,
                text: &text,
            },
        )?;
        Ok(Payload::none())
    }

    fn leave_all(socket: &Socket) -> Result<(), Error> {
        let Some(nick) = kv::get(&nick_key(socket))? else {
            return Ok(());
        };
        let rooms: Vec<String> = kv::get_json(&rooms_key(socket))?.unwrap_or_default();
        for room in &rooms {
            host::publish(&channel(room), &RoomEvent::Leave { nick: &nick })?;
        }
        kv::delete(&nick_key(socket))?;
        kv::delete(&rooms_key(socket))?;
        Ok(())
    }
}

impl Plugin for Chat {
    fn describe() -> Manifest {
        Manifest::new("chat", env!("CARGO_PKG_VERSION"))
            .rpc(["join", "say"])
            .hooks([Hook::Disconnect])
    }

    fn init(_config: Payload) -> Result<Self, String> {
        Ok(Chat)
    }

    fn on_invoke(&mut self, socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
        match event {
            "join" => Chat::join(socket, data.parse()?),
            "say" => Chat::say(socket, data.parse()?),
            other => Err(Error::unknown_event(other)),
        }
    }

    fn on_disconnect(&mut self, socket: &Socket, _code: u16, _reason: &str) {
        if let Err(error) = Chat::leave_all(socket) {
            host::error(&format!(
                "could not announce that {} left: {error}",
                socket.id
            ));
        }
    }
}

export!(Chat);
