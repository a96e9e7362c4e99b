//! Example plugin `presence`: who is in a room, and whether someone who went
//! away left or lost their connection.
//!
//! - RPC `presence.join` `{room, name?}` adds the socket to the room,
//!   publishes `{"type":"joined","id":..,"name":..}` on `presence:<room>` and
//!   answers the room's members, `[{"id":..,"name":..}, ..]` (the socket
//!   itself included). Joining again with another name renames the member
//!   (and publishes `joined` again); joining again with the same name changes
//!   nothing.
//! - RPC `presence.members` `{room}` answers the room's members.
//! - RPC `presence.leave` `{room}` removes the socket from the room and
//!   publishes `{"type":"left","id":..,"name":..}`; `NotJoinedError` when it
//!   is not in the room.
//! - When the socket disconnects it is removed from every room it joined.
//!   A clean close (code 1000 or 1001) publishes
//!   `{"type":"left","id":..,"name":..}`; any other code (1006 connection
//!   lost, 4001 ping timeout, a 4xxx close from the server, ...) publishes
//!   `{"type":"lost","id":..,"name":..,"code":..}`.
//!
//! The events are prefixed with `presence.` because an event belongs to one
//! plugin only and `chat` already has `join` and `members`. `name` is
//! optional (`null` when not given). Clients subscribe to `presence:<room>`
//! themselves to follow a room.
//!
//! # State, and why it has no lost updates
//!
//! Rooms are in the host KV store, shared by all workers (and hosts):
//!
//! - `member:<len>:<room>:<socket id>` holds `{id, name}` for each member;
//!   the room's length in front keeps rooms that contain `:` apart, so a
//!   room's members are exactly the keys under its prefix, read with
//!   `kv::list` in pages.
//! - `socket:<id>` holds the rooms of one socket and its name in each, so
//!   that a disconnect knows where to remove it from.
//!
//! A join, a leave or a departure changes both in one `kv::Batch`, which
//! the host applies all or none, guarded by a check that the socket's
//! record is still what the plugin read (compare-and-set): if anything
//! changed it in between, nothing is written and the plugin reads again
//! and retries. So a fault between two steps cannot leave a member without
//! its record or the other way round, and concurrent calls never lose an
//! update. A `presence.members` answer is a snapshot that can be one join
//! or leave behind (or ahead of) the events published on the channel, as
//! with any presence system. If `on_disconnect` itself faults, the member
//! stays listed until the socket's id is cleaned up by hand.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmcluster_sdk::kv::{self, Batch, Committed};
use wasmcluster_sdk::{Error, Hook, Manifest, Payload, Plugin, Socket, export, host};

/// The plugin; its state is all in the KV store.
struct Presence;

/// Longest room name accepted, in bytes.
const MAX_ROOM_LEN: usize = 128;
/// Longest member name accepted, in bytes.
const MAX_NAME_LEN: usize = 64;

/// The data of RPC `presence.join`.
#[derive(Deserialize)]
struct Join {
    room: String,
    #[serde(default)]
    name: Option<String>,
}

/// The data of RPCs `presence.members` and `presence.leave`.
#[derive(Deserialize)]
struct RoomOnly {
    room: String,
}

/// A member of a room, as stored and as answered.
#[derive(Serialize, Deserialize)]
struct Member {
    id: String,
    name: Option<String>,
}

/// A socket's rooms and its name in each: its `socket:<id>` record.
type Rooms = BTreeMap<String, Option<String>>;

/// What is published on `presence:<room>`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum PresenceEvent<'a> {
    Joined {
        id: &'a str,
        name: Option<&'a str>,
    },
    Left {
        id: &'a str,
        name: Option<&'a str>,
    },
    Lost {
        id: &'a str,
        name: Option<&'a str>,
        code: u16,
    },
}

fn channel(room: &str) -> String {
    format!("presence:{room}")
}

/// The prefix of `room`'s member keys.
fn members_prefix(room: &str) -> String {
    format!("member:{}:{room}:", room.len())
}

fn member_key(room: &str, socket: &Socket) -> String {
    format!("{}{}", members_prefix(room), socket.id)
}

fn socket_key(socket: &Socket) -> String {
    format!("socket:{}", socket.id)
}

/// The socket's record as stored (for the compare-and-set) and decoded.
fn rooms_of(socket: &Socket) -> Result<(Option<String>, Rooms), Error> {
    let stored = kv::get(&socket_key(socket))?;
    let rooms = match &stored {
        Some(text) => Payload::from_json_text(text.clone()).parse()?,
        None => Rooms::new(),
    };
    Ok((stored, rooms))
}

/// Change the socket's record from `read` to `rooms` together with the
/// member key of `room` (written as `member`, or deleted); whether it
/// applied (false: the record changed meanwhile, nothing was written).
fn commit(
    socket: &Socket,
    read: Option<&str>,
    rooms: &Rooms,
    room: &str,
    member: Option<&Member>,
) -> Result<bool, Error> {
    let key = socket_key(socket);
    let mut batch = Batch::new().check_unchanged(&key, read);
    batch = if rooms.is_empty() {
        batch.delete(&key)
    } else {
        batch.set_json(&key, rooms)
    };
    batch = match member {
        Some(member) => batch.set_json(&member_key(room, socket), member),
        None => batch.delete(&member_key(room, socket)),
    };
    Ok(matches!(batch.commit()?, Committed::Applied(_)))
}

/// The members of `room`, in the order of their socket ids.
fn members(room: &str) -> Result<Vec<Member>, Error> {
    let mut members = Vec::new();
    for entry in kv::list(&members_prefix(room)) {
        let (_, member) = entry?;
        members.push(Payload::from_json_text(member).parse()?);
    }
    Ok(members)
}

fn check_room(room: &str) -> Result<(), Error> {
    if room.is_empty() || room.len() > MAX_ROOM_LEN {
        return Err(Error::invalid_data(format!(
            "room must be 1 to {MAX_ROOM_LEN} bytes"
        )));
    }
    Ok(())
}

impl Presence {
    fn join(socket: &Socket, Join { room, name }: Join) -> Result<Payload, Error> {
        check_room(&room)?;
        if name.as_ref().is_some_and(|name| name.len() > MAX_NAME_LEN) {
            return Err(Error::invalid_data(format!(
                "name must be at most {MAX_NAME_LEN} bytes"
            )));
        }
        let member = Member {
            id: socket.id.clone(),
            name: name.clone(),
        };
        loop {
            let (read, mut rooms) = rooms_of(socket)?;
            if rooms.get(&room) == Some(&name) {
                return Ok(Payload::json(&members(&room)?));
            }
            rooms.insert(room.clone(), name.clone());
            if commit(socket, read.as_deref(), &rooms, &room, Some(&member))? {
                break;
            }
        }
        host::publish(
            &channel(&room),
            &PresenceEvent::Joined {
                id: &socket.id,
                name: member.name.as_deref(),
            },
        )?;
        Ok(Payload::json(&members(&room)?))
    }

    /// Take the socket out of `room`; the name it had there.
    fn remove(socket: &Socket, room: &str) -> Result<Option<Option<String>>, Error> {
        loop {
            let (read, mut rooms) = rooms_of(socket)?;
            let Some(name) = rooms.remove(room) else {
                return Ok(None);
            };
            if commit(socket, read.as_deref(), &rooms, room, None)? {
                return Ok(Some(name));
            }
        }
    }

    fn leave(socket: &Socket, RoomOnly { room }: RoomOnly) -> Result<Payload, Error> {
        let Some(name) = Presence::remove(socket, &room)? else {
            return Err(Error::new(
                "NotJoinedError",
                format!("you have not joined room '{room}'"),
            )
            .with_detail("room", &room));
        };
        host::publish(
            &channel(&room),
            &PresenceEvent::Left {
                id: &socket.id,
                name: name.as_deref(),
            },
        )?;
        Ok(Payload::none())
    }

    /// Remove a disconnected socket from its rooms and tell each room how it
    /// went away. A failure in one room does not stop the others.
    fn gone(socket: &Socket, code: u16) -> Result<(), Error> {
        let mut result = Ok(());
        let (_, rooms) = rooms_of(socket)?;
        for room in rooms.keys() {
            let done = Presence::remove(socket, room).and_then(|removed| {
                let Some(name) = removed else { return Ok(()) };
                let (id, name) = (socket.id.as_str(), name.as_deref());
                let event = match code {
                    1000 | 1001 => PresenceEvent::Left { id, name },
                    code => PresenceEvent::Lost { id, name, code },
                };
                Ok(host::publish(&channel(room), &event)?)
            });
            result = result.and(done);
        }
        result
    }
}

impl Plugin for Presence {
    fn describe() -> Manifest {
        Manifest::new("presence", env!("CARGO_PKG_VERSION"))
            .rpc(["presence.join", "presence.members", "presence.leave"])
            .hooks([Hook::Disconnect])
    }

    fn init(_config: Payload) -> Result<Self, String> {
        Ok(Presence)
    }

    fn on_invoke(&mut self, socket: &Socket, event: &str, data: Payload) -> Result<Payload, Error> {
        match event {
            "presence.join" => Presence::join(socket, data.parse()?),
            "presence.members" => {
                let RoomOnly { room } = data.parse()?;
                check_room(&room)?;
                Ok(Payload::json(&members(&room)?))
            }
            "presence.leave" => Presence::leave(socket, data.parse()?),
            other => Err(Error::unknown_event(other)),
        }
    }

    fn on_disconnect(&mut self, socket: &Socket, code: u16, _reason: &str) {
        if let Err(error) = Presence::gone(socket, code) {
            host::error(&format!(
                "could not remove {} from its rooms: {error}",
                socket.id
            ));
        }
    }
}

export!(Presence);
