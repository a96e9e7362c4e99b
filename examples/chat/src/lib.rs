//! Example plugin `chat`: rooms on top of pub/sub, kept in the host
//! key-value store.
//!
//! - RPC `join` `{room, nick}` remembers the nick and the room for this
//!   socket, creates the room if it is new, and publishes
//!   `{"type":"join","nick":..}` on `room:<room>`.
//! - RPC `say` `{room, text}` publishes `{"type":"say","nick":..,"text":..}`
//!   and counts the message.
//! - RPC `rooms` `{cursor?}` answers `{"rooms": [{"room", "created_ms",
//!   "messages"}, ..], "cursor"}`: every room ever joined, 50 at a time in
//!   name order (pass `cursor` back for the next page; `null` on the last).
//! - RPC `history` `{room, limit?}` answers the room's last messages (the
//!   events published on `room:<room>`, oldest first, at most `limit`,
//!   default 50), when the server keeps history for `room:*` (`make run`
//!   does); `NoHistoryError` otherwise, and `HistoryUnavailableError` while
//!   the history cannot be read (it is in Redis, and Redis is away).
//! - When the socket disconnects, `{"type":"leave","nick":..}` is published
//!   to every room it joined.
//! - RPC `members` `{room}` answers the nicks that joined the room through
//!   this worker, from the plugin's memory.
//!
//! Clients subscribe to `room:<room>` themselves to read a room. The rooms,
//! their message counts and each socket's nick and rooms are in the KV
//! store: shared by all workers (and hosts, with Redis), they survive a
//! plugin fault, and with a data directory (`make run` has one) a restart.
//! A room is created with set-if-absent, so two sockets creating it at once
//! agree on its creation time. The member lists are in memory, per instance
//! (`make run` keeps one instance per worker), to show state hand-off:
//! `snapshot`/`restore` carry them across a hot swap.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use wasmcluster_sdk::{
    Error, Hook, HostError, Manifest, Payload, Plugin, Socket, export, host, kv,
};

/// Rooms answered per page of `rooms`.
const ROOMS_PER_PAGE: u32 = 50;

/// Room name to the nicks that joined it through this instance.
#[derive(Default)]
struct Chat {
    members: BTreeMap<String, BTreeSet<String>>,
}

/// The data of RPC `members`.
#[derive(Deserialize)]
struct Members {
    room: String,
}

/// The data of RPC `join`.
#[derive(Deserialize)]
struct Join {
    room: String,
    nick: String,
}

/// The data of RPC `rooms`.
#[derive(Deserialize, Default)]
struct Rooms {
    cursor: Option<String>,
}

/// The data of RPC `history`.
#[derive(Deserialize)]
struct History {
    room: String,
    #[serde(default = "default_history_limit")]
    limit: u32,
}

fn default_history_limit() -> u32 {
    50
}

/// A room's durable record, at `room:<room>`.
#[derive(Serialize, Deserialize)]
struct RoomRecord {
    created_ms: u64,
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

/// The key of a room's record; every room's key starts with `room:`.
fn room_key(room: &str) -> String {
    format!("room:{room}")
}

/// The key of a room's message count.
fn count_key(room: &str) -> String {
    format!("count:{room}")
}

/// Create `room` unless it exists (set-if-absent: the first creation wins).
fn create_room(room: &str) -> Result<(), Error> {
    let record = RoomRecord {
        created_ms: host::now_ms(),
    };
    let text = Payload::json(&record).into_json_text().unwrap_or_default();
    kv::set_if_absent(&room_key(room), &text)?;
    Ok(())
}

/// The room's last events, oldest first, as published.
fn history(History { room, limit }: History) -> Result<Payload, Error> {
    let page =
        host::channel_history(&channel(&room), None, limit.clamp(1, 1000)).map_err(|error| {
            match error {
                HostError::Unavailable(reason) => Error::new("HistoryUnavailableError", reason),
                other => Error::new(
                    "NoHistoryError",
                    format!("room '{room}' keeps no history: {other:?}"),
                ),
            }
        })?;
    let mut events = Vec::with_capacity(page.publications.len());
    for publication in page.publications {
        let event: serde_json::Value = match publication.data {
            Some(data) => Payload::from_json_text(data).parse()?,
            None => serde_json::Value::Null,
        };
        events.push(event);
    }
    Ok(Payload::json(&events))
}

/// One page of the rooms, with their creation time and message count.
fn rooms(Rooms { cursor }: Rooms) -> Result<Payload, Error> {
    let page = kv::list_page("room:", cursor.as_deref(), ROOMS_PER_PAGE)?;
    let mut rooms = Vec::with_capacity(page.entries.len());
    for (key, record) in page.entries {
        let room = key.trim_start_matches("room:").to_owned();
        let RoomRecord { created_ms } = Payload::from_json_text(record).parse()?;
        let messages = kv::get(&count_key(&room))?.map_or(0, |n| n.parse().unwrap_or(0));
        rooms.push(serde_json::json!({
            "room": room,
            "created_ms": created_ms,
            "messages": messages,
        }));
    }
    Ok(Payload::json(
        &serde_json::json!({ "rooms": rooms, "cursor": page.cursor }),
    ))
}

impl Chat {
    fn join(&mut self, socket: &Socket, Join { room, nick }: Join) -> Result<Payload, Error> {
        if nick.trim().is_empty() || room.is_empty() {
            return Err(Error::invalid_data("room and nick must not be empty"));
        }
        create_room(&room)?;
        kv::set(&nick_key(socket), &nick)?;
        let mut rooms: Vec<String> = kv::get_json(&rooms_key(socket))?.unwrap_or_default();
        if !rooms.contains(&room) {
            rooms.push(room.clone());
            kv::set_json(&rooms_key(socket), &rooms)?;
        }
        host::publish(&channel(&room), &RoomEvent::Join { nick: &nick })?;
        self.members
            .entry(room.clone())
            .or_default()
            .insert(nick.clone());
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
        kv::incr(&count_key(&room), 1)?;
        Ok(Payload::none())
    }

    fn leave_all(&mut self, socket: &Socket) -> Result<(), Error> {
        let Some(nick) = kv::get(&nick_key(socket))? else {
            return Ok(());
        };
        let rooms: Vec<String> = kv::get_json(&rooms_key(socket))?.unwrap_or_default();
        for room in &rooms {
            host::publish(&channel(room), &RoomEvent::Leave { nick: &nick })?;
            if let Some(members) = self.members.get_mut(room) {
                members.remove(&nick);
            }
        }
        kv::delete(&nick_key(socket))?;
        kv::delete(&rooms_key(socket))?;
        Ok(())
    }
}

impl Plugin for Chat {
    fn describe() -> Manifest {
        Manifest::new("chat", env!("CARGO_PKG_VERSION"))
            .rpc(["join", "say", "members", "rooms", "history"])
            .hooks([Hook::Disconnect])
    }

    fn init(_config: Payload) -> Result<Self, String> {
        Ok(Chat::default())
    }

    fn on_invoke(&mut self, socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
        match event {
            "join" => self.join(socket, data.parse()?),
            "say" => Chat::say(socket, data.parse()?),
            "rooms" => rooms(data.parse::<Option<Rooms>>()?.unwrap_or_default()),
            "history" => history(data.parse()?),
            "members" => {
                let Members { room } = data.parse()?;
                let members = self.members.get(&room).cloned().unwrap_or_default();
                Ok(Payload::json(&members))
            }
            other => Err(Error::unknown_event(other)),
        }
    }

    fn on_disconnect(&mut self, socket: &Socket, _code: u16, _reason: &str) {
        if let Err(error) = self.leave_all(socket) {
            host::error(&format!(
                "could not announce that {} left: {error}",
                socket.id
            ));
        }
    }

    fn snapshot(&self) -> Option<Payload> {
        Some(Payload::json(&self.members))
    }

    fn restore(&mut self, snapshot: Payload) -> Result<(), String> {
        self.members = snapshot.parse().map_err(|error| error.to_string())?;
        Ok(())
    }
}

export!(Chat);
