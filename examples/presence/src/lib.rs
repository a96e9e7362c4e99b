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
//! Rooms are in the host KV store, shared by all workers. The store has
//! `get`, `set`, `delete` and an atomic `incr`, but no compare-and-set, so a
//! single JSON list per room would be a read-modify-write race: two sockets
//! on two workers joining the same room at the same moment would both read
//! the list, both add themselves and both write it back, and one of them
//! would be lost. The keys are laid out so that no key is ever
//! read-modified-written by two workers:
//!
//! - A room is a row of slots `0, 1, 2, ..`. `claim:<room>:<slot>` is a
//!   counter: a socket takes a slot by `incr`-ing it and owns it when the
//!   result is 1; otherwise it gives its `+1` back and tries the next slot.
//!   Leaving gives the slot back with `incr(-1)`. `incr` is atomic, so two
//!   sockets never own one slot. Counters are never deleted, so the slots
//!   ever used are always `0..N` and a reader stops at the first missing one.
//! - `member:<room>:<slot>` (`{id, name}`) is written and deleted only by the
//!   socket that owns the slot.
//! - `socket:<id>` (the rooms of one socket, with their slot and name) is
//!   written only while handling that socket, and all calls for one socket
//!   run one after another on its worker (a worker runs one plugin call at
//!   a time).
//!
//! What remains: a `presence.members` answer is a snapshot that can be one
//! join or leave behind (or ahead of) the events published on the channel,
//! as with any presence system; a room keeps one counter per slot of its
//! largest size after it empties; a join and a members call read the room's
//! slots one by one, one or two host calls per slot (in a room of 3000
//! members, about 5 ms per call on a current x86-64 core, against the
//! default 100 ms deadline). If a call is interrupted between two of these
//! steps (a deadline overrun, a trap), a slot can stay taken, and if
//! `on_disconnect` itself faults, the member stays listed: the store is
//! consistent after every call that completes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmcluster_sdk::{Error, Hook, Manifest, Payload, Plugin, Socket, export, host, kv};

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

/// One room of a socket, in its `socket:<id>` record.
#[derive(Serialize, Deserialize, Clone)]
struct Joined {
    slot: u64,
    name: Option<String>,
}

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

/// The slot index comes last: it is all digits, so `<room>:<slot>` is
/// unambiguous even for rooms that contain `:`.
fn claim_key(room: &str, slot: u64) -> String {
    format!("claim:{room}:{slot}")
}

fn member_key(room: &str, slot: u64) -> String {
    format!("member:{room}:{slot}")
}

fn socket_key(socket: &Socket) -> String {
    format!("socket:{}", socket.id)
}

/// The rooms this socket joined.
fn rooms_of(socket: &Socket) -> Result<BTreeMap<String, Joined>, Error> {
    Ok(kv::get_json(&socket_key(socket))?.unwrap_or_default())
}

fn save_rooms(socket: &Socket, rooms: &BTreeMap<String, Joined>) -> Result<(), Error> {
    if rooms.is_empty() {
        kv::delete(&socket_key(socket))?;
    } else {
        kv::set_json(&socket_key(socket), rooms)?;
    }
    Ok(())
}

/// Take the first free slot of `room`.
fn claim_slot(room: &str) -> Result<u64, Error> {
    let mut slot = 0;
    loop {
        let key = claim_key(room, slot);
        if kv::incr(&key, 1)? == 1 {
            return Ok(slot);
        }
        // Taken: give the +1 back. Never delete a claim counter, so that the
        // slots ever used stay a prefix `0..N` (see the crate docs).
        kv::incr(&key, -1)?;
        slot += 1;
    }
}

/// Give `slot` of `room` back.
fn release_slot(room: &str, slot: u64) -> Result<(), Error> {
    kv::delete(&member_key(room, slot))?;
    kv::incr(&claim_key(room, slot), -1)?;
    Ok(())
}

/// The members of `room`, in slot order.
fn members(room: &str) -> Result<Vec<Member>, Error> {
    let mut members = Vec::new();
    for slot in 0.. {
        match kv::get(&claim_key(room, slot))? {
            // Past the last slot ever used.
            None => break,
            Some(count) if count == "0" => {}
            // Taken; the member is missing while its join is under way.
            Some(_) => members.extend(kv::get_json::<Member>(&member_key(room, slot))?),
        }
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
        let mut rooms = rooms_of(socket)?;
        let slot = match rooms.get(&room) {
            Some(joined) if joined.name == name => return Ok(Payload::json(&members(&room)?)),
            Some(joined) => joined.slot,
            None => claim_slot(&room)?,
        };
        let member = Member {
            id: socket.id.clone(),
            name: name.clone(),
        };
        kv::set_json(&member_key(&room, slot), &member)?;
        rooms.insert(room.clone(), Joined { slot, name });
        save_rooms(socket, &rooms)?;
        host::publish(
            &channel(&room),
            &PresenceEvent::Joined {
                id: &socket.id,
                name: member.name.as_deref(),
            },
        )?;
        Ok(Payload::json(&members(&room)?))
    }

    fn leave(socket: &Socket, RoomOnly { room }: RoomOnly) -> Result<Payload, Error> {
        let mut rooms = rooms_of(socket)?;
        let Some(joined) = rooms.remove(&room) else {
            return Err(Error::new(
                "NotJoinedError",
                format!("you have not joined room '{room}'"),
            )
            .with_detail("room", &room));
        };
        release_slot(&room, joined.slot)?;
        save_rooms(socket, &rooms)?;
        host::publish(
            &channel(&room),
            &PresenceEvent::Left {
                id: &socket.id,
                name: joined.name.as_deref(),
            },
        )?;
        Ok(Payload::none())
    }

    /// Remove a disconnected socket from its rooms and tell each room how it
    /// went away. A failure in one room does not stop the others.
    fn gone(socket: &Socket, code: u16) -> Result<(), Error> {
        let mut result = Ok(());
        for (room, joined) in rooms_of(socket)? {
            let id = &socket.id;
            let name = joined.name.as_deref();
            let event = match code {
                1000 | 1001 => PresenceEvent::Left { id, name },
                code => PresenceEvent::Lost { id, name, code },
            };
            let done = release_slot(&room, joined.slot)
                .and_then(|()| Ok(host::publish(&channel(&room), &event)?));
            result = result.and(done);
        }
        kv::delete(&socket_key(socket))?;
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
